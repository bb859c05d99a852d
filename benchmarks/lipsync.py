"""End-to-end speed and peak memory of `synclip lipsync` (`lipsync_file`) by input length.

    python benchmarks/lipsync.py --seconds 10 60 300 --steps 4 --out benchmarks/results/lipsync.json
    python benchmarks/lipsync.py --seconds 10 --steps 20   # adds the default-steps run to the same file

Each length runs in a fresh subprocess (face tracking, Whisper features, DDIM, paste-back, encoding),
so its peak resident set (VmHWM, read inside the child at the end; the loaded model included) is that
input's alone. The inputs: a SynthTalk-style talking head (SynthTalk's renderer and backdrop, 25 fps)
whose 10 s base clip is played forward and backward to the length, and eSpeak speech of the same
length. The model is `--model` (default models/synclip when it is packaged), else an untrained
pipeline of params.yaml's geometry: speed and memory do not depend on the weights. torch runs with
`--threads` threads. Runs of other lengths or step counts already in `--out` are kept. The machine
may be shared: the load average before and after every run is recorded with it. Memory does not
depend on the steps and most of the time per frame is not the UNet's (tracking, the VAE, decoding,
encoding), so on a small CPU the length series can run at 1 step and the default's speed at 10 s.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import wave
from pathlib import Path

import numpy as np

from synclip.constants import AUDIO_SAMPLE_RATE, VIDEO_FPS

WORDS = "time people year way day thing world life hand part child eye woman place work week case point"
WORDS += " company number group problem fact water table river mountain garden window paper music"
BASE_SECONDS = 10  # the rendered clip the longer videos loop


def vm(field: str) -> float:
    """A VmRSS / VmHWM line of /proc/self/status, in MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


# --- inputs ---------------------------------------------------------------------------------------


def base_clip(width: int, height: int, seed: int = 0) -> list[np.ndarray]:
    """BASE_SECONDS of a drawn talking head: head sway, a moving mouth, blinks. (H, W, 3) uint8 frames."""
    from synclip.data.faces import FaceRenderer, Identity, MouthState, Pose, background

    rng = np.random.default_rng(seed)
    identity = Identity.sample("bench", rng)
    renderer = FaceRenderer(identity)
    backdrop = background(identity, width, height, rng)
    frames = []
    for i in range(BASE_SECONDS * VIDEO_FPS):
        t = i / VIDEO_FPS
        image = backdrop.copy()
        pose = Pose(
            width * (0.5 + 0.03 * np.sin(0.7 * t)),
            height * (0.44 + 0.02 * np.sin(0.5 * t + 1)),
            0.16 * height * (1 + 0.04 * np.sin(0.3 * t)),
            0.06 * np.sin(0.9 * t),
        )
        mouth = MouthState(0.5 + 0.5 * np.sin(7 * t) * np.sin(1.3 * t), 0.5, 0.3, 0.3, 0.0)
        renderer.draw(image, pose, mouth, 0.0 if i % 90 in (0, 1, 2) else 1.0)
        frames.append(image)
    return frames


def write_video(path: Path, base: list[np.ndarray], seconds: int) -> Path:
    """`seconds` at 25 fps: the base clip forward, backward, forward …"""
    from synclip.inference.lipsync import ping_pong
    from synclip.media.io import VideoWriter

    height, width = base[0].shape[:2]
    with VideoWriter(path, width, height, VIDEO_FPS, crf=18, preset="veryfast") as writer:
        for i in range(seconds * VIDEO_FPS):
            writer.write_frame(base[ping_pong(i, len(base))])
    return path


def write_speech(path: Path, seconds: int, seed: int = 0) -> Path:
    """`seconds` of eSpeak sentences of random words with pauses, as a 16 kHz mono 16-bit WAV."""
    from scipy.signal import resample_poly

    from synclip.data.speech import synthesize_batch

    rng = np.random.default_rng(seed)
    words = WORDS.split()
    needed = seconds * AUDIO_SAMPLE_RATE
    parts, total = [], 0
    while total < needed:
        texts = [" ".join(rng.choice(words, size=rng.integers(4, 9))) + "." for _ in range(20)]
        for utterance in synthesize_batch(texts):
            for part in (
                resample_poly(utterance.samples, AUDIO_SAMPLE_RATE, utterance.sample_rate),
                np.zeros(round(rng.uniform(0.1, 0.8) * AUDIO_SAMPLE_RATE)),
            ):
                parts.append(part)
                total += len(part)
    audio = np.concatenate(parts)[:needed]
    with wave.open(str(path), "wb") as file:
        file.setnchannels(1)
        file.setsampwidth(2)
        file.setframerate(AUDIO_SAMPLE_RATE)
        file.writeframes((np.clip(audio, -1, 1) * 32767).round().astype("<i2").tobytes())
    return path


