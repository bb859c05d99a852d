"""TREPA (LatentSync §5): generated and real clips compared in a frozen VideoMAE's feature space, so
the generator is pushed toward real temporal dynamics; `load_trepa` reads a local VideoMAE folder."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from einops import rearrange
from safetensors import SafetensorError, safe_open
from torch import nn
from transformers import VideoMAEConfig, VideoMAEModel
from transformers.utils import logging as transformers_logging

from synclip.errors import UserError

log = logging.getLogger(__name__)

PARAM = "pretrained.videomae"
PREPROCESSOR = "preprocessor_config.json"
WEIGHTS = "model.safetensors"
WEIGHTS_INDEX = "model.safetensors.index.json"
ENCODER_PREFIX = "videomae."  # VideoMAEForPreTraining / ForVideoClassification keep the encoder here
# heads of the other VideoMAE classes that TREPA does not use; skipped with a log line
UNUSED_PREFIXES = ("decoder.", "encoder_to_decoder.", "mask_token", "classifier.")
LATENTSYNC_MEAN = (0.0, 0.0, 0.0)  # LatentSync feeds [0, 1] frames to VideoMAE-v2 unnormalised
LATENTSYNC_STD = (1.0, 1.0, 1.0)


@dataclass(frozen=True)
class TrepaConfig:
    videomae: VideoMAEConfig  # the encoder's geometry: image_size, patch_size, num_frames, tubelet_size …
    fc_norm: bool  # a LayerNorm after mean pooling (VideoMAE-v2 `fc_norm`, present in fine-tuned checkpoints)
    image_mean: tuple[float, float, float]  # applied to frames in [0, 1]
    image_std: tuple[float, float, float]


class TrepaLoss(nn.Module):
    """Frozen VideoMAE judge: `loss = trepa(generated, real)`; gradients reach `generated` only.

    LatentSync: VideoMAE-v2 ViT-g/14 (SSv2 fine-tuned), clips (B, 3, 16, H, W) bicubic-resized to 224,
    mapped from [−1, 1] to [0, 1] with no mean/std, final tokens mean-pooled then `fc_norm`,
    L2-normalised, MSE between the two vectors (mean over dims and batch), weight 10, whole face.
    Here the same, except that a folder with a `preprocessor_config.json` (synclip's own pretrained
    tiny VideoMAE writes one) is normalised with its image_mean / image_std, as it was trained.

    The network stays in eval mode and its parameters never require grad, whatever the caller's
    `.train()` says; the caller loads its weights (`load_trepa`).
    """

    def __init__(self, config: TrepaConfig) -> None:
        super().__init__()
        self.config = config
        self.encoder = VideoMAEModel(config.videomae)
        hidden = config.videomae.hidden_size
        eps = config.videomae.layer_norm_eps  # VideoMAE-v2 uses 1e-6 in every LayerNorm, fc_norm too
        self.fc_norm = nn.LayerNorm(hidden, eps=eps) if config.fc_norm else None
        self.register_buffer("mean", torch.tensor(config.image_mean).view(1, 1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(config.image_std).view(1, 1, 3, 1, 1), persistent=False)
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> TrepaLoss:
        return super().train(False)  # a frozen judge: no dropout, whatever the parent module does

    @property
    def num_frames(self) -> int:
        return self.config.videomae.num_frames

    @property
    def image_size(self) -> tuple[int, int]:
        size = self.config.videomae.image_size
        return (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))

    def features(self, clips: torch.Tensor) -> torch.Tensor:
        """(B, 3, F, H, W) in [−1, 1] -> (B, E) L2-normalised mean-pooled final tokens."""
        if clips.ndim != 5 or clips.shape[1] != 3 or clips.shape[2] != self.num_frames:
            raise ValueError(
                f"TREPA takes clips (B, 3, {self.num_frames}, H, W) in [-1, 1], got {tuple(clips.shape)}"
            )
        batch = clips.shape[0]
        frames = rearrange(clips, "b c f h w -> (b f) c h w")
        if tuple(frames.shape[-2:]) != self.image_size:
            frames = F.interpolate(frames, size=self.image_size, mode="bicubic", align_corners=False)
        frames = rearrange(frames, "(b f) c h w -> b f c h w", b=batch)  # transformers' VideoMAE layout
        pixels = ((frames + 1) / 2 - self.mean.to(frames.dtype)) / self.std.to(frames.dtype)
        tokens = self.encoder(pixel_values=pixels).last_hidden_state  # (B, N, E), N = F/t · H/p · W/p
        pooled = tokens.mean(dim=1)
        if self.fc_norm is not None:
            pooled = self.fc_norm(pooled)
        return F.normalize(pooled.float(), dim=-1)

    def forward(self, generated: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
        """MSE between the unit feature vectors of (B, 3, F, H, W) clips; a scalar in [0, 4/E]."""
        if generated.shape != real.shape:
            raise ValueError(
                f"generated {tuple(generated.shape)} and real {tuple(real.shape)} clips differ in shape"
            )
        with torch.no_grad():
            target = self.features(real)
        return F.mse_loss(self.features(generated), target)


def load_trepa(folder: str | Path | None) -> TrepaLoss:
    """TREPA on a local transformers VideoMAE folder (config.json + model.safetensors[.index.json]).

    Accepts a `VideoMAEModel`, `VideoMAEForPreTraining` (synclip's `pretrain_videomae`) or
    `VideoMAEForVideoClassification` (e.g. a converted VideoMAE-v2) folder. The encoder is read by
    transformers' `from_pretrained(local_files_only=True)`; a missing or mis-shaped encoder weight is
    an error, decoder / classifier weights are skipped and logged; `fc_norm` is used where present.
    """
    if folder is None:
        raise UserError(f"TREPA needs a VideoMAE: {PARAM} is not set (null)")
    folder = Path(folder)
    if not (folder / "config.json").is_file():
        raise _error(folder, "no config.json; not a transformers VideoMAE folder")
    try:
        raw = json.loads((folder / "config.json").read_text())
        config = VideoMAEConfig.from_pretrained(folder, local_files_only=True)
    except (OSError, ValueError) as error:  # JSONDecodeError is a ValueError
        raise _error(folder, f"unreadable config.json ({error})") from None
    if raw.get("model_type") != "videomae" or config.num_channels != 3:
        raise _error(
            folder,
            f"config.json describes model_type {raw.get('model_type')!r} with {config.num_channels} "
            "channels, expected 'videomae' with 3",
        )
    files = _weight_files(folder)
    verbosity = transformers_logging.get_verbosity()
    transformers_logging.set_verbosity_error()  # its load report; what matters is checked and logged below
    transformers_logging.disable_progress_bar()
    try:
        encoder, info = VideoMAEModel.from_pretrained(folder, local_files_only=True, output_loading_info=True)
    except (OSError, ValueError, RuntimeError, SafetensorError) as error:
        raise _error(folder, f"transformers cannot load the weights ({error})") from None
    finally:
        transformers_logging.set_verbosity(verbosity)
    broken = sorted(info["missing_keys"]) + [str(k) for k in info["mismatched_keys"]] + info["error_msgs"]
    if broken:
        shown = ", ".join(broken[:8]) + (f" … (+{len(broken) - 8})" if len(broken) > 8 else "")
        raise _error(folder, f"{len(broken)} encoder weights missing or mis-shaped: {shown}")
    unexpected = sorted(info["unexpected_keys"])
    surprising = [k for k in unexpected if not k.startswith((*UNUSED_PREFIXES, "fc_norm."))]
    if surprising:
        raise _error(folder, f"{len(surprising)} weights fit no VideoMAE part: {', '.join(surprising[:8])}")
    fc_norm = _read_tensors(files, ("fc_norm.weight", "fc_norm.bias"))
    mean, std = LATENTSYNC_MEAN, LATENTSYNC_STD
    if (folder / PREPROCESSOR).is_file():
        processor = json.loads((folder / PREPROCESSOR).read_text())
        mean, std = tuple(processor["image_mean"]), tuple(processor["image_std"])
    trepa = TrepaLoss(TrepaConfig(config, bool(fc_norm), mean, std))
    trepa.encoder.load_state_dict(encoder.state_dict())  # same class and config: every key, strictly
    if fc_norm:
        if len(fc_norm) != 2:
            raise _error(folder, f"fc_norm is incomplete: only {', '.join(fc_norm)}")
        assert trepa.fc_norm is not None
        trepa.fc_norm.load_state_dict({k.removeprefix("fc_norm."): v for k, v in fc_norm.items()})
    skipped = [k for k in unexpected if not k.startswith("fc_norm.")]
    if skipped:
        log.info(
            "TREPA: %d weights of %s not used (%s)",
            len(skipped),
            folder,
            ", ".join(sorted({k.split(".")[0] for k in skipped})),
        )
    log.info(
        "TREPA: VideoMAE %s, %d frames of %s px, %.1f M parameters",
        folder,
        trepa.num_frames,
        "×".join(map(str, trepa.image_size)),
        sum(p.numel() for p in trepa.parameters()) / 1e6,
    )
    return trepa


def load_trepa_term(folder: str | Path | None) -> tuple[TrepaLoss | None, str]:
    """(the TREPA loss on the VideoMAE folder `folder`, "") or (None, why it is unavailable)."""
    if folder is None:
        return None, "no TREPA encoder folder given"
    if not Path(folder).is_dir():
        return None, f"TREPA encoder folder {folder} does not exist"
    return load_trepa(folder), ""


def _weight_files(folder: Path) -> list[Path]:
    """model.safetensors, or every shard a model.safetensors.index.json lists."""
    if (folder / WEIGHTS).is_file():
        return [folder / WEIGHTS]
    if (folder / WEIGHTS_INDEX).is_file():
        index = json.loads((folder / WEIGHTS_INDEX).read_text())
        return [folder / name for name in sorted(set(index["weight_map"].values()))]
    raise _error(folder, f"no {WEIGHTS} or {WEIGHTS_INDEX} (only safetensors weights are read)")


def _read_tensors(files: list[Path], names: tuple[str, ...]) -> dict[str, torch.Tensor]:
    """The tensors called `names` wherever they are in `files` (absent ones are left out)."""
    found = {}
    for path in files:
        try:
            with safe_open(str(path), framework="pt") as handle:
                present = set(handle.keys())
                found |= {name: handle.get_tensor(name) for name in names if name in present}
        except (SafetensorError, OSError) as error:
            raise _error(path.parent, f"{path.name} is not a readable safetensors file ({error})") from None
    return found


def _error(folder: Path, problem: str) -> UserError:
    return UserError(
        f"{folder}: {problem}. TREPA needs a local transformers VideoMAE folder: set {PARAM} "
        "(full profile) or run the pretrain_videomae stage (tiny profile)"
    )
