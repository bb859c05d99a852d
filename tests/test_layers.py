"""The import contracts (pyproject.toml's [tool.importlinter]): they hold, and they catch a violation."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")
CONTRACTS = 5


def lint_imports(root: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(root), str(root / "src")])}
    return subprocess.run(
        [LINT_IMPORTS, "--no-cache", "--no-logo", "--config", str(root / "pyproject.toml")],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )


def test_the_import_contracts_hold(root):
    result = lint_imports(root)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"Contracts: {CONTRACTS} kept, 0 broken." in result.stdout


@pytest.fixture(scope="module")
def broken(root, tmp_path_factory) -> str:
    """lint-imports on a copy of the tree with one forbidden import per contract."""
    copy = tmp_path_factory.mktemp("tree")
    for name in ("src", "stages", "flows", "serving", "pyproject.toml"):
        source = root / name
        ignore = shutil.ignore_patterns("__pycache__", "*.egg-info")
        (
            shutil.copytree(source, copy / name, ignore=ignore)
            if source.is_dir()
            else shutil.copy(source, copy / name)
        )
    edits = {
        "src/synclip/nn/unet.py": "from synclip.train import trainer",  # a network imports training code
        "src/synclip/face/align.py": "from synclip.face import paste",  # paste → track → align: a cycle
        "src/synclip/data/manifest.py": "import stages.preprocess",  # the library imports a shell
        "flows/monitor.py": "from serving import service",  # one shell imports another
    }
    for path, line in edits.items():
        with (copy / path).open("a") as file:
            file.write(f"\n{line}  # noqa\n")
    result = lint_imports(copy)
    assert result.returncode != 0
    return result.stdout


@pytest.mark.parametrize(
    "contract",
    [
        "synclip is layered: a module imports only the layers below its own",
        "no import cycles between the modules of a package",
        "the library never imports its shells",
        "shells never import each other",
        "networks are pure modules: no I/O, data or training code",
    ],
)
def test_a_forbidden_import_breaks_its_contract(broken, contract):
    assert f"{contract} BROKEN" in broken, broken
