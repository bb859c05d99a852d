"""TAEF2, the tiny distilled autoencoder of the FLUX.2 VAE (madebyollin/taesd at 5cccb12, MIT): the tiny
profile's frozen, pretrained real-image latent space. Written from the published geometry; module
names follow the published state dicts, so they load without renaming.

Shapes: images (B, 3, H, W) in [−1, 1] ↔ latents (B, 32, H/8, W/8). TAEF2 itself works on [0, 1]
images; `encode` and `decode` convert, and answer in diffusers' AutoencoderKL shapes (a posterior
that is a point mass, a decoder output), so every stage treats both VAEs alike.
"""

from __future__ import annotations

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.autoencoders.vae import DecoderOutput, DiagonalGaussianDistribution
from diffusers.models.modeling_outputs import AutoencoderKLOutput
from diffusers.models.modeling_utils import ModelMixin
from torch import nn

LATENT_CLAMP = 3.0  # the decoder first squashes latents into (−3, 3): tanh(z / 3) · 3


def conv(n_in: int, n_out: int, **kwargs) -> nn.Conv2d:
    return nn.Conv2d(n_in, n_out, 3, padding=1, **kwargs)


class Clamp(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(x / LATENT_CLAMP) * LATENT_CLAMP


class Block(nn.Module):
    """conv-ReLU-conv-ReLU-conv (3×3) plus the input, then ReLU. `pooled` adds TAEF2's 1/8-level branch
    to the input first: 1×1 conv to 4C, GroupNorm(4) (its statistics span the whole image), ReLU, 1×1
    conv back to C."""

    def __init__(self, channels: int, pooled: bool) -> None:
        super().__init__()
        self.conv = nn.Sequential(
            conv(channels, channels), nn.ReLU(), conv(channels, channels), nn.ReLU(), conv(channels, channels)
        )
        self.skip = nn.Identity()
        self.fuse = nn.ReLU()
        self.pool = None
        if pooled:
            wide = 4 * channels
            self.pool = nn.Sequential(
                nn.Conv2d(channels, wide, 1, bias=False),
                nn.GroupNorm(4, wide),
                nn.ReLU(),
                nn.Conv2d(wide, channels, 1, bias=False),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.pool is not None:
            x = x + self.pool(x)
        return self.fuse(self.conv(x) + self.skip(x))


def encoder(channels: int, latent_channels: int, halvings: int, pooled: bool) -> nn.Sequential:
    """(B, 3, H, W) in [0, 1] → (B, latent_channels, H/2^halvings, W/2^halvings)."""
    layers: list[nn.Module] = [conv(3, channels), Block(channels, False)]
    for level in range(halvings):
        deepest = pooled and level == halvings - 1
        layers += [conv(channels, channels, stride=2, bias=False)]
        layers += [Block(channels, deepest) for _ in range(3)]
    return nn.Sequential(*layers, conv(channels, latent_channels))


def decoder(channels: int, latent_channels: int, halvings: int, pooled: bool) -> nn.Sequential:
    """(B, latent_channels, h, w) → (B, 3, h·2^halvings, w·2^halvings), about [0, 1] (not clamped)."""
    layers: list[nn.Module] = [Clamp(), conv(latent_channels, channels), nn.ReLU()]
    for level in range(halvings):
        deepest = pooled and level == 0
        layers += [Block(channels, deepest) for _ in range(3)]
        layers += [nn.Upsample(scale_factor=2), conv(channels, channels, bias=False)]
    return nn.Sequential(*layers, Block(channels, False), conv(channels, 3))


class Taef2(ModelMixin, ConfigMixin):
    """The TAEF2 encoder and decoder, with the latent scaling the UNet sees.

    `block_out_channels` has one entry per level (all equal: TAEF2 keeps 64 channels throughout), so
    `synclip.nn.vae.downsampling` reads 2^(levels − 1) off it as off an AutoencoderKL.
    `latents_mean` / `latents_std` (one per latent channel, fitted on training faces by the latent-space
    stage) map latents to the UNet's space, (z − mean) / std; None before they are fitted.
    """

    config_name = "config.json"

    @register_to_config
    def __init__(
        self,
        latent_channels: int = 32,
        block_out_channels: tuple[int, ...] = (64, 64, 64, 64),
        pooled_deepest_blocks: bool = True,
        latents_mean: tuple[float, ...] | None = None,
        latents_std: tuple[float, ...] | None = None,
    ) -> None:
        super().__init__()
        channels = block_out_channels[0]
        if any(c != channels for c in block_out_channels) or len(block_out_channels) < 2:
            raise ValueError(f"block_out_channels must be 2+ equal widths, got {list(block_out_channels)}")
        for name, values in (("latents_mean", latents_mean), ("latents_std", latents_std)):
            if values is not None and len(values) != latent_channels:
                raise ValueError(f"{name} has {len(values)} values for {latent_channels} latent channels")
        if latents_std is not None and min(latents_std) <= 0:
            raise ValueError(f"latents_std must be positive, got min {min(latents_std)}")
        halvings = len(block_out_channels) - 1
        self.encoder = encoder(channels, latent_channels, halvings, pooled_deepest_blocks)
        self.decoder = decoder(channels, latent_channels, halvings, pooled_deepest_blocks)

    def encode(self, images: torch.Tensor) -> AutoencoderKLOutput:
        """(B, 3, H, W) in [−1, 1] → a posterior whose mean, mode and samples are the latents (B, C, h, w)."""
        latents = self.encoder((images + 1) / 2)
        moments = torch.cat([latents, torch.zeros_like(latents)], dim=1)  # (mean, log-variance)
        return AutoencoderKLOutput(latent_dist=DiagonalGaussianDistribution(moments, deterministic=True))

    def decode(self, latents: torch.Tensor) -> DecoderOutput:
        """(B, C, h, w) → images (B, 3, H, W), about [−1, 1]."""
        return DecoderOutput(sample=self.decoder(latents) * 2 - 1)

    def decode_cells(self, latents: torch.Tensor, rows: slice, cols: slice, margin: int = 2) -> torch.Tensor:
        """(B, C, h, w) → the pixels of latent cells [rows, cols]: (B, 3, 8·len(rows), 8·len(cols)), about
        [−1, 1], at a fraction of a whole decode's cost (training's pixel losses read only the mouth).

        Decoding a crop of the latents would change the 1/8 level's GroupNorm statistics (11 grey levels
        off on faces); so that level runs on the whole latent and the three upsampling levels, where the
        cost is, on its output cropped with `margin` cells to spare. Margin 2: 1.2 grey levels from the
        whole decode on average (3: 0.4) for the SyncNet's mouth crop, docs/experiments/2026-12-05-taef2.md.
        """
        halvings = len(self.config.block_out_channels) - 1
        deep = 3 + 3  # Clamp, conv, ReLU, then the three (pooled) blocks of the 1/8 level
        h, w = latents.shape[-2:]
        top, left = max(rows.start - margin, 0), max(cols.start - margin, 0)
        bottom, right = min(rows.stop + margin, h), min(cols.stop + margin, w)
        features = self.decoder[:deep](latents)[..., top:bottom, left:right]
        pixels = self.decoder[deep:](features) * 2 - 1
        f = 2**halvings
        return pixels[
            ...,
            (rows.start - top) * f : (rows.stop - top) * f,
            (cols.start - left) * f : (cols.stop - left) * f,
        ]

    def forward(self, images: torch.Tensor) -> DecoderOutput:
        return self.decode(self.encode(images).latent_dist.mode())
