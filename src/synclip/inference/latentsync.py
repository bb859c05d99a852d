"""LatentSync's published weights (Hugging Face ByteDance/LatentSync-1.5 / -1.6) → a synclip packaged
model, strictly: every weight is used, every shape checked, and the package appears whole or not at all.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import yaml

import synclip
from synclip.artifacts import CheckpointError, load_latentsync_syncnet, load_latentsync_unet
from synclip.config import InferenceParams
from synclip.constants import SYNCNET_N_MELS, syncnet_mel_window
from synclip.errors import UserError
from synclip.face.latentsync import mask_image
from synclip.inference.package import PIPELINE_FILE, assemble
from synclip.inference.pipeline import PipelineConfig
from synclip.nn.syncnet import SyncNetConfig, TowerConfig, released_config
from synclip.nn.unet import UNetConfig, full_config
from synclip.pretrained.store import sha256_file

log = logging.getLogger(__name__)

VERSIONS = ("1.5", "1.6")
HUB_REPOS = {"1.5": "ByteDance/LatentSync-1.5", "1.6": "ByteDance/LatentSync-1.6"}
# The Hub revisions `--from-hub` asks for. Pinned to "main": the commit hashes could not be looked up
# offline when this was written; the commit actually downloaded is recorded in SOURCES.json.
HUB_REVISIONS = {"1.5": "main", "1.6": "main"}
VAE_REPO, VAE_REVISION = "stabilityai/sd-vae-ft-mse", "main"
UNET_FILE, SYNCNET_FILE, WHISPER_FILE = "latentsync_unet.pt", "stable_syncnet.pt", "whisper/tiny.pt"
SOURCE_FILES = (UNET_FILE, SYNCNET_FILE, WHISPER_FILE)
# the evaluation instruments' weights in the same Hub repos (`--auxiliary`; synclip.eval.auxiliary)
AUXILIARY_DIR = "auxiliary"
AUXILIARY_FILES = ("syncnet_v2.model", "sfd_face.pth", "i3d_torchscript.pt", "vgg16-397923af.pth")
VAE_FILES = ("config.json", "diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin")
SOURCES_FILE = "SOURCES.json"

# R, the side of the face crop each version was trained on (configs/unet/stage2.yaml, stage2_512.yaml)
RESOLUTIONS = {"1.5": 256, "1.6": 512}
# upstream's scripts/inference.py sets these on sd-vae-ft-mse, whatever its config says
VAE_SCALING_FACTOR, VAE_SHIFT_FACTOR = 0.18215, 0.0
# Upstream's sampler and front ends for its published weights (LipsyncPipeline as scripts/inference.py
# and gradio_app.py run it: inference.sh's 20 steps and guidance 1.5, seed 1247, DDIM η 0, disjoint
# 16-frame chunks). params/latentsync-1.5.yaml and -1.6.yaml state the same (a test checks).
LATENTSYNC_SAMPLER = InferenceParams(
    num_frames=16,
    overlap=0,
    steps=20,
    guidance=1.5,
    seed=1247,
    eta=0.0,
    noise_scale=1.0,
    audio_frontend="latentsync",
    face_frontend="latentsync",
    latents="sample",
    last_chunk="short",
    loop="repeat_ends",
    fps=25,
    kept_cells="generated",
    precision="fp16",
)

# configs/unet/*.yaml `model:` keys whose value synclip's UNet has built in (what every published
# config sets); `sample_size` and `zero_initialize` do not change the weights' meaning.
_UNET_FIXED = {
    "act_fn": "silu",
    "add_audio_layer": True,
    "center_input_sample": False,
    "mid_block_type": "UNetMidBlock3DCrossAttn",
    "downsample_padding": 1,
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "mid_block_scale_factor": 1,
    "resnet_time_scale_shift": "default",
    "motion_module_mid_block": False,
    "motion_module_type": "Vanilla",
}
_MOTION_FIXED = {
    "num_transformer_block": 1,
    "attention_block_types": ["Temporal_Self", "Temporal_Self"],
    "temporal_position_encoding": True,
    "temporal_attention_dim_div": 1,
}
_UNET_IGNORED = {"sample_size"}
_MOTION_IGNORED = {"zero_initialize"}


class LatentSyncImportError(UserError):
    """A LatentSync snapshot or config that cannot be imported; the message names the file."""


@dataclasses.dataclass(frozen=True)
class HubSource:
    """Where `download_latentsync` found a snapshot: the repo, the revision asked for, the commit got."""

    repo: str
    revision: str
    commit: str


def check_version(version: str) -> str:
    if version not in VERSIONS:
        raise LatentSyncImportError(f"--version must be one of {', '.join(VERSIONS)}, got {version!r}")
    return version


# --- upstream configs ----------------------------------------------------------------------------


def _read_yaml(path: Path) -> dict:
    if not path.is_file():
        raise LatentSyncImportError(f"{path}: no such config file")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        raise LatentSyncImportError(f"{path}: not YAML ({' '.join(str(error).split())})") from None
    if not isinstance(data, dict) or not isinstance(data.get("model"), dict):
        raise LatentSyncImportError(f"{path}: no `model:` section; not an upstream LatentSync config")
    return data


def _check_fixed(path: Path, section: str, values: Mapping, fixed: Mapping, known: set[str]) -> None:
    unknown = sorted(set(values) - set(fixed) - known)
    if unknown:
        raise LatentSyncImportError(f"{path}: {section} keys synclip does not know: {unknown}")
    differ = {k: values[k] for k in fixed if k in values and values[k] != fixed[k]}
    if differ:
        raise LatentSyncImportError(
            f"{path}: {section} values synclip's network does not implement: {differ} (it has {fixed})"
        )


def unet_config_from_yaml(path: str | Path) -> tuple[UNetConfig, int | None]:
    """(synclip's UNetConfig, data.resolution or None) of an upstream configs/unet/*.yaml.

    `attention_head_dim` is the NUMBER of heads there (as in SD-1.5 configs); motion modules sit at
    every level, so `motion_module_resolutions` must list 1, 2, 4, … for all of them.
    """
    path = Path(path)
    data = _read_yaml(path)
    model = data["model"]
    direct = {
        "block_out_channels": "block_out_channels",
        "down_block_types": "down_block_types",
        "up_block_types": "up_block_types",
        "layers_per_block": "layers_per_block",
        "attention_head_dim": "num_attention_heads",
        "norm_num_groups": "norm_num_groups",
        "cross_attention_dim": "cross_attention_dim",
        "in_channels": "in_channels",
        "out_channels": "out_channels",
        "norm_eps": "norm_eps",
        "use_motion_module": "motion_modules",
        "motion_module_decoder_only": "motion_module_decoder_only",
    }
    known = set(direct) | {"motion_module_resolutions", "motion_module_kwargs"} | _UNET_IGNORED
    _check_fixed(path, "model", model, _UNET_FIXED, known)
    values: dict[str, Any] = {ours: model[theirs] for theirs, ours in direct.items() if theirs in model}
    motion = model.get("motion_module_kwargs") or {}
    _check_fixed(
        path,
        "model.motion_module_kwargs",
        motion,
        _MOTION_FIXED,
        {"num_attention_heads", "temporal_position_encoding_max_len"} | _MOTION_IGNORED,
    )
    if "num_attention_heads" in motion:
        values["motion_num_attention_heads"] = motion["num_attention_heads"]
    if "temporal_position_encoding_max_len" in motion:
        values["motion_max_frames"] = motion["temporal_position_encoding_max_len"]
    try:
        if "norm_eps" in values:
            values["norm_eps"] = float(values["norm_eps"])  # YAML 1.1 reads upstream's `1e-5` as a string
        levels = len(values.get("block_out_channels", UNetConfig.block_out_channels))
        if values.get("motion_modules"):
            resolutions = model.get("motion_module_resolutions", [1, 2, 4, 8])
            absent = [2**i for i in range(levels) if 2**i not in resolutions]
            if absent:
                raise LatentSyncImportError(
                    f"{path}: motion_module_resolutions {resolutions} leaves out {absent}; synclip puts a "
                    "motion module at every level"
                )
        config = UNetConfig.from_dict(values)
    except (ValueError, TypeError) as error:  # ConfigError is a ValueError
        if isinstance(error, LatentSyncImportError):
            raise
        raise LatentSyncImportError(f"{path}: {error}") from None
    resolution = (data.get("data") or {}).get("resolution")
    if resolution is not None and (not isinstance(resolution, int) or resolution <= 0):
        raise LatentSyncImportError(f"{path}: data.resolution {resolution!r} is not a positive int")
    return config, resolution


def syncnet_config_from_yaml(path: str | Path) -> SyncNetConfig:
    """synclip's SyncNetConfig of an upstream configs/syncnet/*.yaml (pixel space only).

    Upstream's towers use 32 GroupNorm groups throughout; the visual input is the lower half (or the
    whole) of data.resolution's crop, F = data.num_frames, and the mel window covers those F frames."""
    path = Path(path)
    data = _read_yaml(path)
    model, settings = data["model"], data.get("data") or {}
    if settings.get("latent_space"):
        raise LatentSyncImportError(f"{path}: a latent-space SyncNet; synclip's works on pixels")

    def tower(name: str) -> TowerConfig:
        spec = model.get(name)
        if not isinstance(spec, dict):
            raise LatentSyncImportError(f"{path}: no model.{name} section")
        unknown = sorted(
            set(spec) - {"in_channels", "block_out_channels", "downsample_factors", "attn_blocks", "dropout"}
        )
        if unknown:
            raise LatentSyncImportError(f"{path}: model.{name} keys synclip does not know: {unknown}")
        factors = tuple(tuple(f) if isinstance(f, list) else f for f in spec.get("downsample_factors", ()))
        return TowerConfig(
            in_channels=spec.get("in_channels"),
            block_out_channels=tuple(spec.get("block_out_channels", ())),
            downsample_factors=factors,
            attn_blocks=tuple(spec.get("attn_blocks", ())),
            dropout=float(spec.get("dropout", 0.0)),
        )

    try:
        visual, audio = tower("visual_encoder"), tower("audio_encoder")
        visual.validate(f"{path}: model.visual_encoder")
        audio.validate(f"{path}: model.audio_encoder")
        frames = int(settings.get("num_frames", visual.in_channels // 3))
        if visual.in_channels != 3 * frames:
            raise LatentSyncImportError(
                f"{path}: visual_encoder.in_channels {visual.in_channels} != 3 × data.num_frames {frames}"
            )
        resolution = int(settings.get("resolution", 256))
        lower_half = bool(settings.get("lower_half", True))
        return SyncNetConfig(
            visual=visual,
            audio=audio,
            num_frames=frames,
            image_size=(resolution // 2, resolution) if lower_half else (resolution, resolution),
            crop=(0.5, 1.0, 0.0, 1.0) if lower_half else (0.0, 1.0, 0.0, 1.0),
            mel_bins=SYNCNET_N_MELS,
            mel_frames=syncnet_mel_window(frames),
        )
    except (ValueError, TypeError) as error:
        if isinstance(error, LatentSyncImportError):
            raise
        raise LatentSyncImportError(f"{path}: {error}") from None


# --- the networks --------------------------------------------------------------------------------


def read_sd_vae(folder: Path) -> torch.nn.Module:
    """sd-vae-ft-mse from its diffusers folder (config.json + .safetensors or .bin), strictly, with
    upstream's latent scaling forced (scaling_factor 0.18215, shift 0)."""
    from diffusers import AutoencoderKL

    hint = f"a diffusers folder of {VAE_REPO} (config.json + diffusion_pytorch_model.safetensors or .bin)"
    if not (folder / "config.json").is_file():
        raise LatentSyncImportError(f"{folder}: no config.json; --vae must be {hint}")
    safetensors = (folder / "diffusion_pytorch_model.safetensors").is_file()
    if not safetensors and not (folder / "diffusion_pytorch_model.bin").is_file():
        raise LatentSyncImportError(
            f"{folder}: no diffusion_pytorch_model.safetensors or .bin; --vae must be {hint}"
        )
    try:
        config = json.loads((folder / "config.json").read_text())
        if config.get("_class_name") not in (None, "AutoencoderKL"):
            raise LatentSyncImportError(
                f"{folder / 'config.json'}: _class_name {config['_class_name']!r}, expected AutoencoderKL"
            )
        # diffusers renames the attention weights of older files (query/key/value/proj_attn) itself
        model, info = AutoencoderKL.from_pretrained(
            folder, local_files_only=True, use_safetensors=safetensors, output_loading_info=True
        )
    except (OSError, ValueError, RuntimeError) as error:
        if isinstance(error, LatentSyncImportError):
            raise
        raise LatentSyncImportError(
            f"{folder}: not a loadable AutoencoderKL ({' '.join(str(error).split())[:300]})"
        ) from None
    bad = {kind: keys for kind, keys in info.items() if keys}
    if bad:
        raise CheckpointError(f"{folder}: the VAE weights do not match its config.json: {bad}")
    model.register_to_config(scaling_factor=VAE_SCALING_FACTOR, shift_factor=VAE_SHIFT_FACTOR)
    return model.eval()


# --- the Hub -------------------------------------------------------------------------------------


def _snapshot(repo: str, revision: str, patterns: list[str], what: str, how: str) -> tuple[Path, HubSource]:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HFValidationError

    try:
        folder = Path(snapshot_download(repo_id=repo, revision=revision, allow_patterns=patterns))
    except (OSError, HFValidationError) as error:  # offline, not cached, no such repo or revision
        first = " ".join(str(error).split()).split(". ")[0]  # huggingface_hub's messages run long
        reason = (first if len(first) <= 240 else first[:240].rsplit(" ", 1)[0] + " …").rstrip(".")
        raise LatentSyncImportError(
            f"{what} is not in the Hugging Face cache and could not be downloaded from {repo}@{revision} "
            f"({type(error).__name__}: {reason or 'no message'}); {how}"
        ) from None
    return folder, HubSource(repo=repo, revision=revision, commit=folder.name)


def download_latentsync(
    version: str, revision: str | None = None, auxiliary: bool = False
) -> tuple[Path, HubSource]:
    """The three files of ByteDance/LatentSync-`version` at `revision` (default HUB_REVISIONS), and with
    `auxiliary` the evaluation instruments' AUXILIARY_FILES, from the Hugging Face cache or downloaded
    into it: (the snapshot folder, where it came from)."""
    repo = HUB_REPOS[check_version(version)]
    revision = revision or HUB_REVISIONS[version]
    names = list(SOURCE_FILES) + (
        [f"{AUXILIARY_DIR}/{name}" for name in AUXILIARY_FILES] if auxiliary else []
    )
    return _snapshot(
        repo,
        revision,
        names,
        f"LatentSync {version} ({', '.join(names)})",
        f"connect to the Hub, or download it elsewhere (`huggingface-cli download {repo} --local-dir DIR`) "
        "and pass DIR as SRC",
    )


def download_sd_vae() -> tuple[Path, HubSource]:
    """sd-vae-ft-mse's diffusers folder, from the Hugging Face cache or downloaded into it."""
    return _snapshot(
        VAE_REPO,
        VAE_REVISION,
        ["config.json", "diffusion_pytorch_model.safetensors"],
        f"the VAE {VAE_REPO}",
        f"pass --vae DIR, a folder from `huggingface-cli download {VAE_REPO} --local-dir DIR`",
    )


# --- the import ----------------------------------------------------------------------------------


def resolution_for(version: str, from_config: int | None) -> int:
    return from_config if from_config is not None else RESOLUTIONS[check_version(version)]


def import_latentsync(
    src: str | Path,
    version: str,
    out: str | Path,
    vae: str | Path | None = None,
    unet_config: str | Path | None = None,
    syncnet_config: str | Path | None = None,
    hub: HubSource | None = None,
) -> Path:
    """A packaged synclip model in `out` (see `synclip.inference.package.assemble`) from the LatentSync
    `version` snapshot `src` (latentsync_unet.pt, stable_syncnet.pt, whisper/tiny.pt; other files are
    ignored), with `syncnet/` and SOURCES.json besides.

    `vae`: sd-vae-ft-mse's diffusers folder (default: the Hugging Face cache, downloaded if online).
    `unet_config` / `syncnet_config`: upstream-format yamls of other geometries (default: LatentSync's
    stage-2 UNet and syncnet_16_pixel_attn). `hub`: where `src` was downloaded from, for SOURCES.json.
    Every weight is loaded strictly, the result is loaded as `synclip lipsync` loads it before it is
    swapped in, and a failure leaves `out` as it was.
    """
    from synclip.pretrained.whisper import convert_openai_whisper

    src, out = Path(src), Path(out)
    check_version(version)
    if out.exists() and not (out / PIPELINE_FILE).is_file():
        raise LatentSyncImportError(f"{out} exists and is not a packaged model; choose a new output folder")
    if not src.is_dir():
        raise LatentSyncImportError(f"{src}: no such folder; expected a LatentSync {version} snapshot")
    missing = [name for name in SOURCE_FILES if not (src / name).is_file()]
    if missing:
        where = (
            f"the Hub snapshot {hub.repo}@{hub.commit} lacks them"
            if hub
            else f"expected a snapshot of {HUB_REPOS[version]} (`huggingface-cli download {HUB_REPOS[version]} "
            f"--local-dir {src}`)"
        )
        raise LatentSyncImportError(f"{src}: missing {', '.join(missing)}; {where}")
    unet_cfg, resolution = (
        unet_config_from_yaml(unet_config) if unet_config is not None else (full_config(True), None)
    )
    resolution = resolution_for(version, resolution)
    syncnet_cfg = (
        syncnet_config_from_yaml(syncnet_config) if syncnet_config is not None else released_config()
    )
    vae_source = None
    if vae is None:
        vae, vae_source = download_sd_vae()
    vae = Path(vae)

    unet = load_latentsync_unet(src / UNET_FILE, unet_cfg)  # strictly: motion modules too
    syncnet = load_latentsync_syncnet(src / SYNCNET_FILE, syncnet_cfg)
    autoencoder = read_sd_vae(vae)
    mask = mask_image(resolution)
    config = PipelineConfig(resolution=resolution, **dataclasses.asdict(LATENTSYNC_SAMPLER))
    sources = {
        "kind": "latentsync-import",
        "version": version,
        "synclip_version": synclip.__version__,
        "hub": dataclasses.asdict(hub) if hub else None,
        "vae_hub": dataclasses.asdict(vae_source) if vae_source else None,
        "files": {name: sha256_file(src / name) for name in SOURCE_FILES},
        "vae_files": {p.name: sha256_file(p) for p in sorted(vae.iterdir()) if p.name in VAE_FILES},
        "configs": {
            name: {"path": str(path), "sha256": sha256_file(Path(path))}
            for name, path in (("unet", unet_config), ("syncnet", syncnet_config))
            if path is not None
        },
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{out.name}-whisper-", dir=out.parent) as tmp:
        whisper = convert_openai_whisper(src / WHISPER_FILE, Path(tmp) / "whisper")
        width = json.loads((whisper / "config.json").read_text())["d_model"]
        if width != unet.config.cross_attention_dim:
            raise LatentSyncImportError(
                f"{src / WHISPER_FILE}: Whisper width {width} != the UNet's cross_attention_dim "
                f"{unet.config.cross_attention_dim} ({src / UNET_FILE})"
            )
        assemble(
            out,
            unet,
            autoencoder,
            whisper,
            config,
            mask=mask,
            syncnet=syncnet,
            extra_files={SOURCES_FILE: json.dumps(sources, indent=1, sort_keys=True)},
            verify=True,
        )
    log.info("imported LatentSync %s from %s into %s (R %d)", version, src, out, resolution)
    return out
