"""Promoted models in BentoML's model store: import with labels, which tag is served, rollback, the CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import bentoml
import pytest
from test_pipeline import tiny_unet, tiny_vae, tiny_whisper

from synclip import store
from synclip.errors import UserError
from synclip.inference.package import assemble, load_pipeline
from synclip.inference.pipeline import PipelineConfig

ROOT = Path(__file__).resolve().parents[1]
SYNCLIP = Path(sys.executable).with_name("synclip")


@contextmanager
def bentoml_home(folder: Path) -> Iterator[Path]:
    """BentoML's home in `folder`, for this process and the processes it starts.

    BentoML reads $BENTOML_HOME once, on its first use of the store, and caches the home and the store
    for the life of the process; setting the variable later changes nothing here. So the cached
    values are overridden too (as bentoml.testing's pytest plugin does) and restored afterwards."""
    from bentoml._internal.configuration.containers import BentoMLContainer
    from bentoml._internal.models import ModelStore

    (folder / "models").mkdir(parents=True, exist_ok=True)
    saved = os.environ.get("BENTOML_HOME")
    os.environ["BENTOML_HOME"] = str(folder)
    BentoMLContainer.bentoml_home.set(str(folder))
    BentoMLContainer.model_store_dir.set(str(folder / "models"))
    BentoMLContainer.model_store.set(ModelStore(folder / "models"))
    try:
        yield folder
    finally:
        for provider in (
            BentoMLContainer.bentoml_home,
            BentoMLContainer.model_store_dir,
            BentoMLContainer.model_store,
        ):
            provider.reset()
        if saved is None:
            os.environ.pop("BENTOML_HOME", None)
        else:
            os.environ["BENTOML_HOME"] = saved


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("BENTOML_DO_NOT_TRACK", "true")
    with bentoml_home(tmp_path / "bentoml") as folder:
        yield folder


@pytest.fixture(scope="module")
def packages(tmp_path_factory) -> tuple[Path, Path]:
    """Two tiny packaged models that differ in their UNet."""
    tmp = tmp_path_factory.mktemp("packages")
    config = PipelineConfig(resolution=64, num_frames=4, overlap=1, steps=2, guidance=1.5, seed=7)
    whisper = tiny_whisper(tmp / "whisper")
    return tuple(
        assemble(tmp / f"synclip{seed}", tiny_unet(seed=seed), tiny_vae(), whisper, config) for seed in (0, 1)
    )


def test_home_is_where_bentoml_keeps_its_models(home):
    assert store.home() == home
    assert store.history_path() == home / "synclip-served.json"
    assert store.models() == []
    assert store.served() is None


def test_import_refuses_a_folder_that_is_not_a_package(home, tmp_path):
    with pytest.raises(UserError, match=r"not a packaged synclip model \(no pipeline.json\)"):
        store.import_package(tmp_path, {}, {})
    (tmp_path / "pipeline.json").write_text(json.dumps({"kind": "something-else"}))
    with pytest.raises(UserError, match="kind is 'something-else'"):
        store.import_package(tmp_path, {}, {})
    assert store.models() == []


def test_import_promote_resolve_and_roll_back(home, packages, tmp_path, monkeypatch):
    first_package, second_package = packages
    monkeypatch.chdir(tmp_path)

    # nothing promoted and no models/synclip here: the error names both places
    with pytest.raises(UserError, match=r"(?s)no synclip tag was promoted.*models/synclip does not exist"):
        store.resolve(None)
    (tmp_path / "models" / "synclip").mkdir(parents=True)
    assert store.resolve(None) == store.resolve("") == (Path("models/synclip"), None)

    labels = {"revision": "0123abcd", "params": "feedbeef0001", "score": "0.2500"}
    first = store.import_package(first_package, labels, {"metrics": {"eval/metrics.json:lse_c": 1.5}})
    assert first.startswith("synclip:")
    model = bentoml.models.get(first)
    assert model.info.labels == labels
    assert model.info.metadata["metrics"] == {"eval/metrics.json:lse_c": 1.5}
    assert model.info.metadata["source"] == str(first_package.resolve())
    for file in first_package.rglob("*"):  # the package whole, byte for byte
        if file.is_file():
            assert Path(model.path, file.relative_to(first_package)).read_bytes() == file.read_bytes()
    assert store.resolve(None) == (Path("models/synclip"), None)  # imported is not served yet

    assert store.promote(first) == first
    assert store.served() == first
    folder, tag = store.resolve(None)
    assert (folder, tag) == (Path(model.path), first)
    load_pipeline(folder)  # the store's folder is a package the service can load
    with pytest.raises(UserError, match=f"nothing to roll back to: {first} is the only tag"):
        store.rollback()

    second = store.import_package(second_package, {"revision": "4567"}, {})
    version = second.split(":")[1]
    assert store.promote(f"synclip:{version[:10]}") == second  # a unique prefix names it
    assert store.promote(second) == second  # promoting the served tag again changes nothing
    assert [entry["tag"] for entry in store.history()] == [first, second]
    assert store.resolve(None)[1] == store.resolve("synclip")[1] == second
    assert store.resolve(first) == (Path(model.path), first)
    assert store.resolve(str(first_package)) == (first_package, None)  # a folder overrides the store
    with pytest.raises(UserError, match=rf"synclip:nope is not a model in .*{first}, {second}"):
        store.resolve("synclip:nope")
    with pytest.raises(UserError, match="neither a folder nor a tag"):
        store.resolve("models/nowhere")
    with pytest.raises(UserError, match="not a tag synclip:<version>"):
        store.promote("other:1234")

    assert store.rollback() == first
    assert store.served() == first
    assert store.resolve(None) == (Path(model.path), first)
    written = json.loads((home / "synclip-served.json").read_text())
    assert [entry["tag"] for entry in written["served"]] == [first]

    # a deleted tag is neither rolled back to nor served
    store.promote(second)
    bentoml.models.delete(first)
    with pytest.raises(
        UserError, match=rf"cannot roll back to {first}, served before {second}: it was deleted"
    ):
        store.rollback()
    assert store.served() == second
    bentoml.models.delete(second)
    with pytest.raises(UserError, match=f"the served tag {second} is gone"):
        store.resolve(None)


def synclip(*args: str, home: Path) -> subprocess.CompletedProcess:
    """The console script in a fresh process, which reads BENTOML_HOME itself."""
    env = {**os.environ, "BENTOML_HOME": str(home), "BENTOML_DO_NOT_TRACK": "true"}
    return subprocess.run([SYNCLIP, *args], cwd=ROOT, env=env, capture_output=True, text=True, check=False)


def test_the_cli_imports_lists_promotes_and_rolls_back(packages, tmp_path):
    home = tmp_path / "bentoml"
    first_package, second_package = packages
    done = synclip("model", "import", str(first_package), home=home)
    assert done.returncode == 0, done.stderr
    first = done.stdout.split()[0]
    assert done.stdout.strip() == f"{first} is served now; restart the service to load it"
    done = synclip("model", "import", str(second_package), "--label", "stage=test", home=home)
    assert done.returncode == 0, done.stderr
    second = done.stdout.split()[0]

    listed = synclip("model", "list", home=home)
    assert listed.returncode == 0, listed.stderr
    lines = listed.stdout.splitlines()
    assert lines[0] == f"{home / 'models'}: 2 synclip models"
    assert lines[1].startswith(f"* {second}  ")  # newest first, served
    assert lines[2].startswith(f"  {first}  ")
    assert f"params={store.params_hash(ROOT / 'params.yaml')}" in lines[1]
    assert "revision=" in lines[1]
    assert "stage=test" in lines[1]

    done = synclip("model", "rollback", home=home)
    assert (done.returncode, done.stdout.strip()) == (
        0,
        f"{first} is served now; restart the service to load it",
    )
    assert json.loads((home / "synclip-served.json").read_text())["served"][-1]["tag"] == first

    # a user's mistake is one line on stderr and exit code 2
    for args, message in [
        (("model", "rollback"), f"error: nothing to roll back to: {first} is the only tag served so far"),
        (("model", "promote", "synclip:nope"), "error: synclip:nope is not a model in BentoML's store"),
        (("model", "import", str(first_package), "--label", "oops"), "error: --label takes KEY=VALUE"),
    ]:
        done = synclip(*args, home=home)
        assert done.returncode == 2, (args, done.stdout, done.stderr)
        assert done.stderr.startswith(message), (args, done.stderr)
        assert "Traceback" not in done.stderr
