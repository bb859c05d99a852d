"""DVC stage `drift_reference`: the drift features of the sources the model learned from.

The reference (the training split's sources) is what `synclip drift` compares the service's
requests with. The baseline split's sources (identities never trained on, from the same corpus)
are reported against it too: a check that the features and the tests do not cry drift where
there is none.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import pandas as pd

from synclip.config import load_params
from synclip.entry import run
from synclip.errors import UserError
from synclip.log import setup_logging
from synclip.pretrained import require
from synclip.quality.drift import drift_report, source_features

log = logging.getLogger("synclip.stages.drift_reference")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--manifest", type=Path, required=True)
    parser.add_argument("--raw", type=Path, required=True)
    parser.add_argument("--reference", type=Path, required=True, help="the reference features (.parquet)")
    parser.add_argument("--baseline", type=Path, required=True, help="the baseline report's folder")
    parser.add_argument("--metrics", type=Path, required=True)
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    args = parser.parse_args()
    params = load_params(args.params)
    setup_logging(params.runtime.log_level)
    landmarker = require("face_landmarker", params.pretrained.face_landmarker, "pretrained.face_landmarker")
    splits = pd.read_parquet(args.manifest).groupby("source")["split"].first()
    tables = {
        split: source_features(
            args.raw, sorted(splits.index[splits == split]), landmarker, params.drift.sampled_frames
        )
        for split in (params.drift.reference_split, params.drift.baseline_split)
    }
    reference = tables[params.drift.reference_split]
    if len(reference) < 2:
        raise UserError(
            f"{len(reference)} {params.drift.reference_split} source(s): too few for a drift reference"
        )
    args.reference.parent.mkdir(parents=True, exist_ok=True)
    reference.to_parquet(args.reference, index=False)
    current = tables[params.drift.baseline_split]
    metrics = {"reference_sources": len(reference)}
    if len(current) < 2:  # a small data set of one's own: the reference is still what monitoring needs
        reason = f"{len(current)} source(s) of the {params.drift.baseline_split} split; a drift test needs 2"
        log.warning("no baseline drift report: %s", reason)
        args.baseline.mkdir(parents=True, exist_ok=True)
        (args.baseline / "drift.json").write_text(json.dumps({"skipped": reason}))
        (args.baseline / "index.html").write_text(
            f"<!doctype html><p>No baseline drift report: {reason}.</p>"
        )
        metrics["baseline"] = {"split": params.drift.baseline_split, "skipped": reason}
    else:
        baseline = drift_report(
            reference, current, args.baseline, params.drift.drift_share,
            title=f"synclip input drift: {params.drift.baseline_split} sources vs {params.drift.reference_split}",
        )  # fmt: skip
        print(baseline.text())
        metrics["baseline"] = {
            "split": params.drift.baseline_split,
            "sources": baseline.current_rows,
            "drifted_features": len(baseline.drifted),
            "drifted_share": round(baseline.share, 4),
            "dataset_drift": baseline.dataset_drift,
        }
    args.metrics.parent.mkdir(parents=True, exist_ok=True)
    args.metrics.write_text(json.dumps(metrics, indent=1))


if __name__ == "__main__":
    run(main)
