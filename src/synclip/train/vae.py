"""The tiny profile's latent space: train a small diffusers AutoencoderKL on aligned faces, set its
latent scaling from data, evaluate it (PSNR / SSIM of the face and of the mouth), load it back.

The full profile loads sd-vae-ft-mse through the same `load_vae`, so every later stage reads its
latent scaling from the VAE's own config (`scaling_factor`), whichever VAE it is.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import diffusers
import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL
from einops import rearrange
from safetensors import SafetensorError, safe_open

from synclip.artifacts import CheckpointError
from synclip.config import VaeParams, to_dict
from synclip.errors import UserError
from synclip.log import progress, track
from synclip.media.decode import iter_frames
from synclip.runtime import autocast_dtype, channels_last, contiguous_layout
from synclip.train.checkpoint import load_training_state, save_training_state
from synclip.train.optim import adamw, learning_rate

log = logging.getLogger(__name__)

CHECKPOINT = "checkpoint.pt"
DIFFUSERS_CONFIG = "config.json"
DIFFUSERS_WEIGHTS = "diffusion_pytorch_model.safetensors"
SSIM_SIGMA = 1.5  # Wang et al. 2004; with radius 5 the 11-tap window skimage uses
SSIM_RADIUS = 5
INITIAL_LOGVAR = -10.0  # the posterior log-variance a new VAE starts from (see build_vae)


# --- data ----------------------------------------------------------------------------------------


@dataclass
class Faces:
    """A pool of aligned face frames in memory."""

    frames: np.ndarray  # (N, H, W, 3) uint8
    identities: np.ndarray  # (N,) str, the identity of each frame
    clips: list[str]  # the clips they came from, in order (for the resume fingerprint)


def load_faces(manifest: pd.DataFrame, clips_dir: str | Path, stride: int, description: str) -> Faces:
    """Every `stride`-th frame of each clip listed in `manifest` (rows of the preprocessing manifest)."""
    frames, identities = [], []
    rows = list(manifest.itertuples())
    for row in track(rows, description, unit="clips"):
        kept = [f for i, f in enumerate(iter_frames(Path(clips_dir) / f"{row.clip}.mp4")) if i % stride == 0]
        frames.extend(kept)
        identities.extend([row.identity] * len(kept))
    if not frames:
        raise UserError(f"{clips_dir}: no frames for {description}")
    return Faces(np.stack(frames), np.array(identities), [row.clip for row in rows])


def to_model(frames: np.ndarray, device: torch.device) -> torch.Tensor:
    """uint8 (B, H, W, 3) -> float (B, 3, H, W) in [−1, 1], the range diffusers VAEs take."""
    images = torch.from_numpy(np.ascontiguousarray(frames)).to(device)
    return rearrange(images, "b h w c -> b c h w").float() / 127.5 - 1


def to_pixels(images: torch.Tensor) -> np.ndarray:
    """float (B, 3, H, W) in [−1, 1] -> uint8 (B, H, W, 3), rounded and clipped."""
    pixels = ((images.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return rearrange(pixels, "b c h w -> b h w c").cpu().numpy()


def spaced(count: int, total: int) -> np.ndarray:
    """`count` indices spread evenly over range(total) (all of them when count >= total)."""
    return np.unique(np.linspace(0, total - 1, min(count, total)).round().astype(int))


# --- model ---------------------------------------------------------------------------------------


def vae_config(params: VaeParams, resolution: int) -> dict:
    """The diffusers AutoencoderKL arguments; `len(block_out_channels) − 1` halvings of `resolution`."""
    levels = len(params.block_out_channels)
    return {
        "in_channels": 3,
        "out_channels": 3,
        "down_block_types": ["DownEncoderBlock2D"] * levels,
        "up_block_types": ["UpDecoderBlock2D"] * levels,
        "block_out_channels": list(params.block_out_channels),
        "layers_per_block": params.layers_per_block,
        "latent_channels": params.latent_channels,
        "norm_num_groups": params.norm_num_groups,
        "sample_size": resolution,
    }


def build_vae(params: VaeParams, resolution: int) -> AutoencoderKL:
    """A freshly initialised VAE whose posterior starts nearly deterministic.

    With diffusers' default init the posterior std starts near 1 while the encoder's means have a
    std near 0.3, and with a small KL weight it only falls to about 0.6 in a CPU-sized run, so the
    latents the UNet is trained on would carry that noise. Starting the log-variance at
    INITIAL_LOGVAR (std 0.007) keeps the posterior nearly deterministic throughout; reconstruction
    quality after equal steps was the same both ways when we measured it.
    """
    model = AutoencoderKL(**vae_config(params, resolution))
    logvar = slice(params.latent_channels, 2 * params.latent_channels)  # quant_conv: (mean, logvar)
    with torch.no_grad():
        model.quant_conv.weight[logvar] = 0
        model.quant_conv.bias[logvar] = INITIAL_LOGVAR
    return model


def mouth_box(mouth: tuple[float, float, float, float], height: int, width: int) -> tuple[slice, slice]:
    """Row and column slices of the (top, bottom, left, right) fractions on an H×W face."""
    top, bottom, left, right = mouth
    rows = slice(round(top * height), round(bottom * height))
    return rows, slice(round(left * width), round(right * width))


# --- objective -----------------------------------------------------------------------------------


def sobel(images: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> (B, 2C, H, W): horizontal and vertical Sobel gradients of every channel."""
    kx = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]], device=images.device) / 4
    kernel = (
        torch.stack([kx, kx.T])[:, None].repeat(images.shape[1], 1, 1, 1).to(images.dtype)
    )  # (2C, 1, 3, 3)
    padded = F.pad(images, (1, 1, 1, 1), mode="replicate")
    return F.conv2d(padded, kernel, groups=images.shape[1])


