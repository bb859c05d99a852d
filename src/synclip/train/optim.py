"""What every trainer shares about optimisation: AdamW and its learning-rate schedule."""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Protocol

import torch

# fused AdamW where torch has it: faster than the per-tensor loop on small networks (docs/benchmarks.md)
FUSED_DEVICES = ("cpu", "cuda")


class Scheduled(Protocol):
    lr: float
    warmup_steps: int
    final_lr_fraction: float  # 1.0 = constant after the warm-up
    max_steps: int


def adamw(
    parameters: Iterable[torch.nn.Parameter], device: torch.device, lr: float, weight_decay: float, **kwargs
) -> torch.optim.AdamW:
    """AdamW with the fused kernel where torch has one: on small networks the per-tensor loop of the
    default implementation is a sixth of a training step."""
    return torch.optim.AdamW(
        parameters, lr=lr, weight_decay=weight_decay, fused=device.type in FUSED_DEVICES, **kwargs
    )


def learning_rate(params: Scheduled, step: int) -> float:
    """Linear warm-up over `warmup_steps`, then cosine decay to `lr · final_lr_fraction` at `max_steps`."""
    if step < params.warmup_steps:
        return params.lr * (step + 1) / params.warmup_steps
    done = (step - params.warmup_steps) / max(1, params.max_steps - params.warmup_steps)
    floor = params.final_lr_fraction
    return params.lr * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(1.0, done))))
