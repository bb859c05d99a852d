"""The audio-conditioned UNet: reference geometry, per-frame audio, frame mixing, strict loading."""

from __future__ import annotations

import dataclasses
import json
import re

import pytest
import torch
import torch.nn.functional as F
from diffusers import UNet2DConditionModel
from diffusers.models.unets.unet_motion_model import AnimateDiffTransformer3D
from einops import rearrange

from synclip.artifacts import CheckpointError, load_latentsync_unet, load_unet, load_unet_state, save_unet
from synclip.nn.unet import (
    MOTION_MODULES,
    TemporalTransformer,
    UNet3DConditionModel,
    UNetConfig,
    full_config,
    tiny_config,
)

BATCH, FRAMES, LATENT, TOKENS, WIDTH = 2, 4, 16, 50, 384


pytestmark = pytest.mark.usefixtures("one_thread")


def build(seed: int = 0, **changes) -> UNet3DConditionModel:
    """A tiny UNet in eval mode whose motion modules (zero-initialised, hence identities) are woken up."""
    torch.manual_seed(seed)
    model = UNet3DConditionModel(dataclasses.replace(tiny_config(), **changes)).eval()
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if ".motion_modules." in name and ".proj_out." in name:
                parameter.normal_(0, 0.1)
    return model


def inputs(seed: int = 1, frames: int = FRAMES) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    sample = torch.randn(BATCH, 13, frames, LATENT, LATENT, generator=generator)  # (B, 13, F, h, w)
    audio = torch.randn(BATCH, frames, TOKENS, WIDTH, generator=generator)  # (B, F, S, D)
    return sample, torch.tensor([3, 700]), audio


@torch.no_grad()
def run(model: UNet3DConditionModel, sample, timestep, audio) -> torch.Tensor:
    return model(sample, timestep, audio)


def frame_changed(before: torch.Tensor, after: torch.Tensor) -> list[bool]:
    """Per frame of (B, C, F, h, w): did any value move by more than float noise?"""
    return [
        not torch.allclose(before[:, :, f], after[:, :, f], atol=1e-6, rtol=0) for f in range(before.shape[2])
    ]


@pytest.mark.parametrize("motion", [False, True])
def test_forward_maps_a_clip_to_one_epsilon_per_frame(motion):
    model = build(motion_modules=motion)
    sample, timestep, audio = inputs()
    out = run(model, sample, timestep, audio)
    assert out.shape == (BATCH, 4, FRAMES, LATENT, LATENT)
    assert torch.isfinite(out).all()
    assert run(model, sample, torch.tensor(3), audio)[0].equal(out[0])  # a scalar timestep broadcasts
    with pytest.raises(ValueError, match="audio tokens"):
        run(model, sample, timestep, audio[:, :-1])
    with pytest.raises(ValueError, match="divisible"):
        run(model, sample[..., :-2], timestep, audio)


@pytest.mark.parametrize(
    ("joint", "motion", "others_change"),
    [(False, False, False), (True, False, True), (False, True, True)],
)
def test_each_frame_hears_only_its_own_audio_tokens(joint, motion, others_change):
    model = build(joint_frame_groupnorm=joint, motion_modules=motion)
    sample, timestep, audio = inputs()
    before = run(model, sample, timestep, audio)
    louder = audio.clone()
    louder[:, 2] = torch.randn_like(louder[:, 2])
    changed = frame_changed(before, run(model, sample, timestep, louder))
    assert changed[2]
    # other frames hear nothing of frame 2's audio except through clip-wide norms or motion modules
    assert all(changed[f] == others_change for f in (0, 1, 3))


@pytest.mark.parametrize("joint", [True, False])
def test_joint_groupnorm_makes_a_frame_depend_on_the_others(joint):
    model = build(joint_frame_groupnorm=joint)
    sample, timestep, audio = inputs()
    before = run(model, sample, timestep, audio)
    other = sample.clone()
    other[:, :, 1:] = torch.randn_like(other[:, :, 1:])
    assert frame_changed(before, run(model, other, timestep, audio))[0] == joint


