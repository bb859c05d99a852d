"""Throughput and memory of Whisper encoder features (tiny.en), and the size of the steps at window joins.

    python benchmarks/whisper_features.py --seconds 60 --out benchmarks/results/whisper_features.json

Speech is eSpeak sentences of random words with pauses. Runs with torch limited to `--threads`, so
the figure is seconds of audio per second per core on the CPU. Peak memory is the process's maximum
resident set size (imports and the loaded model included; the RSS after loading is given apart).
The join steps compare the step between the two tokens at every join of windows with the median
token-to-token step, per state, for the stitched windows and for LatentSync's independent ones.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np
import torch
from scipy.signal import resample_poly

from synclip.artifacts import load_whisper_encoder
from synclip.audio.whisper import whisper_features, whisper_windows
from synclip.config import load_params
from synclip.constants import AUDIO_SAMPLE_RATE, WHISPER_CHUNK_TOKENS, WHISPER_TOKENS_PER_SECOND
from synclip.data.speech import synthesize_batch

WORDS = "time people year way day thing world life hand part child eye woman place work week case point"
WORDS += " company number group problem fact water table river mountain garden window paper music"


def speech(seconds: float, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    words = WORDS.split()
    texts = [" ".join(rng.choice(words, size=rng.integers(4, 9))) + "." for _ in range(round(seconds / 2))]
    parts = []
    for utterance in synthesize_batch(texts):
        parts.append(resample_poly(utterance.samples, AUDIO_SAMPLE_RATE, utterance.sample_rate))
        parts.append(np.zeros(round(rng.uniform(0.1, 0.8) * AUDIO_SAMPLE_RATE)))
    audio = np.concatenate(parts).astype(np.float32)
    return audio[: round(seconds * AUDIO_SAMPLE_RATE)]


def join_steps(features: torch.Tensor, joins: list[int]) -> list[float]:
    """Mean over `joins` of ‖f[t] − f[t − 1]‖ / median step, per state. (T_w, L, D) → (L,)"""
    steps = (features[1:] - features[:-1]).norm(dim=-1)  # (T_w − 1, L)
    ratios = torch.stack([steps[t - 1] for t in joins]) / steps.median(dim=0).values
    return [round(float(r), 2) for r in ratios.mean(dim=0)]


def vm(field: str) -> float:
    """A VmRSS / VmHWM line of /proc/self/status, in MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/whisper_features.json"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    audio = speech(args.seconds)
    start = time.perf_counter()
    encoder = load_whisper_encoder(load_params(args.params).pretrained.whisper)
    load_s = time.perf_counter() - start
    rss_loaded = vm("VmRSS")
    start = time.perf_counter()
    features = whisper_features(audio, encoder)
    encode_s = time.perf_counter() - start
    peak = vm("VmHWM")
    naive = whisper_features(audio, encoder, hop_tokens=WHISPER_CHUNK_TOKENS)
    stitched_joins = [lo for _, lo, _ in whisper_windows(len(features))[1:]]
    naive_joins = [lo for _, lo, _ in whisper_windows(len(features), WHISPER_CHUNK_TOKENS)[1:]]
    result = {
        "benchmark": "whisper_features",
        "machine": platform.machine(),
        "model": "whisper-tiny.en",
        "threads": args.threads,
        "audio_s": args.seconds,
        "features_shape": list(features.shape),
        "windows": len(whisper_windows(len(features))),
        "load_s": round(load_s, 2),
        "encode_s": round(encode_s, 2),
        "audio_s_per_s": round(args.seconds / encode_s, 1),
        "rss_after_load_mb": round(rss_loaded, 1),
        "peak_rss_mb": round(peak, 1),
        "join_step_over_median_step": {
            "stitched": {
                "joins_s": [t / WHISPER_TOKENS_PER_SECOND for t in stitched_joins],
                "per_state": join_steps(features, stitched_joins),
            },
            "latentsync": {
                "joins_s": [t / WHISPER_TOKENS_PER_SECOND for t in naive_joins],
                "per_state": join_steps(naive, naive_joins),
            },
        },
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
