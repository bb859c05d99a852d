"""The manifests stages hand each other: the processed clips, one row each, with their split."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from synclip.errors import UserError


def read_manifest(path: Path, splits: Sequence[str] = (), who: str = "this stage") -> pd.DataFrame:
    """The manifest at `path`; a UserError when one of `splits` has no clip in it (`who` needs them)."""
    if not path.is_file():
        raise UserError(f"{path}: no such manifest; run the stage that writes it first")
    manifest = pd.read_parquet(path)
    for split in splits:
        if not (manifest["split"] == split).any():
            raise UserError(f"{path} has no {split} clips; {who} needs {' and '.join(splits)} clips")
    return manifest
