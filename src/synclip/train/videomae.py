"""TREPA's backbone for the tiny profile (the `pretrain_videomae` stage): masked-autoencoding pretraining
of a small transformers VideoMAE (tube masking, as VideoMAE) on aligned face clips, for `load_trepa`."""

from __future__ import annotations

import hashlib
import json
import shutil
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from einops import rearrange
from transformers import VideoMAEConfig, VideoMAEForPreTraining
from transformers.utils.constants import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

from synclip.artifacts import save_videomae
from synclip.config import Params, VideoMAEParams
from synclip.data.frames import load_clip_frames
from synclip.data.manifest import read_manifest
from synclip.files import write_csv, write_json
from synclip.images import to_unit
from synclip.nn.videomae import videomae_config
from synclip.runtime import is_main
from synclip.train.optim import learning_rate
from synclip.train.trainer import Recipe, Trainer
from synclip.train.trepa import TrepaLoss, load_trepa

ADAM_BETAS = (0.9, 0.95)  # VideoMAE's pretraining optimizer
# files of a transformers VideoMAE folder that `install_pretrained` copies
FOLDER_FILES = (
    "config.json",
    "model.safetensors",
    "model.safetensors.index.json",
    "preprocessor_config.json",
)
HISTORY_FIELDS = ["step", "train_loss", "val_loss", "lr", "seconds"]


# --- data ----------------------------------------------------------------------------------------


class WindowSampler:
    """Random windows of `num_frames` consecutive frames; every start of every clip equally likely."""

    def __init__(self, clips: list[np.ndarray], num_frames: int, rng: np.random.Generator) -> None:
        self.clips, self.num_frames, self.rng = clips, num_frames, rng
        starts = np.array([len(c) - num_frames + 1 for c in clips])
        self.weights = starts / starts.sum()

    def windows(self, count: int) -> np.ndarray:
        """uint8 (B, F, S, S, 3)."""
        picks = self.rng.choice(len(self.clips), size=count, p=self.weights)
        out = []
        for i in picks:
            start = int(self.rng.integers(0, len(self.clips[i]) - self.num_frames + 1))
            out.append(self.clips[i][start : start + self.num_frames])
        return np.stack(out)


