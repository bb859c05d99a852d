"""Prefect flow `retrain`: the DVC pipeline behind its data-quality gate, then promotion to the service.

1. the gate: `dvc repro validate` (preprocessing and the Great Expectations suites); a failed
   expectation fails the flow before any training starts;
2. the two independent training arms side by side (SyncNet -> sync filter, VAE -> VideoMAE), as
   scripts/demo.sh runs them;
3. `dvc repro` for the rest (the UNet stages, assemble, evaluate, the drift reference);
4. promotion: the promoted model (its copy in models/promoted/model) is re-scored by the `evaluate`
   stage's own command on the candidate's clips, and the candidate replaces it only when params.yaml's
   `promote` rule holds on the paired, clip-by-clip difference (`synclip.eval.compare`); it is then
   copied to models/promoted and into BentoML's model store (`synclip.store`), built into a bento
   (`bentoml build`), recorded, and its store tag becomes the served one.

DVC decides what to rerun, so a flow run on unchanged data and params trains nothing. With a DVC
`remote` (.dvc/config's `storage`), the run starts from what that remote holds (`dvc pull` before
the gate) and leaves its outputs there (`dvc push` after the repro), so a worker on another machine
trains only what changed since the last run anywhere (docs/scale-out.md).
Run it once with `python flows/retrain.py`, or deploy it with flows/prefect.yaml.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.futures import wait

from synclip import ops, store
from synclip.config import load_params
from synclip.errors import UserError
from synclip.eval.compare import check_rule

ARMS = [["train_syncnet", "sync_filter"], ["train_vae", "pretrain_videomae"]]


@task(task_run_name="dvc repro {name}")
def repro(repo: Path, name: str, targets: list[str] | None, single_item: bool, env: dict[str, str]) -> str:
    logger = get_run_logger()
    return ops.repro(repo, targets, single_item, env, echo=logger.info)


@task(task_run_name="dvc pull --remote {remote}")
def pull(repo: Path, remote: str) -> str:
    return ops.pull(repo, remote, echo=get_run_logger().info)


@task(task_run_name="dvc push --remote {remote}")
def push(repo: Path, remote: str) -> str:
    return ops.push(repo, remote, echo=get_run_logger().info)


@task
def read_metrics(repo: Path) -> dict:
    return ops.metrics(repo)


@task
def rescore(repo: Path, command: list[str], keep: Path) -> ops.Evaluation:
    """The promoted model's copy scored by the evaluate stage's own command: the candidate's clips,
    seeds and judge, so the two compare clip by clip."""
    logger = get_run_logger()
    if not (keep / "model").is_dir():
        raise UserError(
            f"{keep}/model: the promoted model's copy is missing, so the candidate cannot be compared "
            f"with it; move {keep}.json away to promote afresh"
        )
    out = keep / "rescored"
    rescoring = ops.with_options(command, model=str(keep / "model"), out=str(out))
    ops.run_command(rescoring, repo, "re-scoring the promoted model", echo=logger.info)
    return ops.Evaluation.read(out)


@task
def build_bento(repo: Path, bentofile: str, labels: dict[str, str]) -> str:
    """`bentoml build` of the repository with the promoted model; the bento's tag."""
    command = ["bentoml", "build", "-f", bentofile, ".", "-o", "tag"]
    for key, value in labels.items():
        command += ["--label", f"{key}={value}"]
    output = ops.run_command(command, repo, "bentoml build", env={"BENTOML_DO_NOT_TRACK": "true"})
    found = re.search(r"__tag__:(\S+)", output)
    if not found:
        raise UserError(f"bentoml build printed no tag:\n{output[-2000:]}")
    return found.group(1)


@task
def store_model(package: Path, labels: dict[str, str], metrics: dict) -> str:
    """The promoted package copied into BentoML's model store (`synclip.store`); its tag."""
    return store.import_package(package, labels, {"metrics": metrics})


