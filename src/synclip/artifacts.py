"""Every network synclip trains or loads, to and from disk, strictly: a weight that does not fit is an
error naming it, never silently skipped."""

from __future__ import annotations

import dataclasses
import fnmatch
import json
import logging
import pickle
import struct
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import torch
from diffusers import AutoencoderKL
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from synclip.audio.whisper import feature_extractor
from synclip.errors import UserError
from synclip.files import staged_files
from synclip.nn.syncnet import StableSyncNet, SyncNetConfig
from synclip.nn.taef2 import Taef2
from synclip.nn.unet import UNet3DConditionModel, UNetConfig
from synclip.nn.whisper import WhisperAudioEncoder
from synclip.pretrained.store import PretrainedError, require
from synclip.runtime import channels_last, contiguous_layout

log = logging.getLogger(__name__)

M = TypeVar("M", bound=nn.Module)

CONFIG = "config.json"
WEIGHTS = "model.safetensors"
UNET, SYNCNET = "unet", "syncnet"  # the `kind` of synclip's own artifacts
DIFFUSERS_CONFIG = "config.json"
DIFFUSERS_WEIGHTS = "diffusion_pytorch_model.safetensors"
VAE_CLASSES = {"AutoencoderKL": AutoencoderKL, "Taef2": Taef2}  # config.json's _class_name → class


class CheckpointError(UserError):
    """Weights that do not fit the model, or a file that is not a checkpoint; the message lists the keys."""


# --- synclip's artifact format -------------------------------------------------------------------
# synclip's own artifacts are a folder of `config.json` (the network's config and `kind`) +
# `model.safetensors`, rebuilt from their own config when loaded. The VAE and the VideoMAE are stored
# in their library's format (diffusers, transformers) so those libraries read them too; the Whisper
# encoder is read from a transformers folder.


def save_artifact(folder: str | Path, config: Mapping, model: nn.Module, kind: str) -> Path:
    """Write `config.json` (with `kind`) and `model.safetensors` into `folder`, replacing what was
    there; a reader never sees a config without its weights (`synclip.files.staged_files`)."""
    with staged_files(folder, (WEIGHTS, CONFIG)) as tmp:
        (tmp / CONFIG).write_text(json.dumps({"kind": kind, **config}, indent=1, sort_keys=True))
        state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
        save_file(state, str(tmp / WEIGHTS), metadata={"kind": kind})
    return Path(folder)


def read_config(folder: str | Path, kind: str) -> dict:
    path = Path(folder) / CONFIG
    if not path.is_file():
        raise CheckpointError(f"{folder}: no {CONFIG}; not a synclip {kind} artifact")
    config = json.loads(path.read_text())
    if config.get("kind") != kind:
        raise CheckpointError(f"{path}: kind {config.get('kind')!r}, expected {kind!r}")
    return config


def read_weights(folder: str | Path) -> dict[str, torch.Tensor]:
    path = Path(folder) / WEIGHTS
    if not path.is_file():
        raise CheckpointError(f"{folder}: no {WEIGHTS}")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError) as error:
        raise CheckpointError(f"{path} is not a readable safetensors file ({error})") from None


def load_strict(
    model: nn.Module, state: Mapping[str, torch.Tensor], source: str, may_be_missing: Sequence[str] = ()
) -> None:
    """Load `state` into `model`; any unexpected key, mismatched shape or missing key is an error.

    `may_be_missing` lists key prefixes that are allowed to be absent (they keep their
    initialisation), e.g. temporal modules when stage 2 starts from a stage-1 UNet.
    """
    own = model.state_dict()
    unexpected = sorted(k for k in state if k not in own)
    missing = sorted(k for k in own if k not in state and not any(k.startswith(p) for p in may_be_missing))
    mismatched = sorted(
        f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}"
        for k in state
        if k in own and state[k].shape != own[k].shape
    )
    if unexpected or missing or mismatched:
        parts = []
        for label, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", mismatched)):
            if keys:
                shown = ", ".join(keys[:8]) + (f" … (+{len(keys) - 8})" if len(keys) > 8 else "")
                parts.append(f"{len(keys)} {label}: {shown}")
        raise CheckpointError(f"{source} does not match the model: " + "; ".join(parts))
    model.load_state_dict(state, strict=False)