def vae_losses(
    model: AutoencoderKL, images: torch.Tensor, params: VaeParams, generator: torch.Generator | None = None
) -> dict[str, torch.Tensor]:
    """Named loss terms and their weighted `total` for images (B, 3, H, W) in [−1, 1].

    The pixel terms are means weighted 1 + mouth_weight inside the mouth box and 1 elsewhere:
    the lower face is what the UNet generates, the rest of the frame is pasted back from the
    source. The latent is sampled from the posterior, as LatentSync encodes for the UNet (§2.5).
    """
    posterior = model.encode(images).latent_dist
    recon = model.decode(posterior.sample(generator)).sample.float()
    height, width = images.shape[-2:]
    rows, cols = mouth_box(params.mouth, height, width)
    weight = torch.ones(height, width, device=images.device)
    weight[rows, cols] += params.mouth_weight
    inner = weight[SSIM_RADIUS:-SSIM_RADIUS, SSIM_RADIUS:-SSIM_RADIUS]  # where the SSIM map lies

    def weighted(values: torch.Tensor, w: torch.Tensor) -> torch.Tensor:  # (B, C, h, w) -> ()
        return (values * w).sum() / (w.sum() * values.shape[0] * values.shape[1])

    ssim = ssim_map((recon + 1) / 2, (images + 1) / 2)  # (B, 3, H − 10, W − 10)
    terms = {
        "l1": weighted((recon - images).abs(), weight),
        "edge": weighted((sobel(recon) - sobel(images)).abs(), weight),
        "ssim": weighted(1 - ssim, inner),
        "kl": posterior.kl().mean() / posterior.mean[0].numel(),  # per latent element
    }
    weights = {
        "l1": params.l1_weight,
        "edge": params.edge_weight,
        "ssim": params.ssim_weight,
        "kl": params.kl_weight,
    }
    terms["total"] = sum(weights[name] * term for name, term in terms.items())
    return terms


# --- metrics -------------------------------------------------------------------------------------


