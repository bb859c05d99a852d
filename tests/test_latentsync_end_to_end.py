"""LatentSync-format weights, end to end: a test-made snapshot imported by the CLI, then lip-synced by
`synclip lipsync`, by the service (`bentoml serve`) and by the evaluation protocol."""

from __future__ import annotations

import json
import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import requests
import torch
import yaml
from latentsync_snapshot import make_snapshot
from test_pipeline import FACELESS, speech_wav, talking_video
from test_serving import served

from synclip.audio.latentsync import latentsync_frame_count, latentsync_num_tokens
from synclip.config import load_params
from synclip.eval.report import evaluate_stage
from synclip.face.latentsync import latentsync_mask
from synclip.inference.package import load_pipeline
from synclip.media.decode import iter_frames, read_audio
from synclip.media.probe import probe

ROOT = Path(__file__).resolve().parents[1]
SYNCLIP = Path(sys.executable).parent / "synclip"
RES = 128  # the processed test corpus's face size, so the evaluation protocol can run the model

pytestmark = [pytest.mark.pretrained, pytest.mark.slow]


def run(*args: str | Path, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(SYNCLIP), *map(str, args)], capture_output=True, text=True, check=False, cwd=ROOT, env=env
    )


@pytest.fixture(scope="module")
def imported(tmp_path_factory) -> Path:
    """`synclip weights import-latentsync` on a reduced 1.6 snapshot whose config says 128 px."""
    tmp = tmp_path_factory.mktemp("latentsync")
    parts = make_snapshot(tmp, "1.6", seed=3)
    config = yaml.safe_load(parts["unet_config"].read_text())
    config["data"]["resolution"] = RES
    (tmp / "unet-128.yaml").write_text(yaml.safe_dump(config))
    out = tmp / "models" / "latentsync-1.6"
    result = run(
        "weights",
        "import-latentsync",
        parts["src"],
        "--version",
        "1.6",
        "--vae",
        parts["vae"],
        "--unet-config",
        tmp / "unet-128.yaml",
        "--syncnet-config",
        parts["syncnet_config"],
        "-o",
        out,
    )
    assert result.returncode == 0, result.stderr
    return out


def test_lipsync_cli_runs_the_imported_model_the_way_latentsync_runs_it(imported, tmp_path, pretrained_dir):
    video = talking_video(tmp_path / "face.mp4", frames=20)
    speech = speech_wav(tmp_path / "speech.wav", 1.3)  # longer than the video: it loops ping-pong
    out = tmp_path / "out.mp4"
    result = run(
        "lipsync",
        "--video",
        video,
        "--audio",
        speech,
        "-o",
        out,
        "--model",
        imported,
        "--steps",
        "2",
        "--lossless",
    )
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    info = probe(out)
    # LatentSync's frame count: two past the speech's Whisper tokens (floor(T / 2) + 2 at 25 fps)
    samples = read_audio(speech)
    expected = latentsync_frame_count(latentsync_num_tokens(len(samples)))
    written = list(iter_frames(out))
    assert len(written) == expected == 34
    assert info.video.fps == Fraction(25)
    source = list(iter_frames(video))
    # the loop repeats the end frames: output 20 is source 19 again, output 21 is source 18
    assert np.abs(written[20].astype(int) - written[19].astype(int)).mean() < 3
    # frames without a face pass through unchanged, the others are generated (LatentSync pastes back the
    # whole resampled crop, not only the mask's region)
    for i in range(20):
        assert np.array_equal(written[i], source[i]) == (i in FACELESS), i


@pytest.fixture(scope="module")
def service(imported, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("latentsync-service")
    settings = {
        "SYNCLIP_MAX_SECONDS": "3",
        "SYNCLIP_REQUEST_LOG": str(tmp / "requests.jsonl"),
        "SYNCLIP_WORK_DIR": str(tmp / "work"),
    }
    with served(imported, tmp, **settings) as (url, _):
        yield url


def test_the_service_serves_the_imported_model(service, tmp_path):
    video = talking_video(tmp_path / "face.mp4", frames=20)
    speech = speech_wav(tmp_path / "speech.wav", 0.6)
    with video.open("rb") as v, speech.open("rb") as a:
        files = {"video": ("face.mp4", v, "video/mp4"), "audio": ("speech.wav", a, "audio/wav")}
        response = requests.post(f"{service}/lipsync", files=files, data={"steps": "2"}, timeout=300)
    assert response.status_code == 200, response.text
    summary = json.loads(response.headers["x-synclip-summary"])
    expected = latentsync_frame_count(latentsync_num_tokens(len(read_audio(speech))))
    assert summary["frames"] == expected  # the speech decides, as LatentSync: 0.6 s → 17 frames
    assert summary["frames_generated"] > 0
    out = tmp_path / "out.mp4"
    out.write_bytes(response.content)
    assert len(list(iter_frames(out))) == expected


def test_the_evaluate_stage_scores_the_imported_model(imported, processed, corpus, root, tmp_path):
    folder, _, _ = processed
    overrides = [
        "evaluate.split=train",
        "evaluate.clips=2",
        "evaluate.max_frames=50",
        "evaluate.steps=2",
        "evaluate.samples=1",
    ]
    params = load_params(root / "params.yaml", overrides)
    pipeline = load_pipeline(imported)
    assert pipeline.config.resolution == RES
    assert torch.equal(pipeline.mask, latentsync_mask(RES))
    out = tmp_path / "eval"
    # the stage as dvc runs it, with the imported model and the imported StableSyncNet as the judge
    evaluate_stage(folder, corpus[0], imported, imported / "syncnet", out, params, torch.device("cpu"))
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["dubbing"]["model"]["clips"] == 2
    assert "lse_c" in metrics["dubbing"]["model"]
    assert (out / "summary.md").is_file()
