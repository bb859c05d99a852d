"""Convert a CTranslate2 or an openai-whisper (.pt) Whisper model to a transformers directory
(config.json + model.safetensors)."""

from __future__ import annotations

import json
import logging
import pickle
import shutil
import zipfile
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
    """The source model cannot be converted faithfully; the message says why."""


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


# --- openai-whisper checkpoints (`whisper.load_model`'s .pt: `dims` + `model_state_dict`) -------------

OPENAI_DIMS = (
    "n_mels",
    "n_audio_ctx",
    "n_audio_state",
    "n_audio_head",
    "n_audio_layer",
    "n_vocab",
    "n_text_ctx",
    "n_text_state",
    "n_text_head",
    "n_text_layer",
)
# Source entries that are not weights: openai-whisper's word-timestamp heads (a sparse buffer), which
# transformers keeps in its generation config instead; synclip uses the encoder only.
OPENAI_EXCUSED = ("alignment_heads",)
# openai-whisper ↔ transformers name pieces, matched on whole dotted segments, applied in this order
# (and in reverse order the other way)
_OPENAI_RENAMES = (
    (".encoder.positional_embedding.", ".encoder.embed_positions.weight."),
    (".decoder.positional_embedding.", ".decoder.embed_positions.weight."),
    (".token_embedding.", ".embed_tokens."),
    (".encoder.ln_post.", ".encoder.layer_norm."),
    (".decoder.ln.", ".decoder.layer_norm."),
    (".blocks.", ".layers."),
    (".cross_attn_ln.", ".encoder_attn_layer_norm."),
    (".cross_attn.", ".encoder_attn."),
    (".attn_ln.", ".self_attn_layer_norm."),
    (".attn.", ".self_attn."),
    (".query.", ".q_proj."),
    (".key.", ".k_proj."),
    (".value.", ".v_proj."),
    (".out.", ".out_proj."),
    (".mlp_ln.", ".final_layer_norm."),
    (".mlp.0.", ".fc1."),
    (".mlp.2.", ".fc2."),
)
# openai-whisper's tokenizer: <|endoftext|> then <|startoftranscript|>; multilingual from 51865 entries
_ENGLISH_VOCAB = 51864
_MULTILINGUAL_VOCAB = 51865


def convert_openai_whisper(checkpoint_path: str | Path, out_dir: str | Path) -> Path:
    """Write a transformers `WhisperModel` directory (config.json, model.safetensors in float32,
    preprocessor_config.json) converted from the openai-whisper checkpoint `checkpoint_path`.

    The checkpoint is read with `torch.load(weights_only=True)`: `dims` (ModelDimensions) and
    `model_state_dict` (openai names, often float16). Every source tensor is used, except the excused
    `alignment_heads`; a missing, unexpected or misshapen one, or an unreadable file, is a
    WhisperConversionError naming the file and the key. `synclip.artifacts.load_whisper_encoder` loads
    the result strictly.
    """
    from transformers import WhisperFeatureExtractor, WhisperModel
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()
    path, out_dir = Path(checkpoint_path), Path(out_dir)
    dims, source = read_openai_whisper(path)
    config = openai_whisper_config(dims, path)
    model = WhisperModel(config)
    state = openai_whisper_state_dict(source, model.state_dict(), path)
    model.load_state_dict(state, strict=True)

    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir, safe_serialization=True)
    WhisperFeatureExtractor(feature_size=config.num_mel_bins).save_pretrained(out_dir)
    log.info(
        "converted %s -> %s (%d encoder + %d decoder layers, d_model %d)",
        path,
        out_dir,
        config.encoder_layers,
        config.decoder_layers,
        config.d_model,
    )
    return out_dir


def read_openai_whisper(path: Path) -> tuple[dict[str, int], dict[str, torch.Tensor]]:
    """(`dims`, `model_state_dict`) of an openai-whisper .pt, checked for the keys and types it needs."""
    if not path.is_file():
        raise WhisperConversionError(f"{path}: no such openai-whisper checkpoint")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, pickle.UnpicklingError, EOFError, ValueError, zipfile.BadZipFile) as error:
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise WhisperConversionError(f"{path}: not a readable torch checkpoint ({first_line})") from error
    if not isinstance(checkpoint, dict):
        raise WhisperConversionError(f"{path}: holds a {type(checkpoint).__name__}, expected a dict")
    for key in ("dims", "model_state_dict"):
        if not isinstance(checkpoint.get(key), dict):
            raise WhisperConversionError(f"{path}: no {key!r} dict; not an openai-whisper checkpoint")
    dims = checkpoint["dims"]
    for name in OPENAI_DIMS:
        if not isinstance(dims.get(name), int):
            raise WhisperConversionError(f"{path}: dims[{name!r}] is {dims.get(name)!r}, expected an int")
    unknown = sorted(set(dims) - set(OPENAI_DIMS))
    if unknown:
        raise WhisperConversionError(f"{path}: unknown dims {unknown}")
    return {name: dims[name] for name in OPENAI_DIMS}, checkpoint["model_state_dict"]


