"""What the Prefect flows do, without Prefect: run DVC stages, move their outputs to and from a DVC
remote, read their metrics, decide on promotion. Every path stays in dvc.yaml (a stage is named, never
its files); the flows in flows/ wrap these as tasks.
"""

from __future__ import annotations

import json
import logging
import os
import shlex
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from synclip.config import PromoteParams
from synclip.errors import UserError
from synclip.eval.compare import PAIRED, Comparison, check_rule, compare
from synclip.files import staged_folder, write_json

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


def pull(repo: Path, remote: str, echo: Callable[[str], None] | None = None) -> str:
    """`dvc pull --remote REMOTE --allow-missing` in `repo`: the outputs dvc.lock and the .dvc files
    record, so that `dvc repro` then reruns only what changed since; its output.

    Outputs the remote lacks (stages never run or never pushed) are left for `dvc repro` to build.
    An output changed in the workspace but not recorded (a killed run's checkpoint) is not
    overwritten: DVC fails, and so does this (CommandError).
    """
    command = [*dvc_command(), "pull", "--remote", _remote(remote), "--allow-missing"]
    return run_command(command, repo, f"dvc pull --remote {remote}", echo=echo)


def push(repo: Path, remote: str, echo: Callable[[str], None] | None = None) -> str:
    """`dvc push --remote REMOTE` in `repo`: every cached output dvc.lock and the .dvc files record
    (what the remote holds already is skipped); its output."""
    command = [*dvc_command(), "push", "--remote", _remote(remote)]
    return run_command(command, repo, f"dvc push --remote {remote}", echo=echo)


def _remote(name: str) -> str:
    if not name.strip():
        raise ValueError(
            f"a DVC remote is named by a non-empty name (one of `dvc remote list`), got {name!r}"
        )
    return name


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
    score: float  # the candidate's score, mean over its clips
    previous: float | None  # the promoted model's, on the same clips (None: nothing promoted yet)
    comparison: Comparison | None = None  # the paired table (None: first promotion, or required failed)


def promotion(
    values: dict,
    rule: PromoteParams,
    candidate: Evaluation,
    promoted: Evaluation | None,
    has_promoted: bool = False,
) -> Decision:
    """Promote a candidate whose required metrics are true and which, scored on the same clips as the
    promoted model, beats it clearly without a guard getting clearly worse (`synclip.eval.compare`).

    `values` are the candidate's flattened metrics (`metrics`); `promoted` is the promoted model's
    evaluation on the candidate's clips, None when nothing was promoted yet (`has_promoted` False) or
    when it was not scored because the candidate fails a required metric.
    """
    check_rule(rule)
    score = float(np.nanmean(PAIRED[rule.score].per_clip(candidate.clips)))
    failed = failed_requirements(values, rule)
    if failed:
        return Decision(False, f"required metrics not met: {', '.join(failed)}", score, None)
    if promoted is None:
        if has_promoted:
            raise ValueError(
                "the promoted model's evaluation is needed for a candidate that passes the requirements"
            )
        return Decision(True, "first promotion", score, None)
    comparison = compare(candidate.clips, promoted.clips, rule, candidate.photo, promoted.photo)
    return Decision(comparison.promote, comparison.reason, score, comparison.rows[0].promoted, comparison)


def failed_requirements(values: dict, rule: PromoteParams) -> list[str]:
    """The rule's required metrics that are not true in the candidate's metrics."""
    return [name for name in rule.required if metric(values, name) is not True]


@dataclass(frozen=True)
class Evaluation:
    """An `evaluate` report folder: its per-clip table and the photo check's scores (None without one)."""

    folder: Path
    clips: pd.DataFrame
    photo: dict | None

    @classmethod
    def read(cls, folder: Path) -> Evaluation:
        table, summary = folder / "clips.csv", folder / "metrics.json"
        if not table.is_file() or not summary.is_file():
            raise UserError(f"{folder}: not an evaluation report (needs clips.csv and metrics.json)")
        return cls(folder, pd.read_csv(table), json.loads(summary.read_text()).get("photo"))


def stage_command(repo: Path, name: str) -> list[str]:
    """The command of dvc.yaml's stage `name`, split into words."""
    stages = yaml.safe_load((repo / "dvc.yaml").read_text()).get("stages", {})
    if name not in stages or "cmd" not in stages[name]:
        raise UserError(f"{repo / 'dvc.yaml'}: no stage {name!r} with a cmd")
    cmd = stages[name]["cmd"]
    return shlex.split(" ".join(cmd) if isinstance(cmd, list) else cmd)


def option(command: list[str], name: str) -> str:
    """The value of `--name` in a command."""
    if f"--{name}" not in command[:-1]:
        raise UserError(f"{' '.join(command)}: has no --{name} VALUE")
    return command[command.index(f"--{name}") + 1]


def with_options(command: list[str], **values: str) -> list[str]:
    """`command` with the value of each `--name` replaced."""
    out = list(command)
    for name, value in values.items():
        option(out, name)
        out[out.index(f"--{name}") + 1] = value
    return out


def keep_promoted(package: Path, report: Path, keep: Path) -> None:
    """Copy the promoted package and its evaluation to `keep`/model and `keep`/eval, swapped in whole:
    the next candidate is compared with this copy, whatever `dvc repro` later writes over `package`."""
    with staged_folder(keep) as tmp:
        shutil.copytree(package, tmp / "model")
        shutil.copytree(report, tmp / "eval")


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
