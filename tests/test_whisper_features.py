"""Whisper encoder features: states kept, 50 tokens per second, per-frame windows, seamless stitching, cache."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from conftest import tiny_whisper_folder
from scipy.signal import resample_poly

from synclip.artifacts import load_whisper_encoder
from synclip.audio import whisper as wf
from synclip.audio.tokens import frame_tokens
from synclip.audio.whisper import (
    cached_whisper_features,
    encoder_fingerprint,
    whisper_features,
    whisper_log_mel,
    whisper_windows,
)
from synclip.constants import AUDIO_SAMPLE_RATE, WHISPER_CHUNK_SAMPLES, WHISPER_TOKENS_PER_SECOND
from synclip.errors import UserError

SR = AUDIO_SAMPLE_RATE
# Relative RMS error per state (‖ours − reference‖ / ‖reference‖ over the tokens compared) that the
# stitched features may have against Whisper's own encoding of the window that holds them mid-window.
SEAM_TOLERANCE = 0.01


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    return tiny_whisper_folder(tmp_path_factory.mktemp("tiny-whisper"))


@pytest.fixture(scope="module")
def tiny(tiny_folder):
    return load_whisper_encoder(tiny_folder)


@pytest.fixture(scope="module")
def real(pretrained_dir):
    return load_whisper_encoder(pretrained_dir / "whisper-tiny.en")


def noise(seconds: float, seed: int = 0) -> np.ndarray:
    return (0.1 * np.random.default_rng(seed).standard_normal(round(seconds * SR))).astype(np.float32)


def speech(seconds: float, seed: int = 0) -> np.ndarray:
    """eSpeak sentences of random common words with pauses between them, cut to `seconds`."""
    from synclip.data.speech import synthesize_batch

    rng = np.random.default_rng(seed)
    words = [
        *("time", "people", "year", "way", "day", "thing", "world", "life", "hand", "part", "child"),
        *("eye", "woman", "place", "work", "week", "case", "point", "company", "number", "group"),
        *("problem", "fact", "water", "table", "river", "mountain", "garden", "window", "paper", "music"),
    ]
    texts = [" ".join(rng.choice(words, size=rng.integers(4, 9))) + "." for _ in range(round(seconds / 2))]
    parts = []
    for utterance in synthesize_batch(texts):
        parts.append(resample_poly(utterance.samples, SR, utterance.sample_rate).astype(np.float32))
        parts.append(np.zeros(round(rng.uniform(0.1, 0.8) * SR), np.float32))
    audio = np.concatenate(parts)
    assert len(audio) >= seconds * SR, len(audio) / SR
    return audio[: round(seconds * SR)]


def plain_whisper_states(folder, encoder: torch.nn.Module, audio: np.ndarray) -> torch.Tensor:
    """Whisper's own path on ≤ 30 s of audio: the folder's feature extractor (pads to 30 s), then the
    encoder's hidden states with the last block's output recomputed before the final layer norm.
    → (1500, L, D)"""
    from transformers import WhisperFeatureExtractor

    assert len(audio) <= WHISPER_CHUNK_SAMPLES
    if (folder / "preprocessor_config.json").is_file():
        extractor = WhisperFeatureExtractor.from_pretrained(folder, local_files_only=True)
    else:
        extractor = WhisperFeatureExtractor(feature_size=encoder.num_mel_bins)
    mel = extractor(audio, sampling_rate=SR, return_tensors="pt").input_features
    with torch.no_grad():
        hidden = encoder.encoder(mel, output_hidden_states=True).hidden_states
        last = encoder.encoder.layers[-1](hidden[-2], None)
    return torch.stack([*hidden[:-1], last], dim=2)[0]


def relative_error(ours: torch.Tensor, reference: torch.Tensor) -> np.ndarray:
    """(T, L, D) pair → (L,) RMS error relative to the reference's RMS, per state."""
    error = (ours - reference).pow(2).mean(dim=(0, 2)).sqrt()
    return (error / reference.pow(2).mean(dim=(0, 2)).sqrt()).numpy()


# --- states, shapes, windows -----------------------------------------------------------------------


