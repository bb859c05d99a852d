"""DVC stage `train_syncnet`: the lip-sync expert on the processed clips (resumes a killed run)."""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd

from synclip.artifacts import save_artifact
from synclip.config import load_params
from synclip.data.sync_pairs import PairSampler, load_clips, validation_rows
from synclip.entry import run
from synclip.errors import UserError
from synclip.log import setup_logging
from synclip.runtime import configure
from synclip.train.syncnet import (
    KIND,
    evaluate,
    load_latentsync_syncnet,
    syncnet_config,
    train_syncnet,
    view_of,
)

log = logging.getLogger("stages.train_syncnet")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--processed", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--metrics", type=Path, required=True)
    parser.add_argument("--history", type=Path, required=True)
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    args = parser.parse_args()
    params = load_params(args.params)
    setup_logging(params.runtime.log_level)
    device = configure(params.runtime)
    sync = params.syncnet
    manifest = pd.read_parquet(args.processed / "manifest.parquet")
    for split in ("train", "val"):
        if not (manifest["split"] == split).any():
            raise UserError(f"{args.processed}/manifest.parquet has no {split} clips; the SyncNet needs both")
    clips_dir = args.processed / "clips"
    view = view_of(syncnet_config(sync))
    val_rows = validation_rows(manifest)
    if val_rows.empty:  # a tiny corpus whose only val clips are shifted: measure on them, and say so
        val_rows = manifest[manifest["split"] == "val"]
        log.warning("every val clip has shifted audio; the validation accuracy is measured on them anyway")
    val = load_clips(val_rows, clips_dir, view, "val clips")
    if sync.source == "pretrained":
        model = load_latentsync_syncnet(params.pretrained.latentsync_syncnet, syncnet_config(sync)).to(device)
        config = dataclasses.asdict(syncnet_config(sync))
        save_artifact(
            args.out, {"model": config, "source": str(params.pretrained.latentsync_syncnet)}, model, KIND
        )
        sampler = PairSampler(
            val, sync.num_frames, sync.small_offset_fraction, np.random.default_rng(params.seed + 1)
        )
        loss, accuracy = evaluate(model, sampler, [sampler.draw() for _ in range(sync.val_pairs)], device)
        rows, summary = [], {"source": "pretrained", "val_loss": loss, "val_accuracy": accuracy}
    else:
        train = load_clips(manifest[manifest["split"] == "train"], clips_dir, view, "train clips")
        _, history = train_syncnet(train, val, sync, args.out, device, params.seed)
        rows = history.rows
        last = rows[-1]
        summary = {
            "source": "trained",
            "steps": last["step"],
            "train_seconds": round(history.seconds, 1),
            "left_chance_step": history.left_chance_step,
            "val_loss": last["val_loss"],
            "val_accuracy": last["val_accuracy"],
            "best_val_accuracy": max(r["val_accuracy"] for r in rows),
        }
    args.metrics.parent.mkdir(parents=True, exist_ok=True)
    args.metrics.write_text(json.dumps(summary, indent=1, sort_keys=True))
    args.history.parent.mkdir(parents=True, exist_ok=True)
    with args.history.open("w", newline="") as file:
        writer = csv.DictWriter(
            file, fieldnames=["step", "train_loss", "val_loss", "val_accuracy", "seconds"]
        )
        writer.writeheader()
        writer.writerows(rows)


if __name__ == "__main__":
    run(main)
