"""The SyncNet mel spectrogram (Wav2Lip's `audio.py`, as LatentSync's `configs/audio.yaml` sets it)."""

from __future__ import annotations

import functools

import numpy as np
import torch

from synclip.constants import (
    AUDIO_SAMPLE_RATE,
    SYNCNET_MEL_HOP_LENGTH,
    SYNCNET_N_MELS,
    syncnet_mel_start,
    syncnet_mel_window,
)

N_FFT = 800
PREEMPHASIS = 0.97
FMIN, FMAX = 55.0, 7600.0
REF_LEVEL_DB = 20.0
MIN_LEVEL_DB = -100.0
MAX_ABS_VALUE = 4.0


@functools.cache
def _mel_basis() -> torch.Tensor:
    import librosa

    basis = librosa.filters.mel(
        sr=AUDIO_SAMPLE_RATE, n_fft=N_FFT, n_mels=SYNCNET_N_MELS, fmin=FMIN, fmax=FMAX
    )
    return torch.from_numpy(basis.astype(np.float32))  # (80, 401)


def syncnet_mel(samples: np.ndarray | torch.Tensor) -> torch.Tensor:
    """(N,) float 16 kHz mono → (80, 1 + N // 200) normalised log-mel in [−4, 4].

    16 kHz, pre-emphasis 0.97, n_fft = window = 800, hop 200 (80 mel frames per second), 80 slaney
    mel bands over 55–7600 Hz, amplitude in dB minus a 20 dB reference, then mapped from
    [−100, 0] dB onto [−4, 4] and clipped. Frame k covers samples centred on k · 200.
    """
    audio = torch.as_tensor(np.asarray(samples, dtype=np.float32))
    if audio.ndim != 1:
        raise ValueError(f"expected mono samples (N,), got shape {tuple(audio.shape)}")
    emphasised = torch.cat([audio[:1], audio[1:] - PREEMPHASIS * audio[:-1]])
    spectrum = torch.stft(
        emphasised,
        n_fft=N_FFT,
        hop_length=SYNCNET_MEL_HOP_LENGTH,
        win_length=N_FFT,
        window=torch.hann_window(N_FFT),
        center=True,
        pad_mode="constant",
        return_complex=True,
    ).abs()
    mel = _mel_basis() @ spectrum
    db = 20 * torch.log10(mel.clamp_min(1e-5)) - REF_LEVEL_DB
    scaled = 2 * MAX_ABS_VALUE * (db - MIN_LEVEL_DB) / -MIN_LEVEL_DB - MAX_ABS_VALUE
    return scaled.clamp(-MAX_ABS_VALUE, MAX_ABS_VALUE)


def mel_window(mel: torch.Tensor, first_frame: int, num_frames: int) -> torch.Tensor:
    """(80, T) → (80, W) mel frames covering video frames [first_frame, first_frame + num_frames).

    W = ceil(16/5 · num_frames) (52 for 16); a window running past either end is padded with the
    silence level (−4).
    """
    start = syncnet_mel_start(first_frame)  # a floor, also for windows starting before the audio
    width = syncnet_mel_window(num_frames)
    begin, end = max(start, 0), min(start + width, mel.shape[1])
    window = torch.full((mel.shape[0], width), -MAX_ABS_VALUE, dtype=mel.dtype)
    if end > begin:
        window[:, begin - start : end - start] = mel[:, begin:end]
    return window
