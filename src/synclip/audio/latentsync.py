"""LatentSync's own Whisper front end, reproduced exactly: the option `audio_frontend: latentsync`.
Glossary: F video frames, T_w Whisper tokens (50/s), L states per token, D width, S = 10·L tokens per frame.

LatentSync (latentsync/whisper: `transcribe` and `Audio2Feature`) takes Whisper's log-mel of the whole
signal, cuts it into back-to-back 30 s windows, pads the last one with 0.0 in log-mel space (not with
silent samples), keeps floor(frames / 2) tokens of each window, and makes floor(T_w / 2) + 2 frames at
25 fps. synclip's own front end (`synclip.audio.whisper`, `synclip.audio.tokens`) pads with silence,
overlaps its windows and covers ceil(N / 320) tokens; LatentSync's published UNet was trained on this one.
"""

from __future__ import annotations

import functools
import math
from fractions import Fraction

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from synclip.audio.tokens import token_window
from synclip.audio.whisper import MEL_FRAMES_PER_TOKEN, mono_samples
from synclip.constants import (
    AUDIO_SAMPLE_RATE,
    VIDEO_FPS,
    WHISPER_CHUNK_MEL_FRAMES,
    WHISPER_CHUNK_TOKENS,
    WHISPER_HOP_LENGTH,
    WHISPER_N_FFT,
    WHISPER_N_MELS,
    WHISPER_TOKENS_PER_SECOND,
)

LOG_MEL_PAD = 0.0  # what LatentSync pads a short window's log-mel with (`pad_or_trim` on the mel)


@functools.cache
def _mel_filters(n_mels: int) -> torch.Tensor:
    """(n_mels, 201) float32: librosa's Slaney filterbank, the matrix Whisper ships as assets/mel_filters.npz.

    transformers computes the same bank in float64 and rounds it once more, 1 ulp off Whisper's;
    librosa's float32 bank is Whisper's bit for bit (measured at the pinned LatentSync commit).
    """
    import librosa

    bank = librosa.filters.mel(sr=AUDIO_SAMPLE_RATE, n_fft=WHISPER_N_FFT, n_mels=n_mels)
    return torch.from_numpy(bank)


