"""DVC stage `preprocess`: raw videos -> aligned clips, manifest.parquet, rejects.csv, metrics."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from synclip.config import load_params
from synclip.data.preprocess import ground_truth_report, preprocess_corpus
from synclip.entry import run
from synclip.log import setup_logging
from synclip.pretrained import require


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--raw", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--metrics", type=Path, required=True)
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    args = parser.parse_args()
    params = load_params(args.params)
    setup_logging(params.runtime.log_level)
    model = require("face_landmarker", params.pretrained.face_landmarker, "pretrained.face_landmarker")
    manifest, rejects = preprocess_corpus(args.raw, args.out, params.preprocess, model)
    metrics = {
        "clips": len(manifest),
        "hours": round(float(manifest["frames"].sum()) / 25 / 3600, 4),
        "sources_rejected_whole": int((rejects["segment"] == -1).sum()),
        "segments_rejected": int((rejects["segment"] >= 0).sum()),
        "rejects_by_reason": rejects["reason"].value_counts().sort_index().to_dict(),
        "clips_by_split": manifest["split"].value_counts().sort_index().to_dict(),
        "median_eye_jitter_px": round(float(manifest["eye_jitter_px"].median()), 4)
        if len(manifest)
        else None,
        "median_mouth_jitter_px": round(float(manifest["mouth_jitter_px"].median()), 4)
        if len(manifest)
        else None,
        "ground_truth": ground_truth_report(args.raw, rejects, manifest),
    }
    args.metrics.parent.mkdir(parents=True, exist_ok=True)
    args.metrics.write_text(json.dumps(metrics, indent=1, sort_keys=True))


if __name__ == "__main__":
    run(main)
