"""Closed-form inputs of the S3FD / face-track fixture, computed the same way by its generator
(scripts/latentsync_fixtures/s3fd.py) and by tests/test_s3fd.py, so the fixture stores none of them.

Images are integer arithmetic only (triangle waves), so they are the same bits on every machine; the
synthetic detections are a few float additions and multiplications of small numbers.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch

SEED = 31  # tests.seeded_weights.seeded_state(shapes_of(S3FDNet), SEED)
# Seeded random weights score hardly any prior as a face above 0.9; this is added to the face logit of
# every level's confidence head (conf.0's channel 3, conf.1–5's channel 1), on both sides.
FACE_BIAS = 2.2  # sigmoid(2.2) ≈ 0.9: the face scores straddle upstream's 0.9 threshold

DETECTOR_IMAGE_SIZE = (236, 300)  # (H, W): S3FD at scale 0.25 sees 59 × 75
RAW_IMAGE_SIZE = (97, 131)  # (H, W): a second image for the raw network outputs, at scale 1
TRACK_FRAMES, TRACK_SIZE = 76, (288, 384)  # frames and (H, W) of the tracking / crop video
SCENE_FRAMES, SCENE_SIZE = 64, (304, 544)  # ... of the shot-detection video (544 // 256 = 2: downscaled)
SCENE_SPANS = ((0, "a"), (25, "b"), (30, "a"), (40, "c"))  # (first frame, look): b is a 5-frame flash
SAMPLES_PER_FRAME = 640  # 16 kHz at 25 fps


def boosted(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The seeded S3FD state with FACE_BIAS added to every face logit's bias (a new dict)."""
    state = dict(state)
    for level in range(6):
        name = f"conf.{level}.bias"
        bias = state[name].clone()
        bias[3 if level == 0 else 1] += FACE_BIAS
        state[name] = bias
    return state


def _tri(values: np.ndarray, period: int) -> np.ndarray:
    """Integer triangle wave 0 … period … 0 over 2·period."""
    return np.abs(values % (2 * period) - period)


def _grid(size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    height, width = size
    return np.mgrid[0:height, 0:width].astype(np.int64)


def _look(kind: str, t: int, size: tuple[int, int]) -> np.ndarray:
    """(H, W, 3) uint8 RGB: one of three slowly moving patterns, at time t."""
    y, x = _grid(size)
    if kind == "a":
        channels = (
            _tri(x + 2 * t, 64) * 255 // 64,
            _tri(y + t, 48) * 255 // 48,
            _tri(x + y, 80) * 255 // 80,
        )
    elif kind == "b":
        channels = (
            _tri(2 * x + y + t, 40) * 200 // 40 + 40,
            np.full_like(x, 30),
            _tri(3 * y, 30) * 255 // 30,
        )
    else:
        disc = (x - 272 - t) ** 2 + (y - 150) ** 2 < 90**2
        channels = (np.where(disc, 240, 20), _tri(x - y + t, 50) * 120 // 50, np.where(disc, 200, 60))
    return np.stack(channels, axis=-1).astype(np.uint8)


def detector_image(size: tuple[int, int] = DETECTOR_IMAGE_SIZE) -> np.ndarray:
    """(H, W, 3) uint8 RGB: two overlapping patterns with a bright ellipse, for S3FD."""
    y, x = _grid(size)
    height, width = size
    ellipse = 9 * (x - width // 2) ** 2 + 16 * (y - height // 2) ** 2 < 16 * (height // 3) ** 2
    image = _look("a", 3, size).astype(np.int64) // 2 + _look("b", 7, size).astype(np.int64) // 2
    image[ellipse] = (image[ellipse] + np.array([200, 160, 140])) // 2
    return image.astype(np.uint8)


def tracking_frame(index: int) -> np.ndarray:
    """(288, 384, 3) uint8 RGB frame `index` of the tracking / crop video."""
    frame = _look("a", index, TRACK_SIZE)
    frame[::37] = (255, 255, 255)  # lines that show where the crop window sits
    frame[:, ::41] = (0, 0, 0)
    return frame


def tracking_frames() -> Iterator[np.ndarray]:
    return (tracking_frame(index) for index in range(TRACK_FRAMES))


def scene_frames() -> Iterator[np.ndarray]:
    """SCENE_FRAMES (304, 544, 3) uint8 RGB frames: looks a | b (5 frames) | a | c, cut at 25, 30 and 40."""
    starts = [start for start, _ in SCENE_SPANS]
    for index in range(SCENE_FRAMES):
        span = int(np.searchsorted(starts, index, side="right")) - 1
        yield _look(SCENE_SPANS[span][1], index, SCENE_SIZE)


def _box(cx: float, cy: float, side: float, conf: float) -> list[float]:
    return [cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2, conf]


def _wave(t: int, period: int) -> float:
    """A float triangle wave in [−1, 1]."""
    return abs(t % (2 * period) - period) / period * 2 - 1


def tracking_detections() -> list[np.ndarray]:
    """TRACK_FRAMES (K, 5) float64 synthetic S3FD outputs (x1, y1, x2, y2, score), best first:

    A (side ≈ 126) moves right; it misses frames 10–14 and 31, jumps 14 px at frame 40 and has a
    near-duplicate listed right after it at frame 50. D (side 120) sits half off the right edge and misses
    every 9th frame. B (side 104, top just off the frame) vanishes over frames 20–46, a gap of 27 > 25.
    C (side 110) lives over frames 5–40 only (36 detections).
    """
    detections = []
    for t in range(TRACK_FRAMES):
        rows = []
        if not (10 <= t <= 14 or t == 31):
            cx = 100 + 0.9 * t + (14 if t == 40 else 0)
            rows.append(_box(cx, 150 + 3 * _wave(t, 12), 126 + 4 * _wave(t, 17), 0.99 - 0.0005 * t))
            if t == 50:
                rows.append(_box(cx + 3, 153, 126, 0.985))
        if t >= 4 and t % 9:
            rows.append(_box(350 - 0.2 * t, 160 + 0.1 * t, 120, 0.97))
        if not 20 <= t <= 46:
            rows.append(_box(230, 50, 104, 0.95))
        if 5 <= t <= 40:
            rows.append(_box(200, 230, 110, 0.93))
        detections.append(np.array(rows, np.float64).reshape(-1, 5))
    return detections


# (shot cuts, min_track) the tracker runs with: one shot (upstream's default 50), and a cut at 18 with
# min_track 20, where the second shot ends a frame early (scenedetect 0.6.1's last scene) and B splits
TRACK_CASES = (((), 50), ((18,), 20))


def speech_samples(num_samples: int = TRACK_FRAMES * SAMPLES_PER_FRAME) -> np.ndarray:
    """(num_samples,) int16: a deterministic saw-and-hash signal standing for the video's 16 kHz audio."""
    i = np.arange(num_samples, dtype=np.int64)
    return (((i * 7919) % 20011 - 10005) + (i % 160) * 60 - 4800).astype(np.int16)