def test_states_are_the_stem_and_every_block_before_the_final_layer_norm(tiny):
    mel = whisper_log_mel(np.pad(noise(3.0), (0, WHISPER_CHUNK_SAMPLES - 3 * SR)), tiny.num_mel_bins)
    encoder = tiny.encoder
    with torch.no_grad():
        states = tiny(mel[None])[0]  # (1500, L, D)
        output = encoder(mel[None], output_hidden_states=True)
        hidden = torch.nn.functional.gelu(encoder.conv1(mel[None]))
        hidden = (
            torch.nn.functional.gelu(encoder.conv2(hidden)).transpose(1, 2) + encoder.embed_positions.weight
        )
        expected = [hidden[0]]
        for layer in encoder.layers:
            hidden = layer(hidden, None)
            expected.append(hidden[0])
    assert states.shape == (1500, 3, 16)
    for index, state in enumerate(expected):
        torch.testing.assert_close(states[:, index], state, atol=1e-5, rtol=1e-5)
    # transformers' last hidden state is after the final layer norm: LatentSync's is not.
    torch.testing.assert_close(output.hidden_states[-1], output.last_hidden_state)
    torch.testing.assert_close(encoder.layer_norm(states[:, -1]), output.last_hidden_state[0])
    assert not torch.allclose(output.hidden_states[-1][0], states[:, -1], atol=1e-2)


def test_fifty_tokens_per_second_rounding_up(tiny):
    assert whisper_features(noise(2.0), tiny).shape == (2 * WHISPER_TOKENS_PER_SECOND, 3, 16)
    assert whisper_features(noise(2.0)[:-1], tiny).shape[0] == 100
    assert whisper_features(noise(2.0 + 1 / SR), tiny).shape[0] == 101
    with pytest.raises(ValueError, match="mono"):
        whisper_features(np.zeros((2, 100), np.float32), tiny)


def test_short_audio_is_whispers_own_zero_padded_window(tiny, tiny_folder):
    audio = noise(7.3, seed=4)
    ours = whisper_features(audio, tiny)
    reference = plain_whisper_states(tiny_folder, tiny, audio)
    torch.testing.assert_close(ours, reference[: len(ours)], atol=1e-5, rtol=1e-5)


def test_windows_cover_the_tokens_once_with_context_on_both_sides():
    assert whisper_windows(1500) == [(0, 0, 1500)]
    assert whisper_windows(1501) == [(0, 0, 1250), (1000, 1250, 1501)]
    assert whisper_windows(3250) == [(0, 0, 1250), (1000, 1250, 2250), (2000, 2250, 3250)]
    assert whisper_windows(3000, hop_tokens=1500) == [(0, 0, 1500), (1500, 1500, 3000)]
    for hop in (1000, 1250, 1500):
        spans = whisper_windows(7777, hop)
        kept = [t for _, lo, hi in spans for t in range(lo, hi)]
        assert kept == list(range(7777))
        for start, lo, _ in spans[1:]:
            assert lo - start == (1500 - hop) // 2  # left context of every later window
    with pytest.raises(ValueError, match="hop_tokens"):
        whisper_windows(2000, hop_tokens=999)


def test_long_audio_stitches_the_central_part_of_each_window(tiny):
    audio = noise(65.0, seed=1)  # 3250 tokens: windows at 0, 20 and 40 s
    ours = whisper_features(audio, tiny)
    assert ours.shape == (3250, 3, 16)
    padded = np.pad(audio, (0, 70 * SR - len(audio)))
    mel = whisper_log_mel(padded, tiny.num_mel_bins)
    for start, lo, hi in whisper_windows(3250):
        with torch.no_grad():
            states = tiny(mel[None, :, 2 * start : 2 * start + 3000])[0]
        torch.testing.assert_close(ours[lo:hi], states[lo - start : hi - start])
    torch.testing.assert_close(whisper_features(audio, tiny, batch_windows=3), ours, atol=1e-5, rtol=1e-5)