def read_latentsync_checkpoint(path: str | Path) -> dict[str, torch.Tensor]:
    """The state dict of a published LatentSync `.pt` (upstream's container: a dict with `state_dict`),
    weights only: read with `torch.load(weights_only=True)`, so no pickled code ever runs."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except (
        RuntimeError,
        OSError,
        EOFError,
        pickle.UnpicklingError,
    ) as error:  # what torch raises for non-checkpoints
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint ({error})") from None
    if not (isinstance(payload, dict) and "state_dict" in payload):
        raise CheckpointError(f"{path}: not a LatentSync checkpoint (a dict with `state_dict`)")
    state = payload["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path}: holds no state dict of tensors")
    return state


# --- published state dicts (torch.save'd), loaded strictly --------------------------------------

# what torch.load raises for a truncated or foreign file: EOFError (empty), RuntimeError (broken zip),
# OSError, LookupError and struct.error (garbage read as a legacy pickle), UnpicklingError (disallowed
# or broken pickle)
TORCH_UNREADABLE = (
    RuntimeError,
    EOFError,
    OSError,
    LookupError,
    ValueError,
    struct.error,
    pickle.UnpicklingError,
)
# BatchNorm counters: files saved before PyTorch 0.4.1 lack them, and eval mode never reads them
OPTIONAL_KEYS = (".num_batches_tracked",)


def read_state_dict(path: str | Path, what: str) -> dict[str, torch.Tensor]:
    """The plain state dict torch.save'd at `path`, read with weights_only (no pickled code runs); a
    missing or unreadable file, or one that holds anything else, is a CheckpointError naming it and
    `what` it should be."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such file ({what})")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except TORCH_UNREADABLE as error:
        reason = " ".join(str(error).split()).split(". ")[0][:160]  # torch's messages run long
        raise CheckpointError(
            f"{path}: not a readable torch state dict ({type(error).__name__}: {reason})"
        ) from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(
            f"{path}: not a state dict of tensors (got {type(state).__name__}); expected {what}"
        )
    return state


def load_published_state(model: M, path: str | Path, what: str, shown: int = 8) -> M:
    """`model` with the plain state dict torch.save'd at `path` (`what` names the published file in
    errors), in eval mode: read with weights_only, strictly. A missing or unreadable file, or a missing,
    unexpected or misshapen key is a CheckpointError naming the file and the keys (the first `shown`
    of each kind); only OPTIONAL_KEYS may be absent, and keep the model's values."""
    path = Path(path)
    state = read_state_dict(path, what)
    expected = model.state_dict()
    problems = {
        "missing": [k for k in expected if k not in state and not k.endswith(OPTIONAL_KEYS)],
        "unexpected": [k for k in state if k not in expected],
        "misshapen": [
            f"{k} {tuple(state[k].shape)} (expected {tuple(v.shape)})"
            for k, v in expected.items()
            if k in state and state[k].shape != v.shape
        ],
    }
    if any(problems.values()):
        listed = [
            f"{len(keys)} {label}: {', '.join(keys[:shown])}" + (" …" if len(keys) > shown else "")
            for label, keys in problems.items()
            if keys
        ]
        raise CheckpointError(f"{path}: not {what}: {'; '.join(listed)}")
    model.load_state_dict({k: state.get(k, v) for k, v in expected.items()}, strict=True)
    return model.eval()


# --- the UNet ------------------------------------------------------------------------------------


def load_unet_state(
    model: UNet3DConditionModel,
    state: Mapping[str, torch.Tensor],
    source: str = "state dict",
    allow_missing: Sequence[str] = (),
) -> list[str]:
    """Load `state` strictly; returns the missing keys that `allow_missing` excused.

    `allow_missing` holds fnmatch patterns over full keys (e.g. `synclip.nn.unet.MOTION_MODULES`,
    "*.motion_modules.*"): matching keys absent from `state` keep their initialisation and are
    reported (returned and logged). Any other missing key, any unexpected key or wrong shape is a
    `CheckpointError` that lists them.
    """
    own = model.state_dict()
    excused = sorted(
        k for k in own if k not in state and any(fnmatch.fnmatchcase(k, p) for p in allow_missing)
    )
    load_strict(model, state, source, may_be_missing=excused)
    if excused:
        log.info("%s: %d keys absent, kept at initialisation (%s …)", source, len(excused), excused[0])
    return excused


def save_unet(folder: str | Path, model: UNet3DConditionModel, info: Mapping[str, Any] | None = None) -> Path:
    """An artifact: `config.json` (the UNet config under "model", plus `info`) + `model.safetensors`."""
    return save_artifact(folder, {"model": dataclasses.asdict(model.config), **(info or {})}, model, UNET)


