"""The processed clips' frames in memory, for the networks that train on pixels (the VAE, the VideoMAE)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pandas as pd

from synclip.errors import UserError
from synclip.log import track
from synclip.media.decode import iter_frames

log = logging.getLogger(__name__)


@dataclass
class Faces:
    """A pool of aligned face frames in memory."""

    frames: np.ndarray  # (N, H, W, 3) uint8
    identities: np.ndarray  # (N,) str, the identity of each frame
    clips: list[str]  # the clips they came from, in order (for the resume fingerprint)


def load_faces(manifest: pd.DataFrame, clips_dir: str | Path, stride: int, description: str) -> Faces:
    """Every `stride`-th frame of each clip listed in `manifest` (rows of the preprocessing manifest)."""
    frames, identities = [], []
    rows = list(manifest.itertuples())
    for row in track(rows, description, unit="clips"):
        kept = [f for i, f in enumerate(iter_frames(Path(clips_dir) / f"{row.clip}.mp4")) if i % stride == 0]
        frames.extend(kept)
        identities.extend([row.identity] * len(kept))
    if not frames:
        raise UserError(f"{clips_dir}: no frames for {description}")
    return Faces(np.stack(frames), np.array(identities), [row.clip for row in rows])


def load_clip_frames(
    manifest: pd.DataFrame, clips_dir: str | Path, size: int | None, min_frames: int, description: str
) -> list[np.ndarray]:
    """Every clip of `manifest` as uint8 (F, S, S, 3), resized to `size` (None: as stored).

    Clips shorter than `min_frames` cannot hold one window and are left out (logged).
    """
    clips, short = [], []
    for row in track(list(manifest.itertuples()), description, unit="clips"):
        frames = [
            f if size is None else cv2.resize(f, (size, size), interpolation=cv2.INTER_AREA)
            for f in iter_frames(Path(clips_dir) / f"{row.clip}.mp4")
        ]
        (clips if len(frames) >= min_frames else short).append(np.stack(frames) if frames else row.clip)
    if short:
        log.warning("%s: %d clips shorter than %d frames left out", description, len(short), min_frames)
    if not clips:
        raise UserError(f"{clips_dir}: no clip of {description} has {min_frames} frames")
    return clips


def spaced(count: int, total: int) -> np.ndarray:
    """`count` indices spread evenly over range(total) (all of them when count >= total)."""
    return np.unique(np.linspace(0, total - 1, min(count, total)).round().astype(int))
