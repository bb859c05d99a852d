"""Promoted models in BentoML's model store (`synclip:<version>`), which of them is served, and rollback.

BentoML has no movable aliases, so the served tag is kept beside the store, in
$BENTOML_HOME/synclip-served.json: a stack of {"tag", "since"} entries, oldest first, the last one
served. `promote` pushes a tag, `rollback` pops the served one; the file is rewritten whole
(a temporary file, then a rename) under a lock, so a reader sees the old history or the new one.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

import bentoml
from bentoml.exceptions import BentoMLException, NotFound

from synclip.errors import UserError
from synclip.files import write_json

NAME = "synclip"
SERVED_FILE = "synclip-served.json"
DEFAULT_PACKAGE = Path("models/synclip")  # what `make demo` assembles, relative to the working directory
RESERVED = "model.yaml"  # BentoML's own file in every model folder


def home() -> Path:
    """The BentoML home this process uses: $BENTOML_HOME (default ~/bentoml) as BentoML read it on its
    first use of the store. BentoML caches it for the life of the process, so the history follows the
    models it names even if the variable changes later."""
    # BentoML's public API names no home; its container is what its own store and test plugin use.
    from bentoml._internal.configuration.containers import BentoMLContainer

    return Path(BentoMLContainer.bentoml_home.get())


def history_path() -> Path:
    return home() / SERVED_FILE


def params_hash(params: Path) -> str:
    """The first 12 hex digits of the params file's sha256 (`sha256sum params.yaml`), a model label."""
    return hashlib.sha256(params.read_bytes()).hexdigest()[:12]


def import_package(package: Path, labels: dict[str, str], metadata: dict) -> str:
    """Copy a packaged model folder (`synclip.inference.package.assemble`) into a new store model
    `synclip:<version>` with `labels` (strings: revision, params hash, score …) and `metadata` (any
    YAML: evaluation metrics); its tag. The folder's absolute path is recorded as metadata "source"."""
    # imported here: it brings torch, which listing, resolving and rolling back do without
    from synclip.inference.package import KIND, PIPELINE_FILE

    package = Path(package)
    config = package / PIPELINE_FILE
    if not config.is_file():
        raise UserError(f"{package}: not a packaged synclip model (no {PIPELINE_FILE})")
    try:
        kind = json.loads(config.read_text()).get("kind")
    except json.JSONDecodeError as error:
        raise UserError(f"{config}: not JSON ({error})") from None
    if kind != KIND:
        raise UserError(f"{config}: kind is {kind!r}, not {KIND!r}; not a packaged synclip model")
    if (package / RESERVED).exists():
        raise UserError(f"{package}: holds a {RESERVED}, the name BentoML's store gives its own file")
    # synclip reports no usage (serving/bentofile.yaml, the flows' `bentoml build`); saving a model
    # would otherwise post an event. BENTOML_DO_NOT_TRACK=false opts in.
    os.environ.setdefault("BENTOML_DO_NOT_TRACK", "true")
    with bentoml.models.create(
        NAME, labels=dict(labels), metadata={"source": str(package.resolve()), **metadata}
    ) as model:
        shutil.copytree(package, model.path, dirs_exist_ok=True, ignore=shutil.ignore_patterns(".*"))
    return str(model.tag)


def models() -> list[bentoml.Model]:
    """The store's synclip models, oldest first."""
    try:
        found = bentoml.models.list(NAME)
    except NotFound:  # no model of that name was ever saved
        return []
    return sorted(found, key=lambda model: model.creation_time)


def get(tag: str) -> bentoml.Model:
    """The store model `synclip:<version>` (a unique prefix of the version will do)."""
    name, _, version = tag.partition(":")
    if name != NAME or not version:
        raise UserError(f"{tag!r}: not a tag {NAME}:<version>")
    try:
        return bentoml.models.get(tag)
    except NotFound:
        raise UserError(f"{tag} is not a model in {_store_text()}") from None
    except BentoMLException as error:  # a version prefix that several versions start with
        raise UserError(f"{tag}: {error}") from None


