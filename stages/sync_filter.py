"""DVC stage `sync_filter`: score every processed clip with the SyncNet, drop and correct by offset."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pandas as pd

from synclip.config import load_params
from synclip.data.sync_filter import (
    distribution,
    filter_by_sync,
    ground_truth_agreement,
    mismatched_confidences,
    score_manifest,
)
from synclip.entry import run
from synclip.log import setup_logging
from synclip.runtime import configure
from synclip.train.syncnet import load_syncnet


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--processed", type=Path, required=True)
    parser.add_argument("--syncnet", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--metrics", type=Path, required=True)
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    args = parser.parse_args()
    params = load_params(args.params)
    setup_logging(params.runtime.log_level)
    device = configure(params.runtime)
    model = load_syncnet(args.syncnet).to(device)
    manifest = pd.read_parquet(args.processed / "manifest.parquet")
    scored, clips = score_manifest(manifest, args.processed / "clips", model, params.syncnet, device)
    kept, rejects = filter_by_sync(scored, params.syncnet)
    args.out.mkdir(parents=True, exist_ok=True)
    kept.to_parquet(args.out / "manifest.parquet", index=False)
    rejects.to_csv(args.out / "rejects.csv", index=False)
    test = scored[scored["split"] == "test"]
    in_sync = test[test["gt_av_offset"].fillna(0) == 0]
    mismatched = mismatched_confidences([clips[c] for c in in_sync["clip"]], model, params.syncnet, device)
    metrics = {
        "clips_scored": len(scored),
        "clips_kept": len(kept),
        "rejects_by_reason": rejects["reason"].value_counts().sort_index().to_dict(),
        "offsets_corrected": int((kept["audio_shift"] != 0).sum()),
        "ground_truth": ground_truth_agreement(scored),
        "test_lse_c_in_sync": distribution(in_sync["sync_confidence"]),
        "test_lse_c_mismatched_audio": distribution(mismatched),
        "test_lse_d_in_sync": distribution(in_sync["sync_distance"]),
    }
    args.metrics.parent.mkdir(parents=True, exist_ok=True)
    args.metrics.write_text(json.dumps(metrics, indent=1, sort_keys=True))


if __name__ == "__main__":
    run(main)
