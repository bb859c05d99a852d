"""The latent space (the `train_vae` stage): fit TAEF2's per-channel latent scaling on training faces, or
train a small diffusers AutoencoderKL on aligned faces and set its latent scaling from data; then
evaluate it (PSNR / SSIM of the face and of the mouth)."""

from __future__ import annotations

import logging
import time
from contextlib import AbstractContextManager
from pathlib import Path

import cv2
import diffusers
import numpy as np
import torch
from diffusers import AutoencoderKL

from synclip.artifacts import load_vae, save_vae
from synclip.config import Params, VaeParams
from synclip.data.frames import Faces, load_faces, spaced
from synclip.data.manifest import read_manifest
from synclip.errors import UserError
from synclip.files import write_csv, write_json
from synclip.images import box_slices, image_metrics, to_uint8, to_unit
from synclip.nn.vae import build_vae
from synclip.pretrained.store import require
from synclip.runtime import channels_last, frozen_autocast, is_main
from synclip.train.losses import vae_losses
from synclip.train.trainer import Recipe, Trainer

log = logging.getLogger(__name__)


# --- evaluation ----------------------------------------------------------------------------------


@torch.no_grad()
def reconstruct(
    model: torch.nn.Module, frames: np.ndarray, device: torch.device, precision: str = "fp32", batch: int = 32
) -> np.ndarray:
    """uint8 (N, H, W, 3) -> its reconstruction through the posterior mean, uint8 (N, H, W, 3);
    `precision`: vae.precision (a frozen VAE's)."""
    was_training = model.training
    model.eval()
    out = []
    for i in range(0, len(frames), batch):
        images = to_unit(frames[i : i + batch], device)
        with frozen_autocast(device, precision):
            decoded = model.decode(model.encode(images).latent_dist.mode()).sample
        out.append(to_uint8(decoded.float()))
    model.train(was_training)
    return np.concatenate(out)


def evaluate_vae(
    model: torch.nn.Module,
    frames: np.ndarray,
    mouth: tuple[float, float, float, float],
    device: torch.device,
    precision: str = "fp32",
) -> dict[str, float]:
    """PSNR / SSIM (face and mouth) of the reconstructions of uint8 frames (N, H, W, 3)."""
    return image_metrics(frames, reconstruct(model, frames, device, precision), mouth)


def showcase_frames(faces: Faces, count: int, mouth: tuple[float, float, float, float]) -> np.ndarray:
    """Indices of one frame for each of the first `count` identities: the frame with the most dark
    (inner-mouth) pixels in the mouth box, so the grid shows open mouths and teeth."""
    rows, cols = box_slices(mouth, *faces.frames.shape[1:3])
    darkness = (faces.frames[:, rows, cols].max(axis=-1) < 60).sum(axis=(1, 2))  # (N,)
    chosen = []
    for identity in sorted(set(faces.identities))[:count]:
        own = np.flatnonzero(faces.identities == identity)
        chosen.append(int(own[darkness[own].argmax()]))
    return np.array(chosen)


def reconstruction_grid(
    original: np.ndarray, reconstruction: np.ndarray, mouth: tuple[float, float, float, float], zoom: int = 2
) -> np.ndarray:
    """uint8 RGB picture, one row per frame: original | reconstruction | |difference| x4 | the mouth
    box of both, magnified (original above reconstruction); the whole grid is scaled by `zoom`."""
    _, height, width, _ = original.shape
    rows, cols = box_slices(mouth, height, width)
    lines = []
    for a, b in zip(original, reconstruction, strict=True):
        difference = np.clip(np.abs(a.astype(np.int16) - b.astype(np.int16)) * 4, 0, 255).astype(np.uint8)
        mouths = np.concatenate([a[rows, cols], b[rows, cols]])  # (2h, w, 3)
        factor = min(height / mouths.shape[0], width / mouths.shape[1])
        big = mouths.repeat(int(factor), axis=0).repeat(int(factor), axis=1)
        panel = np.zeros((height, width, 3), np.uint8)
        panel[: big.shape[0], : big.shape[1]] = big
        line = np.concatenate([a, b, difference, panel], axis=1)
        line[:, width - 1 :: width] = 255  # separators between panels
        lines.append(line)
    grid = np.concatenate(lines)
    grid[height - 1 :: height] = 255
    return grid.repeat(zoom, axis=0).repeat(zoom, axis=1)


