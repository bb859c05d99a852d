"""A packaged model: the folder `assemble` writes and `synclip lipsync` / the service load."""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
from collections.abc import Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

import synclip
from synclip.artifacts import (
    CheckpointError,
    load_unet,
    load_vae,
    load_whisper_encoder,
    save_unet,
    save_vae,
)
from synclip.config import Params
from synclip.errors import UserError
from synclip.face.mask import load_mask, mask_path
from synclip.files import staged_folder
from synclip.inference.pipeline import SCHEDULER_CONFIG, LipSyncPipeline, PipelineConfig

log = logging.getLogger(__name__)

KIND = "synclip-pipeline"
PIPELINE_FILE = "pipeline.json"
UNET_DIR, VAE_DIR, WHISPER_DIR, SCHEDULER_DIR, MASK_FILE = "unet", "vae", "whisper", "scheduler", "mask.png"


def assemble(
    folder: str | Path,
    unet: torch.nn.Module,
    vae: torch.nn.Module,
    whisper_dir: str | Path,
    config: PipelineConfig,
    mask: str | Path | None = None,
    scheduler_config: Mapping[str, Any] = SCHEDULER_CONFIG,
) -> Path:
    """Write a packaged model folder: unet/, vae/, whisper/, scheduler/, mask.png, pipeline.json,
    swapped in whole (`synclip.files.staged_folder`), so a reader never sees half a model.

    `unet/` and `vae/` (their artifacts), `whisper/` (the transformers folder), `scheduler/` (DDIM's
    config), `mask.png` and `pipeline.json` (the sampler's defaults and R)."""
    from diffusers import DDIMScheduler

    folder = Path(folder)
    whisper_dir = Path(whisper_dir)
    if not (whisper_dir / "config.json").is_file():
        raise UserError(f"{whisper_dir}: not a transformers Whisper folder (no config.json)")
    with staged_folder(folder) as tmp:
        save_unet(tmp / UNET_DIR, unet)
        save_vae(vae, tmp / VAE_DIR)
        shutil.copytree(whisper_dir, tmp / WHISPER_DIR, ignore=shutil.ignore_patterns(".*"))
        DDIMScheduler.from_config(dict(scheduler_config)).save_pretrained(tmp / SCHEDULER_DIR)
        shutil.copyfile(Path(mask) if mask is not None else mask_path(), tmp / MASK_FILE)
        load_mask(config.resolution, tmp / MASK_FILE)  # fails early on a bad image
        meta = {"kind": KIND, "synclip_version": synclip.__version__, **asdict(config)}
        (tmp / PIPELINE_FILE).write_text(json.dumps(meta, indent=1, sort_keys=True))
    return folder


def load_pipeline(
    folder: str | Path, device: torch.device | None = None, dtype: torch.dtype = torch.float32
) -> LipSyncPipeline:
    """A packaged model folder (see `assemble`), loaded strictly onto `device` in `dtype`."""
    from diffusers import DDIMScheduler

    folder = Path(folder)
    device = device or torch.device("cpu")
    config_path = folder / PIPELINE_FILE
    if not config_path.is_file():
        raise UserError(
            f"{folder}: no {PIPELINE_FILE}; not a packaged synclip model (see `synclip lipsync --model`)"
        )
    try:
        data = json.loads(config_path.read_text())
    except json.JSONDecodeError as error:
        raise CheckpointError(f"{config_path}: not JSON ({error})") from None
    if data.pop("kind", None) != KIND:
        raise CheckpointError(f"{config_path}: kind is not {KIND!r}")
    data.pop("synclip_version", None)
    try:
        config = PipelineConfig.from_dict(data)
    except (ValueError, TypeError) as error:
        raise CheckpointError(f"{config_path}: {error}") from None
    unet = load_unet(folder / UNET_DIR).to(device, dtype)
    vae = load_vae(folder / VAE_DIR, param=f"{folder / VAE_DIR}").to(device, dtype)
    encoder = load_whisper_encoder(
        folder / WHISPER_DIR, param=f"{folder / WHISPER_DIR}", device=device, dtype=dtype
    )
    scheduler = DDIMScheduler.from_pretrained(folder / SCHEDULER_DIR, local_files_only=True)
    mask = load_mask(config.resolution, folder / MASK_FILE)
    return LipSyncPipeline(unet, vae, encoder, mask, config, dict(scheduler.config))


def assemble_stage(unet: Path, vae: Path, out: Path, params: Params, whisper: Path | None = None) -> None:
    """The `assemble` stage: the stage-2 UNet, the VAE, the Whisper encoder (pretrained.whisper unless
    given), DDIM and the mask → a packaged model in `out`, then loaded strictly as a user will load it."""
    config = PipelineConfig(resolution=params.preprocess.resolution, **dataclasses.asdict(params.inference))
    folder = assemble(
        out, load_unet(unet), load_vae(vae, param="--vae"), whisper or Path(params.pretrained.whisper), config
    )
    load_pipeline(folder)
    log.info("packaged %s: %s", folder, json.dumps(dataclasses.asdict(config)))
