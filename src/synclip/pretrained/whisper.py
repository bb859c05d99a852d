"""Convert a CTranslate2 Whisper model to a transformers directory (config.json + model.safetensors)."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import torch

from synclip.errors import UserError
from synclip.pretrained.ctranslate2 import CTranslate2Model, read_ctranslate2

log = logging.getLogger(__name__)

# CTranslate2 ActivationType ids; Whisper uses exact GELU.
_GELU = 3
_K_BIAS_TOLERANCE = 1e-6
# Files of a CTranslate2 Whisper directory that the converter reads or copies.
CT2_FILES = ("model.bin", "config.json", "vocabulary.txt")
OPTIONAL_CT2_FILES = ("tokenizer.json",)


class WhisperConversionError(UserError):
    """The CTranslate2 model cannot be converted faithfully; the message says why."""


def convert_ctranslate2_whisper(ct2_dir: str | Path, out_dir: str | Path) -> Path:
    """Write a transformers `WhisperForConditionalGeneration` directory converted from `ct2_dir`.

    Output: config.json, generation_config.json, model.safetensors (float32), preprocessor_config.json
    and, when the source has one, tokenizer.json. The model is loaded strictly before saving, so a
    missing or unexpected weight is an error.
    """
    from transformers import WhisperFeatureExtractor, WhisperForConditionalGeneration
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()

    ct2_dir, out_dir = Path(ct2_dir), Path(out_dir)
    for name in CT2_FILES:
        if not (ct2_dir / name).is_file():
            raise WhisperConversionError(f"{ct2_dir}: missing {name}; not a CTranslate2 Whisper directory")
    model = read_ctranslate2(ct2_dir / "model.bin")
    if model.spec != "WhisperSpec":
        raise WhisperConversionError(f"{ct2_dir / 'model.bin'}: spec {model.spec!r}, expected 'WhisperSpec'")
    vocabulary = (ct2_dir / "vocabulary.txt").read_text(encoding="utf-8").splitlines()
    ct2_config = json.loads((ct2_dir / "config.json").read_text())

    config = whisper_config(model, vocabulary, ct2_config)
    state = whisper_state_dict(model)
    hf_model = WhisperForConditionalGeneration(config)
    result = hf_model.load_state_dict(state, strict=False)
    # proj_out is tied to the token embedding, so it is legitimately absent from `state`.
    missing = [k for k in result.missing_keys if k != "proj_out.weight"]
    if missing or result.unexpected_keys:
        raise WhisperConversionError(
            f"converted weights do not match transformers' Whisper: missing {missing}, "
            f"unexpected {result.unexpected_keys}"
        )
    hf_model.tie_weights()

    out_dir.mkdir(parents=True, exist_ok=True)
    hf_model.save_pretrained(out_dir, safe_serialization=True)
    WhisperFeatureExtractor(feature_size=config.num_mel_bins).save_pretrained(out_dir)
    for name in OPTIONAL_CT2_FILES:
        if (ct2_dir / name).is_file():
            shutil.copyfile(ct2_dir / name, out_dir / name)
    log.info(
        "converted %s -> %s (%d encoder + %d decoder layers, d_model %d)",
        ct2_dir,
        out_dir,
        config.encoder_layers,
        config.decoder_layers,
        config.d_model,
    )
    return out_dir


def whisper_config(model: CTranslate2Model, vocabulary: list[str], ct2_config: dict):
    """transformers WhisperConfig read off the arrays' shapes and the vocabulary's special tokens."""
    from transformers import WhisperConfig

    for name in ("encoder/activation", "decoder/activation"):
        if name in model.variables and model.scalar(name) != _GELU:
            raise WhisperConversionError(f"{name} is {model.scalar(name)}; only GELU ({_GELU}) is supported")
    if "decoder/scale_embeddings" in model.variables and model.scalar("decoder/scale_embeddings"):
        raise WhisperConversionError("decoder/scale_embeddings is set; Whisper does not scale embeddings")

    d_model, num_mel_bins, _ = model.get("encoder/conv1/weight").shape
    token_ids = {token: index for index, token in enumerate(vocabulary)}
    for special in ("<|endoftext|>", "<|startoftranscript|>"):
        if special not in token_ids:
            raise WhisperConversionError(f"vocabulary.txt has no {special} token")
    eot = token_ids["<|endoftext|>"]
    vocab_size = model.get("decoder/embeddings/weight").shape[0]
    if vocab_size != len(vocabulary):
        raise WhisperConversionError(f"{vocab_size} embeddings but {len(vocabulary)} vocabulary entries")
    return WhisperConfig(
        vocab_size=vocab_size,
        num_mel_bins=int(num_mel_bins),
        d_model=int(d_model),
        encoder_layers=_count_layers(model, "encoder"),
        decoder_layers=_count_layers(model, "decoder"),
        encoder_attention_heads=model.scalar("encoder/num_heads"),
        decoder_attention_heads=model.scalar("decoder/num_heads"),
        encoder_ffn_dim=int(model.get("encoder/layer_0/ffn/linear_0/weight").shape[0]),
        decoder_ffn_dim=int(model.get("decoder/layer_0/ffn/linear_0/weight").shape[0]),
        max_source_positions=int(model.get("encoder/position_encodings/encodings").shape[0]),
        max_target_positions=int(model.get("decoder/position_encodings/encodings").shape[0]),
        activation_function="gelu",
        scale_embedding=False,
        pad_token_id=eot,
        bos_token_id=eot,
        eos_token_id=eot,
        decoder_start_token_id=token_ids["<|startoftranscript|>"],
        suppress_tokens=list(ct2_config.get("suppress_ids", [])),
        begin_suppress_tokens=list(ct2_config.get("suppress_ids_begin", [])),
        alignment_heads=[list(pair) for pair in ct2_config.get("alignment_heads", [])] or None,
        dtype="float32",
    )


def whisper_state_dict(model: CTranslate2Model) -> dict[str, torch.Tensor]:
    """transformers Whisper state dict (float32) from CTranslate2 WhisperSpec variables.

    The variable mapping follows CTranslate2's `WhisperSpec`: self-attention stores q, k and v fused
    in `linear_0` (split along the output axis) and the output projection in `linear_1`; decoder
    cross-attention keeps q in `linear_0`, k and v fused in `linear_1` and the output in `linear_2`;
    layer norms are `gamma`/`beta`. Whisper's k projections have no bias, so CTranslate2 stores zeros
    there; a non-zero k bias cannot be represented and is refused rather than dropped.
    """
    state: dict[str, np.ndarray] = {}

    def put(target: str, source: str) -> None:
        state[target] = model.get(source)

    def linear(target: str, source: str) -> None:
        put(f"{target}.weight", f"{source}/weight")
        put(f"{target}.bias", f"{source}/bias")

    def norm(target: str, source: str) -> None:
        put(f"{target}.weight", f"{source}/gamma")
        put(f"{target}.bias", f"{source}/beta")

    def fused(target: str, source: str, names: tuple[str, ...]) -> None:
        weights = np.split(model.get(f"{source}/weight"), len(names), axis=0)
        biases = np.split(model.get(f"{source}/bias"), len(names), axis=0)
        for name, weight, bias in zip(names, weights, biases, strict=True):
            state[f"{target}.{name}.weight"] = weight
            if name == "k_proj":
                if np.abs(bias.astype(np.float32)).max(initial=0.0) > _K_BIAS_TOLERANCE:
                    raise WhisperConversionError(f"{source}: non-zero k bias cannot be represented")
            else:
                state[f"{target}.{name}.bias"] = bias

    enc, dec = "model.encoder", "model.decoder"
    linear(f"{enc}.conv1", "encoder/conv1")
    linear(f"{enc}.conv2", "encoder/conv2")
    put(f"{enc}.embed_positions.weight", "encoder/position_encodings/encodings")
    for i in range(_count_layers(model, "encoder")):
        src, dst = f"encoder/layer_{i}", f"{enc}.layers.{i}"
        norm(f"{dst}.self_attn_layer_norm", f"{src}/self_attention/layer_norm")
        fused(f"{dst}.self_attn", f"{src}/self_attention/linear_0", ("q_proj", "k_proj", "v_proj"))
        linear(f"{dst}.self_attn.out_proj", f"{src}/self_attention/linear_1")
        _ffn(norm, linear, dst, src)
    norm(f"{enc}.layer_norm", "encoder/layer_norm")

    put(f"{dec}.embed_tokens.weight", "decoder/embeddings/weight")
    put(f"{dec}.embed_positions.weight", "decoder/position_encodings/encodings")
    for i in range(_count_layers(model, "decoder")):
        src, dst = f"decoder/layer_{i}", f"{dec}.layers.{i}"
        norm(f"{dst}.self_attn_layer_norm", f"{src}/self_attention/layer_norm")
        fused(f"{dst}.self_attn", f"{src}/self_attention/linear_0", ("q_proj", "k_proj", "v_proj"))
        linear(f"{dst}.self_attn.out_proj", f"{src}/self_attention/linear_1")
        norm(f"{dst}.encoder_attn_layer_norm", f"{src}/attention/layer_norm")
        linear(f"{dst}.encoder_attn.q_proj", f"{src}/attention/linear_0")
        fused(f"{dst}.encoder_attn", f"{src}/attention/linear_1", ("k_proj", "v_proj"))
        linear(f"{dst}.encoder_attn.out_proj", f"{src}/attention/linear_2")
        _ffn(norm, linear, dst, src)
    norm(f"{dec}.layer_norm", "decoder/layer_norm")
    return {name: torch.from_numpy(array.astype(np.float32)) for name, array in state.items()}


def _ffn(norm, linear, dst: str, src: str) -> None:
    norm(f"{dst}.final_layer_norm", f"{src}/ffn/layer_norm")
    linear(f"{dst}.fc1", f"{src}/ffn/linear_0")
    linear(f"{dst}.fc2", f"{src}/ffn/linear_1")


def _count_layers(model: CTranslate2Model, prefix: str) -> int:
    count = 0
    while f"{prefix}/layer_{count}/ffn/linear_0/weight" in model.variables:
        count += 1
    if count == 0:
        raise WhisperConversionError(f"no {prefix} layers in the CTranslate2 model")
    return count
