"""Training the UNet (LatentSync stages 1 and 2; the `train_unet_stage1` / `_stage2` stages): EMA weights,
audio dropout, trainable-module patterns, held-out validation and sample videos with their sync score."""

from __future__ import annotations

import dataclasses
import fnmatch
import hashlib
import logging
import re
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from synclip.artifacts import (
    UNET,
    CheckpointError,
    load_syncnet,
    load_unet_state,
    load_vae,
    load_whisper_encoder,
    read_config,
    read_weights,
    save_unet,
)
from synclip.config import Params, UNetStageParams
from synclip.data.manifest import read_manifest
from synclip.data.unet_windows import (
    UNetBatch,
    Window,
    WindowClip,
    WindowSampler,
    load_window_clips,
    training_rows,
)
from synclip.errors import UserError
from synclip.files import write_csv, write_json
from synclip.nn.syncnet import StableSyncNet
from synclip.nn.unet import MOTION_MODULES, UNet3DConditionModel, UNetConfig, unet_config
from synclip.runtime import is_main
from synclip.train.diffusion import DiffusionObjective, LowerFaceJitter, mixed_noise
from synclip.train.losses import load_lpips
from synclip.train.trainer import Recipe, Trainer
from synclip.train.trepa import load_trepa_term

log = logging.getLogger(__name__)

SAMPLE_NAME = re.compile(r"step_(\d+)\.mp4")


def sample_path(folder: Path, step: int) -> Path:
    """The validation sample of step `step` in the samples folder."""
    return folder / f"step_{step:06d}.mp4"


def forget_samples(folder: str | Path, after: int = -1) -> None:
    """Remove the `step_NNNNNN.mp4` samples in `folder` of steps after `after` (−1: all)."""
    folder = Path(folder)
    if not folder.is_dir():
        return
    for path in folder.iterdir():
        match = SAMPLE_NAME.fullmatch(path.name)
        if match and int(match.group(1)) > after:
            path.unlink()


class Sample(Protocol):
    """A validation sample (`synclip.eval.samples.ValidationSample`): generated with the EMA UNet at
    a step, written, and scored."""

    def __call__(self, unet: torch.nn.Module, step: int) -> dict: ...

    def path(self, step: int) -> Path: ...

    def forget_after(self, step: int) -> None: ...

    def summary(self) -> dict:
        """What the stage's metrics say of the sample: its clips, frames and fixed baselines."""
        ...


def select_trainable(model: torch.nn.Module, patterns: tuple[str, ...]) -> list[str]:
    """Freeze every parameter whose name matches none of `patterns` (fnmatch); no patterns: train all.

    Returns the trainable names; a pattern that matches nothing is an error (a typo would freeze all).
    """
    names = [name for name, _ in model.named_parameters()]
    for pattern in patterns:
        if not any(fnmatch.fnmatchcase(n, pattern) for n in names):
            raise ValueError(f"trainable pattern {pattern!r} matches no parameter of the UNet")
    chosen = []
    for name, parameter in model.named_parameters():
        keep = not patterns or any(fnmatch.fnmatchcase(name, p) for p in patterns)
        parameter.requires_grad_(keep)
        if keep:
            chosen.append(name)
    return chosen


def initial_unet(config: UNetConfig, init: str | Path | None) -> tuple[UNet3DConditionModel, list[str]]:
    """A fresh UNet, or one started from the artifact `init` (stage 1's): motion modules absent there
    keep their (identity) initialisation and are returned; any other mismatch is a CheckpointError,
    as is an `init` trained for another output (ε or v) or on other latents (`latent_norm`): its weights
    would load and predict the wrong thing."""
    model = UNet3DConditionModel(config)
    if init is None:
        return model, []
    trained = UNetConfig.from_dict(read_config(init, UNET)["model"])
    if trained.prediction_type != config.prediction_type:
        raise CheckpointError(
            f"{init}: a UNet trained to predict {trained.prediction_type}; "
            f"unet.prediction_type is {config.prediction_type}"
        )
    if trained.latent_norm != config.latent_norm:
        raise CheckpointError(
            f"{init}: a UNet trained on latent_norm {trained.latent_norm} latents; "
            f"unet.latent_norm is {config.latent_norm}"
        )
    allow = (MOTION_MODULES,) if config.motion_modules else ()
    return model, load_unet_state(model, read_weights(init), f"{init}/model.safetensors", allow)


