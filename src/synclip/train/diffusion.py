"""The UNet's training objective (LatentSync §4.1), apart from the network and the loop.

DDPM forward noising with LatentSync's schedule, PYoCo mixed noise, the one-step x̂0, and the loss
as a dict of named terms: `recon` (ε MSE, optionally weighted toward the mouth) and, on the
decoded x̂0, `sync` (frozen SyncNet), `lpips` (lower half of the face) and `trepa` (video
features). A term whose weight is 0 or whose network is missing is not computed; `disabled` says
why. Shapes: latents (B, 4, F, h, w), pixels (B, 3, F, H, W) in [−1, 1], audio tokens (B, F, S, D),
SyncNet mel (B, 1, 80, W).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, DDPMScheduler
from einops import rearrange
from torch import nn

from synclip.nn.syncnet import StableSyncNet, sync_loss
from synclip.nn.unet import UNet3DConditionModel

log = logging.getLogger(__name__)

TERMS = ("recon", "sync", "lpips", "trepa")
PIXEL_TERMS = ("sync", "lpips", "trepa")
# LatentSync's configs/scheduler_config.json (its DDIM sampler shares these betas)
SCHEDULE = {
    "num_train_timesteps": 1000,
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "clip_sample": False,
    "prediction_type": "epsilon",
}


def noise_scheduler() -> DDPMScheduler:
    return DDPMScheduler(**SCHEDULE)


def noise_correlation(alpha: float) -> float:
    """The inter-frame correlation of `mixed_noise`: α² / (1 + α²) (0.5 at LatentSync's α = 1)."""
    return alpha**2 / (1 + alpha**2)


def mixed_noise(
    shape: tuple[int, ...], alpha: float, generator: torch.Generator | None = None, device=None
) -> torch.Tensor:
    """(B, C, F, h, w) unit-variance noise whose frames are correlated α² / (1 + α²) (PYoCo, arXiv 2305.10474).

    ε_f = sqrt(α²/(1+α²))·ε_shared + sqrt(1/(1+α²))·ε_f,ind, one ε_shared per clip for all frames, as
    LatentSync's `use_mixed_noise`. α = 0 gives independent frames (plain DDPM noise).
    """
    batch, channels, _frames, height, width = shape
    shared = torch.randn((batch, channels, 1, height, width), generator=generator, device=device)
    individual = torch.randn(shape, generator=generator, device=device)
    rho = noise_correlation(alpha)
    return math.sqrt(rho) * shared.expand(shape) + math.sqrt(1 - rho) * individual


def _alpha_bar(scheduler: DDPMScheduler, timesteps: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    alpha_bar = scheduler.alphas_cumprod.to(like.device, torch.float64)[timesteps.to(like.device)]
    return alpha_bar.view(-1, *[1] * (like.ndim - 1))  # (B, 1, 1, 1, 1)


def add_noise(
    scheduler: DDPMScheduler, latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor
) -> torch.Tensor:
    """z_t = sqrt(ᾱ_t)·z_0 + sqrt(1 − ᾱ_t)·ε, one timestep (B,) per clip; latents (B, 4, F, h, w)."""
    alpha_bar = _alpha_bar(scheduler, timesteps, latents)
    return (alpha_bar.sqrt() * latents + (1 - alpha_bar).sqrt() * noise).to(latents.dtype)


def predict_x0(
    scheduler: DDPMScheduler, noisy: torch.Tensor, epsilon: torch.Tensor, timesteps: torch.Tensor
) -> torch.Tensor:
    """One-step x̂0 = (z_t − sqrt(1 − ᾱ_t)·ε̂) / sqrt(ᾱ_t) (DDIM eq. 12), at every t as LatentSync."""
    alpha_bar = _alpha_bar(scheduler, timesteps, noisy)
    return ((noisy - (1 - alpha_bar).sqrt() * epsilon) / alpha_bar.sqrt()).to(epsilon.dtype)


@dataclass
class UNetBatch:
    """One batch of training windows (`synclip.data.unet_windows`), latents already scaled."""

    latents: torch.Tensor  # (B, 4, F, h, w) target frames
    masked_latents: torch.Tensor  # (B, 4, F, h, w) target frames × mask
    reference_latents: torch.Tensor  # (B, 4, F, h, w) a non-overlapping window of the same clip
    mask: torch.Tensor  # (B, 1, F, h, w) 1 keep, 0 generate
    audio: torch.Tensor  # (B, F, S, D) Whisper tokens
    mel: torch.Tensor  # (B, 1, 80, W) SyncNet mel of the window
    pixels: torch.Tensor | None = None  # (B, 3, F, H', W') the target frames' `pixel_region`, for LPIPS/TREPA

    def to(self, device: torch.device) -> UNetBatch:
        moved = {k: (v.to(device) if v is not None else None) for k, v in vars(self).items()}
        return UNetBatch(**moved)

    def unet_input(self, noisy: torch.Tensor) -> torch.Tensor:
        """The 13 channels in LatentSync's order: z_t, mask, masked latent, reference latent."""
        return torch.cat([noisy, self.mask, self.masked_latents, self.reference_latents], dim=1)


class LpipsTerm(nn.Module):
    """LPIPS (VGG, lpips 0.1.4 linear heads) with the VGG16 trunk loaded from a local torchvision state dict."""

    def __init__(self, vgg_state: Mapping[str, torch.Tensor]) -> None:
        super().__init__()
        import lpips

        # pnet_rand: no torchvision download; the trunk is filled from `vgg_state` below
        self.lpips = lpips.LPIPS(net="vgg", pnet_rand=True, verbose=False).eval().requires_grad_(False)
        own = {k: v for k, v in self.lpips.net.state_dict().items()}
        mapped = {}
        for name in own:  # net.slice{k}.{i}.{weight,bias} <- features.{i}.{weight,bias}
            _, index, kind = name.split(".")
            mapped[name] = vgg_state.get(f"features.{index}.{kind}")
        missing = sorted(k for k, v in mapped.items() if v is None)
        if missing:
            raise ValueError(f"VGG16 state dict lacks {len(missing)} trunk tensors ({missing[:3]} …)")
        self.lpips.net.load_state_dict(mapped, strict=True)

    def forward(self, generated: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) pairs in [−1, 1] → mean LPIPS."""
        return self.lpips(generated, real).mean()


def load_lpips(path: str | None) -> tuple[LpipsTerm | None, str]:
    """(the LPIPS term, "") or (None, why it is unavailable) for `pretrained.lpips_vgg`."""
    if path is None:
        return None, "pretrained.lpips_vgg is null (VGG16 ImageNet weights are needed)"
    if not Path(path).is_file():
        return None, f"pretrained.lpips_vgg {path} does not exist"
    state = torch.load(path, map_location="cpu", weights_only=True)
    return LpipsTerm(state), ""


def load_trepa_term(folder: str | Path | None) -> tuple[nn.Module | None, str]:
    """(TrepaLoss from `synclip.train.trepa`, "") or (None, why it is unavailable)."""
    if folder is None:
        return None, "no TREPA encoder folder given"
    if not Path(folder).is_dir():
        return None, f"TREPA encoder folder {folder} does not exist"
    try:
        from synclip.train.trepa import load_trepa
    except ImportError as error:
        return None, f"synclip.train.trepa is unavailable ({error})"
    return load_trepa(folder), ""


def region_slices(
    region: tuple[float, float, float, float], latent_size: tuple[int, int], margin: int = 1
) -> tuple[tuple[slice, slice], tuple[slice, slice]]:
    """(latent rows/cols to decode, pixel rows/cols of `region` within that decode, in latent cells × 8/… units).

    `region` (top, bottom, left, right) fractions is snapped outward to whole latent cells; the decode
    takes `margin` more cells on each side (clipped), so the decoder's border does not touch the region.
    Pixel slices are returned in latent cells; multiply by the VAE's factor.
    """
    h, w = latent_size
    top, bottom, left, right = region
    r0, r1 = math.floor(top * h), math.ceil(bottom * h)
    c0, c1 = math.floor(left * w), math.ceil(right * w)
    d0, d1 = max(r0 - margin, 0), min(r1 + margin, h)
    e0, e1 = max(c0 - margin, 0), min(c1 + margin, w)
    return (slice(d0, d1), slice(e0, e1)), (slice(r0 - d0, r1 - d0), slice(c0 - e0, c1 - e0))


def region_pixels(
    region: tuple[float, float, float, float], latent_size: tuple[int, int], factor: int
) -> tuple[slice, slice]:
    """Pixel rows/cols of the full face that `region` covers after snapping to latent cells."""
    h, w = latent_size
    top, bottom, left, right = region
    rows = slice(math.floor(top * h) * factor, math.ceil(bottom * h) * factor)
    cols = slice(math.floor(left * w) * factor, math.ceil(right * w) * factor)
    return rows, cols


class DiffusionObjective:
    """LatentSync's loss: weighted named terms on one batch, given the noise and timesteps.

    `vae`, `syncnet`, `lpips`, `trepa` are frozen; gradients flow through the VAE decoder to the
    UNet. `sync_crop`/`sync_size` are the SyncNet's view (fractions of the face, (H, W)).
    `recon_mouth_weight` > 0 weighs the ε MSE toward the cells of the `recon_mouth` box (`vae.mouth`;
    synclip's addition: with plain MSE the tiny UNet took twice the steps to start using the audio).
    """

    def __init__(
        self,
        weights: Mapping[str, float],
        *,
        recon_mouth: tuple[float, float, float, float] = (0.0, 1.0, 0.0, 1.0),
        recon_mouth_weight: float = 0.0,
        pixel_region: tuple[float, float, float, float] = (0.0, 1.0, 0.0, 1.0),
        vae: AutoencoderKL | None = None,
        syncnet: StableSyncNet | None = None,
        lpips: nn.Module | None = None,
        trepa: nn.Module | None = None,
        unavailable: Mapping[str, str] | None = None,
    ) -> None:
        unknown = sorted(set(weights) - set(TERMS))
        if unknown:
            raise ValueError(f"unknown loss terms {unknown}; known: {TERMS}")
        self.scheduler = noise_scheduler()
        self.recon_mouth, self.recon_mouth_weight = recon_mouth, recon_mouth_weight
        self.pixel_region = pixel_region
        self.vae, self.syncnet, self.lpips, self.trepa = vae, syncnet, lpips, trepa
        networks = {"sync": syncnet, "lpips": lpips, "trepa": trepa}
        self.weights: dict[str, float] = {}
        self.disabled: dict[str, str] = {}
        for term in TERMS:
            weight = float(weights.get(term, 0.0))
            reason = ""
            if weight == 0:
                reason = "weight 0"
            elif term in PIXEL_TERMS and vae is None:
                reason = "no VAE to decode x̂0"
            elif term in networks and networks[term] is None:
                reason = (unavailable or {}).get(term, f"no {term} network")
            if reason:
                self.disabled[term] = reason
                if weight:
                    log.warning("loss term %s (weight %g) disabled: %s", term, weight, reason)
            else:
                self.weights[term] = weight
        if "recon" not in self.weights:
            raise ValueError("the recon term needs a weight > 0")
        if syncnet is not None and "sync" in self.weights:
            top, bottom, left, right = syncnet.config.crop
            p_top, p_bottom, p_left, p_right = pixel_region
            if not (p_top <= top and bottom <= p_bottom and p_left <= left and right <= p_right):
                raise ValueError(
                    f"pixel_region {pixel_region} must contain the SyncNet crop {syncnet.config.crop}"
                )

    def recon_weights(self, latent_size: tuple[int, int], device: torch.device) -> torch.Tensor | None:
        """(h, w) weights of the ε MSE, mean 1: 1 + recon_mouth_weight on the mouth's cells; None = plain MSE."""
        if not self.recon_mouth_weight:
            return None
        (rows, cols), _ = region_slices(self.recon_mouth, latent_size, margin=0)
        weights = torch.ones(latent_size, device=device)
        weights[rows, cols] += self.recon_mouth_weight
        return weights / weights.mean()

    @property
    def needs_pixels(self) -> bool:
        """Whether batches must carry the target pixels (LPIPS and TREPA compare against them)."""
        return "lpips" in self.weights or "trepa" in self.weights

    def decode_region(self, latents: torch.Tensor) -> torch.Tensor:
        """(B, 4, F, h, w) scaled latents → (B, 3, F, H', W') decoded `pixel_region`."""
        assert self.vae is not None
        (rows, cols), (keep_rows, keep_cols) = region_slices(self.pixel_region, latents.shape[-2:])
        factor = 2 ** (len(self.vae.config.block_out_channels) - 1)
        shift = self.vae.config.shift_factor or 0.0
        crop = latents[..., rows, cols] / self.vae.config.scaling_factor + shift
        frames = self.vae.decode(rearrange(crop, "b c f h w -> (b f) c h w")).sample
        frames = frames[
            :,
            :,
            keep_rows.start * factor : keep_rows.stop * factor,
            keep_cols.start * factor : keep_cols.stop * factor,
        ]
        return rearrange(frames, "(b f) c h w -> b c f h w", f=latents.shape[2])

    def sync_view(self, region: torch.Tensor, latent_size: tuple[int, int]) -> torch.Tensor:
        """(B, 3, F, H', W') decoded region → (B, 3·F, H_s, W_s) the SyncNet's crop, frames on channels."""
        assert self.syncnet is not None
        factor = 2 ** (len(self.vae.config.block_out_channels) - 1)
        size = (latent_size[0] * factor, latent_size[1] * factor)  # the full face, pixels
        rows, cols = region_pixels(self.pixel_region, latent_size, factor)
        top, bottom, left, right = self.syncnet.config.crop  # `face_region`'s rounding, in region coordinates
        crop = region[
            ..., round(top * size[0]) - rows.start : round(bottom * size[0]) - rows.start,
            round(left * size[1]) - cols.start : round(right * size[1]) - cols.start,
        ]  # fmt: skip
        frames = rearrange(crop, "b c f h w -> (b f) c h w")
        frames = F.interpolate(frames, size=tuple(self.syncnet.config.image_size), mode="area")
        return rearrange(frames, "(b f) c h w -> b (f c) h w", b=region.shape[0])

    def __call__(
        self,
        unet: UNet3DConditionModel,
        batch: UNetBatch,
        noise: torch.Tensor,
        timesteps: torch.Tensor,
        recon_only: bool = False,
    ) -> dict[str, torch.Tensor]:
        """{"recon", enabled pixel terms…, "total"}: each a scalar, total = Σ weight · term.

        `recon_only` skips the pixel terms (and leaves "total" out).
        """
        noisy = add_noise(self.scheduler, batch.latents, noise, timesteps)
        epsilon = unet(batch.unet_input(noisy), timesteps, batch.audio).float()  # (B, 4, F, h, w)
        weights = self.recon_weights(tuple(epsilon.shape[-2:]), epsilon.device)
        error = (epsilon - noise.float()) ** 2
        terms = {"recon": error.mean() if weights is None else (error * weights).mean()}
        if recon_only:
            return terms
        if any(t in self.weights for t in PIXEL_TERMS):
            x0 = predict_x0(self.scheduler, noisy.float(), epsilon, timesteps)
            region = self.decode_region(x0).float()  # (B, 3, F, H', W')
            if "sync" in self.weights:
                visual = self.syncnet.embed_visual(self.sync_view(region, x0.shape[-2:]))
                audio = self.syncnet.embed_audio(batch.mel)
                terms["sync"] = sync_loss(
                    visual.float(), audio.float(), torch.ones(len(visual), device=visual.device)
                )
            if "lpips" in self.weights:
                factor = 2 ** (len(self.vae.config.block_out_channels) - 1)
                rows, _ = region_pixels(self.pixel_region, x0.shape[-2:], factor)
                lower = _lower_half(region, rows.start, x0.shape[-2] * factor)
                real = _lower_half(batch.pixels, rows.start, x0.shape[-2] * factor)
                terms["lpips"] = self.lpips(
                    rearrange(lower, "b c f h w -> (b f) c h w"), rearrange(real, "b c f h w -> (b f) c h w")
                )
            if "trepa" in self.weights:
                terms["trepa"] = self.trepa(region, batch.pixels.to(region.dtype))
        terms["total"] = sum(self.weights[name] * value for name, value in terms.items())
        return terms


def _lower_half(region: torch.Tensor, first_row: int, face_height: int) -> torch.Tensor:
    """The rows of a decoded region (B, 3, F, H', W') starting at face row `first_row` that lie in the
    lower half of the face (LatentSync's LPIPS view)."""
    return region[..., max(face_height // 2 - first_row, 0) :, :]
