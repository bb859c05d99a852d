"""StableSyncNet: the lip-sync expert (LatentSync's `stable_syncnet.py` geometry, written anew).
Shapes: visual (B, 3·F, H, W), audio mel (B, 1, M, T); both towers end at (B, E, 1, 1) (see StableSyncNet).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from diffusers.models.attention import FeedForward
from diffusers.models.attention_processor import Attention
from einops import rearrange
from torch import nn

from synclip.config import SyncNetParams, TowerParams, from_dict
from synclip.constants import SYNCNET_N_MELS, syncnet_mel_window

Factor = int | tuple[int, int]


@dataclass(frozen=True)
class TowerConfig(TowerParams):
    in_channels: int = field(kw_only=True)
    dropout: float = 0.0


@dataclass(frozen=True)
class SyncNetConfig:
    visual: TowerConfig
    audio: TowerConfig
    num_frames: int = 16  # frames per window; visual in_channels = 3 · num_frames
    image_size: tuple[int, int] = (128, 256)  # (H, W) of the visual input
    crop: tuple[float, float, float, float] = (
        0.5,
        1.0,
        0.0,
        1.0,
    )  # region of the aligned face: the lower half
    mel_bins: int = 80
    mel_frames: int = 52  # mel frames per window (constants.syncnet_mel_window(num_frames))
    # synclip option (not in LatentSync): feed the visual tower each frame minus the window's mean
    # frame, so it sees how the mouth moves rather than who is speaking
    subtract_window_mean: bool = False
    extra: dict = field(default_factory=dict)  # free-form notes kept with the weights

    @staticmethod
    def from_dict(data: dict) -> SyncNetConfig:
        """From a stored config (JSON values); unknown keys and wrong types are errors."""
        return from_dict(SyncNetConfig, data, source="SyncNet config")


def syncnet_config(params: SyncNetParams) -> SyncNetConfig:
    """The network of params.yaml's `syncnet` section."""
    return SyncNetConfig(
        visual=TowerConfig(**dataclasses.asdict(params.visual), in_channels=3 * params.num_frames),
        audio=TowerConfig(**dataclasses.asdict(params.audio), in_channels=1),
        num_frames=params.num_frames,
        image_size=params.image_size,
        crop=params.crop,
        mel_bins=SYNCNET_N_MELS,
        mel_frames=syncnet_mel_window(params.num_frames),
        subtract_window_mean=params.subtract_window_mean,
    )


def released_config() -> SyncNetConfig:
    """LatentSync's `syncnet_16_pixel_attn.yaml` (the `stable_syncnet.pt` of 1.5/1.6)."""
    return SyncNetConfig(
        visual=TowerConfig(
            in_channels=48,
            block_out_channels=(64, 128, 256, 256, 512, 1024, 2048, 2048),
            downsample_factors=((1, 2), 2, 2, 2, 2, 2, 2, 2),
            attn_blocks=(0, 0, 0, 0, 1, 1, 0, 0),
        ),
        audio=TowerConfig(
            in_channels=1,
            block_out_channels=(32, 64, 128, 256, 512, 1024, 2048),
            downsample_factors=((2, 1), 2, 2, 1, 2, 2, (2, 3)),
            attn_blocks=(0, 0, 0, 1, 1, 0, 0),
        ),
        num_frames=16,
        image_size=(128, 256),
        mel_bins=80,
        mel_frames=52,
    )


