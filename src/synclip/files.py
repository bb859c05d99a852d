"""Files written whole or not at all: a temporary sibling, renamed into place when the writing succeeded.
A crash or an error never leaves a partial file (or a config without its weights) under the final name.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any


def sibling(path: Path, suffix: str = "") -> Path:
    """A hidden, unused name beside `path` (nothing is created; the writer creates it with its usual mode)."""
    return path.with_name(f".{path.stem}.{uuid.uuid4().hex[:12]}.partial{suffix}")


@contextmanager
def atomic_path(path: str | Path, suffix: str | None = None) -> Iterator[Path]:
    """A fresh temporary path beside `path` to write to; renamed onto `path` when the block ends
    without an error, removed otherwise. `suffix` (default: `path`'s) lets writers that go by it see it.
    A reader never sees the file half written."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = sibling(path, path.suffix if suffix is None else suffix)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


@contextmanager
def staged_files(folder: str | Path, names: Sequence[str]) -> Iterator[Path]:
    """A temporary folder beside `folder` to write the files `names` into; they are then moved into
    `folder` in that order (put the one a reader checks first last) and the rest is discarded.
    Other files already in `folder` (a training checkpoint) stay."""
    folder = Path(folder)
    tmp = sibling(folder)
    tmp.mkdir(parents=True)
    try:
        yield tmp
        folder.mkdir(exist_ok=True)
        for name in names:
            os.replace(tmp / name, folder / name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@contextmanager
def staged_folder(folder: str | Path) -> Iterator[Path]:
    """A temporary folder beside `folder` to build it in; swapped in whole at the end (the old one, if
    any, is removed only after), so a reader sees the old folder or the new one, never half of one."""
    folder = Path(folder)
    tmp = sibling(folder)
    tmp.mkdir(parents=True)
    old = folder.with_name(f".{folder.name}.old")
    try:
        yield tmp
        shutil.rmtree(old, ignore_errors=True)
        if folder.exists():
            os.replace(folder, old)
        os.replace(tmp, folder)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def write_json(path: str | Path, data: Any, indent: int = 1, sort_keys: bool = True) -> Path:
    """`data` as JSON, written atomically (parent folders are made)."""
    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=indent, sort_keys=sort_keys))
    return path


def write_csv(path: str | Path, rows: Sequence[dict], fields: Sequence[str] | None = None) -> Path:
    """Rows as CSV with a header, written atomically; `fields` default to the last row's keys, and a
    row without some of them leaves those cells empty."""
    path = Path(path)
    fields = list(fields if fields is not None else (rows[-1] if rows else ["step"]))
    with atomic_path(path) as tmp, tmp.open("w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=fields, restval="")
        writer.writeheader()
        writer.writerows(rows)
    return path
