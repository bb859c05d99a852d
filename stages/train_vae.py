"""DVC stage `train_vae`: the tiny profile's latent space (resumes a killed run), or, with
`vae.source: pretrained`, the VAE at pretrained.sd_vae; either way evaluated on test identities."""

from __future__ import annotations

import argparse
import csv
import json
import time
from pathlib import Path

import cv2
import pandas as pd

from synclip.config import load_params
from synclip.entry import run
from synclip.errors import UserError
from synclip.log import setup_logging
from synclip.runtime import configure
from synclip.train.vae import (
    evaluate_vae,
    load_faces,
    load_vae,
    reconstruct,
    reconstruction_grid,
    save_vae,
    showcase_frames,
    train_vae,
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--processed", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--metrics", type=Path, required=True)
    parser.add_argument("--history", type=Path, required=True)
    parser.add_argument("--grid", type=Path, required=True)
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    args = parser.parse_args()
    params = load_params(args.params)
    setup_logging(params.runtime.log_level)
    device = configure(params.runtime)
    vae = params.vae
    manifest = pd.read_parquet(args.processed / "manifest.parquet")
    needed = ("test",) if vae.source == "pretrained" else ("train", "val", "test")
    for split in needed:
        if not (manifest["split"] == split).any():
            raise UserError(
                f"{args.processed}/manifest.parquet has no {split} clips; the VAE stage needs them"
            )
    clips = args.processed / "clips"
    if vae.source == "pretrained":
        model = load_vae(params.pretrained.sd_vae, "pretrained.sd_vae").to(device)
        save_vae(model, args.out)
        rows, summary = [], {"source": "pretrained", "steps": 0, "train_seconds": 0.0}
    else:
        train = load_faces(manifest[manifest["split"] == "train"], clips, vae.frame_stride, "train clips")
        val = load_faces(manifest[manifest["split"] == "val"], clips, vae.frame_stride, "val clips")
        model, history = train_vae(train, val, vae, args.out, device, params.seed)
        rows = history.rows
        summary = {"source": "trained", "steps": rows[-1]["step"], "train_seconds": round(history.seconds, 1)}
    test = load_faces(manifest[manifest["split"] == "test"], clips, vae.test_stride, "test clips")
    started = time.perf_counter()
    scores = evaluate_vae(model, test.frames, vae.mouth, device)
    summary |= {
        "test": {name: round(value, 4) for name, value in scores.items()},
        "test_frames": len(test.frames),
        "eval_seconds": round(time.perf_counter() - started, 1),
        "scaling_factor": model.config.scaling_factor,
        "parameters": sum(p.numel() for p in model.parameters()),
    }
    shown = test.frames[showcase_frames(test, vae.grid_identities, vae.mouth)]
    grid = reconstruction_grid(shown, reconstruct(model, shown, device), vae.mouth)
    args.grid.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(args.grid), cv2.cvtColor(grid, cv2.COLOR_RGB2BGR)):
        raise UserError(f"{args.grid}: could not write the PNG")
    args.metrics.parent.mkdir(parents=True, exist_ok=True)
    args.metrics.write_text(json.dumps(summary, indent=1, sort_keys=True))
    args.history.parent.mkdir(parents=True, exist_ok=True)
    with args.history.open("w", newline="") as file:
        fields = list(rows[0]) if rows else ["step"]
        writer = csv.DictWriter(file, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)


if __name__ == "__main__":
    run(main)
