"""SyncNet data: the lower halves of processed clips with their mel, and in/out-of-sync pairs."""

from __future__ import annotations

import itertools
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from synclip.audio.mel import mel_window, syncnet_mel
from synclip.constants import syncnet_mel_start
from synclip.images import Box, crop_resize, to_unit
from synclip.log import track
from synclip.media.decode import iter_frames, read_audio
from synclip.nn.syncnet import SyncNetConfig

log = logging.getLogger(__name__)

SMALL_OFFSETS = (1, 2, 3)


@dataclass(frozen=True)
class SyncView:
    """Which part of the aligned face the SyncNet looks at, and at what size."""

    crop: Box  # (top, bottom, left, right) fractions of the face crop
    size: tuple[int, int]  # (H, W)

    @staticmethod
    def of(config: SyncNetConfig) -> SyncView:
        return SyncView(crop=config.crop, size=config.image_size)


@dataclass
class Clip:
    name: str
    identity: str
    frames: np.ndarray  # (T, H, W, 3) uint8, the SyncNet's view of each frame
    mel: torch.Tensor  # (80, M)
    shift: int = 0  # audio correction in frames (sync_filter's offset): audio of frame t is at t + shift
    voiced: np.ndarray | None = None  # (T,) bool: the audio of frame t carries speech energy

    def __post_init__(self) -> None:
        if self.voiced is None:
            self.voiced = voiced_frames(self.mel, len(self.frames))


def voiced_frames(mel: torch.Tensor, frames: int, below_peak_db: float = 25.0) -> np.ndarray:
    """Per video frame: is its audio within `below_peak_db` of the clip's loudest frame?

    The mel is in [−4, 4] for [−100, 0] dB, so 1 unit = 12.5 dB.
    """
    energy = mel.mean(dim=0).numpy()
    starts = [syncnet_mel_start(t) for t in range(frames + 1)]
    per_frame = np.array([energy[a:b].max(initial=-4.0) for a, b in itertools.pairwise(starts)])
    return per_frame > per_frame.max(initial=-4.0) - below_peak_db / 12.5


def validation_rows(manifest: pd.DataFrame) -> pd.DataFrame:
    """The val rows of a preprocessing manifest whose audio is not known to be shifted.

    A clip whose ground truth (SynthTalk's sidecar: `gt_av_offset`) says the audio is off by some
    frames has no in-sync pairs at offset 0, so it would count right answers as wrong. Clips
    without ground truth (real footage) are kept.
    """
    val = manifest[manifest["split"] == "val"]
    shifted = val["gt_av_offset"].fillna(0) != 0
    if shifted.any():
        log.info(
            "validating without %d val clip(s) whose audio is shifted by their ground truth: %s",
            int(shifted.sum()),
            ", ".join(val.loc[shifted, "clip"]),
        )
    return val[~shifted]


def load_clip(path: Path, view: SyncView, name: str = "", identity: str = "", shift: int = 0) -> Clip:
    frames = np.stack([crop_resize(frame, view.crop, view.size) for frame in iter_frames(path)])
    return Clip(name or path.stem, identity, frames, syncnet_mel(read_audio(path)), shift)


def load_clips(manifest: pd.DataFrame, clips_dir: Path, view: SyncView, description: str) -> list[Clip]:
    """Every clip of `manifest` (rows of the preprocessing manifest) in memory, as the SyncNet sees them."""
    return [
        load_clip(
            clips_dir / f"{row.clip}.mp4",
            view,
            row.clip,
            row.identity,
            int(getattr(row, "audio_shift", 0) or 0),
        )
        for row in track(list(manifest.itertuples()), description, unit="clips")
    ]


def visual_window(clip: Clip, start: int, num_frames: int) -> torch.Tensor:
    """(3·F, H, W) in [−1, 1]: frames [start, start + F) stacked on channels (frame-major, RGB)."""
    frames = to_unit(clip.frames[start : start + num_frames])  # (F, 3, H, W)
    return frames.reshape(-1, *frames.shape[2:])


def augment_windows(
    frames: torch.Tensor, rng: np.random.Generator, flip_fraction: float, brightness: float, contrast: float
) -> torch.Tensor:
    """Training windows (B, 3·F, H, W) in [−1, 1], each mirrored left-right with probability
    `flip_fraction` and given one contrast gain in [1/contrast, contrast] and one brightness
    offset in ±brightness for all its frames. Sync does not change; who is speaking and the light
    do, which the expert should not learn."""
    size = len(frames)
    flip = torch.from_numpy(rng.random(size) < flip_fraction)
    frames = torch.where(flip[:, None, None, None], frames.flip(-1), frames)
    gain = torch.from_numpy(rng.uniform(1 / contrast, contrast, size)).to(frames.dtype)
    offset = torch.from_numpy(rng.uniform(-brightness, brightness, size)).to(frames.dtype)
    return (frames * gain[:, None, None, None] + offset[:, None, None, None]).clamp(-1, 1)


