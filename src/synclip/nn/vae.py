"""The latent space's networks: a diffusers AutoencoderKL built for training (or TAEF2, `synclip.nn.taef2`),
and the latent scaling every stage reads off the VAE's config.
Shapes: images (B, 3, H, W) in [−1, 1] ↔ latents (B, C, H/f, W/f), f = `downsampling(vae)`.
"""

from __future__ import annotations

import torch
from diffusers import AutoencoderKL

from synclip.config import VaeParams

INITIAL_LOGVAR = -10.0  # the posterior log-variance a new VAE starts from (see build_vae)


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

    With diffusers' default init the posterior std starts near 1, well above the spread of the
    encoder's means, and with a small KL weight it stays large in a CPU-sized run, so the latents the
    UNet is trained on would carry that noise. Starting the log-variance at INITIAL_LOGVAR (std 0.007)
    keeps the posterior nearly deterministic throughout; reconstruction quality after equal steps was
    the same both ways (measurements: docs/experiments/2026-11-24-vae-recipe.md).
    """
    model = AutoencoderKL(**vae_config(params, resolution))
    logvar = slice(params.latent_channels, 2 * params.latent_channels)  # quant_conv: (mean, logvar)
    with torch.no_grad():
        model.quant_conv.weight[logvar] = 0
        model.quant_conv.bias[logvar] = INITIAL_LOGVAR
    return model


def downsampling(vae: torch.nn.Module) -> int:
    """f: pixels per latent cell along each side, 2^(levels − 1)."""
    return 2 ** (len(vae.config.block_out_channels) - 1)


def latent_affine(vae: torch.nn.Module, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(shift, scale) shaped to broadcast over latents `like` (B, C, ...): the UNet's latent space is
    (z − shift) · scale.

    Read from the VAE's own config, whichever VAE it is: per channel when it has `latents_mean` /
    `latents_std` (TAEF2, fitted on training faces: shift = mean, scale = 1 / std), else the scalars
    `shift_factor` / `scaling_factor` (the tiny profile's trained AutoencoderKL, sd-vae-ft-mse).
    """
    config = vae.config
    mean, std = getattr(config, "latents_mean", None), getattr(config, "latents_std", None)
    if mean is not None and std is not None:
        cells = (1,) * (like.dim() - 2)
        shift = torch.tensor(mean, dtype=like.dtype, device=like.device).view(1, -1, *cells)
        scale = 1 / torch.tensor(std, dtype=like.dtype, device=like.device).view(1, -1, *cells)
        return shift, scale
    shift = getattr(config, "shift_factor", None) or 0.0
    scale = getattr(config, "scaling_factor", None) or 1.0  # a TAEF2 not fitted yet: the raw latents
    return (
        torch.tensor(shift, dtype=like.dtype, device=like.device),
        torch.tensor(scale, dtype=like.dtype, device=like.device),
    )


def scale_latents(vae: torch.nn.Module, latents: torch.Tensor) -> torch.Tensor:
    """The VAE's latents (B, C, ...) (a posterior mean) → the UNet's latent space: (z − shift) · scale."""
    shift, scale = latent_affine(vae, latents)
    return (latents - shift) * scale


def scale_spread(vae: torch.nn.Module, std: torch.Tensor) -> torch.Tensor:
    """A posterior std (B, C, ...) in the UNet's latent space: std · scale."""
    return std * latent_affine(vae, std)[1]


def unscale_latents(vae: torch.nn.Module, latents: torch.Tensor) -> torch.Tensor:
    """The UNet's latent space (B, C, ...) → what the VAE decodes: z / scale + shift."""
    shift, scale = latent_affine(vae, latents)
    return latents / scale + shift
