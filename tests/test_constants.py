"""The clocks: derived values are exact and match LatentSync's conventions."""

from __future__ import annotations

from fractions import Fraction

import pytest

from synclip import constants as c
from synclip.audio.tokens import token_window


def test_derived_rates():
    assert c.SAMPLES_PER_FRAME == 640
    assert c.WHISPER_HOP_LENGTH == 160
    assert c.WHISPER_TOKENS_PER_FRAME == 2
    assert c.WHISPER_CHUNK_MEL_FRAMES == 3000
    assert c.WHISPER_CHUNK_TOKENS == 1500
    assert c.SYNCNET_MEL_HOP_LENGTH == 200


def test_syncnet_mel_window_for_16_frames_is_52():
    assert c.syncnet_mel_window(16) == 52
    assert c.syncnet_mel_window(5) == 16
    assert c.syncnet_mel_start(25) == 80
    assert c.syncnet_mel_start(3) == 9  # floor(9.6)


def test_whisper_window_is_latentsyncs_2i_minus_4_to_2i_plus_6():
    for i in (0, 1, 7, 100):
        assert token_window(i) == range(2 * i - 4, 2 * i + 6)
    # at another frame rate the window sits around the frame's own token, floor(50 i / fps)
    assert token_window(3, Fraction(30000, 1001)) == range(5 - 4, 5 + 6)


def test_exact_div_refuses_a_remainder():
    with pytest.raises(ValueError, match="not divisible"):
        c.exact_div(16_000, 24)


def test_frames_and_samples_round_trip():
    assert c.samples_for_frames(25) == 16_000
    assert c.frames_for_samples(c.samples_for_frames(37)) == 37
