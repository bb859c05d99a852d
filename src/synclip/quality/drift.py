"""Drift between the data synclip was trained on and what it is asked to lip-sync (Evidently 0.7)."""

from __future__ import annotations

import json
import logging
import math
import warnings
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import cv2
import numpy as np
import pandas as pd

from synclip.config import Params
from synclip.constants import AUDIO_SAMPLE_RATE
from synclip.errors import UserError
from synclip.face.landmarks import FaceLandmarker
from synclip.files import write_json
from synclip.log import track
from synclip.media.decode import iter_frames, read_audio
from synclip.media.probe import MediaError, probe, require_video
from synclip.pretrained.store import require

log = logging.getLogger(__name__)

# Numbers from a small set (a camera's frame rate, a recorder's sample rate) drift as categories.
CATEGORICAL = ("fps", "audio_sample_rate", "audio_channels")
NUMERICAL = (
    "width",
    "height",
    "video_seconds",
    "luma_mean",
    "luma_std",
    "sharpness",
    "face_found_fraction",
    "several_faces_fraction",
    "face_width_fraction",
    "face_luma",
    "audio_seconds",
    "audio_rms_dbfs",
    "audio_peak_dbfs",
    "speech_fraction",
    "spectral_centroid_hz",
    "audio_to_video",
)
FEATURES = NUMERICAL + CATEGORICAL
SAMPLED_FRAMES = 8
SPEECH_WINDOW = 320  # 20 ms at 16 kHz
SILENCE_DBFS = -120.0


def input_features(video: Path, audio: Path, landmarker: Path, frames: int = SAMPLED_FRAMES) -> dict:
    """The drift features of one input pair (MediaError for a file that cannot be read).

    They describe one (video, speech) pair by numbers a drift test can compare: the video's geometry
    and frame rate, light, contrast and sharpness on a few sampled frames, the face's size and how
    often one face is found, and the speech's level, activity and brightness. The same function
    describes the training sources (the `drift_reference` stage) and every request the service runs,
    so a drift report compares like with like.
    """
    stream = require_video(probe(video))
    audio_info = probe(audio).audio
    if audio_info is None:
        raise MediaError(f"{audio}: no audio stream")
    width, height = stream.display_size
    seconds = float(stream.duration)
    features = {
        "width": width,
        "height": height,
        "fps": f"{float(stream.fps):.3f}",
        "video_seconds": seconds,
        **_frame_features(video, seconds, stream.fps, landmarker, frames),
        "audio_sample_rate": str(audio_info.sample_rate),
        "audio_channels": str(audio_info.channels),
        **_speech_features(read_audio(audio)),
    }
    features["audio_to_video"] = features["audio_seconds"] / max(seconds, 1e-6)
    return features


def _frame_features(video: Path, seconds: float, fps: Fraction, landmarker: Path, frames: int) -> dict:
    """Light, contrast, sharpness and the face, on `frames` frames spread over the video."""
    rate = min(Fraction(fps), Fraction(frames) / Fraction(max(seconds, 1e-3)).limit_denominator(1000))
    luma, contrast, sharpness, widths, face_luma = [], [], [], [], []
    found = several = sampled = 0
    with FaceLandmarker(landmarker, max_faces=3, video=False) as tracker:
        for frame in iter_frames(video, fps=rate):
            if sampled == frames:
                break
            sampled += 1
            gray = cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY)
            luma.append(gray.mean())
            contrast.append(gray.std())
            sharpness.append(cv2.Laplacian(gray, cv2.CV_64F).var())
            faces = tracker.detect(frame)
            if not faces:
                continue
            found += 1
            several += len(faces) > 1
            x0, y0, x1, y1 = faces[0].box
            widths.append((x1 - x0) / frame.shape[1])
            box = gray[max(int(y0), 0) : max(int(y1), 1), max(int(x0), 0) : max(int(x1), 1)]
            face_luma.append(box.mean() if box.size else np.nan)
    if not sampled:
        raise MediaError(f"{video}: no frame could be decoded")
    return {
        "luma_mean": float(np.mean(luma)),
        "luma_std": float(np.mean(contrast)),
        "sharpness": float(np.median(sharpness)),
        "face_found_fraction": found / sampled,
        "several_faces_fraction": several / sampled,
        # NaN when no sampled frame shows a face: the drift test sees a missing value, not a zero
        "face_width_fraction": float(np.median(widths)) if widths else math.nan,
        "face_luma": float(np.nanmean(face_luma)) if face_luma else math.nan,
    }


