"""Training the SyncNet (the `train_syncnet` stage): balanced pairs, BCE on the cosine, held-out validation.
The loop is `synclip.train.trainer`'s; the losses are `synclip.train.losses`'.
"""

from __future__ import annotations

import logging
from contextlib import AbstractContextManager
from pathlib import Path

import numpy as np
import torch

from synclip.artifacts import load_latentsync_syncnet, load_syncnet, save_syncnet
from synclip.config import Params, SyncNetParams
from synclip.data.manifest import read_manifest
from synclip.data.sync_pairs import (
    Clip,
    Pair,
    PairSampler,
    SyncView,
    augment_windows,
    load_clips,
    validation_rows,
)
from synclip.errors import UserError
from synclip.files import write_csv, write_json
from synclip.nn.syncnet import StableSyncNet, syncnet_config
from synclip.runtime import channels_last, is_main
from synclip.train.losses import offset_losses, sync_loss, sync_probability
from synclip.train.trainer import Recipe, Trainer

log = logging.getLogger(__name__)

CHANCE = float(np.log(2))  # BCE of a net that says 0.5 to everything
HISTORY_FIELDS = ["step", "train_loss", "val_loss", "val_accuracy", "seconds"]


def evaluate(
    model: StableSyncNet, sampler: PairSampler, pairs: list[Pair], device: torch.device, batch: int = 64
) -> tuple[float, float]:
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


def validation_pairs(clips: list[Clip], params: SyncNetParams, seed: int) -> tuple[PairSampler, list[Pair]]:
    """The fixed held-out pairs every validation scores (their own generator: `seed`)."""
    sampler = PairSampler(clips, params.num_frames, params.small_offset_fraction, np.random.default_rng(seed))
    return sampler, [sampler.draw() for _ in range(params.val_pairs)]


