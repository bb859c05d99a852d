"""The latent space's network: a diffusers AutoencoderKL, built for the tiny profile, and its latent scaling.
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


def downsampling(vae: AutoencoderKL) -> int:
    """f: pixels per latent cell along each side, 2^(levels − 1)."""
    return 2 ** (len(vae.config.block_out_channels) - 1)


def scale_latents(vae: AutoencoderKL, latents: torch.Tensor) -> torch.Tensor:
    """The VAE's latents (a posterior mean) → the UNet's latent space: (z − shift) · scale.

    Every stage reads the latent scaling from the VAE's own config (`scaling_factor`, `shift_factor`),
    whichever VAE it is (the tiny profile's trained one, or sd-vae-ft-mse).
    """
    return (latents - (vae.config.shift_factor or 0.0)) * vae.config.scaling_factor


def unscale_latents(vae: AutoencoderKL, latents: torch.Tensor) -> torch.Tensor:
    """The UNet's latent space → what the VAE decodes: z / scale + shift."""
    return latents / vae.config.scaling_factor + (vae.config.shift_factor or 0.0)
