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

import cv2
import numpy as np
import torch

import synclip
from synclip.artifacts import (
    CheckpointError,
    load_unet,
    load_vae,
    load_whisper_encoder,
    save_syncnet,
    save_unet,
    save_vae,
)
from synclip.config import Params
from synclip.errors import UserError
from synclip.face.mask import load_mask, mask_path
from synclip.files import staged_folder
from synclip.inference.pipeline import SCHEDULER_CONFIG, LipSyncPipeline, PipelineConfig
from synclip.nn.syncnet import StableSyncNet

log = logging.getLogger(__name__)

KIND = "synclip-pipeline"
PIPELINE_FILE = "pipeline.json"
UNET_DIR, VAE_DIR, WHISPER_DIR, SCHEDULER_DIR, MASK_FILE = "unet", "vae", "whisper", "scheduler", "mask.png"
SYNCNET_DIR = "syncnet"  # optional: the SyncNet that judged the model (an imported LatentSync)


def assemble(
    folder: str | Path,
    unet: torch.nn.Module,
    vae: torch.nn.Module,
    whisper_dir: str | Path,
    config: PipelineConfig,
    mask: str | Path | np.ndarray | None = None,
    scheduler_config: Mapping[str, Any] = SCHEDULER_CONFIG,
    *,
    syncnet: StableSyncNet | None = None,
    extra_files: Mapping[str, str] | None = None,
    verify: bool = False,
) -> Path:
    """Write a packaged model folder: unet/, vae/, whisper/, scheduler/, mask.png, pipeline.json,
    swapped in whole (`synclip.files.staged_folder`), so a reader never sees half a model.

    `unet/` and `vae/` (their artifacts), `whisper/` (the transformers folder), `scheduler/` (DDIM's
    config), `mask.png` (the shipped mask, an image file, or an (R, R) uint8 array, 255 keep) and
    `pipeline.json` (the sampler's defaults and R). Optional extras: `syncnet/` (a SyncNet artifact
    for evaluation and fine-tuning) and `extra_files` ({name: text}, e.g. a record of the sources).
    `verify` loads the staged folder as `load_pipeline` does before it is swapped in."""
    from diffusers import DDIMScheduler

    folder = Path(folder)
    whisper_dir = Path(whisper_dir)
    if not (whisper_dir / "config.json").is_file():
        raise UserError(f"{whisper_dir}: not a transformers Whisper folder (no config.json)")
    extra_files = extra_files or {}
    reserved = {UNET_DIR, VAE_DIR, WHISPER_DIR, SCHEDULER_DIR, MASK_FILE, PIPELINE_FILE, SYNCNET_DIR}
    bad_names = sorted(
        name for name in extra_files if name in reserved or "/" in name or name.startswith(".")
    )
    if bad_names:
        raise ValueError(f"extra_files {bad_names}: names the package uses, or not plain file names")
    with staged_folder(folder) as tmp:
        save_unet(tmp / UNET_DIR, unet)
        save_vae(vae, tmp / VAE_DIR)
        shutil.copytree(whisper_dir, tmp / WHISPER_DIR, ignore=shutil.ignore_patterns(".*"))
        scheduler = {**scheduler_config, "prediction_type": unet.config.prediction_type}
        DDIMScheduler.from_config(scheduler).save_pretrained(tmp / SCHEDULER_DIR)
        if isinstance(mask, np.ndarray):
            if mask.dtype != np.uint8 or mask.ndim != 2:
                raise ValueError(f"mask: expected an (R, R) uint8 array, got {mask.dtype} {mask.shape}")
            if not cv2.imwrite(str(tmp / MASK_FILE), mask):
                raise OSError(f"{tmp / MASK_FILE}: could not write the mask")
        else:
            shutil.copyfile(Path(mask) if mask is not None else mask_path(), tmp / MASK_FILE)
        load_mask(config.resolution, tmp / MASK_FILE)  # fails early on a bad image
        if syncnet is not None:
            save_syncnet(tmp / SYNCNET_DIR, syncnet)
        for name, text in extra_files.items():
            (tmp / name).write_text(text)
        meta = {"kind": KIND, "synclip_version": synclip.__version__, **asdict(config)}
        (tmp / PIPELINE_FILE).write_text(json.dumps(meta, indent=1, sort_keys=True))
        if verify:
            load_pipeline(tmp)
    return folder


def load_pipeline(
    folder: str | Path, device: torch.device | None = None, dtype: torch.dtype | None = None
) -> LipSyncPipeline:
    """A packaged model folder (see `assemble`), loaded strictly onto `device` in `dtype` (default: the
    model's `precision` on CUDA, fp16 for LatentSync's weights; fp32 elsewhere)."""
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
    if dtype is None:
        half = device.type == "cuda" and config.precision == "fp16"
        dtype = torch.float16 if half else torch.float32
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
    config = PipelineConfig(
        resolution=params.preprocess.resolution,
        vae_precision=params.vae.precision,
        **dataclasses.asdict(params.inference),
    )
    folder = assemble(
        out, load_unet(unet), load_vae(vae, param="--vae"), whisper or Path(params.pretrained.whisper), config
    )
    load_pipeline(folder)
    log.info("packaged %s: %s", folder, json.dumps(dataclasses.asdict(config)))
