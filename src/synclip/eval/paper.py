"""The papers' instruments in one place: Sync-C / Sync-D (syncnet_python's SyncNet on S3FD or MediaPipe
face crops), FVD (I3D), FID (pytorch-fid's Inception) and LPIPS, each loaded from its published weights
or off with the reason, and every number reported beside its weights' sha256.

Glossary: N frames, H/W pixels.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch

from synclip.config import PretrainedParams
from synclip.constants import VIDEO_FPS
from synclip.errors import UserError
from synclip.eval.face_tracks import FrameSource, load_s3fd, track_faces_mediapipe, track_faces_s3fd
from synclip.eval.fidelity import (
    FVD_LENGTH,
    FVD_START,
    fid_features,
    frechet_distance,
    fvd,
    fvd_window,
    load_fid_inception,
    load_i3d,
)
from synclip.eval.sync_conf import SyncConf, aggregate, load_syncnet_v2, sync_conf
from synclip.media.decode import iter_frames, read_audio
from synclip.media.probe import MediaError, probe, require_video
from synclip.pretrained.store import sha256_file
from synclip.train.losses import load_lpips

log = logging.getLogger(__name__)

# HDTF's clips are 512 px face crops; aligned R px faces are resized to this before the instruments see
# them, so S3FD's 0.25 detection scale and syncnet_python's 100 px minimum face apply as on HDTF.
PAPER_SIZE = 512
MIN_TRACK = 50  # eval_sync_conf.py: a face track must hold more than 50 frames

# instrument → (its pretrained key, the published file it expects)
SETTINGS = {
    "sync": ("syncnet_v2", "syncnet_v2.model"),
    "crops": ("s3fd", "sfd_face.pth"),
    "fvd": ("i3d", "i3d_torchscript.pt"),
    "fid": ("fid_inception", "pt_inception-2015-12-05-6726825d.pth"),
    "lpips": ("lpips_vgg", "vgg16-397923af.pth"),
}


@dataclass(frozen=True)
class Instrument:
    """One instrument's weights: where they are and their sha256, or why the instrument is off."""

    name: str
    setting: str  # the pretrained.<key> that names its weights
    path: str | None
    sha256: str | None
    reason: str = ""  # empty when on

    @property
    def on(self) -> bool:
        return not self.reason

    def describe(self) -> dict:
        return {
            "setting": f"pretrained.{self.setting}",
            "weights": self.path,
            "sha256": self.sha256,
            "status": "on" if self.on else f"disabled: {self.reason}",
        }


def locate(pretrained: PretrainedParams, name: str) -> Instrument:
    """The instrument `name` of SETTINGS as `pretrained` configures it (nothing is loaded here)."""
    setting, published = SETTINGS[name]
    path = getattr(pretrained, setting)
    if path is None:
        how = (
            "`synclip weights import-latentsync … --auxiliary`" if name != "fid" else "pytorch-fid's release"
        )
        return Instrument(name, setting, None, None, f"pretrained.{setting} is null ({published}; {how})")
    if not Path(path).is_file():
        return Instrument(name, setting, path, None, f"pretrained.{setting}: {path} does not exist")
    return Instrument(name, setting, path, sha256_file(Path(path)))


@dataclass
class PaperInstruments:
    """The loaded networks (None where off) and what each instrument is; `landmarker` crops faces
    where S3FD is off (Sync-C / D) and for FVD (LatentSync crops those with MediaPipe too)."""

    landmarker: str
    device: torch.device
    instruments: dict[str, Instrument]
    syncnet: torch.nn.Module | None = None
    s3fd: torch.nn.Module | None = None
    i3d: torch.nn.Module | None = None
    inception: torch.nn.Module | None = None
    lpips: torch.nn.Module | None = None

    def describe(self) -> dict[str, dict]:
        described = {name: item.describe() for name, item in self.instruments.items()}
        if self.syncnet is not None:
            described["crops"]["used"] = "s3fd" if self.s3fd is not None else "mediapipe"
        return described


