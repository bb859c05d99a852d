"""Checks of local pretrained weights: existence, format and recorded checksums."""

from __future__ import annotations

import hashlib
import json
import logging
import zipfile
from collections.abc import Callable
from pathlib import Path

from synclip.errors import UserError
from synclip.files import atomic_path

log = logging.getLogger(__name__)

SUMS_FILE = "SHA256SUMS"
_CHUNK = 1 << 20


class PretrainedError(UserError):
    """Pretrained weights are missing, malformed or corrupt; the message names the file and the param."""


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        for block in iter(lambda: file.read(_CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def read_sums(folder: Path) -> dict[str, str]:
    """{relative path: sha256} from `folder/SHA256SUMS`; empty when there is none."""
    path = folder / SUMS_FILE
    if not path.is_file():
        return {}
    sums = {}
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        digest, sep, name = line.partition("  ")
        if not sep or len(digest) != 64:
            raise PretrainedError(f"{path}:{number}: not a sha256sum line: {line!r}")
        sums[name.lstrip("*")] = digest
    return sums


def write_sums(folder: Path, sums: dict[str, str]) -> None:
    lines = [f"{digest}  {name}\n" for name, digest in sorted(sums.items())]
    with atomic_path(folder / SUMS_FILE) as tmp:
        tmp.write_text("".join(lines))


def artifact_files(path: Path) -> list[Path]:
    """The regular files an artifact consists of (the file itself, or every file in the folder)."""
    if path.is_file():
        return [path]
    return sorted(p for p in path.rglob("*") if p.is_file())


def verify_checksums(path: Path, param: str) -> int:
    """Verify `path` (a file or a folder) against the SHA256SUMS of its parent; returns files checked.

    A folder of pretrained weights may hold a `SHA256SUMS` file in `sha256sum` format with paths
    relative to that folder (`sha256sum -c SHA256SUMS` verifies it by hand). When the folder that
    holds an artifact has one, every listed file of that artifact is verified before use.
    """
    sums = read_sums(path.parent)
    prefix = path.name
    listed = {
        name: digest for name, digest in sums.items() if name == prefix or name.startswith(prefix + "/")
    }
    for name, digest in sorted(listed.items()):
        file = path.parent / name
        if not file.is_file():
            raise PretrainedError(f"{param}: {file} is listed in {path.parent / SUMS_FILE} but missing")
        actual = sha256_file(file)
        if actual != digest:
            raise PretrainedError(
                f"{param}: {file} has sha256 {actual[:16]}…, expected {digest[:16]}… "
                f"(recorded in {path.parent / SUMS_FILE}); the file is corrupt or was replaced — "
                "delete it and run `synclip weights fetch`"
            )
    if not listed:
        log.debug("%s: %s has no recorded checksums; format checks only", param, path)
    return len(listed)


# --- format checks per kind ----------------------------------------------------------------------

FACE_LANDMARKER_MEMBERS = ("face_detector.tflite", "face_landmarks_detector.tflite")


def check_face_landmarker(path: Path, param: str) -> None:
    if not path.is_file():
        raise PretrainedError(f"{param}: {path} is not a file (expected a MediaPipe face_landmarker.task)")
    if not zipfile.is_zipfile(path):
        raise PretrainedError(f"{param}: {path} is not a MediaPipe .task bundle (not a zip archive)")
    with zipfile.ZipFile(path) as bundle:
        names = set(bundle.namelist())
        bad = bundle.testzip()
    missing = [m for m in FACE_LANDMARKER_MEMBERS if m not in names]
    if missing:
        raise PretrainedError(f"{param}: {path} is not a FaceLandmarker bundle (no {', '.join(missing)})")
    if bad is not None:
        raise PretrainedError(f"{param}: {path} is corrupt ({bad} fails its CRC check)")


def check_model_dir(path: Path, param: str, weights: str, field: str, expected: str, what: str) -> None:
    """A model folder: config.json whose `field` is `expected`, and a readable, non-empty `weights`
    safetensors file. `what` names the kind of folder in errors (e.g. "transformers whisper model")."""
    from safetensors import SafetensorError, safe_open

    if not path.is_dir():
        raise PretrainedError(f"{param}: {path} is not a directory (expected a {what})")
    config_path, weights_path = path / "config.json", path / weights
    for required in (config_path, weights_path):
        if not required.is_file():
            raise PretrainedError(f"{param}: {required} is missing")
    try:
        config = json.loads(config_path.read_text())
    except json.JSONDecodeError as error:
        raise PretrainedError(f"{param}: {config_path} is not valid JSON ({error})") from None
    if config.get(field) != expected:
        raise PretrainedError(
            f"{param}: {config_path} describes {field} {config.get(field)!r}, expected {expected!r}"
        )
    try:
        with safe_open(weights_path, framework="pt") as file:
            keys = list(file.keys())
    except (SafetensorError, OSError) as error:
        raise PretrainedError(
            f"{param}: {weights_path} is not a readable safetensors file ({error})"
        ) from None
    if not keys:
        raise PretrainedError(f"{param}: {weights_path} holds no tensors")


def check_transformers_dir(path: Path, param: str, model_type: str) -> None:
    """A transformers model folder: config.json of `model_type` and a readable model.safetensors."""
    check_model_dir(
        path, param, "model.safetensors", "model_type", model_type, f"transformers {model_type} model"
    )


def check_diffusers_dir(path: Path, param: str, class_name: str) -> None:
    """A diffusers model folder: config.json naming `class_name`, a readable diffusion_pytorch_model.safetensors."""
    weights = "diffusion_pytorch_model.safetensors"
    check_model_dir(path, param, weights, "_class_name", class_name, f"diffusers {class_name} folder")


CHECKS: dict[str, Callable[[Path, str], None]] = {
    "face_landmarker": check_face_landmarker,
    "taef2": lambda path, param: check_diffusers_dir(path, param, "Taef2"),
    "whisper": lambda path, param: check_transformers_dir(path, param, "whisper"),
}


def require(kind: str, path: str | Path | None, param: str) -> Path:
    """The checked path of a pretrained artifact of `kind`, or a PretrainedError naming file and param.

    `param` is the params.yaml key that points here (e.g. "pretrained.whisper"), so that the error
    tells the user what to change.
    """
    if kind not in CHECKS:
        raise ValueError(f"unknown pretrained kind {kind!r}; known: {', '.join(CHECKS)}")
    if path is None:
        raise PretrainedError(f"{param} is not set; point it at a local copy (see models/README.md)")
    path = Path(path)
    if not path.exists():
        raise PretrainedError(
            f"{param}: {path} does not exist; run `synclip weights fetch` (or `make setup`) "
            f"or set {param} to a local copy"
        )
    verify_checksums(path, param)
    CHECKS[kind](path, param)
    return path
