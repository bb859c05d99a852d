"""Test-side Whisper tools that share no code with synclip: a CTranslate2 `model.bin` writer for
tiny random checkpoints and a numpy forward pass that reads those arrays directly."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
from scipy.special import erf

DTYPE_IDS = {np.dtype(np.float32): 0, np.dtype(np.int8): 1, np.dtype(np.int16): 2, np.dtype(np.float16): 4}
SPECIALS = ["<|endoftext|>", "<|startoftranscript|>", "<|notimestamps|>"]


def tiny_whisper_arrays(
    seed: int = 0,
    d: int = 16,
    heads: int = 2,
    ffn: int = 32,
    mels: int = 8,
    layers: int = 2,
    source_positions: int = 12,
    target_positions: int = 10,
    vocab_size: int = 40,
    dtype=np.float16,
) -> dict[str, np.ndarray]:
    """Random WhisperSpec variables in CTranslate2's naming (k biases zero, as CTranslate2 writes them)."""
    rng = np.random.default_rng(seed)

    def w(*shape, scale=0.3):
        return (rng.standard_normal(shape) * scale).astype(dtype)

    v: dict[str, np.ndarray] = {
        "decoder/activation": np.array(3, np.int8),
        "decoder/num_heads": np.array(heads, np.int16),
        "decoder/pre_norm": np.array(1, np.int8),
        "decoder/scale_embeddings": np.array(0, np.int8),
        "encoder/num_heads": np.array(heads, np.int16),
        "encoder/conv1/weight": w(d, mels, 3),
        "encoder/conv1/bias": w(d),
        "encoder/conv2/weight": w(d, d, 3),
        "encoder/conv2/bias": w(d),
        "encoder/position_encodings/encodings": w(source_positions, d),
        "encoder/layer_norm/gamma": 1 + w(d, scale=0.1),
        "encoder/layer_norm/beta": w(d, scale=0.1),
        "decoder/embeddings/weight": w(vocab_size, d),
        "decoder/position_encodings/encodings": w(target_positions, d),
        "decoder/layer_norm/gamma": 1 + w(d, scale=0.1),
        "decoder/layer_norm/beta": w(d, scale=0.1),
    }

    def qkv_bias(parts: int) -> np.ndarray:
        bias = w(parts * d)
        bias[(parts - 2) * d : (parts - 1) * d] = 0  # the k part
        return bias

    for side in ("encoder", "decoder"):
        for i in range(layers):
            p = f"{side}/layer_{i}"
            v[f"{p}/self_attention/layer_norm/gamma"] = 1 + w(d, scale=0.1)
            v[f"{p}/self_attention/layer_norm/beta"] = w(d, scale=0.1)
            v[f"{p}/self_attention/linear_0/weight"] = w(3 * d, d)
            v[f"{p}/self_attention/linear_0/bias"] = qkv_bias(3)
            v[f"{p}/self_attention/linear_1/weight"] = w(d, d)
            v[f"{p}/self_attention/linear_1/bias"] = w(d)
            v[f"{p}/ffn/layer_norm/gamma"] = 1 + w(d, scale=0.1)
            v[f"{p}/ffn/layer_norm/beta"] = w(d, scale=0.1)
            v[f"{p}/ffn/linear_0/weight"] = w(ffn, d)
            v[f"{p}/ffn/linear_0/bias"] = w(ffn)
            v[f"{p}/ffn/linear_1/weight"] = w(d, ffn)
            v[f"{p}/ffn/linear_1/bias"] = w(d)
            if side == "decoder":
                v[f"{p}/attention/layer_norm/gamma"] = 1 + w(d, scale=0.1)
                v[f"{p}/attention/layer_norm/beta"] = w(d, scale=0.1)
                v[f"{p}/attention/linear_0/weight"] = w(d, d)
                v[f"{p}/attention/linear_0/bias"] = w(d)
                v[f"{p}/attention/linear_1/weight"] = w(2 * d, d)
                v[f"{p}/attention/linear_1/bias"] = qkv_bias(2)
                v[f"{p}/attention/linear_2/weight"] = w(d, d)
                v[f"{p}/attention/linear_2/bias"] = w(d)
    return v


