"""Training the UNet (LatentSync stages 1 and 2): AdamW, gradient clipping, EMA weights, audio dropout,
trainable-module patterns, deterministic validation on held-out identities, sample videos with their
sync score (`synclip.train.samples`), exact resumption.

The objective lives in `synclip.train.diffusion`, the windows in `synclip.data.unet_windows`; the
artifact is `save_unet` of the EMA weights with their config.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import hashlib
import json
import logging
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from synclip.artifacts import read_weights
from synclip.config import UNetParams, UNetStageParams, to_dict
from synclip.data.unet_windows import Window, WindowClip, WindowSampler
from synclip.log import progress
from synclip.nn.unet import MOTION_MODULES, UNet3DConditionModel, UNetConfig, load_unet_state, save_unet
from synclip.runtime import autocast_dtype
from synclip.train.checkpoint import load_training_state, save_training_state
from synclip.train.diffusion import DiffusionObjective, mixed_noise
from synclip.train.optim import adamw, learning_rate
from synclip.train.samples import ValidationSample

log = logging.getLogger(__name__)

CHECKPOINT = "checkpoint.pt"


def unet_config(params: UNetParams, stage: UNetStageParams, audio_width: int) -> UNetConfig:
    """The UNet geometry of `params` with the stage's motion modules and the audio encoder's width D."""
    values = dataclasses.asdict(params)
    values["motion_module_decoder_only"] = params.motion_module_decoder_only and stage.motion_modules
    return UNetConfig(**values, cross_attention_dim=audio_width, motion_modules=stage.motion_modules)


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
    keep their (identity) initialisation and are returned; any other mismatch is a CheckpointError."""
    model = UNet3DConditionModel(config)
    if init is None:
        return model, []
    allow = (MOTION_MODULES,) if config.motion_modules else ()
    return model, load_unet_state(model, read_weights(init), f"{init}/model.safetensors", allow)


@dataclass
class History:
    rows: list[dict]  # one per validation: step, train_<term>, val_<term>, seconds
    seconds: float


def fingerprint(
    config: UNetConfig, stage: UNetStageParams, seed: int, clips: list[WindowClip], extra: dict
) -> str:
    """What a checkpoint must share with this run to be resumed: config, data content and code.

    The content of the inputs counts, not just their names: the output folder persists between
    `dvc repro` runs, and after a new VAE (other latents) a finished checkpoint would otherwise be
    "resumed" at max_steps and never retrained. So does this file's code, for the same reason.
    """
    inputs = hashlib.sha256(Path(__file__).read_bytes())
    for clip in clips:
        for name in sorted(clip.posteriors):
            inputs.update(clip.posteriors[name].contiguous().numpy().tobytes())
        inputs.update(clip.features.contiguous().float().numpy().tobytes())
    payload = json.dumps(
        [
            dataclasses.asdict(config),
            to_dict(stage),
            seed,
            [(c.name, c.num_frames, c.shift) for c in clips],
            extra,
            inputs.hexdigest(),
        ],
        sort_keys=True,
    )
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


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


