"""LatentSync's audio front end (`synclip.audio.latentsync`) and openai-whisper conversion, against
fixtures made by LatentSync's own code (scripts/latentsync_fixtures/audio.py) on a tiny random Whisper."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from latentsync_fixture import load_fixture, peak_relative

from synclip.artifacts import load_whisper_encoder
from synclip.audio.latentsync import (
    LatentSyncAudioTokens,
    latentsync_features,
    latentsync_frame_count,
    latentsync_log_mel,
)
from synclip.audio.tokens import AudioTokens, frame_tokens
from synclip.pretrained.whisper import WhisperConversionError, convert_openai_whisper

pytestmark = pytest.mark.filterwarnings("ignore:Validating sparse tensor invariants")  # the alignment heads
TOLERANCE = 1e-4  # max |ours − upstream's| over upstream's peak; float32 on the CPU on both sides


@pytest.fixture(scope="module")
def fixture():
    return load_fixture("audio")


def openai_checkpoint(tensors: dict, notes: dict) -> dict:
    """The openai-whisper .pt contents of the fixture's weights, with a sparse `alignment_heads` as
    recent openai-whisper checkpoints carry."""
    state = {name.removeprefix("weights."): t for name, t in tensors.items() if name.startswith("weights.")}
    dims = notes["dims"]
    heads = torch.zeros(dims["n_text_layer"], dims["n_text_head"], dtype=torch.bool)
    heads[-1, 0] = True
    state["alignment_heads"] = heads.to_sparse()
    return {"dims": dict(dims), "model_state_dict": state}


@pytest.fixture(scope="module")
def converted(fixture, tmp_path_factory) -> Path:
    tensors, notes = fixture
    root = tmp_path_factory.mktemp("openai-whisper")
    torch.save(openai_checkpoint(tensors, notes), root / "tiny.pt")
    return convert_openai_whisper(root / "tiny.pt", root / "hf")


@pytest.fixture(scope="module")
def encoder(converted):
    return load_whisper_encoder(converted)


def samples(tensors: dict, clip: str):
    return (tensors[f"{clip}.pcm"].float() / 32768.0).numpy()  # upstream's load_audio of 16-bit PCM


def test_log_mel_is_whispers(fixture):
    """Bit for bit on the CPU that made the fixture; another CPU's FFT rounds otherwise (an Intel Xeon
    with AVX-512, 2026-12-06: 4.2e-5 of the peak)."""
    tensors, _ = fixture
    assert peak_relative(latentsync_log_mel(samples(tensors, "short")), tensors["short.mel"]) < 1e-4


@pytest.mark.parametrize("clip", ["short", "long"])
def test_frame_tokens_reproduce_latentsync(fixture, encoder, clip):
    tensors, notes = fixture
    audio = LatentSyncAudioTokens(encoder, samples(tensors, clip), notes["fps"])
    assert audio.num_tokens == notes[clip]["num_tokens"]
    assert audio.num_frames == notes[clip]["num_frames"]
    frames = tensors[f"{clip}.frames"].tolist()
    ours = torch.stack([audio.frame(i) for i in frames])  # (F', S, D)
    assert ours.shape == tensors[f"{clip}.tokens"].shape
    assert peak_relative(ours, tensors[f"{clip}.tokens"]) < TOLERANCE
    assert len(audio.held) <= 2


def test_streamed_tokens_equal_the_whole_features(fixture, encoder):
    tensors, notes = fixture
    audio = LatentSyncAudioTokens(encoder, samples(tensors, "long"), notes["fps"])
    features = latentsync_features(samples(tensors, "long"), encoder)  # (T_w, L, D)
    frames = tensors["long.frames"].tolist()
    assert torch.equal(torch.stack([audio.frame(i) for i in frames]), frame_tokens(features, frames))


def test_frame_count_is_feature2chunks(fixture):
    _, notes = fixture
    for key, count in notes["frame_counts"].items():
        fps, num_tokens = (int(part) for part in key.split(":"))
        assert latentsync_frame_count(num_tokens, fps) == count, key


def test_synclip_front_end_differs_on_the_short_clip(fixture, encoder):
    tensors, notes = fixture
    audio = samples(tensors, "short")
    frames = tensors["short.frames"].tolist()
    ours = AudioTokens(encoder, audio, notes["fps"], len(audio))
    theirs = LatentSyncAudioTokens(encoder, audio, notes["fps"])
    difference = peak_relative(torch.stack([ours.frame(i) for i in frames]), tensors["short.tokens"])
    assert difference > 100 * TOLERANCE
    assert peak_relative(torch.stack([theirs.frame(i) for i in frames]), tensors["short.tokens"]) < TOLERANCE


def test_converted_model_is_upstreams_encoder_and_decoder(fixture, converted):
    from transformers import WhisperModel

    tensors, _ = fixture
    model = WhisperModel.from_pretrained(converted, local_files_only=True).eval()
    mel = torch.nn.functional.pad(tensors["short.mel"], (0, 3000 - tensors["short.mel"].shape[1]))[None]
    tokens = tensors["short.decoder_tokens"][None]
    with torch.no_grad():
        encoded = model.encoder(mel).last_hidden_state  # (1, 1500, D) after ln_post
        hidden = model.decoder(input_ids=tokens, encoder_hidden_states=encoded).last_hidden_state
        logits = hidden[0] @ model.decoder.embed_tokens.weight.T  # Whisper ties the output to the embedding
    kept = tensors["short.encoded"].shape[0]
    assert peak_relative(encoded[0, :kept], tensors["short.encoded"]) < TOLERANCE
    assert peak_relative(logits, tensors["short.logits"]) < TOLERANCE


def test_conversion_refuses_a_bad_checkpoint(fixture, tmp_path):
    tensors, notes = fixture
    path = tmp_path / "tiny.pt"

    def error_for(contents) -> str:
        torch.save(contents, path)
        with pytest.raises(WhisperConversionError) as caught:
            convert_openai_whisper(path, tmp_path / "hf")
        message = str(caught.value)
        assert "\n" not in message
        assert str(path) in message
        return message

    checkpoint = openai_checkpoint(tensors, notes)
    del checkpoint["model_state_dict"]["encoder.blocks.1.mlp.2.bias"]
    assert "'encoder.blocks.1.mlp.2.bias'" in error_for(checkpoint)

    checkpoint = openai_checkpoint(tensors, notes)
    checkpoint["model_state_dict"]["encoder.blocks.0.attn.key.weight"] = torch.zeros(64, 63)
    assert "'encoder.blocks.0.attn.key.weight'" in error_for(checkpoint)

    checkpoint = openai_checkpoint(tensors, notes)
    checkpoint["model_state_dict"]["encoder.blocks.0.attn.key.bias"] = torch.zeros(64)
    assert "'encoder.blocks.0.attn.key.bias'" in error_for(checkpoint)

    checkpoint = openai_checkpoint(tensors, notes)
    del checkpoint["dims"]["n_audio_head"]
    assert "n_audio_head" in error_for(checkpoint)

    path.write_bytes(b"not a checkpoint at all")
    with pytest.raises(WhisperConversionError, match="not a readable torch checkpoint"):
        convert_openai_whisper(path, tmp_path / "hf")
    with pytest.raises(WhisperConversionError, match="no such"):
        convert_openai_whisper(tmp_path / "absent.pt", tmp_path / "hf")
    assert not (tmp_path / "hf").exists()
