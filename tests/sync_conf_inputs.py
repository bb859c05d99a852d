"""A closed-form talking mouth for the Sync-C fixture: scripts/latentsync_fixtures/sync_conf.py and
tests/test_sync_conf.py both compute it, so the fixture stores only upstream's outputs.

Integer arithmetic only (a splitmix64 hash for the "random" parts), so every platform and numpy version
builds the same bytes: a syllable envelope drives both the mouth opening (frame f looks at the envelope
at its centre) and the loudness of a buzz-plus-noise "voice" that lags the mouth by AUDIO_DELAY frames.
"""

from __future__ import annotations

import numpy as np

FRAMES = 50  # 2 s at 25 fps: 45 five-frame windows
SAMPLES_PER_FRAME = 640  # 16 kHz / 25 fps
AUDIO_DELAY = 3  # frames the voice lags the mouth
SIZE = 224
PAD = 32 * SAMPLES_PER_FRAME  # envelope margin at both ends, so a delay or an advance reads defined values
MASK = (1 << 64) - 1


def _mix(values: np.ndarray, salt: int) -> np.ndarray:
    """splitmix64 of (values + salt·golden) as uint64: the same bits everywhere (uint64 arrays wrap)."""
    z = values.astype(np.uint64) + np.uint64((salt * 0x9E3779B97F4A7C15) & MASK)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def _uniform(values: np.ndarray, salt: int, low: int, high: int) -> np.ndarray:
    """int64 in [low, high] from the hash of each value."""
    return (_mix(values, salt) % np.uint64(high - low + 1)).astype(np.int64) + low


def envelope(num_samples: int) -> tuple[np.ndarray, np.ndarray]:
    """(PAD + num_samples + PAD,) int64 loudness 0…1000 and the pitch period (samples) at each sample:
    triangular syllables of 0.15–0.35 s, one in five silent."""
    total = PAD + num_samples + PAD
    loud = np.zeros(total, np.int64)
    period = np.zeros(total, np.int64)
    start, index = 0, 0
    while start < total:
        key = np.array([index])
        length = int(_uniform(key, 1, 2400, 5600)[0])
        amplitude = 0 if int(_uniform(key, 2, 0, 4)[0]) == 0 else int(_uniform(key, 3, 300, 1000)[0])
        position = np.arange(length, dtype=np.int64)
        end = min(start + length, total)
        loud[start:end] = (amplitude * np.minimum(position, length - position) * 2 // length)[: end - start]
        period[start:end] = int(_uniform(key, 4, 90, 150)[0])
        start, index = start + length, index + 1
    return loud, period


def speech(num_frames: int = FRAMES, delay: int = AUDIO_DELAY) -> np.ndarray:
    """(num_frames · 640,) int16 at 16 kHz: a sawtooth buzz plus hashed noise under the envelope,
    read `delay` frames late (the voice at sample n is the envelope at n − delay·640)."""
    num_samples = num_frames * SAMPLES_PER_FRAME
    loud, period = envelope(num_samples)
    n = np.arange(num_samples, dtype=np.int64)
    at = PAD + n - delay * SAMPLES_PER_FRAME
    buzz = (n % period[at]) * 2000 // period[at] - 1000  # −1000…999
    noise = _uniform(n, 5, -300, 300)
    return (loud[at] * (buzz + noise) // 60).astype(np.int16)  # |x| ≤ 1000 · 1300 / 60 < 32768


def openings(num_frames: int = FRAMES) -> np.ndarray:
    """(num_frames,) int64 mouth opening in pixels, 0…30: the envelope at each frame's centre."""
    loud, _ = envelope(num_frames * SAMPLES_PER_FRAME)
    centres = PAD + np.arange(num_frames) * SAMPLES_PER_FRAME + SAMPLES_PER_FRAME // 2
    return loud[centres] * 30 // 1000


def mouth_crops(num_frames: int = FRAMES) -> np.ndarray:
    """(num_frames, 224, 224, 3) uint8 BGR face crops: shaded skin, lips whose inner opening follows
    `openings`, a jitter of ±2 pixels and ±4 levels of hashed grain."""
    y, x = np.mgrid[0:SIZE, 0:SIZE].astype(np.int64)
    skin = np.stack([100 + y // 8, 130 + y // 10 + x // 32, 180 + x // 16 - y // 16], axis=-1)  # BGR
    frames = np.empty((num_frames, SIZE, SIZE, 3), np.uint8)
    for f, opening in enumerate(openings(num_frames)):
        key = np.array([f])
        cx = 112 + int(_uniform(key, 6, -2, 2)[0])
        cy = 150 + int(_uniform(key, 7, -2, 2)[0])
        image = skin.copy()
        for half_w, half_h, colour in (
            (48, 10 + int(opening), (60, 60, 150)),
            (38, int(opening), (30, 20, 40)),
        ):
            if half_h > 0:  # (x−cx)²·h² + (y−cy)²·w² ≤ w²·h², in integers
                inside = (x - cx) ** 2 * half_h**2 + (y - cy) ** 2 * half_w**2 <= half_w**2 * half_h**2
                image[inside] = colour
        grain = _uniform(np.arange(SIZE * SIZE * 3, dtype=np.int64) + f * SIZE * SIZE * 3, 8, -4, 4)
        frames[f] = np.clip(image + grain.reshape(SIZE, SIZE, 3), 0, 255).astype(np.uint8)
    return frames
