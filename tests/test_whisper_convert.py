"""The CTranslate2 -> transformers Whisper converter, checked against an independent numpy model."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from whisper_reference import (
    reference_decoder_logits,
    reference_encoder,
    tiny_whisper_arrays,
    write_ct2_whisper,
)

from synclip.pretrained.ctranslate2 import CTranslate2FormatError, read_ctranslate2
from synclip.pretrained.store import require
from synclip.pretrained.whisper import WhisperConversionError, convert_ctranslate2_whisper


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    arrays = tiny_whisper_arrays(seed=3)
    root = tmp_path_factory.mktemp("whisper")
    write_ct2_whisper(root / "ct2", arrays)
    out = convert_ctranslate2_whisper(root / "ct2", root / "hf")
    return arrays, out


def test_reader_returns_every_variable_with_its_dtype(tmp_path):
    arrays = tiny_whisper_arrays()
    write_ct2_whisper(tmp_path, arrays)
    model = read_ctranslate2(tmp_path / "model.bin")
    assert model.spec == "WhisperSpec"
    assert set(model.variables) == set(arrays)
    for name, value in arrays.items():
        assert model.variables[name].dtype == value.dtype
        np.testing.assert_array_equal(model.variables[name], value)
    np.testing.assert_array_equal(model.get("decoder/projection/weight"), arrays["decoder/embeddings/weight"])


def test_reader_refuses_a_truncated_file(tmp_path):
    write_ct2_whisper(tmp_path, tiny_whisper_arrays())
    data = (tmp_path / "model.bin").read_bytes()
    (tmp_path / "model.bin").write_bytes(data[: len(data) // 2])
    with pytest.raises(CTranslate2FormatError, match=r"model\.bin"):
        read_ctranslate2(tmp_path / "model.bin")


def test_converted_encoder_matches_the_numpy_reference(converted):
    from transformers import WhisperModel

    arrays, out = converted
    model = WhisperModel.from_pretrained(out).eval()
    mel = np.random.default_rng(1).standard_normal((8, 24))  # (n_mels, 2 · source positions)
    with torch.no_grad():
        ours = model.encoder(torch.from_numpy(mel).float()[None]).last_hidden_state[0].double().numpy()
    expected = reference_encoder(arrays, mel)
    assert ours.shape == expected.shape == (12, 16)
    np.testing.assert_allclose(ours, expected, atol=2e-4, rtol=1e-4)


def test_converted_decoder_matches_the_numpy_reference(converted):
    from transformers import WhisperForConditionalGeneration

    arrays, out = converted
    model = WhisperForConditionalGeneration.from_pretrained(out).eval()
    mel = np.random.default_rng(2).standard_normal((8, 24))
    tokens = [38, 5, 17, 9]
    with torch.no_grad():
        logits = model(torch.from_numpy(mel).float()[None], decoder_input_ids=torch.tensor([tokens])).logits[
            0
        ]
    expected = reference_decoder_logits(arrays, tokens, reference_encoder(arrays, mel))
    np.testing.assert_allclose(logits.double().numpy(), expected, atol=5e-4, rtol=1e-4)


def test_converted_folder_passes_the_pretrained_checks_and_reads_special_tokens(converted):
    import json

    _, out = converted
    require("whisper", out, "pretrained.whisper")
    config = json.loads((out / "config.json").read_text())
    assert config["decoder_start_token_id"] == 38  # <|startoftranscript|> in the test vocabulary
    assert config["eos_token_id"] == 37
    assert config["suppress_tokens"] == [1, 2]


def test_a_nonzero_k_bias_is_refused_not_dropped(tmp_path):
    arrays = tiny_whisper_arrays()
    arrays["encoder/layer_0/self_attention/linear_0/bias"][16:32] = 0.5
    write_ct2_whisper(tmp_path / "ct2", arrays)
    with pytest.raises(WhisperConversionError, match="k bias"):
        convert_ctranslate2_whisper(tmp_path / "ct2", tmp_path / "hf")


def test_a_folder_without_vocabulary_is_refused(tmp_path):
    write_ct2_whisper(tmp_path / "ct2", tiny_whisper_arrays())
    (tmp_path / "ct2" / "vocabulary.txt").unlink()
    with pytest.raises(WhisperConversionError, match=r"vocabulary\.txt"):
        convert_ctranslate2_whisper(tmp_path / "ct2", tmp_path / "hf")