class ResnetBlock2D(nn.Module):
    """GN → SiLU → conv3 → GN → SiLU → conv3 (+ 1×1 shortcut), then an optional strided conv."""

    def __init__(
        self, in_channels: int, out_channels: int, downsample: Factor, groups: int, dropout: float
    ) -> None:
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, in_channels, eps=1e-6)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.norm2 = nn.GroupNorm(groups, out_channels, eps=1e-6)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.conv_shortcut = nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else None
        self.downsample_conv = None
        if downsample != 1:
            self.downsample_conv = nn.Conv2d(out_channels, out_channels, 3, stride=downsample)
        # F.pad order is (left, right, top, bottom); a factor of 1 along an axis pads both sides
        factor = downsample if isinstance(downsample, tuple) else (downsample, downsample)
        self.pad = (1 if factor[1] == 1 else 0, 1, 1 if factor[0] == 1 else 0, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        h = h + (self.conv_shortcut(x) if self.conv_shortcut is not None else x)
        if self.downsample_conv is not None:
            h = self.downsample_conv(F.pad(h, self.pad))
        return h


class AttentionBlock2D(nn.Module):
    """GN → 1×1 conv → [LN → 8-head self-attention] → [LN → GEGLU FF] → 1×1 conv, residual."""

    def __init__(self, channels: int, groups: int, dropout: float) -> None:
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, channels, eps=1e-6)
        self.conv_in = nn.Conv2d(channels, channels, 1)
        self.norm2 = nn.LayerNorm(channels)
        self.attn = Attention(query_dim=channels, heads=8, dim_head=channels // 8, dropout=dropout, bias=True)
        self.norm3 = nn.LayerNorm(channels)
        self.ff = FeedForward(channels, dropout=dropout, activation_fn="geglu")
        self.conv_out = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        height, width = x.shape[-2:]
        h = self.conv_in(self.norm1(x))
        h = rearrange(h, "b c h w -> b (h w) c")
        h = self.attn(self.norm2(h)) + h
        h = self.ff(self.norm3(h)) + h
        h = rearrange(h, "b (h w) c -> b c h w", h=height, w=width)
        return self.conv_out(h) + x


class DownEncoder2D(nn.Module):
    """One tower: conv_in, the down blocks (attention interleaved), GroupNorm + ReLU."""

    def __init__(self, config: TowerConfig) -> None:
        super().__init__()
        channels = config.block_out_channels
        if not len(channels) == len(config.downsample_factors) == len(config.attn_blocks):
            raise ValueError(
                "block_out_channels, downsample_factors and attn_blocks need one entry per stage"
            )
        self.conv_in = nn.Conv2d(config.in_channels, channels[0], 3, padding=1)
        self.down_blocks = nn.ModuleList()
        previous = channels[0]
        for out, factor, attention in zip(
            channels, config.downsample_factors, config.attn_blocks, strict=True
        ):
            self.down_blocks.append(
                ResnetBlock2D(previous, out, factor, config.norm_num_groups, config.dropout)
            )
            if attention:
                self.down_blocks.append(AttentionBlock2D(out, config.norm_num_groups, config.dropout))
            previous = out
        self.norm_out = nn.GroupNorm(config.norm_num_groups, channels[-1], eps=1e-6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(x)
        for block in self.down_blocks:
            h = block(h)
        return F.relu(self.norm_out(h))


# Two towers of SD-VAE-encoder-style blocks (GroupNorm/SiLU ResNet blocks, each followed by a
# strided conv with asymmetric zero padding; optional self-attention blocks after chosen stages),
# a GroupNorm + ReLU head and L2 normalisation: embeddings are non-negative unit vectors, so their
# cosine lies in [0, 1] and feeds BCE directly. Module names follow the reference, so a published
# `stable_syncnet.pt` state dict loads key for key (see `synclip.artifacts`). The losses that use it
# are in `synclip.train.losses`.
# Shapes: visual input (B, 3·F, H, W) — F frames of a region of the aligned face (LatentSync: the
# lower half) stacked on channels; audio input (B, 1, M, T) — the SyncNet mel window; both towers end
# at (B, E, 1, 1).
class StableSyncNet(nn.Module):
    def __init__(self, config: SyncNetConfig) -> None:
        super().__init__()
        if config.visual.in_channels != 3 * config.num_frames:
            raise ValueError(
                f"visual in_channels {config.visual.in_channels} != 3 · num_frames {config.num_frames}"
            )
        self.config = config
        self.audio_encoder = DownEncoder2D(config.audio)
        self.visual_encoder = DownEncoder2D(config.visual)

    def embed_visual(self, frames: torch.Tensor) -> torch.Tensor:
        """(B, 3·F, H, W) in [-1, 1] → (B, E) unit, non-negative."""
        if self.config.subtract_window_mean:
            stacked = rearrange(frames, "b (f c) h w -> b f c h w", c=3)
            frames = rearrange(stacked - stacked.mean(dim=1, keepdim=True), "b f c h w -> b (f c) h w")
        embeds = self.visual_encoder(frames)
        assert embeds.shape[-2:] == (1, 1), f"visual tower ends at {tuple(embeds.shape[-2:])}, not 1×1"
        return F.normalize(embeds.flatten(1), dim=1)

    def embed_audio(self, mel: torch.Tensor) -> torch.Tensor:
        """(B, 1, M, T) → (B, E) unit, non-negative."""
        embeds = self.audio_encoder(mel)
        assert embeds.shape[-2:] == (1, 1), f"audio tower ends at {tuple(embeds.shape[-2:])}, not 1×1"
        return F.normalize(embeds.flatten(1), dim=1)

    def forward(self, frames: torch.Tensor, mel: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.embed_visual(frames), self.embed_audio(mel)