def load_unet(folder: str | Path) -> UNet3DConditionModel:
    """A synclip UNet artifact, rebuilt from its own config and loaded strictly (eval mode)."""
    model = UNet3DConditionModel(UNetConfig.from_dict(read_config(folder, UNET)["model"]))
    load_unet_state(model, read_weights(folder), f"{folder}/model.safetensors")
    return model.eval()


def load_latentsync_unet(
    path: str | Path, config: UNetConfig, allow_missing: Sequence[str] = ()
) -> UNet3DConditionModel:
    """A published LatentSync `latentsync_unet.pt` ({"state_dict": ...}) into a model of `config`.

    v1.0 has no motion modules (`full_config(False)`), 1.5/1.6 have them (`full_config(True)`);
    pass `allow_missing=(MOTION_MODULES,)` to start a stage-2 model from a v1.0 checkpoint.
    """
    model = UNet3DConditionModel(config)
    load_unet_state(model, read_latentsync_checkpoint(path), str(path), allow_missing)
    return model.eval()


# --- the SyncNet ---------------------------------------------------------------------------------


def save_syncnet(folder: str | Path, model: StableSyncNet, info: Mapping[str, Any] | None = None) -> Path:
    """An artifact: `config.json` (the SyncNet config under "model", plus `info`) + `model.safetensors`."""
    return save_artifact(folder, {"model": dataclasses.asdict(model.config), **(info or {})}, model, SYNCNET)


def load_syncnet(folder: str | Path) -> StableSyncNet:
    """A trained SyncNet artifact, rebuilt from its own config and loaded strictly (eval mode)."""
    model = StableSyncNet(SyncNetConfig.from_dict(read_config(folder, SYNCNET)["model"]))
    load_strict(model, read_weights(folder), f"{folder}/model.safetensors")
    return channels_last(model.eval())


def load_latentsync_syncnet(path: str | Path, config: SyncNetConfig) -> StableSyncNet:
    """A published LatentSync StableSyncNet (`stable_syncnet.pt`) into synclip's module tree, strictly."""
    model = StableSyncNet(config)
    load_strict(model, read_latentsync_checkpoint(path), str(path))
    return channels_last(model.eval())


# --- the VAE -------------------------------------------------------------------------------------


def save_vae(model: AutoencoderKL, folder: str | Path) -> Path:
    """A diffusers folder (`save_pretrained`), swapped in weights first; other files in `folder` (the
    checkpoint) stay. Leaves `model` in the default memory layout (safetensors stores contiguous
    tensors only)."""
    with staged_files(folder, (DIFFUSERS_WEIGHTS, DIFFUSERS_CONFIG)) as tmp:
        contiguous_layout(model).save_pretrained(tmp, safe_serialization=True)
    return Path(folder)


def load_vae(path: str | Path | None, param: str = "pretrained.sd_vae") -> AutoencoderKL | Taef2:
    """A diffusers VAE folder (config.json + diffusion_pytorch_model.safetensors) of one of VAE_CLASSES,
    offline and strictly, in eval mode. `param` names the setting that points here, for the error message."""
    if path is None:
        raise UserError(
            f"{param} is not set; point it at a diffusers AutoencoderKL folder (e.g. sd-vae-ft-mse)"
        )
    folder = Path(path)
    hint = (
        f"(set by {param}; a diffusers {' or '.join(VAE_CLASSES)} folder with "
        f"{DIFFUSERS_CONFIG} + {DIFFUSERS_WEIGHTS})"
    )
    config_path, weights_path = folder / DIFFUSERS_CONFIG, folder / DIFFUSERS_WEIGHTS
    if not folder.is_dir():
        raise UserError(f"{folder}: no such VAE folder {hint}")
    for needed in (config_path, weights_path):
        if not needed.is_file():
            raise UserError(f"{folder}: no {needed.name} {hint}")
    try:
        config = json.loads(config_path.read_text())
    except ValueError as error:  # JSONDecodeError is a ValueError
        raise UserError(f"{config_path}: not JSON {hint}: {error}") from None
    name = config.get("_class_name") or "AutoencoderKL"
    if name not in VAE_CLASSES:
        raise UserError(
            f"{config_path}: _class_name {name!r}, expected one of {', '.join(VAE_CLASSES)} {hint}"
        )
    try:
        with safe_open(str(weights_path), framework="pt") as file:
            stored = set(file.keys())
        model = VAE_CLASSES[name].from_pretrained(folder, local_files_only=True, torch_dtype=torch.float32)
    except (OSError, ValueError, TypeError, RuntimeError, SafetensorError) as error:
        raise UserError(f"{folder}: not a loadable {name} {hint}: {error}") from None
    own = set(model.state_dict())
    if stored != own:  # diffusers initialises missing weights with a warning; never run on those
        missing, unexpected = sorted(own - stored), sorted(stored - own)
        raise CheckpointError(
            f"{weights_path} does not match its config {hint}: {len(missing)} missing "
            f"({', '.join(missing[:5])}), {len(unexpected)} unexpected ({', '.join(unexpected[:5])})"
        )
    return channels_last(model.eval())


