"""Putting a generated face back: the region to paste (feathered, inside the face's outline), the blend.
Glossary: R aligned face size, H/W frame pixels, K outline points.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import torch

from synclip.face.align import invert
from synclip.face.track import FaceTrack

OUTLINE_MARGIN = 1 / 12  # the outline is widened by this share of the crop (about 11 px at 128)


def feather(mask: torch.Tensor, outline: np.ndarray | None = None) -> np.ndarray:
    """(R, R) float32 alpha of the generated region: (1 − mask), within the widened convex hull of
    `outline` ((K, 2) crop pixels) when given, blurred so the paste has no hard edge.

    Only the generated region (mask = 0) inside the face's outline (MediaPipe's face oval, widened by
    `OUTLINE_MARGIN` so a dropping jaw fits) is pasted, feathered, so the background and neck that the
    mask's margin around the jaw also covers stay the input's, as does every pixel outside the mask.
    """
    region = (1 - mask[0].cpu().numpy()).astype(np.float32)
    size = region.shape[0]
    if outline is not None:
        face = np.zeros((size, size), np.uint8)
        cv2.fillConvexPoly(face, np.round(cv2.convexHull(outline.astype(np.float32))).astype(np.int32), 1)
        radius = max(round(size * OUTLINE_MARGIN), 1)
        face = cv2.dilate(
            face, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))
        )
        region *= face
    sigma = max(size / 48, 0.5)
    return np.clip(cv2.GaussianBlur(region, (0, 0), sigma) * region.max(), 0, 1)


def paste(frame: np.ndarray, crop: np.ndarray, alpha: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """Blend the generated crop (R, R, 3) uint8 into `frame` (H, W, 3) through the inverse of `matrix`.

    Only the bounding box of the warped alpha is touched; where alpha is 0 the frame is unchanged.
    """
    height, width = frame.shape[:2]
    back = invert(matrix)
    ys, xs = np.nonzero(alpha > 0)
    if not len(xs):
        return frame
    corners = np.array(
        [
            [xs.min(), ys.min()],
            [xs.max() + 1, ys.min()],
            [xs.min(), ys.max() + 1],
            [xs.max() + 1, ys.max() + 1],
        ],
        np.float64,
    )
    mapped = corners @ back[:, :2].T + back[:, 2]
    x0, y0 = np.floor(mapped.min(axis=0)).astype(int) - 1
    x1, y1 = np.ceil(mapped.max(axis=0)).astype(int) + 2
    x0, y0, x1, y1 = max(x0, 0), max(y0, 0), min(x1, width), min(y1, height)
    if x1 <= x0 or y1 <= y0:
        return frame
    local = back.copy()
    local[:, 2] -= (x0, y0)
    size = (x1 - x0, y1 - y0)
    face = cv2.warpAffine(crop, local, size, flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    weight = cv2.warpAffine(alpha, local, size, flags=cv2.INTER_LINEAR, borderValue=0)[..., None]
    out = frame.copy()
    roi = out[y0:y1, x0:x1].astype(np.float32)
    out[y0:y1, x0:x1] = np.round(weight * face + (1 - weight) * roi).astype(np.uint8)
    return out


@dataclass
class Placement:
    """Where the generated face goes on each source frame."""

    matrices: np.ndarray  # (N, 2, 3) source → crop, per source frame
    found: np.ndarray  # (N,) bool: the chosen face is on the frame
    several: int  # frames with more faces than one
    outlines: np.ndarray | None = (
        None  # (N, K, 2) FACE_OVAL points in source pixels; None: the whole mask region
    )

    @staticmethod
    def of(track: FaceTrack, resolution: int, smoothing_frames: float) -> Placement:
        """From a track that kept the face's "outline" (`FACE_OVAL`)."""
        outlines = track.points.get("outline")
        return Placement(
            track.alignments(resolution, smoothing_frames),
            track.found,
            track.several,
            None if outlines is None else outlines.astype(np.float32),
        )

    def outline(self, source: int) -> np.ndarray | None:
        """The face oval of source frame `source` in crop pixels (None without outlines)."""
        if self.outlines is None:
            return None
        matrix = self.matrices[source]
        return self.outlines[source] @ matrix[:, :2].T + matrix[:, 2]
