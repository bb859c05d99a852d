"""How wide the evaluation's intervals are for a given number of clips, frames per clip and DDIM steps,
and what each costs: the measurement behind `evaluate.clips`, `max_frames` and `steps`.

    python benchmarks/eval_size.py --repo /path/to/a/repro --steps 10 5 --windows 50 100 \
        --out benchmarks/results/eval_size.json
    python benchmarks/eval_size.py --analyse benchmarks/results/eval_size.json   # the table again

The dubbing protocol (the headline numbers: offset-0 share, LSE-C of the truth's) runs on every clean
clip of the split, in the evaluation's own order (one identity at a time), with the packaged model of
`--repo` (after its `dvc repro`). Each clip is generated once per step count over the longest window;
every window (its first W frames) is scored from that. Per clip the JSON keeps the scores and the
seconds spent generating and scoring; the analysis then takes the first k clips, as `evaluate.clips: k`
would, and reports the 95 % half-widths (Wilson for the offset-0 share, the clip bootstrap for the
LSE-C ratio, opening r and silent closed) and the seconds those k clips cost. The machine may be
shared: the load average is recorded.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

from synclip.eval.intervals import estimate, mean_of, ratio_of_means, share_estimate


def measure(args) -> dict:
    import torch

    from synclip.artifacts import load_syncnet
    from synclip.config import load_params
    from synclip.data.manifest import read_manifest
    from synclip.eval.protocol import Scorer, generate, load_eval_clip, select_clips
    from synclip.inference.package import load_pipeline
    from synclip.log import progress

    torch.set_num_threads(args.threads)
    repo = Path(args.repo)
    params = load_params(repo / "params.yaml")
    ev = params.evaluate
    ev = type(ev)(**{**ev.__dict__, "max_frames": max(args.windows)})
    pipeline = load_pipeline(repo / "models" / "synclip")
    judge = load_syncnet(repo / "models" / "syncnet")
    landmarker = repo / params.pretrained.face_landmarker
    scorer = Scorer(judge, landmarker, ev, params.syncnet.max_offset, torch.device("cpu"), params.vae.mouth)
    rows = select_clips(
        read_manifest(repo / "data/processed/manifest.parquet"), repo / "data/raw", ev.split, args.clips
    )
    clips = [
        load_eval_clip(row, repo / "data/processed/clips", repo / "data/raw", ev) for row in rows.itertuples()
    ]
    records = []
    load_before = os.getloadavg()[0]
    with progress("clips") as bar:
        task = bar.add_task("dubbing", total=len(clips))
        for index, a in enumerate(clips):
            b = next(c for c in clips[index + 1 :] + clips[:index] if c.identity != a.identity)
            n = min(len(a.frames), len(b.frames), max(args.windows))
            a_n, b_n = a.cut(n), b.cut(n)
            record = {"clip": a.name, "identity": a.identity, "audio_of": b.name, "frames": n, "runs": []}
            for window in args.windows:
                w = min(window, n)
                start = time.perf_counter()
                truth = {**scorer.sync(b_n.frames[:w], b_n.samples[: w * 640])}
                record["runs"].append(
                    {
                        "variant": "truth",
                        "window": window,
                        "frames": w,
                        **truth,
                        "score_s": time.perf_counter() - start,
                    }
                )
            for steps in args.steps:
                start = time.perf_counter()
                dubbed = generate(pipeline, a_n.frames, b_n.samples, steps, pipeline.config.seed)
                generate_s = time.perf_counter() - start
                for window in args.windows:
                    w = min(window, n)
                    start = time.perf_counter()
                    driving = b_n.cut(w)
                    mouth, _ = scorer.mouth(dubbed[:w], driving)
                    sync = scorer.sync(dubbed[:w], driving.samples)
                    record["runs"].append(
                        {
                            "variant": "model",
                            "steps": steps,
                            "window": window,
                            "frames": w,
                            **sync,
                            **mouth,
                            # generation is paid once for the longest window; a shorter protocol pays its share
                            "generate_s": generate_s * w / n,
                            "score_s": time.perf_counter() - start,
                        }
                    )
            records.append(record)
            bar.update(task, completed=index + 1)
    return {
        "date": datetime.date.today().isoformat(),
        "machine": f"{platform.machine()} {os.cpu_count()} cores, torch threads {args.threads}",
        "python": sys.version.split()[0],
        "repo": str(repo),
        "split": ev.split,
        "load_average": [load_before, os.getloadavg()[0]],
        "clips": records,
    }


def analyse(result: dict, sizes: list[int] | None = None) -> list[dict]:
    """Per (steps, window, k first clips): the headline numbers, their 95 % half-widths and the cost."""
    clips = result["clips"]
    steps_set = sorted({r["steps"] for c in clips for r in c["runs"] if r["variant"] == "model"})
    windows = sorted({r["window"] for c in clips for r in c["runs"]})
    sizes = sizes or sorted({4, 8, 12, 16, 20, 24, len(clips)} & set(range(2, len(clips) + 1)))
    table = []
    for steps in steps_set:
        for window in windows:
            model = [_run(c, "model", window, steps) for c in clips]
            truth = [_run(c, "truth", window) for c in clips]
            for k in sizes:
                m, t = model[:k], truth[:k]
                frames = sum(r["frames"] for r in m)
                zero = share_estimate(np.array([r["offset"] == 0 for r in m]), frames)
                ratio = estimate(
                    np.array([[r["lse_c"], s["lse_c"]] for r, s in zip(m, t, strict=True)]),
                    ratio_of_means(0, 1),
                    frames,
                )
                opening = estimate(np.array([r["opening_r"] for r in m], float), mean_of(), frames)
                silent = estimate(
                    np.array(
                        [np.nan if r["silent_closed"] is None else r["silent_closed"] for r in m], float
                    ),
                    mean_of(),
                    frames,
                )
                table.append(
                    {
                        "steps": steps,
                        "window": window,
                        "clips": k,
                        "frames": frames,
                        "offset_zero_share": zero.value,
                        "offset_zero_half_width": zero.half_width,
                        "lse_c_of_truth": ratio.value,
                        "lse_c_of_truth_half_width": ratio.half_width,
                        "opening_r": opening.value,
                        "opening_r_half_width": opening.half_width,
                        "silent_closed_half_width": silent.half_width,
                        # a dubbing's cost; the evaluation also reconstructs each clip (about as much again)
                        "dubbing_s": sum(r["generate_s"] + r["score_s"] for r in m)
                        + sum(s["score_s"] for s in t),
                    }
                )
    return table


def _run(clip: dict, variant: str, window: int, steps: int | None = None) -> dict:
    return next(
        r
        for r in clip["runs"]
        if r["variant"] == variant and r["window"] == window and (steps is None or r.get("steps") == steps)
    )


def markdown(table: list[dict]) -> str:
    lines = [
        "| steps | frames/clip | clips | offset 0 | ± | LSE-C of truth | ± | opening r | ± | silent closed ± | dubbing s |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in table:
        lines.append(
            f"| {row['steps']} | {row['window']} | {row['clips']} | {row['offset_zero_share']:.3f} | "
            f"{row['offset_zero_half_width']:.3f} | {row['lse_c_of_truth']:.3f} | "
            f"{row['lse_c_of_truth_half_width']:.3f} | {row['opening_r']:.3f} | {row['opening_r_half_width']:.3f} | "
            f"{row['silent_closed_half_width']:.3f} | {row['dubbing_s']:.0f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repo", default=".", help="a repository after `dvc repro` (data, models)")
    parser.add_argument("--clips", type=int, default=0, help="clips of the split (0: every clean clip)")
    parser.add_argument("--windows", type=int, nargs="+", default=[50, 100], help="frames per clip scored")
    parser.add_argument("--steps", type=int, nargs="+", default=[10], help="DDIM step counts")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default="benchmarks/results/eval_size.json")
    parser.add_argument("--analyse", metavar="JSON", help="only print the analysis of an earlier run")
    args = parser.parse_args()
    if args.analyse:
        result = json.loads(Path(args.analyse).read_text())
    else:
        result = measure(args)
        result["analysis"] = analyse(result)
        Path(args.out).write_text(json.dumps(result, indent=1, default=float) + "\n")
    print(markdown(analyse(result)))


if __name__ == "__main__":
    main()
