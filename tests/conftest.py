"""Shared fixtures: the repository root, the pretrained weights, a small corpus, one torch thread, a tiny Whisper."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import pytest
import torch

from synclip.config import load_params
from synclip.data.synthtalk import synthesize_corpus

ROOT = Path(__file__).resolve().parents[1]
PRETRAINED = ROOT / "models" / "pretrained"

os.environ.setdefault("DVC_NO_ANALYTICS", "1")
os.environ.setdefault("DO_NOT_TRACK", "1")


@pytest.fixture(scope="session")
def root() -> Path:
    return ROOT


@pytest.fixture(scope="session")
def pretrained_dir() -> Path:
    """models/pretrained as `make setup` leaves it; tests marked `pretrained` need it."""
    if not (PRETRAINED / "SHA256SUMS").is_file():
        pytest.skip("models/pretrained is not set up; run `make setup` first")
    return PRETRAINED


@pytest.fixture(scope="session")
def spec(root):
    """A small corpus: 13 clips of 2.5–3.5 s; 9 of them carry one defect each, 4 are clean."""
    base = load_params(root / "params.yaml").corpus
    return dataclasses.replace(
        base,
        clips=13,
        identities=dataclasses.replace(base.identities, train=4, val=1, test=2),
        min_seconds=2.5,
        max_seconds=3.5,
        defect_rate=9 / 13,
        workers=1,
    )


@pytest.fixture(scope="session")
def corpus(spec, tmp_path_factory):
    out = tmp_path_factory.mktemp("synthtalk")
    manifest = synthesize_corpus(spec, out)
    gts = {row["clip"]: json.loads((out / f"{row['clip']}.json").read_text()) for row in manifest["clips"]}
    return out, manifest, gts


@pytest.fixture(scope="session")
def processed(corpus, pretrained_dir, tmp_path_factory):
    """The small corpus through the preprocess stage's library call: (folder, manifest, rejects)."""
    from synclip.data.preprocess import preprocess_corpus

    raw, _, _ = corpus
    out = tmp_path_factory.mktemp("processed")
    params = load_params(ROOT / "params.yaml").preprocess
    manifest, rejects = preprocess_corpus(raw, out, params, pretrained_dir / "face_landmarker.task")
    return out, manifest, rejects


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread for a module of tiny networks: as fast, and it does not fight other jobs for the cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny_whisper_folder(folder: Path, seed: int = 0) -> Path:
    """A random transformers Whisper (d_model 16, 2 encoder layers, real 30 s geometry) saved to `folder`."""
    from transformers import WhisperConfig, WhisperModel
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()
    config = WhisperConfig(
        vocab_size=64,
        num_mel_bins=80,
        d_model=16,
        encoder_layers=2,
        decoder_layers=1,
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        encoder_ffn_dim=32,
        decoder_ffn_dim=32,
        max_source_positions=1500,
        max_target_positions=16,
        pad_token_id=0,
        bos_token_id=0,
        eos_token_id=0,
        decoder_start_token_id=1,
    )
    torch.manual_seed(seed)
    WhisperModel(config).save_pretrained(folder)
    return folder
