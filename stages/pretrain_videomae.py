"""DVC stage `pretrain_videomae`: TREPA's VideoMAE, pretrained on the processed clips (resumes a killed
run), or a local VideoMAE-v2 copied from pretrained.videomae and checked (videomae.source: pretrained)."""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

import pandas as pd

from synclip.config import load_params
from synclip.entry import run
from synclip.errors import UserError
from synclip.log import setup_logging
from synclip.runtime import configure
from synclip.train.trepa import load_trepa
from synclip.train.videomae import (
    install_pretrained,
    load_clips,
    pretrain_videomae,
    trepa_probe,
    videomae_config,
    zero_prediction_loss,
)


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
    mae = params.videomae
    manifest = pd.read_parquet(args.processed / "manifest.parquet")
    for split in ("train", "val"):
        if not (manifest["split"] == split).any():
            raise UserError(
                f"{args.processed}/manifest.parquet has no {split} clips; pretrain_videomae needs both"
            )
    clips_dir = args.processed / "clips"
    val_rows = manifest[manifest["split"] == "val"]
    if mae.source == "pretrained":
        trepa = install_pretrained(params.pretrained.videomae, args.out).to(device)
        val = load_clips(val_rows, clips_dir, None, trepa.num_frames, "val clips")  # TREPA resizes them
        rows: list[dict] = []
        summary: dict = {"source": "pretrained"}
    else:
        train_rows = manifest[manifest["split"] == "train"]
        train = load_clips(train_rows, clips_dir, mae.image_size, mae.num_frames, "train clips")
        val = load_clips(val_rows, clips_dir, mae.image_size, mae.num_frames, "val clips")
        _, history = pretrain_videomae(train, val, mae, args.out, device, params.seed)
        rows = history.rows
        summary = {
            "source": "trained",
            "steps": rows[-1]["step"],
            "train_seconds": round(history.seconds, 1),
            "val_loss": rows[-1]["val_loss"],
            "first_val_loss": rows[0]["val_loss"],
            "zero_prediction_loss": round(zero_prediction_loss(videomae_config(mae)), 5),
        }
        trepa = load_trepa(args.out).to(device)  # what later stages will load
    probe = trepa_probe(trepa, val, mae.val_windows, params.seed + 2)
    summary |= {k: float(f"{v:.4g}") for k, v in probe.items()}  # values from 1e-8 up
    args.metrics.parent.mkdir(parents=True, exist_ok=True)
    args.metrics.write_text(json.dumps(summary, indent=1, sort_keys=True))
    args.history.parent.mkdir(parents=True, exist_ok=True)
    with args.history.open("w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=["step", "train_loss", "val_loss", "lr", "seconds"])
        writer.writeheader()
        writer.writerows(rows)


if __name__ == "__main__":
    run(main)
