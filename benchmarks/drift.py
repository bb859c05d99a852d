"""Cost of the drift features and report, and what the report says of real degraded inputs.

    python benchmarks/drift.py --clips 20 --out benchmarks/results/drift.json

Takes `--clips` sources of the test identities (never trained on) and makes a degraded copy of each
with ffmpeg: 35 % darker, the picture at half size in a black frame twice as large (the face half
as wide), and the speech at 8 kHz (a phone line). It times the features of every original and copy
(one process, OpenCV on one thread) and reports both sets against the drift reference
(`reports/drift/reference.parquet`, the training sources, from `dvc repro drift_reference`).
Peak memory is the process's maximum resident set size.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import tempfile
import time
from pathlib import Path

import cv2
import imageio_ffmpeg
import pandas as pd

from synclip.config import load_params
from synclip.quality.drift import drift_report, input_features, read_features


def degrade(source: Path, out: Path) -> Path:
    video = "eq=brightness=-0.35:contrast=0.8,scale=iw/2:ih/2,pad=iw*2:ih*2:(ow-iw)/2:(oh-ih)/2"
    command = [
        imageio_ffmpeg.get_ffmpeg_exe(),
        "-loglevel",
        "error",
        "-y",
        "-i",
        str(source),
        "-vf",
        video,
        "-c:v",
        "libx264",
        "-preset",
        "veryfast",
        "-crf",
        "20",
        "-ar",
        "8000",
        "-ac",
        "1",
        "-c:a",
        "aac",
        str(out),
    ]
    subprocess.run(command, check=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--raw", type=Path, default=Path("data/raw"))
    parser.add_argument("--manifest", type=Path, default=Path("data/processed/manifest.parquet"))
    parser.add_argument("--reference", type=Path, default=Path("reports/drift/reference.parquet"))
    parser.add_argument("--clips", type=int, default=20)
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/drift.json"))
    args = parser.parse_args()
    cv2.setNumThreads(1)
    params = load_params(args.params)
    landmarker = params.pretrained.face_landmarker
    manifest = pd.read_parquet(args.manifest)
    sources = sorted(manifest.loc[manifest["split"] == params.drift.baseline_split, "source"].unique())
    sources = sources[: args.clips]
    reference = read_features(args.reference)
    result = {
        "benchmark": "drift",
        "machine": platform.machine(),
        "clips": len(sources),
        "reference_rows": len(reference),
        "sampled_frames": params.drift.sampled_frames,
    }
    with tempfile.TemporaryDirectory() as tmp:
        degraded = [degrade(args.raw / s, Path(tmp) / Path(s).name) for s in sources]
        for name, paths in (("original", [args.raw / s for s in sources]), ("degraded", degraded)):
            input_features(paths[0], paths[0], landmarker)  # warm: the landmarker model and numba
            started = time.perf_counter()
            rows = [input_features(p, p, landmarker, params.drift.sampled_frames) for p in paths]
            seconds = time.perf_counter() - started
            started = time.perf_counter()
            summary = drift_report(reference, pd.DataFrame(rows), Path(tmp) / name, params.drift.drift_share)
            result[name] = {
                "ms_per_video_features": round(1000 * seconds / len(paths), 1),
                "videos_per_s": round(len(paths) / seconds, 2),
                "report_s": round(time.perf_counter() - started, 2),
                "drifted": summary.drifted,
                "drifted_share": round(summary.share, 3),
                "dataset_drift": summary.dataset_drift,
            }
            print(name, result[name])
    result["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