def load_paper_instruments(
    pretrained: PretrainedParams,
    landmarker: str | Path,
    device: torch.device,
    only: tuple[str, ...] = tuple(SETTINGS),
) -> PaperInstruments:
    """Every instrument of `only` whose weights `pretrained` names and that exist; a file that exists but
    does not load is an error (UserError naming it), never an instrument quietly off."""
    instruments = {name: locate(pretrained, name) for name in only}
    loaded = PaperInstruments(str(landmarker), device, instruments)
    on = {name for name, item in instruments.items() if item.on}
    if "sync" in on:
        loaded.syncnet = load_syncnet_v2(instruments["sync"].path).to(device)
    if "crops" in on:
        loaded.s3fd = load_s3fd(instruments["crops"].path).to(device)
    if "fvd" in on:
        loaded.i3d = load_i3d(instruments["fvd"].path).to(device)
    if "fid" in on:
        loaded.inception = load_fid_inception(instruments["fid"].path).to(device)
    if "lpips" in on:
        lpips, reason = load_lpips(instruments["lpips"].path)
        assert lpips is not None, reason  # the file exists (checked by locate)
        loaded.lpips = lpips.to(device)
    for name, item in instruments.items():
        log.info("paper instrument %s: %s", name, item.describe()["status"])
    return loaded


def paper_size(frames: np.ndarray) -> np.ndarray:
    """(N, H, W, 3) uint8 → (N, 512, 512, 3): aligned faces at HDTF's size (bicubic up, area down)."""
    if frames.shape[1:3] == (PAPER_SIZE, PAPER_SIZE):
        return frames
    method = cv2.INTER_CUBIC if frames.shape[1] < PAPER_SIZE else cv2.INTER_AREA
    return np.stack([cv2.resize(f, (PAPER_SIZE, PAPER_SIZE), interpolation=method) for f in frames])


def int16_samples(samples: np.ndarray) -> np.ndarray:
    """16 kHz float samples in [−1, 1] → int16, as syncnet_python reads its ffmpeg wav (the MFCC is
    computed on the int16 values; their scale matters)."""
    return np.clip(np.round(samples * 32768.0), -32768, 32767).astype(np.int16)


def sync_scores(instruments: PaperInstruments, frames: np.ndarray, samples: np.ndarray) -> dict:
    """Sync-C, Sync-D and the AV offset of one video as LatentSync's eval_sync_conf.py measures them:
    face tracks of more than 50 frames (S3FD's, or MediaPipe's when S3FD is off), each scored by
    syncnet_python's SyncNet on its 224 px crops, averaged over tracks. {} when the SyncNet is off;
    NaN scores (and face_tracks 0) when no track is long enough.

    frames: (N, H, W, 3) uint8 RGB at 25 fps; samples: (N · 640,) float 16 kHz.
    """
    if instruments.syncnet is None:
        return {}
    resized = paper_size(frames)
    scores = _track_scores(instruments, resized, int16_samples(samples), shot_cuts=[])  # aligned: one shot
    if not scores:
        return {"sync_c": float("nan"), "sync_d": float("nan"), "sync_offset": float("nan"), "face_tracks": 0}
    summary = aggregate(scores)
    return {
        "sync_c": summary["sync_c"],
        "sync_d": summary["sync_d"],
        "sync_offset": summary["offset"],
        "face_tracks": len(scores),
    }


def _track_scores(
    instruments: PaperInstruments, frames: FrameSource, pcm: np.ndarray, shot_cuts: list[int] | None
) -> list[SyncConf]:
    """SyncConf of every face track of more than MIN_TRACK frames (S3FD's, else MediaPipe's)."""
    assert instruments.syncnet is not None
    if instruments.s3fd is not None:
        tracks = track_faces_s3fd(
            frames, instruments.s3fd, shot_cuts, min_track=MIN_TRACK, device=instruments.device
        )
    else:
        tracks = track_faces_mediapipe(frames, instruments.landmarker, shot_cuts, min_track=MIN_TRACK)
    return [
        sync_conf(instruments.syncnet, track.crops, pcm[track.audio_slice], device=instruments.device)
        for track in tracks
    ]


