"""Speed and peak memory of the papers' instruments at their published sizes: random weights, CPU or a GPU.

    python benchmarks/paper_instruments.py --out benchmarks/results/paper_instruments.json
    python benchmarks/paper_instruments.py --threads 1 --repeats 5 --out /tmp/one_thread.json
    python benchmarks/paper_instruments.py --device cuda --threads 2   # on a GPU

The networks have the published geometries (syncnet_python's `S`, S3FD, pytorch-fid's Inception) with
seeded random weights in the published file formats, loaded by synclip's strict loaders; their cost does
not depend on the values, except S3FD's post-processing (below). Each instrument is measured in its own
child process per thread count (torch and OpenCV set to that many threads), so its peak resident set is
its own; each timing is the best of `--repeats` after one warm-up, and every try is kept in the JSON
with the load average around the child, to show a disturbed measurement (the cores are shared).

- SyncNetV2: lip windows (3 × 5 × 224 × 224) and audio windows (1 × 13 × 20 MFCC) per second in
  upstream's batches of 20; Sync-C of one 10 s track end to end (`sync_conf` on 250 crops and their
  160,000 samples: MFCC, both towers, the ±15-frame distances).
- S3FD: `detect_faces` frames per second at scale 0.25 on 512 × 512 frames (HDTF's size) and on 1080p,
  with the network's forward alone beside it. Random weights score every prior about 0.5, so every
  prior enters the non-maximum suppression; published weights pass far fewer, so the measured
  post-processing is an upper bound (the candidate count is reported).
- MediaPipe: FaceLandmarker (VIDEO mode) alone, and `track_faces_mediapipe` (landmarks, tracks, crops)
  on 100 frames of a 512 px face video. MediaPipe runs its own thread pool; `--threads` does not bound it.
- FID Inception: frames per second at 299 px (`fid_features`, batches of 16).
- I3D (FVD): not measured. The published `i3d_torchscript.pt` is not here, and the tests' TinyI3D has
  none of its cost.

The video and the weight files are written first, by a process of their own, so drawing the weights does
not count. Peak memory is each child's maximum resident set (and torch's peak CUDA allocation on a GPU),
beside its high-water marks after the common imports (torch, OpenCV, the decoder: about 0.55 GiB, torch
alone 0.5) and after the instrument's own imports and weights (MediaPipe's are inside its measurement).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from statistics import median

ROOT = Path(__file__).resolve().parents[1]
LANDMARKER = ROOT / "models" / "pretrained" / "face_landmarker.task"
VIDEO_SIZE = 512  # HDTF's clips are 512 px
VIDEO_FRAMES = 250  # 10 s at 25 fps: the end-to-end Sync-C track
MEDIAPIPE_FRAMES = 100
S3FD_FRAMES = {"512x512": 6, "1920x1080": 2}  # frames per timed try
FID_FRAMES = 16
SYNC_BATCH = 20  # syncnet_python's batch of windows
# weight seeds as tests/test_paper.py writes them (S3FD's is s3fd_inputs.SEED)
SEEDS = {"syncnet_v2": 11, "fid_inception": 3}
VIDEO = "face.mp4"
WEIGHTS = {"syncnet_v2": "syncnet_v2.model", "s3fd": "sfd_face.pth", "fid_inception": "pt_inception.pth"}
INSTRUMENTS = ("syncnet_v2", "s3fd", "mediapipe", "fid_inception")


def rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB → MiB


def best_of(run, repeats: int, synchronize) -> dict:
    """Time `run()` after one warm-up call: the best and every try, seconds."""
    run()
    synchronize()
    tries = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        synchronize()
        tries.append(time.perf_counter() - start)
    return {
        "best_s": round(min(tries), 4),
        "median_s": round(median(tries), 4),
        "tries_s": [round(t, 4) for t in tries],
    }


def rate(timing: dict, items: int, unit: str) -> dict:
    """`items` per second at the best try, and the spread of the tries (max / min)."""
    spread = max(timing["tries_s"]) / min(timing["tries_s"])
    return {f"{unit}_per_second": round(items / timing["best_s"], 3), "spread": round(spread, 3), **timing}


# --- one instrument, in a child process ----------------------------------------------------------


def prepare(workdir: Path) -> None:
    """The face video and the three weight files, written by a process of their own: drawing the
    weights (float64, then float32) must not count in an instrument's peak memory."""
    import torch

    sys.path.insert(0, str(ROOT / "tests"))
    from s3fd_inputs import SEED
    from seeded_weights import seeded_state, shapes_of
    from test_paper import face_video  # the astronaut photo drifting, with a 4 Hz-swelling tone

    from synclip.eval.fidelity import FidInception, FidInceptionConfig
    from synclip.nn.s3fd import S3FDConfig, S3FDNet
    from synclip.nn.syncnet_v2 import SyncNetV2, SyncNetV2Config

    face_video(workdir / VIDEO, frames=VIDEO_FRAMES, size=VIDEO_SIZE)
    for module, seed, file in (
        (SyncNetV2(SyncNetV2Config()), SEEDS["syncnet_v2"], WEIGHTS["syncnet_v2"]),
        (S3FDNet(S3FDConfig()), SEED, WEIGHTS["s3fd"]),
        (FidInception(FidInceptionConfig()), SEEDS["fid_inception"], WEIGHTS["fid_inception"]),
    ):
        torch.save(seeded_state(shapes_of(module), seed), workdir / file)


