"""`synclip` as a user starts it: the console script, its commands and its error contract."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

SYNCLIP = Path(sys.executable).with_name("synclip")  # the venv's console script


def run(*args, cwd=None):
    assert SYNCLIP.is_file(), "the synclip console script is not installed (pip install -e .)"
    return subprocess.run([SYNCLIP, *args], capture_output=True, text=True, check=False, cwd=cwd)


def test_help_lists_the_commands():
    result = run("--help")
    assert result.returncode == 0
    for command in ("info", "params", "weights"):
        assert command in result.stdout


def test_version():
    result = run("--version")
    assert result.returncode == 0
    assert result.stdout.startswith("synclip ")


def test_info_reports_versions_and_device(root):
    result = run("info", cwd=root)
    assert result.returncode == 0, result.stderr
    assert "torch" in result.stdout
    assert "device (auto): cpu" in result.stdout or "device (auto): cuda" in result.stdout
    assert "pretrained.whisper" in result.stdout


def test_an_unavailable_device_is_one_line_of_error(root):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA; the error path cannot be reached")
    result = run("info", "-S", "runtime.device=cuda", cwd=root)
    assert result.returncode == 2
    assert "no CUDA device" in result.stderr
    assert "Traceback" not in result.stderr


def test_verify_reports_missing_weights_by_param_and_fails(tmp_path, root):
    shutil.copy(root / "params.yaml", tmp_path / "params.yaml")
    result = run("weights", "verify", "-S", f"pretrained.whisper={tmp_path / 'nowhere'}", cwd=tmp_path)
    assert result.returncode == 1
    assert f"pretrained.whisper: {tmp_path / 'nowhere'} does not exist" in result.stdout


def test_convert_whisper_refuses_an_existing_output_and_leaves_it(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    result = run("weights", "convert-whisper", str(tmp_path), str(out))
    assert result.returncode == 2
    assert "already exists" in result.stderr
    assert (out / "keep.txt").read_text() == "mine"


def test_convert_whisper_failure_leaves_no_partial_output(tmp_path):
    (tmp_path / "ct2").mkdir()
    result = run("weights", "convert-whisper", str(tmp_path / "ct2"), str(tmp_path / "out"))
    assert result.returncode == 2
    assert "missing model.bin" in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ct2"]
