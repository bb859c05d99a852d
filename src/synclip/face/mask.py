"""The inpainting mask: which part of the aligned face the UNet regenerates (0) and keeps (1)."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import cv2
import numpy as np
import torch

from synclip.face.align import TEMPLATE

MASK_FILE = "mask.png"
MASK_SIZE = 256
# in units of the crop: the top of the generated region sits this far below the nose tip
NOSE_MARGIN = 0.05
SIDES = (0.12, 0.88)  # columns of the generated region's top edge, left and right
# The left half of the jaw-shaped lower edge, (x, y) in units of the crop, mirrored for the right:
# about 0.05 outside MediaPipe's face oval (its 2nd percentile per row band on aligned frames of the
# train identities; the measurement is in docs/experiments/2026-12-02-mask-face-oval.md), then
# straight down under the chin, so a dropping jaw stays inside while the background beside it is kept.
JAW = ((0.12, 0.62), (0.14, 0.68), (0.19, 0.75), (0.25, 0.82), (0.31, 0.89), (0.35, 0.95), (0.36, 1.0))


def draw_mask(size: int = MASK_SIZE) -> np.ndarray:
    """(size, size) uint8: 255 keep, 0 generate.

    One fixed image for every frame and every person, as LatentSync's `mask.png`, drawn on synclip's
    face template (`synclip.face.align.TEMPLATE`: eyes at 32 % of the height, nose tip at 47 %, mouth
    near 65 %, chin near 86 %). The region to generate starts just below the nose tip and follows the
    jaw, a margin outside it, down to the bottom of the crop, as LatentSync's U-shaped mask does: an
    opening mouth and a dropping chin lie inside it; the eyes, nose and cheeks above it and the
    background beside the jaw stay visible to the model and are kept as they are. `assets/mask.png`
    (256×256, 255 = keep) is the shipped file; this is how it was made (`python -m synclip.face.mask`
    rewrites it).
    """
    top = TEMPLATE[3, 1] + NOSE_MARGIN
    left, right = SIDES
    outline = [(left, top), *JAW, *[(1 - x, y) for x, y in reversed(JAW)], (right, top)]
    polygon = np.round(np.array(outline) * size).astype(np.int32)
    mask = np.full((size, size), 255, np.uint8)
    cv2.fillPoly(mask, [polygon], 0)
    return mask


def mask_path() -> Path:
    return Path(str(resources.files("synclip.face") / "assets" / MASK_FILE))


def load_mask(size: int, path: str | Path | None = None) -> torch.Tensor:
    """(1, size, size) float, 1 = keep, 0 = generate: the shipped mask (or `path`), nearest-resized and
    made binary. A mask already `size` wide is read as it is, /255, so a soft edge (LatentSync's mask at
    512 px, as upstream loads it) stays soft."""
    path = Path(path) if path is not None else mask_path()
    image = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    if image is None:
        raise FileNotFoundError(f"{path}: not a readable mask image")
    if image.shape == (size, size):
        return torch.from_numpy(image.astype(np.float32) / 255)[None]
    resized = cv2.resize(image, (size, size), interpolation=cv2.INTER_NEAREST)
    return torch.from_numpy((resized >= 128).astype(np.float32))[None]


if __name__ == "__main__":
    cv2.imwrite(str(mask_path()), draw_mask())