def openai_whisper_config(dims: dict[str, int], path: Path):
    """transformers WhisperConfig of openai-whisper `dims` (4× wide MLPs, GELU, unscaled embeddings)."""
    from transformers import WhisperConfig

    if dims["n_audio_state"] != dims["n_text_state"]:
        raise WhisperConversionError(
            f"{path}: n_audio_state {dims['n_audio_state']} != n_text_state {dims['n_text_state']}; "
            "transformers' Whisper has one d_model"
        )
    vocab = dims["n_vocab"]
    special: dict = {"pad_token_id": None, "bos_token_id": None, "eos_token_id": None}
    if vocab >= _ENGLISH_VOCAB:
        eot = 50257 if vocab >= _MULTILINGUAL_VOCAB else 50256
        special = {
            "pad_token_id": eot,
            "bos_token_id": eot,
            "eos_token_id": eot,
            "decoder_start_token_id": eot + 1,
        }
    else:
        log.warning("%s: n_vocab %d has no Whisper special tokens; only the encoder is usable", path, vocab)
    return WhisperConfig(
        vocab_size=vocab,
        num_mel_bins=dims["n_mels"],
        d_model=dims["n_audio_state"],
        encoder_layers=dims["n_audio_layer"],
        encoder_attention_heads=dims["n_audio_head"],
        encoder_ffn_dim=4 * dims["n_audio_state"],
        decoder_layers=dims["n_text_layer"],
        decoder_attention_heads=dims["n_text_head"],
        decoder_ffn_dim=4 * dims["n_text_state"],
        max_source_positions=dims["n_audio_ctx"],
        max_target_positions=dims["n_text_ctx"],
        activation_function="gelu",
        scale_embedding=False,
        begin_suppress_tokens=None,
        dtype="float32",
        **special,
    )


def openai_whisper_name(name: str, *, reverse: bool = False) -> str:
    """The transformers `WhisperModel` name of an openai-whisper weight name (`reverse`: the other way)."""
    dotted = f".{name}."
    for theirs, ours in reversed(_OPENAI_RENAMES) if reverse else _OPENAI_RENAMES:
        dotted = dotted.replace(ours, theirs) if reverse else dotted.replace(theirs, ours)
    return dotted[1:-1]


def openai_whisper_state_dict(
    source: dict[str, torch.Tensor], target: dict[str, torch.Tensor], path: Path
) -> dict[str, torch.Tensor]:
    """`target`'s names → float32 tensors from `source` (openai names); every source tensor is used
    or excused (OPENAI_EXCUSED), and every target weight found with its shape."""
    wanted = {openai_whisper_name(hf_name, reverse=True): hf_name for hf_name in target}
    assert all(openai_whisper_name(name) == hf_name for name, hf_name in wanted.items()), wanted
    unexpected = sorted(set(source) - set(wanted) - set(OPENAI_EXCUSED))
    if unexpected:
        raise WhisperConversionError(
            f"{path}: unexpected weight {unexpected[0]!r} (of {len(unexpected)}: {unexpected[:5]}) for these dims"
        )
    state = {}
    for name, hf_name in wanted.items():
        if name not in source:
            raise WhisperConversionError(f"{path}: missing weight {name!r} (transformers' {hf_name!r})")
        tensor = source[name]
        expected = target[hf_name]
        if not isinstance(tensor, torch.Tensor) or not tensor.is_floating_point():
            raise WhisperConversionError(f"{path}: {name!r} is not a floating-point tensor")
        if tensor.shape != expected.shape:
            raise WhisperConversionError(
                f"{path}: {name!r} has shape {tuple(tensor.shape)}, expected {tuple(expected.shape)} from dims"
            )
        state[hf_name] = tensor.to(torch.float32)
    return state
