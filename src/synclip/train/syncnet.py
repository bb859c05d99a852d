"""Training the SyncNet: balanced pairs, BCE on the cosine, held-out validation, exact resumption."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from synclip.artifacts import (
    load_strict,
    read_config,
    read_latentsync_checkpoint,
    read_weights,
    save_artifact,
)
from synclip.config import SyncNetParams, to_dict
from synclip.constants import syncnet_mel_window
from synclip.data.sync_pairs import Clip, Pair, PairSampler, SyncView, augment_windows
from synclip.log import progress
from synclip.nn.syncnet import (
    StableSyncNet,
    SyncNetConfig,
    TowerConfig,
    offset_losses,
    sync_loss,
    sync_probability,
)
from synclip.runtime import autocast_dtype, channels_last
from synclip.train.checkpoint import load_training_state, save_training_state
from synclip.train.optim import adamw, learning_rate

log = logging.getLogger(__name__)

KIND = "syncnet"
CHECKPOINT = "checkpoint.pt"
CHANCE = float(np.log(2))  # BCE of a net that says 0.5 to everything


def syncnet_config(params: SyncNetParams) -> SyncNetConfig:
    def tower(t, in_channels: int) -> TowerConfig:
        return TowerConfig(
            in_channels=in_channels,
            block_out_channels=t.block_out_channels,
            downsample_factors=t.downsample_factors,
            attn_blocks=t.attn_blocks,
            norm_num_groups=t.norm_num_groups,
        )

    return SyncNetConfig(
        visual=tower(params.visual, 3 * params.num_frames),
        audio=tower(params.audio, 1),
        num_frames=params.num_frames,
        image_size=params.image_size,
        crop=params.crop,
        mel_bins=80,
        mel_frames=syncnet_mel_window(params.num_frames),
        subtract_window_mean=params.subtract_window_mean,
    )


@dataclass
class History:
    rows: list[dict]  # one per validation: step, train_loss, val_loss, val_accuracy, seconds
    left_chance_step: int | None  # first step the smoothed training loss fell below 0.6 (from ln 2 = 0.69)
    seconds: float


def evaluate(
    model: StableSyncNet, sampler: PairSampler, pairs: list[Pair], device: torch.device, batch: int = 64
):
    """(mean BCE, accuracy with cos > 0.5) over fixed pairs."""
    model.eval()
    losses, correct = [], 0
    with torch.no_grad():
        for i in range(0, len(pairs), batch):
            frames, mel, labels = (t.to(device) for t in sampler.tensors(pairs[i : i + batch]))
            visual, audio = model(frames, mel)
            losses.append(float(sync_loss(visual, audio, labels)) * len(labels))
            correct += int(((sync_probability(visual, audio) > 0.5).float() == labels).sum())
    model.train()
    return sum(losses) / len(pairs), correct / len(pairs)


def fingerprint(params: SyncNetParams, seed: int, train: list[Clip]) -> str:
    payload = json.dumps(
        [to_dict(params), seed, [(c.name, len(c.frames), c.shift) for c in train]], sort_keys=True
    )
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def train_syncnet(
    train: list[Clip],
    val: list[Clip],
    params: SyncNetParams,
    out_dir: str | Path,
    device: torch.device,
    seed: int,
    stop_after: int | None = None,
) -> tuple[StableSyncNet, History]:
    """Train (or resume) and write the artifact `out_dir/{config.json, model.safetensors}`.

    A complete checkpoint (`out_dir/checkpoint.pt`) is written every `checkpoint_every` steps; a
    rerun with the same params, seed and clips continues from it and ends with the same weights
    as an uninterrupted run. `stop_after` ends the run early after that many steps (for tests).
    """
    out_dir = Path(out_dir)
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    config = syncnet_config(params)
    model = channels_last(StableSyncNet(config).to(device))
    optimizer = adamw(model.parameters(), device, params.lr, params.weight_decay)
    amp = autocast_dtype(device)
    scaler = torch.amp.GradScaler(device.type, enabled=amp == torch.float16)
    sampler = PairSampler(train, params.num_frames, params.small_offset_fraction, rng)
    val_sampler = PairSampler(
        val, params.num_frames, params.small_offset_fraction, np.random.default_rng(seed + 1)
    )
    val_pairs = [val_sampler.draw() for _ in range(params.val_pairs)]

    key = fingerprint(params, seed, train)
    history = History(rows=[], left_chance_step=None, seconds=0.0)
    step, smoothed, window_losses = 0, CHANCE, []
    resumed = load_training_state(
        out_dir / CHECKPOINT, model=model, optimizer=optimizer, scaler=scaler, rng=rng, fingerprint=key
    )
    if resumed is not None:
        step, extra = resumed
        history = History(**extra["history"])
        smoothed, window_losses = extra["smoothed"], extra["window_losses"]
        log.info("resuming SyncNet training from step %d (%s)", step, out_dir / CHECKPOINT)
    log.info(
        "SyncNet: %.2f M parameters, %d train / %d val clips, %d steps of %d pairs on %s",
        sum(p.numel() for p in model.parameters()) / 1e6, len(sampler.clips), len(val_sampler.clips),
        params.max_steps, params.batch_size, device,
    )  # fmt: skip
    started = time.perf_counter() - history.seconds
    context = torch.autocast(device.type, dtype=amp) if amp is not None else nullcontext()

    def augment(frames: torch.Tensor) -> torch.Tensor:
        return augment_windows(frames, rng, params.flip_fraction, params.brightness, params.contrast)

    model.train()
    with progress("steps") as bar:
        task = bar.add_task("train_syncnet", total=params.max_steps, completed=step)
        while step < params.max_steps:
            for group in optimizer.param_groups:
                group["lr"] = learning_rate(params, step)
            if params.contrastive_weight > 0:
                deltas = (0, *[d for k in params.contrastive_offsets for d in (k, -k)])
                frames, mel, clips = sampler.offset_batch(params.batch_size, deltas, params.windows_per_clip)
                frames, mel = augment(frames).to(device), mel.to(device)
                with context:
                    visual = model.embed_visual(frames)
                    audio = model.embed_audio(mel.flatten(0, 1)).view(len(frames), len(deltas), -1)
                same = clips.to(device) if params.bce_negatives == "same_clip" else None
                bce, match = offset_losses(
                    visual.float(), audio.float(), params.contrastive_temperature, same
                )
                loss = bce + params.contrastive_weight * match
            else:  # LatentSync's recipe: balanced single pairs, BCE on the cosine
                frames, mel, labels = sampler.batch(params.batch_size)
                frames, mel, labels = augment(frames).to(device), mel.to(device), labels.to(device)
                with context:
                    visual, audio = model(frames, mel)
                bce = loss = sync_loss(visual.float(), audio.float(), labels)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(model.parameters(), params.grad_clip)
            scaler.step(optimizer)
            scaler.update()
            step += 1
            window_losses.append(loss.item())
            smoothed = 0.95 * smoothed + 0.05 * bce.item()  # the BCE part, comparable with ln 2
            if history.left_chance_step is None and smoothed < 0.6:
                history.left_chance_step = step
            bar.advance(task)
            if step % params.val_every == 0 or step == params.max_steps:
                val_loss, val_accuracy = evaluate(model, val_sampler, val_pairs, device)
                history.rows.append(
                    {
                        "step": step,
                        "train_loss": round(float(np.mean(window_losses)), 5),
                        "val_loss": round(val_loss, 5),
                        "val_accuracy": round(val_accuracy, 5),
                        "seconds": round(time.perf_counter() - started, 1),
                    }
                )
                window_losses = []
                log.info("step %d: train loss %.4f, val loss %.4f, val accuracy %.3f", step,
                         history.rows[-1]["train_loss"], val_loss, val_accuracy)  # fmt: skip
            history.seconds = time.perf_counter() - started
            if step % params.checkpoint_every == 0 or step == params.max_steps:
                save_training_state(
                    out_dir / CHECKPOINT, model=model, optimizer=optimizer, scaler=scaler, step=step, rng=rng,
                    fingerprint=key,
                    extra={"history": dataclasses.asdict(history), "smoothed": smoothed, "window_losses": window_losses},
                )  # fmt: skip
            if stop_after is not None and step >= stop_after:
                return model, history
    save_artifact(out_dir, {"model": dataclasses.asdict(config), "trained_steps": step}, model, KIND)
    return model, history


def load_syncnet(folder: str | Path) -> StableSyncNet:
    """A trained SyncNet artifact, rebuilt from its own config and loaded strictly (eval mode)."""
    config = SyncNetConfig.from_dict(read_config(folder, KIND)["model"])
    model = StableSyncNet(config)
    load_strict(model, read_weights(folder), f"{folder}/model.safetensors")
    return channels_last(model.eval())


def load_latentsync_syncnet(path: str | Path, config: SyncNetConfig) -> StableSyncNet:
    """A published LatentSync StableSyncNet (`stable_syncnet.pt`) into synclip's module tree, strictly."""
    model = StableSyncNet(config)
    load_strict(model, read_latentsync_checkpoint(path), str(path))
    return channels_last(model.eval())


def view_of(config: SyncNetConfig) -> SyncView:
    return SyncView(crop=config.crop, size=config.image_size)
