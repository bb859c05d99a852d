"""Per-window latent standardisation (`unet.latent_norm: reference`, synclip's addition to LatentSync).

The UNet sees every latent of a window (noisy, masked, reference, and in training the target) minus the
mean and over the std that each channel has on the reference latents' kept cells (the upper face the
mask leaves), and its output is mapped back before decoding. A face whose latent statistics no training
face had (a real photo against SynthTalk: channel means about 4 identity spreads away, stds 1.3× on
average) then enters the UNet in the range it was trained on; the kept cells make the statistics blind
to the mouth, whose state would otherwise leak in.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

LATENT_NORMS = ("none", "reference")
VARIANCE_FLOOR = 0.01  # added to every variance: a channel flat on the upper face is not blown up


@dataclass(frozen=True)
class LatentNorm:
    mean: torch.Tensor  # (B, C, 1, 1, 1)
    std: torch.Tensor  # (B, C, 1, 1, 1)

    @classmethod
    def of_reference(cls, reference: torch.Tensor, keep: torch.Tensor) -> LatentNorm:
        """`reference` (B, C, F, h, w) latents, `keep` (B or 1, 1, F or 1, h, w), 1 on the cells the mask
        keeps: per window and channel, the mean and std over those cells of all F frames."""
        if reference.ndim != 5 or keep.ndim != 5 or keep.shape[1] != 1:
            raise ValueError(
                f"reference (B, C, F, h, w) and keep (B, 1, F, h, w), got "
                f"{tuple(reference.shape)} and {tuple(keep.shape)}"
            )
        weights = (keep > 0.5).to(reference.dtype).expand(reference.shape[0], 1, *reference.shape[2:])
        count = weights.sum(dim=(2, 3, 4), keepdim=True)
        if (count == 0).any():
            raise ValueError("the mask keeps no latent cell: nothing to take the statistics from")
        mean = (reference * weights).sum(dim=(2, 3, 4), keepdim=True) / count
        variance = ((reference - mean) ** 2 * weights).sum(dim=(2, 3, 4), keepdim=True) / count
        return cls(mean, (variance + VARIANCE_FLOOR).sqrt())

    def apply(self, latents: torch.Tensor) -> torch.Tensor:
        """(B, C, F, h, w) latents → standardised."""
        return ((latents - self.mean) / self.std).to(latents.dtype)

    def invert(self, latents: torch.Tensor) -> torch.Tensor:
        """(B, C, F, h, w) standardised → latents."""
        return (latents * self.std + self.mean).to(latents.dtype)


def check_latent_norm(latent_norm: str) -> None:
    if latent_norm not in LATENT_NORMS:
        raise ValueError(f"unknown latent_norm {latent_norm!r}; expected one of {LATENT_NORMS}")
