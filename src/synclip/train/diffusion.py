"""The UNet's training objective (LatentSync §4.1): DDPM noising on LatentSync's schedule, PYoCo mixed noise,
the one-step x̂0 and the named loss terms, apart from the network and the loop."""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Mapping

import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, DDPMScheduler
from einops import rearrange
from torch import nn

from synclip.constants import NOISE_SCHEDULE
from synclip.data.unet_windows import UNetBatch, region_pixels, region_slices
from synclip.nn.latent_norm import LatentNorm, check_latent_norm
from synclip.nn.syncnet import StableSyncNet
from synclip.nn.taef2 import Taef2
from synclip.nn.unet import UNet3DConditionModel
from synclip.nn.vae import downsampling, unscale_latents
from synclip.runtime import frozen_autocast
from synclip.train.losses import sync_loss

log = logging.getLogger(__name__)

TERMS = ("recon", "sync", "lpips", "trepa")
PIXEL_TERMS = ("sync", "lpips", "trepa")


def noise_scheduler() -> DDPMScheduler:
    """DDPM's forward process on LatentSync's betas (the DDIM sampler shares them)."""
    return DDPMScheduler(**NOISE_SCHEDULE)


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


PREDICTION_TYPES = ("epsilon", "v_prediction")  # what a UNet outputs: `unet.prediction_type`


def check_prediction_type(prediction_type: str) -> None:
    if prediction_type not in PREDICTION_TYPES:
        raise ValueError(f"unknown prediction_type {prediction_type!r}; expected one of {PREDICTION_TYPES}")


def velocity(
    scheduler: DDPMScheduler, latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor
) -> torch.Tensor:
    """The v-prediction target v = sqrt(ᾱ_t)·ε − sqrt(1 − ᾱ_t)·z_0 (Salimans & Ho 2022, eq. 9)."""
    alpha_bar = _alpha_bar(scheduler, timesteps, latents)
    return (alpha_bar.sqrt() * noise - (1 - alpha_bar).sqrt() * latents).to(noise.dtype)


def predict_x0(
    scheduler: DDPMScheduler,
    noisy: torch.Tensor,
    output: torch.Tensor,
    timesteps: torch.Tensor,
    prediction_type: str = "epsilon",
) -> torch.Tensor:
    """One-step x̂0 from the UNet's output, at every t as LatentSync: (z_t − sqrt(1 − ᾱ_t)·ε̂) / sqrt(ᾱ_t)
    (DDIM eq. 12) for ε, sqrt(ᾱ_t)·z_t − sqrt(1 − ᾱ_t)·v̂ for v."""
    check_prediction_type(prediction_type)
    alpha_bar = _alpha_bar(scheduler, timesteps, noisy)
    if prediction_type == "v_prediction":
        return (alpha_bar.sqrt() * noisy - (1 - alpha_bar).sqrt() * output).to(output.dtype)
    return ((noisy - (1 - alpha_bar).sqrt() * output) / alpha_bar.sqrt()).to(output.dtype)