def _speech_features(samples: np.ndarray) -> dict:
    """Level, peak, share of 20 ms windows with speech, and the speech's median spectral centroid."""
    seconds = len(samples) / AUDIO_SAMPLE_RATE
    windows = samples[: len(samples) // SPEECH_WINDOW * SPEECH_WINDOW].reshape(-1, SPEECH_WINDOW)
    if not len(windows):
        return {
            "audio_seconds": seconds,
            "audio_rms_dbfs": SILENCE_DBFS,
            "audio_peak_dbfs": SILENCE_DBFS,
            "speech_fraction": 0.0,
            "spectral_centroid_hz": math.nan,
        }
    rms = np.sqrt(np.mean(windows.astype(np.float64) ** 2, axis=1))
    level = 20 * np.log10(np.maximum(rms, 1e-6))
    # speech: within 30 dB of the loud windows (their 95th percentile), and above the floor of silence
    active = (level > np.percentile(level, 95) - 30) & (level > -60)
    centroid = math.nan
    if active.any():
        spectrum = np.abs(np.fft.rfft(windows[active] * np.hanning(SPEECH_WINDOW), axis=1))
        bins = np.fft.rfftfreq(SPEECH_WINDOW, 1 / AUDIO_SAMPLE_RATE)
        centroid = float(np.median((spectrum * bins).sum(1) / np.maximum(spectrum.sum(1), 1e-9)))
    return {
        "audio_seconds": seconds,
        "audio_rms_dbfs": float(20 * np.log10(max(float(np.sqrt(np.mean(samples**2))), 1e-6))),
        "audio_peak_dbfs": float(20 * np.log10(max(float(np.abs(samples).max()), 1e-6))),
        "speech_fraction": float(active.mean()),
        "spectral_centroid_hz": centroid,
    }


def source_features(
    raw: Path, sources: list[str], landmarker: Path, frames: int = SAMPLED_FRAMES
) -> pd.DataFrame:
    """The features of raw sources (a video with its own speech each), one row per source."""
    rows = []
    for source in track(sources, "drift features", unit="videos"):
        path = raw / source
        rows.append({"source": source, **input_features(path, path, landmarker, frames)})
    return pd.DataFrame(rows, columns=["source", *FEATURES])


# --- the report --------------------------------------------------------------------------------


@dataclass(frozen=True)
class DriftSummary:
    reference_rows: int
    current_rows: int
    drifted: list[str]  # the columns whose test says they drifted
    share: float  # drifted columns / compared columns
    dataset_drift: bool  # share >= drift_share
    columns: dict  # column -> {"method", "score", "threshold", "drifted"}

    def text(self) -> str:
        head = (
            f"drift: {len(self.drifted)} of {len(self.columns)} features drifted ({self.share:.0%}); "
            f"reference {self.reference_rows} rows, current {self.current_rows}"
        )
        return head + (f": {', '.join(self.drifted)}" if self.drifted else "")


def read_features(path: Path) -> pd.DataFrame:
    """A feature table from a .parquet file or a .jsonl log (the service's), checked for its columns."""
    if not path.exists():
        raise UserError(f"{path}: no such file")
    if path.suffix == ".jsonl":
        lines = [line for line in path.read_text().splitlines() if line.strip()]
        try:
            table = pd.DataFrame([json.loads(line)["features"] for line in lines])
        except (json.JSONDecodeError, KeyError, TypeError) as error:
            raise UserError(f"{path}: not a synclip request log ({error})") from None
    else:
        table = pd.read_parquet(path)
    missing = [c for c in FEATURES if c not in table.columns]
    if len(table) and missing:
        raise UserError(f"{path}: missing feature columns {', '.join(missing)}")
    return table


def drift_report(
    reference: pd.DataFrame,
    current: pd.DataFrame,
    out_dir: Path,
    drift_share: float = 0.2,
    title: str = "synclip input drift",
) -> DriftSummary:
    """Evidently's DataDriftPreset over the features: `index.html` and `drift.json` under `out_dir`.

    The data set drifted when at least `drift_share` of the features did.
    """
    from evidently import DataDefinition, Dataset, Report
    from evidently.presets import DataDriftPreset

    for name, table in (("reference", reference), ("current", current)):
        if len(table) < 2:
            raise UserError(f"the {name} data has {len(table)} rows; a drift test needs at least 2")
    definition = DataDefinition(numerical_columns=list(NUMERICAL), categorical_columns=list(CATEGORICAL))

    def dataset(table: pd.DataFrame) -> Dataset:
        table = table[list(FEATURES)].copy()
        table[list(NUMERICAL)] = table[list(NUMERICAL)].astype(float)
        table[list(CATEGORICAL)] = table[list(CATEGORICAL)].astype(str)
        return Dataset.from_pandas(table, data_definition=definition)

    with warnings.catch_warnings():  # a feature constant in both tables makes scipy divide by zero
        warnings.simplefilter("ignore", RuntimeWarning)
        snapshot = Report([DataDriftPreset(drift_share=drift_share)]).run(
            current_data=dataset(current), reference_data=dataset(reference), name=title
        )
    results = snapshot.dict()["metrics"]
    columns = _column_results(results)
    counted = next(m for m in results if _kind(m) == "DriftedColumnsCount")  # the report's own verdict
    summary = DriftSummary(
        reference_rows=len(reference),
        current_rows=len(current),
        drifted=[name for name, column in columns.items() if column["drifted"]],
        share=float(counted["value"]["share"]),
        dataset_drift=counted["value"]["share"] >= drift_share,
        columns=columns,
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    snapshot.save_html(str(out_dir / "index.html"))
    (out_dir / "drift.json").write_text(json.dumps(summary.__dict__, indent=1))
    return summary


def _kind(metric: dict) -> str:
    return metric.get("config", {}).get("type", "").split(":")[-1]


def _column_results(metrics: list[dict]) -> dict:
    """Per column: the test Evidently chose, its score and threshold, and whether the column drifted."""
    columns = {}
    for metric in metrics:
        if _kind(metric) != "ValueDrift":
            continue
        config = metric["config"]
        score = metric["value"]
        score = None if score is None or math.isnan(score) else float(score)
        method, threshold = config["method"], config["threshold"]
        # a p-value drifts below the threshold, a distance (Wasserstein, Jensen-Shannon...) above it
        if score is None:
            drifted = False
        elif "p_value" in method:
            drifted = score < threshold
        else:
            drifted = score >= threshold
        columns[config["column"]] = {
            "method": method,
            "score": score,
            "threshold": threshold,
            "drifted": drifted,
        }
    return columns


def reference_stage(
    manifest: Path, raw: Path, reference: Path, baseline: Path, metrics: Path, params: Params
) -> None:
    """The `drift_reference` stage: the drift features of the sources the model learned from.

    The reference (the training split's sources) is what `synclip drift` compares the service's
    requests with. The baseline split's sources (identities never trained on, from the same corpus)
    are reported against it too: a check that the features and the tests do not cry drift where
    there is none.
    """
    drift = params.drift
    landmarker = require("face_landmarker", params.pretrained.face_landmarker, "pretrained.face_landmarker")
    splits = pd.read_parquet(manifest).groupby("source")["split"].first()
    tables = {
        split: source_features(raw, sorted(splits.index[splits == split]), landmarker, drift.sampled_frames)
        for split in (drift.reference_split, drift.baseline_split)
    }
    table = tables[drift.reference_split]
    if len(table) < 2:
        raise UserError(f"{len(table)} {drift.reference_split} source(s): too few for a drift reference")
    reference.parent.mkdir(parents=True, exist_ok=True)
    table.to_parquet(reference, index=False)
    current = tables[drift.baseline_split]
    summary: dict = {"reference_sources": len(table)}
    if len(current) < 2:  # a small data set of one's own: the reference is still what monitoring needs
        reason = f"{len(current)} source(s) of the {drift.baseline_split} split; a drift test needs 2"
        log.warning("no baseline drift report: %s", reason)
        baseline.mkdir(parents=True, exist_ok=True)
        (baseline / "drift.json").write_text(json.dumps({"skipped": reason}))
        (baseline / "index.html").write_text(f"<!doctype html><p>No baseline drift report: {reason}.</p>")
        summary["baseline"] = {"split": drift.baseline_split, "skipped": reason}
    else:
        title = f"synclip input drift: {drift.baseline_split} sources vs {drift.reference_split}"
        report = drift_report(table, current, baseline, drift.drift_share, title=title)
        print(report.text())
        summary["baseline"] = {
            "split": drift.baseline_split,
            "sources": report.current_rows,
            "drifted_features": len(report.drifted),
            "drifted_share": round(report.share, 4),
            "dataset_drift": report.dataset_drift,
        }
    write_json(metrics, summary, sort_keys=False)
