"""UNet training windows of processed clips: target and reference VAE latents, masked latents, aligned audio.
Shapes: latents (T, 4, h, w) per clip; a batch as `UNetBatch`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from einops import rearrange

from synclip.audio.mel import mel_window, syncnet_mel
from synclip.audio.tokens import frame_tokens
from synclip.audio.whisper import cached_whisper_features, encoder_fingerprint
from synclip.config import UNetStageParams
from synclip.constants import WHISPER_TOKENS_PER_FRAME
from synclip.face.mask import load_mask
from synclip.files import atomic_path
from synclip.images import to_unit, unit_range
from synclip.log import track
from synclip.media.decode import iter_frames, read_audio
from synclip.nn.vae import downsampling, scale_latents, scale_spread
from synclip.runtime import frozen_autocast

log = logging.getLogger(__name__)

LATENTS_VERSION = "synclip-unet-latents-v1"
POSTERIORS = ("mean", "std", "masked_mean", "masked_std")


@dataclass
class UNetBatch:
    """One batch of training windows (`synclip.data.unet_windows`), latents already scaled."""

    latents: torch.Tensor  # (B, 4, F, h, w) target frames
    masked_latents: torch.Tensor  # (B, 4, F, h, w) target frames × mask
    reference_latents: torch.Tensor  # (B, 4, F, h, w) a non-overlapping window of the same clip
    mask: torch.Tensor  # (B, 1, F, h, w) 1 keep, 0 generate
    audio: torch.Tensor  # (B, F, S, D) Whisper tokens
    mel: torch.Tensor  # (B, 1, 80, W) SyncNet mel of the window
    pixels: torch.Tensor | None = None  # (B, 3, F, H', W') the target frames' `pixel_region`, for LPIPS/TREPA

    def to(self, device: torch.device) -> UNetBatch:
        moved = {k: (v.to(device) if v is not None else None) for k, v in vars(self).items()}
        return UNetBatch(**moved)

    def unet_input(self, noisy: torch.Tensor) -> torch.Tensor:
        """The 13 channels in LatentSync's order: z_t, mask, masked latent, reference latent."""
        return torch.cat([noisy, self.mask, self.masked_latents, self.reference_latents], dim=1)


def region_slices(
    region: tuple[float, float, float, float], latent_size: tuple[int, int], margin: int = 1
) -> tuple[tuple[slice, slice], tuple[slice, slice]]:
    """(latent rows/cols to decode, pixel rows/cols of `region` within that decode, in latent cells × 8/… units).

    `region` (top, bottom, left, right) fractions is snapped outward to whole latent cells; the decode
    takes `margin` more cells on each side (clipped), so the decoder's border does not touch the region.
    Pixel slices are returned in latent cells; multiply by the VAE's factor.
    """
    h, w = latent_size
    top, bottom, left, right = region
    r0, r1 = math.floor(top * h), math.ceil(bottom * h)
    c0, c1 = math.floor(left * w), math.ceil(right * w)
    d0, d1 = max(r0 - margin, 0), min(r1 + margin, h)
    e0, e1 = max(c0 - margin, 0), min(c1 + margin, w)
    return (slice(d0, d1), slice(e0, e1)), (slice(r0 - d0, r1 - d0), slice(c0 - e0, c1 - e0))


def region_pixels(
    region: tuple[float, float, float, float], latent_size: tuple[int, int], factor: int
) -> tuple[slice, slice]:
    """Pixel rows/cols of the full face that `region` covers after snapping to latent cells."""
    h, w = latent_size
    top, bottom, left, right = region
    rows = slice(math.floor(top * h) * factor, math.ceil(bottom * h) * factor)
    cols = slice(math.floor(left * w) * factor, math.ceil(right * w) * factor)
    return rows, cols