def untrained_model(folder: Path, params_path: Path, overrides: list[str]) -> Path:
    """A packaged pipeline of the profile's geometry (stage-2 UNet, VAE, Whisper): random UNet weights;
    the VAE is `vae.source`'s (TAEF2's pretrained weights, or a fresh AutoencoderKL of vae's geometry)."""
    import torch
    from transformers import WhisperConfig

    from synclip.artifacts import load_vae
    from synclip.config import load_params
    from synclip.inference.package import assemble
    from synclip.inference.pipeline import PipelineConfig
    from synclip.nn.unet import UNet3DConditionModel, unet_config
    from synclip.nn.vae import build_vae

    params = load_params(params_path, overrides)
    whisper = Path(params.pretrained.whisper)
    width = WhisperConfig.from_pretrained(whisper).d_model
    torch.manual_seed(0)
    if params.vae.source == "taef2":
        vae = load_vae(params.pretrained.taef2, "pretrained.taef2")
    else:
        vae = build_vae(params.vae, params.preprocess.resolution)
    channels = vae.config.latent_channels
    stage = params.train_unet.stage(2)
    unet = UNet3DConditionModel(unet_config(params.unet, stage, audio_width=width, latent_channels=channels))
    config = PipelineConfig(
        resolution=params.preprocess.resolution,
        vae_precision=params.vae.precision,
        **dataclasses.asdict(params.inference),
    )
    return assemble(folder, unet, vae, whisper, config)


# --- one run (the child) ------------------------------------------------------------------------------


def child(args: argparse.Namespace) -> None:
    """One lip sync; prints its figures as one JSON line."""
    import cv2
    import torch

    from synclip.inference.lipsync import LipSyncOptions, lipsync_file
    from synclip.inference.package import load_pipeline

    torch.set_num_threads(args.threads)
    cv2.setNumThreads(args.threads)
    start = time.perf_counter()
    pipeline = load_pipeline(args.model)
    load_s = time.perf_counter() - start
    rss_loaded = vm("VmRSS")
    marks: dict[str, float] = {}
    rss_by_progress: dict[str, float] = {}  # VmRSS at the first frame past 0 %, 10 %, … 100 % of the output

    def progress(done: int, total: int) -> None:
        if done == 1:
            marks["first_frame_s"] = time.perf_counter() - start
        percent = f"{10 * (10 * done // total)}%"
        if percent not in rss_by_progress:
            rss_by_progress[percent] = round(vm("VmRSS"), 1)

    options = LipSyncOptions(steps=args.steps, guidance=args.guidance)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        summary = lipsync_file(
            pipeline, args.video, args.audio, Path(tmp) / "out.mp4", args.landmarker, options, progress
        )
    wall = time.perf_counter() - start
    frames = summary.frames
    rest = wall - marks["first_frame_s"]
    result = {
        "frames": frames,
        "frames_generated": summary.frames_generated,
        "frames_without_face": summary.frames_without_face,
        "load_s": round(load_s, 2),
        "wall_s": round(wall, 2),
        "fps": round(frames / wall, 3),
        # tracking pass (MediaPipe on every frame), the audio's window maxima, the first chunk
        "first_frame_s": round(marks["first_frame_s"], 2),
        "fps_after_first_frame": round((frames - 1) / rest, 3) if rest > 0 else None,
        "rss_after_load_mb": round(rss_loaded, 1),
        "rss_mb_by_progress": rss_by_progress,
        "peak_rss_mb": round(vm("VmHWM"), 1),
    }
    print(json.dumps(result))


# --- the runs (the parent) ------------------------------------------------------------------------------


