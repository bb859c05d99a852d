"""eSpeak NG through ctypes: waveform and phoneme timings."""

from __future__ import annotations

import numpy as np
import pytest

from synclip.data.speech import SpeechError, Voice, synthesize


def test_phonemes_are_ordered_inside_the_audio_and_cover_the_words():
    utterance = synthesize("Hello world. Maybe later.")
    assert utterance.sample_rate == 22050
    assert 1.0 < utterance.duration < 4.0
    starts = [p.start for p in utterance.phonemes]
    assert starts == sorted(starts)
    assert all(0 <= p.start < p.end <= utterance.duration + 1e-9 for p in utterance.phonemes)
    assert [w.text for w in utterance.words] == ["Hello", "world", "Maybe", "later"]
    symbols = [p.symbol.lstrip("',") for p in utterance.phonemes]
    assert symbols[:4] == ["h", "@", "l", "oU"]
    assert "m" in symbols


def test_the_audio_is_louder_inside_phonemes_than_in_the_pause():
    utterance = synthesize("Hello world. Maybe later.")
    rate = utterance.sample_rate
    pause = next(p for p in utterance.phonemes if p.symbol.startswith("_") and p.end - p.start > 0.1)
    vowel = next(p for p in utterance.phonemes if p.symbol.lstrip("'") == "oU")
    rms = lambda p: float(np.sqrt(np.mean(utterance.samples[int(p.start * rate) : int(p.end * rate)] ** 2)))  # noqa: E731
    assert rms(vowel) > 10 * rms(pause)


def test_voice_settings_change_the_speech():
    slow = synthesize("one two three four", Voice(rate=120))
    fast = synthesize("one two three four", Voice(rate=260))
    assert slow.duration > 1.5 * fast.duration


def test_unknown_voice_and_empty_text_are_errors():
    with pytest.raises(SpeechError, match="no voice 'xx-nowhere'"):
        synthesize("hello", Voice(name="xx-nowhere"))
    with pytest.raises(SpeechError, match="empty"):
        synthesize("   ")


def test_the_same_text_always_gives_the_same_samples():
    first = synthesize("Hello world maybe later.", Voice(rate=160))
    synthesize("Something completely different.", Voice(name="en+f4", pitch=70, word_gap=2))
    again = synthesize("Hello world maybe later.", Voice(rate=160))
    np.testing.assert_array_equal(first.samples, again.samples)
    assert first.phonemes == again.phonemes
