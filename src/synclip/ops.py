"""What the Prefect flows do, without Prefect: run DVC stages, read their metrics, decide on promotion.
Every path stays in dvc.yaml (a stage is named, never its files); the flows in flows/ wrap these as tasks.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from synclip.errors import UserError
from synclip.files import write_json

log = logging.getLogger(__name__)

TAIL_LINES = 30


class CommandError(UserError):
    """A pipeline command exited non-zero; the message ends with the last lines it printed."""


def dvc_command() -> list[str]:
    """DVC from the interpreter's own environment (the project's venv), not whatever PATH finds first."""
    return [sys.executable, "-m", "dvc"]


def run_command(
    command: list[str],
    cwd: Path,
    what: str,
    env: dict[str, str] | None = None,
    echo: Callable[[str], None] | None = None,
) -> str:
    """Run `command` in `cwd`, passing each output line to `echo` (default: the log); its output.

    The venv's bin directory goes first on PATH, so the `python` a dvc.yaml command names is this one.
    """
    echo = echo or log.info
    environment = {**os.environ, **(env or {})}
    environment["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), environment.get("PATH", "")])
    environment.setdefault("DVC_NO_ANALYTICS", "1")
    lines: list[str] = []
    with subprocess.Popen(
        command, cwd=cwd, env=environment, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    ) as process:
        assert process.stdout is not None
        for line in process.stdout:
            line = line.rstrip("\n")
            lines.append(line)
            echo(line)
    if process.returncode != 0:
        raise CommandError(
            f"{what} failed (exit code {process.returncode}); its last lines:\n"
            + "\n".join(lines[-TAIL_LINES:])
        )
    return "\n".join(lines)


def repro(
    repo: Path,
    targets: list[str] | None = None,
    single_item: bool = False,
    env: dict[str, str] | None = None,
    echo: Callable[[str], None] | None = None,
) -> str:
    """`dvc repro [--single-item] TARGETS` in `repo` (all stages without targets); its output."""
    command = [*dvc_command(), "--wait-for-lock", "repro", *(["--single-item"] if single_item else [])]
    what = f"dvc repro {' '.join(targets)}" if targets else "dvc repro"
    return run_command([*command, *(targets or [])], repo, what, env, echo)


def metrics(repo: Path) -> dict[str, float | bool | str]:
    """Every metric `dvc metrics show` reads, flattened to 'file:dotted.key' -> value."""
    output = run_command(
        [*dvc_command(), "metrics", "show", "--json"], repo, "dvc metrics show", echo=log.debug
    )
    try:
        shown = json.loads(output[output.index("{") :])
    except ValueError:
        raise UserError(f"dvc metrics show printed no JSON:\n{output[-2000:]}") from None
    flat: dict[str, float | bool | str] = {}
    for revision in shown.values():
        for file, content in revision.get("data", {}).items():
            _flatten(content.get("data", {}), file + ":", flat)
    return flat


def _flatten(tree: dict, prefix: str, into: dict) -> None:
    for key, value in tree.items():
        if isinstance(value, dict):
            _flatten(value, f"{prefix}{key}.", into)
        else:
            into[prefix + key] = value


def metric(values: dict, name: str):
    """One metric by 'file:key' or, when only one file has it, by 'key'; UserError when absent."""
    if name in values:
        return values[name]
    matches = [key for key in values if key.split(":", 1)[-1] == name]
    if len(matches) != 1:
        found = "no metrics file has it" if not matches else f"it is in several files: {', '.join(matches)}"
        raise UserError(f"metric {name!r}: {found}")
    return values[matches[0]]


@dataclass(frozen=True)
class Decision:
    promote: bool
    reason: str
    score: float
    previous: float | None


def promotion(
    values: dict, score_metric: str, required: list[str], previous: dict | None, min_gain: float = 0.0
) -> Decision:
    """Promote a candidate whose required metrics are true and whose score beats the promoted one's
    by more than `min_gain` (an equal score is no reason to replace a model).

    `previous` is the promoted model's record (None when nothing was promoted yet).
    """
    score = float(metric(values, score_metric))
    failed = [name for name in required if metric(values, name) is not True]
    old = None if previous is None else float(previous["score"])
    if failed:
        return Decision(False, f"required metrics not met: {', '.join(failed)}", score, old)
    if old is not None and score <= old + min_gain:
        return Decision(False, f"{score_metric} {score:.4g} does not beat the promoted {old:.4g}", score, old)
    gain = "first promotion" if old is None else f"{score_metric} {score:.4g} beats {old:.4g}"
    return Decision(True, gain, score, old)


def read_record(path: Path) -> dict | None:
    """The promoted model's record, or None when there is none yet."""
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise UserError(f"{path}: not a promotion record ({error})") from None


def write_record(path: Path, record: dict) -> None:
    """Write the record whole or not at all (a temporary file, then a rename)."""
    write_json(path, record, sort_keys=False)


def git_revision(repo: Path) -> str:
    """The repository's HEAD commit, with '+dirty' when tracked files have changed (or 'unknown')."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True, check=True
        )
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=repo,
            capture_output=True,
            text=True,
            check=True,
        )
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