def measure(name: str, workdir: Path, device_name: str, repeats: int) -> dict:
    """One instrument's timings on `device_name`; the caller has set the thread counts."""
    import cv2
    import numpy as np
    import torch

    from synclip.media.decode import iter_frames, read_audio

    device = torch.device(device_name)
    video = workdir / VIDEO

    def synchronize() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    def first_frames(count: int) -> np.ndarray:
        """(count, H, W, 3) uint8 RGB: the video's first frames."""
        return np.stack(list(itertools.islice(iter_frames(video), count)))

    after_imports = rss_mib()
    after_load = after_imports  # MediaPipe loads its model inside the measurement
    out: dict = {}

    if name == "syncnet_v2":
        from synclip.eval.paper import int16_samples
        from synclip.eval.sync_conf import crops_from_frames, load_syncnet_v2, sync_conf

        net = load_syncnet_v2(workdir / WEIGHTS[name]).to(device)
        after_load = rss_mib()
        with torch.no_grad():
            lips = torch.rand(SYNC_BATCH, 3, 5, 224, 224, device=device) * 255  # (B, C, 5, H, W)
            mfcc = torch.randn(SYNC_BATCH, 1, 13, 20, device=device)  # (B, 1, 13, 20)
            lip = best_of(lambda: net.embed_lips(lips), repeats, synchronize)
            audio = best_of(lambda: [net.embed_audio(mfcc) for _ in range(10)], repeats, synchronize)
        # a fixed 384 px square about the face stands for its track's crops: the cost is the same
        margin = (VIDEO_SIZE - 384) // 2
        square = slice(margin, margin + 384)
        # cropped as decoded (the frames are never all held): (250, 224, 224, 3) uint8, 36.8 MiB
        frames = itertools.islice(iter_frames(video), VIDEO_FRAMES)
        crops = crops_from_frames(frame[square, square] for frame in frames)
        samples = int16_samples(read_audio(video))[: VIDEO_FRAMES * 640]
        scores = []
        track = best_of(
            lambda: scores.append(sync_conf(net, crops, samples)), max(1, repeats - 1), synchronize
        )
        out = {
            "lip_windows": rate(lip, SYNC_BATCH, "windows"),
            "audio_windows": rate(audio, 10 * SYNC_BATCH, "windows"),
            "sync_conf_10s_track": {
                "crops": len(crops),
                "windows": scores[-1].windows,
                "seconds": round(track["best_s"], 3),
                "seconds_per_video_second": round(track["best_s"] / (len(crops) / 25), 3),
                "spread": round(max(track["tries_s"]) / min(track["tries_s"]), 3),
                **track,
            },
        }
    elif name == "s3fd":
        from synclip.eval.face_tracks import FACEDET_SCALE, detect_faces, detector_input, load_s3fd

        net = load_s3fd(workdir / WEIGHTS[name]).to(device)
        after_load = rss_mib()
        frames = first_frames(1)
        full_hd = np.full((1080, 1920, 3), 90, np.uint8)
        full_hd[:, 420:1500] = cv2.resize(frames[0], (1080, 1080), interpolation=cv2.INTER_CUBIC)
        for label, image in (("512x512", frames[0]), ("1920x1080", full_hd)):
            count = S3FD_FRAMES[label]
            timing = best_of(
                lambda image=image, count=count: [detect_faces(net, image) for _ in range(count)],
                repeats,
                synchronize,
            )
            x = torch.from_numpy(detector_input(image))[None].to(device)
            with torch.no_grad():
                forward = best_of(
                    lambda x=x, count=count: [net(x) for _ in range(count)], repeats, synchronize
                )
                scores = net(x).scores[0, :, 1]
            out[label] = {
                "scale": FACEDET_SCALE,
                "network_input": list(x.shape[2:]),
                "detect_faces": rate(timing, count, "frames"),
                "forward_only": rate(forward, count, "frames"),
                "priors": int(scores.numel()),
                "candidates_above_conf_thresh": int((scores > net.config.conf_thresh).sum()),
            }
    elif name == "mediapipe":
        from synclip.eval.face_tracks import landmark_boxes, track_faces_mediapipe
        from synclip.face.landmarks import FaceLandmarker

        clip = list(first_frames(MEDIAPIPE_FRAMES))

        def landmarks() -> None:
            with FaceLandmarker(LANDMARKER, max_faces=4, fps=25, video=True) as detector:
                for index, frame in enumerate(clip):
                    landmark_boxes(detector.detect(frame, index))

        tracks = []
        detect = best_of(landmarks, repeats, synchronize)
        track = best_of(
            lambda: tracks.append(track_faces_mediapipe(clip, LANDMARKER, [])), repeats, synchronize
        )
        out = {
            "frame_size": list(clip[0].shape[:2]),
            "frames": len(clip),
            "landmarks_only": rate(detect, len(clip), "frames"),
            "track_faces_mediapipe": rate(track, len(clip), "frames"),
            "tracks_found": len(tracks[-1]),
            "held_frames_mib": round(sum(f.nbytes for f in clip) / 2**20, 1),  # in the peak RSS
        }
    elif name == "fid_inception":
        from synclip.eval.fidelity import fid_features, load_fid_inception

        model = load_fid_inception(workdir / WEIGHTS[name]).to(device)
        after_load = rss_mib()
        images = np.stack(
            [cv2.resize(f, (299, 299), interpolation=cv2.INTER_AREA) for f in first_frames(FID_FRAMES)]
        )
        timing = best_of(lambda: fid_features(model, images, batch=FID_FRAMES), repeats, synchronize)
        out = {"frame_size": [299, 299], "batch": FID_FRAMES, "features": rate(timing, FID_FRAMES, "frames")}
    else:
        raise ValueError(f"unknown instrument {name!r}; expected one of {INSTRUMENTS}")

    memory = {
        "rss_after_imports_mib": round(after_imports, 1),
        "rss_after_loading_weights_mib": round(after_load, 1),
        "peak_rss_mib": round(rss_mib(), 1),
    }
    if device.type == "cuda":
        memory["peak_cuda_allocated_mib"] = round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
    return {**out, **memory}


