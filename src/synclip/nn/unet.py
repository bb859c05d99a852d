"""The audio-conditioned denoising UNet (LatentSync's `UNet3DConditionModel` geometry, written anew).
Shapes: sample (B, 13, F, h, w), audio (B, F, S, D) → ε̂ (B, 4, F, h, w) (see UNet3DConditionModel).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from diffusers.models.attention import FeedForward
from diffusers.models.attention_processor import Attention
from diffusers.models.downsampling import Downsample2D
from diffusers.models.embeddings import SinusoidalPositionalEmbedding, TimestepEmbedding, Timesteps
from diffusers.models.transformers.transformer_2d import Transformer2DModel
from diffusers.models.upsampling import Upsample2D
from einops import rearrange, repeat
from torch import nn

from synclip.config import ConfigError, UNetParams, UNetStageParams, from_dict
from synclip.config.params import UNET_DOWN_BLOCKS, UNET_UP_BLOCKS

log = logging.getLogger(__name__)

KIND = "unet"
CROSS_ATTN_DOWN, DOWN = UNET_DOWN_BLOCKS
CROSS_ATTN_UP, UP = UNET_UP_BLOCKS
# `load_unet_state` pattern for every temporal-module key: stage 2 starting from a stage-1 UNet
MOTION_MODULES = "*.motion_modules.*"


@dataclass(frozen=True)
class UNetConfig(UNetParams):
    """The UNet's geometry (`UNetParams`, what params.yaml sets) and what the run decides; the
    defaults are LatentSync's (`configs/unet/stage1*.yaml`)."""

    in_channels: int = 13
    out_channels: int = 4
    cross_attention_dim: int = 384  # D, the audio width (Whisper tiny)
    norm_eps: float = 1e-5  # ResNet and output GroupNorms; transformer GroupNorms use 1e-6
    motion_modules: bool = False  # temporal self-attention after every down/up resnet (stage 2)
    motion_max_frames: int = 24  # length of the temporal position code: the most frames F

    def __post_init__(self) -> None:
        self.validate()

    def validate(self, key: str = "UNet config") -> None:
        super().validate(key)
        if self.motion_module_decoder_only and not self.motion_modules:
            raise ConfigError(f"{key}: motion_module_decoder_only needs motion_modules")

    @staticmethod
    def from_dict(data: Mapping[str, Any]) -> UNetConfig:
        """From JSON/YAML values (lists for tuples); unknown keys and wrong types are errors."""
        return from_dict(UNetConfig, data, source="UNet config")


def unet_config(
    params: UNetParams, stage: UNetStageParams, audio_width: int, latent_channels: int = 4
) -> UNetConfig:
    """The UNet geometry of `params` with the stage's motion modules, the audio encoder's width D and
    the VAE's latent channels C: 3C + 1 in (noisy, mask, masked, reference), C out."""
    values = dataclasses.asdict(params)
    values["motion_module_decoder_only"] = params.motion_module_decoder_only and stage.motion_modules
    return UNetConfig(
        **values,
        in_channels=3 * latent_channels + 1,
        out_channels=latent_channels,
        cross_attention_dim=audio_width,
        motion_modules=stage.motion_modules,
    )


def full_config(motion_modules: bool = True) -> UNetConfig:
    """LatentSync's UNet: stage 1 / v1.0 without, stage 2 / v1.5–1.6 with the 20 motion modules."""
    return UNetConfig(motion_modules=motion_modules)


def tiny_config(motion_modules: bool = False) -> UNetConfig:
    """Three levels (32, 64, 128), 8 norm groups, 4 heads: 4.9 M parameters (7.3 M with motion modules)."""
    return UNetConfig(
        block_out_channels=(32, 64, 128),
        down_block_types=(CROSS_ATTN_DOWN, CROSS_ATTN_DOWN, DOWN),
        up_block_types=(UP, CROSS_ATTN_UP, CROSS_ATTN_UP),
        num_attention_heads=4,
        norm_num_groups=8,
        motion_modules=motion_modules,
        motion_num_attention_heads=4,
    )


