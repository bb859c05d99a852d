"""Shared fixtures: the repository root, the real params file, and the fetched pretrained weights."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import pytest

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
