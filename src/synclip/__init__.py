"""synclip: audio-driven lip sync by audio-conditioned latent diffusion."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("synclip")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+unknown"