def ssim_map(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """SSIM (Wang et al. 2004: Gaussian σ 1.5, K1 0.01, K2 0.03) of images (B, C, H, W) in [0, 1],
    computed in their dtype (differentiable, so it also serves as a loss).

    Returns (B, C, H − 10, W − 10): one value per window centre, the centres whose 11×11 window
    lies inside the image — the values `skimage.metrics.structural_similarity` averages.
    """
    channels = a.shape[1]
    x = torch.arange(-SSIM_RADIUS, SSIM_RADIUS + 1, dtype=a.dtype, device=a.device)
    g = torch.exp(-(x**2) / (2 * SSIM_SIGMA**2))
    g = g / g.sum()
    window = (g[:, None] * g[None, :]).expand(5 * channels, 1, -1, -1).contiguous()  # (5C, 1, 11, 11)
    # the five local moments in one depthwise convolution (on channels: several times faster on the
    # CPU than on the batch axis): (B, 5C, H, W) -> (5, B, C, H − 10, W − 10)
    stacked = torch.cat([a, b, a * a, b * b, a * b], dim=1)
    moments = F.conv2d(stacked, window, groups=5 * channels).unflatten(1, (5, channels)).transpose(0, 1)
    mu_a, mu_b, aa, bb, ab = moments
    var_a, var_b, cov = aa - mu_a**2, bb - mu_b**2, ab - mu_a * mu_b
    c1, c2 = 0.01**2, 0.03**2
    return ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))


def image_metrics(
    original: np.ndarray,
    reconstruction: np.ndarray,
    mouth: tuple[float, float, float, float],
    batch: int = 64,
) -> dict[str, float]:
    """Mean per-image PSNR (dB) and SSIM of the whole face and of the mouth box.

    Both arrays are uint8 (N, H, W, 3). The mouth SSIM averages the SSIM map over the window
    centres inside the box (its windows see a few pixels of context around it). Identical images
    give PSNR inf and SSIM 1. SSIM is computed in float32 (within 1e-4 of float64, 10x faster).
    """
    if original.shape != reconstruction.shape:
        raise ValueError(f"shapes differ: {original.shape} vs {reconstruction.shape}")
    rows, cols = mouth_box(mouth, *original.shape[1:3])
    # SSIM map index i is the window centred on pixel i + SSIM_RADIUS
    r = slice(max(rows.start - SSIM_RADIUS, 0), rows.stop - SSIM_RADIUS)
    c = slice(max(cols.start - SSIM_RADIUS, 0), cols.stop - SSIM_RADIUS)
    sums = dict.fromkeys(("psnr_face", "ssim_face", "psnr_mouth", "ssim_mouth"), 0.0)
    for i in range(0, len(original), batch):
        a = rearrange(torch.from_numpy(original[i : i + batch]), "n h w c -> n c h w").double() / 255
        b = rearrange(torch.from_numpy(reconstruction[i : i + batch]), "n h w c -> n c h w").double() / 255
        ssim = ssim_map(a.float(), b.float()).double()  # (n, C, H − 10, W − 10)
        sums["psnr_face"] += float(_psnr(a, b).sum())
        sums["psnr_mouth"] += float(_psnr(a[..., rows, cols], b[..., rows, cols]).sum())
        sums["ssim_face"] += float(ssim.flatten(1).mean(dim=1).sum())
        sums["ssim_mouth"] += float(ssim[..., r, c].flatten(1).mean(dim=1).sum())
    return {name: total / len(original) for name, total in sums.items()}