def latentsync_log_mel(samples: np.ndarray | torch.Tensor, n_mels: int = WHISPER_N_MELS) -> torch.Tensor:
    """(N,) float32 16 kHz mono → (n_mels, N // 160) Whisper log-mel of the whole signal, on the CPU.

    Whisper's `log_mel_spectrogram` (LatentSync's vendored copy, run on the CPU there too): Hann STFT
    (n_fft 400, hop 160, centred, reflect-padded) without its last frame, power, mel, log10 clamped at
    1e-10, floored at the whole signal's max − 8, then (x + 4) / 4.
    """
    audio = torch.from_numpy(mono_samples(samples))
    window = torch.hann_window(WHISPER_N_FFT)
    stft = torch.stft(audio, WHISPER_N_FFT, WHISPER_HOP_LENGTH, window=window, return_complex=True)
    power = stft[:, :-1].abs() ** 2  # (201, N // 160)
    log_spec = torch.clamp(_mel_filters(n_mels) @ power, min=1e-10).log10()
    log_spec = torch.maximum(log_spec, log_spec.max() - 8.0)
    mel = (log_spec + 4.0) / 4.0
    assert mel.shape == (n_mels, len(audio) // WHISPER_HOP_LENGTH), (mel.shape, len(audio))
    return mel


def latentsync_windows(num_mel_frames: int) -> list[tuple[int, int]]:
    """(first, end) mel frames of LatentSync's back-to-back 3000-frame windows over `num_mel_frames`.

    Window k keeps tokens [1500 k, 1500 k + floor((end − first) / 2)) of the whole signal.
    """
    if num_mel_frames < MEL_FRAMES_PER_TOKEN:
        raise ValueError(
            f"{num_mel_frames} log-mel frames make no Whisper token (LatentSync needs ≥ 320 samples)"
        )
    return [
        (first, min(first + WHISPER_CHUNK_MEL_FRAMES, num_mel_frames))
        for first in range(0, num_mel_frames, WHISPER_CHUNK_MEL_FRAMES)
    ]


def encode_window(mel: torch.Tensor, first: int, end: int, encoder: nn.Module) -> torch.Tensor:
    """(floor((end − first) / 2), L, D) states of one window of the (n_mels, frames) log-mel, on the CPU
    in float32; the window is padded to 3000 frames with 0.0 and run in the encoder's device and dtype."""
    piece = mel[:, first:end]
    piece = F.pad(piece, (0, WHISPER_CHUNK_MEL_FRAMES - piece.shape[1]), value=LOG_MEL_PAD)  # (n_mels, 3000)
    parameter = next(encoder.parameters())
    with torch.no_grad():
        states = encoder(piece[None].to(parameter.device, parameter.dtype))[0]  # (1500, L, D)
    return states[: (end - first) // MEL_FRAMES_PER_TOKEN].to("cpu", torch.float32)


def latentsync_features(samples: np.ndarray | torch.Tensor, encoder: nn.Module) -> torch.Tensor:
    """(N,) 16 kHz mono samples → (T_w, L, D) states, T_w = floor(N / 320), as LatentSync's `audio2feat`.

    On the CPU in float32; the encoder runs in its own device and dtype (LatentSync's runs in float16 on
    a GPU, float32 on the CPU).
    """
    mel = latentsync_log_mel(samples, encoder.num_mel_bins)
    states = [encode_window(mel, first, end, encoder) for first, end in latentsync_windows(mel.shape[1])]
    return torch.cat(states)


def latentsync_num_tokens(num_samples: int) -> int:
    """T_w of LatentSync's features for `num_samples` samples: floor(floor(N / 160) / 2) = floor(N / 320)."""
    return (num_samples // WHISPER_HOP_LENGTH) // MEL_FRAMES_PER_TOKEN


def latentsync_frame_count(num_tokens: int, fps: Fraction | int = VIDEO_FPS) -> int:
    """F of LatentSync's `feature2chunks` for T_w = `num_tokens`: floor(T_w / 2) + 2 at 25 fps.

    It appends frame i, then stops once i's own token floor(50 i / fps) is past T_w, so the frames are
    0 … i* with i* = ceil((T_w + 1) · fps / 50) the first such i. (LatentSync computes the token in
    floating point; at 25 fps, the only rate it runs at, that is exact.)
    """
    if num_tokens < 1:
        raise ValueError(f"LatentSync needs at least one Whisper token, got {num_tokens}")
    return math.ceil(Fraction(num_tokens + 1) * Fraction(fps) / WHISPER_TOKENS_PER_SECOND) + 1


class LatentSyncAudioTokens:
    """Per-frame audio tokens (S, D) exactly as LatentSync makes them, same interface as `AudioTokens`.

    The log-mel of the whole signal is taken up front (80 floats per 10 ms, half the samples' bytes);
    a window is encoded when a frame first needs it and dropped once the frames have passed it, so at
    most two windows' states are held. Frame i takes tokens [c − 4, c + 6), c = floor(50 i / fps),
    clamped to [0, T_w − 1] (`token_window`), time-major and layer-minor, as `get_sliced_feature`.
    """

    def __init__(self, encoder: nn.Module, samples: np.ndarray, fps: Fraction | int = VIDEO_FPS) -> None:
        """`encoder` a Whisper audio encoder (`WhisperAudioEncoder`); `samples` (N,) 16 kHz mono float32."""
        self.encoder = encoder
        self.fps = fps
        self.mel = latentsync_log_mel(samples, encoder.num_mel_bins)  # (n_mels, N // 160)
        self.windows = latentsync_windows(self.mel.shape[1])
        self.num_tokens = latentsync_num_tokens(len(samples))
        self.held: dict[int, torch.Tensor] = {}  # window → its kept states (tokens, L, D)

    @property
    def num_frames(self) -> int:
        """F: the frames LatentSync's `feature2chunks` makes of this audio (floor(T_w / 2) + 2 at 25 fps)."""
        return latentsync_frame_count(self.num_tokens, self.fps)

    def _states(self, window: int) -> torch.Tensor:
        if window not in self.held:
            first, end = self.windows[window]
            self.held[window] = encode_window(self.mel, first, end, self.encoder)
        return self.held[window]

    def frame(self, index: int) -> torch.Tensor:
        """(S, D) = (10 · L, D) tokens of frame `index` (any index ≥ 0; tokens past the end repeat the last)."""
        if index < 0:
            raise ValueError(f"frame index must be ≥ 0, got {index}")
        last = self.num_tokens - 1
        tokens = [min(max(t, 0), last) for t in token_window(index, self.fps)]
        first_window = tokens[0] // WHISPER_CHUNK_TOKENS
        for window in [w for w in self.held if w < first_window]:
            del self.held[window]  # frames come in order: no later frame needs it
        rows = []
        for t in tokens:
            window, offset = divmod(t, WHISPER_CHUNK_TOKENS)
            rows.append(self._states(window)[offset])  # (L, D)
        return torch.stack(rows).flatten(0, 1)  # time-major, layer-minor
