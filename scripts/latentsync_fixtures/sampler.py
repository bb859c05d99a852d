"""Fixtures for the UNet, StableSyncNet and the sampler: LatentSync's own classes on small seeded random weights.

unet.safetensors: one forward of upstream's UNet3DConditionModel (4 levels, motion modules, audio layers).
syncnet.safetensors: one forward of upstream's StableSyncNet (the yaml's structure, small channels).
sampler.safetensors: LipsyncPipeline's chunk loop on 20 frames (a 16-frame chunk, then a short one of 4)
with that UNet, a small diffusers AutoencoderKL and DDIM, the random draws recorded.
"""

from __future__ import annotations

import copy
import json
import math
import sys
import types
from importlib.machinery import ModuleSpec
from importlib.util import find_spec
from pathlib import Path
from typing import Any

import torch
from einops import rearrange

from scripts.latentsync_fixtures.common import write_fixture

SEED = 1247
# The upstream files whose code the fixtures run (their sha256 goes into the metadata).
SOURCES = (
    "latentsync/models/unet.py",
    "latentsync/models/unet_blocks.py",
    "latentsync/models/resnet.py",
    "latentsync/models/attention.py",
    "latentsync/models/motion_module.py",
    "latentsync/models/stable_syncnet.py",
    "latentsync/pipelines/lipsync_pipeline.py",
    "latentsync/utils/image_processor.py",
    "configs/scheduler_config.json",
)

# configs/unet/stage2.yaml `model`, reduced: channels (32, 32, 32, 32) instead of (320, 640, 1280, 1280),
# 2 heads, audio width 32; everything else (4 levels, motion modules everywhere but the
# mid block, add_audio_layer) as upstream.
UNET: dict[str, Any] = {
    "act_fn": "silu",
    "add_audio_layer": True,
    "attention_head_dim": 2,  # SD-1.5's name for the number of heads
    "block_out_channels": [32, 32, 32, 32],
    "center_input_sample": False,
    "cross_attention_dim": 32,
    "down_block_types": ["CrossAttnDownBlock3D"] * 3 + ["DownBlock3D"],
    "mid_block_type": "UNetMidBlock3DCrossAttn",
    "up_block_types": ["UpBlock3D"] + ["CrossAttnUpBlock3D"] * 3,
    "downsample_padding": 1,
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "in_channels": 13,
    "layers_per_block": 2,
    "mid_block_scale_factor": 1,
    "norm_eps": 1e-5,
    "norm_num_groups": 32,  # upstream's motion modules hard-code 32 groups, whatever this says
    "out_channels": 4,
    "sample_size": 8,
    "resnet_time_scale_shift": "default",
    "use_motion_module": True,
    "motion_module_resolutions": [1, 2, 4, 8],
    "motion_module_mid_block": False,
    "motion_module_decoder_only": False,
    "motion_module_type": "Vanilla",
    "motion_module_kwargs": {
        "num_attention_heads": 2,
        "num_transformer_block": 1,
        "attention_block_types": ["Temporal_Self", "Temporal_Self"],
        "temporal_position_encoding": True,
        "temporal_position_encoding_max_len": 24,
        "temporal_attention_dim_div": 1,
        "zero_initialize": True,
    },
}
# configs/syncnet/syncnet_16_pixel_attn.yaml `model`, reduced: 2 frames (6 channels) of 16×32 pixels,
# a 32×16 mel window, channels 32–64 (upstream hard-codes 32 norm groups); stride (2, 1) / (1, 2)
# stages, a factor-1 stage and attention blocks as upstream.
SYNCNET: dict[str, Any] = {
    "audio_encoder": {
        "in_channels": 1,
        "block_out_channels": [32, 32, 32, 32, 32, 64],
        "downsample_factors": [[2, 1], 2, 1, 2, 2, 2],
        "attn_blocks": [0, 0, 0, 1, 0, 0],
        "dropout": 0.0,
    },
    "visual_encoder": {
        "in_channels": 6,
        "block_out_channels": [32, 32, 32, 32, 64],
        "downsample_factors": [[1, 2], 2, 2, 2, 2],
        "attn_blocks": [0, 0, 1, 0, 0],
        "dropout": 0.0,
    },
}
# A small SD-style VAE: 2 levels (latents at half the resolution), 4 latent channels, SD's scaling
VAE: dict[str, Any] = {
    "in_channels": 3,
    "out_channels": 3,
    "down_block_types": ["DownEncoderBlock2D"] * 2,
    "up_block_types": ["UpDecoderBlock2D"] * 2,
    "block_out_channels": [8, 16],
    "layers_per_block": 1,
    "latent_channels": 4,
    "norm_num_groups": 4,
    "sample_size": 16,
    "scaling_factor": 0.18215,
    "shift_factor": 0.0,  # upstream's decode_latents adds it; SD's VAE has none (inference.py sets 0)
}
RESOLUTION = 16  # R: the aligned face; latents are 8 × 8
FRAMES = 20  # two chunks of LatentSync's 16: 16 + 4
CHUNK = 16
STEPS = 3
GUIDANCE = 1.5
TOKENS = 5  # S audio tokens per frame (upstream: 50)