def test_frame_windows_are_time_major_layer_minor_and_clamped_at_both_ends():
    num_tokens, layers, width = 20, 3, 2
    token, layer = torch.meshgrid(torch.arange(num_tokens), torch.arange(layers), indexing="ij")
    features = torch.stack([token, layer], dim=-1).float()  # (T_w, L, D): (token, layer) in each row
    windows = frame_tokens(features, range(10))
    assert windows.shape == (10, 10 * layers, width)

    def tokens_of(frame):
        rows = windows[frame]
        assert rows[:, 1].tolist() == [0, 1, 2] * 10  # layer-minor
        return rows[::layers, 0].long().tolist()  # time-major

    assert tokens_of(0) == [0, 0, 0, 0, 0, 1, 2, 3, 4, 5]  # [−4, 6) clamped: token 0 repeated
    assert tokens_of(1) == [0, 0, 0, 1, 2, 3, 4, 5, 6, 7]
    assert tokens_of(5) == list(range(6, 16))  # [2i − 4, 2i + 6)
    assert tokens_of(9) == [14, 15, 16, 17, 18, 19, 19, 19, 19, 19]  # the last token repeated
    later = frame_tokens(features, range(8, 10))  # any frames, in any order: the same windows
    torch.testing.assert_close(later, windows[8:10])


def test_a_clip_gives_frames_by_audio_tokens_by_width(tiny):
    audio = noise(1.0)  # 25 frames
    windows = frame_tokens(whisper_features(audio, tiny), range(25))
    assert windows.shape == (25, 10 * 3, 16)


# --- loading ---------------------------------------------------------------------------------------


def test_missing_folder_names_the_path_and_the_param(tmp_path):
    with pytest.raises(UserError, match=r"pretrained\.whisper: .*nowhere does not exist"):
        load_whisper_encoder(tmp_path / "nowhere")


def test_a_front_end_other_than_whispers_is_refused(tmp_path):
    from transformers import WhisperFeatureExtractor

    folder = tiny_whisper_folder(tmp_path / "model")
    WhisperFeatureExtractor(feature_size=80, hop_length=200).save_pretrained(folder)
    with pytest.raises(UserError, match="hop_length"):
        load_whisper_encoder(folder)


def test_loading_is_fp32_on_cpu_and_frozen(tiny):
    parameters = list(tiny.parameters())
    assert all(
        p.dtype == torch.float32 and p.device.type == "cpu" and not p.requires_grad for p in parameters
    )
    assert not tiny.training


# --- content -----------------------------------------------------------------------------------------


def test_silence_and_noise_give_different_features_with_random_weights(tiny):
    sound, other_sound = whisper_features(noise(2.0), tiny), whisper_features(noise(2.0, seed=9), tiny)
    silence = whisper_features(np.zeros(2 * SR, np.float32), tiny)
    # Random weights: the positional embedding dominates every state, so compare against the
    # difference between two draws of the same noise.
    assert (relative_error(sound, silence) > 5 * relative_error(sound, other_sound)).all()


@pytest.mark.pretrained
@pytest.mark.slow
def test_silence_and_speech_give_different_features(real):
    talk = whisper_features(speech(4.0, seed=5), real)
    quiet = whisper_features(np.zeros(4 * SR, np.float32), real)
    difference = relative_error(talk, quiet)
    assert (difference > 0.3).all(), difference  # measured: 0.45 (stem) to 1.06 (last block)