def audio_window(clip: Clip, start: int, num_frames: int) -> torch.Tensor:
    """(1, 80, W) mel window of frames [start, start + F), with the clip's audio correction applied."""
    return mel_window(clip.mel, start + clip.shift, num_frames)[None]


@dataclass(frozen=True)
class Pair:
    clip: int  # index into the sampler's clips
    start: int  # first video frame
    audio_start: int  # first frame whose audio is paired with them
    label: float  # 1 in sync, 0 not


class PairSampler:
    """Balanced in-sync / out-of-sync pairs from a list of clips, drawn from one numpy Generator.

    A positive pairs frames [s, s + F) with the mel window of the same frames; a negative pairs them
    with the window of [s + Δ, s + Δ + F), Δ ≠ 0 — a share of negatives uses |Δ| ≤ 3, so the expert
    learns that a small slip is already out of sync (LatentSync draws any other start of the clip).

    Only windows whose audio is voiced for at least `min_voiced` of their frames are used: two
    silent windows with closed mouths are the same picture whether or not they are in sync, and
    would only teach the expert to guess.
    """

    def __init__(
        self,
        clips: list[Clip],
        num_frames: int,
        small_offset_fraction: float,
        rng: np.random.Generator,
        min_voiced: float = 0.5,
    ):
        self.num_frames = num_frames
        self.small = small_offset_fraction
        self.rng = rng
        kernel = np.ones(num_frames)
        self.clips, self.starts = [], []
        for clip in clips:
            if len(clip.frames) < num_frames + max(SMALL_OFFSETS):
                continue
            share = np.convolve(clip.voiced.astype(float), kernel, mode="valid") / num_frames  # per start
            starts = np.flatnonzero(share >= min_voiced)
            if len(starts) >= 2:
                self.clips.append(clip)
                self.starts.append(starts)
        if not self.clips:
            raise ValueError(f"no clip has two voiced {num_frames}-frame windows to pair")
        counts = np.array([len(s) for s in self.starts], dtype=np.float64)
        self.weights = counts / counts.sum()

    def draw(self) -> Pair:
        index = int(self.rng.choice(len(self.clips), p=self.weights))
        starts = self.starts[index]
        start = int(starts[self.rng.integers(len(starts))])
        if self.rng.random() < 0.5:
            return Pair(index, start, start, 1.0)
        usable = set(starts.tolist())
        if self.rng.random() < self.small:
            offsets = [s for d in SMALL_OFFSETS for s in (d, -d) if start + s in usable]
            if offsets:
                return Pair(index, start, start + offsets[int(self.rng.integers(len(offsets)))], 0.0)
        others = starts[starts != start]
        return Pair(index, start, int(others[self.rng.integers(len(others))]), 0.0)  # any other voiced start

    def anchor(self) -> tuple[int, int]:
        """(clip index, start) of a voiced window."""
        index = int(self.rng.choice(len(self.clips), p=self.weights))
        starts = self.starts[index]
        return index, int(starts[self.rng.integers(len(starts))])

    def anchors(self, size: int, per_clip: int) -> list[tuple[int, int]]:
        """`size` (clip index, start) voiced windows, `per_clip` distinct starts of each clip drawn
        (fewer when a clip has fewer), so a batch holds same-speaker, same-face windows that only
        their timing tells apart."""
        if per_clip == 1:
            return [self.anchor() for _ in range(size)]
        anchors: list[tuple[int, int]] = []
        while len(anchors) < size:
            index = int(self.rng.choice(len(self.clips), p=self.weights))
            starts = self.starts[index]
            picks = self.rng.choice(
                starts, size=min(per_clip, len(starts), size - len(anchors)), replace=False
            )
            anchors.extend((index, int(start)) for start in picks)
        return anchors

    def offset_batch(
        self, size: int, deltas: tuple[int, ...], per_clip: int = 1
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(B, 3·F, H, W) video windows, (B, D, 1, 80, W) audio windows at each start + Δ (Δ = deltas)
        and (B,) the index of each window's clip."""
        anchors = self.anchors(size, per_clip)
        frames = torch.stack([visual_window(self.clips[c], s, self.num_frames) for c, s in anchors])
        mel = torch.stack(
            [
                torch.stack([audio_window(self.clips[c], s + d, self.num_frames) for d in deltas])
                for c, s in anchors
            ]
        )
        return frames, mel, torch.tensor([c for c, _ in anchors])

    def tensors(self, pairs: list[Pair]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(B, 3·F, H, W), (B, 1, 80, W), (B,) labels."""
        return (
            torch.stack([visual_window(self.clips[p.clip], p.start, self.num_frames) for p in pairs]),
            torch.stack([audio_window(self.clips[p.clip], p.audio_start, self.num_frames) for p in pairs]),
            torch.tensor([p.label for p in pairs]),
        )

    def batch(self, size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.tensors([self.draw() for _ in range(size)])