def stub_missing_modules() -> None:
    """Empty stand-ins for what upstream imports at module level but these fixtures never call:
    decord (video/audio readers), insightface (face detector), kornia (paste-back) and ffmpeg-python.
    Attribute access on a stand-in gives a placeholder class, so `from decord import VideoReader` works."""

    class Stub(types.ModuleType):
        def __getattr__(self, name: str) -> type:
            if name.startswith("__"):
                raise AttributeError(name)
            return type(name, (), {})

    names = {
        "decord": ("audio_reader", "bridge", "ndarray", "video_reader"),
        "insightface": ("app",),
        "kornia": (),
        "ffmpeg": (),
    }
    for name, children in names.items():
        if find_spec(name) is not None:
            continue
        for full in (name, *(f"{name}.{child}" for child in children)):
            module = Stub(full)
            module.__path__ = []  # a package, so its children import
            module.__spec__ = ModuleSpec(full, None)
            sys.modules[full] = module


def randomise(model: torch.nn.Module, generator: torch.Generator) -> None:
    """Seeded random weights, rounded to fp16 values (so the fixture stores them in half the bytes).

    Zero-initialised layers (upstream's conv_in, motion-module outputs) get small normal weights and
    norm affines are perturbed, so every parameter matters to the output."""
    norms = (torch.nn.GroupNorm, torch.nn.LayerNorm)
    with torch.no_grad():
        for module in model.modules():
            for name, parameter in module.named_parameters(recurse=False):
                if isinstance(module, norms) and name == "weight":
                    noise = 1 + 0.1 * torch.randn(parameter.shape, generator=generator)
                elif name == "bias" or parameter.ndim < 2:
                    noise = 0.05 * torch.randn(parameter.shape, generator=generator)
                else:
                    fan_in = math.prod(parameter.shape[1:])
                    noise = torch.randn(parameter.shape, generator=generator) / math.sqrt(fan_in)
                parameter.copy_(noise.half().float())


