"""Input drift: the features of a (video, speech) pair, the Evidently report, and `synclip drift`."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from test_pipeline import speech_wav, talking_video

from synclip.errors import UserError
from synclip.media.io import VideoWriter, write_wav
from synclip.quality.drift import FEATURES, drift_report, input_features, read_features


@pytest.mark.pretrained
def test_input_features_describe_the_video_the_face_and_the_speech(pretrained_dir, tmp_path):
    landmarker = pretrained_dir / "face_landmarker.task"
    video = talking_video(tmp_path / "face.mp4", frames=20)
    t = np.arange(int(1.2 * 44_100)) / 44_100
    speech = write_wav(tmp_path / "speech.wav", 0.3 * np.sin(2 * np.pi * 220 * t), 44_100)
    features = input_features(video, speech, landmarker)
    assert set(features) == set(FEATURES)
    assert (features["width"], features["height"], features["fps"]) == (192, 160, "25.000")
    assert (features["audio_sample_rate"], features["audio_channels"]) == ("44100", "1")
    assert features["video_seconds"] == pytest.approx(0.8, abs=0.05)
    assert features["audio_to_video"] == pytest.approx(1.5, abs=0.1)
    # 8 frames spread over 20; four of the 20 (test_pipeline.FACELESS) show no face
    assert 0.4 <= features["face_found_fraction"] <= 0.9
    assert features["several_faces_fraction"] == 0
    assert 0.2 < features["face_width_fraction"] < 0.8
    # the 220 Hz tone, loud all the time
    assert features["spectral_centroid_hz"] == pytest.approx(220, abs=60)
    assert features["speech_fraction"] > 0.8
    assert -20 < features["audio_rms_dbfs"] < features["audio_peak_dbfs"] < 0

    blank = tmp_path / "blank.mp4"
    with VideoWriter(blank, 64, 48, 25, threads=1) as writer:
        for _ in range(10):
            writer.write_frame(np.full((48, 64, 3), 40, np.uint8))
    features = input_features(blank, write_wav(tmp_path / "silence.wav", np.zeros(8000), 16_000), landmarker)
    assert features["face_found_fraction"] == 0
    assert math.isnan(features["face_width_fraction"])  # missing, not a face of width 0
    assert features["speech_fraction"] == 0
    assert features["audio_rms_dbfs"] <= -100
    assert features["luma_mean"] == pytest.approx(40, abs=3)
    assert features["audio_sample_rate"] == "16000"
    stereo = input_features(video, speech_wav(tmp_path / "stereo.wav", 1.0), landmarker)
    assert stereo["audio_channels"] == "2"


def table(
    rows: int, seed: int, darker: float = 0.0, smaller: float = 1.0, rate: str = "44100"
) -> pd.DataFrame:
    """Feature rows like SynthTalk's: a mix of sizes and rates, faces of a quarter to a third of the width."""
    rng = np.random.default_rng(seed)
    sizes = rng.choice([640, 480, 720], rows)
    return pd.DataFrame(
        {
            "width": sizes,
            "height": (sizes * 0.75).astype(int),
            "fps": rng.choice(["25.000", "29.970", "30.000"], rows),
            "video_seconds": rng.uniform(3, 8, rows),
            "luma_mean": rng.normal(130, 8, rows) - darker,
            "luma_std": rng.normal(25, 3, rows),
            "sharpness": rng.normal(70, 10, rows),
            "face_found_fraction": rng.choice([1.0, 1.0, 1.0, 0.875], rows),
            "several_faces_fraction": np.zeros(rows),
            "face_width_fraction": rng.uniform(0.24, 0.36, rows) * smaller,
            "face_luma": rng.normal(150, 10, rows) - darker,
            "audio_sample_rate": rng.choice([rate, "48000"], rows) if rate == "44100" else [rate] * rows,
            "audio_channels": rng.choice(["1", "2"], rows),
            "audio_seconds": rng.uniform(3, 8, rows),
            "audio_rms_dbfs": rng.normal(-28, 2, rows),
            "audio_peak_dbfs": rng.normal(-6, 1, rows),
            "speech_fraction": rng.uniform(0.6, 0.8, rows),
            "spectral_centroid_hz": rng.normal(1900, 150, rows),
            "audio_to_video": rng.normal(1.0, 0.01, rows),
        }
    )