# --- blocks --------------------------------------------------------------------------------------


class FrameGroupNorm(nn.GroupNorm):
    """GroupNorm of (B·F, C, h, w); `joint` pools each clip's statistics over its F frames.

    The reference applies a plain GroupNorm to (B, C, F, h, w), i.e. statistics over
    C/groups × F × h × w: identical to normalising (B, C, F·h, w).
    """

    def __init__(self, groups: int, channels: int, eps: float, joint: bool) -> None:
        super().__init__(groups, channels, eps=eps)
        self.joint = joint

    def forward(self, x: torch.Tensor, frames: int) -> torch.Tensor:
        if not self.joint:
            return super().forward(x)
        clips = rearrange(x, "(b f) c h w -> b c (f h) w", f=frames)
        return rearrange(super().forward(clips), "b c (f h) w -> (b f) c h w", f=frames)


class ResnetBlock(nn.Module):
    """GN → SiLU → conv3 (+ time) → GN → SiLU → conv3, plus a 1×1 shortcut when C changes.

    diffusers' `ResnetBlock2D` with the same parameter names, but norms that may span frames.
    """

    def __init__(self, in_channels: int, out_channels: int, time_channels: int, config: UNetConfig) -> None:
        super().__init__()
        groups, eps, joint = config.norm_num_groups, config.norm_eps, config.joint_frame_groupnorm
        self.norm1 = FrameGroupNorm(groups, in_channels, eps, joint)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.time_emb_proj = nn.Linear(time_channels, out_channels)
        self.norm2 = FrameGroupNorm(groups, out_channels, eps, joint)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.conv_shortcut = nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else None

    def forward(self, x: torch.Tensor, temb: torch.Tensor, frames: int) -> torch.Tensor:
        """x (B·F, C, h, w), temb (B·F, E) → (B·F, C', h, w)."""
        h = self.conv1(F.silu(self.norm1(x, frames)))
        h = h + self.time_emb_proj(F.silu(temb))[:, :, None, None]
        h = self.conv2(F.silu(self.norm2(h, frames)))
        return h + (self.conv_shortcut(x) if self.conv_shortcut is not None else x)