@dataclass
class WindowClip:
    """One processed clip in memory, as the UNet trainer reads it."""

    name: str
    identity: str
    posteriors: dict[str, torch.Tensor]  # POSTERIORS → (T, 4, h, w), scaled by the VAE's scaling factor
    features: torch.Tensor  # (T_w, L, D) Whisper states, 50 per second
    mel: torch.Tensor  # (80, M) SyncNet mel
    shift: int  # audio of frame t is at t + shift (sync_filter's audio_shift)
    pixels: torch.Tensor | None  # (T, 3, H', W') uint8 `pixel_region` of each frame, for LPIPS/TREPA

    @property
    def num_frames(self) -> int:
        return self.posteriors["mean"].shape[0]

    @property
    def audio_frames(self) -> int:
        """Video frames whose start lies inside the audio (2i < T_w)."""
        return math.ceil(self.features.shape[0] / WHISPER_TOKENS_PER_FRAME)


@dataclass(frozen=True)
class Window:
    clip: int  # index into the sampler's clips
    start: int  # first target frame
    reference: int  # first reference frame, |reference − start| >= max(F, gap)


def target_starts(clip: WindowClip, num_frames: int, gap: int = 0) -> np.ndarray:
    """Target starts s whose frames and shifted audio fit and that leave room for a reference window
    starting at least max(F, gap) frames before or after s."""
    gap = max(num_frames, gap)
    first = max(0, -clip.shift)
    last = min(clip.num_frames - num_frames, clip.audio_frames - num_frames - clip.shift)
    starts = np.arange(first, last + 1)
    room = (starts >= gap) | (starts + gap + num_frames <= clip.num_frames)
    return starts[room]


def reference_starts(clip: WindowClip, start: int, num_frames: int, gap: int = 0) -> np.ndarray:
    """Reference starts r in [0, T − F] with |r − s| >= max(F, gap) (no frame in common with the target)."""
    starts = np.arange(0, clip.num_frames - num_frames + 1)
    return starts[np.abs(starts - start) >= max(num_frames, gap)]


class WindowSampler:
    """Random windows of `clips` (target, reference ≥ max(F, `gap`) frames away) and their batches.

    A target is F frames of a clip with their VAE latents and masked latents; its reference is a window
    of the same clip at least G ≥ F frames away (G = `reference_gap`; F = G is LatentSync's
    non-overlapping window). The gap matters when F is small: stage 1 of the tiny profile trains on
    single frames, and a reference one frame away shows nearly the mouth to be generated, which the
    UNet then copies instead of reading the audio.
    """

    def __init__(
        self, clips: list[WindowClip], num_frames: int, rng: np.random.Generator, gap: int = 0
    ) -> None:
        self.num_frames = num_frames
        self.gap = gap
        self.rng = rng
        self.clips = [c for c in clips if len(target_starts(c, num_frames, gap))]
        self.skipped = [c.name for c in clips if not len(target_starts(c, num_frames, gap))]
        if self.skipped:
            log.info(
                "%d clips too short for %d-frame target + reference windows %d frames apart: %s",
                len(self.skipped),
                num_frames,
                max(num_frames, gap),
                ", ".join(self.skipped[:5]),
            )
        if not self.clips:
            raise ValueError(
                f"no clip holds two {num_frames}-frame windows {max(num_frames, gap)} frames apart"
            )
        size = self.clips[0].posteriors["mean"].shape[-2:]
        self.mask = load_mask(size[0])  # (1, h, w), nearest-resized as LatentSync's latent mask
        assert self.mask.shape[-2:] == size, (self.mask.shape, size)

    def draw(self) -> Window:
        index = int(self.rng.integers(len(self.clips)))
        clip = self.clips[index]
        start = int(self.rng.choice(target_starts(clip, self.num_frames, self.gap)))
        reference = int(self.rng.choice(reference_starts(clip, start, self.num_frames, self.gap)))
        return Window(index, start, reference)

    def batch(self, windows: list[Window], sample: bool = True) -> UNetBatch:
        """Windows → a batch; latents are posterior samples (torch's global RNG), or the means if not `sample`."""
        frames = self.num_frames

        def latent(clip: WindowClip, first: int, kind: str) -> torch.Tensor:
            mean = clip.posteriors[kind][first : first + frames]
            if sample:
                std = clip.posteriors[kind.replace("mean", "std")][first : first + frames]
                mean = mean + std * torch.randn(mean.shape)
            return rearrange(mean, "f c h w -> c f h w")

        parts: dict[str, list[torch.Tensor]] = {
            k: [] for k in ("latents", "masked", "reference", "audio", "mel", "pixels")
        }
        for window in windows:
            clip = self.clips[window.clip]
            parts["latents"].append(latent(clip, window.start, "mean"))
            parts["masked"].append(latent(clip, window.start, "masked_mean"))
            parts["reference"].append(latent(clip, window.reference, "mean"))
            parts["audio"].append(
                frame_tokens(
                    clip.features, range(window.start + clip.shift, window.start + clip.shift + frames)
                )
            )
            parts["mel"].append(mel_window(clip.mel, window.start + clip.shift, frames)[None])
            if clip.pixels is not None:
                pixels = unit_range(clip.pixels[window.start : window.start + frames])
                parts["pixels"].append(rearrange(pixels, "f c h w -> c f h w"))
        latents = torch.stack(parts["latents"])  # (B, 4, F, h, w)
        batch, _, _, height, width = latents.shape
        return UNetBatch(
            latents=latents,
            masked_latents=torch.stack(parts["masked"]),
            reference_latents=torch.stack(parts["reference"]),
            mask=self.mask[None, :, None].expand(batch, 1, frames, height, width).contiguous(),
            audio=torch.stack(parts["audio"]).float(),  # (B, F, S, D)
            mel=torch.stack(parts["mel"]),  # (B, 1, 80, W)
            pixels=torch.stack(parts["pixels"]) if parts["pixels"] else None,
        )


