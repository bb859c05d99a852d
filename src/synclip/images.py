"""Pictures as numbers: uint8 frames ↔ [−1, 1] tensors, regions of a face, and SSIM / PSNR.
Glossary: N images, H/W pixels, C channels; a box is (top, bottom, left, right) fractions of a face.
"""

from __future__ import annotations

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from einops import rearrange

SSIM_SIGMA = 1.5  # Wang et al. 2004; with radius 5 the 11-tap window skimage uses
SSIM_RADIUS = 5

Box = tuple[float, float, float, float]


def unit_range(pixels: torch.Tensor) -> torch.Tensor:
    """uint8 values → float in [−1, 1], the range the networks take; the layout is kept."""
    return pixels.float() / 127.5 - 1


def to_unit(frames: np.ndarray, device: torch.device | str | None = None) -> torch.Tensor:
    """uint8 (..., H, W, 3) → float (..., 3, H, W) in [−1, 1] on `device` (converted there)."""
    pixels = torch.from_numpy(np.ascontiguousarray(frames))
    if device is not None:
        pixels = pixels.to(device)
    return unit_range(rearrange(pixels, "... h w c -> ... c h w"))


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """float (..., 3, H, W) in [−1, 1] → uint8 (..., H, W, 3) on the CPU, clipped and rounded."""
    pixels = ((images.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return rearrange(pixels, "... c h w -> ... h w c").cpu().numpy()


def box_slices(box: Box, height: int, width: int) -> tuple[slice, slice]:
    """Row and column slices of the (top, bottom, left, right) fractions on an H×W face."""
    top, bottom, left, right = box
    return slice(round(top * height), round(bottom * height)), slice(
        round(left * width), round(right * width)
    )


def crop_resize(frame: np.ndarray, box: Box, size: tuple[int, int]) -> np.ndarray:
    """The `box` of a face (R, R, 3), area-resized to `size` = (H, W) (as it is when it already fits)."""
    rows, cols = box_slices(box, *frame.shape[:2])
    region = frame[rows, cols]
    height, width = size
    if region.shape[:2] == (height, width):
        return region
    return cv2.resize(region, (width, height), interpolation=cv2.INTER_AREA)


def ssim_map(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """SSIM (Wang et al. 2004: Gaussian σ 1.5, K1 0.01, K2 0.03) of images (B, C, H, W) in [0, 1],
    computed in their dtype (differentiable, so it also serves as a loss).

    Returns (B, C, H − 10, W − 10): one value per window centre, the centres whose 11×11 window
    lies inside the image — the values `skimage.metrics.structural_similarity` averages.
    """
    channels = a.shape[1]
    x = torch.arange(-SSIM_RADIUS, SSIM_RADIUS + 1, dtype=a.dtype, device=a.device)
    g = torch.exp(-(x**2) / (2 * SSIM_SIGMA**2))
    g = g / g.sum()
    window = (g[:, None] * g[None, :]).expand(5 * channels, 1, -1, -1).contiguous()  # (5C, 1, 11, 11)
    # the five local moments in one depthwise convolution (on channels: several times faster on the
    # CPU than on the batch axis): (B, 5C, H, W) -> (5, B, C, H − 10, W − 10)
    stacked = torch.cat([a, b, a * a, b * b, a * b], dim=1)
    moments = F.conv2d(stacked, window, groups=5 * channels).unflatten(1, (5, channels)).transpose(0, 1)
    mu_a, mu_b, aa, bb, ab = moments
    var_a, var_b, cov = aa - mu_a**2, bb - mu_b**2, ab - mu_a * mu_b
    c1, c2 = 0.01**2, 0.03**2
    return ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))


def psnr(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(N,) PSNR in dB of images (N, C, H, W) in [0, 1]; inf where they are equal."""
    mse = ((a - b) ** 2).flatten(1).mean(dim=1)
    return 10 * torch.log10(1 / mse)


def image_metrics(
    original: np.ndarray, reconstruction: np.ndarray, box: Box, batch: int = 64
) -> dict[str, float]:
    """Mean per-image PSNR (dB) and SSIM of the whole face and of `box` (named `mouth`).

    Both arrays are uint8 (N, H, W, 3). The box's SSIM averages the SSIM map over the window
    centres inside the box (its windows see a few pixels of context around it). Identical images
    give PSNR inf and SSIM 1. SSIM is computed in float32: as good as float64 for these scores, and
    much faster (docs/benchmarks.md).
    """
    if original.shape != reconstruction.shape:
        raise ValueError(f"shapes differ: {original.shape} vs {reconstruction.shape}")
    rows, cols = box_slices(box, *original.shape[1:3])
    # SSIM map index i is the window centred on pixel i + SSIM_RADIUS
    r = slice(max(rows.start - SSIM_RADIUS, 0), rows.stop - SSIM_RADIUS)
    c = slice(max(cols.start - SSIM_RADIUS, 0), cols.stop - SSIM_RADIUS)
    sums = dict.fromkeys(("psnr_face", "ssim_face", "psnr_mouth", "ssim_mouth"), 0.0)
    for i in range(0, len(original), batch):
        a = rearrange(torch.from_numpy(original[i : i + batch]), "n h w c -> n c h w").double() / 255
        b = rearrange(torch.from_numpy(reconstruction[i : i + batch]), "n h w c -> n c h w").double() / 255
        ssim = ssim_map(a.float(), b.float()).double()  # (n, C, H − 10, W − 10)
        sums["psnr_face"] += float(psnr(a, b).sum())
        sums["psnr_mouth"] += float(psnr(a[..., rows, cols], b[..., rows, cols]).sum())
        sums["ssim_face"] += float(ssim.flatten(1).mean(dim=1).sum())
        sums["ssim_mouth"] += float(ssim[..., r, c].flatten(1).mean(dim=1).sum())
    return {name: total / len(original) for name, total in sums.items()}
