"""Throughput of preprocessing's face work: decode + detect/landmark + align + warp, per core.

    python benchmarks/detect_align.py --raw data/raw --clips 6 --out benchmarks/results/detect_align.json

Runs in one process with torch/OpenCV limited to one thread, so the figure is frames per second
per core. Peak memory is the process's maximum resident set size.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import time
from pathlib import Path

import cv2
import numpy as np

from synclip.config import load_params
from synclip.data.preprocess import detect_pass, list_sources
from synclip.face.align import track_transforms, warp_face
from synclip.media.decode import iter_frames
from synclip.media.probe import MediaError


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--raw", type=Path, default=Path("data/raw"))
    parser.add_argument("--clips", type=int, default=6)
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/detect_align.json"))
    args = parser.parse_args()
    cv2.setNumThreads(1)
    params = load_params(args.params)
    pre = params.preprocess
    model = params.pretrained.face_landmarker
    timings = {"decode_s": 0.0, "detect_s": 0.0, "align_warp_s": 0.0}
    frames = 0
    used = []
    for path in list_sources(args.raw):
        if len(used) == args.clips:
            break
        try:
            start = time.perf_counter()
            decoded = list(iter_frames(path))
            timings["decode_s"] += time.perf_counter() - start
            start = time.perf_counter()
            track = detect_pass(path, pre, model).faces  # decodes again: subtract one decode below
            timings["detect_s"] += time.perf_counter() - start
        except MediaError:
            continue
        if not (track.counts == 1).all():
            continue
        start = time.perf_counter()
        matrices = track_transforms(track.stable, pre.resolution, pre.smoothing_frames)
        for frame, matrix in zip(decoded, matrices, strict=True):
            warp_face(frame, matrix, pre.resolution)
        timings["align_warp_s"] += time.perf_counter() - start
        frames += len(decoded)
        used.append(path.name)
    detect_only = timings["detect_s"] - timings["decode_s"]
    total = timings["decode_s"] + timings["detect_s"] + timings["align_warp_s"]
    result = {
        "benchmark": "detect_align",
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
        "resolution": pre.resolution,
        "clips": used,
        "frames_25fps": frames,
        "fps_per_core_end_to_end": round(frames / total, 2),
        "ms_per_frame": {
            "decode": round(1000 * timings["decode_s"] / frames, 2),
            "shot_detect_and_landmarks": round(1000 * detect_only / frames, 2),
            "align_and_warp": round(1000 * timings["align_warp_s"] / frames, 2),
        },
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "mean_source_pixels": int(np.mean([f.size // 3 for f in decoded])),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
