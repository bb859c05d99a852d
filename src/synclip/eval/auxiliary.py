"""LatentSync's auxiliary weights (the `auxiliary/` folder of its Hub repos) → one local folder of the
papers' instruments, each file loaded strictly before anything is copied, the folder replaced whole."""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch

from synclip.errors import UserError
from synclip.eval.face_tracks import load_s3fd
from synclip.eval.fidelity import load_i3d
from synclip.eval.sync_conf import load_syncnet_v2
from synclip.inference.latentsync import AUXILIARY_FILES
from synclip.pretrained.store import sha256_file
from synclip.train.losses import load_lpips

log = logging.getLogger(__name__)

SOURCES_FILE = "SOURCES.json"


class AuxiliaryImportError(UserError):
    """An auxiliary file that cannot be imported; the message names it."""


def _load_vgg(path: Path) -> torch.nn.Module:
    lpips, reason = load_lpips(str(path))
    assert lpips is not None, reason  # present: check_auxiliary looked
    return lpips


# file → (the pretrained.<key> that names it, its strict loader)
LOADERS: dict[str, tuple[str, Callable[[Path], object]]] = {
    "syncnet_v2.model": ("syncnet_v2", load_syncnet_v2),
    "sfd_face.pth": ("s3fd", load_s3fd),
    "i3d_torchscript.pt": ("i3d", load_i3d),
    "vgg16-397923af.pth": ("lpips_vgg", _load_vgg),
}
assert tuple(LOADERS) == AUXILIARY_FILES


def check_auxiliary(src: str | Path) -> list[str]:
    """The AUXILIARY_FILES present in `src`, each loaded strictly (an error names the file); other files
    there are listed in the log as not used. At least one must be present."""
    src = Path(src)
    if not src.is_dir():
        raise AuxiliaryImportError(
            f"{src}: no such folder; expected LatentSync's auxiliary/ ({', '.join(AUXILIARY_FILES)})"
        )
    present = [name for name in AUXILIARY_FILES if (src / name).is_file()]
    if not present:
        raise AuxiliaryImportError(f"{src}: none of {', '.join(AUXILIARY_FILES)}")
    for name in present:
        LOADERS[name][1](src / name)
    others = sorted(p.name for p in src.iterdir() if p.is_file() and p.name not in LOADERS)
    if others:
        log.info("auxiliary files synclip does not use, not imported: %s", ", ".join(others))
    missing = [name for name in AUXILIARY_FILES if name not in present]
    if missing:
        log.warning("auxiliary files missing (their instruments stay off): %s", ", ".join(missing))
    return present


def import_auxiliary(src: str | Path, out: str | Path) -> dict[str, str]:
    """Copy the auxiliary files of `src` that load (see `check_auxiliary`) into `out`, with SOURCES.json
    (each file's sha256 and origin); `out` is replaced whole, or left as it was on failure.
    Returns {pretrained.<key>: path} for params.yaml."""
    src, out = Path(src), Path(out)
    if out.exists() and not (out / SOURCES_FILE).is_file():
        raise AuxiliaryImportError(f"{out} exists and is not an auxiliary folder; choose another")
    present = check_auxiliary(src)
    out.parent.mkdir(parents=True, exist_ok=True)
    staged = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    try:
        sources = {}
        for name in present:
            shutil.copyfile(src / name, staged / name)
            sources[name] = {"sha256": sha256_file(staged / name), "from": str((src / name).resolve())}
        (staged / SOURCES_FILE).write_text(json.dumps(sources, indent=1, sort_keys=True) + "\n")
        if out.exists():
            old = out.with_name(f".{out.name}-old")
            if old.exists():  # left by an import killed between the two renames
                shutil.rmtree(old)
            os.replace(out, old)
            os.replace(staged, out)
            shutil.rmtree(old)
        else:
            os.replace(staged, out)
    finally:
        if staged.exists():
            shutil.rmtree(staged)
    log.info("imported %s into %s", ", ".join(present), out)
    return {f"pretrained.{LOADERS[name][0]}": str(out / name) for name in present}