def run_child(args: argparse.Namespace, model: Path, video: Path, audio: Path, steps: int) -> dict:
    command = [
        sys.executable,
        __file__,
        "--child",
        "--model",
        str(model),
        "--video",
        str(video),
        "--audio",
        str(audio),
        "--landmarker",
        str(args.landmarker),
        "--steps",
        str(steps),
        "--threads",
        str(args.threads),
    ]
    if args.guidance is not None:
        command += ["--guidance", str(args.guidance)]
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads)}
    load_before = os.getloadavg()  # `uptime`'s figures: the machine may be shared
    done = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    if done.returncode != 0:
        sys.stderr.write(done.stderr)
        raise SystemExit(f"the run on {video} failed with exit code {done.returncode}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    result["load_average_1_5_15"] = {
        "before": [round(x, 2) for x in load_before],
        "after": [round(x, 2) for x in os.getloadavg()],
    }
    return result


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=int, nargs="+", default=[10, 60, 300])
    parser.add_argument("--steps", type=int, default=20, help="DDIM steps of every run (recorded per run)")
    parser.add_argument("--guidance", type=float, help="default: the model's")
    parser.add_argument("--threads", type=int, default=1, help="torch / OpenCV threads of the lip sync")
    parser.add_argument("--model", type=Path, help="packaged model (default: models/synclip, else untrained)")
    parser.add_argument("--size", type=int, nargs=2, default=[480, 360], metavar=("W", "H"))
    parser.add_argument("--work", type=Path, help="keep (and reuse) the inputs here (default: a temp folder)")
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="params override for the untrained model (repeatable), e.g. vae.source=trained; recorded per run",
    )
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/lipsync.json"))
    # the child's own arguments
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--video", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--audio", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--landmarker", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return

    import torch

    from synclip.config import load_params
    from synclip.inference.package import PIPELINE_FILE

    params = load_params(args.params)
    args.landmarker = Path(params.pretrained.face_landmarker)
    with tempfile.TemporaryDirectory() as tmp:
        work = args.work or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        model = args.model or Path("models/synclip")
        trained = (model / PIPELINE_FILE).is_file()
        if args.model is not None and not trained:
            raise SystemExit(f"{model}: not a packaged synclip model")
        if not trained:
            model = untrained_model(work / f"untrained{'-'.join(['', *args.set])}", args.params, args.set)
        config = json.loads((model / PIPELINE_FILE).read_text())
        base = None
        runs = []
        for seconds in args.seconds:
            video = work / f"talking_{seconds}s_{args.size[0]}x{args.size[1]}.mp4"
            audio = work / f"speech_{seconds}s.wav"
            if not video.is_file():
                base = base or base_clip(*args.size)
                write_video(video, base, seconds)
            if not audio.is_file():
                write_speech(audio, seconds)
            print(f"{seconds} s at {args.steps} steps …", file=sys.stderr, flush=True)
            result = run_child(args, model, video, audio, args.steps)
            runs.append(
                {
                    "seconds": seconds,
                    "steps": args.steps,
                    "guidance": config["guidance"] if args.guidance is None else args.guidance,
                    "threads": args.threads,
                    "size": args.size,
                    "overrides": args.set,
                    **result,
                }
            )
            print(json.dumps(runs[-1]), file=sys.stderr, flush=True)

    def key(run: dict) -> tuple:
        return (
            run["seconds"],
            run["steps"],
            run["threads"],
            tuple(run["size"]),
            tuple(run.get("overrides", [])),
        )

    previous = json.loads(args.out.read_text()).get("runs", []) if args.out.is_file() else []
    fresh = {key(run) for run in runs}
    merged = sorted(
        [r for r in previous if key(r) not in fresh] + runs, key=lambda r: (r["steps"], r["seconds"])
    )
    ratios = {}
    for steps in sorted({r["steps"] for r in merged}):
        same = [
            r
            for r in merged
            if r["steps"] == steps and r["threads"] == args.threads and r.get("overrides", []) == args.set
        ]
        if len(same) > 1:
            short, long = same[0], same[-1]
            ratios[f"{long['seconds']}s_over_{short['seconds']}s_at_{steps}_steps"] = round(
                long["peak_rss_mb"] / short["peak_rss_mb"], 3
            )
    result = {
        "benchmark": "lipsync",
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": {
            "processor": platform.machine(),
            "cores": os.cpu_count(),
            "python": platform.python_version(),
            "torch": torch.__version__,
            "torch_threads": args.threads,
        },
        "model": str(model) if trained else "untrained, of params.yaml's geometry (stage-2 UNet)",
        "pipeline": {k: v for k, v in config.items() if k not in ("kind", "synclip_version")},
        "input": f"{args.size[0]}x{args.size[1]} 25 fps talking head (looped 10 s clip) + eSpeak speech, 16 kHz",
        "acceptance": "peak RSS of the longest input within 1.2x of the shortest's",
        "peak_rss_ratio": ratios,
        "runs": merged,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
