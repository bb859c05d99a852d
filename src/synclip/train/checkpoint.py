"""Complete training checkpoints: weights, optimizer, scaler, step, history and every RNG state.
Written atomically and read with `torch.load(weights_only=True)`, so a killed run resumes exactly.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from synclip.artifacts import CheckpointError
from synclip.files import atomic_path


def save_training_state(
    path: str | Path,
    *,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    step: int,
    rng: np.random.Generator,
    fingerprint: str,
    extra: dict[str, Any],
) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {
        "fingerprint": fingerprint,  # what must not change between the killed run and the resume
        "step": step,
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scaler": scaler.state_dict(),
        "torch_rng": torch.get_rng_state(),
        "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy_rng": rng.bit_generator.state,
        "extra": extra,
    }
    with atomic_path(path) as tmp:  # a killed run leaves either the previous checkpoint or the new one
        torch.save(state, tmp)


def load_training_state(
    path: str | Path,
    *,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    rng: np.random.Generator,
    fingerprint: str,
) -> tuple[int, dict[str, Any]] | None:
    """Restore everything from `path`; returns (step, extra), or None when there is nothing to resume.

    A checkpoint written for other params or data (another fingerprint) is not resumed from: the
    caller starts afresh and overwrites it.
    """
    path = Path(path)
    if not path.is_file():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, OSError, EOFError) as error:
        raise CheckpointError(
            f"{path}: unreadable training checkpoint ({error}); delete it to start afresh"
        ) from None
    if state.get("fingerprint") != fingerprint:
        return None
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    scaler.load_state_dict(state["scaler"])
    torch.set_rng_state(state["torch_rng"])
    if state["cuda_rng"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda_rng"])
    rng.bit_generator.state = state["numpy_rng"]
    return int(state["step"]), state["extra"]