def child(args: argparse.Namespace) -> None:
    """Set the thread counts before anything computes, measure one instrument, print its JSON."""
    import cv2
    import torch

    torch.set_num_threads(args.threads)
    cv2.setNumThreads(args.threads)
    load = os.getloadavg()[0]
    result = measure(args.child, args.workdir, args.device, args.repeats)
    result["torch"] = torch.__version__
    device = torch.device(args.device)
    result["device_name"] = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    result["load_average_1min"] = [round(load, 2), round(os.getloadavg()[0], 2)]  # at start, at end
    print(json.dumps(result))


# --- the parent ----------------------------------------------------------------------------------


def spreads(result: dict) -> list[float]:
    """Every timing's slowest / fastest try in a child's result."""
    found = []
    for key, value in result.items():
        if key == "spread":
            found.append(value)
        elif isinstance(value, dict):
            found += spreads(value)
    return found


def run_child(name: str, threads: int, args: argparse.Namespace, workdir: Path) -> dict:
    """One instrument in a fresh process; run again (up to --max-runs) while a timing's tries spread by
    more than --max-spread, keeping the run with the smallest worst spread."""
    command = [sys.executable, __file__, "--child", name, "--threads", str(threads), "--device", args.device]
    command += ["--repeats", str(args.repeats), "--workdir", str(workdir)]
    runs = []
    for _ in range(args.max_runs):
        start = time.perf_counter()
        done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, check=False)
        if done.returncode != 0:
            raise RuntimeError(
                f"{name} with {threads} thread(s) failed ({done.returncode}):\n{done.stderr[-3000:]}"
            )
        result = json.loads(done.stdout.strip().splitlines()[-1])
        result["child_wall_s"] = round(time.perf_counter() - start, 1)
        runs.append(result)
        if max(spreads(result), default=1.0) <= args.max_spread:
            break
    kept = min(runs, key=lambda run: max(spreads(run), default=1.0))
    kept["runs"] = len(runs)
    kept["worst_spread_of_each_run"] = [round(max(spreads(run), default=1.0), 3) for run in runs]
    return kept


