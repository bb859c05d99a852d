"""The BentoML service, started as a user starts it (`bentoml serve` on 127.0.0.1), with a tiny model."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from test_pipeline import speech_wav, talking_video, tiny_unet, tiny_vae, tiny_whisper

from synclip.errors import UserError
from synclip.inference.lipsync import LipSyncOptions
from synclip.inference.package import assemble
from synclip.inference.pipeline import PipelineConfig
from synclip.media.probe import probe
from synclip.quality.drift import read_features
from synclip.serve import RequestError, ServiceLimits, check_request

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until_ready(process: subprocess.Popen, url: str, log: Path, seconds: float = 120) -> None:
    """Poll `url` until it answers 2xx; fail with the log's tail if the process exits or time runs out."""
    deadline = time.monotonic() + seconds
    while True:
        assert process.poll() is None, log.read_text()[-3000:]
        try:
            if requests.get(url, timeout=2).ok:
                return
        except (requests.ConnectionError, requests.Timeout):  # not listening yet, or still loading
            pass
        assert time.monotonic() < deadline, log.read_text()[-3000:]
        time.sleep(0.5)


def test_limits_come_from_the_environment_and_bad_values_name_the_variable():
    limits = ServiceLimits.from_env({"SYNCLIP_MAX_SECONDS": "7.5", "SYNCLIP_MAX_STEPS": "4"})
    assert (limits.max_seconds, limits.max_steps, limits.max_upload_mb) == (7.5, 4, 200.0)
    with pytest.raises(UserError, match="SYNCLIP_MAX_UPLOAD_MB"):
        ServiceLimits.from_env({"SYNCLIP_MAX_UPLOAD_MB": "lots"})
    with pytest.raises(UserError, match="SYNCLIP_MAX_STEPS must be positive"):
        ServiceLimits.from_env({"SYNCLIP_MAX_STEPS": "0"})


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    folder = tmp_path_factory.mktemp("serving_media")
    return talking_video(folder / "face.mp4", frames=20), speech_wav(folder / "speech.wav", 1.2)


def test_check_request_refuses_long_large_and_bad_requests(media, tmp_path):
    video, speech = media
    check_request(video, speech, LipSyncOptions(), ServiceLimits())
    with pytest.raises(RequestError, match=r"1.2 s long") as error:
        check_request(video, speech, LipSyncOptions(), ServiceLimits(max_seconds=1.0))
    assert error.value.status == 413
    # cutting to the 0.8 s video makes the same request fit
    check_request(video, speech, LipSyncOptions(cut=True), ServiceLimits(max_seconds=1.0))
    with pytest.raises(RequestError, match=r"video: .* MB is over") as error:
        check_request(video, speech, LipSyncOptions(), ServiceLimits(max_upload_mb=1e-4))
    assert error.value.status == 413
    with pytest.raises(RequestError, match=r"steps must be 1..4"):
        check_request(video, speech, LipSyncOptions(steps=5), ServiceLimits(max_steps=4))
    with pytest.raises(RequestError, match=r"guidance must be >= 1.0"):
        check_request(video, speech, LipSyncOptions(guidance=0.5), ServiceLimits())
    with pytest.raises(RequestError, match=r"^video: no video stream") as error:
        check_request(speech, speech, LipSyncOptions(), ServiceLimits())
    assert error.value.status == 400


@contextlib.contextmanager
def served(model: Path, tmp: Path, **env: str) -> Iterator[str]:
    """`bentoml serve serving.service:LipSync` over `model` on a free loopback port, as a user starts it;
    yields its URL. `env`: more SYNCLIP_* settings; BentoML's home and the server log are under `tmp`."""
    port = free_port()
    environment = {
        **os.environ,
        "SYNCLIP_MODEL": str(model),
        "BENTOML_HOME": str(tmp / "bentoml"),
        "BENTOML_DO_NOT_TRACK": "true",
        "OMP_NUM_THREADS": "1",
        **env,
    }
    bentoml = Path(sys.executable).parent / "bentoml"
    command = [str(bentoml), "serve", "serving.service:LipSync", "--host", "127.0.0.1", "--port", str(port)]
    log = (tmp / "server.log").open("w")
    process = subprocess.Popen(command, cwd=ROOT, env=environment, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_ready(process, f"{url}/readyz", tmp / "server.log")
        yield url
    finally:
        process.terminate()
        process.wait(timeout=30)
        log.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory, pretrained_dir):
    """The service on a tiny assembled model."""
    tmp = tmp_path_factory.mktemp("service")
    config = PipelineConfig(resolution=64, num_frames=4, overlap=1, steps=2, guidance=1.5, seed=7)
    model = assemble(tmp / "synclip", tiny_unet(), tiny_vae(), tiny_whisper(tmp / "whisper"), config)
    scratch = tmp / "scratch"
    scratch.mkdir()
    settings = {
        "SYNCLIP_MAX_SECONDS": "3",
        "SYNCLIP_REQUEST_LOG": str(tmp / "requests.jsonl"),
        "TMPDIR": str(scratch),
    }
    with served(model, tmp, **settings) as url:
        yield url, scratch, tmp / "requests.jsonl"