def load_taef2_published(encoder: str | Path, decoder: str | Path) -> Taef2:
    """TAEF2 from its published state dicts (`taef2_encoder.pth`, `taef2_decoder.pth`; float16), strictly,
    in float32; the latent scaling is not fitted yet."""
    model = Taef2()
    state = {}
    for part, path in (("encoder", encoder), ("decoder", decoder)):
        published = read_state_dict(path, f"TAEF2's {part} (taef2_{part}.pth)")
        state |= {f"{part}.{key}": tensor.float() for key, tensor in published.items()}
    load_strict(model, state, f"{encoder} + {decoder}")
    return model.eval()


# --- the Whisper encoder -------------------------------------------------------------------------


def load_whisper_encoder(
    path: str | Path,
    *,
    param: str = "pretrained.whisper",
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> WhisperAudioEncoder:
    """The frozen encoder of the transformers Whisper folder `path` (config.json + model.safetensors),
    in eval mode on `device` in `dtype`.

    Loads strictly; a missing or malformed folder is a PretrainedError naming `path` and `param`. The
    folder's preprocessor_config.json, when present, must describe the front end `whisper_log_mel` uses.
    """
    from transformers import WhisperModel
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()
    folder = require("whisper", path, param)
    model, info = WhisperModel.from_pretrained(
        folder, local_files_only=True, output_loading_info=True, dtype=torch.float32
    )
    bad = {kind: keys for kind, keys in info.items() if keys and kind != "error_msgs"}
    if bad or info.get("error_msgs"):
        raise PretrainedError(
            f"{param}: {folder} does not load as a Whisper model: {bad or info['error_msgs']}"
        )
    _check_whisper_preprocessor(folder, model.config.num_mel_bins, param)
    encoder = WhisperAudioEncoder(model.config)
    encoder.encoder.load_state_dict(model.encoder.state_dict(), strict=True)
    return encoder.to(device=device, dtype=dtype).eval().requires_grad_(False)


def _check_whisper_preprocessor(folder: Path, n_mels: int, param: str) -> None:
    from transformers import WhisperFeatureExtractor

    if not (folder / "preprocessor_config.json").is_file():
        return
    theirs = WhisperFeatureExtractor.from_pretrained(folder, local_files_only=True)
    ours = feature_extractor(n_mels)
    fields = ("feature_size", "sampling_rate", "hop_length", "n_fft", "n_samples", "dither")
    differ = {
        f: (getattr(theirs, f), getattr(ours, f)) for f in fields if getattr(theirs, f) != getattr(ours, f)
    }
    if differ:
        raise PretrainedError(
            f"{param}: {folder / 'preprocessor_config.json'} differs from Whisper's front end "
            f"(field: (folder, expected)): {differ}"
        )


# --- the VideoMAE (TREPA's encoder; `synclip.train.trepa.load_trepa` reads it) ------------------


def save_videomae(model: nn.Module, out_dir: str | Path) -> Path:
    """A transformers VideoMAE (`save_pretrained`: config.json + model.safetensors) plus a
    preprocessor_config.json with the ImageNet mean / std it was trained with, swapped into
    `out_dir` (its checkpoint.pt is kept)."""
    from transformers import VideoMAEImageProcessor
    from transformers.utils import logging as transformers_logging
    from transformers.utils.constants import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

    transformers_logging.disable_progress_bar()
    size = model.config.image_size
    with staged_files(out_dir, ("model.safetensors", "preprocessor_config.json", "config.json")) as tmp:
        model.save_pretrained(tmp)
        VideoMAEImageProcessor(
            size={"shortest_edge": size},
            crop_size={"height": size, "width": size},
            image_mean=list(IMAGENET_DEFAULT_MEAN),
            image_std=list(IMAGENET_DEFAULT_STD),
        ).save_pretrained(tmp)
    return Path(out_dir)
