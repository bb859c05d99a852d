"""The audio tokens of a video frame: LatentSync's window of Whisper states around the frame's own token.
Glossary: F video frames, T_w Whisper tokens (50/s), L states per token, D width, S = 10·L tokens per frame.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Iterable
from fractions import Fraction

import numpy as np
import torch
from einops import rearrange

from synclip.audio.whisper import SAMPLES_PER_TOKEN, num_whisper_tokens, whisper_log_mel, whisper_windows
from synclip.constants import (
    VIDEO_FPS,
    WHISPER_CHUNK_MEL_FRAMES,
    WHISPER_CHUNK_SAMPLES,
    WHISPER_CHUNK_TOKENS,
    WHISPER_HOP_LENGTH,
    WHISPER_TOKENS_PER_FRAME,
    WHISPER_TOKENS_PER_SECOND,
)

# LatentSync's `audio_feat_length: [2, 2]`: video frames of audio context before and after each frame
FRAME_CONTEXT = (2, 2)
TOKENS_BEFORE = WHISPER_TOKENS_PER_FRAME * FRAME_CONTEXT[0]  # 4 tokens, 80 ms before the frame start
TOKENS_AFTER = WHISPER_TOKENS_PER_FRAME * (FRAME_CONTEXT[1] + 1)  # 6 tokens, to 120 ms after it


def token_window(frame: int, fps: Fraction | int = VIDEO_FPS) -> range:
    """Whisper tokens [c − 4, c + 6) of video frame `frame` at `fps`, c = floor(50 · frame / fps) its own
    token (2 · frame at 25 fps). Callers clamp at the ends of the audio.

    This one definition serves training, evaluation and inference; `frame_tokens` reads it out of
    precomputed states, `AudioTokens` streams it from a speech signal of any length.
    """
    centre = math.floor(Fraction(WHISPER_TOKENS_PER_SECOND) * frame / Fraction(fps))
    return range(centre - TOKENS_BEFORE, centre + TOKENS_AFTER)


def frame_tokens(
    features: torch.Tensor, frames: Iterable[int], fps: Fraction | int = VIDEO_FPS
) -> torch.Tensor:
    """(T_w, L, D) Whisper states → (F, S, D) tokens of `frames` at `fps`, S = 10·L, time-major, layer-minor.

    Token indices outside [0, T_w) are clamped to the first or last token, as LatentSync does.
    """
    index = torch.tensor([list(token_window(i, fps)) for i in frames], dtype=torch.long).reshape(
        -1, TOKENS_BEFORE + TOKENS_AFTER
    )
    windows = features[index.clamp(0, features.shape[0] - 1).to(features.device)]  # (F, 10, L, D)
    return rearrange(windows, "f t l d -> f (t l) d")


class AudioTokens:
    """Per-frame audio tokens of a speech signal, Whisper-encoded one 30 s window at a time, on demand.

    The windows, stitching and dynamic-range floor (the loudest log-mel frame of the whole signal − 8)
    of `whisper_features` on the whole signal, so the tokens are `frame_tokens` of those features (bit
    for bit up to 30 s; to float rounding of the floor beyond). But a window is encoded when a frame
    first needs it and dropped once the frames have passed it, so at most two windows' states are held:
    the whole signal's (T_w, L, D) float32 states are 50 · L · D · 4 bytes a second, and encoding them
    at once raises the peak memory with the signal's length (measurements: docs/benchmarks.md).
    """

    MARGIN = 2  # mel frames cut past each end of a window, so its frames get the whole signal's STFT context

    def __init__(self, encoder: torch.nn.Module, samples: np.ndarray, fps: Fraction, length: int) -> None:
        """`encoder` a Whisper audio encoder; `samples` (N,) 16 kHz mono; `length` ≥ N samples are
        covered, the part past N silent."""
        self.encoder = encoder
        self.samples = samples
        self.fps = fps
        self.num_tokens = num_whisper_tokens(max(length, len(samples)))
        self.spans = whisper_windows(self.num_tokens)
        self.keep_from = [lo for _, lo, _ in self.spans]
        self.padded = (self.spans[-1][0] + WHISPER_CHUNK_TOKENS) * SAMPLES_PER_TOKEN
        self.held: dict[int, torch.Tensor] = {}  # window → its kept states (keep_to − keep_from, L, D)
        # Whisper's log-mel is max(log10 E, peak − 8), rescaled as (· + 4) / 4, over the signal it is given
        self.peak = max(float(self._mel(k).max()) for k in range(len(self.spans)))
        self.floor = self.peak - 2  # (peak − 8 + 4) / 4 in the rescaled units

    def _mel(self, window: int) -> torch.Tensor:
        """(n_mels, 3000) log-mel of a window, each frame computed from the same samples as the whole signal's."""
        start = self.spans[window][0] * SAMPLES_PER_TOKEN
        first = max(0, start - self.MARGIN * WHISPER_HOP_LENGTH)
        last = min(self.padded, start + WHISPER_CHUNK_SAMPLES + self.MARGIN * WHISPER_HOP_LENGTH)
        piece = self.samples[first:last]
        piece = np.pad(piece, (0, last - first - len(piece)))  # past the speech: Whisper's zero padding
        mel = whisper_log_mel(piece, self.encoder.num_mel_bins, next(self.encoder.parameters()).device)
        offset = (start - first) // WHISPER_HOP_LENGTH
        return mel[:, offset : offset + WHISPER_CHUNK_MEL_FRAMES]

    def window_mel(self, window: int) -> torch.Tensor:
        """(n_mels, 3000): the whole signal's log-mel over a window (its frames, the whole signal's floor)."""
        mel = self._mel(window)
        if float(mel.max()) < self.peak:  # its own floor is lower than the whole signal's
            mel = mel.clamp(min=self.floor)
        return mel

    def _states(self, window: int) -> torch.Tensor:
        if window not in self.held:
            parameter = next(self.encoder.parameters())
            mel = self.window_mel(window)[None].to(parameter.device, parameter.dtype)
            with torch.no_grad():
                states = self.encoder(mel)[0]  # (1500, L, D)
            start, lo, hi = self.spans[window]
            self.held[window] = states[lo - start : hi - start].to("cpu", torch.float32, copy=True)
        return self.held[window]

    def frame(self, index: int) -> torch.Tensor:
        """(S, D) = (10 · L, D) tokens of frame `index` (the tokens `frame_tokens` reads)."""
        last = self.num_tokens - 1
        tokens = [min(max(t, 0), last) for t in token_window(index, self.fps)]
        for window in [w for w in self.held if self.spans[w][2] <= tokens[0]]:
            del self.held[window]  # frames come in order: no later frame needs it
        rows = []
        for t in tokens:
            window = bisect.bisect_right(self.keep_from, t) - 1
            rows.append(self._states(window)[t - self.keep_from[window]])  # (L, D)
        return torch.stack(rows).flatten(0, 1)  # time-major, layer-minor