def _psnr(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(N,) PSNR in dB of images (N, C, H, W) in [0, 1]; inf where they are equal."""
    mse = ((a - b) ** 2).flatten(1).mean(dim=1)
    return 10 * torch.log10(1 / mse)


@torch.no_grad()
def reconstruct(
    model: AutoencoderKL, frames: np.ndarray, device: torch.device, batch: int = 32
) -> np.ndarray:
    """uint8 (N, H, W, 3) -> its reconstruction through the posterior mean, uint8 (N, H, W, 3)."""
    was_training = model.training
    model.eval()
    out = []
    for i in range(0, len(frames), batch):
        images = to_model(frames[i : i + batch], device)
        out.append(to_pixels(model.decode(model.encode(images).latent_dist.mode()).sample))
    model.train(was_training)
    return np.concatenate(out)


def evaluate_vae(
    model: AutoencoderKL, frames: np.ndarray, mouth: tuple[float, float, float, float], device: torch.device
) -> dict[str, float]:
    """PSNR / SSIM (face and mouth) of the reconstructions of uint8 frames (N, H, W, 3)."""
    return image_metrics(frames, reconstruct(model, frames, device), mouth)


def showcase_frames(faces: Faces, count: int, mouth: tuple[float, float, float, float]) -> np.ndarray:
    """Indices of one frame for each of the first `count` identities: the frame with the most dark
    (inner-mouth) pixels in the mouth box, so the grid shows open mouths and teeth."""
    rows, cols = mouth_box(mouth, *faces.frames.shape[1:3])
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
    rows, cols = mouth_box(mouth, height, width)
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


# --- scaling -------------------------------------------------------------------------------------


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
        posterior = model.encode(to_model(frames[i : i + batch], device)).latent_dist
        latents.append(posterior.sample(generator).double().flatten())
        stds.append(posterior.std.double().flatten())
    model.train(was_training)
    return 1 / float(torch.cat(latents).std()), float(torch.cat(stds).mean())


# --- training ------------------------------------------------------------------------------------


@dataclass
class History:
    rows: list[dict]  # one per validation: step, the mean training terms since the last one, val metrics
    seconds: float


def fingerprint(params: VaeParams, resolution: int, seed: int, train: Faces) -> str:
    """What a checkpoint must share with this run to be resumed: params, data and code.

    The code counts too: models/vae persists between `dvc repro` runs, so after a change to the
    objective a finished checkpoint would otherwise be "resumed" at max_steps and never retrained.
    """
    code = hashlib.sha256(Path(__file__).read_bytes()).hexdigest()
    payload = json.dumps(
        [to_dict(params), resolution, seed, train.clips, len(train.frames), code, diffusers.__version__],
        sort_keys=True,
    )
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def train_vae(
    train: Faces,
    val: Faces,
    params: VaeParams,
    out_dir: str | Path,
    device: torch.device,
    seed: int,
    stop_after: int | None = None,
) -> tuple[AutoencoderKL, History]:
    """Train (or resume) the AutoencoderKL and write it to `out_dir` as a diffusers folder.

    Batches are random frames of the training pool at full resolution (GroupNorm statistics of
    crops differ from those of whole faces, which shifted colours when the feasibility prototype
    trained on crops). A complete checkpoint (`out_dir/checkpoint.pt`) is written every
    `checkpoint_every` steps; a rerun with the same params, seed and frames continues from it and
    ends with the same weights as an uninterrupted run. At the end the latent scaling factor is
    measured on training frames and stored in the config. `stop_after` ends early (for tests).
    """
    out_dir = Path(out_dir)
    resolution = train.frames.shape[1]
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    model = channels_last(build_vae(params, resolution).to(device).train())
    optimizer = adamw(model.parameters(), device, params.lr, params.weight_decay)
    amp = autocast_dtype(device)
    scaler = torch.amp.GradScaler(device.type, enabled=amp == torch.float16)
    val_frames = val.frames[spaced(params.val_frames, len(val.frames))]

    key = fingerprint(params, resolution, seed, train)
    history, step, window = History(rows=[], seconds=0.0), 0, []
    resumed = load_training_state(
        out_dir / CHECKPOINT, model=model, optimizer=optimizer, scaler=scaler, rng=rng, fingerprint=key
    )
    if resumed is not None:
        step, extra = resumed
        history, window = History(**extra["history"]), extra["window"]
        log.info("resuming VAE training from step %d (%s)", step, out_dir / CHECKPOINT)
    log.info(
        "VAE: %.2f M parameters, %d train / %d val frames at %d px, %d steps of %d on %s",
        sum(p.numel() for p in model.parameters()) / 1e6, len(train.frames), len(val_frames), resolution,
        params.max_steps, params.batch_size, device,
    )  # fmt: skip
    started = time.perf_counter() - history.seconds
    context = torch.autocast(device.type, dtype=amp) if amp is not None else nullcontext()
    with progress("steps") as bar:
        task = bar.add_task("train_vae", total=params.max_steps, completed=step)
        while step < params.max_steps:
            for group in optimizer.param_groups:
                group["lr"] = learning_rate(params, step)
            images = to_model(train.frames[rng.integers(0, len(train.frames), params.batch_size)], device)
            with context:
                terms = vae_losses(model, images, params)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(terms["total"]).backward()
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(model.parameters(), params.grad_clip)
            scaler.step(optimizer)
            scaler.update()
            step += 1
            window.append({name: term.item() for name, term in terms.items()})
            bar.advance(task)
            if step % params.val_every == 0 or step == params.max_steps:
                scores = evaluate_vae(model, val_frames, params.mouth, device)
                history.rows.append(
                    {
                        "step": step,
                        **{
                            f"train_{name}": round(float(np.mean([w[name] for w in window])), 5)
                            for name in terms
                        },
                        **{f"val_{name}": round(value, 4) for name, value in scores.items()},
                        "seconds": round(time.perf_counter() - started, 1),
                    }
                )
                window = []
                log.info("step %d: train loss %.4f, val PSNR %.2f dB (mouth %.2f), SSIM %.3f (mouth %.3f)",
                         step, history.rows[-1]["train_total"], scores["psnr_face"], scores["psnr_mouth"],
                         scores["ssim_face"], scores["ssim_mouth"])  # fmt: skip
            history.seconds = time.perf_counter() - started
            if step % params.checkpoint_every == 0 or step == params.max_steps:
                save_training_state(
                    out_dir / CHECKPOINT, model=model, optimizer=optimizer, scaler=scaler, step=step, rng=rng,
                    fingerprint=key, extra={"history": dataclasses.asdict(history), "window": window},
                )  # fmt: skip
            if stop_after is not None and step >= stop_after:
                return model, history
    scale_frames = train.frames[spaced(params.scale_frames, len(train.frames))]
    scaling, posterior_std = latent_scaling_factor(model, scale_frames, device, seed)
    log.info("latent scaling factor %.5f (1 / std); mean posterior std %.4f", scaling, posterior_std)
    model.register_to_config(scaling_factor=scaling, shift_factor=None)
    save_vae(model.eval(), out_dir)
    return model, history


def save_vae(model: AutoencoderKL, folder: str | Path) -> Path:
    """`save_pretrained` into a temporary sibling, then swap the files in (weights first), so a
    reader never sees a config without its weights; other files in `folder` (the checkpoint) stay.
    Leaves `model` in the default memory layout (safetensors stores contiguous tensors only)."""
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=folder.parent))
    try:
        contiguous_layout(model).save_pretrained(tmp, safe_serialization=True)
        folder.mkdir(exist_ok=True)
        for name in (DIFFUSERS_WEIGHTS, DIFFUSERS_CONFIG):
            os.replace(tmp / name, folder / name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder


def load_vae(path: str | Path | None, param: str = "pretrained.sd_vae") -> AutoencoderKL:
    """A diffusers AutoencoderKL folder (config.json + diffusion_pytorch_model.safetensors), offline
    and strictly, in eval mode. `param` names the setting that points here, for the error message."""
    if path is None:
        raise UserError(
            f"{param} is not set; point it at a diffusers AutoencoderKL folder (e.g. sd-vae-ft-mse)"
        )
    folder = Path(path)
    hint = f"(set by {param}; a diffusers AutoencoderKL folder with {DIFFUSERS_CONFIG} + {DIFFUSERS_WEIGHTS})"
    config_path, weights_path = folder / DIFFUSERS_CONFIG, folder / DIFFUSERS_WEIGHTS
    if not folder.is_dir():
        raise UserError(f"{folder}: no such VAE folder {hint}")
    for needed in (config_path, weights_path):
        if not needed.is_file():
            raise UserError(f"{folder}: no {needed.name} {hint}")
    try:
        config = json.loads(config_path.read_text())
        with safe_open(str(weights_path), framework="pt") as file:
            stored = set(file.keys())
        model = AutoencoderKL.from_pretrained(folder, local_files_only=True)
    except (OSError, ValueError, RuntimeError, SafetensorError) as error:  # JSONDecodeError is a ValueError
        raise UserError(f"{folder}: not a loadable AutoencoderKL {hint}: {error}") from None
    if config.get("_class_name") not in (None, "AutoencoderKL"):
        raise UserError(
            f"{config_path}: _class_name {config.get('_class_name')!r}, expected AutoencoderKL {hint}"
        )
    own = set(model.state_dict())
    if stored != own:  # diffusers initialises missing weights with a warning; never run on those
        missing, unexpected = sorted(own - stored), sorted(stored - own)
        raise CheckpointError(
            f"{weights_path} does not match its config {hint}: {len(missing)} missing "
            f"({', '.join(missing[:5])}), {len(unexpected)} unexpected ({', '.join(unexpected[:5])})"
        )
    return channels_last(model.eval())
