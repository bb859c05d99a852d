"""Model artifacts: a directory of `config.json` + `model.safetensors`, loaded strictly.

Also the loader for the published LatentSync `.pt` files (`{"state_dict": ...}`), read with
`torch.load(weights_only=True)`: no pickled code ever runs.
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from synclip.errors import UserError

CONFIG = "config.json"
WEIGHTS = "model.safetensors"


class CheckpointError(UserError):
    """Weights that do not fit the model, or a file that is not a checkpoint; the message lists the keys."""


def save_artifact(folder: str | Path, config: Mapping, model: nn.Module, kind: str) -> Path:
    """Write `config.json` (with `kind`) and `model.safetensors` into `folder`, replacing what was there.

    The two files are written into a temporary sibling first and swapped in, so a reader never
    sees a config without its weights.
    """
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=folder.parent))
    try:
        (tmp / CONFIG).write_text(json.dumps({"kind": kind, **config}, indent=1, sort_keys=True))
        state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
        save_file(state, str(tmp / WEIGHTS), metadata={"kind": kind})
        folder.mkdir(exist_ok=True)
        for name in (WEIGHTS, CONFIG):  # weights first: a config always has matching weights
            os.replace(tmp / name, folder / name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder


def read_config(folder: str | Path, kind: str) -> dict:
    path = Path(folder) / CONFIG
    if not path.is_file():
        raise CheckpointError(f"{folder}: no {CONFIG}; not a synclip {kind} artifact")
    config = json.loads(path.read_text())
    if config.get("kind") != kind:
        raise CheckpointError(f"{path}: kind {config.get('kind')!r}, expected {kind!r}")
    return config


def read_weights(folder: str | Path) -> dict[str, torch.Tensor]:
    path = Path(folder) / WEIGHTS
    if not path.is_file():
        raise CheckpointError(f"{folder}: no {WEIGHTS}")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError) as error:
        raise CheckpointError(f"{path} is not a readable safetensors file ({error})") from None


def load_strict(
    model: nn.Module, state: Mapping[str, torch.Tensor], source: str, may_be_missing: Sequence[str] = ()
) -> None:
    """Load `state` into `model`; any unexpected key, mismatched shape or missing key is an error.

    `may_be_missing` lists key prefixes that are allowed to be absent (they keep their
    initialisation), e.g. temporal modules when stage 2 starts from a stage-1 UNet.
    """
    own = model.state_dict()
    unexpected = sorted(k for k in state if k not in own)
    missing = sorted(k for k in own if k not in state and not any(k.startswith(p) for p in may_be_missing))
    mismatched = sorted(
        f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}"
        for k in state
        if k in own and state[k].shape != own[k].shape
    )
    if unexpected or missing or mismatched:
        parts = []
        for label, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", mismatched)):
            if keys:
                shown = ", ".join(keys[:8]) + (f" … (+{len(keys) - 8})" if len(keys) > 8 else "")
                parts.append(f"{len(keys)} {label}: {shown}")
        raise CheckpointError(f"{source} does not match the model: " + "; ".join(parts))
    model.load_state_dict(state, strict=False)


def read_latentsync_checkpoint(path: str | Path) -> dict[str, torch.Tensor]:
    """The state dict of a published LatentSync `.pt` (a dict with `state_dict`), weights only."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except (
        RuntimeError,
        OSError,
        EOFError,
        pickle.UnpicklingError,
    ) as error:  # what torch raises for non-checkpoints
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint ({error})") from None
    state = payload.get("state_dict", payload) if isinstance(payload, dict) else None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path}: holds no state dict of tensors")
    return state
