"""syncnet_python's SyncNet `S` (Chung & Zisserman, "Out of time", 2016): the judge behind Sync-C / Sync-D.

Written anew after joonson/syncnet_python's SyncNetModel.py (LatentSync's eval/syncnet/syncnet.py). The
submodule names and Sequential indices are upstream's, so the published `syncnet_v2.model` state dict
loads with no renaming. Shapes: lips (B, 3, 5, 224, 224), MFCC (B, 1, 13, 20); both end at (B, E).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

LIP_WINDOW = (3, 5, 224, 224)  # (C, F, H, W): BGR, 5 frames of a 224-pixel face crop
MFCC_WINDOW = (1, 13, 20)  # 13 cepstra × 20 MFCC frames (100 per second): the same 0.2 s


@dataclass(frozen=True)
class SyncNetV2Config:
    embedding: int = 1024  # E, upstream's num_layers_in_fc_layers


class SyncNetV2(nn.Module):
    """The two towers of syncnet_python's `S`; inputs are not normalised.

    embed_lips: (B, 3, 5, 224, 224) float, BGR values 0…255 → (B, E).
    embed_audio: (B, 1, 13, 20) float, MFCC of int16-scale samples (synclip.audio.mfcc) → (B, E).
    The embeddings are not unit-normalised: Sync-D is the plain Euclidean distance between them.
    """

    def __init__(self, config: SyncNetV2Config) -> None:
        super().__init__()
        self.config = config
        self.netcnnaud = nn.Sequential(  # (B, 1, 13, 20) → (B, 512, 1, 1)
            nn.Conv2d(1, 64, kernel_size=(3, 3), stride=(1, 1), padding=(1, 1)),
            nn.BatchNorm2d(64),
            nn.ReLU(),
            nn.MaxPool2d(kernel_size=(1, 1), stride=(1, 1)),
            nn.Conv2d(64, 192, kernel_size=(3, 3), stride=(1, 1), padding=(1, 1)),
            nn.BatchNorm2d(192),
            nn.ReLU(),
            nn.MaxPool2d(kernel_size=(3, 3), stride=(1, 2)),  # 13×20 → 11×9
            nn.Conv2d(192, 384, kernel_size=(3, 3), padding=(1, 1)),
            nn.BatchNorm2d(384),
            nn.ReLU(),
            nn.Conv2d(384, 256, kernel_size=(3, 3), padding=(1, 1)),
            nn.BatchNorm2d(256),
            nn.ReLU(),
            nn.Conv2d(256, 256, kernel_size=(3, 3), padding=(1, 1)),
            nn.BatchNorm2d(256),
            nn.ReLU(),
            nn.MaxPool2d(kernel_size=(3, 3), stride=(2, 2)),  # 11×9 → 5×4
            nn.Conv2d(256, 512, kernel_size=(5, 4), padding=(0, 0)),  # 5×4 → 1×1
            nn.BatchNorm2d(512),
            nn.ReLU(),
        )
        self.netfcaud = nn.Sequential(
            nn.Linear(512, 512), nn.BatchNorm1d(512), nn.ReLU(), nn.Linear(512, config.embedding)
        )
        self.netfclip = nn.Sequential(
            nn.Linear(512, 512), nn.BatchNorm1d(512), nn.ReLU(), nn.Linear(512, config.embedding)
        )
        self.netcnnlip = nn.Sequential(  # (B, 3, 5, 224, 224) → (B, 512, 1, 1, 1)
            nn.Conv3d(3, 96, kernel_size=(5, 7, 7), stride=(1, 2, 2), padding=0),  # → (96, 1, 109, 109)
            nn.BatchNorm3d(96),
            nn.ReLU(),
            nn.MaxPool3d(kernel_size=(1, 3, 3), stride=(1, 2, 2)),  # → 54×54
            nn.Conv3d(96, 256, kernel_size=(1, 5, 5), stride=(1, 2, 2), padding=(0, 1, 1)),  # → 26×26
            nn.BatchNorm3d(256),
            nn.ReLU(),
            nn.MaxPool3d(kernel_size=(1, 3, 3), stride=(1, 2, 2), padding=(0, 1, 1)),  # → 13×13
            nn.Conv3d(256, 256, kernel_size=(1, 3, 3), padding=(0, 1, 1)),
            nn.BatchNorm3d(256),
            nn.ReLU(),
            nn.Conv3d(256, 256, kernel_size=(1, 3, 3), padding=(0, 1, 1)),
            nn.BatchNorm3d(256),
            nn.ReLU(),
            nn.Conv3d(256, 256, kernel_size=(1, 3, 3), padding=(0, 1, 1)),
            nn.BatchNorm3d(256),
            nn.ReLU(),
            nn.MaxPool3d(kernel_size=(1, 3, 3), stride=(1, 2, 2)),  # → 6×6
            nn.Conv3d(256, 512, kernel_size=(1, 6, 6), padding=0),  # → 1×1
            nn.BatchNorm3d(512),
            nn.ReLU(),
        )

    def embed_audio(self, mfcc: torch.Tensor) -> torch.Tensor:
        """(B, 1, 13, 20) MFCC windows → (B, E)."""
        if mfcc.ndim != 4 or tuple(mfcc.shape[1:]) != MFCC_WINDOW:
            raise ValueError(
                f"MFCC windows must be (B, {', '.join(map(str, MFCC_WINDOW))}), got {tuple(mfcc.shape)}"
            )
        return self.netfcaud(self.netcnnaud(mfcc).flatten(1))  # (B, 512, 1, 1) → (B, 512) → (B, E)

    def embed_lips(self, windows: torch.Tensor) -> torch.Tensor:
        """(B, 3, 5, 224, 224) BGR 0…255 frame windows → (B, E)."""
        if windows.ndim != 5 or tuple(windows.shape[1:]) != LIP_WINDOW:
            raise ValueError(
                f"lip windows must be (B, {', '.join(map(str, LIP_WINDOW))}), got {tuple(windows.shape)}"
            )
        return self.netfclip(self.netcnnlip(windows).flatten(1))  # (B, 512, 1, 1, 1) → (B, 512) → (B, E)

    def forward(self, windows: torch.Tensor, mfcc: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, 3, 5, 224, 224) lips and (B, 1, 13, 20) MFCC → their (B, E) embeddings."""
        return self.embed_lips(windows), self.embed_audio(mfcc)
