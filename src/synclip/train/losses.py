"""The loss terms of synclip's training objectives, apart from the networks and the loops.
The frozen networks they use are loaded by the caller."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL
from diffusers.utils.torch_utils import randn_tensor
from torch import nn

from synclip.artifacts import CheckpointError, read_state_dict
from synclip.config import VaeParams
from synclip.images import SSIM_RADIUS, box_slices, ssim_map
from synclip.train.distributed import Shard

# --- SyncNet -------------------------------------------------------------------------------------


def sync_probability(visual: torch.Tensor, audio: torch.Tensor) -> torch.Tensor:
    """Cosine of unit, non-negative embeddings (B, E) → (B,) in [0, 1]: the 'in sync' probability."""
    return (visual * audio).sum(dim=1)


def sync_loss(visual: torch.Tensor, audio: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """BCE between the cosine and the label (1 = in sync), as LatentSync trains and uses it."""
    probability = sync_probability(visual, audio).clamp(1e-7, 1 - 1e-7)
    return F.binary_cross_entropy(probability, target.to(probability.dtype))


def offset_losses(
    visual: torch.Tensor, audio: torch.Tensor, temperature: float, clips: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Losses for video windows against their audio at several offsets (Δ = 0 first).

    visual (B, E); audio (B, D, E), where audio[:, 0] is in sync and audio[:, 1:] (D ≥ 1) is
    shifted. Returns (balanced BCE, multi-way cross-entropy): the second is the "perfect match"
    idea (Chung et al., 2019) — pick the in-sync audio among the shifted ones and the other
    windows' in-sync audio — which gives each step far more signal than single pairs. The BCE's
    negatives are the shifted cosines, or with D = 1 every other window's in-sync audio; given
    `clips` (B,), the clip each window comes from, only the other windows of the same clip (the
    negatives LatentSync draws and its accuracy is measured on: another time of the same face and
    voice), when the batch has any.
    Not part of LatentSync's recipe; `sync_loss` alone is.
    """
    own = torch.einsum("be,bde->bd", visual, audio)  # (B, D)
    others = visual @ audio[:, 0].T  # (B, B): window i against window j's in-sync audio
    batch = len(visual)
    off = ~torch.eye(batch, dtype=torch.bool, device=visual.device)
    off_diagonal = others[off].view(batch, batch - 1)
    positive = own[:, 0].clamp(1e-7, 1 - 1e-7)
    if own.shape[1] > 1:
        negative = own[:, 1:]
    elif clips is not None and (same := off & (clips[:, None] == clips[None, :])).any():
        negative = others[same]
    else:
        negative = off_diagonal
    negative = negative.clamp(1e-7, 1 - 1e-7)
    bce = 0.5 * (-torch.log(positive).mean() - torch.log1p(-negative).mean())
    logits = torch.cat([own, off_diagonal], dim=1) / temperature
    target = torch.zeros(batch, dtype=torch.long, device=visual.device)
    return bce, F.cross_entropy(logits, target)


# --- VAE -----------------------------------------------------------------------------------------


