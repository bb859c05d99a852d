"""A LatentSync Hugging Face snapshot at a reduced size, written in upstream's file formats, for tests.

`make_snapshot(folder, version, seed)` writes what `huggingface-cli download ByteDance/LatentSync-1.6
--local-dir folder` writes (latentsync_unet.pt, stable_syncnet.pt, whisper/tiny.pt and a file to
ignore) with random weights, plus the upstream-format yaml configs of the reduced networks and a tiny
diffusers VAE folder, so an import and a lip-sync run take seconds on a CPU.

The UNet and SyncNet state dicts come from synclip's modules, whose key names are upstream's
(reference §10.2; tests/test_unet.py and tests/test_syncnet.py count the full-size entries). The
containers are upstream's: `torch.save({"global_step", "state_dict"})` as scripts/train_unet.py saves
the UNet, plus the loss histories scripts/train_syncnet.py adds, and openai-whisper's
`{"dims", "model_state_dict"}` (fp16, as the published tiny.pt).
"""

from __future__ import annotations

from pathlib import Path

import torch
import yaml
from diffusers import AutoencoderKL

from synclip.nn.syncnet import StableSyncNet, SyncNetConfig, TowerConfig
from synclip.nn.unet import UNet3DConditionModel, UNetConfig

WIDTH = 64  # D: the tiny Whisper's width = the UNet's cross_attention_dim
RESOLUTION = 64  # R of the reduced 1.6 config (the 1.5 config leaves data.resolution out: 256)
LATENT_CHANNELS = 4

# openai-whisper ModelDimensions of the tiny stand-in: the real 30 s geometry (80 mels, 1500 states)
# and vocabulary, small widths.
WHISPER_DIMS = {
    "n_mels": 80,
    "n_vocab": 51865,
    "n_audio_ctx": 1500,
    "n_audio_state": WIDTH,
    "n_audio_head": 2,
    "n_audio_layer": 2,
    "n_text_ctx": 448,
    "n_text_state": WIDTH,
    "n_text_head": 2,
    "n_text_layer": 1,
}


def unet_yaml(resolution: int | None) -> dict:
    """configs/unet/stage2.yaml with the model made small: 4 levels (32, 64, 64, 64), 8 groups, 4 heads."""
    model = {
        "act_fn": "silu",
        "add_audio_layer": True,
        "attention_head_dim": 4,  # upstream's name for the number of heads
        "block_out_channels": [32, 64, 64, 64],
        "center_input_sample": False,
        "cross_attention_dim": WIDTH,
        "down_block_types": ["CrossAttnDownBlock3D"] * 3 + ["DownBlock3D"],
        "mid_block_type": "UNetMidBlock3DCrossAttn",
        "up_block_types": ["UpBlock3D"] + ["CrossAttnUpBlock3D"] * 3,
        "downsample_padding": 1,
        "flip_sin_to_cos": True,
        "freq_shift": 0,
        "in_channels": 3 * LATENT_CHANNELS + 1,
        "layers_per_block": 2,
        "mid_block_scale_factor": 1,
        "norm_eps": "1e-5",  # a string, as YAML 1.1 reads upstream's `1e-5`
        "norm_num_groups": 8,
        "out_channels": LATENT_CHANNELS,
        "sample_size": 8,
        "resnet_time_scale_shift": "default",
        "use_motion_module": True,
        "motion_module_resolutions": [1, 2, 4, 8],
        "motion_module_mid_block": False,
        "motion_module_decoder_only": False,
        "motion_module_type": "Vanilla",
        "motion_module_kwargs": {
            "num_attention_heads": 4,
            "num_transformer_block": 1,
            "attention_block_types": ["Temporal_Self", "Temporal_Self"],
            "temporal_position_encoding": True,
            "temporal_position_encoding_max_len": 24,
            "temporal_attention_dim_div": 1,
            "zero_initialize": True,
        },
    }
    data = {"num_frames": 16, "mask_image_path": "latentsync/utils/mask.png"}
    if resolution is not None:
        data["resolution"] = resolution
    return {"data": data, "model": model, "run": {"inference_steps": 20, "guidance_scale": 1.5}}