# --- loading ---------------------------------------------------------------------------------------


def training_rows(manifest: pd.DataFrame, stage: UNetStageParams) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(train rows, val rows) of a stage: at most `max_clips` train clips spread evenly over the sorted
    names (0: all), and the first `val_windows` val clips."""
    train = manifest[manifest["split"] == "train"].sort_values("clip")
    if stage.max_clips:
        train = train.iloc[:: max(1, len(train) // stage.max_clips)].iloc[: stage.max_clips]
    val = manifest[manifest["split"] == "val"].sort_values("clip").iloc[: stage.val_windows]
    return train, val


def vae_fingerprint(vae: torch.nn.Module) -> str:
    """sha256 over the VAE's config and weights: what the cached posteriors depend on."""
    digest = hashlib.sha256(LATENTS_VERSION.encode())
    digest.update(json.dumps(dict(vae.config), sort_keys=True, default=str).encode())
    for name, tensor in sorted(vae.state_dict().items()):
        digest.update(f"{name} {tensor.dtype} {tuple(tensor.shape)}".encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


@torch.no_grad()
def encode_posteriors(
    vae: torch.nn.Module, frames: np.ndarray, precision: str = "fp32", batch: int = 32
) -> dict[str, torch.Tensor]:
    """uint8 (T, H, W, 3) → POSTERIORS (T, C, h, w), unscaled, on the CPU; the mask is the shipped one.
    `precision`: vae.precision (bf16 autocast on a CPU with native bf16)."""
    device = next(vae.parameters()).device
    mask = load_mask(frames.shape[1]).to(device)  # (1, H, W)
    out: dict[str, list[torch.Tensor]] = {k: [] for k in POSTERIORS}
    for i in range(0, len(frames), batch):
        images = to_unit(frames[i : i + batch], device)
        for prefix, pixels in (("", images), ("masked_", images * mask)):  # masked: the region is 0 (grey)
            with frozen_autocast(device, precision):
                posterior = vae.encode(pixels).latent_dist
            out[f"{prefix}mean"].append(posterior.mean.float().cpu())
            out[f"{prefix}std"].append(posterior.std.float().cpu())
    return {k: torch.cat(v).contiguous() for k, v in out.items()}


def cached_posteriors(
    path: Path, vae: torch.nn.Module, cache_dir: Path | None, fingerprint: str, precision: str = "fp32"
) -> tuple[dict[str, torch.Tensor], np.ndarray | None]:
    """(POSTERIORS of every frame of the clip at `path`, the frames if they were decoded, else None).

    The VAE is frozen, so every frame is encoded once (frame and frame × mask) and the posterior's mean
    and std are kept: a training batch draws `mean + std·ε` — what LatentSync's per-step
    `latent_dist.sample()` gives, without running the encoder per step; validation uses the means. The
    posteriors are cached on disk per clip, keyed by the VAE's weights, the mask and the clip's bytes,
    so stage 2 reuses stage 1's encodings.
    """
    from safetensors.torch import load_file, save_file

    key = None
    if cache_dir is not None:
        digest = hashlib.sha256(f"{LATENTS_VERSION} {fingerprint} {precision} ".encode())
        digest.update(load_mask(256).numpy().tobytes())
        digest.update(path.read_bytes())
        key = digest.hexdigest()
        file = cache_dir / f"{key}.safetensors"
        if file.is_file():
            stored = load_file(file)
            if set(stored) == set(POSTERIORS):
                return stored, None
            log.warning("%s holds %s, not the posteriors; re-encoding", file, sorted(stored))
    frames = np.stack(list(iter_frames(path)))
    posteriors = encode_posteriors(vae, frames, precision)
    if cache_dir is not None:
        with atomic_path(cache_dir / f"{key}.safetensors") as tmp:
            save_file(posteriors, str(tmp), metadata={"format": LATENTS_VERSION})
    return posteriors, frames


def load_window_clips(
    manifest: pd.DataFrame,
    clips_dir: str | Path,
    *,
    vae: torch.nn.Module,
    vae_precision: str,
    whisper: torch.nn.Module,
    whisper_cache: str | Path,
    latent_cache: str | Path | None,
    pixel_region: tuple[float, float, float, float] | None,
    description: str,
) -> list[WindowClip]:
    """Every clip of `manifest` (rows with clip, identity and optionally audio_shift) in memory.

    `pixel_region` keeps that part of each frame (snapped to latent cells) for pixel losses; None keeps none.
    Latents come from `cached_posteriors`. Audio: Whisper tokens (`cached_whisper_features`) and the
    SyncNet mel, both read at frame t + `audio_shift` (the sync_filter correction).
    """
    clips_dir = Path(clips_dir)
    latent_cache = Path(latent_cache) if latent_cache is not None else None
    vae_key = vae_fingerprint(vae)
    whisper_key = encoder_fingerprint(whisper)
    factor = downsampling(vae)
    clips = []
    for row in track(list(manifest.itertuples()), description, unit="clips"):
        path = clips_dir / f"{row.clip}.mp4"
        raw, frames = cached_posteriors(path, vae, latent_cache, vae_key, vae_precision)
        posteriors = {
            k: scale_latents(vae, v) if k.endswith("mean") else scale_spread(vae, v) for k, v in raw.items()
        }
        pixels = None
        if pixel_region is not None:
            frames = frames if frames is not None else np.stack(list(iter_frames(path)))
            rows, cols = region_pixels(pixel_region, tuple(posteriors["mean"].shape[-2:]), factor)
            pixels = rearrange(torch.from_numpy(frames[:, rows, cols]), "t h w c -> t c h w").contiguous()
        samples = read_audio(path)
        audio_shift = getattr(row, "audio_shift", 0)
        clips.append(
            WindowClip(
                name=row.clip,
                identity=row.identity,
                posteriors=posteriors,
                features=cached_whisper_features(samples, whisper, whisper_cache, fingerprint=whisper_key),
                mel=syncnet_mel(samples),
                shift=0 if pd.isna(audio_shift) else int(audio_shift),
                pixels=pixels,
            )
        )
    return clips