def _file_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16] if path.is_file() else ""


def _network_digest(network: torch.nn.Module) -> str:
    digest = hashlib.sha256()
    for name, tensor in sorted(network.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().float().numpy().tobytes())
    return digest.hexdigest()[:16]


def judges(objective: DiffusionObjective) -> dict[str, str]:
    """Digests of the frozen networks the active loss terms go through (a new SyncNet changes the
    stage-2 loss, so its finished checkpoint must not be resumed), and of the VAE decoding x̂0."""
    networks = {"sync": objective.syncnet, "lpips": objective.lpips, "trepa": objective.trepa}
    used = {
        name: net for name, net in networks.items() if net is not None and objective.weights.get(name, 0) > 0
    }
    if used and objective.vae is not None:
        used["vae"] = objective.vae
    return {name: _network_digest(net) for name, net in sorted(used.items())}


class Validation:
    """Fixed windows of held-out identities with fixed noise and timesteps: a deterministic loss.

    Besides each loss term it measures whether the UNet uses the audio: `audio_gain` is how much
    worse (relative ε MSE) the prediction gets when every window is given another window's audio
    tokens. A UNet that ignores the audio (or copies the reference's mouth) scores 0.
    """

    def __init__(
        self, sampler: WindowSampler, count: int, alpha: float, seed: int, batch_size: int = 1
    ) -> None:
        self.sampler = sampler
        self.windows: list[Window] = [sampler.draw() for _ in range(count)]
        generator = torch.Generator().manual_seed(seed)
        groups = [self.windows[i : i + batch_size] for i in range(0, count, batch_size)]
        self.batches = [sampler.batch(group, sample=False) for group in groups]  # posterior means
        self.noise = [mixed_noise(tuple(b.latents.shape), alpha, generator) for b in self.batches]
        self.timesteps = [torch.randint(0, 1000, (len(g),), generator=generator) for g in groups]
        # each window's audio replaced by that of the window half the set away (another clip, mostly)
        audio = torch.cat([b.audio for b in self.batches])
        swapped = audio.roll(count // 2, dims=0).split([len(g) for g in groups])
        self.swapped = [dataclasses.replace(b, audio=a) for b, a in zip(self.batches, swapped, strict=True)]

    @torch.no_grad()
    def __call__(self, model: torch.nn.Module, objective: DiffusionObjective, device: torch.device) -> dict:
        was_training = model.training
        model.eval()
        sums: dict[str, float] = {}
        swapped = 0.0
        for batch, other, noise, timesteps in zip(
            self.batches, self.swapped, self.noise, self.timesteps, strict=True
        ):
            size = len(timesteps)
            noise, timesteps = noise.to(device), timesteps.to(device)
            terms = objective(model, batch.to(device), noise, timesteps)
            for name, value in terms.items():
                sums[name] = sums.get(name, 0.0) + float(value) * size
            swapped += (
                float(objective(model, other.to(device), noise, timesteps, recon_only=True)["recon"]) * size
            )
        model.train(was_training)
        count = len(self.windows)
        result = {name: value / count for name, value in sums.items()}
        result["audio_gain"] = swapped / count / result["recon"] - 1
        return result


class UNetRecipe(Recipe):
    """Random windows (target, reference, audio) of the train clips with mixed noise at random
    timesteps; the EMA of the weights is what is validated, sampled and written.

    The objective is `synclip.train.diffusion`'s, the windows `synclip.data.unet_windows`', the loop the
    Trainer's; the artifact is `save_unet` of the EMA weights with their config.
    """

    name = "train_unet"
    digits = 6

    def __init__(
        self,
        train: list[WindowClip],
        val: list[WindowClip],
        objective: DiffusionObjective,
        config: UNetConfig,
        stage: UNetStageParams,
        init: str | Path | None = None,
        info: dict | None = None,
        sample: Sample | None = None,
    ) -> None:
        """`init`: the artifact a fine-tune starts from (stage 1's), `info`: what the artifact's config
        records besides; with a `sample`, every `sample_every`-th validation (and the last, and a
        fine-tune's step 0) writes a sample video of the EMA weights and adds its scores to the row."""
        self.train_clips, self.val_clips, self.objective, self.config = train, val, objective, config
        self.params, self.init, self.info, self.sample = stage, init, info or {}, sample

    def setup(self, seed: int, rng: np.random.Generator, device: torch.device) -> torch.nn.Module:
        stage, self.device = self.params, device
        self.sampler = WindowSampler(self.train_clips, stage.num_frames, rng, stage.reference_gap)
        self.validation = Validation(
            WindowSampler(
                self.val_clips, stage.num_frames, np.random.default_rng(seed + 1), stage.reference_gap
            ),
            stage.val_windows,
            stage.mixed_noise_alpha,
            seed + 2,
            stage.batch_size,
        )
        model, self.fresh = initial_unet(self.config, self.init)
        self.trainable = select_trainable(model, stage.trainable)
        model.to(device).train()
        self.ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(stage.ema_decay), use_buffers=True)
        return model

    def fingerprint(self) -> list:
        """The config, the clips and their content (the output folder persists between `dvc repro`
        runs: after a new VAE, other latents, a finished checkpoint must not be "resumed"), the loss
        weights, the stage-1 weights it starts from, and the frozen networks the loss goes through."""
        inputs = hashlib.sha256()
        for clip in self.sampler.clips:
            for name in sorted(clip.posteriors):
                inputs.update(clip.posteriors[name].contiguous().numpy().tobytes())
            inputs.update(clip.features.contiguous().float().numpy().tobytes())
        init = _file_digest(Path(self.init) / "model.safetensors") if self.init else ""
        return [
            dataclasses.asdict(self.config),
            [(c.name, c.num_frames, c.shift) for c in self.sampler.clips],
            {"weights": self.objective.weights, "init": init, "judges": judges(self.objective)},
            inputs.hexdigest(),
        ]

    def begin(self, step: int, resumed: bool) -> None:
        if self.sample is not None:
            self.sample.forget_after(step if resumed else -1)  # a rerun writes them again

    def describe(self) -> str:
        stage, objective = self.params, self.objective
        return (
            f"{len(self.fresh)} fresh motion-module tensors, {len(self.sampler.clips)} train / "
            f"{len(self.validation.sampler.clips)} val clips, {stage.batch_size} × {stage.num_frames} frames a "
            f"step; terms {objective.weights}, disabled {objective.disabled}"
        )

    def opening_row(self) -> dict | None:
        """A fine-tune's history opens with its starting point's scores."""
        if self.init is None:
            return None
        start = self.validation(self.ema.module, self.objective, self.device)
        return {f"val_{k}": round(v, 6) for k, v in start.items()} | self.sampled(0)

    def loss(
        self, step: int, autocast: AbstractContextManager
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The whole batch, its dropped audio, noise and timesteps are drawn on every rank; each
        computes the loss of its `shard` of them."""
        stage, shard = self.params, self.shard
        batch = self.sampler.batch([self.sampler.draw() for _ in range(stage.batch_size)])
        dropped = torch.rand(stage.batch_size) < stage.audio_dropout  # the CFG branch: no audio
        batch.audio[dropped] = 0
        noise = mixed_noise(tuple(batch.latents.shape), stage.mixed_noise_alpha)
        timesteps = torch.randint(0, self.objective.scheduler.config.num_train_timesteps, (stage.batch_size,))
        jitter = None
        if max(stage.lower_face_jitter) > 0:
            jitter = LowerFaceJitter.draw(stage.batch_size, batch.latents.shape[1], *stage.lower_face_jitter)
            jitter = LowerFaceJitter(shard.take(jitter.gain), shard.take(jitter.shift))
        batch = UNetBatch(**{k: v if v is None else shard.take(v) for k, v in vars(batch).items()})
        noise, timesteps = shard.take(noise), shard.take(timesteps)
        with autocast:
            terms = self.objective(
                self.model,
                batch.to(self.device),
                noise.to(self.device),
                timesteps.to(self.device),
                jitter=jitter,
            )
        return terms["total"], terms

    def after_update(self) -> None:
        self.ema.update_parameters(self.model)

    def validate(self, step: int) -> dict:
        scores = self.validation(self.ema.module, self.objective, self.device)
        return {f"val_{k}": round(v, 6) for k, v in scores.items()} | self.sampled(step)

    def sampled(self, step: int) -> dict:
        """The sample's scores at `step` if one is due there (every `sample_every` steps, and the last)."""
        every, last = self.params.sample_every, self.params.max_steps
        if self.sample is None or not every or (step % every and step != last):
            return {}
        scores = self.sample(self.ema.module, step)
        log.info(
            "step %d: sample %s (%s)",
            step,
            self.sample.path(step),
            ", ".join(f"{k} {v}" for k, v in scores.items()),
        )
        return scores

    def state(self) -> dict:
        return {"ema": self.ema.state_dict()}

    def load_state(self, state: dict) -> None:
        self.ema.load_state_dict(state["ema"])

    def result(self) -> torch.nn.Module:
        return self.ema.module

    def finish(self, out_dir: Path, step: int) -> torch.nn.Module:
        artifact = {
            "trained_steps": step,
            "trainable": list(self.params.trainable),
            "trainable_tensors": len(self.trainable),
            "loss_weights": self.objective.weights,
            "disabled_terms": self.objective.disabled,
            **self.info,
        }
        save_unet(out_dir, self.ema.module, artifact)
        return self.ema.module


def build_objective(
    params: Params,
    stage: UNetStageParams,
    vae: torch.nn.Module,
    judge: StableSyncNet | None,
    trepa: Path | None,
    device: torch.device,
) -> DiffusionObjective:
    """The stage's loss: its weights, with the frozen networks the active terms need (`judge` the
    SyncNet, `trepa` the VideoMAE folder, LPIPS from pretrained.lpips_vgg); a term whose network
    is missing is disabled with the reason."""
    weights = stage.loss_weights
    lpips, lpips_reason = load_lpips(params.pretrained.lpips_vgg) if weights.lpips else (None, "weight 0")
    trepa_loss, trepa_reason = load_trepa_term(trepa) if weights.trepa else (None, "weight 0")
    return DiffusionObjective(
        dataclasses.asdict(weights),
        recon_mouth=params.vae.mouth,
        recon_mouth_weight=stage.recon_mouth_weight,
        prediction_type=params.unet.prediction_type,
        latent_norm=params.unet.latent_norm,
        pixel_region=stage.pixel_region,
        vae=vae,
        vae_precision=params.vae.precision,
        syncnet=judge if weights.sync else None,
        lpips=lpips.to(device) if lpips is not None else None,
        trepa=trepa_loss.to(device) if trepa_loss is not None else None,
        unavailable={"sync": "no --syncnet given", "lpips": lpips_reason, "trepa": trepa_reason},
    )


MakeSample = Callable[..., Sample]


def unet_stage(
    stage: int,
    manifest: Path,
    clips: Path,
    vae: Path,
    whisper_cache: Path,
    latent_cache: Path,
    out: Path,
    metrics: Path,
    history: Path,
    params: Params,
    device: torch.device,
    init: Path | None = None,
    syncnet: Path | None = None,
    trepa: Path | None = None,
    samples: Path | None = None,
    make_sample: MakeSample | None = None,
) -> None:
    """One UNet training stage on cached latents, from data/synced's manifest; with `samples`, its
    validation samples are made by `make_sample(params, stage, manifest, clips, vae, whisper, judge, out)`
    (a callable the caller passes: `synclip.eval.samples`). Under torchrun every rank trains on its
    rows of each batch; rank 0 alone samples and writes (the latent caches are written atomically by
    whichever rank encodes a clip first)."""
    number, stage_params = stage, params.train_unet.stage(stage)
    if stage_params.init_from is not None:
        init = Path(stage_params.init_from)
    if number == 2 and init is None:
        raise UserError("stage 2 starts from the stage-1 UNet: pass --init")
    if stage_params.max_steps == 0:
        if is_main():
            adopt_unet(number, init, out, metrics, history, samples, params)
        return
    autoencoder = load_vae(vae, param="--vae").to(device).requires_grad_(False)
    judge = load_syncnet(syncnet).to(device).requires_grad_(False) if syncnet else None
    objective = build_objective(params, stage_params, autoencoder, judge, trepa, device)
    table = read_manifest(manifest, ("train", "val"), "UNet training")
    train_rows, val_rows = training_rows(table, stage_params)
    whisper = load_whisper_encoder(params.pretrained.whisper)
    region = stage_params.pixel_region if objective.needs_pixels else None
    common = dict(
        vae=autoencoder,
        vae_precision=params.vae.precision,
        whisper=whisper,
        whisper_cache=whisper_cache,
        latent_cache=latent_cache,
        pixel_region=region,
    )
    train = load_window_clips(train_rows, clips, description="train clips", **common)
    val = load_window_clips(val_rows, clips, description="val clips", **common)
    sample = None
    if samples is not None and is_main():
        samples.mkdir(parents=True, exist_ok=True)  # a DVC out, also when sampling is off
        if stage_params.sample_every and make_sample is not None:
            sample = make_sample(params, stage_params, table, clips, autoencoder, whisper, judge, samples)
        else:
            forget_samples(samples)  # none of an earlier run's samples are this run's
    latent_channels = autoencoder.config.latent_channels
    config = unet_config(
        params.unet, stage_params, audio_width=whisper.width, latent_channels=latent_channels
    )
    info = {"stage": number, "manifest": str(manifest)}
    recipe = UNetRecipe(train, val, objective, config, stage_params, init, info, sample)
    _, trained = Trainer(recipe, out, device, params.seed).fit()
    if not is_main():
        return
    rows, last = trained.rows, trained.rows[-1]
    summary = {
        "stage": number,
        "steps": last["step"],
        "train_seconds": round(trained.seconds, 1),
        "seconds_per_step": round(trained.seconds / last["step"], 3),
        "train_clips": len(train),
        "val_clips": len(val),
        "terms": objective.weights,
        "disabled_terms": objective.disabled,
        **{k: v for k, v in last.items() if k.startswith(("val_", "sample_"))},
        "best_val_total": min(r["val_total"] for r in rows if r["step"] > 0),
    }
    if sample is not None:
        summary["sample"] = sample.summary()
    if rows[0]["step"] == 0:  # stage 2: the stage-1 UNet's scores under this stage's terms
        summary["init"] = {k: v for k, v in rows[0].items() if k.startswith(("val_", "sample_"))}
    write_json(metrics, summary)
    write_csv(history, rows)  # step 0 has no train_ columns


def adopt_unet(
    stage: int, init: Path, out: Path, metrics: Path, history: Path, samples: Path | None, params: Params
) -> None:
    """A stage of 0 steps: its UNet is `init` (train_unet.stageN.init_from), loaded strictly into the
    profile's geometry, so a fine-tune that skips stage 1 still has every stage's outputs."""
    stage_params = params.train_unet.stage(stage)
    width = load_whisper_encoder(params.pretrained.whisper).width
    latent_channels = UNetConfig.from_dict(read_config(init, UNET)["model"]).out_channels
    config = unet_config(params.unet, stage_params, audio_width=width, latent_channels=latent_channels)
    model, fresh = initial_unet(config, init)
    if fresh:
        raise UserError(
            f"{init}: has no {', '.join(fresh[:3])} …; a stage of 0 steps must start from a whole UNet"
        )
    save_unet(out, model)
    if samples is not None:
        samples.mkdir(parents=True, exist_ok=True)
        forget_samples(samples)
    write_json(metrics, {"stage": stage, "steps": 0, "init_from": str(init)})
    write_csv(history, [{"step": 0}])
    log.info("stage %d: 0 steps; the UNet is %s, unchanged", stage, init)