def score_paper_video(
    instruments: PaperInstruments, video: str | Path, audio: str | Path | None = None
) -> dict:
    """Sync-C / Sync-D of any video, as LatentSync's eval_sync_conf.py scores a generated video: its
    frames at 25 fps, shots found, every face track of more than 50 frames scored against the video's
    audio (or `audio`'s), averaged over tracks. A UserError when the SyncNet is off or no track is found."""
    if instruments.syncnet is None:
        raise UserError(
            f"Sync-C / Sync-D need syncnet_python's SyncNet: {instruments.instruments['sync'].reason}"
        )
    video = Path(video)
    require_video(probe(video))
    pcm = int16_samples(read_audio(Path(audio) if audio is not None else video))
    scores = _track_scores(instruments, lambda: iter_frames(video), pcm, shot_cuts=None)
    if not scores:
        raise MediaError(
            f"{video}: no face track of more than {MIN_TRACK} frames (at least {MIN_TRACK / VIDEO_FPS:g} s "
            "of one face) to score"
        )
    summary = aggregate(scores)
    return {
        "offset": summary["offset"],
        "sync_c": summary["sync_c"],
        "sync_d": summary["sync_d"],
        "face_tracks": len(scores),
        "crops": "s3fd" if instruments.s3fd is not None else "mediapipe",
        "tracks": [score.as_dict() for score in scores],
        "instruments": instruments.describe(),
    }


def fidelity_scores(
    instruments: PaperInstruments, generated: list[np.ndarray], real: list[np.ndarray]
) -> dict:
    """FVD, FID and LPIPS of generated videos against the real ones they stand for (same order).

    FVD: I3D features of frames 20–35 of each video, face-cropped at 224 px (LatentSync's eval_fvd.py);
    it needs two videos of 36 frames at least. FID: Inception pool features of every frame (as pytorch-fid
    over dumped frames). LPIPS: the mean over every frame pair (VGG, lpips 0.1). Each is None, with the
    reason in `notes`, when its weights are off or the videos are too few or too short.
    """
    assert len(generated) == len(real), (len(generated), len(real))
    out: dict[str, float | None] = {"fvd": None, "fid": None, "lpips": None}
    notes: dict[str, str] = {}
    device = instruments.device
    if instruments.i3d is not None:
        long_enough = [i for i, video in enumerate(real) if len(video) >= FVD_START + FVD_LENGTH]
        if len(long_enough) < 2:
            notes["fvd"] = f"needs 2 videos of {FVD_START + FVD_LENGTH} frames, got {len(long_enough)}"
        else:
            window = FVD_START + FVD_LENGTH  # only these frames are resized: fvd_window reads no others
            windows = {
                side: np.stack(
                    [fvd_window(paper_size(videos[i][:window]), instruments.landmarker) for i in long_enough]
                )
                for side, videos in (("real", real), ("fake", generated))
            }
            out["fvd"] = fvd(instruments.i3d, windows["real"], windows["fake"], device=device)
    if instruments.inception is not None:
        real_features = np.concatenate([fid_features(instruments.inception, v, device=device) for v in real])
        fake_features = np.concatenate(
            [fid_features(instruments.inception, v, device=device) for v in generated]
        )
        if len(real_features) < 2:
            notes["fid"] = f"needs 2 frames at least, got {len(real_features)}"
        else:
            out["fid"] = frechet_distance(real_features, fake_features)
    if instruments.lpips is not None:
        out["lpips"] = _mean_lpips(instruments.lpips, generated, real, device)
    return {**out, "notes": notes} if notes else out


@torch.no_grad()
def _mean_lpips(
    lpips: torch.nn.Module,
    generated: list[np.ndarray],
    real: list[np.ndarray],
    device: torch.device,
    batch: int = 16,
) -> float:
    total, count = 0.0, 0
    for fake_video, real_video in zip(generated, real, strict=True):
        for i in range(0, len(real_video), batch):
            a = _unit(fake_video[i : i + batch], device)
            b = _unit(real_video[i : i + batch], device)
            total += float(lpips(a, b)) * len(a)
            count += len(a)
    return total / count


def _unit(frames: np.ndarray, device: torch.device) -> torch.Tensor:
    """(B, H, W, 3) uint8 → (B, 3, H, W) float in [−1, 1]."""
    return torch.from_numpy(frames).to(device).permute(0, 3, 1, 2).float() / 127.5 - 1.0