def leftover_files(folder: Path, within: float = 10.0) -> list[Path]:
    """The files still in `folder` once it has had `within` seconds to empty: BentoML releases a
    request's folder after the response is sent, so the client can read the answer first."""
    deadline = time.monotonic() + within
    while (files := [path for path in folder.rglob("*") if path.is_file()]) and time.monotonic() < deadline:
        time.sleep(0.1)
    return files


@pytest.mark.pretrained
@pytest.mark.slow
def test_the_service_lip_syncs_an_upload_and_keeps_nothing(server, media, tmp_path):
    url, scratch, request_log = server
    video, speech = media
    with video.open("rb") as v, speech.open("rb") as a:
        files = {"video": ("face.mp4", v, "video/mp4"), "audio": ("speech.wav", a, "audio/wav")}
        response = requests.post(f"{url}/lipsync", files=files, data={"seed": "3"}, timeout=300)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "video/mp4"
    out = tmp_path / "out.mp4"
    out.write_bytes(response.content)
    info = probe(out)
    summary = json.loads(response.headers["x-synclip-summary"])
    # the 1.2 s of speech drives 30 frames: the 20-frame video loops ping-pong, at its own size
    assert summary["frames"] == 30
    assert summary["looped"]
    assert summary["frames_generated"] > 0
    assert summary["frames_generated"] + summary["frames_without_face"] == 30
    assert (info.video.width, info.video.height) == (192, 160)
    assert info.audio is not None
    assert abs(info.audio.duration - 1.2) < 0.1
    assert leftover_files(scratch) == []
    # the request's input features went to the log the drift report reads
    (record,) = [json.loads(line) for line in request_log.read_text().splitlines()]
    assert record["options"]["seed"] == 3
    assert record["summary"]["frames"] == 30
    assert read_features(request_log).loc[0, "width"] == 192
    assert record["features"]["audio_seconds"] == pytest.approx(1.2, abs=0.05)
    assert record["features"]["audio_to_video"] == pytest.approx(1.5, abs=0.1)

    info = requests.post(f"{url}/model_info", json={}, timeout=30).json()
    assert info["pipeline"]["resolution"] == 64
    assert info["limits"]["max_seconds"] == 3


@pytest.mark.pretrained
@pytest.mark.slow
def test_the_service_answers_bad_requests_with_a_4xx_and_a_reason(server, media, tmp_path):
    url, scratch, request_log = server
    logged = request_log.read_text() if request_log.exists() else ""
    video, speech = media
    truncated = tmp_path / "truncated.mp4"
    truncated.write_bytes(video.read_bytes()[:2000])
    long_speech = speech_wav(tmp_path / "long.wav", 4.0)

    def post(video_file: Path, audio_file: Path, **data) -> requests.Response:
        with video_file.open("rb") as v, audio_file.open("rb") as a:
            files = {"video": (video_file.name, v, "video/mp4"), "audio": (audio_file.name, a, "audio/wav")}
            return requests.post(f"{url}/lipsync", files=files, data=data, timeout=120)

    cases = [
        (post(speech, speech), 400, "video: no video stream"),
        (post(truncated, speech), 400, "video: not a readable media file"),
        (post(video, truncated), 400, "audio: not a readable media file"),
        (post(video, long_speech), 413, "4.0 s long; the service's limit is 3 s"),
        (post(video, speech, steps="99"), 400, "steps must be 1..50"),
    ]
    for response, status, reason in cases:
        assert response.status_code == status, response.text
        assert reason in json.dumps(response.json())
    assert leftover_files(scratch) == []
    assert (request_log.read_text() if request_log.exists() else "") == logged  # refused: not logged