def machine() -> dict:
    model = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    return {
        "cpu": model,
        "cores": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--threads", type=int, nargs="+", default=[1, 2], help="torch / OpenCV threads, one run each"
    )
    parser.add_argument(
        "--repeats", type=int, default=3, help="timed tries after a warm-up; the best is reported"
    )
    parser.add_argument(
        "--max-spread", type=float, default=1.15, help="rerun a child whose tries spread more (disturbed)"
    )
    parser.add_argument("--max-runs", type=int, default=2, help="runs of a child at most")
    parser.add_argument("--only", nargs="+", choices=INSTRUMENTS, default=list(INSTRUMENTS))
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/paper_instruments.json"))
    parser.add_argument("--child", choices=INSTRUMENTS, help=argparse.SUPPRESS)
    parser.add_argument("--workdir", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--prepare", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.prepare:
        prepare(args.workdir)
        return
    if args.child:
        args.threads = args.threads[0]
        child(args)
        return

    start = time.perf_counter()
    results: dict = {}
    with tempfile.TemporaryDirectory() as workdir:
        workdir = Path(workdir)
        # in a child too: this process stays small, and a child's peak RSS starts from its parent's
        subprocess.run(
            [sys.executable, __file__, "--prepare", "--workdir", str(workdir)], cwd=ROOT, check=True
        )
        for threads in args.threads:
            results[f"threads_{threads}"] = {}
            for name in args.only:
                result = run_child(name, threads, args, workdir)
                results[f"threads_{threads}"][name] = result
                print(f"{threads} thread(s) {name}: {json.dumps(result)}", flush=True)
    first = next(iter(next(iter(results.values())).values()))
    report = {
        "what": "the papers' instruments at their published geometries, seeded random weights",
        "machine": machine(),
        "torch": first["torch"],
        "device": args.device,
        "device_name": first["device_name"],
        "threads": args.threads,
        "repeats": args.repeats,
        "timing": "best of `repeats` tries after one warm-up (Sync-C of the 10 s track: best of repeats − 1); "
        "spread = slowest / fastest try; a child whose worst spread exceeds max_spread is run again, up to "
        "max_runs times, and the run with the smallest worst spread is kept (runs, worst_spread_of_each_run); "
        "load_average_1min at the child's start and end",
        "max_spread": args.max_spread,
        "max_runs": args.max_runs,
        "video": f"tests/test_paper.py face_video: {VIDEO_FRAMES} frames, {VIDEO_SIZE} px, 25 fps",
        "i3d": "skipped: the published i3d_torchscript.pt is not here, and TinyI3D's speed says nothing about it",
        "mediapipe_threads": "MediaPipe's own thread pool; not bounded by --threads",
        "results": results,
        "total_wall_s": round(time.perf_counter() - start, 1),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1))
    print(json.dumps({k: v for k, v in report.items() if k != "results"}, indent=1))


if __name__ == "__main__":
    main()
