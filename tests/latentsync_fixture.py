"""Reading the committed fixtures that scripts/latentsync_fixtures made from LatentSync's own code."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import safe_open

FIXTURES = Path(__file__).parent / "fixtures" / "latentsync"
COMMIT = "a229c3948406bc2cf6eaf4873e662e70c6a04746"


def load_fixture(name: str) -> tuple[dict[str, torch.Tensor], dict]:
    """(tensors, notes) of tests/fixtures/latentsync/<name>.safetensors; asserts the upstream commit."""
    with safe_open(FIXTURES / f"{name}.safetensors", framework="pt") as file:
        metadata = file.metadata()
        tensors = {key: file.get_tensor(key) for key in file.keys()}  # noqa: SIM118 (safe_open is not iterable)
    assert metadata["commit"] == COMMIT, metadata["commit"]
    return tensors, json.loads(metadata["notes"])


def peak_relative(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a − b| / max |b|: the error relative to the reference's peak (for large-valued tensors)."""
    return float((a.double() - b.double()).abs().max() / b.double().abs().max().clamp(min=1e-12))
