"""DVC stage `evaluate`: reconstruction and dubbing on test identities, baselines and ceiling → reports/eval."""

from __future__ import annotations

import argparse
import json
import logging
import shutil
from pathlib import Path

import cv2
import pandas as pd

from synclip.config import load_params
from synclip.entry import run
from synclip.errors import UserError
from synclip.eval.protocol import Scorer, evaluate, load_eval_clip, select_clips, summarize
from synclip.eval.report import (
    contact_sheet,
    dubbing_plot_table,
    markdown_table,
    opening_trace,
    per_clip_table,
    write_sample,
)
from synclip.log import progress, setup_logging
from synclip.pipeline import LipSyncPipeline
from synclip.pretrained import require
from synclip.runtime import configure
from synclip.train.diffusion import load_lpips
from synclip.train.syncnet import load_syncnet

log = logging.getLogger("stages.evaluate")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--processed", type=Path, required=True, help="data/processed")
    parser.add_argument("--raw", type=Path, required=True, help="data/raw (SynthTalk ground-truth sidecars)")
    parser.add_argument("--model", type=Path, required=True, help="models/synclip")
    parser.add_argument("--syncnet", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True, help="reports/eval")
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    args = parser.parse_args()
    params = load_params(args.params)
    setup_logging(params.runtime.log_level)
    device = configure(params.runtime)
    ev = params.evaluate
    if args.out.exists() and any(args.out.iterdir()) and not (args.out / "metrics.json").is_file():
        raise UserError(f"{args.out}: exists and is not an evaluation report folder; not replacing it")

    pipeline = LipSyncPipeline.from_pretrained(args.model, device=device)
    syncnet = load_syncnet(args.syncnet).to(device)
    landmarker = require("face_landmarker", params.pretrained.face_landmarker, "pretrained.face_landmarker")
    lpips, lpips_reason = load_lpips(params.pretrained.lpips_vgg)
    scorer = Scorer(syncnet, landmarker, ev, params.syncnet.max_offset, device, params.vae.mouth,
                    lpips.to(device) if lpips is not None else None)  # fmt: skip
    manifest = pd.read_parquet(args.processed / "manifest.parquet")
    rows = select_clips(manifest, args.raw, ev.split, ev.clips)
    if rows["identity"].nunique() < 2:
        raise UserError(
            f"{args.processed}: clean {ev.split} clips of {rows['identity'].nunique()} identities; "
            "dubbing needs two identities at least"
        )
    clips = [load_eval_clip(row, args.processed / "clips", args.raw, ev) for row in rows.itertuples()]
    log.info("evaluating %d %s clips of %d identities, DDIM %d steps, guidance %g",
             len(clips), ev.split, rows["identity"].nunique(), ev.steps, pipeline.config.guidance)  # fmt: skip
    with progress("clips") as bar:
        task = bar.add_task("evaluate", total=len(clips))
        result = evaluate(pipeline, clips, scorer, ev.steps, pipeline.config.seed,
                          on_clip=lambda done, _: bar.update(task, completed=done))  # fmt: skip

    summary = summarize(result.rows)
    summary["protocol"] = {
        "split": ev.split, "clips": len(clips), "identities": int(rows["identity"].nunique()), "frames_per_clip_max": ev.max_frames,
        "steps": ev.steps, "guidance": pipeline.config.guidance, "eta": pipeline.config.eta,
        "seed": pipeline.config.seed,
        "lpips": "on" if lpips is not None else f"disabled: {lpips_reason}",
    }  # fmt: skip
    out = args.out
    if out.exists():
        shutil.rmtree(out)  # an earlier report (checked above): replaced whole
    (out / "samples").mkdir(parents=True)
    (out / "metrics.json").write_text(json.dumps(summary, indent=1, sort_keys=True))
    table = per_clip_table(result)
    table.to_csv(out / "clips.csv", index=False, float_format="%.5g")
    dubbing_plot_table(table).to_csv(out / "dubbing_clips.csv", index=False, float_format="%.5g")
    opening_trace(result, clips[0].name).to_csv(out / "opening.csv", index=False)
    cv2.imwrite(
        str(out / "contact_sheet.png"),
        cv2.cvtColor(contact_sheet(result, ev.sheet_frames), cv2.COLOR_RGB2BGR),
    )
    for clip in list(result.videos)[: ev.samples]:
        write_sample(result, clip, out / "samples" / f"{clip}.mp4")
    (out / "summary.md").write_text(markdown_table(summary) + "\n")
    log.info("targets: %s", {k: v["met"] for k, v in summary["targets"].items()})
    log.info("wrote %s", out)


if __name__ == "__main__":
    run(main)