def served() -> str | None:
    """The tag the service loads by default, None when none was promoted."""
    stack = _read_history()
    return stack[-1]["tag"] if stack else None


def history() -> list[dict[str, str]]:
    """The served stack, oldest first: [{"tag": "synclip:…", "since": ISO time}, …]; the last is served,
    `since` is when each became served (last)."""
    return _read_history()


def promote(tag: str) -> str:
    """Serve the store model `tag` from now on (the service loads it at its next start); the full tag."""
    full = str(get(tag).tag)
    with _locked():
        stack = _read_history()
        if not stack or stack[-1]["tag"] != full:
            stack.append({"tag": full, "since": _now()})
            _write_history(stack)
    return full


def rollback() -> str:
    """Serve again the tag served before the current one; that tag. The current one stays in the store."""
    with _locked():
        stack = _read_history()
        if len(stack) < 2:
            now = f"{stack[0]['tag']} is the only tag served so far" if stack else "no tag was served yet"
            raise UserError(f"nothing to roll back to: {now} ({history_path()})")
        previous, current = stack[-2]["tag"], stack[-1]["tag"]
        if not bentoml.models.list(previous):
            raise UserError(
                f"cannot roll back to {previous}, served before {current}: it was deleted from "
                f"{_store_text()}; `synclip model promote TAG` serves one of those instead"
            )
        _write_history([*stack[:-2], {"tag": previous, "since": _now()}])
    return previous


def resolve(spec: str | None) -> tuple[Path, str | None]:
    """The packaged model folder a service loads, and its store tag (None for a plain folder).

    `spec` (SYNCLIP_MODEL): `synclip:<version>` → that store model; `synclip` → the served tag; an
    existing folder → that folder (write ./synclip for a folder of that name); None → the served tag
    when one was promoted, else models/synclip under the working directory (what `make demo` writes).
    An empty spec counts as None (SYNCLIP_MODEL= )."""
    spec = spec or None
    if spec is not None and spec.startswith(f"{NAME}:"):
        model = get(spec)
        return Path(model.path), str(model.tag)
    if spec is None or spec == NAME:
        tag = served()
        if tag is None:
            if spec is None and DEFAULT_PACKAGE.is_dir():
                return DEFAULT_PACKAGE, None
            raise UserError(
                f"no model to serve: no {NAME} tag was promoted in {history_path()} "
                f"(`synclip model import PACKAGE`)"
                + ("" if spec else f" and {Path.cwd() / DEFAULT_PACKAGE} does not exist (`make demo`)")
            )
        try:
            model = get(tag)
        except UserError:
            raise UserError(
                f"the served tag {tag} is gone from {_store_text()}; "
                f"`synclip model rollback` or `synclip model promote TAG`"
            ) from None
        return Path(model.path), str(model.tag)
    if not Path(spec).is_dir():
        raise UserError(f"model {spec!r}: neither a folder nor a tag {NAME}[:<version>]")
    return Path(spec), None


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _store_text() -> str:
    tags = [str(model.tag) for model in models()]
    return f"BentoML's store {home() / 'models'} (its {NAME} tags: {', '.join(tags) or 'none'})"


def _read_history() -> list[dict[str, str]]:
    path = history_path()
    if not path.exists():
        return []
    try:
        stack = json.loads(path.read_text())["served"]
    except (json.JSONDecodeError, KeyError, TypeError) as error:
        raise UserError(f"{path}: not a synclip served-model history ({error!r})") from None
    return stack


def _write_history(stack: list[dict[str, str]]) -> None:
    write_json(history_path(), {"model": NAME, "served": stack}, sort_keys=False)


@contextmanager
def _locked() -> Iterator[None]:
    """Promotions and rollbacks one at a time (a flow and a person may both change the history)."""
    lock = home() / f".{SERVED_FILE}.lock"
    lock.parent.mkdir(parents=True, exist_ok=True)
    with lock.open("a") as file:
        fcntl.flock(file, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(file, fcntl.LOCK_UN)