@flow(name="retrain", log_prints=True)
def retrain(
    repo: str = ".",
    gate: list[str] = ["validate"],  # noqa: B006 (Prefect parameters are copied per run)
    arms: list[list[str]] = ARMS,
    threads_per_arm: int | None = 1,
    bentofile: str | None = "serving/bentofile.yaml",
    record: str = "models/promoted.json",
    evaluate_stage: str = "evaluate",
    remote: str | None = None,
) -> dict:
    """Rebuild what changed, evaluate, and promote the model when it clearly beats the promoted one.

    `remote`: the DVC remote to pull from first and push to after the repro (None: this machine only).
    """
    logger = get_run_logger()
    root = Path(repo).resolve()
    rule = load_params(root / "params.yaml").promote
    check_rule(rule)  # a rule that cannot be applied fails before hours of training
    command = ops.stage_command(root, evaluate_stage)
    package, report = root / ops.option(command, "model"), root / ops.option(command, "out")
    if remote is not None:
        pull(root, remote)
    repro(root, "gate: " + " ".join(gate), gate, False, {})
    env = {} if threads_per_arm is None else {"OMP_NUM_THREADS": str(threads_per_arm)}
    futures = [repro.submit(root, " ".join(arm), arm, True, env) for arm in arms]
    wait(futures)
    for future in futures:
        future.result()  # the first failed arm fails the flow, with its error
    repro(root, "(the rest)", None, False, {})
    if remote is not None:
        # now, not after the promotion: it writes nothing DVC tracks, and a failed bentoml build
        # should not keep the trained outputs from the other workers
        push(root, remote)
    values = read_metrics(root)
    candidate = ops.Evaluation.read(report)
    record_path = root / record
    keep = record_path.with_suffix("")  # models/promoted.json → models/promoted/{model,eval}
    previous = ops.read_record(record_path)
    # a candidate that fails the required metrics is not worth an evaluation of the promoted model
    worth = previous is not None and not ops.failed_requirements(values, rule)
    promoted = rescore(root, command, keep) if worth else None
    decision = ops.promotion(values, rule, candidate, promoted, previous is not None)
    logger.info("promotion: %s", decision.reason)
    outcome = {"promoted": decision.promote, "reason": decision.reason, "score": decision.score}
    if decision.promote:
        ops.keep_promoted(package, report, keep)
        revision = ops.git_revision(root)
        labels = {"score": f"{decision.score:.4f}", "metric": rule.score, "revision": revision[:12]}
        numbers = {name: values[name] for name in sorted(values) if not isinstance(values[name], str)}
        params = store.params_hash(root / "params.yaml")
        tag = store_model(keep / "model", {**labels, "revision": revision, "params": params}, numbers)
        bento = build_bento(root, bentofile, labels) if bentofile else None
        ops.write_record(
            record_path,
            {
                "score": decision.score,
                "metric": rule.score,
                "package": str((keep / "model").relative_to(root)),
                "model_tag": tag,
                "bento": bento,
                "revision": revision,
                "time": datetime.now(UTC).isoformat(timespec="seconds"),
                "metrics": numbers,
            },
        )
        store.promote(tag)  # last: the service switches only once the rest succeeded
        outcome |= {"model_tag": tag, "bento": bento}
    create_markdown_artifact(
        key="retrain-outcome",
        markdown=_table(decision, rule.score, values, rule.required),
        description="the evaluated model and the promotion decision",
    )
    return outcome


def _table(decision: ops.Decision, score: str, values: dict, required: tuple[str, ...]) -> str:
    previous = "none" if decision.previous is None else f"{decision.previous:.4g} on the same clips"
    verdict = "promoted" if decision.promote else "not promoted"
    lines = [f"**{verdict}**: {decision.reason} (the promoted model: {previous})", ""]
    if decision.comparison is not None:
        lines += [
            "Candidate against the promoted model, clip by clip:",
            "",
            decision.comparison.markdown(),
            "",
        ]
    lines += [
        "| candidate's metric | value |",
        "|---|---|",
        f"| {score} (mean over clips) | {decision.score:.4g} |",
        *(f"| {name} | {ops.metric(values, name)} |" for name in required),
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    retrain()
