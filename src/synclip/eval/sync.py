"""Sync scores with a SyncNet: per-offset distances, LSE-D, LSE-C and the detected AV offset."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from synclip.audio.mel import syncnet_mel
from synclip.config import PreprocessParams
from synclip.constants import VIDEO_FPS
from synclip.data.sync_pairs import Clip, audio_window, visual_window
from synclip.face.align import warp_face
from synclip.face.track import track_faces
from synclip.images import crop_resize
from synclip.media.decode import iter_frames, read_audio
from synclip.media.probe import MediaError, probe, require_video
from synclip.nn.syncnet import StableSyncNet


@dataclass(frozen=True)
class SyncScore:
    offset: int  # detected AV offset in frames (audio late > 0)
    lse_d: float  # min mean distance (lower is better)
    lse_c: float  # median − min (higher is more confident)
    offsets: list[int]
    distances: list[float]  # mean distance per offset

    def as_dict(self) -> dict:
        return {
            "offset": self.offset,
            "lse_c": round(self.lse_c, 5),
            "lse_d": round(self.lse_d, 5),
            "distances": dict(zip(self.offsets, [round(d, 5) for d in self.distances], strict=True)),
        }


@torch.no_grad()
def _embed(fn, windows: list[torch.Tensor], device: torch.device, batch: int) -> torch.Tensor:
    return torch.cat(
        [
            fn(torch.stack(windows[i : i + batch]).to(device)).float().cpu()
            for i in range(0, len(windows), batch)
        ]
    )


def score_clip(
    model: StableSyncNet,
    clip: Clip,
    max_offset: int = 15,
    device: torch.device | None = None,
    batch: int = 64,
) -> SyncScore:
    """Score one clip (lower-half frames + mel); needs at least F frames.

    As syncnet_python does it (Chung & Zisserman's "Out of time" protocol, ±15 frames), with synclip's
    SyncNet: every window of F video frames is compared with the audio windows shifted by k frames,
    k ∈ [−K, K] (K = `max_offset`); distances are Euclidean between the unit embeddings (so they lie in
    [0, √2], not on the original SyncNet's scale). LSE-D = min over k of the mean distance, LSE-C =
    median − min, and the offset is the k at the minimum: k > 0 means the audio is late by k frames.
    """
    device = device or torch.device("cpu")
    frames = model.config.num_frames
    starts = range(len(clip.frames) - frames + 1)
    if not starts:
        raise ValueError(f"clip {clip.name!r} has {len(clip.frames)} frames; scoring needs {frames}")
    visual = _embed(model.embed_visual, [visual_window(clip, s, frames) for s in starts], device, batch)
    first = -max_offset
    audio_starts = range(first, len(starts) + max_offset)
    audio = _embed(model.embed_audio, [audio_window(clip, a, frames) for a in audio_starts], device, batch)
    offsets = list(range(-max_offset, max_offset + 1))
    distances = []
    for k in offsets:
        shifted = audio[np.arange(len(starts)) + k - first]  # audio window starting at s + k
        distances.append(float(torch.linalg.norm(visual - shifted, dim=1).mean()))
    best = int(np.argmin(distances))
    return SyncScore(
        offset=offsets[best],
        lse_d=distances[best],
        lse_c=float(np.median(distances) - distances[best]),
        offsets=offsets,
        distances=distances,
    )


def score_frames(
    model: StableSyncNet,
    frames: np.ndarray,
    mel: torch.Tensor,
    max_offset: int = 15,
    device: torch.device | None = None,
) -> SyncScore:
    """Score aligned faces (N, R, R, 3) uint8 against the mel of their audio (the SyncNet's view is cut here)."""
    config = model.config
    view = np.stack([crop_resize(f, config.crop, config.image_size) for f in frames])
    return score_clip(model, Clip("", "", view, mel), max_offset, device)


def score_video(
    model: StableSyncNet,
    video: str | Path,
    audio: str | Path | None,
    preprocess: PreprocessParams,
    landmarker: str | Path,
    max_offset: int = 15,
    device: torch.device | None = None,
) -> SyncScore:
    """Align the face of any video as preprocessing does, then score it against its (or another) audio."""
    video = Path(video)
    require_video(probe(video))
    track = track_faces(iter_frames(video), landmarker, VIDEO_FPS, only_single=True)
    if not (track.counts == 1).any():
        raise MediaError(f"{video}: no frame shows exactly one face; nothing to score")
    matrices = track.alignments(preprocess.resolution, preprocess.smoothing_frames)
    config = model.config
    frames = np.stack(
        [
            crop_resize(warp_face(f, m, preprocess.resolution), config.crop, config.image_size)
            for f, m in zip(iter_frames(video), matrices, strict=True)
        ]
    )
    source = Path(audio) if audio is not None else video
    samples = read_audio(source)
    return score_clip(model, Clip(video.stem, "", frames, syncnet_mel(samples)), max_offset, device)
