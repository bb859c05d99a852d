"""LipSyncPipeline: aligned faces + per-frame audio tokens in, lip-synced aligned faces out (tensors only).

LatentSync's sampler (reference §7): the lower half of every aligned face (mask = 0) is inpainted by
DDIM from one Gaussian draw shared by every frame of the video (with η > 0, one more shared draw per
step: on the tiny model, η = 0 drifts away from the data in the first steps and never returns),
conditioned on the frame's own unmasked face as the reference (§2.2) and on its audio tokens, with
audio classifier-free guidance (null audio = zeros). Files, decoding and paste-back live in
`synclip.lipsync`.

Streaming: frames are generated in chunks of F (`num_frames`) frames; consecutive chunks overlap by
`overlap` frames, which are generated twice and cross-faded linearly (weight of the newer chunk
(k + 1)/(overlap + 1) for the k-th shared frame), so seams do not jump. The last chunk slides back
to end at the last frame, so every chunk has F frames when the video has at least F. Memory is
that of one chunk, whatever the video's length. A UNet whose frames are independent (no motion
modules, per-frame GroupNorm) gives the same output chunked or not.

Latents are the VAE posterior's mean (`latent_dist.mode()`), not a sample as in the reference: a
per-frame sample would add noise that depends on how frames are chunked and batched.

Glossary: F frames, R aligned face size, C latent channels, h/w latent size, S audio tokens per
frame, D audio width, L Whisper states per token.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from collections import deque
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from einops import rearrange, repeat

import synclip
from synclip.artifacts import CheckpointError
from synclip.errors import UserError
from synclip.face.mask import load_mask, mask_path

log = logging.getLogger(__name__)

KIND = "synclip-pipeline"
PIPELINE_FILE = "pipeline.json"
UNET_DIR, VAE_DIR, WHISPER_DIR, SCHEDULER_DIR, MASK_FILE = "unet", "vae", "whisper", "scheduler", "mask.png"
# LatentSync's configs/scheduler_config.json (reference §2.6); "leading" spacing: 20 steps = 951 … 1
SCHEDULER_CONFIG: dict[str, Any] = {
    "num_train_timesteps": 1000,
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "clip_sample": False,
    "set_alpha_to_one": False,
    "steps_offset": 1,
    "prediction_type": "epsilon",
    "timestep_spacing": "leading",
}


@dataclass(frozen=True)
class PipelineConfig:
    """What travels with a packaged model in `pipeline.json`, besides the networks."""

    resolution: int  # R, side of the aligned face the UNet was trained on
    num_frames: int = 16  # F, frames per chunk
    overlap: int = 4  # frames shared by consecutive chunks (cross-faded)
    steps: int = 20  # default DDIM steps
    guidance: float = 1.5  # default audio guidance scale (1.0: no unconditional pass)
    seed: int = 1247  # default seed of the shared initial noise (LatentSync's)
    eta: float = 0.0  # DDIM's η: 0 deterministic (LatentSync), 1 ancestral (fresh shared noise each step)

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        if self.resolution <= 0:
            raise ValueError(f"resolution must be positive, got {self.resolution}")
        if self.num_frames < 1:
            raise ValueError(f"num_frames must be >= 1, got {self.num_frames}")
        if not 0 <= self.overlap <= self.num_frames // 2:
            raise ValueError(
                f"overlap must be in [0, num_frames // 2 = {self.num_frames // 2}], got {self.overlap}"
            )
        check_sampling(self.steps, self.guidance)
        if not 0.0 <= self.eta <= 1.0:
            raise ValueError(f"eta must be in [0, 1], got {self.eta}")

    @staticmethod
    def from_dict(data: Mapping[str, Any]) -> PipelineConfig:
        known = {f.name: f.type for f in fields(PipelineConfig)}
        unknown = sorted(set(data) - set(known))
        if unknown:
            raise ValueError(f"unknown pipeline config keys {unknown}")
        for key, value in data.items():
            kind = float if known[key] == "float" else int
            if (
                isinstance(value, bool)
                or not isinstance(value, int | float)
                or (kind is int and not isinstance(value, int))
            ):
                raise ValueError(f"pipeline config {key}: {value!r} is not {known[key]}")
        return PipelineConfig(**data)


def check_sampling(steps: int, guidance: float) -> None:
    if not isinstance(steps, int) or not 1 <= steps <= SCHEDULER_CONFIG["num_train_timesteps"]:
        raise UserError(
            f"steps must be an integer in [1, {SCHEDULER_CONFIG['num_train_timesteps']}], got {steps!r}"
        )
    if not guidance >= 1.0:
        raise UserError(f"guidance must be >= 1.0 (1.0 turns guidance off), got {guidance!r}")


class LipSyncPipeline:
    """UNet + VAE + Whisper encoder + DDIM config + mask: aligned faces and audio tokens → new aligned faces.

    The modules are placed (device, dtype) by the caller before construction; the pipeline follows
    the UNet's device and dtype.
    """

    def __init__(
        self,
        unet: torch.nn.Module,
        vae: torch.nn.Module,
        audio_encoder: torch.nn.Module | None,
        mask: torch.Tensor,
        config: PipelineConfig,
        scheduler_config: Mapping[str, Any] = SCHEDULER_CONFIG,
    ) -> None:
        latent = vae.config.latent_channels
        if unet.config.in_channels != 3 * latent + 1 or unet.config.out_channels != latent:
            raise CheckpointError(
                f"UNet in/out channels {unet.config.in_channels}/{unet.config.out_channels} do not fit a VAE "
                f"with {latent} latent channels (expected {3 * latent + 1}/{latent})"
            )
        if audio_encoder is not None and audio_encoder.width != unet.config.cross_attention_dim:
            raise CheckpointError(
                f"audio encoder width {audio_encoder.width} != UNet cross_attention_dim "
                f"{unet.config.cross_attention_dim}"
            )
        if mask.shape != (1, config.resolution, config.resolution):
            raise ValueError(
                f"mask {tuple(mask.shape)}, expected (1, {config.resolution}, {config.resolution})"
            )
        self.unet, self.vae, self.audio_encoder = unet.eval(), vae.eval(), audio_encoder
        self.config = config
        self.scheduler_config = dict(scheduler_config)
        parameter = next(unet.parameters())
        self.device, self.dtype = parameter.device, parameter.dtype
        self.mask = mask.to(self.device, self.dtype)  # (1, R, R), 1 keep, 0 generate

    # --- loading ---------------------------------------------------------------------------------

    @classmethod
    def from_pretrained(
        cls, folder: str | Path, device: torch.device | None = None, dtype: torch.dtype = torch.float32
    ) -> LipSyncPipeline:
        """A packaged model folder (see `assemble`), loaded strictly onto `device` in `dtype`."""
        from diffusers import DDIMScheduler

        from synclip.audio.whisper import load_whisper_encoder
        from synclip.nn.unet import load_unet
        from synclip.train.vae import load_vae

        folder = Path(folder)
        device = device or torch.device("cpu")
        config_path = folder / PIPELINE_FILE
        if not config_path.is_file():
            raise UserError(
                f"{folder}: no {PIPELINE_FILE}; not a packaged synclip model (see `synclip lipsync --model`)"
            )
        try:
            data = json.loads(config_path.read_text())
        except json.JSONDecodeError as error:
            raise CheckpointError(f"{config_path}: not JSON ({error})") from None
        if data.pop("kind", None) != KIND:
            raise CheckpointError(f"{config_path}: kind is not {KIND!r}")
        data.pop("synclip_version", None)
        try:
            config = PipelineConfig.from_dict(data)
        except (ValueError, TypeError) as error:
            raise CheckpointError(f"{config_path}: {error}") from None
        unet = load_unet(folder / UNET_DIR).to(device, dtype)
        vae = load_vae(folder / VAE_DIR, param=f"{folder / VAE_DIR}").to(device, dtype)
        encoder = load_whisper_encoder(
            folder / WHISPER_DIR, param=f"{folder / WHISPER_DIR}", device=device, dtype=dtype
        )
        scheduler = DDIMScheduler.from_pretrained(folder / SCHEDULER_DIR, local_files_only=True)
        mask = load_mask(config.resolution, folder / MASK_FILE)
        return cls(unet, vae, encoder, mask, config, dict(scheduler.config))

    # --- audio -----------------------------------------------------------------------------------

    def audio_features(self, samples: np.ndarray) -> torch.Tensor:
        """(N,) 16 kHz mono → (T_w, L, D) Whisper states on the CPU (seamless on long audio)."""
        from synclip.audio.whisper import whisper_features

        if self.audio_encoder is None:
            raise ValueError("this pipeline has no audio encoder; pass audio tokens instead")
        return whisper_features(samples, self.audio_encoder).float().cpu()

    # --- sampling --------------------------------------------------------------------------------

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """(F, 3, R, R) in [−1, 1] → (F, C, h, w) scaled latents (posterior mean)."""
        latents = self.vae.encode(images).latent_dist.mode()
        shift = self.vae.config.shift_factor or 0.0
        return (latents - shift) * self.vae.config.scaling_factor

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """(F, C, h, w) scaled latents → (F, 3, R, R) in [−1, 1]."""
        shift = self.vae.config.shift_factor or 0.0
        return self.vae.decode(latents / self.vae.config.scaling_factor + shift).sample.clamp(-1, 1)

    def noise(self, seed: int, latent_shape: tuple[int, int, int], steps: int = 0) -> torch.Tensor:
        """(1 + steps, C, h, w): the Gaussian draw every frame starts from, then one per DDIM step (η > 0).

        Every frame of every chunk gets the same draws, as the initial noise, so chunking cannot change
        them; drawn on the CPU, so they are the same on any device.
        """
        generator = torch.Generator().manual_seed(seed)
        return torch.randn((1 + steps, *latent_shape), generator=generator).to(self.device, self.dtype)

    @torch.no_grad()
    def generate(
        self,
        faces: torch.Tensor,
        audio: torch.Tensor,
        noise: torch.Tensor,
        steps: int,
        guidance: float,
        eta: float = 0.0,
    ) -> torch.Tensor:
        """One chunk: faces (F, 3, R, R) in [−1, 1], audio tokens (F, S, D), noise (C, h, w) or, for
        η > 0, (1 + steps, C, h, w) (see `noise`) → (F, 3, R, R).

        Pixels the mask keeps are the input's; only the masked region is generated.
        """
        from diffusers import DDIMScheduler

        frames = faces.shape[0]
        faces = faces.to(self.device, self.dtype)
        audio = audio.to(self.device, self.dtype)[None]  # (1, F, S, D)
        reference = self.encode(faces)  # (F, C, h, w)
        masked = self.encode(faces * self.mask)
        latent_mask = F.interpolate(
            self.mask[None], size=reference.shape[-2:], mode="nearest"
        )  # (1, 1, h, w)
        condition = torch.cat([latent_mask.expand(frames, -1, -1, -1), masked, reference], dim=1)
        condition = rearrange(condition, "f c h w -> 1 c f h w")
        scheduler = DDIMScheduler.from_config(self.scheduler_config)
        scheduler.set_timesteps(steps, device=self.device)
        draws = noise if noise.ndim == 4 else noise[None]  # (1 + steps, C, h, w)
        if eta > 0 and len(draws) < 1 + steps:
            raise ValueError(f"η = {eta} needs 1 + {steps} noise draws, got {len(draws)}")
        shared = repeat(draws, "n c h w -> n 1 c f h w", f=frames)
        latents = shared[0] * scheduler.init_noise_sigma
        guided = guidance != 1.0
        audio_in = torch.cat([torch.zeros_like(audio), audio]) if guided else audio
        for index, t in enumerate(scheduler.timesteps):
            sample = torch.cat([latents, condition], dim=1)  # (1, 13, F, h, w)
            if guided:
                uncond, cond = self.unet(torch.cat([sample, sample]), t, audio_in).chunk(2)
                eps = uncond + guidance * (cond - uncond)
            else:
                eps = self.unet(sample, t, audio_in)
            variance = shared[1 + index] if eta > 0 else None
            latents = scheduler.step(eps, t, latents, eta=eta, variance_noise=variance).prev_sample
        generated = self.decode(rearrange(latents, "1 c f h w -> f c h w"))
        return generated * (1 - self.mask) + faces * self.mask

    def stream(
        self,
        items: Iterable[tuple[torch.Tensor, torch.Tensor]],
        steps: int | None = None,
        guidance: float | None = None,
        seed: int | None = None,
    ) -> Iterator[torch.Tensor]:
        """(face (3, R, R), audio tokens (S, D)) per frame → generated face (3, R, R) per frame, in order.

        Holds at most F inputs and `overlap` outputs (see the module docstring for the chunking).
        """
        steps = self.config.steps if steps is None else steps
        guidance = self.config.guidance if guidance is None else guidance
        seed = self.config.seed if seed is None else seed
        check_sampling(steps, guidance)
        size, overlap = self.config.num_frames, self.config.overlap
        history: deque[tuple[torch.Tensor, torch.Tensor]] = deque(maxlen=size)
        pending: list[torch.Tensor] = []  # the last chunk's tail, waiting for the next chunk
        noise: torch.Tensor | None = None
        fresh = 0

        def run() -> torch.Tensor:
            nonlocal noise
            faces = torch.stack([face for face, _ in history])
            audio = torch.stack([tokens for _, tokens in history])
            self._check(faces, audio)
            if noise is None:
                with torch.no_grad():
                    shape = self.encode(faces[:1].to(self.device, self.dtype)).shape[1:]
                noise = self.noise(seed, tuple(shape), steps if self.config.eta > 0 else 0)
            return self.generate(faces, audio, noise, steps, guidance, self.config.eta)

        def merge(out: torch.Tensor, last: bool) -> Iterator[torch.Tensor]:
            nonlocal pending
            first = len(out) - fresh - len(pending)
            for k, old in enumerate(pending):
                yield torch.lerp(old, out[first + k], (k + 1) / (len(pending) + 1))
            new = list(out[len(out) - fresh :])
            keep = 0 if last else overlap
            yield from new[: len(new) - keep]
            pending = new[len(new) - keep :]

        for total, item in enumerate(items, 1):
            history.append(item)
            fresh += 1
            if fresh == (size if total == fresh else size - overlap):
                yield from merge(run(), last=False)
                fresh = 0
        if fresh:
            yield from merge(run(), last=True)
        else:
            yield from pending

    def __call__(
        self,
        faces: torch.Tensor,
        audio: torch.Tensor,
        steps: int | None = None,
        guidance: float | None = None,
        seed: int | None = None,
    ) -> torch.Tensor:
        """faces (F, 3, R, R) in [−1, 1], audio tokens (F, S, D) → generated faces (F, 3, R, R)."""
        self._check(faces, audio)
        return torch.stack(list(self.stream(zip(faces, audio, strict=True), steps, guidance, seed)))

    def _check(self, faces: torch.Tensor, audio: torch.Tensor) -> None:
        r = self.config.resolution
        if faces.ndim != 4 or faces.shape[1:] != (3, r, r):
            raise ValueError(f"faces must be (F, 3, {r}, {r}), got {tuple(faces.shape)}")
        d = self.unet.config.cross_attention_dim
        if audio.ndim != 3 or audio.shape[0] != faces.shape[0] or audio.shape[2] != d:
            raise ValueError(f"audio tokens must be (F={faces.shape[0]}, S, D={d}), got {tuple(audio.shape)}")


# --- packaging -------------------------------------------------------------------------------------


def assemble(
    folder: str | Path,
    unet: torch.nn.Module,
    vae: torch.nn.Module,
    whisper_dir: str | Path,
    config: PipelineConfig,
    mask: str | Path | None = None,
    scheduler_config: Mapping[str, Any] = SCHEDULER_CONFIG,
) -> Path:
    """Write a packaged model folder atomically: unet/, vae/, whisper/, scheduler/, mask.png, pipeline.json.

    Everything is written into a temporary sibling and swapped in at the end (the old folder, if
    any, is removed only after), so a reader never sees half a model.
    """
    from diffusers import DDIMScheduler

    from synclip.nn.unet import save_unet
    from synclip.train.vae import save_vae

    folder = Path(folder)
    whisper_dir = Path(whisper_dir)
    if not (whisper_dir / "config.json").is_file():
        raise UserError(f"{whisper_dir}: not a transformers Whisper folder (no config.json)")
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=folder.parent))
    old = folder.with_name(f".{folder.name}.old")
    try:
        save_unet(tmp / UNET_DIR, unet)
        save_vae(vae, tmp / VAE_DIR)
        shutil.copytree(whisper_dir, tmp / WHISPER_DIR, ignore=shutil.ignore_patterns(".*"))
        DDIMScheduler.from_config(dict(scheduler_config)).save_pretrained(tmp / SCHEDULER_DIR)
        shutil.copyfile(Path(mask) if mask is not None else mask_path(), tmp / MASK_FILE)
        load_mask(config.resolution, tmp / MASK_FILE)  # fails early on a bad image
        meta = {"kind": KIND, "synclip_version": synclip.__version__, **asdict(config)}
        (tmp / PIPELINE_FILE).write_text(json.dumps(meta, indent=1, sort_keys=True))
        shutil.rmtree(old, ignore_errors=True)
        if folder.exists():
            os.replace(folder, old)
        os.replace(tmp, folder)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder
