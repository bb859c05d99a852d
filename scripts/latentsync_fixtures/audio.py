"""Fixtures of LatentSync's audio front end: its Whisper (tiny, seeded random weights) on two synthetic clips.

Writes tests/fixtures/latentsync/audio.safetensors: the openai-format weights (float16, as openai's own
checkpoints), the clips as 16-bit samples (what upstream's ffmpeg `load_audio` yields), upstream's
log-mel of the short clip, its per-frame tokens (`feature2chunks`) at recorded frame indices, its
frame counts, and its decoder's logits on a few tokens (so every converted weight is checked).
"""

from __future__ import annotations

import sys
import tempfile
import types
from pathlib import Path

import numpy as np
import torch

from scripts.latentsync_fixtures.common import write_fixture

SOURCES = (
    "latentsync/whisper/audio2feature.py",
    "latentsync/whisper/whisper/__init__.py",
    "latentsync/whisper/whisper/audio.py",
    "latentsync/whisper/whisper/model.py",
    "latentsync/whisper/whisper/transcribe.py",
)
DIMS = {
    "n_mels": 80,
    "n_audio_ctx": 1500,
    "n_audio_state": 64,
    "n_audio_head": 4,
    "n_audio_layer": 4,
    "n_vocab": 100,
    "n_text_ctx": 16,
    "n_text_state": 64,
    "n_text_head": 4,
    "n_text_layer": 1,
}
SAMPLE_RATE = 16_000
CLIPS = {"short": 52_800, "long": 504_000}  # 3.3 s; 31.5 s, across the 30 s window boundary
FPS = 25
DECODER_TOKENS = [1, 7, 42, 99, 3]
FRAME_COUNT_TOKENS = [*range(1, 12), 1499, 1500, 1501, 1575]


def synthetic_speech(num_samples: int, seed: int) -> np.ndarray:
    """(N,) int16: seeded gliding tones under a syllable-rate envelope, plus noise bursts and a pause."""
    rng = np.random.default_rng(seed)
    t = np.arange(num_samples) / SAMPLE_RATE
    signal = np.zeros(num_samples)
    for _ in range(4):
        f0, glide = rng.uniform(120, 900), rng.uniform(-40, 40)
        signal += rng.uniform(0.05, 0.2) * np.sin(
            2 * np.pi * (f0 + glide * np.sin(t)) * t + rng.uniform(0, 6.3)
        )
    signal *= 0.5 + 0.5 * np.sin(2 * np.pi * rng.uniform(3, 6) * t) ** 2  # ~4 syllables a second
    for start in rng.integers(0, num_samples - 4000, size=max(2, num_samples // 16000)):
        signal[start : start + 4000] += rng.normal(0, 0.15, 4000) * np.hanning(4000)
    pause = num_samples // 3
    signal[pause : pause + SAMPLE_RATE // 4] *= 0.01
    return np.clip(np.round(signal * 32768 * 0.5), -32768, 32767).astype(np.int16)


def frame_subset(num_frames: int, boundary: bool) -> list[int]:
    """Frame indices to record: the first and last few, some spread, and those around the 30 s seam."""
    picks = {0, 1, 2, 3, num_frames // 2, num_frames - 3, num_frames - 2, num_frames - 1}
    picks |= set(range(0, num_frames, 11 if num_frames < 100 else 97))
    if boundary:
        picks |= set(range(744, 757))  # frame 750's own token is 1500, the first of the second window
    return sorted(picks)


def generate(root: Path) -> None:
    # upstream's audio.py imports ffmpeg-python for `load_audio` only; the samples are passed in
    # directly (as the 16-bit values ffmpeg would yield), so a stub module stands in for it.
    sys.modules.setdefault("ffmpeg", types.ModuleType("ffmpeg"))
    from latentsync.whisper.audio2feature import Audio2Feature
    from latentsync.whisper.whisper.audio import load_audio, log_mel_spectrogram
    from latentsync.whisper.whisper.model import ModelDimensions, Whisper

    del load_audio  # imported only to prove the stub is enough for upstream's module
    torch.manual_seed(0)
    model = Whisper(ModelDimensions(**DIMS))
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "ln" in name.split(".")[-2]:  # layer norms: away from 1 and 0, so a swap shows
                parameter.copy_((1.0 if name.endswith("weight") else 0.0) + 0.1 * torch.randn_like(parameter))
            elif name == "decoder.positional_embedding":
                parameter.normal_(0, 0.02)
    state = {name: tensor.half() for name, tensor in model.state_dict().items()}  # as openai ships them

    tensors: dict[str, torch.Tensor | np.ndarray] = {f"weights.{k}": v for k, v in state.items()}
    notes: dict[str, object] = {"dims": DIMS, "fps": FPS}
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = Path(tmp) / "tiny-random.pt"
        torch.save({"dims": DIMS, "model_state_dict": state}, checkpoint)
        audio2feature = Audio2Feature(model_path=str(checkpoint), device="cpu")
    whisper = audio2feature.model
    for seed, (clip, num_samples) in enumerate(CLIPS.items()):
        pcm = synthetic_speech(num_samples, seed)
        samples = pcm.astype(np.float32) / 32768.0  # upstream's load_audio
        # `_audio2feat` hands its argument to `transcribe`, which takes samples as well as a path
        features = audio2feature._audio2feat(samples)  # (T_w, L, D)
        chunks = audio2feature.feature2chunks(features, fps=FPS)  # F × (S, D)
        frames = frame_subset(len(chunks), boundary=clip == "long")
        tensors[f"{clip}.pcm"] = pcm
        tensors[f"{clip}.frames"] = torch.tensor(frames)
        tensors[f"{clip}.tokens"] = torch.stack([chunks[i] for i in frames]).float()  # (F', S, D)
        notes[clip] = {"num_samples": num_samples, "num_tokens": len(features), "num_frames": len(chunks)}
        if clip == "short":
            mel = log_mel_spectrogram(samples)
            tensors["short.mel"] = mel
            with torch.no_grad():
                padded = torch.nn.functional.pad(mel, (0, 3000 - mel.shape[1]))[None]
                encoded = whisper.encoder(padded)  # (1, 1500, D) after ln_post
                logits = whisper.decoder(torch.tensor([DECODER_TOKENS]), encoded)
            tensors["short.encoded"] = encoded[0, : mel.shape[1] // 2]
            tensors["short.decoder_tokens"] = torch.tensor(DECODER_TOKENS)
            tensors["short.logits"] = logits[0]
    counts = {}
    for fps in (25, 30, 24):
        for num_tokens in FRAME_COUNT_TOKENS:
            dummy = torch.zeros(num_tokens, 1, DIMS["n_audio_state"])
            counts[f"{fps}:{num_tokens}"] = len(audio2feature.feature2chunks(dummy, fps=fps))
    notes["frame_counts"] = counts
    write_fixture("audio", tensors, root, SOURCES, notes)
