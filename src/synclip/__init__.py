"""synclip: audio-driven lip sync by audio-conditioned latent diffusion."""

import logging
from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("synclip")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+unknown"

# diffusers imports bitsandbytes (a transitive dependency) for its quantizers, and bitsandbytes warns
# on every CPU-only start that an optional 4-bit kernel package is absent; synclip never quantizes
logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