@pytest.mark.pretrained
@pytest.mark.slow
def test_no_seam_at_thirty_seconds(real, pretrained_dir):
    """Around 30 s the stitched features are Whisper's own for a window that holds them mid-window.

    Whisper's states depend on where a token sits in its 30 s window (the positional embedding is added
    to the stem; measured: the same speech 5 s further into the window differs by ~100 % in the stem
    state and 35–95 % in the blocks), so the reference is Whisper's encoding of the window the stitched
    path uses there, 20–50 s, where 28–32 s lies 8–12 s in. The only differences left are the log-mel
    floor (max − 8), which the stitched path takes over the whole signal, and the STFT frames at the
    window's edges (measured error: 0.1 % at most). LatentSync's independent
    windows put 30 s at a window edge, with no context on one side, and fail the same tolerance.
    """
    folder = pretrained_dir / "whisper-tiny.en"
    audio = speech(40.0)
    stretch = slice(28 * WHISPER_TOKENS_PER_SECOND, 32 * WHISPER_TOKENS_PER_SECOND)
    ours = whisper_features(audio, real)
    assert ours.shape == (2000, 5, 384)

    interior = plain_whisper_states(folder, real, audio[20 * SR :])  # 20–40 s, zero-padded to 50 s
    reference = interior[stretch.start - 1000 : stretch.stop - 1000]
    seam_error = relative_error(ours[stretch], reference)
    assert (seam_error < SEAM_TOLERANCE).all(), seam_error

    naive = torch.cat(
        [
            plain_whisper_states(folder, real, audio[: 30 * SR]),
            plain_whisper_states(folder, real, audio[30 * SR :]),
        ]
    )
    naive_error = relative_error(naive[stretch], reference)
    assert (naive_error > 10 * SEAM_TOLERANCE).all(), naive_error

    elsewhere = plain_whisper_states(folder, real, audio[15 * SR : 45 * SR])  # 28–32 s lies 13–17 s in
    offset_error = relative_error(elsewhere[stretch.start - 750 : stretch.stop - 750], reference)
    assert (offset_error > SEAM_TOLERANCE).all(), offset_error
    print(
        f"seam error {seam_error.round(4)}, naive {naive_error.round(3)}, other offset {offset_error.round(3)}"
    )


# --- cache ---------------------------------------------------------------------------------------------


def test_cache_reads_back_and_recomputes_when_the_audio_changes(tiny, tmp_path, monkeypatch):
    audio = noise(3.0, seed=2)
    first = cached_whisper_features(audio, tiny, tmp_path / "cache")
    files = list((tmp_path / "cache").iterdir())
    assert [f.suffix for f in files] == [".safetensors"]

    def refuse(*args, **kwargs):
        raise AssertionError("encoded although cached")

    monkeypatch.setattr(wf, "whisper_features", refuse)
    torch.testing.assert_close(
        cached_whisper_features(audio, tiny, tmp_path / "cache"), first, rtol=0, atol=0
    )
    changed = audio.copy()
    changed[100] += 1e-3
    with pytest.raises(AssertionError, match="encoded although cached"):
        cached_whisper_features(changed, tiny, tmp_path / "cache")
    monkeypatch.undo()
    assert not torch.equal(cached_whisper_features(changed, tiny, tmp_path / "cache"), first)
    assert len(list((tmp_path / "cache").iterdir())) == 2


def test_cache_key_follows_the_weights(tiny, tmp_path):
    other = load_whisper_encoder(tiny_whisper_folder(tmp_path / "other", seed=1))
    assert encoder_fingerprint(other) != encoder_fingerprint(tiny)
    assert encoder_fingerprint(tiny) == encoder_fingerprint(tiny)
    audio = noise(1.0)
    cached_whisper_features(audio, tiny, tmp_path / "cache")
    cached_whisper_features(audio, other, tmp_path / "cache")
    assert len(list((tmp_path / "cache").iterdir())) == 2


@pytest.mark.parametrize("damage", ["garbage", "flipped byte"])
def test_a_corrupt_cache_file_is_reported_and_recomputed(tiny, tmp_path, caplog, damage):
    audio = noise(2.0, seed=3)
    expected = cached_whisper_features(audio, tiny, tmp_path)
    (path,) = tmp_path.iterdir()
    data = bytearray(path.read_bytes())
    if damage == "garbage":
        data = bytearray(b"not a safetensors file")
    else:
        data[-5] ^= 0xFF  # inside the features: the header still parses
    path.write_bytes(bytes(data))
    with caplog.at_level(logging.WARNING, logger="synclip.audio.whisper"):
        again = cached_whisper_features(audio, tiny, tmp_path)
    assert "recomputing" in caplog.text
    assert path.name in caplog.text
    torch.testing.assert_close(again, expected)
    torch.testing.assert_close(cached_whisper_features(audio, tiny, tmp_path), expected)  # rewritten intact
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temp files left
