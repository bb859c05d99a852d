"""Shared fixtures: the repository root, the real params file, and the fetched pretrained weights."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

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