@torch.no_grad()
def latent_scaling_factor(
    model: AutoencoderKL, frames: np.ndarray, device: torch.device, seed: int, batch: int = 32
) -> tuple[float, float]:
    """(1 / std of sampled latents, mean posterior std) over uint8 frames (N, H, W, 3).

    The Stable Diffusion recipe: scale latents to unit variance so the UNet's noise schedule
    fits them (0.18215 for SD's VAE). The posterior std says how noisy a sampled latent is.
    """
    was_training = model.training
    model.eval()
    generator = torch.Generator(device).manual_seed(seed)
    latents, stds = [], []
    for i in range(0, len(frames), batch):
        posterior = model.encode(to_unit(frames[i : i + batch], device)).latent_dist
        latents.append(posterior.sample(generator).double().flatten())
        stds.append(posterior.std.double().flatten())
    model.train(was_training)
    return 1 / float(torch.cat(latents).std()), float(torch.cat(stds).mean())


# --- training ------------------------------------------------------------------------------------


class VaeRecipe(Recipe):
    """Random frames of the training pool at full resolution (GroupNorm statistics of crops differ
    from those of whole faces, which shifted colours when the feasibility prototype trained on
    crops), the `vae_losses` terms; the latent scaling factor is measured on training frames at the end."""

    name = "train_vae"

    def __init__(self, train: Faces, val: Faces, params: VaeParams) -> None:
        self.train_faces, self.params = train, params
        self.val_frames = val.frames[spaced(params.val_frames, len(val.frames))]

    def setup(self, seed: int, rng: np.random.Generator, device: torch.device) -> torch.nn.Module:
        self.seed, self.rng, self.device = seed, rng, device
        self.resolution = self.train_faces.frames.shape[1]
        return channels_last(build_vae(self.params, self.resolution).to(device).train())

    def fingerprint(self) -> list:
        faces = self.train_faces
        return [self.resolution, faces.clips, len(faces.frames), diffusers.__version__]

    def describe(self) -> str:
        frames = f"{len(self.train_faces.frames)} train / {len(self.val_frames)} val frames at {self.resolution} px"
        return f"{frames}, {self.params.batch_size} a step"

    def loss(
        self, step: int, autocast: AbstractContextManager
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The whole batch's frames and posterior noise are drawn on every rank; each computes its `shard`."""
        frames = self.train_faces.frames
        picks = self.shard.take(self.rng.integers(0, len(frames), self.params.batch_size))
        with autocast:
            terms = vae_losses(self.model, to_unit(frames[picks], self.device), self.params, shard=self.shard)
        return terms["total"], terms

    def validate(self, step: int) -> dict:
        scores = evaluate_vae(self.model, self.val_frames, self.params.mouth, self.device)
        return {f"val_{name}": round(value, 4) for name, value in scores.items()}

    def finish(self, out_dir: Path, step: int) -> torch.nn.Module:
        faces = self.train_faces.frames
        scale_frames = faces[spaced(self.params.scale_frames, len(faces))]
        scaling, posterior_std = latent_scaling_factor(self.model, scale_frames, self.device, self.seed)
        log.info("latent scaling factor %.5f (1 / std); mean posterior std %.4f", scaling, posterior_std)
        self.model.register_to_config(scaling_factor=scaling, shift_factor=None)
        save_vae(self.model.eval(), out_dir)
        return self.model


@torch.no_grad()
def fit_latent_affine(
    model: torch.nn.Module, frames: np.ndarray, device: torch.device, precision: str, batch: int = 32
) -> tuple[list[float], list[float]]:
    """Per latent channel (mean, std) over uint8 frames (N, H, W, 3): TAEF2's channels differ in offset
    and spread (the README measured means from −1.2 to +1.1), so one global factor would leave some
    channels far from the unit variance the UNet's noise schedule assumes."""
    if not len(frames):
        raise ValueError("no frames to fit the latent scaling on")
    total = squares = 0.0
    count = 0
    for i in range(0, len(frames), batch):
        with frozen_autocast(device, precision):
            latents = model.encode(to_unit(frames[i : i + batch], device)).latent_dist.mode()
        latents = latents.double()
        total = total + latents.sum(dim=(0, 2, 3))  # (C,)
        squares = squares + latents.square().sum(dim=(0, 2, 3))
        count += latents[:, 0].numel()
    mean = total / count
    std = (squares / count - mean.square()).clamp_min(1e-12).sqrt()
    return [round(float(v), 6) for v in mean], [round(float(v), 6) for v in std]


def vae_stage(
    processed: Path, out: Path, metrics: Path, history: Path, grid: Path, params: Params, device: torch.device
) -> None:
    """The `train_vae` stage: train on the train split (or copy pretrained.sd_vae), then evaluate on
    test identities; the grid shows original | reconstruction | difference | mouths of some of them.
    The full profile loads sd-vae-ft-mse instead (`vae.source: pretrained`) and only evaluates it; every
    later stage reads the latent scaling from the VAE's own config, whichever VAE it is. Under torchrun
    every rank trains the VAE; rank 0 alone evaluates and writes (and alone does the rest)."""
    vae = params.vae
    if vae.source != "trained" and not is_main():
        return
    needed = {"pretrained": ("test",), "taef2": ("train", "test")}.get(vae.source, ("train", "val", "test"))
    manifest = read_manifest(processed / "manifest.parquet", needed, "the VAE stage")
    clips = processed / "clips"
    if vae.source == "pretrained":
        model = load_vae(params.pretrained.sd_vae, "pretrained.sd_vae").to(device)
        save_vae(model, out)
        rows, summary = [], {"source": "pretrained", "steps": 0, "train_seconds": 0.0}
    elif vae.source == "taef2":
        path = require("taef2", params.pretrained.taef2, "pretrained.taef2")
        model = load_vae(path, "pretrained.taef2").to(device)
        train = load_faces(manifest[manifest["split"] == "train"], clips, vae.frame_stride, "train clips")
        started = time.perf_counter()
        fitted = train.frames[spaced(vae.scale_frames, len(train.frames))]
        mean, std = fit_latent_affine(model, fitted, device, vae.precision)
        model.register_to_config(latents_mean=mean, latents_std=std)
        log.info(
            "TAEF2 latent scaling fitted on %d train frames: channel means %.3f…%.3f, stds %.3f…%.3f",
            len(fitted),
            min(mean),
            max(mean),
            min(std),
            max(std),
        )
        save_vae(model, out)
        rows = []
        summary = {"source": "taef2", "steps": 0, "fit_seconds": round(time.perf_counter() - started, 1)}
    else:
        train = load_faces(manifest[manifest["split"] == "train"], clips, vae.frame_stride, "train clips")
        val = load_faces(manifest[manifest["split"] == "val"], clips, vae.frame_stride, "val clips")
        model, trained = Trainer(VaeRecipe(train, val, vae), out, device, params.seed).fit()
        if not is_main():
            return
        rows = trained.rows
        summary = {"source": "trained", "steps": rows[-1]["step"], "train_seconds": round(trained.seconds, 1)}
    test = load_faces(manifest[manifest["split"] == "test"], clips, vae.test_stride, "test clips")
    started = time.perf_counter()
    scores = evaluate_vae(model, test.frames, vae.mouth, device, vae.precision)
    summary |= {
        "test": {name: round(value, 4) for name, value in scores.items()},
        "test_frames": len(test.frames),
        "eval_seconds": round(time.perf_counter() - started, 1),
        "scaling_factor": getattr(model.config, "scaling_factor", None),
        "parameters": sum(p.numel() for p in model.parameters()),
    }
    shown = test.frames[showcase_frames(test, vae.grid_identities, vae.mouth)]
    picture = reconstruction_grid(shown, reconstruct(model, shown, device, vae.precision), vae.mouth)
    grid.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(grid), cv2.cvtColor(picture, cv2.COLOR_RGB2BGR)):
        raise UserError(f"{grid}: could not write the PNG")
    write_json(metrics, summary)
    write_csv(history, rows, list(rows[0]) if rows else ["step"])
