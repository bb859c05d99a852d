"""DVC stages `train_unet_stage1` / `train_unet_stage2`: the denoiser on cached latents (resumes a killed run)."""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from synclip.audio.whisper import WhisperAudioEncoder, load_whisper_encoder, whisper_features
from synclip.config import Params, UNetStageParams, load_params
from synclip.constants import SAMPLES_PER_FRAME, VIDEO_FPS
from synclip.data.unet_windows import load_window_clips
from synclip.entry import run
from synclip.errors import UserError
from synclip.face.mask import load_mask
from synclip.lipsync import frame_tokens
from synclip.log import setup_logging
from synclip.nn.syncnet import StableSyncNet
from synclip.pipeline import PipelineConfig
from synclip.runtime import configure
from synclip.train.diffusion import DiffusionObjective, load_lpips, load_trepa_term
from synclip.train.samples import ValidationSample, forget_samples, sample_source
from synclip.train.syncnet import load_syncnet
from synclip.train.unet import train_unet, unet_config
from synclip.train.vae import load_vae

log = logging.getLogger("stages.train_unet")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--stage", type=int, choices=(1, 2), required=True)
    parser.add_argument("--manifest", type=Path, required=True, help="data/synced/manifest.parquet")
    parser.add_argument("--clips", type=Path, required=True, help="data/processed/clips")
    parser.add_argument("--vae", type=Path, required=True)
    parser.add_argument("--init", type=Path, help="stage 2: the stage-1 UNet artifact")
    parser.add_argument(
        "--syncnet", type=Path, help="the SyncNet artifact (stage 2's sync loss; scores the samples)"
    )
    parser.add_argument("--trepa", type=Path, help="stage 2: the TREPA video encoder folder (optional)")
    parser.add_argument("--whisper-cache", type=Path, required=True)
    parser.add_argument("--latent-cache", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--metrics", type=Path, required=True)
    parser.add_argument("--history", type=Path, required=True)
    parser.add_argument("--samples", type=Path, help="folder of the validation sample videos (none without)")
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    args = parser.parse_args()
    params = load_params(args.params)
    setup_logging(params.runtime.log_level)
    device = configure(params.runtime)
    stage = params.train_unet.stage(args.stage)
    weights = stage.loss_weights
    if args.stage == 2 and args.init is None:
        raise UserError("stage 2 starts from the stage-1 UNet: pass --init")

    vae = load_vae(args.vae, param="--vae").to(device).requires_grad_(False)
    judge = load_syncnet(args.syncnet).to(device).requires_grad_(False) if args.syncnet else None
    syncnet = judge if weights.sync else None
    lpips, lpips_reason = load_lpips(params.pretrained.lpips_vgg) if weights.lpips else (None, "weight 0")
    trepa, trepa_reason = load_trepa_term(args.trepa) if weights.trepa else (None, "weight 0")
    objective = DiffusionObjective(
        dataclasses.asdict(weights),
        recon_mouth=params.vae.mouth,
        recon_mouth_weight=stage.recon_mouth_weight,
        pixel_region=stage.pixel_region,
        vae=vae,
        syncnet=syncnet,
        lpips=lpips.to(device) if lpips is not None else None,
        trepa=trepa.to(device) if trepa is not None else None,
        unavailable={"sync": "no --syncnet given", "lpips": lpips_reason, "trepa": trepa_reason},
    )

    manifest = pd.read_parquet(args.manifest)
    for split in ("train", "val"):
        if not (manifest["split"] == split).any():
            raise UserError(f"{args.manifest} has no {split} clips; UNet training needs both")
    train_rows = manifest[manifest["split"] == "train"].sort_values("clip")
    if stage.max_clips:
        train_rows = train_rows.iloc[:: max(1, len(train_rows) // stage.max_clips)].iloc[: stage.max_clips]
    val_rows = manifest[manifest["split"] == "val"].sort_values("clip").iloc[: stage.val_windows]
    whisper = load_whisper_encoder(params.pretrained.whisper)
    region = stage.pixel_region if objective.needs_pixels else None
    common = dict(vae=vae, whisper=whisper, whisper_cache=args.whisper_cache, latent_cache=args.latent_cache,
                  pixel_region=region)  # fmt: skip
    train = load_window_clips(train_rows, args.clips, description="train clips", **common)
    val = load_window_clips(val_rows, args.clips, description="val clips", **common)
    config = unet_config(params.unet, stage, audio_width=whisper.width)
    sample = None
    if args.samples is not None:
        args.samples.mkdir(parents=True, exist_ok=True)  # a DVC out, also when sampling is off
        if stage.sample_every:
            sample = validation_sample(params, stage, manifest, args.clips, vae, whisper, judge, args.samples)
        else:
            forget_samples(args.samples)  # none of an earlier run's samples are this run's
    _, history = train_unet(
        train, val, objective, config, stage, args.out, device, params.seed, init=args.init,
        info={"stage": args.stage, "manifest": str(args.manifest)}, sample=sample,
    )  # fmt: skip

    rows = history.rows
    last = rows[-1]
    summary = {
        "stage": args.stage,
        "steps": last["step"],
        "train_seconds": round(history.seconds, 1),
        "seconds_per_step": round(history.seconds / last["step"], 3),
        "train_clips": len(train),
        "val_clips": len(val),
        "terms": objective.weights,
        "disabled_terms": objective.disabled,
        **{k: v for k, v in last.items() if k.startswith(("val_", "sample_"))},
        "best_val_total": min(r["val_total"] for r in rows if r["step"] > 0),
    }
    if sample is not None:
        summary["sample"] = {"face": sample.source.face, "audio": sample.source.audio,
                             "frames": len(sample.source.frames), **sample.baselines}  # fmt: skip
    if rows[0]["step"] == 0:  # stage 2: the stage-1 UNet's scores under this stage's terms
        summary["init"] = {k: v for k, v in rows[0].items() if k.startswith(("val_", "sample_"))}
    args.metrics.parent.mkdir(parents=True, exist_ok=True)
    args.metrics.write_text(json.dumps(summary, indent=1, sort_keys=True))
    args.history.parent.mkdir(parents=True, exist_ok=True)
    with args.history.open("w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=list(last), restval="")  # step 0 has no train_ columns
        writer.writeheader()
        writer.writerows(rows)


def validation_sample(
    params: Params,
    stage: UNetStageParams,
    manifest: pd.DataFrame,
    clips_dir: Path,
    vae: torch.nn.Module,
    whisper: WhisperAudioEncoder,
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
        resolution=params.preprocess.resolution, num_frames=inference.num_frames, overlap=inference.overlap,
        steps=stage.sample_steps, guidance=stage.sample_guidance, seed=inference.seed, eta=inference.eta,
    )  # fmt: skip
    log.info("validation samples: %s with the audio of %s (%d frames) → %s", source.face, source.audio,
             len(source.frames), out)  # fmt: skip
    tokens = frame_tokens(features, range(len(source.frames)), VIDEO_FPS)
    mask = load_mask(params.preprocess.resolution)
    return ValidationSample(source, tokens, vae, mask, sampler, out, judge, params.syncnet.max_offset)


if __name__ == "__main__":
    run(main)
