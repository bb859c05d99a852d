"""The upstream checkout and the fixture files every generator module shares."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

COMMIT = "a229c3948406bc2cf6eaf4873e662e70c6a04746"  # LatentSync 1.6, 2025-06-20
FIXTURES = Path(__file__).resolve().parents[2] / "tests" / "fixtures" / "latentsync"


def upstream_root(path: str | Path) -> Path:
    """A local git checkout of bytedance/LatentSync at COMMIT, put first on sys.path so `latentsync` imports."""
    root = Path(path).resolve()
    head = subprocess.run(
        ["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, check=False
    )
    if head.returncode != 0:
        sys.exit(f"{root}: not a git checkout of bytedance/LatentSync ({head.stderr.strip()})")
    if head.stdout.strip() != COMMIT:
        sys.exit(f"{root}: at {head.stdout.strip()}, the fixtures are made at {COMMIT}")
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    return root


def source_digest(root: Path, files: Sequence[str]) -> dict[str, str]:
    """sha256 of the upstream files a fixture was made with, relative to the checkout."""
    return {name: hashlib.sha256((root / name).read_bytes()).hexdigest() for name in files}


def write_fixture(
    name: str,
    tensors: Mapping[str, torch.Tensor | np.ndarray],
    root: Path,
    files: Sequence[str],
    notes: Mapping[str, object] | None = None,
) -> Path:
    """tests/fixtures/latentsync/<name>.safetensors: the tensors, with the upstream commit, the
    sha256 of the upstream `files` used and `notes` (JSON) in the metadata."""
    FIXTURES.mkdir(parents=True, exist_ok=True)
    path = FIXTURES / f"{name}.safetensors"
    state = {
        key: (value if isinstance(value, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(value)))
        .detach()
        .cpu()
        .contiguous()
        for key, value in tensors.items()
    }
    metadata = {
        "upstream": "bytedance/LatentSync",
        "commit": COMMIT,
        "sources": json.dumps(source_digest(root, files), sort_keys=True),
        "notes": json.dumps(dict(notes or {}), sort_keys=True),
    }
    save_file(state, str(path), metadata=metadata)
    print(f"wrote {path.relative_to(FIXTURES.parents[2])} ({sum(v.numel() for v in state.values())} numbers)")
    return path
