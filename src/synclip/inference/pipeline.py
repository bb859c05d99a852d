"""LipSyncPipeline: aligned faces + per-frame audio tokens in, lip-synced aligned faces out (tensors only)."""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
import torch.nn.functional as F
from einops import rearrange, repeat

from synclip.artifacts import CheckpointError
from synclip.config import ConfigError, InferenceParams, check_sampling, from_dict
from synclip.constants import NOISE_SCHEDULE
from synclip.nn.latent_norm import LatentNorm
from synclip.nn.vae import scale_latents, unscale_latents
from synclip.runtime import frozen_autocast

# LatentSync's DDIM (reference §2.6): the training betas, "leading" spacing: 20 steps = 951 … 1
SCHEDULER_CONFIG: dict[str, Any] = {
    **NOISE_SCHEDULE,
    "set_alpha_to_one": False,
    "steps_offset": 1,
    "timestep_spacing": "leading",
}


@dataclass(frozen=True)
class PipelineConfig(InferenceParams):
    """What travels with a packaged model in `pipeline.json`, besides the networks: the sampler's
    defaults (`InferenceParams`) and R, the side of the aligned face the UNet was trained on."""

    resolution: int = field(kw_only=True)
    vae_precision: Literal["fp32", "bf16"] = field(kw_only=True, default="fp32")  # vae.precision, on the CPU

    def __post_init__(self) -> None:
        self.validate()

    def validate(self, key: str = "pipeline config") -> None:
        if self.resolution <= 0:
            raise ConfigError(f"{key}.resolution must be positive, got {self.resolution}")
        super().validate(key)

    @staticmethod
    def from_dict(data: Mapping[str, Any]) -> PipelineConfig:
        """From `pipeline.json` values; unknown keys and wrong types are errors."""
        return from_dict(PipelineConfig, data, source="pipeline config")


def _noised(scheduler, latents: torch.Tensor, noise: torch.Tensor, timestep: int | None) -> torch.Tensor:
    """sqrt(ᾱ)·latents + sqrt(1 − ᾱ)·noise at `timestep`; None: after the last step (DDIM's final ᾱ)."""
    alpha_bar = scheduler.final_alpha_cumprod if timestep is None else scheduler.alphas_cumprod[timestep]
    alpha_bar = alpha_bar.to(latents.device, torch.float64)
    return (alpha_bar.sqrt() * latents + (1 - alpha_bar).sqrt() * noise).to(latents.dtype)