def compact(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """Float tensors that fp16 holds exactly are stored as fp16 (the tests upcast); others as they are."""
    out = {}
    for key, value in state.items():
        value = value.detach().cpu()
        if value.is_floating_point() and torch.equal(value.half().to(value.dtype), value):
            value = value.half()
        out[f"{prefix}{key}"] = value
    return out


def unet_fixture(root: Path, generator: torch.Generator) -> torch.nn.Module:
    from latentsync.models.unet import UNet3DConditionModel

    unet = UNet3DConditionModel(**UNET).eval()
    randomise(unet, generator)
    frames = 6
    sample = torch.randn((2, UNET["in_channels"], frames, 8, 8), generator=generator, dtype=torch.float64)
    audio = torch.randn(
        (2, frames, TOKENS, UNET["cross_attention_dim"]), generator=generator, dtype=torch.float64
    )
    timestep = torch.tensor(501)
    with torch.no_grad():  # in fp64: on random weights fp32 rounding alone reaches ~1e-4 of the peak
        output = copy.deepcopy(unet).double()(sample, timestep, encoder_hidden_states=audio).sample
    write_fixture(
        "unet",
        {
            **compact(unet.state_dict(), "state."),
            "sample": sample,
            "timestep": timestep,
            "audio": audio,
            "output": output,
        },
        root,
        SOURCES,
        {
            "config": UNET,
            "about": "upstream UNet3DConditionModel(**config) on seeded random weights; "
            "state.* its state dict (fp16-exact values stored as fp16), output = unet(sample, timestep, audio) "
            "computed in fp64",
        },
    )
    return unet


def syncnet_fixture(root: Path, generator: torch.Generator) -> None:
    from latentsync.models.stable_syncnet import StableSyncNet

    syncnet = StableSyncNet(SYNCNET).eval()
    randomise(syncnet, generator)
    frames = torch.randn(
        (3, SYNCNET["visual_encoder"]["in_channels"], 16, 32), generator=generator, dtype=torch.float64
    )
    mel = torch.randn((3, 1, 32, 16), generator=generator, dtype=torch.float64)
    with torch.no_grad():  # in fp64, as the UNet
        visual, audio = syncnet.double()(frames, mel)  # (B, E) each
    write_fixture(
        "syncnet",
        {
            **compact(syncnet.state_dict(), "state."),
            "frames": frames,
            "mel": mel,
            "visual": visual,
            "audio_embeds": audio,
        },
        root,
        SOURCES,
        {
            "config": SYNCNET,
            "about": "upstream StableSyncNet(config) on seeded random weights; "
            "(visual, audio_embeds) = syncnet(frames, mel) computed in fp64",
        },
    )


def sampler_fixture(root: Path, unet: torch.nn.Module, generator: torch.Generator) -> None:
    """LipsyncPipeline.__call__'s chunk loop, steps 3–9 of it, with upstream's own methods.

    __call__ itself needs ffmpeg, a Whisper model and insightface (reading files, detecting faces,
    pasting back into the frame), so the loop between those is reproduced here line by line, calling
    upstream's prepare_latents, ImageProcessor.prepare_masks_and_masked_images, prepare_mask_latents,
    prepare_image_latents, the scheduler, decode_latents and paste_surrounding_pixels_back.
    """
    from diffusers import AutoencoderKL, DDIMScheduler
    from latentsync.pipelines.lipsync_pipeline import LipsyncPipeline
    from latentsync.utils.image_processor import ImageProcessor

    vae = AutoencoderKL(**VAE).eval()
    randomise(vae, generator)
    vae_state = vae.state_dict()
    # the loop runs in fp64 (see unet_fixture): upstream draws its noise in the weights' dtype
    vae, unet = vae.double(), copy.deepcopy(unet).double()
    scheduler_config = json.loads((root / "configs" / "scheduler_config.json").read_text())
    scheduler = DDIMScheduler.from_config(scheduler_config)
    pipeline = LipsyncPipeline(vae=vae, audio_encoder=None, unet=unet, scheduler=scheduler)

    # (3, R, R) mask, 1 keep / 0 generate: the lower half and a band of the upper half's edge
    mask = torch.ones((3, RESOLUTION, RESOLUTION))
    mask[:, RESOLUTION // 2 :, 2:-2] = 0
    processor = ImageProcessor(RESOLUTION, device="cpu", mask_image=mask)
    video = torch.randint(0, 256, (FRAMES, RESOLUTION, RESOLUTION, 3), generator=generator, dtype=torch.uint8)
    whisper_chunks = list(torch.randn((FRAMES, TOKENS, UNET["cross_attention_dim"]), generator=generator))

    # what __call__ sets up (dtype fp32 on the CPU)
    device, dtype, eta = torch.device("cpu"), torch.float64, 0.0
    do_classifier_free_guidance = GUIDANCE > 1.0
    pipeline.scheduler.set_timesteps(STEPS, device=device)
    timesteps = pipeline.scheduler.timesteps
    rng = torch.Generator().manual_seed(SEED)
    extra_step_kwargs = pipeline.prepare_extra_step_kwargs(rng, eta)
    # the same draws, replayed from a twin generator to record them (upstream draws them inside
    # prepare_latents and latent_dist.sample)
    twin = torch.Generator().manual_seed(SEED)
    latent = RESOLUTION // pipeline.vae_scale_factor
    channels = vae.config.latent_channels
    initial = torch.randn((1, channels, 1, latent, latent), generator=twin, dtype=dtype)

    all_latents = pipeline.prepare_latents(FRAMES, channels, RESOLUTION, RESOLUTION, dtype, device, rng)
    assert torch.equal(all_latents, initial.repeat(1, 1, FRAMES, 1, 1) * pipeline.scheduler.init_noise_sigma)
    tensors: dict[str, torch.Tensor] = {"initial_noise": initial[0, :, 0]}  # (C, h, w)
    synced, faces_all = [], []
    for i in range(math.ceil(FRAMES / CHUNK)):
        audio_embeds = torch.stack(whisper_chunks[i * CHUNK : (i + 1) * CHUNK]).to(device, dtype=dtype)
        if do_classifier_free_guidance:
            audio_embeds = torch.cat([torch.zeros_like(audio_embeds), audio_embeds])
        inference_faces = video[i * CHUNK : (i + 1) * CHUNK]
        latents = all_latents[:, :, i * CHUNK : (i + 1) * CHUNK]
        ref_pixel_values, masked_pixel_values, masks = processor.prepare_masks_and_masked_images(
            inference_faces, affine_transform=False
        )
        frames = len(inference_faces)
        posterior = torch.stack(
            [torch.randn((frames, channels, latent, latent), generator=twin, dtype=dtype) for _ in range(2)]
        )  # (2, F, C, h, w): masked faces, then reference faces
        tensors[f"posterior_noise.{i}"] = posterior
        mask_latents, masked_image_latents = pipeline.prepare_mask_latents(
            masks,
            masked_pixel_values,
            RESOLUTION,
            RESOLUTION,
            dtype,
            device,
            rng,
            do_classifier_free_guidance,
        )
        ref_latents = pipeline.prepare_image_latents(
            ref_pixel_values, device, dtype, rng, do_classifier_free_guidance
        )
        with torch.no_grad():  # the draws recorded are the ones upstream used
            distribution = vae.encode(masked_pixel_values.to(dtype)).latent_dist
            expected = (distribution.mean + distribution.std * posterior[0]) * vae.config.scaling_factor
            assert torch.allclose(masked_image_latents[0], rearrange(expected, "f c h w -> c f h w"))
        for t in timesteps:
            unet_input = torch.cat([latents] * 2) if do_classifier_free_guidance else latents
            unet_input = pipeline.scheduler.scale_model_input(unet_input, t)
            unet_input = torch.cat([unet_input, mask_latents, masked_image_latents, ref_latents], dim=1)
            with torch.no_grad():
                noise_pred = pipeline.unet(unet_input, t, encoder_hidden_states=audio_embeds).sample
            if do_classifier_free_guidance:
                noise_pred_uncond, noise_pred_audio = noise_pred.chunk(2)
                noise_pred = noise_pred_uncond + GUIDANCE * (noise_pred_audio - noise_pred_uncond)
            latents = pipeline.scheduler.step(noise_pred, t, latents, **extra_step_kwargs).prev_sample
        with torch.no_grad():
            decoded_latents = pipeline.decode_latents(latents)
        decoded_latents = pipeline.paste_surrounding_pixels_back(
            decoded_latents, ref_pixel_values, 1 - masks, device, dtype
        )
        synced.append(decoded_latents)
        faces_all.append(ref_pixel_values)
    tensors.update(
        {
            **compact(vae_state, "vae."),
            "mask": mask[:1],  # (1, R, R)
            "faces": torch.cat(faces_all),  # (F, 3, R, R) in [−1, 1], what upstream's ImageProcessor made
            "audio": torch.stack(whisper_chunks),  # (F, S, D)
            "frames": torch.cat(synced),  # (F, 3, R, R), composited, not clamped (upstream clamps later)
        }
    )
    write_fixture(
        "sampler",
        tensors,
        root,
        SOURCES,
        {
            "unet": "the weights of unet.safetensors",
            "vae": VAE,
            "scheduler": scheduler_config,
            "seed": SEED,
            "steps": STEPS,
            "guidance": GUIDANCE,
            "eta": 0.0,
            "num_frames": CHUNK,
            "resolution": RESOLUTION,
            "timesteps": timesteps.tolist(),
            "dtype": "float64",
            "about": "LipsyncPipeline.__call__'s chunk loop (disjoint chunks of num_frames, the last "
            "shorter) reproduced with upstream's own methods on a CPU generator seeded with `seed`; "
            "initial_noise and posterior_noise.<chunk> are its draws, in order; frames = "
            "decoded·(1 − mask) + faces·mask before the paste-back into the video frame, unclamped",
        },
    )


def generate(root: Path) -> None:
    stub_missing_modules()
    generator = torch.Generator().manual_seed(SEED)
    unet = unet_fixture(root, generator)
    syncnet_fixture(root, generator)
    sampler_fixture(root, unet, generator)
