"""Inputs that scripts/latentsync_fixtures/fidelity.py and tests/test_fidelity.py both rebuild.

`TinyI3D` stands in for the published `i3d_torchscript.pt` (tens of MB, not in the fixture): a scripted
module with the same call contract, `forward(x, rescale, resize, return_features)` on (B, C, F, H, W),
whose weights come from `seeded_state`, so the generator and the test save the identical network.
Videos travel in the fixture as (B, F, 8, 8, 3) uint8 and are blown up to 224×224 by `expand`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from seeded_weights import seeded_state, shapes_of
from torch import nn

I3D_SEED = 7
SIZE = 224  # the published I3D's input side; LatentSync calls it with resize=False on 224 crops
BLOCK = 28  # 8 × 28 = 224


class TinyI3D(nn.Module):
    """(B, 3, F, H, W) → (B, 12) features (return_features) or (B, 5) class probabilities.

    rescale maps [0, 255] to [−1, 1] and resize goes to 224 px, as the published module's flags do.
    """

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv3d(3, 8, (3, 7, 7), stride=(2, 4, 4), padding=(1, 3, 3))
        self.conv2 = nn.Conv3d(8, 12, 3, stride=2, padding=1)
        self.head = nn.Linear(12, 5)

    def forward(
        self, x: torch.Tensor, rescale: bool = False, resize: bool = False, return_features: bool = False
    ) -> torch.Tensor:
        if rescale:
            x = x / 255.0 * 2 - 1
        if resize:
            x = F.interpolate(x, size=[x.shape[2], 224, 224], mode="trilinear", align_corners=False)
        x = torch.relu(self.conv1(x))
        x = torch.relu(self.conv2(x))
        features = x.mean(dim=(2, 3, 4))  # (B, 12)
        if return_features:
            return features
        return torch.softmax(self.head(features), dim=1)


class PlainNet(nn.Module):
    """A TorchScript module without the I3D flags: `model(x, rescale=…)` fails on it."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=(2, 3, 4))


class MapNet(nn.Module):
    """The I3D flags, but (B, C, F, H, W) maps out instead of (B, K) features."""

    def forward(
        self, x: torch.Tensor, rescale: bool = False, resize: bool = False, return_features: bool = False
    ) -> torch.Tensor:
        return x * 2


def tiny_i3d(seed: int = I3D_SEED) -> TinyI3D:
    """The stand-in I3D with seeded weights, in eval mode."""
    model = TinyI3D()
    model.load_state_dict(seeded_state(shapes_of(model), seed), strict=True)
    return model.eval()


def save_script(module: nn.Module, path: Path) -> Path:
    """`module` scripted and saved as TorchScript at `path` (how i3d_torchscript.pt is stored)."""
    torch.jit.script(module).save(str(path))
    return path


def expand(small: np.ndarray) -> np.ndarray:
    """(B, F, 8, 8, 3) uint8 → (B, F, 224, 224, 3) uint8, each pixel a 28×28 block."""
    return np.repeat(np.repeat(small, BLOCK, axis=2), BLOCK, axis=3)
