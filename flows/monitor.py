"""Prefect flow `drift-check`: an Evidently report on what the service was asked against the training data.

The service appends each lip-synced request's input features to its request log
(SYNCLIP_REQUEST_LOG); the `drift_reference` stage describes the training sources the same way.
The flow writes the report (index.html, drift.json) and, with `fail_on_drift`, fails when the data
set drifted, so a Prefect automation can alert on it.
Run it once with `python flows/monitor.py`, or deploy it with flows/prefect.yaml.
"""

from __future__ import annotations

from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact

from synclip.config import load_params
from synclip.errors import UserError
from synclip.quality.drift import DriftSummary, drift_report, read_features


class DriftDetectedError(UserError):
    """The inputs drifted away from the training data."""


@task
def report(reference: Path, current: Path, out: Path, drift_share: float) -> DriftSummary:
    return drift_report(read_features(reference), read_features(current), out, drift_share)


@flow(name="drift-check", log_prints=True)
def drift_check(
    repo: str = ".",
    current: str = "reports/serving/requests.jsonl",
    reference: str = "reports/drift/reference.parquet",
    out: str = "reports/drift/current",
    fail_on_drift: bool = False,
) -> dict:
    """Compare the service's inputs with the training sources; the summary of the report."""
    logger = get_run_logger()
    root = Path(repo).resolve()
    share = load_params(root / "params.yaml").drift.drift_share
    summary = report(root / reference, root / current, root / out, share)
    logger.info(summary.text())
    rows = [
        f"| {name} | {column['method']} | {column['score']:.4g} | {'**drifted**' if column['drifted'] else ''} |"
        for name, column in summary.columns.items()
        if column["score"] is not None
    ]
    create_markdown_artifact(
        key="input-drift",
        markdown="\n".join([summary.text(), "", "| feature | test | score | |", "|---|---|---|---|", *rows]),
        description=f"Evidently report: {root / out / 'index.html'}",
    )
    if summary.dataset_drift:
        logger.warning(
            "the service's inputs drifted from the training data; see %s", root / out / "index.html"
        )
        if fail_on_drift:
            raise DriftDetectedError(summary.text())
    return summary.__dict__


if __name__ == "__main__":
    drift_check()