class SyncNetRecipe(Recipe):
    """LatentSync's balanced single pairs with BCE on the cosine, or (contrastive_weight > 0) every
    window against its audio at several offsets and the batch's other windows (`offset_losses`)."""

    name = "train_syncnet"

    def __init__(self, train: list[Clip], val: list[Clip], params: SyncNetParams) -> None:
        self.train_clips, self.val_clips, self.params = train, val, params
        self.smoothed, self.left_chance_step = CHANCE, None

    def setup(self, seed: int, rng: np.random.Generator, device: torch.device) -> torch.nn.Module:
        self.rng, self.device = rng, device
        model = channels_last(StableSyncNet(syncnet_config(self.params)).to(device))
        self.sampler = PairSampler(
            self.train_clips, self.params.num_frames, self.params.small_offset_fraction, rng
        )
        self.val_sampler, self.val_pairs = validation_pairs(self.val_clips, self.params, seed + 1)
        model.train()
        return model

    def fingerprint(self) -> list:
        return [(c.name, len(c.frames), c.shift) for c in self.train_clips]

    def describe(self) -> str:
        return f"{len(self.sampler.clips)} train / {len(self.val_sampler.clips)} val clips, {self.params.batch_size} pairs a step"

    def loss(
        self, step: int, autocast: AbstractContextManager
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The whole batch is drawn and augmented on every rank; each embeds its `shard` of it."""
        params, model, shard = self.params, self.model, self.shard
        if params.contrastive_weight > 0:
            deltas = (0, *[d for k in params.contrastive_offsets for d in (k, -k)])
            frames, mel, clips = self.sampler.offset_batch(params.batch_size, deltas, params.windows_per_clip)
            frames = shard.take(self.augment(frames)).to(self.device)
            mel = shard.take(mel).to(self.device)
            with autocast:
                visual = model.embed_visual(frames)
                audio = model.embed_audio(mel.flatten(0, 1)).view(len(frames), len(deltas), -1)
            # every window is scored against the whole batch's audio: the loss needs all the embeddings
            visual, audio = shard.gather(visual.float()), shard.gather(audio.float())
            same = clips.to(self.device) if params.bce_negatives == "same_clip" else None
            bce, match = offset_losses(visual, audio, params.contrastive_temperature, same)
            loss = bce + params.contrastive_weight * match
        else:  # LatentSync's recipe: balanced single pairs, BCE on the cosine
            frames, mel, labels = self.sampler.batch(params.batch_size)
            frames, mel, labels = (
                shard.take(self.augment(frames)).to(self.device),
                shard.take(mel).to(self.device),
                shard.take(labels).to(self.device),
            )
            with autocast:
                visual, audio = model(frames, mel)
            bce = loss = sync_loss(visual.float(), audio.float(), labels)
        # the BCE part (the whole batch's), comparable with ln 2
        self.smoothed = 0.95 * self.smoothed + 0.05 * shard.mean(bce)
        if self.left_chance_step is None and self.smoothed < 0.6:
            self.left_chance_step = step + 1
        return loss, {"loss": loss}

    def augment(self, frames: torch.Tensor) -> torch.Tensor:
        return augment_windows(
            frames, self.rng, self.params.flip_fraction, self.params.brightness, self.params.contrast
        )

    def validate(self, step: int) -> dict:
        val_loss, val_accuracy = evaluate(self.model, self.val_sampler, self.val_pairs, self.device)
        return {"val_loss": round(val_loss, 5), "val_accuracy": round(val_accuracy, 5)}

    def state(self) -> dict:
        return {"smoothed": self.smoothed, "left_chance_step": self.left_chance_step}

    def load_state(self, state: dict) -> None:
        self.smoothed, self.left_chance_step = state["smoothed"], state["left_chance_step"]

    def notes(self) -> dict:
        # the first step the smoothed training BCE fell below 0.6 (from ln 2 = 0.69)
        return {"left_chance_step": self.left_chance_step}

    def finish(self, out_dir: Path, step: int) -> torch.nn.Module:
        save_syncnet(out_dir, self.model, {"trained_steps": step})
        return self.model


def syncnet_stage(
    processed: Path, out: Path, metrics: Path, history: Path, params: Params, device: torch.device
) -> None:
    """The `train_syncnet` stage: train on the train split (or load the published weights), validate
    on held-out identities; the artifact in `out`, the summary in `metrics`, the curve in `history`.
    With `syncnet.source: pretrained` the stage copies a published StableSyncNet instead and only
    validates it. Under torchrun every rank trains; rank 0 alone writes (and alone copies)."""
    sync = params.syncnet
    if sync.source == "pretrained" and not is_main():
        return
    manifest = read_manifest(processed / "manifest.parquet", ("train", "val"), "the SyncNet")
    view = SyncView.of(syncnet_config(sync))
    val_rows = validation_rows(manifest)
    if val_rows.empty:  # a tiny corpus whose only val clips are shifted: measure on them, and say so
        val_rows = manifest[manifest["split"] == "val"]
        log.warning("every val clip has shifted audio; the validation accuracy is measured on them anyway")
    val = load_clips(val_rows, processed / "clips", view, "val clips")
    if sync.source == "pretrained":
        source = Path(params.pretrained.latentsync_syncnet)
        if source.is_dir():  # imported by `synclip weights import-latentsync`
            model = load_syncnet(source).to(device)
            if model.config != syncnet_config(sync):
                raise UserError(f"{source}: its SyncNet geometry is not the syncnet section's")
        else:
            model = load_latentsync_syncnet(source, syncnet_config(sync)).to(device)
        save_syncnet(out, model, {"source": str(params.pretrained.latentsync_syncnet)})
        sampler, pairs = validation_pairs(val, sync, params.seed + 1)
        loss, accuracy = evaluate(model, sampler, pairs, device)
        rows, summary = [], {"source": "pretrained", "val_loss": loss, "val_accuracy": accuracy}
    else:
        train = load_clips(manifest[manifest["split"] == "train"], processed / "clips", view, "train clips")
        _, trained = Trainer(SyncNetRecipe(train, val, sync), out, device, params.seed).fit()
        if not is_main():
            return
        rows, last = trained.rows, trained.rows[-1]
        summary = {
            "source": "trained",
            "steps": last["step"],
            "train_seconds": round(trained.seconds, 1),
            "left_chance_step": trained.notes["left_chance_step"],
            "val_loss": last["val_loss"],
            "val_accuracy": last["val_accuracy"],
            "best_val_accuracy": max(r["val_accuracy"] for r in rows),
        }
    write_json(metrics, summary)
    write_csv(history, rows, HISTORY_FIELDS)
