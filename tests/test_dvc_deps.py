"""dvc.yaml's deps cannot go stale: every module a stage's import closure reaches is covered by a dep."""

from __future__ import annotations

import copy
import re
from pathlib import Path

import grimp
import pytest
import yaml


def module_file(root: Path, module: str) -> Path:
    """The file of a module of synclip (under src/) or of the shells (stages.*), relative to `root`."""
    parts = module.split(".")
    base = Path("src") if parts[0] == "synclip" else Path()
    path = base.joinpath(*parts)
    return path / "__init__.py" if (root / path).is_dir() else path.with_suffix(".py")


def uncovered(pipeline: dict, graph: grimp.ImportGraph, root: Path) -> dict[str, list[str]]:
    """stage → the files of its import closure (and of their packages' __init__) that no dep covers.
    A stage that runs the `synclip` CLI has the CLI module's closure."""
    missing = {}
    for name, stage in pipeline["stages"].items():
        found = re.search(r"python -m (\S+)", stage["cmd"])
        module = found.group(1) if found else "synclip.cli"
        closure = graph.find_upstream_modules(module) | {module}
        closure |= {".".join(m.split(".")[:i]) for m in closure for i in range(1, m.count(".") + 1)}
        deps = [Path(d) for d in stage.get("deps", [])]
        files = sorted({module_file(root, m) for m in closure})
        left = [str(f) for f in files if not any(f == d or d in f.parents for d in deps)]
        if left:
            missing[name] = left
    return missing


@pytest.fixture(scope="module")
def graph(root) -> grimp.ImportGraph:
    with pytest.MonkeyPatch.context() as patch:
        patch.syspath_prepend(str(root))  # `stages` is a package of the repository root
        return grimp.build_graph("synclip", "stages", cache_dir=None)


@pytest.fixture(scope="module")
def pipeline(root) -> dict:
    return yaml.safe_load((root / "dvc.yaml").read_text())


def test_every_stage_lists_the_code_it_runs(pipeline, graph, root):
    assert uncovered(pipeline, graph, root) == {}


def test_a_dropped_dep_is_found(pipeline, graph, root):
    edited = copy.deepcopy(pipeline)
    edited["stages"]["train_unet_stage1"]["deps"].remove("src/synclip/nn")
    edited["stages"]["preprocess"]["deps"].remove("src/synclip/files.py")
    missing = uncovered(edited, graph, root)
    assert set(missing) == {"train_unet_stage1", "preprocess"}
    assert "src/synclip/nn/unet.py" in missing["train_unet_stage1"]
    assert missing["preprocess"] == ["src/synclip/files.py"]


def test_a_new_import_must_be_listed(pipeline, graph, root):
    """An import added anywhere in a stage's closure makes its deps incomplete until the module is listed."""
    edited = copy.deepcopy(graph)
    edited.add_import(
        importer="synclip.quality.expectations", imported="synclip.images", line_number=1, line_contents=""
    )
    assert uncovered(pipeline, edited, root) == {"validate": ["src/synclip/images.py"]}


def test_the_hdtf_pipeline_lists_the_code_it_runs(graph, root):
    """pipelines/hdtf/dvc.yaml runs from the repository root (wdir ../..); its `download` stage runs the
    CLI, whose closure is the whole library, so it lists only what the download needs and is checked
    against that: synclip.data.hdtf's closure."""
    pipeline = yaml.safe_load((root / "pipelines" / "hdtf" / "dvc.yaml").read_text())
    assert {stage["wdir"] for stage in pipeline["stages"].values()} == {"../.."}
    download = pipeline["stages"].pop("download")
    assert uncovered(pipeline, graph, root) == {}
    closure = graph.find_upstream_modules("synclip.data.hdtf") | {"synclip.data.hdtf"}
    closure |= {".".join(m.split(".")[:i]) for m in closure for i in range(1, m.count(".") + 1)}
    files = {module_file(root, m) for m in closure}
    deps = [Path(d) for d in download["deps"]]
    assert [str(f) for f in sorted(files) if not any(f == d or d in f.parents for d in deps)] == []
