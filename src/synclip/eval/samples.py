"""Validation samples of UNet training: a held-out dubbing, generated the way inference generates it,
written as an mp4 and scored by the SyncNet."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from synclip.audio.mel import syncnet_mel
from synclip.audio.tokens import frame_tokens
from synclip.audio.whisper import whisper_features
from synclip.config import Params, UNetStageParams
from synclip.constants import AUDIO_SAMPLE_RATE, SAMPLES_PER_FRAME, VIDEO_FPS
from synclip.eval.sync import score_frames
from synclip.face.mask import load_mask
from synclip.images import to_uint8, to_unit
from synclip.inference.pipeline import LipSyncPipeline, PipelineConfig
from synclip.media.decode import iter_frames, read_audio
from synclip.media.io import VideoWriter
from synclip.nn.syncnet import StableSyncNet
from synclip.train.unet import forget_samples, sample_path

log = logging.getLogger(__name__)


@dataclass
class SampleSource:
    """What a sample is made of: the faces of clip `face`, the audio (and video) of clip `audio`."""

    face: str
    audio: str
    frames: np.ndarray  # (N, R, R, 3) uint8 aligned faces of `face`
    samples: np.ndarray  # (N · 640,) 16 kHz audio of `audio`
    driving_frames: np.ndarray  # (N, R, R, 3) uint8: the video of `audio` (scored as the ceiling)


def sample_source(rows: pd.DataFrame, clips_dir: Path, frames: int) -> SampleSource:
    """The first clip of `rows` (sorted by name) dubbed with the first clip of another identity, cut
    to at most `frames` frames both have. With one identity the audio is another of its clips, with
    one clip its own."""
    if rows.empty:
        raise ValueError("validation samples need at least one clip")
    rows = rows.sort_values("clip")
    first = rows.iloc[0]
    others = rows[rows["identity"] != first["identity"]]
    if others.empty:
        others = rows.iloc[1:] if len(rows) > 1 else rows
    face, audio = first["clip"], others.iloc[0]["clip"]
    faces = np.stack(list(iter_frames(clips_dir / f"{face}.mp4")))
    driving = np.stack(list(iter_frames(clips_dir / f"{audio}.mp4")))
    samples = read_audio(clips_dir / f"{audio}.mp4")
    count = min(frames, len(faces), len(driving), len(samples) // SAMPLES_PER_FRAME)
    return SampleSource(face, audio, faces[:count], samples[: count * SAMPLES_PER_FRAME], driving[:count])


class ValidationSample:
    """Generate, write and score the sample of a UNet.

    The loss terms of `synclip.train.unet.Validation` say how well one denoising step does; a sample
    says what a user would get: the faces of one val identity, driven by the audio of a clip of another
    identity, through the packaged sampler (`LipSyncPipeline.stream`: DDIM, audio guidance, chunks
    cross-faded). Its sync score against that audio goes into the training history next to the losses;
    the two fixed baselines (the unchanged faces, and the audio's own video) go into the stage's metrics.

    Files: `step_NNNNNN.mp4` in the samples folder, generated faces | the unchanged faces side by side,
    with the driving audio.

    `tokens` are the per-frame audio tokens of `source.samples` (N, S, D), computed once by the
    caller with the UNet's audio encoder. Without a SyncNet the videos are written unscored.
    """

    def __init__(
        self,
        source: SampleSource,
        tokens: torch.Tensor,
        vae: torch.nn.Module,
        mask: torch.Tensor,
        config: PipelineConfig,
        out_dir: str | Path,
        syncnet: StableSyncNet | None = None,
        max_offset: int = 15,
    ) -> None:
        if len(tokens) != len(source.frames):
            raise ValueError(f"{len(tokens)} token frames for {len(source.frames)} faces")
        self.source, self.tokens, self.vae, self.mask, self.config = source, tokens, vae, mask, config
        self.out_dir = Path(out_dir)
        self.syncnet, self.max_offset = syncnet, max_offset
        self.mel = syncnet_mel(source.samples)
        self.baselines = (
            {
                "input": self.score(source.frames),  # the faces unchanged: out of sync with the audio
                "truth": self.score(source.driving_frames),  # the audio's own video: the ceiling
            }
            if syncnet is not None
            else {}
        )

    def score(self, frames: np.ndarray) -> dict:
        device = next(self.syncnet.parameters()).device
        score = score_frames(self.syncnet, frames, self.mel, self.max_offset, device)
        return {"offset": score.offset, "lse_c": round(score.lse_c, 6), "lse_d": round(score.lse_d, 6)}

    def path(self, step: int) -> Path:
        return sample_path(self.out_dir, step)

    def summary(self) -> dict:
        """The clips (face, audio), frames and fixed baselines (`input`, `truth` scores) of the sample."""
        source = self.source
        return {"face": source.face, "audio": source.audio, "frames": len(source.frames), **self.baselines}

    def forget_after(self, step: int) -> None:
        """Remove the samples of steps after `step` (all with −1): a rerun writes them again."""
        forget_samples(self.out_dir, step)

    @torch.no_grad()
    def __call__(self, unet: torch.nn.Module, step: int) -> dict:
        """Sample with `unet` (left in the mode it was in), write `step_NNNNNN.mp4`; the scores as
        `sample_offset`, `sample_lse_c`, `sample_lse_d` (empty without a SyncNet)."""
        was_training = unet.training
        pipeline = LipSyncPipeline(unet, self.vae, None, self.mask, self.config)
        faces = to_unit(self.source.frames)
        try:
            out = np.stack([to_uint8(f) for f in pipeline.stream(zip(faces, self.tokens, strict=True))])
        finally:
            unet.train(was_training)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        side_by_side = np.concatenate([out, self.source.frames], axis=2)
        height, width = side_by_side.shape[1:3]
        with VideoWriter(self.path(step), width, height, VIDEO_FPS, audio_rate=AUDIO_SAMPLE_RATE) as writer:
            for index, frame in enumerate(side_by_side):
                writer.write_frame(frame)
                part = self.source.samples[index * SAMPLES_PER_FRAME : (index + 1) * SAMPLES_PER_FRAME]
                writer.write_audio(part[None])
        if self.syncnet is None:
            return {}
        return {f"sample_{k}": v for k, v in self.score(out).items()}


def validation_sample(
    params: Params,
    stage: UNetStageParams,
    manifest: pd.DataFrame,
    clips_dir: Path,
    vae: torch.nn.Module,
    whisper: torch.nn.Module,
    judge: StableSyncNet | None,
    out: Path,
) -> ValidationSample:
    """The sample of the first in-sync val clip, sampled as `inference` but for steps and guidance."""
    val = manifest[manifest["split"] == "val"]
    in_sync = val[val.get("audio_shift", 0) == 0]
    source = sample_source(in_sync if len(in_sync) else val, clips_dir, stage.sample_frames)
    features = whisper_features(np.pad(source.samples, (0, SAMPLES_PER_FRAME)), whisper).float().cpu()
    inference = params.inference
    sampler = PipelineConfig(
        resolution=params.preprocess.resolution,
        vae_precision=params.vae.precision,
        num_frames=inference.num_frames,
        overlap=inference.overlap,
        steps=stage.sample_steps,
        guidance=stage.sample_guidance,
        seed=inference.seed,
        eta=inference.eta,
        noise_scale=inference.noise_scale,
        kept_cells=inference.kept_cells,
    )
    log.info(
        "validation samples: %s with the audio of %s (%d frames) → %s",
        source.face,
        source.audio,
        len(source.frames),
        out,
    )
    tokens = frame_tokens(features, range(len(source.frames)), VIDEO_FPS)
    mask = load_mask(params.preprocess.resolution)
    return ValidationSample(source, tokens, vae, mask, sampler, out, judge, params.syncnet.max_offset)