def unet_config() -> UNetConfig:
    """synclip's config of `unet_yaml` (what the importer should derive from it)."""
    return UNetConfig(
        block_out_channels=(32, 64, 64, 64),
        num_attention_heads=4,
        norm_num_groups=8,
        cross_attention_dim=WIDTH,
        motion_modules=True,
        motion_num_attention_heads=4,
    )


# configs/syncnet/syncnet_16_pixel_attn.yaml made small; channels stay multiples of upstream's fixed 32
# GroupNorm groups. Visual (48, 32, 64) and audio (1, 80, 52) both end at 1 × 1 with 64 channels.
SYNCNET_MODEL = {
    "audio_encoder": {
        "in_channels": 1,
        "block_out_channels": [32, 32, 32, 32, 32, 64, 64],
        "downsample_factors": [[2, 1], 2, 2, 1, 2, 2, [2, 3]],
        "attn_blocks": [0, 0, 0, 1, 1, 0, 0],
        "dropout": 0.0,
    },
    "visual_encoder": {
        "in_channels": 48,
        "block_out_channels": [32, 32, 32, 32, 64, 64, 64],
        "downsample_factors": [[1, 2], 2, 2, 2, 2, 1, 2],
        "attn_blocks": [0, 0, 0, 0, 1, 0, 0],
        "dropout": 0.0,
    },
}


def syncnet_yaml() -> dict:
    data = {"num_frames": 16, "resolution": 64, "latent_space": False, "lower_half": True}
    return {
        "model": SYNCNET_MODEL,
        "data": data,
        "ckpt": {"inference_ckpt_path": "checkpoints/stable_syncnet.pt"},
    }


def syncnet_config() -> SyncNetConfig:
    """synclip's config of `syncnet_yaml` (what the importer should derive from it)."""

    def tower(spec: dict) -> TowerConfig:
        return TowerConfig(
            in_channels=spec["in_channels"],
            block_out_channels=tuple(spec["block_out_channels"]),
            downsample_factors=tuple(
                tuple(f) if isinstance(f, list) else f for f in spec["downsample_factors"]
            ),
            attn_blocks=tuple(spec["attn_blocks"]),
        )

    return SyncNetConfig(
        visual=tower(SYNCNET_MODEL["visual_encoder"]),
        audio=tower(SYNCNET_MODEL["audio_encoder"]),
        num_frames=16,
        image_size=(32, 64),
    )


def whisper_state_dict(dims: dict, generator: torch.Generator) -> dict[str, torch.Tensor]:
    """openai-whisper's `Whisper(ModelDimensions(**dims)).state_dict()` keys and shapes, random values
    (the encoder's sinusoidal positional_embedding is a persistent buffer; alignment_heads is not)."""

    def rand(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=generator) * 0.05

    state: dict[str, torch.Tensor] = {}

    def linear(name: str, n_in: int, n_out: int, bias: bool = True) -> None:
        state[f"{name}.weight"] = rand(n_out, n_in)
        if bias:
            state[f"{name}.bias"] = rand(n_out)

    def norm(name: str, n: int) -> None:
        state[f"{name}.weight"] = 1 + rand(n)
        state[f"{name}.bias"] = rand(n)

    def block(prefix: str, n: int, cross: bool) -> None:
        for attn in ("attn", "cross_attn") if cross else ("attn",):
            linear(f"{prefix}.{attn}.query", n, n)
            linear(f"{prefix}.{attn}.key", n, n, bias=False)
            linear(f"{prefix}.{attn}.value", n, n)
            linear(f"{prefix}.{attn}.out", n, n)
            norm(f"{prefix}.{attn}_ln", n)
        linear(f"{prefix}.mlp.0", n, 4 * n)
        linear(f"{prefix}.mlp.2", 4 * n, n)
        norm(f"{prefix}.mlp_ln", n)

    audio, text = dims["n_audio_state"], dims["n_text_state"]
    state["encoder.conv1.weight"] = rand(audio, dims["n_mels"], 3)
    state["encoder.conv1.bias"] = rand(audio)
    state["encoder.conv2.weight"] = rand(audio, audio, 3)
    state["encoder.conv2.bias"] = rand(audio)
    state["encoder.positional_embedding"] = sinusoids(dims["n_audio_ctx"], audio)
    for i in range(dims["n_audio_layer"]):
        block(f"encoder.blocks.{i}", audio, cross=False)
    norm("encoder.ln_post", audio)
    state["decoder.token_embedding.weight"] = rand(dims["n_vocab"], text)
    state["decoder.positional_embedding"] = rand(dims["n_text_ctx"], text)
    for i in range(dims["n_text_layer"]):
        block(f"decoder.blocks.{i}", text, cross=True)
    norm("decoder.ln", text)
    return {k: v.half() for k, v in state.items()}