def write_ct2_whisper(folder: Path, arrays: dict[str, np.ndarray]) -> Path:
    """Write model.bin (format v6), config.json and vocabulary.txt as CTranslate2 does."""
    folder.mkdir(parents=True, exist_ok=True)
    with (folder / "model.bin").open("wb") as f:

        def string(text: str) -> None:
            data = text.encode() + b"\0"
            f.write(struct.pack("<H", len(data)) + data)

        f.write(struct.pack("<I", 6))
        string("WhisperSpec")
        f.write(struct.pack("<I", 3))
        f.write(struct.pack("<I", len(arrays)))
        for name in sorted(arrays):
            value = np.ascontiguousarray(arrays[name])
            string(name)
            f.write(struct.pack("<B", value.ndim))
            for dim in value.shape:
                f.write(struct.pack("<I", dim))
            f.write(struct.pack("<B", DTYPE_IDS[value.dtype]))
            f.write(struct.pack("<I", value.nbytes))
            f.write(value.tobytes())
        f.write(struct.pack("<I", 1))
        string("decoder/projection/weight")
        string("decoder/embeddings/weight")
    vocab_size = arrays["decoder/embeddings/weight"].shape[0]
    tokens = [f"tok{i}" for i in range(vocab_size - len(SPECIALS))] + SPECIALS
    (folder / "vocabulary.txt").write_text("\n".join(tokens) + "\n")
    (folder / "config.json").write_text(json.dumps({"suppress_ids": [1, 2], "suppress_ids_begin": [3]}))
    return folder


# --- numpy forward pass -----------------------------------------------------------------------------


def _gelu(x):
    return 0.5 * x * (1 + erf(x / np.sqrt(2)))


def _ln(x, v, name):
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + 1e-5) * v[f"{name}/gamma"] + v[f"{name}/beta"]


def _lin(x, v, name):
    return x @ v[f"{name}/weight"].T + v[f"{name}/bias"]


def _conv1d(x, weight, bias, stride):  # x (C_in, T), weight (C_out, C_in, 3), padding 1
    padded = np.pad(x, ((0, 0), (1, 1)))
    steps = (padded.shape[1] - 3) // stride + 1
    out = np.stack(
        [np.einsum("oik,ik->o", weight, padded[:, t * stride : t * stride + 3]) for t in range(steps)], 1
    )
    return out + bias[:, None]


def _attention(q, k, v_, heads, causal=False):
    T, d = q.shape
    hd = d // heads
    out = np.zeros_like(q)
    for h in range(heads):
        s = slice(h * hd, (h + 1) * hd)
        scores = q[:, s] @ k[:, s].T / np.sqrt(hd)
        if causal:
            scores = scores + np.triu(np.full((T, k.shape[0]), -np.inf), 1)
        scores = np.exp(scores - scores.max(-1, keepdims=True))
        out[:, s] = (scores / scores.sum(-1, keepdims=True)) @ v_[:, s]
    return out


def _ffn(x, v, p):
    h = _ln(x, v, f"{p}/ffn/layer_norm")
    return x + _lin(_gelu(_lin(h, v, f"{p}/ffn/linear_0")), v, f"{p}/ffn/linear_1")


def _self_attention(x, v, p, heads, causal):
    h = _ln(x, v, f"{p}/self_attention/layer_norm")
    q, k, val = np.split(_lin(h, v, f"{p}/self_attention/linear_0"), 3, axis=-1)
    return x + _lin(_attention(q, k, val, heads, causal), v, f"{p}/self_attention/linear_1")


def reference_encoder(arrays: dict[str, np.ndarray], mel: np.ndarray) -> np.ndarray:
    """Whisper encoder on one log-mel (n_mels, 2·T) in float64: (T, d)."""
    v = {k: a.astype(np.float64) for k, a in arrays.items()}
    heads = int(arrays["encoder/num_heads"])
    x = _gelu(_conv1d(mel, v["encoder/conv1/weight"], v["encoder/conv1/bias"], 1))
    x = _gelu(_conv1d(x, v["encoder/conv2/weight"], v["encoder/conv2/bias"], 2)).T
    x = x + v["encoder/position_encodings/encodings"][: x.shape[0]]
    i = 0
    while f"encoder/layer_{i}/ffn/linear_0/weight" in v:
        x = _ffn(_self_attention(x, v, f"encoder/layer_{i}", heads, causal=False), v, f"encoder/layer_{i}")
        i += 1
    return _ln(x, v, "encoder/layer_norm")


def reference_decoder_logits(
    arrays: dict[str, np.ndarray], tokens: list[int], encoded: np.ndarray
) -> np.ndarray:
    """Whisper decoder logits (len(tokens), vocab) given the encoder output, in float64."""
    v = {k: a.astype(np.float64) for k, a in arrays.items()}
    heads = int(arrays["decoder/num_heads"])
    x = v["decoder/embeddings/weight"][tokens] + v["decoder/position_encodings/encodings"][: len(tokens)]
    i = 0
    while f"decoder/layer_{i}/ffn/linear_0/weight" in v:
        p = f"decoder/layer_{i}"
        x = _self_attention(x, v, p, heads, causal=True)
        h = _ln(x, v, f"{p}/attention/layer_norm")
        q = _lin(h, v, f"{p}/attention/linear_0")
        k, val = np.split(_lin(encoded, v, f"{p}/attention/linear_1"), 2, axis=-1)
        x = x + _lin(_attention(q, k, val, heads), v, f"{p}/attention/linear_2")
        x = _ffn(x, v, p)
        i += 1
    x = _ln(x, v, "decoder/layer_norm")
    return x @ v["decoder/embeddings/weight"].T
