"""Whisper encoder features for the UNet's audio cross-attention (LatentSync §2.3), seamless on long audio.
Glossary: T_w Whisper tokens (50/s), L states per token (encoder layers + 1), D audio width (d_model).
"""

from __future__ import annotations

import functools
import hashlib
import logging
import math
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

from synclip.constants import (
    AUDIO_SAMPLE_RATE,
    WHISPER_CHUNK_SAMPLES,
    WHISPER_CHUNK_SECONDS,
    WHISPER_CHUNK_TOKENS,
    WHISPER_HOP_LENGTH,
    WHISPER_MEL_FRAMES_PER_SECOND,
    WHISPER_N_FFT,
    WHISPER_TOKENS_PER_SECOND,
    exact_div,
)
from synclip.files import atomic_path

if TYPE_CHECKING:
    from transformers import WhisperFeatureExtractor

log = logging.getLogger(__name__)

SAMPLES_PER_TOKEN = exact_div(AUDIO_SAMPLE_RATE, WHISPER_TOKENS_PER_SECOND)  # 320
# 2: the stem's second conv has stride 2
MEL_FRAMES_PER_TOKEN = exact_div(WHISPER_MEL_FRAMES_PER_SECOND, WHISPER_TOKENS_PER_SECOND)
# Windows start every 20 s, so each keeps its central 20 s with 5 s of real audio on either side.
DEFAULT_HOP_TOKENS = 20 * WHISPER_TOKENS_PER_SECOND
# Bump when the features a given model and audio produce change (front end, stitching, states kept).
FEATURES_VERSION = "synclip-whisper-features-v1"
CACHE_SUFFIX = ".safetensors"
CPU = torch.device("cpu")


@functools.cache
def feature_extractor(n_mels: int) -> WhisperFeatureExtractor:
    """Whisper's log-mel front end: 16 kHz, n_fft 400, hop 160, `n_mels` bins, 30 s windows."""
    from transformers import WhisperFeatureExtractor

    extractor = WhisperFeatureExtractor(
        feature_size=n_mels,
        sampling_rate=AUDIO_SAMPLE_RATE,
        hop_length=WHISPER_HOP_LENGTH,
        chunk_length=WHISPER_CHUNK_SECONDS,
        n_fft=WHISPER_N_FFT,
    )
    assert extractor.n_samples == WHISPER_CHUNK_SAMPLES, extractor.n_samples
    return extractor