def sobel(images: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> (B, 2C, H, W): horizontal and vertical Sobel gradients of every channel."""
    kx = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]], device=images.device) / 4
    kernel = (
        torch.stack([kx, kx.T])[:, None].repeat(images.shape[1], 1, 1, 1).to(images.dtype)
    )  # (2C, 1, 3, 3)
    padded = F.pad(images, (1, 1, 1, 1), mode="replicate")
    return F.conv2d(padded, kernel, groups=images.shape[1])


def vae_losses(
    model: AutoencoderKL,
    images: torch.Tensor,
    params: VaeParams,
    generator: torch.Generator | None = None,
    shard: Shard | None = None,
) -> dict[str, torch.Tensor]:
    """Named loss terms and their weighted `total` for images (B, 3, H, W) in [−1, 1]: weighted L1,
    Sobel-edge and SSIM terms with a KL.

    The pixel terms are means weighted 1 + mouth_weight inside the mouth box and 1 elsewhere:
    the lower face is what the UNet generates, the rest of the frame is pasted back from the
    source. The latent is sampled from the posterior, as LatentSync encodes for the UNet (§2.5).
    With a `shard`, `images` are this rank's rows of the batch: the posterior's noise is drawn for the
    whole batch, as one process draws it (`DiagonalGaussianDistribution.sample`), and its rows taken.
    """
    shard = shard or Shard()
    posterior = model.encode(images).latent_dist
    shape = (len(images) * shard.world, *posterior.mean.shape[1:])
    parameters = posterior.parameters
    noise = randn_tensor(shape, generator=generator, device=parameters.device, dtype=parameters.dtype)
    recon = model.decode(posterior.mean + posterior.std * shard.take(noise)).sample.float()
    height, width = images.shape[-2:]
    rows, cols = box_slices(params.mouth, height, width)
    weight = torch.ones(height, width, device=images.device)
    weight[rows, cols] += params.mouth_weight
    inner = weight[SSIM_RADIUS:-SSIM_RADIUS, SSIM_RADIUS:-SSIM_RADIUS]  # where the SSIM map lies

    def weighted(values: torch.Tensor, w: torch.Tensor) -> torch.Tensor:  # (B, C, h, w) -> ()
        return (values * w).sum() / (w.sum() * values.shape[0] * values.shape[1])

    ssim = ssim_map((recon + 1) / 2, (images + 1) / 2)  # (B, 3, H − 10, W − 10)
    terms = {
        "l1": weighted((recon - images).abs(), weight),
        "edge": weighted((sobel(recon) - sobel(images)).abs(), weight),
        "ssim": weighted(1 - ssim, inner),
        "kl": posterior.kl().mean() / posterior.mean[0].numel(),  # per latent element
    }
    weights = {
        "l1": params.l1_weight,
        "edge": params.edge_weight,
        "ssim": params.ssim_weight,
        "kl": params.kl_weight,
    }
    terms["total"] = sum(weights[name] * term for name, term in terms.items())
    return terms


# --- LPIPS ---------------------------------------------------------------------------------------


class LpipsTerm(nn.Module):
    """LPIPS (VGG, lpips 0.1.4 linear heads) with the VGG16 trunk loaded from a local torchvision state dict."""

    def __init__(self, vgg_state: Mapping[str, torch.Tensor]) -> None:
        super().__init__()
        import lpips

        # pnet_rand: no torchvision download; the trunk is filled from `vgg_state` below
        self.lpips = lpips.LPIPS(net="vgg", pnet_rand=True, verbose=False).eval().requires_grad_(False)
        own = {k: v for k, v in self.lpips.net.state_dict().items()}
        mapped = {}
        for name in own:  # net.slice{k}.{i}.{weight,bias} <- features.{i}.{weight,bias}
            _, index, kind = name.split(".")
            mapped[name] = vgg_state.get(f"features.{index}.{kind}")
        missing = sorted(k for k, v in mapped.items() if v is None)
        if missing:
            raise ValueError(f"VGG16 state dict lacks {len(missing)} trunk tensors ({missing[:3]} …)")
        self.lpips.net.load_state_dict(mapped, strict=True)

    def forward(self, generated: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) pairs in [−1, 1] → mean LPIPS."""
        return self.lpips(generated, real).mean()


def load_lpips(path: str | None) -> tuple[LpipsTerm | None, str]:
    """(the LPIPS term, "") or (None, why it is unavailable) for `pretrained.lpips_vgg`."""
    if path is None:
        return None, "pretrained.lpips_vgg is null (VGG16 ImageNet weights are needed)"
    if not Path(path).is_file():
        return None, f"pretrained.lpips_vgg {path} does not exist"
    state = read_state_dict(path, "torchvision's VGG16 state dict, vgg16-397923af.pth")
    try:
        return LpipsTerm(state), ""
    except ValueError as error:
        raise CheckpointError(f"{path}: {error}") from None