@pytest.mark.parametrize(("joint", "frames"), [(False, FRAMES), (True, 1)])
def test_per_frame_it_is_diffusers_sd_unet(joint, frames):
    """Without frame mixing the UNet equals diffusers' UNet2DConditionModel, key for key."""
    config = dataclasses.replace(tiny_config(), joint_frame_groupnorm=joint)
    torch.manual_seed(0)
    reference = UNet2DConditionModel(
        in_channels=13,
        out_channels=4,
        block_out_channels=config.block_out_channels,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        layers_per_block=config.layers_per_block,
        attention_head_dim=config.num_attention_heads,  # SD's name for the number of heads
        cross_attention_dim=config.cross_attention_dim,
        norm_num_groups=config.norm_num_groups,
    ).eval()
    model = UNet3DConditionModel(config).eval()
    assert load_unet_state(model, reference.state_dict()) == []
    sample, timestep, audio = inputs(frames=frames)
    with torch.no_grad():
        expected = reference(
            rearrange(sample, "b c f h w -> (b f) c h w"),
            timestep.repeat_interleave(frames),
            rearrange(audio, "b f s d -> (b f) s d"),
        ).sample
    torch.testing.assert_close(
        run(model, sample, timestep, audio), rearrange(expected, "(b f) c h w -> b c f h w", f=frames)
    )


def test_motion_module_is_animatediff_v1():
    """Same function as diffusers' AnimateDiff temporal transformer under its v1 key conversion."""
    channels, heads, frames = 64, 4, 6
    config = tiny_config(motion_modules=True)
    torch.manual_seed(0)
    reference = AnimateDiffTransformer3D(
        num_attention_heads=heads,
        attention_head_dim=channels // heads,
        in_channels=channels,
        norm_num_groups=config.norm_num_groups,
        double_self_attention=True,
        positional_embeddings="sinusoidal",
        num_positional_embeddings=config.motion_max_frames,
    ).eval()
    with torch.no_grad():
        reference.proj_out.weight.normal_(0, 0.1)
    renames = {
        "attn1.": "attention_blocks.0.",
        "attn2.": "attention_blocks.1.",
        "norm1.": "norms.0.",
        "norm2.": "norms.1.",
        "norm3.": "ff_norm.",
    }
    state = {}
    for key, value in reference.state_dict().items():
        if key.endswith("pos_embed.pe"):
            for i in (0, 1):
                state[key.replace("pos_embed.pe", f"attention_blocks.{i}.pos_encoder.pe")] = value
            continue
        for old, new in renames.items():
            key = key.replace(f".0.{old}", f".0.{new}")
        state[key] = value
    ours = TemporalTransformer(channels, config).eval()
    ours.load_state_dict(state, strict=True)
    # diffusers pools the GroupNorm statistics over frames, AnimateDiff (and LatentSync) does not:
    # frames that are already group-standardised make the two agree
    x = F.group_norm(torch.randn(BATCH * frames, channels, 4, 4), config.norm_num_groups)  # (B·F, C, h, w)
    with torch.no_grad():
        torch.testing.assert_close(ours(x, frames), reference(x, num_frames=frames))


def test_artifact_round_trip_gives_identical_outputs(tmp_path):
    model = build(motion_modules=True)
    save_unet(tmp_path / "unet", model, {"trained_steps": 7})
    assert json.loads((tmp_path / "unet" / "config.json").read_text())["trained_steps"] == 7
    loaded = load_unet(tmp_path / "unet")
    assert loaded.config == model.config
    sample, timestep, audio = inputs()
    assert run(loaded, sample, timestep, audio).equal(run(model, sample, timestep, audio))


def test_config_from_dict_is_strict():
    config = tiny_config(motion_modules=True)
    assert UNetConfig.from_dict(json.loads(json.dumps(dataclasses.asdict(config)))) == config
    with pytest.raises(ValueError, match="unknown"):
        UNetConfig.from_dict({"channels": [32]})
    with pytest.raises(ValueError, match="norm_eps"):
        UNetConfig.from_dict({"norm_eps": "small"})
    with pytest.raises(ValueError, match="num_attention_heads"):
        dataclasses.replace(tiny_config(), num_attention_heads=3)
    with pytest.raises(ValueError, match="one entry per level"):
        dataclasses.replace(config, block_out_channels=(32, 64))