class TemporalSelfAttention(Attention):
    """Self-attention along the frame axis with the frame code added to its input (AnimateDiff's
    `VersatileAttention` in "Temporal" mode); q/k/v without bias, output projection with bias."""

    def __init__(self, channels: int, heads: int, max_frames: int) -> None:
        super().__init__(query_dim=channels, heads=heads, dim_head=channels // heads, bias=False)
        # `pe` (1, max_frames, C), a persistent buffer: the reference checkpoints carry it
        self.pos_encoder = SinusoidalPositionalEmbedding(channels, max_seq_length=max_frames)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (B·h·w, F, C) → (B·h·w, F, C)."""
        return super().forward(self.pos_encoder(x))


class TemporalTransformerBlock(nn.Module):
    """[LN → temporal self-attention] ×2 → [LN → GEGLU FF], each residual (AnimateDiff v1)."""

    def __init__(self, channels: int, heads: int, max_frames: int) -> None:
        super().__init__()
        self.attention_blocks = nn.ModuleList(
            TemporalSelfAttention(channels, heads, max_frames) for _ in range(2)
        )
        self.norms = nn.ModuleList(nn.LayerNorm(channels) for _ in range(2))
        self.ff = FeedForward(channels, activation_fn="geglu")
        self.ff_norm = nn.LayerNorm(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (B·h·w, F, C) → (B·h·w, F, C)."""
        for attention, norm in zip(self.attention_blocks, self.norms, strict=True):
            x = attention(norm(x)) + x
        return self.ff(self.ff_norm(x)) + x


class TemporalTransformer(nn.Module):
    """Per-frame GN → linear in → temporal block → linear out (zero-initialised), residual."""

    def __init__(self, channels: int, config: UNetConfig) -> None:
        super().__init__()
        self.norm = nn.GroupNorm(config.norm_num_groups, channels, eps=1e-6)
        self.proj_in = nn.Linear(channels, channels)
        self.transformer_blocks = nn.ModuleList(
            [TemporalTransformerBlock(channels, config.motion_num_attention_heads, config.motion_max_frames)]
        )
        self.proj_out = nn.Linear(channels, channels)
        nn.init.zeros_(self.proj_out.weight)  # a new module starts as the identity
        nn.init.zeros_(self.proj_out.bias)

    def forward(self, x: torch.Tensor, frames: int) -> torch.Tensor:
        """x (B·F, C, h, w) → (B·F, C, h, w); attention runs over F independently per position."""
        height, width = x.shape[-2:]
        h = rearrange(self.norm(x), "(b f) c h w -> (b h w) f c", f=frames)
        h = self.proj_in(h)
        for block in self.transformer_blocks:
            h = block(h)
        h = self.proj_out(h)
        return rearrange(h, "(b h w) f c -> (b f) c h w", h=height, w=width) + x


class MotionModule(nn.Module):
    """AnimateDiff v1 "Vanilla" temporal module (the wrapper only names the key prefix)."""

    def __init__(self, channels: int, config: UNetConfig) -> None:
        super().__init__()
        self.temporal_transformer = TemporalTransformer(channels, config)

    def forward(self, x: torch.Tensor, frames: int) -> torch.Tensor:
        return self.temporal_transformer(x, frames)


def spatial_transformer(channels: int, config: UNetConfig) -> Transformer2DModel:
    """SD-1.5's per-frame transformer: GN → conv1×1 → [self-attn, audio cross-attn, GEGLU] → conv1×1."""
    heads = config.num_attention_heads
    return Transformer2DModel(
        num_attention_heads=heads,
        attention_head_dim=channels // heads,
        in_channels=channels,
        cross_attention_dim=config.cross_attention_dim,
        norm_num_groups=config.norm_num_groups,
    )


class Stage(nn.Module):
    """One level's steps, each resnet (→ audio transformer) (→ motion module); subclasses add the skips."""

    def __init__(
        self,
        in_channels: Sequence[int],
        out_channels: int,
        time_channels: int,
        config: UNetConfig,
        cross_attention: bool,
        motion: bool,
    ) -> None:
        super().__init__()
        self.resnets = nn.ModuleList(ResnetBlock(c, out_channels, time_channels, config) for c in in_channels)
        self.attentions = None
        if cross_attention:
            self.attentions = nn.ModuleList(spatial_transformer(out_channels, config) for _ in in_channels)
        self.motion_modules = None
        if motion:
            self.motion_modules = nn.ModuleList(MotionModule(out_channels, config) for _ in in_channels)

    def step(
        self, i: int, x: torch.Tensor, temb: torch.Tensor, audio: torch.Tensor, frames: int
    ) -> torch.Tensor:
        """x (B·F, C, h, w), temb (B·F, E), audio (B·F, S, D) → (B·F, C', h, w) after step i."""
        x = self.resnets[i](x, temb, frames)
        if self.attentions is not None:
            x = self.attentions[i](x, encoder_hidden_states=audio, return_dict=False)[0]
        if self.motion_modules is not None:
            x = self.motion_modules[i](x, frames)
        return x


class DownBlock(Stage):
    """`layers_per_block` steps, then (all but the deepest level) a 3×3 stride-2 conv."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        time_channels: int,
        config: UNetConfig,
        cross_attention: bool,
        motion: bool,
        downsample: bool,
    ) -> None:
        inputs = [in_channels] + [out_channels] * (config.layers_per_block - 1)
        super().__init__(inputs, out_channels, time_channels, config, cross_attention, motion)
        self.downsamplers = None
        if downsample:
            # name="op" registers the conv once, as `conv` (name="conv" would add `Conv2d_0` too)
            self.downsamplers = nn.ModuleList(
                [Downsample2D(out_channels, use_conv=True, padding=1, name="op")]
            )

    def forward(
        self, x: torch.Tensor, temb: torch.Tensor, audio: torch.Tensor, frames: int
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """(B·F, C, h, w) → (B·F, C', h/2, w/2) (h, w at the deepest level) and the skips, one per step
        plus the downsampled features."""
        skips = []
        for i in range(len(self.resnets)):
            x = self.step(i, x, temb, audio, frames)
            skips.append(x)
        if self.downsamplers is not None:
            x = self.downsamplers[0](x)
            skips.append(x)
        return x, skips


class UpBlock(Stage):
    """One step per skip (`layers_per_block` + 1), then (all but the top level) nearest ×2 + conv."""

    def __init__(
        self,
        skip_channels: Sequence[int],
        previous_channels: int,
        out_channels: int,
        time_channels: int,
        config: UNetConfig,
        cross_attention: bool,
        motion: bool,
        upsample: bool,
    ) -> None:
        # step i takes the running features (the deeper level's C at i = 0) concatenated with a skip
        inputs = [(previous_channels if i == 0 else out_channels) + s for i, s in enumerate(skip_channels)]
        super().__init__(inputs, out_channels, time_channels, config, cross_attention, motion)
        self.upsamplers = nn.ModuleList([Upsample2D(out_channels, use_conv=True)]) if upsample else None

    def forward(
        self, x: torch.Tensor, skips: list[torch.Tensor], temb: torch.Tensor, audio: torch.Tensor, frames: int
    ) -> torch.Tensor:
        """(B·F, C, h, w) and the skips it pops (deepest last) → (B·F, C', 2h, 2w) (h, w at the top level)."""
        for i in range(len(self.resnets)):
            x = self.step(i, torch.cat([x, skips.pop()], dim=1), temb, audio, frames)
        if self.upsamplers is not None:
            x = self.upsamplers[0](x)
        return x


class MidBlock(nn.Module):
    """resnet → audio transformer → resnet at the deepest level (never a motion module)."""

    def __init__(self, channels: int, time_channels: int, config: UNetConfig) -> None:
        super().__init__()
        self.resnets = nn.ModuleList(ResnetBlock(channels, channels, time_channels, config) for _ in range(2))
        self.attentions = nn.ModuleList([spatial_transformer(channels, config)])

    def forward(self, x: torch.Tensor, temb: torch.Tensor, audio: torch.Tensor, frames: int) -> torch.Tensor:
        x = self.resnets[0](x, temb, frames)
        x = self.attentions[0](x, encoder_hidden_states=audio, return_dict=False)[0]
        return self.resnets[1](x, temb, frames)


# --- the network ---------------------------------------------------------------------------------


class UNet3DConditionModel(nn.Module):
    """ε-prediction UNet over a clip of latents, conditioned on the timestep and per-frame audio tokens.

    SD-1.5 topology on frames folded into the batch: every convolution and spatial transformer runs
    per frame, the audio cross-attention (`attn2`) lets each frame attend only to its own S audio
    tokens, and two things mix frames — the optional temporal "motion modules" (AnimateDiff v1) and,
    as in the reference, GroupNorm statistics pooled over the whole clip in the ResNet blocks and
    `conv_norm_out` (`joint_frame_groupnorm`). Module names follow the reference, so a published
    `latentsync_unet.pt` loads key for key.

    Shapes: sample (B, 13, F, h, w) = noisy latent (4), mask (1), masked latent (4), reference latent
    (4); audio (B, F, S, D); output ε̂ (B, 4, F, h, w).

    Unlike the reference, `conv_in`/`conv_out` keep PyTorch's default initialisation: LatentSync
    zeroes them so an SD-1.5 state dict with a 4-channel `conv_in` could be half-loaded; synclip
    loads strictly.
    """

    def __init__(self, config: UNetConfig) -> None:
        super().__init__()
        self.config = config
        channels = config.block_out_channels
        time_channels = 4 * channels[0]
        self.conv_in = nn.Conv2d(config.in_channels, channels[0], 3, padding=1)
        self.time_proj = Timesteps(channels[0], flip_sin_to_cos=True, downscale_freq_shift=0)
        self.time_embedding = TimestepEmbedding(channels[0], time_channels)

        levels = len(channels)
        skip_channels = [channels[0]]  # what the down path leaves for the up path, in order
        self.down_blocks = nn.ModuleList()
        previous = channels[0]
        for level, (out, kind) in enumerate(zip(channels, config.down_block_types, strict=True)):
            deepest = level == levels - 1
            self.down_blocks.append(
                DownBlock(
                    previous,
                    out,
                    time_channels,
                    config,
                    cross_attention=kind == CROSS_ATTN_DOWN,
                    motion=config.motion_modules and not config.motion_module_decoder_only,
                    downsample=not deepest,
                )
            )
            skip_channels += [out] * (config.layers_per_block + (not deepest))
            previous = out

        self.mid_block = MidBlock(channels[-1], time_channels, config)

        self.up_blocks = nn.ModuleList()
        steps = config.layers_per_block + 1
        for level, (out, kind) in enumerate(zip(channels[::-1], config.up_block_types, strict=True)):
            skips, skip_channels = skip_channels[-steps:][::-1], skip_channels[:-steps]
            self.up_blocks.append(
                UpBlock(
                    skips,
                    previous,
                    out,
                    time_channels,
                    config,
                    cross_attention=kind == CROSS_ATTN_UP,
                    motion=config.motion_modules,
                    upsample=level < levels - 1,
                )
            )
            previous = out
        assert not skip_channels, f"unused skips {skip_channels}"

        self.conv_norm_out = FrameGroupNorm(
            config.norm_num_groups, channels[0], config.norm_eps, config.joint_frame_groupnorm
        )
        self.conv_out = nn.Conv2d(channels[0], config.out_channels, 3, padding=1)

    def forward(
        self, sample: torch.Tensor, timestep: torch.Tensor | float, encoder_hidden_states: torch.Tensor
    ) -> torch.Tensor:
        """sample (B, 13, F, h, w), timestep () or (B,), audio tokens (B, F, S, D) → ε̂ (B, 4, F, h, w).

        h and w must be divisible by 2^(levels − 1).
        """
        batch, in_channels, frames, height, width = sample.shape
        if in_channels != self.config.in_channels:
            raise ValueError(f"sample has {in_channels} channels, the UNet takes {self.config.in_channels}")
        if encoder_hidden_states.ndim != 4 or encoder_hidden_states.shape[:2] != (batch, frames):
            raise ValueError(
                f"audio tokens {tuple(encoder_hidden_states.shape)} do not match (B, F) = {(batch, frames)}"
            )
        factor = 2 ** (len(self.down_blocks) - 1)
        if height % factor or width % factor:
            raise ValueError(f"latents {height}×{width} are not divisible by {factor}")
        if self.config.motion_modules and frames > self.config.motion_max_frames:
            raise ValueError(f"{frames} frames > motion_max_frames {self.config.motion_max_frames}")

        timestep = torch.as_tensor(timestep, device=sample.device).expand(batch)
        temb = self.time_embedding(self.time_proj(timestep).to(sample.dtype))  # (B, E)
        temb = repeat(temb, "b e -> (b f) e", f=frames)
        audio = rearrange(encoder_hidden_states, "b f s d -> (b f) s d")

        x = self.conv_in(rearrange(sample, "b c f h w -> (b f) c h w"))
        skips = [x]
        for block in self.down_blocks:
            x, block_skips = block(x, temb, audio, frames)
            skips += block_skips
        x = self.mid_block(x, temb, audio, frames)
        for block in self.up_blocks:
            x = block(x, skips, temb, audio, frames)
        x = self.conv_out(F.silu(self.conv_norm_out(x, frames)))
        return rearrange(x, "(b f) c h w -> b c f h w", f=frames)
