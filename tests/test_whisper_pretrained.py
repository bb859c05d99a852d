"""The Whisper tiny.en that `make setup` converts really is Whisper: it transcribes eSpeak speech."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.signal import resample_poly

from synclip.constants import AUDIO_SAMPLE_RATE
from synclip.data.speech import synthesize


@pytest.mark.pretrained
@pytest.mark.slow
def test_converted_whisper_transcribes_espeak_speech(pretrained_dir):
    from tokenizers import Tokenizer
    from transformers import WhisperFeatureExtractor, WhisperForConditionalGeneration

    folder = pretrained_dir / "whisper-tiny.en"
    utterance = synthesize("The quick brown fox jumps over the lazy dog.")
    audio = resample_poly(utterance.samples, AUDIO_SAMPLE_RATE, utterance.sample_rate).astype(np.float32)
    features = WhisperFeatureExtractor.from_pretrained(folder)(
        audio, sampling_rate=AUDIO_SAMPLE_RATE, return_tensors="pt"
    ).input_features
    model = WhisperForConditionalGeneration.from_pretrained(folder).eval()
    tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
    tokens = [model.config.decoder_start_token_id, tokenizer.token_to_id("<|notimestamps|>")]
    with torch.no_grad():
        encoded = model.model.encoder(features).last_hidden_state
        for _ in range(30):
            logits = model(encoder_outputs=(encoded,), decoder_input_ids=torch.tensor([tokens])).logits
            token = int(logits[0, -1].argmax())
            if token == model.config.eos_token_id:
                break
            tokens.append(token)
    text = tokenizer.decode(tokens[2:]).lower()
    words = set(text.replace(".", " ").replace(",", " ").split())
    assert len(words & {"the", "quick", "brown", "fox", "over", "lazy"}) >= 5, text
