"""The clocks and scales synclip runs on, named once; everything else is derived exactly."""

from __future__ import annotations

import math
from fractions import Fraction


def exact_div(numerator: int, denominator: int) -> int:
    """Integer division that refuses a remainder."""
    if numerator % denominator:
        raise ValueError(f"{numerator} is not divisible by {denominator}")
    return numerator // denominator


# --- base rates ----------------------------------------------------------------------------
# Four base rates (whisper's `audio.py` habit): the video clock, the audio sample rate, the
# Whisper token rate and the SyncNet mel rate. Every other number is derived from them with
# exact division or `fractions.Fraction`, so a change that breaks the arithmetic fails at import.
VIDEO_FPS = 25  # frames per second of every processed clip and of the model's clock
AUDIO_SAMPLE_RATE = 16_000  # Hz, mono, what every audio model sees
WHISPER_TOKENS_PER_SECOND = 50  # Whisper encoder output rate (20 ms per token)
SYNCNET_MEL_FRAMES_PER_SECOND = 80  # SyncNet mel rate (hop 200 at 16 kHz, Wav2Lip-style)

# --- video <-> audio ---------------------------------------------------------------------------
SAMPLES_PER_FRAME = exact_div(AUDIO_SAMPLE_RATE, VIDEO_FPS)  # 640
FRAME_DURATION = Fraction(1, VIDEO_FPS)  # seconds

# --- Whisper (OpenAI's log-mel front end: 30 s windows, n_fft 400, hop 160, 80 bins) -------------
WHISPER_N_FFT = 400
WHISPER_MEL_FRAMES_PER_SECOND = 2 * WHISPER_TOKENS_PER_SECOND  # the conv stem halves 100 -> 50
WHISPER_HOP_LENGTH = exact_div(AUDIO_SAMPLE_RATE, WHISPER_MEL_FRAMES_PER_SECOND)  # 160
WHISPER_CHUNK_SECONDS = 30
WHISPER_CHUNK_SAMPLES = WHISPER_CHUNK_SECONDS * AUDIO_SAMPLE_RATE  # 480 000
WHISPER_CHUNK_MEL_FRAMES = exact_div(WHISPER_CHUNK_SAMPLES, WHISPER_HOP_LENGTH)  # 3000
WHISPER_CHUNK_TOKENS = WHISPER_CHUNK_SECONDS * WHISPER_TOKENS_PER_SECOND  # 1500
WHISPER_TOKENS_PER_FRAME = exact_div(WHISPER_TOKENS_PER_SECOND, VIDEO_FPS)  # 2
WHISPER_N_MELS = 80

# --- SyncNet mel (Wav2Lip / LatentSync configs/audio.yaml) -------------------------------------
SYNCNET_MEL_HOP_LENGTH = exact_div(AUDIO_SAMPLE_RATE, SYNCNET_MEL_FRAMES_PER_SECOND)  # 200
SYNCNET_MEL_FRAMES_PER_FRAME = Fraction(SYNCNET_MEL_FRAMES_PER_SECOND, VIDEO_FPS)  # 16/5
SYNCNET_N_MELS = 80

# --- the diffusion noise schedule (LatentSync's configs/scheduler_config.json, reference §2.6) ---------
# DDPM training and the DDIM sampler share these betas; the sampler adds its own spacing options.
NOISE_SCHEDULE = {
    "num_train_timesteps": 1000,
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "clip_sample": False,
    "prediction_type": "epsilon",
}


def syncnet_mel_window(num_frames: int) -> int:
    """Mel frames that cover `num_frames` video frames: ceil(16/5 · F), 52 for F = 16."""
    return math.ceil(SYNCNET_MEL_FRAMES_PER_FRAME * num_frames)


def syncnet_mel_start(frame_index: int) -> int:
    """First mel frame of the window that starts at video frame `frame_index` (floor, as LatentSync)."""
    return math.floor(SYNCNET_MEL_FRAMES_PER_FRAME * frame_index)


def frames_for_samples(num_samples: int) -> Fraction:
    """Video frames (exact) spanned by `num_samples` audio samples at 16 kHz."""
    return Fraction(num_samples, SAMPLES_PER_FRAME)


def samples_for_frames(num_frames: int) -> int:
    """Audio samples at 16 kHz spanned by `num_frames` video frames."""
    return num_frames * SAMPLES_PER_FRAME