def sinusoids(length: int, channels: int, max_timescale: float = 10000.0) -> torch.Tensor:
    """(length, channels): Whisper's fixed encoder position code (sin half, then cos half)."""
    log_increment = torch.log(torch.tensor(max_timescale)) / (channels // 2 - 1)
    inv_timescales = torch.exp(-log_increment * torch.arange(channels // 2))
    scaled = torch.arange(length)[:, None] * inv_timescales[None, :]
    return torch.cat([torch.sin(scaled), torch.cos(scaled)], dim=1)


def tiny_vae_folder(folder: Path, seed: int) -> Path:
    """A diffusers AutoencoderKL folder with sd-vae-ft-mse's layout (4 levels: 8× down, 4 latent
    channels) at 8 channels, and a scaling factor that is not sd-vae-ft-mse's (the import forces it)."""
    torch.manual_seed(seed)
    AutoencoderKL(
        block_out_channels=(8, 8, 8, 8),
        down_block_types=["DownEncoderBlock2D"] * 4,
        up_block_types=["UpDecoderBlock2D"] * 4,
        layers_per_block=1,
        latent_channels=LATENT_CHANNELS,
        norm_num_groups=4,
        sample_size=RESOLUTION,
        scaling_factor=0.5,
    ).save_pretrained(folder, safe_serialization=True)
    return folder


def make_snapshot(folder: str | Path, version: str = "1.6", seed: int = 0) -> dict:
    """Write a reduced LatentSync-`version` snapshot into `folder`; returns its parts:
    {"src", "vae", "unet_config" (yaml path), "syncnet_config" (yaml path), "unet", "syncnet",
    "whisper" (the state dicts written), "resolution" (R the import should record)}."""
    folder = Path(folder)
    src = folder / f"LatentSync-{version}"
    (src / "whisper").mkdir(parents=True)
    generator = torch.Generator().manual_seed(seed)

    torch.manual_seed(seed)
    unet = UNet3DConditionModel(unet_config())
    # zero-initialised layers (conv_out, motion modules' proj_out) made non-zero so that outputs
    # depend on every weight
    unet_state = {
        k: v + 0.02 * torch.randn(v.shape, generator=generator) for k, v in unet.state_dict().items()
    }
    torch.save({"global_step": 12345, "state_dict": unet_state}, src / "latentsync_unet.pt")

    syncnet_state = StableSyncNet(syncnet_config()).state_dict()
    torch.save(
        {
            "state_dict": syncnet_state,
            "global_step": 6789,
            "train_step_list": [1, 2],
            "train_loss_list": [0.7, 0.6],
            "val_step_list": [2],
            "val_loss_list": [0.65],
        },
        src / "stable_syncnet.pt",
    )

    whisper_state = whisper_state_dict(WHISPER_DIMS, generator)
    torch.save({"dims": dict(WHISPER_DIMS), "model_state_dict": whisper_state}, src / "whisper" / "tiny.pt")
    (src / "README.md").write_text("files the import ignores\n")

    resolution = RESOLUTION if version == "1.6" else None
    unet_yaml_path = folder / f"unet-{version}.yaml"
    unet_yaml_path.write_text(yaml.safe_dump(unet_yaml(resolution), sort_keys=False))
    syncnet_yaml_path = folder / "syncnet.yaml"
    syncnet_yaml_path.write_text(yaml.safe_dump(syncnet_yaml(), sort_keys=False))
    return {
        "src": src,
        "vae": tiny_vae_folder(folder / "sd-vae-ft-mse", seed),
        "unet_config": unet_yaml_path,
        "syncnet_config": syncnet_yaml_path,
        "unet": unet_state,
        "syncnet": syncnet_state,
        "whisper": whisper_state,
        "resolution": resolution or {"1.5": 256, "1.6": 512}[version],
    }
