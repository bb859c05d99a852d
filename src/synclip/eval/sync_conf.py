"""Sync-C / Sync-D (LSE-C / LSE-D) exactly as syncnet_python measures them with its pretrained `S`.

Written anew after LatentSync's eval/syncnet/syncnet_eval.py (`SyncNetEval.evaluate`, `calc_pdist`, itself
joonson/syncnet_python's SyncNetInstance.py) and eval/eval_sync_conf.py (the per-video mean over face
tracks). Everything after upstream's file reading is the same arithmetic in the same order and dtype
(float32 unless the network is cast), so the numbers equal upstream's on the same frames and samples.

Where synclip differs: upstream re-reads each face-crop video through ffmpeg, frames as JPEGs
(`-f image2` at ffmpeg's default MJPEG quality, read back with cv2) and audio as a 16 kHz s16 wav
(`-async 1 -ac 1`). synclip takes the decoded crops and int16 samples themselves, with no JPEG round
trip. Measured on the fixture clip (tests/fixtures/latentsync/sync_conf.safetensors, notes "effects":
50 synthetic 224-pixel frames in a lossless H.264 mp4 with AAC audio, seeded random weights, where
Sync-C ≈ 1.3 and Sync-D ≈ 750): the JPEGs (37.4 dB PSNR, 2.5 levels mean error) move Sync-C by +0.019
and Sync-D by −18.3 (−2.4 %); the AAC-coded wav against the original samples moves Sync-C by −0.098
and Sync-D by +0.15; the offset moves by neither. synclip's own decoders on that mp4 (iter_frames through
`crops_from_frames`, read_audio × 32768 rounded to int16) give upstream's no-JPEG numbers exactly; read_audio
keeps 768 samples of AAC end padding that ffmpeg's wav drops, past the last frame here. Random weights only show the size of the input
change, not what the published weights make of it.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from statistics import fmean

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from einops import rearrange

from synclip.artifacts import load_published_state
from synclip.audio.mfcc import MFCC_FRAMES_PER_SECOND, speech_mfcc
from synclip.constants import AUDIO_SAMPLE_RATE, SAMPLES_PER_FRAME, VIDEO_FPS, exact_div
from synclip.nn.syncnet_v2 import SyncNetV2, SyncNetV2Config

VSHIFT = 15  # offsets searched: −15…+15 frames
CROP_SIZE = 224  # upstream resizes every frame it reads to 224 × 224
LIP_FRAMES = 5  # frames per lip window
MFCC_PER_FRAME = exact_div(MFCC_FRAMES_PER_SECOND, VIDEO_FPS)  # 4
MFCC_WINDOW = LIP_FRAMES * MFCC_PER_FRAME  # 20 MFCC frames: the lip window's 0.2 s


def load_syncnet_v2(path: str | Path) -> SyncNetV2:
    """syncnet_python's `syncnet_v2.model` (a plain torch state dict of `S`) as a SyncNetV2 in eval mode,
    strictly (`synclip.artifacts.load_published_state`: an error names the file and the keys)."""
    return load_published_state(SyncNetV2(SyncNetV2Config()), path, "syncnet_python's syncnet_v2.model")


@dataclass
class SyncConf:
    """One face track's score, as `SyncNetEval.evaluate` computes it.

    `distances` are upstream's `mean_dists`, in its order: entry j compares lip window i with audio
    window i + j − vshift (zero vectors past either end), averaged over the windows; the offset of entry
    j is vshift − j (`offsets`), so a voice that lags the mouth by k frames scores best at offset −k.
    """

    offset: int  # vshift − argmin: upstream's av_offset
    sync_d: float  # min of the mean distances: Sync-D / LSE-D (lower is better)
    sync_c: float  # median − min: Sync-C / LSE-C (higher is better)
    distances: list[float]  # (2·vshift + 1) mean distances, upstream's order (see the class docstring)
    windows: int  # lip/audio windows averaged: min(frames, samples // 640) − 5

    @property
    def offsets(self) -> list[int]:
        """The offset of each entry of `distances`: +vshift … −vshift."""
        vshift = (len(self.distances) - 1) // 2
        return [vshift - j for j in range(len(self.distances))]

    def as_dict(self) -> dict:
        return {**asdict(self), "offsets": self.offsets}


def crops_from_frames(frames_rgb: Iterable[np.ndarray]) -> np.ndarray:
    """(N, H, W, 3) RGB uint8 face crops (an array or any iterable of frames) → (N, 224, 224, 3) BGR uint8,
    resized as upstream does: cv2.resize's default (bilinear) to 224 × 224, even when already 224."""
    crops = []
    for index, frame in enumerate(frames_rgb):
        frame = np.asarray(frame)
        if frame.ndim != 3 or frame.shape[2] != 3 or frame.dtype != np.uint8:
            raise ValueError(f"frame {index}: expected (H, W, 3) uint8 RGB, got {frame.shape} {frame.dtype}")
        # cv2.imread gives BGR; a channel swap commutes with the per-channel resize
        crops.append(cv2.resize(np.ascontiguousarray(frame[..., ::-1]), (CROP_SIZE, CROP_SIZE)))
    if not crops:
        return np.zeros((0, CROP_SIZE, CROP_SIZE, 3), np.uint8)
    return np.stack(crops)


