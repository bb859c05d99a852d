"""syncnet_python's audio features: python_speech_features' `mfcc` with its defaults, in numpy/scipy.

Written anew after python_speech_features 0.6 (`base.mfcc`, `base.fbank`, `base.get_filterbanks`,
`sigproc.framesig`, `sigproc.preemphasis`, `sigproc.powspec`), with the same operations in the same
order so the values are bit-equal to it; that package is not needed at run time.
"""

from __future__ import annotations

import decimal
import math

import numpy as np
from scipy.fftpack import dct  # the legacy fftpack DCT that python_speech_features calls

WINDOW_SECONDS = 0.025
STEP_SECONDS = 0.01
MFCC_FRAMES_PER_SECOND = 100  # 1 / STEP_SECONDS
NUM_CEPSTRA = 13
NUM_FILTERS = 26
NFFT = 512
PREEMPHASIS = 0.97
CEPSTRAL_LIFTER = 22


def speech_mfcc(samples: np.ndarray, sample_rate: int = 16000) -> np.ndarray:
    """(13, T) float64 MFCC of (M,) mono samples, equal to `python_speech_features.mfcc(samples, sample_rate)`
    transposed (syncnet_python stacks its rows as (13, T)).

    Defaults throughout: 25 ms windows every 10 ms (rounded half up to samples; the last frame is
    zero-padded, and a signal no longer than one window gives one frame), no window function,
    pre-emphasis 0.97, |rfft|²/512, 26 triangular mel filters from 0 Hz to sample_rate/2 on floor-rounded
    FFT bins, log (zeros replaced by float eps first), orthonormal DCT-II, lifter 22, and coefficient 0
    replaced by the log frame energy. T = 1 + ceil((M − 400) / 160) at 16 kHz (4·F − 1 for F whole
    video frames of 640 samples).

    The scale matters: SyncNet's MFCC is taken on the int16 values themselves (−32768…32767), not on
    audio normalised to [−1, 1]. Pass int16 samples, or floats that hold int16-scale values; the same
    audio in [−1, 1] shifts coefficient 0 by 2·ln 32768 ≈ 20.8 and moves every embedding.
    """
    signal = np.asarray(samples)
    if signal.ndim != 1 or signal.size == 0:
        raise ValueError(f"samples must be a non-empty (M,) mono signal, got shape {signal.shape}")
    if not (np.issubdtype(signal.dtype, np.integer) or np.issubdtype(signal.dtype, np.floating)):
        raise ValueError(f"samples must be int16 or float, got {signal.dtype}")
    # sigproc.preemphasis: the int16 − float64 difference is float64, so int16 input cannot overflow
    emphasised = np.append(signal[0], signal[1:] - PREEMPHASIS * signal[:-1])
    frames = _frames(emphasised, WINDOW_SECONDS * sample_rate, STEP_SECONDS * sample_rate)  # (T, L)
    power = 1.0 / NFFT * np.square(np.absolute(np.fft.rfft(frames, NFFT)))  # (T, NFFT/2 + 1)
    energy = np.sum(power, 1)
    energy = np.where(energy == 0, np.finfo(float).eps, energy)
    filtered = np.dot(power, _mel_filterbank(sample_rate).T)  # (T, 26)
    filtered = np.where(filtered == 0, np.finfo(float).eps, filtered)
    cepstra = dct(np.log(filtered), type=2, axis=1, norm="ortho")[:, :NUM_CEPSTRA]
    lift = 1 + (CEPSTRAL_LIFTER / 2.0) * np.sin(np.pi * np.arange(NUM_CEPSTRA) / CEPSTRAL_LIFTER)
    cepstra = lift * cepstra
    cepstra[:, 0] = np.log(energy)
    return np.ascontiguousarray(cepstra.T)  # (13, T)


def _round_half_up(number: float) -> int:
    # sigproc.round_half_up: Decimal of the binary float, so 0.025 · 22050 = 551.25 → 551 as upstream
    return int(decimal.Decimal(number).quantize(decimal.Decimal("1"), rounding=decimal.ROUND_HALF_UP))


def _frames(signal: np.ndarray, frame_len: float, frame_step: float) -> np.ndarray:
    """(T, L) overlapping frames of (M,) samples, the last zero-padded (sigproc.framesig)."""
    length, step = _round_half_up(frame_len), _round_half_up(frame_step)
    count = 1 if len(signal) <= length else 1 + math.ceil((1.0 * len(signal) - length) / step)
    padded = np.concatenate((signal, np.zeros((count - 1) * step + length - len(signal))))
    starts = np.arange(0, count * step, step)
    return padded[starts[:, None] + np.arange(length)[None, :]]


def _mel_filterbank(sample_rate: int) -> np.ndarray:
    """(26, NFFT/2 + 1) triangular filters on floor-rounded FFT bins (base.get_filterbanks)."""
    high_mel = 2595 * np.log10(1 + (sample_rate / 2) / 700.0)
    low_mel = 2595 * np.log10(1 + 0 / 700.0)
    mel_points = np.linspace(low_mel, high_mel, NUM_FILTERS + 2)
    hz_points = 700 * (10 ** (mel_points / 2595.0) - 1)
    bins = np.floor((NFFT + 1) * hz_points / sample_rate)
    bank = np.zeros([NUM_FILTERS, NFFT // 2 + 1])
    for j in range(NUM_FILTERS):
        for i in range(int(bins[j]), int(bins[j + 1])):
            bank[j, i] = (i - bins[j]) / (bins[j + 1] - bins[j])
        for i in range(int(bins[j + 1]), int(bins[j + 2])):
            bank[j, i] = (bins[j + 2] - i) / (bins[j + 2] - bins[j + 1])
    return bank