class LipSyncPipeline:
    """UNet + VAE + Whisper encoder + DDIM config + mask: aligned faces and audio tokens → new aligned faces.

    LatentSync's sampler (reference §7): the lower half of every aligned face (mask = 0) is inpainted by
    DDIM from one Gaussian draw shared by every frame of the video (with η > 0, one more shared draw per
    step: on the tiny model, η = 0 drifts away from the data in the first steps and never returns;
    docs/experiments/2026-12-01-ddim-eta.md), conditioned on the frame's own unmasked face as the
    reference (§2.2) and on its audio tokens, with audio classifier-free guidance (null audio = zeros).
    With `kept_cells: replaced` (synclip's) the latent cells the mask keeps do not drift from the input's
    own: after every step they are its latents noised to the next step's level with the initial draw.
    `noise_scale` < 1 scales the per-step draws of η > 0 down (not the initial one): a lower-temperature
    chain whose mouth varies less from seed to seed.
    Files, decoding and paste-back live in `synclip.inference.lipsync`, packaged models in
    `synclip.inference.package`.

    The modules are placed (device, dtype) by the caller before construction; the pipeline follows
    the UNet's device and dtype.

    Glossary: F frames, R aligned face size, C latent channels, h/w latent size, S audio tokens per
    frame, D audio width, L Whisper states per token.
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
        # what the UNet was trained to output (ε or v) decides how DDIM reads it
        self.scheduler_config = {**scheduler_config, "prediction_type": unet.config.prediction_type}
        parameter = next(unet.parameters())
        self.device, self.dtype = parameter.device, parameter.dtype
        self.mask = mask.to(self.device, self.dtype)  # (1, R, R), 1 keep, 0 generate

    # --- sampling --------------------------------------------------------------------------------

    def encode(self, images: torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
        """(F, 3, R, R) in [−1, 1] → (F, C, h, w) scaled latents: the posterior mean, or with `noise`
        (F, C, h, w) the posterior sample mean + σ · noise (LatentSync's `latent_dist.sample`).

        synclip's default is the mean (`latents: mean`): a sample adds noise to the condition that
        LatentSync's published weights were trained with, but synclip's own were not.
        """
        with frozen_autocast(self.device, self.config.vae_precision):
            posterior = self.vae.encode(images).latent_dist
        mean, std = posterior.mean.to(self.dtype), posterior.std.to(self.dtype)
        if noise is None:
            return scale_latents(self.vae, mean)
        if noise.shape != mean.shape:
            raise ValueError(f"posterior noise {tuple(noise.shape)}, expected {tuple(mean.shape)}")
        return scale_latents(self.vae, mean + std * noise.to(mean))

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """(F, C, h, w) scaled latents → (F, 3, R, R) in [−1, 1]."""
        with frozen_autocast(self.device, self.config.vae_precision):
            images = self.vae.decode(unscale_latents(self.vae, latents)).sample
        return images.to(self.dtype).clamp(-1, 1)

    def condition(
        self, faces: torch.Tensor, posterior_noise: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """faces (F, 3, R, R) in [−1, 1] → the latents of the masked faces and of the faces as the
        reference, (F, C, h, w) each; `posterior_noise` as in `generate`."""
        faces = faces.to(self.device, self.dtype)
        masked_noise, reference_noise = (None, None) if posterior_noise is None else posterior_noise
        return self.encode(faces * self.mask, masked_noise), self.encode(faces, reference_noise)

    def noise(self, seed: int, latent_shape: tuple[int, int, int], steps: int = 0) -> torch.Tensor:
        """(1 + steps, C, h, w): the Gaussian draw every frame starts from, then one per DDIM step (η > 0).

        Every frame of every chunk gets the same draws, as the initial noise, so chunking cannot change
        them; drawn on the CPU, so they are the same on any device.
        """
        return self._draw(torch.Generator().manual_seed(seed), (1 + steps, *latent_shape))

    def _draw(self, generator: torch.Generator, shape: tuple[int, ...]) -> torch.Tensor:
        """Standard normal of `shape` from a CPU generator, then onto the pipeline's device and dtype.

        Drawn in fp32, or in fp64 for an fp64 pipeline (LatentSync draws in the weights' dtype, so its
        fp32 and fp64 runs draw the same numbers as synclip's).
        """
        dtype = torch.float64 if self.dtype == torch.float64 else torch.float32
        return torch.randn(shape, generator=generator, dtype=dtype).to(self.device, self.dtype)

    @torch.no_grad()
    def generate(
        self,
        faces: torch.Tensor,
        audio: torch.Tensor,
        noise: torch.Tensor,
        steps: int,
        guidance: float,
        eta: float = 0.0,
        posterior_noise: torch.Tensor | None = None,
        encoded: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """One chunk: faces (F, 3, R, R) in [−1, 1], audio tokens (F, S, D), noise (C, h, w) or, for
        η > 0, (1 + steps, C, h, w) (see `noise`) → (F, 3, R, R).

        `posterior_noise` (2, F, C, h, w) makes the masked faces' latents ([0]) and the reference
        latents ([1]) posterior samples (`encode`), in the order LatentSync draws them; None: the means.
        `encoded`: the faces' (masked, reference) latents (F, C, h, w) each, already encoded (`condition`).
        Pixels the mask keeps are the input's; only the masked region is generated.
        """
        from diffusers import DDIMScheduler

        frames = faces.shape[0]
        faces = faces.to(self.device, self.dtype)
        audio = audio.to(self.device, self.dtype)[None]  # (1, F, S, D)
        if posterior_noise is not None and (posterior_noise.ndim != 5 or len(posterior_noise) != 2):
            raise ValueError(f"posterior noise must be (2, F, C, h, w), got {tuple(posterior_noise.shape)}")
        if encoded is not None and posterior_noise is not None:
            raise ValueError("pass either encoded latents or posterior noise, not both")
        if encoded is None:
            masked, reference = self.condition(faces, posterior_noise)  # (F, C, h, w) each
        else:
            masked, reference = (z.to(self.device, self.dtype) for z in encoded)
        latent_mask = F.interpolate(
            self.mask[None], size=reference.shape[-2:], mode="nearest"
        )  # (1, 1, h, w)
        masked, reference = (rearrange(z, "f c h w -> 1 c f h w") for z in (masked, reference))
        norm = None
        if self.unet.config.latent_norm == "reference":  # as the UNet was trained: synclip.nn.latent_norm
            norm = LatentNorm.of_reference(reference, latent_mask[:, :, None])
            masked, reference = norm.apply(masked), norm.apply(reference)
        keep = repeat(latent_mask, "1 1 h w -> 1 1 f h w", f=frames)
        condition = torch.cat([keep, masked, reference], dim=1)  # (1, 2C + 1, F, h, w)
        scheduler = DDIMScheduler.from_config(self.scheduler_config)
        scheduler.set_timesteps(steps, device=self.device)
        draws = noise if noise.ndim == 4 else noise[None]  # (1 + steps, C, h, w)
        if eta > 0 and len(draws) < 1 + steps:
            raise ValueError(f"η = {eta} needs 1 + {steps} noise draws, got {len(draws)}")
        shared = repeat(draws, "n c h w -> n 1 c f h w", f=frames)
        latents = shared[0] * scheduler.init_noise_sigma
        timesteps = [int(t) for t in scheduler.timesteps]
        replace = self.config.kept_cells == "replaced"
        if replace:  # the reference latents are the input frames' own
            latents = torch.lerp(latents, _noised(scheduler, reference, shared[0], timesteps[0]), keep)
        guided = guidance != 1.0
        audio_in = torch.cat([torch.zeros_like(audio), audio]) if guided else audio
        for index, t in enumerate(scheduler.timesteps):
            sample = torch.cat([latents, condition], dim=1)  # (1, 13, F, h, w)
            # bf16 autocast only for precision bf16 on a CPU with it (fp16 is the weights' dtype on CUDA);
            # the sampler's arithmetic stays in the latents' dtype
            with frozen_autocast(self.device, self.config.precision):
                output = self.unet(torch.cat([sample, sample]) if guided else sample, t, audio_in)
            output = output.to(latents.dtype)
            if guided:
                uncond, cond = output.chunk(2)
                output = uncond + guidance * (cond - uncond)  # ε or v: both are affine in x̂0
            variance = shared[1 + index] * self.config.noise_scale if eta > 0 else None
            latents = scheduler.step(output, t, latents, eta=eta, variance_noise=variance).prev_sample
            if replace:
                following = timesteps[index + 1] if index + 1 < len(timesteps) else None
                latents = torch.lerp(latents, _noised(scheduler, reference, shared[0], following), keep)
        latents = norm.invert(latents) if norm is not None else latents
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

        Holds at most F inputs (and their latents) and `overlap` outputs. Frames are generated in chunks
        of F (`num_frames`) frames; consecutive chunks overlap by `overlap` frames, which are generated
        twice and cross-faded linearly (weight of the newer chunk (k + 1)/(overlap + 1) for the k-th
        shared frame), so seams do not jump. With `last_chunk: slide` the last chunk slides back to end
        at the last frame, so every chunk has F frames when the video has at least F; with `short` it
        holds only the frames not yet generated and the `overlap` before them (LatentSync: overlap 0,
        the last chunk shorter). Memory is that of one chunk, whatever the video's length. A UNet whose
        frames are independent (no motion modules, per-frame GroupNorm) gives the same output chunked or
        not.

        With `latents: mean` each frame is encoded once, when it enters its first chunk; a frame the
        next chunk shares keeps its latents (with `sample`, every chunk encodes its frames with fresh
        posterior noise, as LatentSync does).

        Random numbers come from one CPU generator seeded with `seed`, in LatentSync's order: the
        initial noise (C, h, w) shared by every frame (for η > 0, with one more draw per step), then,
        with `latents: sample`, per chunk the posterior noise (F, C, h, w) of the masked faces and then
        of the reference faces.
        """
        steps = self.config.steps if steps is None else steps
        guidance = self.config.guidance if guidance is None else guidance
        seed = self.config.seed if seed is None else seed
        check_sampling(steps, guidance)
        size, overlap = self.config.num_frames, self.config.overlap
        history: deque[tuple[torch.Tensor, torch.Tensor]] = deque(maxlen=size)
        kept: deque[tuple[torch.Tensor, torch.Tensor]] = deque(maxlen=size)  # latents: mean
        pending: list[torch.Tensor] = []  # the last chunk's tail, waiting for the next chunk
        noise: torch.Tensor | None = None
        generator = torch.Generator().manual_seed(seed)
        fresh = 0
        once = self.config.latents == "mean"

        def run(last: bool) -> torch.Tensor:
            nonlocal noise
            chunk = list(history)
            if last and self.config.last_chunk == "short":
                chunk = chunk[len(chunk) - fresh - len(pending) :]
            faces = torch.stack([face for face, _ in chunk])
            audio = torch.stack([tokens for _, tokens in chunk])
            self._check(faces, audio)
            latents = None
            if once:  # encode the frames no earlier chunk encoded, keep the rest
                new = faces[len(faces) - fresh :]
                with torch.no_grad():
                    kept.extend(zip(*self.condition(new), strict=True))
                masked, reference = zip(*list(kept)[len(kept) - len(chunk) :], strict=True)
                latents = torch.stack(masked), torch.stack(reference)
            if noise is None:
                if latents is not None:
                    shape = latents[1].shape[1:]  # (C, h, w)
                else:
                    with torch.no_grad():
                        shape = self.encode(faces[:1].to(self.device, self.dtype)).shape[1:]
                noise = self._draw(generator, (1 + (steps if self.config.eta > 0 else 0), *shape))
            posterior = None
            if self.config.latents == "sample":  # two draws, as LatentSync makes them
                draws = [self._draw(generator, (len(chunk), *noise.shape[1:])) for _ in range(2)]
                posterior = torch.stack(draws)  # (2, F, C, h, w)
            return self.generate(
                faces, audio, noise, steps, guidance, self.config.eta, posterior, encoded=latents
            )

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
                yield from merge(run(last=False), last=False)
                fresh = 0
        if fresh:
            yield from merge(run(last=True), last=True)
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