def window_distances(lips: torch.Tensor, audio: torch.Tensor, vshift: int = VSHIFT) -> torch.Tensor:
    """(L, E) lip and (L, E) audio embeddings → (2·vshift + 1, L) distances: entry (j, i) is
    ‖lips[i] − audio[i + j − vshift] + 1e-6‖ (pairwise_distance's eps), audio zero-padded by vshift at both
    ends. Upstream's `calc_pdist`, stacked offset-major as `evaluate` stacks it (its mean over dim 1 is
    summed in that order)."""
    if lips.ndim != 2 or lips.shape != audio.shape:
        raise ValueError(f"embeddings must both be (L, E), got {tuple(lips.shape)} and {tuple(audio.shape)}")
    width = 2 * vshift + 1
    padded = F.pad(audio, (0, 0, vshift, vshift))  # (L + 2·vshift, E)
    rows = [
        F.pairwise_distance(lips[[i], :].repeat(width, 1), padded[i : i + width]) for i in range(len(lips))
    ]
    return torch.stack(rows, 1)  # (2·vshift + 1, L)


def score_distances(distances: torch.Tensor) -> SyncConf:
    """(2·vshift + 1, L) window distances → the SyncConf of their mean over windows (upstream's order)."""
    if distances.ndim != 2 or distances.shape[0] % 2 == 0:
        raise ValueError(f"distances must be (2·vshift + 1, L), got {tuple(distances.shape)}")
    vshift = (distances.shape[0] - 1) // 2
    mean = torch.mean(distances, 1)  # (2·vshift + 1,)
    min_dist, argmin = torch.min(mean, 0)
    conf = torch.median(mean) - min_dist  # an odd count: the middle value, no averaging
    return SyncConf(
        offset=int(vshift - argmin),
        sync_d=min_dist.item(),
        sync_c=conf.item(),
        distances=mean.tolist(),
        windows=distances.shape[1],
    )


@torch.no_grad()
def embed_windows(
    net: SyncNetV2, crops: np.ndarray, mfcc: torch.Tensor, windows: int, batch: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """(L, E) lip and (L, E) audio embeddings of the first L = `windows` windows, in upstream's batches:
    lip window v is crops[v : v + 5], audio window v is MFCC frames 4v … 4v + 19; (13, T) `mfcc` is
    already in the network's dtype. Returned on the CPU, where upstream computes the distances."""
    dtype = mfcc.dtype
    lips, audio = [], []
    for start in range(0, windows, batch):
        stop = min(windows, start + batch)
        clip = torch.from_numpy(crops[start : stop + LIP_FRAMES - 1]).to(dtype)  # (B + 4, H, W, C)
        clip = rearrange(clip, "f h w c -> c f h w")
        lip_in = torch.stack([clip[:, v : v + LIP_FRAMES] for v in range(stop - start)])  # (B, C, 5, H, W)
        lips.append(net.embed_lips(lip_in.to(device)).cpu())
        starts = [MFCC_PER_FRAME * v for v in range(start, stop)]
        mfcc_in = torch.stack([mfcc[None, :, s : s + MFCC_WINDOW] for s in starts])  # (B, 1, 13, 20)
        audio.append(net.embed_audio(mfcc_in.to(device)).cpu())
    return torch.cat(lips), torch.cat(audio)


def sync_conf(
    net: SyncNetV2,
    crops: np.ndarray,
    samples: np.ndarray,
    vshift: int = VSHIFT,
    batch: int = 20,
    device: torch.device | str | None = None,
) -> SyncConf:
    """Sync-C / Sync-D of one face track: (N, 224, 224, 3) BGR uint8 crops (`crops_from_frames`) and
    (M,) int16 samples at 16 kHz (or floats holding int16-scale values: the MFCC depends on the scale).

    Upstream's protocol: L = min(N, M // 640) − 5 windows; lip window v (frames v…v+4) and audio window v
    (MFCC frames 4v…4v+19) are embedded in batches of `batch`, in the network's dtype and on `device`
    (default: the network's); then `window_distances` and `score_distances` on the CPU.
    """
    crops = np.asarray(crops)
    samples = np.asarray(samples)
    if crops.ndim != 4 or crops.shape[1:] != (CROP_SIZE, CROP_SIZE, 3) or crops.dtype != np.uint8:
        raise ValueError(f"crops must be (N, 224, 224, 3) uint8 BGR, got {crops.shape} {crops.dtype}")
    if samples.ndim != 1 or not (samples.dtype == np.int16 or np.issubdtype(samples.dtype, np.floating)):
        raise ValueError(
            f"samples must be (M,) int16 at {AUDIO_SAMPLE_RATE} Hz, got {samples.shape} {samples.dtype}"
        )
    if np.issubdtype(samples.dtype, np.floating) and samples.size:
        peak = float(np.abs(samples).max())
        if 0 < peak <= 1 and not np.array_equal(samples, np.round(samples)):
            raise ValueError(
                f"samples look normalised to [-1, 1] (peak {peak:.3g}); SyncNet's MFCC is taken on int16 values: "
                "scale by 32768"
            )
    if vshift < 0 or batch < 1:
        raise ValueError(f"vshift must be ≥ 0 and batch ≥ 1, got vshift={vshift}, batch={batch}")
    usable = min(len(crops), len(samples) // SAMPLES_PER_FRAME)
    windows = usable - LIP_FRAMES  # upstream's `lastframe`
    if windows < 1:
        raise ValueError(
            f"{len(crops)} frames and {len(samples)} samples ({len(samples) // SAMPLES_PER_FRAME} whole "
            f"frames of audio) give {usable} usable frames; Sync-C needs at least {LIP_FRAMES + 1}"
        )
    parameter = next(net.parameters())
    device = torch.device(device) if device is not None else parameter.device
    mfcc = torch.from_numpy(speech_mfcc(samples, AUDIO_SAMPLE_RATE)).to(parameter.dtype)  # (13, T)
    assert mfcc.shape[1] >= MFCC_PER_FRAME * (windows - 1) + MFCC_WINDOW, (mfcc.shape, windows)
    lips, audio = embed_windows(net, crops, mfcc, windows, batch, device)
    return score_distances(window_distances(lips, audio, vshift))


def aggregate(scores: list[SyncConf]) -> dict:
    """One video's score from its face tracks, as eval_sync_conf.py: offset int(fmean) (truncated toward
    zero), Sync-C fmean. Also the mean Sync-D, which upstream computes per track but never prints."""
    if not scores:
        raise ValueError("no face tracks to aggregate (upstream raises 'Face not detected')")
    return {
        "offset": int(fmean(s.offset for s in scores)),
        "sync_c": fmean(s.sync_c for s in scores),
        "sync_d": fmean(s.sync_d for s in scores),
        "tracks": len(scores),
    }
