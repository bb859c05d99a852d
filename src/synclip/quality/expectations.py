"""The data-quality gate on the preprocessing manifest: a Great Expectations (1.x) suite and its report."""

from __future__ import annotations

import html
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from synclip.config import DataQualityParams, Params, PreprocessParams
from synclip.constants import VIDEO_FPS
from synclip.errors import UserError

log = logging.getLogger(__name__)

REQUIRED = (
    "clip",
    "source",
    "segment",
    "start",
    "end",
    "fps",
    "frames",
    "resolution",
    "face_width_px",
    "face_width_min_px",
    "one_face_fraction",
    "eye_jitter_px",
    "mouth_jitter_px",
    "quality_piqe",
    "audio_peak_dbfs",
    "identity",
    "split",
)
SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class Outcome:
    success: bool
    results: list[dict]  # one per expectation: table, expectation, column, success, observed

    def failures(self) -> list[dict]:
        return [r for r in self.results if not r["success"]]

    def summary(self) -> str:
        failed = self.failures()
        if not failed:
            return f"all {len(self.results)} expectations met"
        lines = [f"{len(failed)} of {len(self.results)} expectations failed:"]
        lines += [
            f"  - {r['table']}: {r['expectation']}({r['column'] or ''}) observed {r['observed']}"
            for r in failed
        ]
        return "\n".join(lines)


def _suites(pre: PreprocessParams, gate: DataQualityParams):
    import great_expectations as gx

    e = gx.expectations
    clips = [e.ExpectTableRowCountToBeBetween(min_value=gate.min_clips)]
    clips += [e.ExpectColumnValuesToNotBeNull(column=c) for c in REQUIRED]
    clips += [
        e.ExpectColumnValuesToBeUnique(column="clip"),
        e.ExpectColumnValuesToBeInSet(column="fps", value_set=[VIDEO_FPS]),
        e.ExpectColumnValuesToBeInSet(column="resolution", value_set=[pre.resolution]),
        e.ExpectColumnValuesToBeBetween(
            column="frames",
            min_value=int(pre.min_segment_seconds * VIDEO_FPS),
            max_value=int(round(pre.max_segment_seconds * VIDEO_FPS)),
        ),
        e.ExpectColumnValuesToBeBetween(column="face_width_px", min_value=pre.min_face_px),
        e.ExpectColumnValuesToBeBetween(
            column="one_face_fraction", min_value=pre.min_one_face_fraction, max_value=1
        ),
        e.ExpectColumnValuesToBeBetween(column="quality_piqe", min_value=0, max_value=pre.max_piqe),
        # decoded AAC resampled to 16 kHz overshoots full scale a little; beyond +3 dB is real clipping
        e.ExpectColumnValuesToBeBetween(
            column="audio_peak_dbfs", min_value=pre.min_audio_dbfs, max_value=3.0
        ),
        e.ExpectColumnValuesToBeBetween(column="eye_jitter_px", min_value=0, max_value=gate.max_jitter_px),
        e.ExpectColumnValuesToBeBetween(column="mouth_jitter_px", min_value=0, max_value=gate.max_jitter_px),
        e.ExpectColumnValuesToBeInSet(column="split", value_set=list(SPLITS)),
        e.ExpectColumnDistinctValuesToContainSet(column="split", value_set=["train", "test"]),
    ]
    identities = [e.ExpectColumnValuesToBeInSet(column="splits", value_set=[1])]
    return {"clips": clips, "identities": identities}


def validate_manifest(manifest: pd.DataFrame, pre: PreprocessParams, gate: DataQualityParams) -> Outcome:
    """Run the suites: one over the clips, one over identities (no identity in two splits)."""
    import great_expectations as gx

    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = {"globally": False, "metric_calculations": False}
    source = context.data_sources.add_pandas("manifest")
    tables = {
        "clips": manifest,
        "identities": manifest.groupby("identity")["split"].nunique().rename("splits").reset_index(),
    }
    results: list[dict] = []
    for table, expectations in _suites(pre, gate).items():
        batch = source.add_dataframe_asset(table).add_batch_definition_whole_dataframe("all")
        suite = context.suites.add(gx.ExpectationSuite(name=f"synclip-{table}"))
        for expectation in expectations:
            suite.add_expectation(expectation)
        definition = context.validation_definitions.add(
            gx.ValidationDefinition(data=batch, suite=suite, name=table)
        )
        run = definition.run(batch_parameters={"dataframe": tables[table]}, result_format="SUMMARY")
        for result in run.results:
            config = result.expectation_config
            observed = result.result.get("observed_value")
            if observed is None and "unexpected_count" in result.result:
                observed = {
                    "unexpected": result.result["unexpected_count"],
                    "examples": [_plain(v) for v in result.result.get("partial_unexpected_list", [])[:5]],
                }
            results.append(
                {
                    "table": table,
                    "expectation": config.type,
                    "column": config.kwargs.get("column"),
                    "kwargs": {
                        k: _plain(v) for k, v in config.kwargs.items() if k not in ("column", "batch_id")
                    },
                    "success": bool(result.success),
                    "observed": _plain(observed),
                }
            )
    return Outcome(success=all(r["success"] for r in results), results=results)


def write_report(outcome: Outcome, out_dir: str | Path, title: str = "synclip data quality") -> None:
    """`validation.json` and a self-contained `index.html` (a table, no scripts) under `out_dir`."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    payload = {"success": outcome.success, "results": outcome.results}
    (out_dir / "validation.json").write_text(json.dumps(payload, indent=1, default=str))
    rows = "\n".join(
        "<tr class='{}'><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>".format(
            "ok" if r["success"] else "fail",
            "pass" if r["success"] else "FAIL",
            html.escape(r["table"]),
            html.escape(r["expectation"]),
            html.escape(str(r["column"] or "")),
            html.escape(json.dumps(r["kwargs"], default=str)),
            html.escape(json.dumps(r["observed"], default=str)),
        )
        for r in outcome.results
    )
    status = "all expectations met" if outcome.success else f"{len(outcome.failures())} expectation(s) failed"
    (out_dir / "index.html").write_text(
        f"""<!doctype html><html><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>body{{font-family:sans-serif;margin:2em}} table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:4px 8px;font-size:13px}} tr.fail{{background:#fdd}} tr.ok td:first-child{{color:#070}}</style>
</head><body><h1>{html.escape(title)}</h1><p><b>{status}</b> (Great Expectations suites over the
preprocessing manifest)</p><table><tr><th></th><th>table</th><th>expectation</th><th>column</th>
<th>arguments</th><th>observed</th></tr>
{rows}
</table></body></html>
"""
    )


def _plain(value):
    """JSON-friendly scalars (numpy types, NaN) for the report."""
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and value != value:
        return None
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def validate_stage(manifest: Path, out: Path, params: Params) -> None:
    """The `validate` stage: the gate on the preprocessing manifest, its report in `out`; a UserError
    (so the pipeline stops) when an expectation fails."""
    outcome = validate_manifest(pd.read_parquet(manifest), params.preprocess, params.data_quality)
    write_report(outcome, out)
    print(outcome.summary())
    if not outcome.success:
        raise UserError(f"data-quality gate failed; see {out / 'index.html'}")
