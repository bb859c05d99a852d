"""Whisper encoder features for the UNet's audio cross-attention (LatentSync §2.3), seamless on long audio.

LatentSync encodes audio in independent 30 s windows and keeps, per token, the stem output and every
encoder block's output, all before the final layer norm: (T_w, L, D) at 50 tokens per second. Its
tokens next to 30 s, 60 s, … sit at a window edge with no audio on one side. Here the same states come
from overlapping windows whose central parts are stitched, so every token has at least 5 s of real
audio on both sides (except at the ends of the audio); then every video frame takes its 10 tokens × L
states (S = 10·L tokens of width D).

Whisper's states also depend on where a token sits in its window (the positional embedding is added
to the stem), so no stitching makes them shift-invariant: at a stitch boundary the window offset jumps
by the hop. Measured on eSpeak speech with tiny.en (benchmarks/whisper_features.py), the step between
the two tokens at a join is 1.2–2× the median token-to-token step in the blocks' states (3.4× in the
stem state, all position), against 3–4.8× in every state at LatentSync's 30 s seams.

Glossary: F video frames, T_w Whisper tokens (50 per second), L states per token (encoder layers + 1),
D audio width (d_model), S = 10·L audio tokens per frame.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import math
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from einops import rearrange
from torch import nn

from synclip.constants import (
    AUDIO_SAMPLE_RATE,
    WHISPER_CHUNK_SAMPLES,
    WHISPER_CHUNK_SECONDS,
    WHISPER_CHUNK_TOKENS,
    WHISPER_HOP_LENGTH,
    WHISPER_MEL_FRAMES_PER_SECOND,
    WHISPER_N_FFT,
    WHISPER_TOKENS_PER_FRAME,
    WHISPER_TOKENS_PER_SECOND,
    exact_div,
    whisper_token_window,
)
from synclip.pretrained.store import PretrainedError, require

if TYPE_CHECKING:
    from transformers import WhisperConfig, WhisperFeatureExtractor

log = logging.getLogger(__name__)

SAMPLES_PER_TOKEN = exact_div(AUDIO_SAMPLE_RATE, WHISPER_TOKENS_PER_SECOND)  # 320
# 2: the stem's second conv has stride 2
MEL_FRAMES_PER_TOKEN = exact_div(WHISPER_MEL_FRAMES_PER_SECOND, WHISPER_TOKENS_PER_SECOND)
# LatentSync's `audio_feat_length: [2, 2]`: video frames of audio context before and after each frame.
FRAME_CONTEXT = (2, 2)
# Windows start every 20 s, so each keeps its central 20 s with 5 s of real audio on either side.
DEFAULT_HOP_TOKENS = 20 * WHISPER_TOKENS_PER_SECOND
# Bump when the features a given model and audio produce change (front end, stitching, states kept).
FEATURES_VERSION = "synclip-whisper-features-v1"
CACHE_SUFFIX = ".safetensors"
CPU = torch.device("cpu")


class WhisperAudioEncoder(nn.Module):
    """Whisper's encoder, returning the stem output and every block's output, all before the final layer norm.

    transformers' `output_hidden_states` gives L = layers + 1 states: `hidden_states[0]` is the stem
    (conv1, GELU, conv2, GELU) plus the positional embedding, `hidden_states[i]` the output of block i
    (counting from 1), except the last, which transformers replaces by `last_hidden_state`, i.e. AFTER the final
    `layer_norm` (whisper's `ln_post`). LatentSync keeps the last block's output before `ln_post`, so
    that one state is taken by a forward hook on the last block instead.
    """

    def __init__(self, config: WhisperConfig):
        super().__init__()
        from transformers.models.whisper.modeling_whisper import WhisperEncoder

        if config.max_source_positions != WHISPER_CHUNK_TOKENS:
            raise ValueError(
                f"max_source_positions is {config.max_source_positions}; the {WHISPER_CHUNK_SECONDS} s "
                f"Whisper window has {WHISPER_CHUNK_TOKENS} tokens"
            )
        self.encoder = WhisperEncoder(config)

    @property
    def num_states(self) -> int:
        """L: the stem plus one state per encoder block."""
        return len(self.encoder.layers) + 1

    @property
    def width(self) -> int:
        """D: the encoder width (d_model)."""
        return self.encoder.embed_positions.embedding_dim

    @property
    def num_mel_bins(self) -> int:
        return self.encoder.conv1.in_channels

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        """(B, n_mels, 3000) log-mel windows → (B, 1500, L, D) states, all before the final layer norm."""
        last_block: list[torch.Tensor] = []
        hook = self.encoder.layers[-1].register_forward_hook(lambda _m, _i, out: last_block.append(out))
        try:
            hidden = self.encoder(mel, output_hidden_states=True).hidden_states
        finally:
            hook.remove()
        assert len(hidden) == self.num_states, (len(hidden), self.num_states)
        assert len(last_block) == 1, len(last_block)
        assert isinstance(last_block[0], torch.Tensor), type(last_block[0])
        return torch.stack([*hidden[:-1], last_block[0]], dim=2)  # (B, 1500, L, D)


def load_whisper_encoder(
    path: str | Path,
    *,
    param: str = "pretrained.whisper",
    device: torch.device = CPU,
    dtype: torch.dtype = torch.float32,
) -> WhisperAudioEncoder:
    """The frozen encoder of the transformers Whisper folder `path` (config.json + model.safetensors),
    in eval mode on `device` in `dtype`.

    Loads strictly; a missing or malformed folder is a PretrainedError naming `path` and `param`. The
    folder's preprocessor_config.json, when present, must describe the front end `whisper_log_mel` uses.
    """
    from transformers import WhisperModel
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()
    folder = require("whisper", path, param)
    model, info = WhisperModel.from_pretrained(
        folder, local_files_only=True, output_loading_info=True, dtype=torch.float32
    )
    bad = {kind: keys for kind, keys in info.items() if keys and kind != "error_msgs"}
    if bad or info.get("error_msgs"):
        raise PretrainedError(
            f"{param}: {folder} does not load as a Whisper model: {bad or info['error_msgs']}"
        )
    _check_preprocessor(folder, model.config.num_mel_bins, param)
    encoder = WhisperAudioEncoder(model.config)
    encoder.encoder.load_state_dict(model.encoder.state_dict(), strict=True)
    return encoder.to(device=device, dtype=dtype).eval().requires_grad_(False)


def _check_preprocessor(folder: Path, n_mels: int, param: str) -> None:
    from transformers import WhisperFeatureExtractor

    if not (folder / "preprocessor_config.json").is_file():
        return
    theirs = WhisperFeatureExtractor.from_pretrained(folder, local_files_only=True)
    ours = feature_extractor(n_mels)
    fields = ("feature_size", "sampling_rate", "hop_length", "n_fft", "n_samples", "dither")
    differ = {
        f: (getattr(theirs, f), getattr(ours, f)) for f in fields if getattr(theirs, f) != getattr(ours, f)
    }
    if differ:
        raise PretrainedError(
            f"{param}: {folder / 'preprocessor_config.json'} differs from Whisper's front end "
            f"(field: (folder, expected)): {differ}"
        )


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
    encoder: WhisperAudioEncoder,
    *,
    hop_tokens: int = DEFAULT_HOP_TOKENS,
    batch_windows: int = 1,
) -> torch.Tensor:
    """(N,) 16 kHz mono samples → (T_w, L, D) encoder states, T_w = ceil(N / 320), 50 per second.

    Runs on the encoder's device and dtype (the caller places it; wrap in autocast for mixed
    precision). Audio longer than 30 s is encoded in overlapping 30 s windows (`whisper_windows`)
    cut from one log-mel of the whole signal; audio up to 30 s is one zero-padded window, as Whisper.
    """
    audio = _mono(samples)
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


def frame_audio_windows(
    features: torch.Tensor, num_frames: int, context: tuple[int, int] = FRAME_CONTEXT
) -> torch.Tensor:
    """(T_w, L, D) → (F, S, D): per video frame i, tokens [2i − 2·before, 2i + 2·(after + 1)), S = 10·L.

    Indices outside [0, T_w) are clamped to the first or last token, as LatentSync does; the tokens
    are flattened time-major, layer-minor. Every frame must start inside the audio (2i < T_w).
    """
    num_tokens = features.shape[0]
    most = math.ceil(num_tokens / WHISPER_TOKENS_PER_FRAME)
    if not 0 <= num_frames <= most:
        raise ValueError(f"{num_frames} frames, but {num_tokens} Whisper tokens cover only {most} frames")
    before, after = context
    index = torch.tensor(
        [list(range(*whisper_token_window(i, before, after))) for i in range(num_frames)], dtype=torch.long
    ).reshape(num_frames, -1)  # (F, 10)
    windows = features[index.clamp(0, num_tokens - 1).to(features.device)]  # (F, 10, L, D)
    return rearrange(windows, "f t l d -> f (t l) d")


# --- cache -----------------------------------------------------------------------------------------


def encoder_fingerprint(encoder: WhisperAudioEncoder) -> str:
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
    audio = _mono(samples)
    digest.update(str(len(audio)).encode())
    digest.update(audio.astype("<f4", copy=False).tobytes())
    return digest.hexdigest()


def cached_whisper_features(
    samples: np.ndarray | torch.Tensor,
    encoder: WhisperAudioEncoder,
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

    audio = _mono(samples)
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
    handle, tmp = tempfile.mkstemp(dir=cache_dir, prefix=f".{key}.", suffix=".tmp")
    os.close(handle)
    try:
        save_file({"features": features}, tmp, metadata=metadata)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
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


def _precision(encoder: WhisperAudioEncoder) -> str:
    """The encoder's dtype, and the autocast dtype when autocast is on for its device."""
    parameter = next(encoder.parameters())
    kind = parameter.device.type
    autocast = torch.get_autocast_dtype(kind) if torch.is_autocast_enabled(kind) else None
    return f"{parameter.dtype} autocast={autocast}"


def _tensor_bytes(tensor: torch.Tensor) -> bytes:
    return tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()


def _mono(samples: np.ndarray | torch.Tensor) -> np.ndarray:
    audio = samples.detach().cpu().numpy() if isinstance(samples, torch.Tensor) else np.asarray(samples)
    if audio.ndim != 1 or audio.size == 0:
        raise ValueError(f"expected mono samples (N,) with N > 0, got shape {audio.shape}")
    return np.ascontiguousarray(audio, dtype=np.float32)