def test_the_drift_report_flags_what_moved_and_passes_data_like_the_reference(tmp_path):
    reference = table(120, seed=0)
    alike = drift_report(reference, table(40, seed=1), tmp_path / "alike")
    assert not alike.dataset_drift
    assert alike.share < 0.2
    assert set(alike.columns) == set(FEATURES)

    # darker rooms, faces at half the size, and telephone-rate audio
    moved = drift_report(
        reference, table(40, seed=2, darker=40, smaller=0.5, rate="8000"), tmp_path / "moved"
    )
    assert {"luma_mean", "face_luma", "face_width_fraction", "audio_sample_rate"} <= set(moved.drifted)
    assert "spectral_centroid_hz" not in moved.drifted
    assert moved.columns["face_width_fraction"]["drifted"]
    written = json.loads((tmp_path / "moved" / "drift.json").read_text())
    assert written["drifted"] == moved.drifted
    page = (tmp_path / "moved" / "index.html").read_text()
    assert "face_width_fraction" in page
    assert '<script src="http' not in page  # self-contained: it opens offline


def test_feature_tables_are_checked_before_a_report_is_made(tmp_path):
    with pytest.raises(UserError, match="no such file"):
        read_features(tmp_path / "missing.jsonl")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"time": "2026-12-02T10:00:00+00:00"}\n')
    with pytest.raises(UserError, match="not a synclip request log"):
        read_features(bad)
    partial = tmp_path / "partial.parquet"
    table(5, seed=0).drop(columns=["sharpness"]).to_parquet(partial)
    with pytest.raises(UserError, match="missing feature columns sharpness"):
        read_features(partial)
    with pytest.raises(UserError, match="the current data has 1 rows"):
        drift_report(table(10, seed=0), table(1, seed=1), tmp_path / "one")
    assert not (tmp_path / "one").exists()


def test_synclip_drift_reads_a_request_log_and_can_fail_on_drift(root, tmp_path):
    reference = tmp_path / "reference.parquet"
    table(120, seed=0).to_parquet(reference)
    log = tmp_path / "requests.jsonl"
    rows = table(30, seed=3, darker=40, smaller=0.5, rate="8000").to_dict("records")
    log.write_text("".join(json.dumps({"time": "t", "features": row}, default=int) + "\n" for row in rows))

    def drift(*args: str) -> subprocess.CompletedProcess:
        command = [
            sys.executable,
            "-m",
            "synclip",
            "drift",
            *args,
            "--reference",
            str(reference),
            "--params",
            str(root / "params.yaml"),
        ]
        return subprocess.run(command, capture_output=True, text=True, timeout=120)

    done = drift(str(log), "--out", str(tmp_path / "report"), "--fail-on-drift")
    assert done.returncode == 1, done.stderr
    assert "face_width_fraction" in done.stdout
    assert (tmp_path / "report" / "index.html").is_file()
    # Evidently's default, half the features, lets the same inputs pass
    done = drift(
        str(log), "--out", str(tmp_path / "report"), "--fail-on-drift", "-S", "drift.drift_share=0.5"
    )
    assert done.returncode == 0, done.stderr
    done = drift(str(log), "--out", str(tmp_path / "report"), "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["dataset_drift"] is True
    done = drift(str(tmp_path / "nothing.jsonl"))
    assert done.returncode == 2
    assert "nothing.jsonl: no such file" in done.stdout + done.stderr
    assert "Traceback" not in done.stderr
