"""Speed and memory of LatentSync 1.5's geometry in synclip's sampler: random weights, 256 px faces.

    python benchmarks/latentsync_sampler.py --steps 2 --out benchmarks/results/latentsync_sampler.json
    python benchmarks/latentsync_sampler.py --device cuda --precision fp16 --steps 20   # on a GPU

The networks are the published ones' shapes (UNet3DConditionModel of configs/unet/stage2.yaml, 1.27 B
parameters; sd-vae-ft-mse's AutoencoderKL; Whisper tiny's encoder), with random weights: the cost does not
depend on the values. One chunk of F = 16 frames goes through `LipSyncPipeline` with LatentSync's sampler
(posterior samples, η 0, audio CFG 1.5: two UNet passes a step). Reported: the chunk's wall time, the
time of one guided UNet pass and of the VAE's encodes and decode, and frames per second extrapolated to
`--report-steps` DDIM steps (what a 20-step run would take: VAE + steps · UNet pass). Peak memory is the
process's maximum resident set (CPU) or torch's peak allocation (CUDA).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import resource
import time
from pathlib import Path

import torch
from diffusers import AutoencoderKL
from transformers import WhisperConfig

from synclip.face.latentsync import latentsync_mask
from synclip.inference.pipeline import LipSyncPipeline, PipelineConfig
from synclip.nn.unet import UNet3DConditionModel, full_config
from synclip.nn.whisper import WhisperAudioEncoder

RESOLUTION = 256  # LatentSync 1.5
FRAMES = 16
TOKENS = 50  # 10 Whisper tokens × 5 states per frame


def sd_vae() -> AutoencoderKL:
    """sd-vae-ft-mse's geometry (KL-f8, 4 latent channels, 83.7 M parameters), randomly initialised."""
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(128, 256, 512, 512),
        layers_per_block=2,
        latent_channels=4,
        sample_size=256,
        scaling_factor=0.18215,
    )


def whisper_tiny() -> WhisperAudioEncoder:
    config = WhisperConfig(
        d_model=384,
        encoder_layers=4,
        encoder_attention_heads=6,
        encoder_ffn_dim=1536,
        num_mel_bins=80,
        decoder_layers=1,
        decoder_attention_heads=6,
        decoder_ffn_dim=1536,
    )
    return WhisperAudioEncoder(config)


def peak_memory(device: torch.device) -> dict:
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # kB → GiB
    out = {"peak_rss_gib": round(rss, 2)}
    if device.type == "cuda":
        out["peak_cuda_allocated_gib"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 2)
    return out


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", choices=("fp32", "fp16"), default="fp32")
    parser.add_argument("--steps", type=int, default=2, help="DDIM steps actually run")
    parser.add_argument("--report-steps", type=int, default=20, help="steps the frames/s are given for")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/latentsync_sampler.json"))
    args = parser.parse_args()
    device = torch.device(args.device)
    dtype = torch.float16 if args.precision == "fp16" else torch.float32
    torch.manual_seed(0)
    unet = UNet3DConditionModel(full_config(motion_modules=True)).to(device, dtype)
    vae = sd_vae().to(device, dtype)
    encoder = whisper_tiny().to(device, dtype)
    params = sum(p.numel() for p in unet.parameters())
    config = PipelineConfig(
        resolution=RESOLUTION,
        num_frames=FRAMES,
        overlap=0,
        steps=args.steps,
        guidance=1.5,
        seed=1247,
        eta=0.0,
        latents="sample",
        last_chunk="short",
    )
    pipeline = LipSyncPipeline(unet, vae, encoder, latentsync_mask(RESOLUTION), config)
    faces = torch.rand(FRAMES, 3, RESOLUTION, RESOLUTION) * 2 - 1  # (F, 3, R, R)
    audio = torch.randn(FRAMES, TOKENS, 384)  # (F, S, D)

    with torch.no_grad():
        sample = torch.randn(2, 13, FRAMES, RESOLUTION // 8, RESOLUTION // 8, device=device, dtype=dtype)
        tokens = torch.randn(2, FRAMES, TOKENS, 384, device=device, dtype=dtype)
        unet(sample, torch.tensor(500, device=device), tokens)  # warm-up
        synchronize(device)
        start = time.perf_counter()
        unet(sample, torch.tensor(500, device=device), tokens)
        synchronize(device)
        unet_pass = time.perf_counter() - start
        start = time.perf_counter()
        images = faces.to(device, dtype)
        latents = pipeline.encode(images)
        pipeline.encode(images)
        pipeline.decode(latents)
        synchronize(device)
        vae_seconds = time.perf_counter() - start
    start = time.perf_counter()
    pipeline(faces, audio)
    synchronize(device)
    chunk = time.perf_counter() - start
    per_chunk = vae_seconds + args.report_steps * unet_pass
    result = {
        "geometry": "LatentSync 1.5 (configs/unet/stage2.yaml), sd-vae-ft-mse, Whisper tiny; random weights",
        "resolution": RESOLUTION,
        "frames_per_chunk": FRAMES,
        "unet_parameters": params,
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor(),
        "threads": torch.get_num_threads(),
        "precision": args.precision,
        "guidance": config.guidance,
        "steps_run": args.steps,
        "chunk_seconds": round(chunk, 2),
        "guided_unet_pass_seconds": round(unet_pass, 3),
        "vae_seconds_per_chunk": round(vae_seconds, 3),
        "report_steps": args.report_steps,
        "frames_per_second_at_report_steps": round(FRAMES / per_chunk, 4),
        "seconds_per_video_second_at_report_steps": round(per_chunk / FRAMES * 25, 1),
        **peak_memory(device),
        "config": dataclasses.asdict(config),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    print(json.dumps({k: v for k, v in result.items() if k != "config"}, indent=1))


if __name__ == "__main__":
    main()
