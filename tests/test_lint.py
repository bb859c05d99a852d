"""The code base stays ruff-clean (lint and format), so CI enforces what `make lint` checks."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

RUFF = Path(sys.executable).with_name("ruff")


def test_ruff_lint_is_clean(root):
    result = subprocess.run(
        [RUFF, "check", "--no-cache", "."], cwd=root, capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_ruff_format_is_clean(root):
    result = subprocess.run(
        [RUFF, "format", "--check", "--no-cache", "."], cwd=root, capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