def test_loading_names_missing_unexpected_and_misshapen_keys():
    model = build()
    state = model.state_dict()
    key = "down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k.weight"
    missing = {k: v for k, v in state.items() if k != key}
    with pytest.raises(CheckpointError, match=f"1 missing: {re.escape(key)}"):
        load_unet_state(model, missing)
    with pytest.raises(CheckpointError, match=r"1 unexpected: extra\.weight"):
        load_unet_state(model, {**state, "extra.weight": torch.zeros(1)})
    with pytest.raises(CheckpointError, match=re.escape(f"{key} (64, 768) vs (64, 384)")):
        load_unet_state(model, {**state, key: torch.zeros(64, 768)})


def test_stage_two_starts_from_a_stage_one_unet_only_when_motion_keys_are_excused():
    stage1 = build(seed=3).state_dict()
    stage2 = build(motion_modules=True)
    with pytest.raises(CheckpointError, match=r"missing: down_blocks\.0\.motion_modules\.0\."):
        load_unet_state(stage2, stage1)
    excused = load_unet_state(stage2, stage1, allow_missing=(MOTION_MODULES,))
    assert excused == sorted(set(stage2.state_dict()) - set(stage1))
    assert all(".motion_modules." in k for k in excused)
    assert stage2.conv_in.weight.equal(stage1["conv_in.weight"])
    del stage1["conv_out.bias"]  # the pattern excuses motion keys only
    with pytest.raises(CheckpointError, match=r"1 missing: conv_out\.bias"):
        load_unet_state(stage2, stage1, allow_missing=(MOTION_MODULES,))


def test_published_checkpoint_layout_loads(tmp_path):
    model = build(seed=5, motion_modules=True)
    torch.save({"state_dict": model.state_dict(), "global_step": 5}, tmp_path / "latentsync_unet.pt")
    loaded = load_latentsync_unet(tmp_path / "latentsync_unet.pt", model.config)
    sample, timestep, audio = inputs()
    assert run(loaded, sample, timestep, audio).equal(run(model, sample, timestep, audio))


def test_full_geometry_has_latentsyncs_keys_and_parameter_counts():
    with torch.device("meta"):
        stage1 = UNet3DConditionModel(full_config(motion_modules=False))
        stage2 = UNet3DConditionModel(full_config(motion_modules=True))
        decoder_only = UNet3DConditionModel(
            dataclasses.replace(full_config(), motion_module_decoder_only=True)
        )
    state = stage2.state_dict()
    assert len(state) == 1246
    assert sum(p.numel() for p in stage2.parameters()) == 1_267_099_844
    # = diffusers' SD-1.5 UNet (859,520,964) with 384-wide attn2 k/v and a 13-channel conv_in
    assert sum(p.numel() for p in stage1.parameters()) == 849_962_244
    assert len(stage1.state_dict()) == 686

    def motion_modules(model):
        return {
            re.sub(r"\.temporal_transformer\..*", "", k)
            for k in model.state_dict()
            if ".motion_modules." in k
        }

    assert len(motion_modules(stage2)) == 20
    assert all(k.startswith("up_blocks.") for k in motion_modules(decoder_only))
    assert len(motion_modules(decoder_only)) == 12
    shapes = {
        "conv_in.weight": (320, 13, 3, 3),
        "time_embedding.linear_2.weight": (1280, 1280),
        "down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k.weight": (640, 384),
        "down_blocks.1.attentions.0.transformer_blocks.0.ff.net.0.proj.weight": (5120, 640),
        "down_blocks.1.resnets.0.conv_shortcut.weight": (640, 320, 1, 1),
        "down_blocks.2.downsamplers.0.conv.weight": (1280, 1280, 3, 3),
        "up_blocks.1.resnets.2.conv1.weight": (1280, 1920, 3, 3),
        "up_blocks.3.resnets.0.conv1.weight": (320, 960, 3, 3),
        "up_blocks.0.upsamplers.0.conv.weight": (1280, 1280, 3, 3),
        "down_blocks.3.motion_modules.1.temporal_transformer.transformer_blocks.0.attention_blocks.1.pos_encoder.pe": (
            1,
            24,
            1280,
        ),
        "up_blocks.3.motion_modules.2.temporal_transformer.transformer_blocks.0.ff.net.2.weight": (320, 1280),
        "conv_norm_out.weight": (320,),
        "conv_out.weight": (4, 320, 3, 3),
    }
    assert {k: tuple(state[k].shape) for k in shapes} == shapes
    assert "up_blocks.3.upsamplers.0.conv.weight" not in state
    assert "mid_block.motion_modules.0.temporal_transformer.norm.weight" not in state