def whisper_log_mel(samples: np.ndarray, n_mels: int, device: torch.device | None = None) -> torch.Tensor:
    """(N,) float32 at 16 kHz → (n_mels, N // 160) Whisper log-mel, returned on the CPU (the STFT runs on `device`).

    One STFT over the whole signal, with Whisper's dynamic-range floor (max − 8, in log10 units) taken
    over the whole signal too, so windows cut from it agree where they overlap. For N = 30 s of audio
    (Whisper pads shorter audio with zeros to that) this is exactly Whisper's own front end.
    """
    mel = feature_extractor(n_mels)(
        samples,
        sampling_rate=AUDIO_SAMPLE_RATE,
        padding="do_not_pad",
        truncation=False,
        return_tensors="pt",
        device=str(device or "cpu"),
    ).input_features[0]
    assert mel.shape == (n_mels, len(samples) // WHISPER_HOP_LENGTH), (mel.shape, len(samples))
    return mel


def num_whisper_tokens(num_samples: int) -> int:
    """T_w: the tokens that cover `num_samples` samples, ceil(N / 320)."""
    return math.ceil(num_samples / SAMPLES_PER_TOKEN)


def whisper_windows(num_tokens: int, hop_tokens: int = DEFAULT_HOP_TOKENS) -> list[tuple[int, int, int]]:
    """(window start, keep from, keep to) in tokens, absolute, of the windows that cover `num_tokens`.

    Windows of 1500 tokens start every `hop_tokens`; each keeps its central `hop_tokens`, leaving
    (1500 − hop) / 2 tokens of context on either side, except that the first keeps from 0 and the last
    up to `num_tokens` (its tail is the zero padding Whisper adds to short audio).
    """
    window = WHISPER_CHUNK_TOKENS
    if not 0 < hop_tokens <= window or (window - hop_tokens) % 2:
        raise ValueError(f"hop_tokens must be in (0, {window}] with {window} − hop even, got {hop_tokens}")
    if num_tokens <= 0:
        raise ValueError(f"no tokens to cover: {num_tokens}")
    margin = (window - hop_tokens) // 2
    count = 1 + max(0, math.ceil((num_tokens - window) / hop_tokens))
    spans = []
    for k in range(count):
        start = k * hop_tokens
        keep_from = start if k == 0 else start + margin
        keep_to = num_tokens if k == count - 1 else start + margin + hop_tokens
        spans.append((start, keep_from, keep_to))
    assert spans[-1][0] + window >= num_tokens > spans[-1][1], (spans[-1], num_tokens)
    return spans


def whisper_features(
    samples: np.ndarray | torch.Tensor,
    encoder: nn.Module,
    *,
    hop_tokens: int = DEFAULT_HOP_TOKENS,
    batch_windows: int = 1,
) -> torch.Tensor:
    """(N,) 16 kHz mono samples → (T_w, L, D) encoder states, T_w = ceil(N / 320), 50 per second.

    Runs on the encoder's device and dtype (the caller places it; wrap in autocast for mixed
    precision). Audio longer than 30 s is encoded in overlapping 30 s windows (`whisper_windows`)
    cut from one log-mel of the whole signal; audio up to 30 s is one zero-padded window, as Whisper.

    LatentSync encodes audio in independent 30 s windows and keeps, per token, the stem output and every
    encoder block's output, all before the final layer norm: (T_w, L, D) at 50 tokens per second. Its
    tokens next to 30 s, 60 s, … sit at a window edge with no audio on one side. Here the same states
    come from overlapping windows whose central parts are stitched, so every token has at least 5 s of
    real audio on both sides (except at the ends of the audio); then every video frame takes its
    10 tokens × L states (S = 10·L tokens of width D, `synclip.audio.tokens`).

    Whisper's states also depend on where a token sits in its window (the positional embedding is added
    to the stem), so no stitching makes them shift-invariant: at a stitch boundary the window offset
    jumps by the hop. Still, the step between the two tokens at a join stays well below the step at
    LatentSync's 30 s seams in the blocks' states, though above the median token-to-token step; in the
    stem state, all position, it is about as large (benchmarks/whisper_features.py; docs/benchmarks.md).
    """
    audio = mono_samples(samples)
    num_tokens = num_whisper_tokens(len(audio))
    spans = whisper_windows(num_tokens, hop_tokens)
    padded = (spans[-1][0] + WHISPER_CHUNK_TOKENS) * SAMPLES_PER_TOKEN
    parameter = next(encoder.parameters())
    mel = whisper_log_mel(np.pad(audio, (0, padded - len(audio))), encoder.num_mel_bins, parameter.device)
    window_frames = WHISPER_CHUNK_TOKENS * MEL_FRAMES_PER_TOKEN
    kept = []
    for index in range(0, len(spans), batch_windows):
        batch = spans[index : index + batch_windows]
        frames = [start * MEL_FRAMES_PER_TOKEN for start, _, _ in batch]
        windows = torch.stack(
            [mel[:, first : first + window_frames] for first in frames]
        )  # (b, n_mels, 3000)
        with torch.no_grad():
            states = encoder(windows.to(parameter.device, parameter.dtype))  # (b, 1500, L, D)
        kept.extend(s[lo - start : hi - start] for s, (start, lo, hi) in zip(states, batch, strict=True))
    features = torch.cat(kept)
    assert features.shape[:2] == (num_tokens, encoder.num_states), (features.shape, num_tokens)
    return features


# --- cache -----------------------------------------------------------------------------------------


def encoder_fingerprint(encoder: nn.Module) -> str:
    """sha256 over the encoder's architecture and weights (names, dtypes, shapes, bytes)."""
    digest = hashlib.sha256(FEATURES_VERSION.encode())
    config = encoder.encoder.config
    arch = ("d_model", "encoder_layers", "encoder_attention_heads", "encoder_ffn_dim", "num_mel_bins")
    arch += ("max_source_positions", "activation_function", "scale_embedding")
    digest.update(repr([(name, getattr(config, name)) for name in arch]).encode())
    for name, tensor in sorted(encoder.state_dict().items()):
        digest.update(f"{name} {tensor.dtype} {tuple(tensor.shape)}".encode())
        digest.update(_tensor_bytes(tensor))
    return digest.hexdigest()


def features_cache_key(
    samples: np.ndarray | torch.Tensor, fingerprint: str, hop_tokens: int, precision: str
) -> str:
    """sha256 of the audio (float32 samples) with the encoder's fingerprint, the hop and the precision."""
    digest = hashlib.sha256(f"{FEATURES_VERSION} {fingerprint} hop={hop_tokens} {precision} n=".encode())
    audio = mono_samples(samples)
    digest.update(str(len(audio)).encode())
    digest.update(audio.astype("<f4", copy=False).tobytes())
    return digest.hexdigest()


def cached_whisper_features(
    samples: np.ndarray | torch.Tensor,
    encoder: nn.Module,
    cache_dir: str | Path,
    *,
    fingerprint: str | None = None,
    hop_tokens: int = DEFAULT_HOP_TOKENS,
    batch_windows: int = 1,
) -> torch.Tensor:
    """`whisper_features` (T_w, L, D) on the CPU, read from `cache_dir` when computed before.

    The file is `<key>.safetensors`, key = `features_cache_key`: the audio content, the
    `encoder_fingerprint` (pass `fingerprint` to hash the weights once for many clips), the hop, and
    the weights' dtype with any autocast in effect. It is written atomically (temp file + os.replace).
    A cache file that is unreadable or does not match its key, shape or checksum is reported as a
    warning and recomputed: the cache only ever holds derived data.
    """
    from safetensors.torch import save_file

    audio = mono_samples(samples)
    fingerprint = fingerprint or encoder_fingerprint(encoder)
    key = features_cache_key(audio, fingerprint, hop_tokens, _precision(encoder))
    cache_dir = Path(cache_dir)
    path = cache_dir / f"{key}{CACHE_SUFFIX}"
    expected = (num_whisper_tokens(len(audio)), encoder.num_states, encoder.width)
    if path.is_file():
        features, problem = _read_cached(path, key, expected)
        if features is not None:
            return features
        log.warning("%s: %s; recomputing the Whisper features", path, problem)
    features = whisper_features(audio, encoder, hop_tokens=hop_tokens, batch_windows=batch_windows)
    features = features.cpu().contiguous()
    metadata = {
        "format": FEATURES_VERSION,
        "key": key,
        "sha256": hashlib.sha256(_tensor_bytes(features)).hexdigest(),
    }
    cache_dir.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        save_file({"features": features}, str(tmp), metadata=metadata)
    return features


def _read_cached(path: Path, key: str, shape: tuple[int, int, int]) -> tuple[torch.Tensor | None, str]:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(path, framework="pt") as file:
            metadata = file.metadata() or {}
            if set(file.keys()) != {"features"}:
                return None, f"holds tensors {sorted(file.keys())}, expected ['features']"
            features = file.get_tensor("features")
    except SafetensorError as error:
        return None, f"unreadable ({error})"
    if metadata.get("format") != FEATURES_VERSION or metadata.get("key") != key:
        return None, f"metadata {metadata} does not match key {key}"
    if tuple(features.shape) != shape:
        return None, f"shape {tuple(features.shape)}, expected {shape}"
    if hashlib.sha256(_tensor_bytes(features)).hexdigest() != metadata.get("sha256"):
        return None, "the features do not match their recorded sha256"
    return features, ""


def _precision(encoder: nn.Module) -> str:
    """The encoder's dtype, and the autocast dtype when autocast is on for its device."""
    parameter = next(encoder.parameters())
    kind = parameter.device.type
    autocast = torch.get_autocast_dtype(kind) if torch.is_autocast_enabled(kind) else None
    return f"{parameter.dtype} autocast={autocast}"


def _tensor_bytes(tensor: torch.Tensor) -> bytes:
    return tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()


def mono_samples(samples: np.ndarray | torch.Tensor) -> np.ndarray:
    """(N,) float32 contiguous samples; ValueError unless mono and non-empty."""
    audio = samples.detach().cpu().numpy() if isinstance(samples, torch.Tensor) else np.asarray(samples)
    if audio.ndim != 1 or audio.size == 0:
        raise ValueError(f"expected mono samples (N,) with N > 0, got shape {audio.shape}")
    return np.ascontiguousarray(audio, dtype=np.float32)