@dataclasses.dataclass(frozen=True)
class LowerFaceJitter:
    """One random per-channel gain and shift per window on the latent cells the mask generates, applied
    alike to the target's and the reference's latents (`lower_face_jitter`, synclip's addition).

    SynthTalk has 40 training identities: the UNet can learn each one's lips and chin and recall them from
    the upper face, and on a face it never saw it then draws the nearest one's. With the lower face's look
    changed at random, but the same in target and reference, only the reference tells it.
    """

    gain: torch.Tensor  # (B, C, 1, 1, 1)
    shift: torch.Tensor  # (B, C, 1, 1, 1)

    @classmethod
    def draw(cls, windows: int, channels: int, gain_std: float, shift_std: float) -> LowerFaceJitter:
        """log gain ~ N(0, gain_std²), shift ~ N(0, shift_std²), from torch's global RNG."""
        gain = torch.exp(gain_std * torch.randn(windows, channels, 1, 1, 1))
        return cls(gain, shift_std * torch.randn(windows, channels, 1, 1, 1))

    def apply(self, latents: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        """(B, C, F, h, w) latents, `keep` (B, 1, F, h, w) 1 on the kept cells → jittered on the others."""
        gain, shift = self.gain.to(latents.device), self.shift.to(latents.device)
        return (latents + (1 - keep) * ((gain - 1) * latents + shift)).to(latents.dtype)


class DiffusionObjective:
    """LatentSync's loss: weighted named terms on one batch, given the noise and timesteps.

    The loss is a dict of named terms: `recon` (the MSE of the UNet's output against its target, ε or v by
    `prediction_type`, optionally weighted toward the mouth) and, on
    the decoded x̂0, `sync` (frozen SyncNet), `lpips` (lower half of the face) and `trepa` (video
    features). A term whose weight is 0 or whose network is missing is not computed; `disabled` says
    why. Shapes: latents (B, 4, F, h, w), pixels (B, 3, F, H, W) in [−1, 1], audio tokens (B, F, S, D),
    SyncNet mel (B, 1, 80, W).

    `vae`, `syncnet`, `lpips`, `trepa` are frozen; gradients flow through the VAE decoder to the
    UNet. `sync_crop`/`sync_size` are the SyncNet's view (fractions of the face, (H, W)).
    `recon_mouth_weight` > 0 weighs the ε MSE toward the cells of the `recon_mouth` box (`vae.mouth`;
    synclip's addition: with plain MSE the tiny UNet took far more steps to start using the audio;
    docs/experiments/2026-12-01-unet-stage1-recipe.md). `latent_norm` "reference" standardises every
    latent of a window by its reference's statistics (`synclip.nn.latent_norm`) before noising, and
    maps x̂0 back before decoding; it must be the UNet's `latent_norm`, as inference applies that.
    """

    def __init__(
        self,
        weights: Mapping[str, float],
        *,
        recon_mouth: tuple[float, float, float, float] = (0.0, 1.0, 0.0, 1.0),
        recon_mouth_weight: float = 0.0,
        prediction_type: str = "epsilon",
        latent_norm: str = "none",
        pixel_region: tuple[float, float, float, float] = (0.0, 1.0, 0.0, 1.0),
        vae: AutoencoderKL | Taef2 | None = None,
        vae_precision: str = "fp32",
        syncnet: StableSyncNet | None = None,
        lpips: nn.Module | None = None,
        trepa: nn.Module | None = None,
        unavailable: Mapping[str, str] | None = None,
    ) -> None:
        unknown = sorted(set(weights) - set(TERMS))
        if unknown:
            raise ValueError(f"unknown loss terms {unknown}; known: {TERMS}")
        self.scheduler = noise_scheduler()
        check_prediction_type(prediction_type)
        self.recon_mouth, self.recon_mouth_weight = recon_mouth, recon_mouth_weight
        self.prediction_type = prediction_type
        check_latent_norm(latent_norm)
        self.latent_norm = latent_norm
        self.pixel_region, self.vae_precision = pixel_region, vae_precision
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
        """(B, C, F, h, w) scaled latents → (B, 3, F, H', W') decoded `pixel_region`, in `vae_precision`
        (bf16 autocast on a CPU with native bf16; the gradients reach the UNet in fp32)."""
        assert self.vae is not None
        (rows, cols), (keep_rows, keep_cols) = region_slices(self.pixel_region, latents.shape[-2:])
        factor = downsampling(self.vae)
        flat = unscale_latents(self.vae, rearrange(latents, "b c f h w -> (b f) c h w"))
        with frozen_autocast(flat.device, self.vae_precision):
            if isinstance(self.vae, Taef2):  # its own region decode: the 1/8 level whole, the rest cropped
                cells = (
                    slice(rows.start + keep_rows.start, rows.start + keep_rows.stop),
                    slice(cols.start + keep_cols.start, cols.start + keep_cols.stop),
                )
                frames = self.vae.decode_cells(flat, *cells)
            else:
                frames = self.vae.decode(flat[..., rows, cols]).sample
                frames = frames[
                    :,
                    :,
                    keep_rows.start * factor : keep_rows.stop * factor,
                    keep_cols.start * factor : keep_cols.stop * factor,
                ]
        return rearrange(frames.float(), "(b f) c h w -> b c f h w", f=latents.shape[2])

    def sync_view(self, region: torch.Tensor, latent_size: tuple[int, int]) -> torch.Tensor:
        """(B, 3, F, H', W') decoded region → (B, 3·F, H_s, W_s) the SyncNet's crop, frames on channels."""
        assert self.syncnet is not None
        factor = downsampling(self.vae)
        size = (latent_size[0] * factor, latent_size[1] * factor)  # the full face, pixels
        rows, cols = region_pixels(self.pixel_region, latent_size, factor)
        top, bottom, left, right = self.syncnet.config.crop  # `crop_resize`'s rounding, in region coordinates
        crop = region[
            ...,
            round(top * size[0]) - rows.start : round(bottom * size[0]) - rows.start,
            round(left * size[1]) - cols.start : round(right * size[1]) - cols.start,
        ]
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
        jitter: LowerFaceJitter | None = None,
    ) -> dict[str, torch.Tensor]:
        """{"recon", enabled pixel terms…, "total"}: each a scalar, total = Σ weight · term.

        `recon_only` skips the pixel terms (and leaves "total" out). `jitter` (training only) changes the
        target's and the reference's generated cells, after the standardisation; the pixel terms, whose
        targets are the real pixels, refuse it.
        """
        if jitter is not None and any(t in self.weights for t in PIXEL_TERMS) and not recon_only:
            raise ValueError(
                "lower-face jitter with pixel loss terms: their targets are the unjittered pixels"
            )
        norm = None
        if self.latent_norm == "reference":
            norm = LatentNorm.of_reference(batch.reference_latents, batch.mask)
            batch = dataclasses.replace(
                batch,
                latents=norm.apply(batch.latents),
                masked_latents=norm.apply(batch.masked_latents),
                reference_latents=norm.apply(batch.reference_latents),
            )
        if jitter is not None:
            batch = dataclasses.replace(
                batch,
                latents=jitter.apply(batch.latents, batch.mask),
                reference_latents=jitter.apply(batch.reference_latents, batch.mask),
            )
        noisy = add_noise(self.scheduler, batch.latents, noise, timesteps)
        output = unet(batch.unet_input(noisy), timesteps, batch.audio).float()  # (B, C, F, h, w)
        prediction = self.prediction_type
        target = (
            noise if prediction == "epsilon" else velocity(self.scheduler, batch.latents, noise, timesteps)
        )
        weights = self.recon_weights(tuple(output.shape[-2:]), output.device)
        error = (output - target.float()) ** 2
        terms = {"recon": error.mean() if weights is None else (error * weights).mean()}
        if recon_only:
            return terms
        if any(t in self.weights for t in PIXEL_TERMS):
            x0 = predict_x0(self.scheduler, noisy.float(), output, timesteps, prediction)
            x0 = norm.invert(x0) if norm is not None else x0
            region = self.decode_region(x0).float()  # (B, 3, F, H', W')
            if "sync" in self.weights:
                visual = self.syncnet.embed_visual(self.sync_view(region, x0.shape[-2:]))
                audio = self.syncnet.embed_audio(batch.mel)
                terms["sync"] = sync_loss(
                    visual.float(), audio.float(), torch.ones(len(visual), device=visual.device)
                )
            if "lpips" in self.weights:
                factor = downsampling(self.vae)
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
