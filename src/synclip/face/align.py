"""Affine alignment of faces to a fixed template, temporal smoothing, and the way back."""

from __future__ import annotations

import cv2
import numpy as np
from scipy.ndimage import gaussian_filter1d

from synclip.face.landmarks import LEFT_EYE, NOSE_BRIDGE, NOSE_TIP, RIGHT_EYE, Face

# Template in units of the crop size: image-left eye centre, image-right eye centre, nose bridge, nose tip.
# It puts the eyes at 32 % of the height, the mouth near 65 % and the chin near 86 % (measured on
# MediaPipe landmarks), leaving room for a dropping jaw. LatentSync's anisotropic 210×280 → square
# resize is not copied: faces keep their proportions.
TEMPLATE = np.array([[0.35, 0.32], [0.65, 0.32], [0.50, 0.298], [0.50, 0.47]], dtype=np.float64)


def stable_points(face: Face) -> np.ndarray:
    """(4, 2) pixels: eye centres, nose bridge, nose tip (the points TEMPLATE lists).

    The similarity transform (rotation, uniform scale, translation) is fitted to these points because
    they do not move when the person speaks. The mouth and jaw are deliberately left out, so an
    opening mouth never moves the crop.
    """
    points = face.points.astype(np.float64)
    return np.stack(
        [
            points[list(LEFT_EYE)].mean(axis=0),
            points[list(RIGHT_EYE)].mean(axis=0),
            points[NOSE_BRIDGE],
            points[NOSE_TIP],
        ]
    )


def fit_similarity(source: np.ndarray, target: np.ndarray) -> np.ndarray:
    """2×3 matrix of the least-squares similarity mapping `source` points onto `target` (Umeyama 1991)."""
    mu_s, mu_t = source.mean(axis=0), target.mean(axis=0)
    s, t = source - mu_s, target - mu_t
    covariance = t.T @ s / len(source)
    u, sigma, vt = np.linalg.svd(covariance)
    sign = np.diag([1.0, np.sign(np.linalg.det(u @ vt)) or 1.0])  # no reflections
    rotation = u @ sign @ vt
    scale = np.trace(np.diag(sigma) @ sign) / s.var(axis=0).sum()
    matrix = np.zeros((2, 3))
    matrix[:, :2] = scale * rotation
    matrix[:, 2] = mu_t - matrix[:, :2] @ mu_s
    return matrix


def track_transforms(points: np.ndarray, resolution: int, sigma_frames: float) -> np.ndarray:
    """Per-frame source→crop matrices (F, 2, 3) from stable points (F, 4, 2), NaN where no face.

    The points are smoothed over time first (Gaussian, sigma in frames), and frames without a
    face borrow the nearest face's points, so the crop never jumps or disappears. Needs at
    least one frame with a face.
    """
    frames = len(points)
    valid = ~np.isnan(points).any(axis=(1, 2))
    if not valid.any():
        raise ValueError("no frame has a face to align to")
    filled = points.copy()
    index = np.arange(frames)
    for k in range(points.shape[1]):
        for axis in range(2):
            filled[:, k, axis] = np.interp(index, index[valid], points[valid, k, axis])
    if sigma_frames > 0 and frames > 1:
        filled = gaussian_filter1d(filled, sigma_frames, axis=0, mode="nearest")
    target = TEMPLATE * resolution
    return np.stack([fit_similarity(filled[i], target) for i in range(frames)])


def warp_face(frame: np.ndarray, matrix: np.ndarray, resolution: int) -> np.ndarray:
    """The aligned crop (R, R, 3); large downscales go through an area resize first to avoid aliasing.

    Only the part of the frame the crop sees (plus a margin for the interpolation) is resized.
    """
    scale = float(np.sqrt(abs(np.linalg.det(matrix[:, :2]))))
    if scale < 0.7:
        factor = min(1.0, 1.5 * scale)
        # the source box behind the crop, `margin` source pixels wider on every side
        corners = np.array([[0, 0], [resolution, 0], [0, resolution], [resolution, resolution]], np.float64)
        seen = apply(invert(matrix), corners)
        margin = 2 / factor + 2
        height, width = frame.shape[:2]
        x0, y0 = (max(0, int(np.floor(v - margin))) for v in seen.min(axis=0))
        x1 = min(width, int(np.ceil(seen[:, 0].max() + margin)))
        y1 = min(height, int(np.ceil(seen[:, 1].max() + margin)))
        if x1 - x0 < 2 or y1 - y0 < 2:  # the crop sees (almost) nothing of the frame
            x0, y0, x1, y1 = 0, 0, width, height
        size = (max(1, round((x1 - x0) * factor)), max(1, round((y1 - y0) * factor)))
        small = cv2.resize(frame[y0:y1, x0:x1], size, interpolation=cv2.INTER_AREA)
        sx, sy = size[0] / (x1 - x0), size[1] / (y1 - y0)
        # source → box → resized box; INTER_AREA maps pixel centres: x_small = (x + 0.5) · s − 0.5
        to_small = np.array([[sx, 0, (0.5 - x0) * sx - 0.5], [0, sy, (0.5 - y0) * sy - 0.5], [0, 0, 1]])
        matrix = (np.vstack([matrix, [0, 0, 1]]) @ np.linalg.inv(to_small))[:2]
        frame = small
    return cv2.warpAffine(
        frame, matrix, (resolution, resolution), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE
    )


def invert(matrix: np.ndarray) -> np.ndarray:
    """The crop→source matrix for pasting a generated crop back."""
    return cv2.invertAffineTransform(matrix)


def apply(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Map (N, 2) points with a 2×3 matrix."""
    return points @ matrix[:, :2].T + matrix[:, 2]