def train_unet(
    train: list[WindowClip],
    val: list[WindowClip],
    objective: DiffusionObjective,
    config: UNetConfig,
    stage: UNetStageParams,
    out_dir: str | Path,
    device: torch.device,
    seed: int,
    *,
    init: str | Path | None = None,
    info: dict | None = None,
    sample: ValidationSample | None = None,
    stop_after: int | None = None,
) -> tuple[UNet3DConditionModel, History]:
    """Train (or resume) and write the artifact `out_dir/{config.json, model.safetensors}` (EMA weights).

    With a `sample`, every `sample_every`-th validation (and the last, and a fine-tune's step 0) also
    writes a sample video of the EMA weights and adds its sync score to the history row; samples of
    steps not reached by the checkpoint being resumed are removed first.

    A complete checkpoint (`out_dir/checkpoint.pt`: weights, EMA, optimizer, scaler, step, history,
    every RNG) is written every `checkpoint_every` steps; a rerun with the same inputs continues from
    it and ends with the same weights as an uninterrupted run. `stop_after` ends early (for tests).
    """
    out_dir = Path(out_dir)
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    sampler = WindowSampler(train, stage.num_frames, rng, stage.reference_gap)
    validation = Validation(
        WindowSampler(val, stage.num_frames, np.random.default_rng(seed + 1), stage.reference_gap),
        stage.val_windows, stage.mixed_noise_alpha, seed + 2, stage.batch_size,
    )  # fmt: skip
    model, fresh = initial_unet(config, init)
    trainable = select_trainable(model, stage.trainable)
    model.to(device).train()
    ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(stage.ema_decay), use_buffers=True)
    parameters = [p for p in model.parameters() if p.requires_grad]
    optimizer = adamw(parameters, device, stage.lr, stage.weight_decay)
    amp = autocast_dtype(device)
    scaler = torch.amp.GradScaler(device.type, enabled=amp == torch.float16)
    context = torch.autocast(device.type, dtype=amp) if amp is not None else nullcontext()

    key = fingerprint(
        config, stage, seed, sampler.clips,
        {
            "weights": objective.weights,
            "init": _file_digest(Path(init) / "model.safetensors") if init else "",
            "judges": judges(objective),
        },
    )  # fmt: skip
    history = History(rows=[], seconds=0.0)
    step, sums, count = 0, {}, 0
    resumed = load_training_state(
        out_dir / CHECKPOINT, model=model, optimizer=optimizer, scaler=scaler, rng=rng, fingerprint=key
    )
    if resumed is not None:
        step, extra = resumed
        ema.load_state_dict(extra["ema"])
        history = History(**extra["history"])
        sums, count = extra["sums"], extra["count"]
        log.info("resuming UNet training from step %d (%s)", step, out_dir / CHECKPOINT)
    if sample is not None:
        sample.forget_after(step if resumed is not None else -1)

    def sampled(at: int) -> dict:
        """The sample's scores at step `at` if one is due there (every `sample_every` steps, and the last)."""
        if sample is None or not stage.sample_every or (at % stage.sample_every and at != stage.max_steps):
            return {}
        scores = sample(ema.module, at)
        log.info(
            "step %d: sample %s (%s)", at, sample.path(at), ", ".join(f"{k} {v}" for k, v in scores.items())
        )
        return scores

    total = sum(p.numel() for p in model.parameters())
    log.info(
        "UNet: %.2f M parameters (%.2f M trainable, %d fresh motion-module tensors), %d train / %d val "
        "clips, %d steps of %d × %d frames on %s; terms %s, disabled %s",
        total / 1e6, sum(p.numel() for p in parameters) / 1e6, len(fresh), len(sampler.clips),
        len(validation.sampler.clips), stage.max_steps, stage.batch_size, stage.num_frames, device,
        objective.weights, objective.disabled,
    )  # fmt: skip
    started = time.perf_counter() - history.seconds
    if init is not None and not history.rows:  # a fine-tune's history opens with its starting point
        start = validation(ema.module, objective, device)
        history.rows.append(
            {"step": 0} | {f"val_{k}": round(v, 6) for k, v in start.items()} | sampled(0) | {"seconds": 0.0}
        )
        log.info("step 0 (%s): %s", init, ", ".join(f"val_{k} {v:.4f}" for k, v in start.items()))
    with progress("steps") as bar:
        task = bar.add_task("train_unet", total=stage.max_steps, completed=step)
        while step < stage.max_steps:
            for group in optimizer.param_groups:
                group["lr"] = learning_rate(stage, step)
            batch = sampler.batch([sampler.draw() for _ in range(stage.batch_size)])
            dropped = torch.rand(stage.batch_size) < stage.audio_dropout  # the CFG branch: no audio
            batch.audio[dropped] = 0
            noise = mixed_noise(tuple(batch.latents.shape), stage.mixed_noise_alpha)
            timesteps = torch.randint(0, objective.scheduler.config.num_train_timesteps, (stage.batch_size,))
            batch = batch.to(device)
            with context:
                terms = objective(model, batch, noise.to(device), timesteps.to(device))
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(terms["total"]).backward()
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(parameters, stage.grad_clip)
            scaler.step(optimizer)
            scaler.update()
            ema.update_parameters(model)
            step += 1
            count += 1
            for name, value in terms.items():
                sums[name] = sums.get(name, 0.0) + value.item()
            bar.advance(task)
            if step % stage.val_every == 0 or step == stage.max_steps:
                val = validation(ema.module, objective, device)
                row = {"step": step}
                row |= {f"train_{k}": round(v / count, 6) for k, v in sums.items()}
                row |= {f"val_{k}": round(v, 6) for k, v in val.items()}
                row |= sampled(step)
                row["seconds"] = round(time.perf_counter() - started, 1)
                history.rows.append(row)
                sums, count = {}, 0
                log.info("step %d: %s", step, ", ".join(f"{k} {v:.4f}" for k, v in row.items() if "_" in k))
            history.seconds = time.perf_counter() - started
            if step % stage.checkpoint_every == 0 or step == stage.max_steps:
                save_training_state(
                    out_dir / CHECKPOINT, model=model, optimizer=optimizer, scaler=scaler, step=step, rng=rng,
                    fingerprint=key,
                    extra={"history": dataclasses.asdict(history), "ema": ema.state_dict(), "sums": sums,
                           "count": count},
                )  # fmt: skip
            if stop_after is not None and step >= stop_after:
                return ema.module, history
    artifact = {
        "trained_steps": step,
        "trainable": list(stage.trainable),
        "trainable_tensors": len(trainable),
        "loss_weights": objective.weights,
        "disabled_terms": objective.disabled,
        **(info or {}),
    }
    save_unet(out_dir, ema.module, artifact)
    return ema.module, history
