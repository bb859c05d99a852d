"""Seeded random weights that a fixture generator and a test can both rebuild, name by name.

Fixtures for networks whose geometry is fixed by published weights (syncnet_python's S, S3FD) cannot
carry the weights (tens of MB); the generator and the test each call `seeded_state` on the same
names and shapes instead, so the same numbers reach upstream's module and synclip's.
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping

import numpy as np
import torch


def seeded_state(
    shapes: Mapping[str, tuple[int, ...]], seed: int, dtype: torch.dtype = torch.float32
) -> dict[str, torch.Tensor]:
    """name → tensor: each drawn from its own generator keyed by (seed, crc32(name)), so the order of
    `shapes` does not matter. Conv/linear weights ~ N(0, 1/fan_in); norm scales ~ U(0.8, 1.2);
    biases ~ N(0, 0.05); BatchNorm running means ~ N(0, 0.1), running variances ~ U(0.5, 1.5)."""
    state = {}
    for name, shape in shapes.items():
        rng = np.random.default_rng([seed, zlib.crc32(name.encode())])
        leaf = name.rsplit(".", 1)[-1]
        if leaf == "num_batches_tracked":
            state[name] = torch.zeros(shape, dtype=torch.long)
            continue
        if leaf == "running_var":
            value = rng.uniform(0.5, 1.5, shape)
        elif leaf == "running_mean":
            value = rng.normal(0.0, 0.1, shape)
        elif leaf == "bias":
            value = rng.normal(0.0, 0.05, shape)
        elif len(shape) <= 1:  # norm scales (BatchNorm / L2Norm weights)
            value = rng.uniform(0.8, 1.2, shape)
        else:
            fan_in = int(np.prod(shape[1:]))
            value = rng.normal(0.0, 1.0 / np.sqrt(fan_in), shape)
        state[name] = torch.from_numpy(value).to(dtype)
    return state


def shapes_of(module: torch.nn.Module) -> dict[str, tuple[int, ...]]:
    """The state dict's names and shapes of a module (parameters and buffers)."""
    return {name: tuple(value.shape) for name, value in module.state_dict().items()}