def tube_mask(batch: int, config: VideoMAEConfig, ratio: float, rng: np.random.Generator) -> torch.Tensor:
    """bool (B, N), True = hidden: the same `int(ratio · n)` of the n patches of a frame hidden in
    every tubelet (VideoMAE's TubeMaskingGenerator); token order (t, h, w) as the Conv3d flattens."""
    grid = (config.image_size // config.patch_size) ** 2
    tubelets = config.num_frames // config.tubelet_size
    hidden = int(ratio * grid)
    spatial = np.argsort(rng.random((batch, grid)), axis=1) < hidden  # (B, n)
    return torch.from_numpy(np.repeat(spatial[:, None, :], tubelets, axis=1).reshape(batch, -1))


def to_pixel_values(windows: np.ndarray, device: torch.device) -> torch.Tensor:
    """uint8 (B, F, S, S, 3) -> float (B, F, 3, S, S) normalised with ImageNet mean / std, which
    `VideoMAEForPreTraining` undoes to build its reconstruction targets."""
    frames = torch.from_numpy(np.ascontiguousarray(windows)).to(device)
    frames = rearrange(frames, "b f h w c -> b f c h w").float() / 255
    mean = torch.tensor(IMAGENET_DEFAULT_MEAN, device=device).view(1, 1, 3, 1, 1)
    std = torch.tensor(IMAGENET_DEFAULT_STD, device=device).view(1, 1, 3, 1, 1)
    return (frames - mean) / std


def to_clips(windows: np.ndarray, device: torch.device) -> torch.Tensor:
    """uint8 (B, F, H, W, 3) -> float (B, 3, F, H, W) in [−1, 1], what TREPA takes."""
    return rearrange(to_unit(windows, device), "b f c h w -> b c f h w")


def zero_prediction_loss(config: VideoMAEConfig) -> float:
    """The loss of predicting 0 for every normalised target patch: (n − 1)/n with the unbiased std."""
    n = config.tubelet_size * config.patch_size**2
    return (n - 1) / n


# --- training ------------------------------------------------------------------------------------


@dataclass
class ValSet:
    """Fixed windows of val identities and fixed masks: the same task at every evaluation."""

    windows: np.ndarray  # uint8 (V, F, S, S, 3)
    masks: torch.Tensor  # bool (V, N)

    @classmethod
    def draw(cls, clips: list[np.ndarray], count: int, config: VideoMAEConfig, ratio: float, seed: int):
        rng = np.random.default_rng(seed)
        windows = WindowSampler(clips, config.num_frames, rng).windows(count)
        return cls(windows, tube_mask(count, config, ratio, rng))


def validation_loss(
    model: VideoMAEForPreTraining, val: ValSet, device: torch.device, batch: int = 16
) -> float:
    """Mean reconstruction loss (normalised-pixel MSE on hidden patches) over the fixed val windows."""
    was_training = model.training
    model.eval()
    total = 0.0
    with torch.no_grad():
        for i in range(0, len(val.windows), batch):
            pixels = to_pixel_values(val.windows[i : i + batch], device)
            loss = model(pixels, bool_masked_pos=val.masks[i : i + batch].to(device)).loss
            total += float(loss) * len(pixels)
    model.train(was_training)
    return total / len(val.windows)


class VideoMAERecipe(Recipe):
    """Random windows of train clips, each with its own tube mask; normalised-pixel MSE on the hidden patches."""

    name = "pretrain_videomae"
    adam_betas = ADAM_BETAS

    def __init__(self, train: list[np.ndarray], val: list[np.ndarray], params: VideoMAEParams) -> None:
        """`train` / `val`: uint8 clips (F, S, S, 3) at `params.image_size`."""
        self.train_clips, self.val_clips, self.params = train, val, params

    def setup(self, seed: int, rng: np.random.Generator, device: torch.device) -> torch.nn.Module:
        self.rng, self.device = rng, device
        self.config = videomae_config(self.params)
        model = VideoMAEForPreTraining(self.config).to(device)
        self.sampler = WindowSampler(self.train_clips, self.params.num_frames, rng)
        self.val_set = ValSet.draw(
            self.val_clips, self.params.val_windows, self.config, self.params.mask_ratio, seed + 1
        )
        model.train()
        return model

    def fingerprint(self) -> list:
        return [
            [c.shape[0] for c in self.train_clips],
            [hashlib.sha256(c.tobytes()).hexdigest() for c in self.train_clips],
        ]

    def describe(self) -> str:
        clips = f"{len(self.train_clips)} train / {len(self.val_clips)} val clips"
        return f"{clips}, {self.params.batch_size} windows of {self.params.num_frames} frames a step"

    def loss(
        self, step: int, autocast: AbstractContextManager
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The whole batch's windows and masks are drawn on every rank; each computes its `shard`."""
        windows = self.sampler.windows(self.params.batch_size)
        masks = tube_mask(self.params.batch_size, self.config, self.params.mask_ratio, self.rng)
        pixels = to_pixel_values(self.shard.take(windows), self.device)  # (B, F, 3, S, S)
        masks = self.shard.take(masks).to(self.device)  # (B, N)
        with autocast:
            loss = self.model(pixels, bool_masked_pos=masks).loss  # (B, N) masks
        return loss, {"loss": loss}

    def validate(self, step: int) -> dict:
        val_loss = validation_loss(self.model, self.val_set, self.device)
        return {"val_loss": round(val_loss, 5), "lr": learning_rate(self.params, step - 1)}

    def finish(self, out_dir: Path, step: int) -> torch.nn.Module:
        save_videomae(self.model, out_dir)
        return self.model


def install_pretrained(source: str | Path, out_dir: str | Path) -> TrepaLoss:
    """Check that `source` (pretrained.videomae) loads as TREPA, then copy its files into `out_dir`."""
    trepa = load_trepa(source)
    source, out_dir = Path(source), Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    names = [n for n in FOLDER_FILES if (source / n).is_file()]
    if (source / "model.safetensors.index.json").is_file():
        index = json.loads((source / "model.safetensors.index.json").read_text())
        names += sorted(set(index["weight_map"].values()))
    for name in names:
        shutil.copyfile(source / name, out_dir / name)
    return trepa


# --- probes --------------------------------------------------------------------------------------


def trepa_probe(
    trepa: TrepaLoss, clips: list[np.ndarray], count: int, seed: int, batch: int = 4
) -> dict[str, float]:
    """What TREPA says about fixed val windows against: themselves with frames shuffled, themselves
    with Gaussian noise (σ 0.1 in [−1, 1]), and a window of another clip. Temporal sensitivity shows
    as `trepa_shuffled` well above 0 (identical clips give exactly 0)."""
    rng = np.random.default_rng(seed)
    device = next(trepa.parameters()).device
    windows = WindowSampler(clips, trepa.num_frames, rng).windows(count)  # (V, F, H, W, 3)
    order = torch.from_numpy(rng.permutation(trepa.num_frames)).to(device)
    others = np.roll(np.arange(count), 1)
    sums = {"trepa_shuffled": 0.0, "trepa_noise": 0.0, "trepa_other_clip": 0.0}
    with torch.no_grad():
        for i in range(0, count, batch):
            real = to_clips(windows[i : i + batch], device)  # (B, 3, F, H, W)
            noise = torch.from_numpy(rng.standard_normal(real.shape).astype(np.float32)).to(device)
            sums["trepa_shuffled"] += float(trepa(real[:, :, order], real)) * len(real)
            sums["trepa_noise"] += float(trepa((real + 0.1 * noise).clamp(-1, 1), real)) * len(real)
            sums["trepa_other_clip"] += float(
                trepa(to_clips(windows[others[i : i + batch]], device), real)
            ) * len(real)
    return {name: total / count for name, total in sums.items()}


def videomae_stage(
    processed: Path, out: Path, metrics: Path, history: Path, params: Params, device: torch.device
) -> None:
    """The `pretrain_videomae` stage: pretrain TREPA's VideoMAE on the train split (or install
    pretrained.videomae), then probe what TREPA says about val windows. The full profile copies a
    VideoMAE-v2 folder instead (`install_pretrained`), checked by loading it. Under torchrun every
    rank pretrains; rank 0 alone probes and writes (and alone installs)."""
    mae = params.videomae
    if mae.source == "pretrained" and not is_main():
        return
    manifest = read_manifest(processed / "manifest.parquet", ("train", "val"), "pretrain_videomae")
    clips_dir = processed / "clips"
    val_rows = manifest[manifest["split"] == "val"]
    if mae.source == "pretrained":
        trepa = install_pretrained(params.pretrained.videomae, out).to(device)
        val = load_clip_frames(val_rows, clips_dir, None, trepa.num_frames, "val clips")  # TREPA resizes them
        rows: list[dict] = []
        summary: dict = {"source": "pretrained"}
    else:
        train_rows = manifest[manifest["split"] == "train"]
        train = load_clip_frames(train_rows, clips_dir, mae.image_size, mae.num_frames, "train clips")
        val = load_clip_frames(val_rows, clips_dir, mae.image_size, mae.num_frames, "val clips")
        _, trained = Trainer(VideoMAERecipe(train, val, mae), out, device, params.seed).fit()
        if not is_main():
            return
        rows = trained.rows
        summary = {
            "source": "trained",
            "steps": rows[-1]["step"],
            "train_seconds": round(trained.seconds, 1),
            "val_loss": rows[-1]["val_loss"],
            "first_val_loss": rows[0]["val_loss"],
            "zero_prediction_loss": round(zero_prediction_loss(videomae_config(mae)), 5),
        }
        trepa = load_trepa(out).to(device)  # what later stages will load
    probe = trepa_probe(trepa, val, mae.val_windows, params.seed + 2)
    summary |= {k: float(f"{v:.4g}") for k, v in probe.items()}  # values from 1e-8 up
    write_json(metrics, summary)
    write_csv(history, rows, HISTORY_FIELDS)
