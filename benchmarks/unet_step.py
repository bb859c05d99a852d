"""CPU cost of the UNet: one forward and one training step (forward + MSE backward + AdamW step).

    python benchmarks/unet_step.py --out benchmarks/results/unet_step.json
    python benchmarks/unet_step.py --config artifact/config.json --frames 16 --latent 16

Measures the stage-1 config (no motion modules) and its stage-2 variant (with them) on random
inputs of B clips × F frames at h = w = latent, S audio tokens of width D. The config defaults to
`tiny_config()`; `--config` takes a JSON file of UNetConfig fields (or an artifact's config.json).
Peak memory is the process's maximum resident set size so far, so it only grows from one variant
to the next. On a shared machine the timings are noisy: the JSON keeps every repeat.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import resource
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from synclip.nn.unet import UNet3DConditionModel, UNetConfig, tiny_config


def timed(fn, warmup: int, repeats: int) -> list[float]:
    for _ in range(warmup):
        fn()
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        seconds.append(time.perf_counter() - start)
    return seconds


def summary(seconds: list[float]) -> dict:
    return {"median_s": statistics.median(seconds), "min_s": min(seconds), "all_s": seconds}


def measure(config: UNetConfig, args: argparse.Namespace) -> dict:
    torch.manual_seed(0)
    model = UNet3DConditionModel(config)
    sample = torch.randn(
        args.batch, config.in_channels, args.frames, args.latent, args.latent
    )  # (B, 13, F, h, w)
    audio = torch.randn(args.batch, args.frames, args.tokens, config.cross_attention_dim)  # (B, F, S, D)
    timestep = torch.randint(0, 1000, (args.batch,))
    target = torch.randn(args.batch, config.out_channels, args.frames, args.latent, args.latent)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)

    @torch.no_grad()
    def forward() -> None:
        model(sample, timestep, audio)

    def train_step() -> None:
        optimizer.zero_grad(set_to_none=True)
        F.mse_loss(model(sample, timestep, audio), target).backward()
        optimizer.step()

    model.eval()
    forward_s = timed(forward, args.warmup, args.repeats)
    model.train()
    step_s = timed(train_step, args.warmup, args.repeats)
    return {
        "config": dataclasses.asdict(config),
        "parameters": sum(p.numel() for p in model.parameters()),
        "forward": summary(forward_s),
        "train_step": summary(step_s),
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,  # Linux: KiB
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", type=Path, help="JSON of UNetConfig fields (default: tiny_config())")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--latent", type=int, default=16, help="h = w of the latents")
    parser.add_argument("--tokens", type=int, default=50, help="S, audio tokens per frame")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/unet_step.json"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    config = tiny_config()
    if args.config is not None:
        data = json.loads(args.config.read_text())
        config = UNetConfig.from_dict(data.get("model", data))  # an artifact's config.json nests it
    runs = {}
    for name, motion in (("stage1", False), ("stage2_motion_modules", True)):
        runs[name] = measure(dataclasses.replace(config, motion_modules=motion), args)
        print(
            f"{name}: {runs[name]['parameters']:,} parameters, forward {runs[name]['forward']['median_s']:.3f} s, "
            f"train step {runs[name]['train_step']['median_s']:.3f} s, peak RSS {runs[name]['peak_rss_mib']:.0f} MiB"
        )
    result = {
        "shapes": {"B": args.batch, "F": args.frames, "h": args.latent, "w": args.latent, "S": args.tokens},
        "threads": args.threads,
        "warmup": args.warmup,
        "repeats": args.repeats,
        "machine": {
            "processor": platform.processor() or platform.machine(),
            "python": platform.python_version(),
        },
        "torch": torch.__version__,
        "runs": runs,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
