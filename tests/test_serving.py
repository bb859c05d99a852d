"""The BentoML service, started as a user starts it (`bentoml serve` on 127.0.0.1), with a tiny model: the
synchronous endpoint, jobs with progress and cancellation, backpressure, the one error shape, metrics
and what a `kill -9` leaves; and the request checks and the job queue on their own."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import requests
from test_pipeline import speech_wav, talking_video, tiny_unet, tiny_vae, tiny_whisper

from synclip.errors import UserError
from synclip.inference.lipsync import LipSyncOptions
from synclip.inference.package import assemble
from synclip.inference.pipeline import PipelineConfig
from synclip.media.io import VideoWriter
from synclip.media.probe import probe
from synclip.quality.drift import read_features
from synclip.serve import host
from synclip.serve.jobs import CANCELLED, DONE, FAILED, QUEUED, RUNNING, JobQueue, QueueFullError
from synclip.serve.requests import RequestError, ServiceLimits, check_request, parse_options

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


# --- the request checks and the queue, without a server ---------------------------------------------


def test_limits_come_from_the_environment_and_bad_values_name_the_variable():
    limits = ServiceLimits.from_env(
        {"SYNCLIP_MAX_SECONDS": "7.5", "SYNCLIP_MAX_STEPS": "4", "SYNCLIP_QUEUE_SIZE": "2"}
    )
    assert (limits.max_seconds, limits.max_steps, limits.max_upload_mb, limits.queue_size) == (
        7.5,
        4,
        200.0,
        2,
    )
    with pytest.raises(UserError, match="SYNCLIP_MAX_UPLOAD_MB"):
        ServiceLimits.from_env({"SYNCLIP_MAX_UPLOAD_MB": "lots"})
    with pytest.raises(UserError, match="SYNCLIP_MAX_STEPS must be a positive number"):
        ServiceLimits.from_env({"SYNCLIP_MAX_STEPS": "0"})
    with pytest.raises(UserError, match="SYNCLIP_KEEP_SECONDS must be a positive number"):
        ServiceLimits.from_env({"SYNCLIP_KEEP_SECONDS": "inf"})


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        ({"guidance": "inf"}, "guidance must be a finite number, got inf"),
        ({"guidance": "nan"}, "guidance must be a finite number"),
        ({"guidance": "0.5"}, "guidance must be >= 1.0"),
        ({"guidance": "lots"}, "guidance must be a number, got 'lots'"),
        ({"steps": "0"}, r"steps must be an integer in \[1, 50\], got 0"),
        ({"steps": "2.5"}, "steps must be an integer, got '2.5'"),
        ({"face_index": "-1"}, r"face_index must be an integer in \[0, 9\], got -1"),
        ({"seed": "-3"}, "seed must be an integer in"),
        ({"cut": "maybe"}, "cut must be true or false, got 'maybe'"),
        ({"stepz": "3"}, "unknown option 'stepz'; the options are steps, guidance"),
    ],
)
def test_every_option_is_checked_with_its_value_in_the_reason(fields, reason):
    with pytest.raises(RequestError, match=reason) as error:
        parse_options(fields, ServiceLimits(), 1.5)
    assert error.value.status == 400


def test_options_from_form_strings_and_defaults():
    options = parse_options(
        {"steps": "3", "guidance": "1.5", "seed": "", "cut": "true", "pad": "0"}, ServiceLimits(), 2.0
    )
    assert options == LipSyncOptions(
        steps=3, guidance=1.5, seed=None, cut=True, pad=False, smoothing_frames=2.0
    )
    assert parse_options({}, ServiceLimits(), 1.5) == LipSyncOptions()


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    folder = tmp_path_factory.mktemp("serving_media")
    return talking_video(folder / "face.mp4", frames=20), speech_wav(folder / "speech.wav", 1.2)


def test_check_request_refuses_long_large_and_unreadable_files(media):
    video, speech = media
    assert check_request(video, speech, LipSyncOptions(), ServiceLimits()) == pytest.approx(1.2, abs=0.05)
    with pytest.raises(RequestError, match=r"1.2 s long") as error:
        check_request(video, speech, LipSyncOptions(), ServiceLimits(max_seconds=1.0))
    assert error.value.status == 413
    # cutting to the 0.8 s video makes the same request fit
    check_request(video, speech, LipSyncOptions(cut=True), ServiceLimits(max_seconds=1.0))
    with pytest.raises(RequestError, match=r"endpoint's limit is 1 s \(submit it as a job: POST /jobs\)"):
        check_request(video, speech, LipSyncOptions(), ServiceLimits(), max_seconds=1.0)
    with pytest.raises(RequestError, match=r"video: .* MB is over") as error:
        check_request(video, speech, LipSyncOptions(), ServiceLimits(max_upload_mb=1e-4))
    assert error.value.status == 413
    with pytest.raises(RequestError, match=r"^video: no video stream") as error:
        check_request(speech, speech, LipSyncOptions(), ServiceLimits())
    assert error.value.status == 400


def frames_work(frames: int, seconds: float, fail: Exception | None = None):
    """A queue work function standing in for the model: `frames` progress calls `seconds` apart."""

    def work(job, progress):
        (job.folder / "partial.mp4").write_bytes(b"")
        for done in range(1, frames + 1):
            time.sleep(seconds)
            progress(done, frames)
            if fail is not None and done == frames // 2:
                raise fail
        out = job.folder / "out.mp4"
        out.write_bytes(b"video")
        return out, {"frames": frames}

    return work


def folder(tmp_path: Path, name: str) -> Path:
    path = tmp_path / name
    path.mkdir()
    (path / "video.mp4").write_bytes(b"upload")
    return path


def wait_for(predicate, seconds: float = 10.0) -> None:
    deadline = time.monotonic() + seconds
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_the_queue_runs_one_job_at_a_time_and_refuses_beyond_its_capacity(tmp_path):
    ended = []
    queue = JobQueue(frames_work(10, 0.02), capacity=2, keep_seconds=60, on_end=ended.append)
    try:
        first = queue.submit(folder(tmp_path, "a"), {})
        wait_for(lambda: first.status == RUNNING)
        second, third = queue.submit(folder(tmp_path, "b"), {}), queue.submit(folder(tmp_path, "c"), {})
        assert (queue.position(second), queue.position(third), queue.full) == (1, 2, True)
        with pytest.raises(QueueFullError, match="2 jobs are waiting") as busy:
            queue.submit(folder(tmp_path, "d"), {})
        assert busy.value.retry_after >= 1
        wait_for(lambda: third.finished.is_set())
        assert [job.status for job in (first, second, third)] == [DONE, DONE, DONE]
        assert first.frames_done == first.frames_total == 10
        assert first.result.read_bytes() == b"video"
        assert ended == [first, second, third]
        # a job's run time (10 × 20 ms) is what Retry-After offers, rounded up to whole seconds
        assert queue.retry_after() == 1
    finally:
        queue.close()


def test_cancel_stops_a_running_job_at_its_next_frame_and_removes_every_file(tmp_path):
    queue = JobQueue(frames_work(1000, 0.01), capacity=2, keep_seconds=60)
    try:
        running = queue.submit(folder(tmp_path, "a"), {})
        waiting = queue.submit(folder(tmp_path, "b"), {})
        wait_for(lambda: running.frames_done >= 3)
        queue.cancel(waiting.id)
        assert (waiting.status, waiting.folder.exists(), queue.waiting) == (CANCELLED, False, 0)
        started = time.monotonic()
        queue.cancel(running.id)
        assert time.monotonic() - started < 1.0
        assert running.status == CANCELLED
        assert running.frames_done < 1000
        assert not running.folder.exists()
        assert queue.cancel("no-such-job") is None
    finally:
        queue.close()


def test_a_failed_job_keeps_its_reason_and_no_files_and_an_ended_one_expires(tmp_path):
    queue = JobQueue(frames_work(4, 0.0, RequestError("video: no face", 422)), capacity=1, keep_seconds=0.2)
    try:
        job = queue.submit(folder(tmp_path, "a"), {})
        job.finished.wait(5)
        assert (job.status, job.error, job.error_status, job.folder.exists()) == (
            FAILED,
            "video: no face",
            422,
            False,
        )
        queue.work = frames_work(2, 0.0)
        done = queue.submit(folder(tmp_path, "b"), {})
        done.finished.wait(5)
        assert done.status == DONE
        assert done.folder.exists()
        time.sleep(0.3)
        assert queue.get(done.id) is None
        assert not done.folder.exists()
    finally:
        queue.close()


def test_a_starting_worker_removes_what_dead_processes_left(tmp_path):
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    leftover = tmp_path / dead.stdout.strip() / "jobs" / "x"
    leftover.mkdir(parents=True)
    (leftover / "video.mp4").write_bytes(b"upload")
    live = tmp_path / str(os.getppid())  # a live process's folder stays
    live.mkdir()
    mine = host.claim_workdir(tmp_path)
    assert mine == tmp_path / str(os.getpid())
    assert mine.is_dir()
    assert not leftover.parent.parent.exists()
    assert live.exists()


# --- a real `bentoml serve` ---------------------------------------------------------------------------


@contextlib.contextmanager
def served(
    model: Path | None, tmp: Path, port: int | None = None, **env: str
) -> Iterator[tuple[str, subprocess.Popen]]:
    """`bentoml serve serving.service:LipSync` over `model` (None: the store's served tag) on a loopback port;
    yields its URL and process. `env`: more SYNCLIP_* settings; BentoML's home and the server log
    (appended) are under `tmp`."""
    port = port or free_port()
    environment = {
        **os.environ,
        "SYNCLIP_MODEL": "" if model is None else str(model),  # empty: the store's served tag
        "BENTOML_HOME": str(tmp / "bentoml"),
        "BENTOML_DO_NOT_TRACK": "true",
        "OMP_NUM_THREADS": "1",
        **env,
    }
    bentoml = Path(sys.executable).parent / "bentoml"
    command = [str(bentoml), "serve", "serving.service:LipSync", "--host", "127.0.0.1", "--port", str(port)]
    log = (tmp / "server.log").open("a")
    process = subprocess.Popen(command, cwd=ROOT, env=environment, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_ready(process, f"{url}/readyz", tmp / "server.log")
        yield url, process
    finally:
        if process.poll() is None:
            process.terminate()
            process.wait(timeout=30)
        log.close()


def tiny_model(tmp: Path) -> Path:
    config = PipelineConfig(resolution=64, num_frames=4, overlap=1, steps=2, guidance=1.5, seed=7)
    return assemble(tmp / "synclip", tiny_unet(), tiny_vae(), tiny_whisper(tmp / "whisper"), config)


@pytest.fixture(scope="module")
def server(tmp_path_factory, pretrained_dir):
    """The service on a tiny assembled model: outputs up to 3 s, 1 s synchronously, one job waiting at most."""
    tmp = tmp_path_factory.mktemp("service")
    settings = {
        "SYNCLIP_MAX_SECONDS": "3",
        "SYNCLIP_MAX_SYNC_SECONDS": "2",
        "SYNCLIP_MAX_UPLOAD_MB": "1",
        "SYNCLIP_QUEUE_SIZE": "1",
        "SYNCLIP_REQUEST_LOG": str(tmp / "requests.jsonl"),
        "SYNCLIP_WORK_DIR": str(tmp / "work"),
    }
    with served(tiny_model(tmp), tmp, **settings) as (url, _):
        yield url, tmp / "work", tmp / "requests.jsonl", tmp / "server.log"


def leftover_files(folder: Path, within: float = 10.0) -> list[Path]:
    """The files still in `folder` once it has had `within` seconds to empty (a request's files go after
    its answer is sent)."""
    deadline = time.monotonic() + within
    while (files := [path for path in folder.rglob("*") if path.is_file()]) and time.monotonic() < deadline:
        time.sleep(0.1)
    return files


def post(url: str, video: Path, audio: Path, path: str = "/lipsync", names=None, **data) -> requests.Response:
    names = names or (video.name, audio.name)
    with video.open("rb") as v, audio.open("rb") as a:
        files = {"video": (names[0], v, "video/mp4"), "audio": (names[1], a, "audio/wav")}
        return requests.post(f"{url}{path}", files=files, data=data, timeout=300)


def metric(url: str, name: str, **labels: str) -> float:
    """A sample's value on /metrics (0 when absent)."""
    text = requests.get(f"{url}/metrics", timeout=30).text
    want = ",".join(f'{key}="{value}"' for key, value in sorted(labels.items()))
    for line in text.splitlines():
        found = re.fullmatch(rf"{name}(?:\{{(.*)\}})? ([0-9.e+-]+)", line)
        if found and ",".join(sorted((found.group(1) or "").split(","))) == want:
            return float(found.group(2))
    return 0.0


@pytest.mark.pretrained
@pytest.mark.slow
def test_the_service_lip_syncs_an_upload_and_keeps_nothing(server, media, tmp_path):
    url, work, request_log, _ = server
    video, speech = media
    response = post(url, video, speech, seed="3")
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
    assert leftover_files(work) == []
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
    assert info["tag"] is None  # a folder, not a store tag
    assert metric(url, "synclip_frames_generated_total") >= summary["frames_generated"]


def backdrop_video(path: Path, frames: int = 10) -> Path:
    """A video without a face."""
    with VideoWriter(path, 96, 96, 25) as writer:
        for _ in range(frames):
            writer.write_frame(np.full((96, 96, 3), 120, np.uint8))
    return path


@pytest.mark.pretrained
@pytest.mark.slow
def test_every_bad_request_gets_a_4xx_in_one_shape_and_one_log_line(server, media, tmp_path):
    url, work, request_log, server_log = server
    logged = request_log.read_text() if request_log.exists() else ""
    log_start = server_log.stat().st_size
    refused_before = metric(url, "synclip_requests_total", endpoint="/lipsync", outcome="refused")
    video, speech = media
    truncated = tmp_path / "truncated.mp4"
    truncated.write_bytes(video.read_bytes()[:2000])
    long_speech = speech_wav(tmp_path / "long.wav", 4.0)
    medium_speech = speech_wav(tmp_path / "medium.wav", 2.5)
    big = tmp_path / "big.mp4"
    big.write_bytes(os.urandom(4 * 2**20))

    def chunked_upload() -> requests.Response:
        """A body without Content-Length, over the limit: refused while it streams in."""
        head = b'--b\r\nContent-Disposition: form-data; name="video"; filename="v.mp4"\r\n\r\n'
        chunks = iter([head] + [b"\0" * 2**16] * 80)
        headers = {"Content-Type": "multipart/form-data; boundary=b"}
        return requests.post(f"{url}/lipsync", data=chunks, headers=headers, timeout=60)

    cases = [
        (lambda: post(url, speech, speech), 400, "video: no video stream"),
        (lambda: post(url, truncated, speech), 400, "video: not a readable media file"),
        (lambda: post(url, video, truncated), 400, "audio: not a readable media file"),
        (lambda: post(url, video, long_speech), 413, "4.0 s long; the service's limit is 3 s"),
        (
            lambda: post(url, video, medium_speech),
            413,
            "endpoint's limit is 2 s (submit it as a job: POST /jobs)",
        ),
        (lambda: post(url, video, speech, steps="99"), 400, "steps must be an integer in [1, 50], got 99"),
        (lambda: post(url, video, speech, guidance="inf"), 400, "guidance must be a finite number, got inf"),
        (lambda: post(url, video, speech, face_index="-1"), 400, "face_index must be an integer in [0, 9]"),
        (
            lambda: post(url, video, speech, names=("v" * 300 + ".mp4", "a.wav")),
            400,
            "file name is 304 characters",
        ),
        (
            lambda: post(url, backdrop_video(tmp_path / "wall.mp4"), speech),
            422,
            "no face was found in any of its",
        ),
        (lambda: post(url, video, speech, face_index="3"), 422, "no face number 4 was found"),
        (lambda: post(url, big, speech), 413, "the service takes at most 3 MB"),
        (chunked_upload, 413, "over the service's limit of 3 MB"),
        (
            lambda: requests.post(f"{url}/lipsync", files={"video": video.open("rb")}, timeout=60),
            400,
            "audio: missing",
        ),
        (lambda: requests.get(f"{url}/jobs/nope", timeout=60), 404, "job nope: no such job"),
        (lambda: requests.get(f"{url}/no/such/page", timeout=60), 404, "Not Found"),
    ]
    for call, status, reason in cases:
        response = call()
        assert response.status_code == status, (reason, response.text)
        body = response.json()
        assert body == {"error": body["error"], "status": status}, body
        assert reason in body["error"], body
    assert leftover_files(work) == []
    assert (request_log.read_text() if request_log.exists() else "") == logged  # refused: not logged
    with server_log.open() as log:
        log.seek(log_start)
        text = log.read()
    assert "Traceback" not in text
    assert len(re.findall(r"POST /lipsync 4\d\d: ", text)) == 14  # one line each
    assert (
        metric(url, "synclip_requests_total", endpoint="/lipsync", outcome="refused") == refused_before + 14
    )


@pytest.mark.pretrained
@pytest.mark.slow
def test_a_job_shows_progress_downloads_and_its_cancel_leaves_no_files(server, media, tmp_path):
    url, work, _, _ = server
    video, _ = media
    speech = speech_wav(tmp_path / "speech.wav", 3.0)  # 75 frames
    done_before = metric(url, "synclip_jobs_total", outcome="done")
    submitted = post(url, video, speech, path="/jobs", steps="20")
    assert submitted.status_code == 202, submitted.text
    job = submitted.json()["job"]
    seen = []
    while (state := requests.get(f"{url}/jobs/{job}", timeout=30).json())["status"] in (QUEUED, RUNNING):
        seen.append(state["frames_done"])
        time.sleep(0.05)
    assert state["status"] == DONE, state
    assert state["frames_done"] == state["frames_total"] == 75
    assert any(0 < frames < 75 for frames in seen), seen  # progress was readable while it ran
    result = requests.get(f"{url}{state['result']}", timeout=60)
    assert result.status_code == 200
    assert result.headers["content-type"] == "video/mp4"
    (tmp_path / "job.mp4").write_bytes(result.content)
    assert probe(tmp_path / "job.mp4").video.frames == 75
    assert metric(url, "synclip_jobs_total", outcome="done") == done_before + 1
    # deleting a finished job removes its result
    assert requests.delete(f"{url}/jobs/{job}", timeout=30).json()["status"] == CANCELLED
    assert requests.get(f"{url}{state['result']}", timeout=30).status_code == 409

    job = post(url, video, speech, path="/jobs", steps="50").json()["job"]
    while requests.get(f"{url}/jobs/{job}", timeout=30).json()["frames_done"] < 2:
        time.sleep(0.05)
    cancelled = requests.delete(f"{url}/jobs/{job}", timeout=30).json()
    assert cancelled["status"] == CANCELLED
    assert cancelled["frames_done"] < 75
    assert leftover_files(work) == []


@pytest.mark.pretrained
@pytest.mark.slow
def test_a_full_queue_answers_503_with_retry_after_at_once_and_cheap_calls_do_not_wait(
    server, media, tmp_path
):
    url, work, _, _ = server
    video, _ = media
    speech = speech_wav(tmp_path / "speech.wav", 3.0)
    running = post(url, video, speech, path="/jobs", steps="50").json()["job"]
    while requests.get(f"{url}/jobs/{running}", timeout=30).json()["status"] != RUNNING:
        time.sleep(0.05)
    waiting = post(url, video, speech, path="/jobs", steps="50").json()
    assert waiting["status"] == QUEUED
    assert waiting["position"] == 1
    started = time.monotonic()
    full = post(url, video, speech, path="/jobs")
    refused_sync = post(url, video, speech_wav(tmp_path / "short.wav", 0.5))
    info = requests.post(f"{url}/model_info", json={}, timeout=30)
    ready = requests.get(f"{url}/readyz", timeout=30)
    assert time.monotonic() - started < 5  # none of them waited for the running job
    for response in (full, refused_sync):
        assert response.status_code == 503, response.text
        assert int(response.headers["retry-after"]) >= 1
        assert response.json()["error"].startswith("the service is busy: 1 jobs are waiting")
    assert info.status_code == 200
    assert info.json()["queue"] == {"waiting": 1, "capacity": 1}
    assert ready.status_code == 503  # a balancer sends work elsewhere
    assert metric(url, "synclip_queue_depth") == 1
    for job in (waiting["job"], running):
        requests.delete(f"{url}/jobs/{job}", timeout=60)
    assert requests.get(f"{url}/readyz", timeout=30).status_code == 200
    assert leftover_files(work) == []


@pytest.mark.pretrained
@pytest.mark.slow
def test_a_synchronous_request_whose_client_left_is_dropped(server, media, tmp_path):
    url, work, _, _ = server
    video, _ = media
    speech = speech_wav(tmp_path / "speech.wav", 3.0)
    running = post(url, video, speech, path="/jobs", steps="50").json()["job"]
    cancelled_before = metric(url, "synclip_jobs_total", outcome="cancelled")
    gone_before = metric(url, "synclip_jobs_total", outcome="client_gone")
    done_before = metric(url, "synclip_jobs_total", outcome="done")
    short = speech_wav(tmp_path / "short.wav", 0.5)
    with video.open("rb") as v, short.open("rb") as a, pytest.raises(requests.Timeout):
        # the client gives up while its request waits in the queue
        requests.post(f"{url}/lipsync", files={"video": v, "audio": a}, timeout=(5, 1.0))
    time.sleep(1.0)
    requests.delete(f"{url}/jobs/{running}", timeout=60)
    assert metric(url, "synclip_jobs_total", outcome="client_gone") == gone_before + 1
    # the dropped request never ran: the only job that ended since is the one cancelled above, and
    # the dropped one's end is counted as a cancellation from the queue
    assert metric(url, "synclip_jobs_total", outcome="cancelled") == cancelled_before + 2
    assert metric(url, "synclip_jobs_total", outcome="done") == done_before
    assert leftover_files(work) == []


@pytest.mark.pretrained
@pytest.mark.slow
def test_kill_9_of_the_server_frees_the_port_and_a_restart_clears_the_leftovers(
    media, tmp_path, pretrained_dir
):
    video, _ = media
    speech = speech_wav(tmp_path / "speech.wav", 3.0)
    model, port = tiny_model(tmp_path), free_port()
    settings = {"SYNCLIP_WORK_DIR": str(tmp_path / "work"), "SYNCLIP_REQUEST_LOG": ""}
    with served(model, tmp_path, port, **settings) as (url, process):
        job = post(url, video, speech, path="/jobs", steps="50").json()["job"]
        while requests.get(f"{url}/jobs/{job}", timeout=30).json()["frames_done"] < 2:
            time.sleep(0.05)
        (worker,) = [path for path in (tmp_path / "work").iterdir()]
        assert any(worker.rglob("*.mp4"))
        os.kill(process.pid, signal.SIGKILL)
        process.wait()
        deadline = time.monotonic() + 20
        while True:  # the worker goes with the server: nothing answers on the port
            try:
                requests.get(f"{url}/readyz", timeout=1)
            except requests.ConnectionError:
                break
            assert time.monotonic() < deadline, "the worker outlived the killed server"
            time.sleep(0.2)
        wait_for(lambda: not host.alive(int(worker.name)), 10)
        assert worker.exists()  # what the killed request left, until a restart
    # the restart serves the model promoted into the store (SYNCLIP_MODEL unset), as after a promotion
    home = {**os.environ, "BENTOML_HOME": str(tmp_path / "bentoml"), "BENTOML_DO_NOT_TRACK": "true"}
    synclip = Path(sys.executable).parent / "synclip"
    imported = subprocess.run(
        [str(synclip), "model", "import", str(model)], env=home, capture_output=True, text=True, check=True
    )
    tag = re.search(r"(synclip:\w+) is served now", imported.stdout).group(1)
    with served(None, tmp_path, port, **settings) as (url, _):
        assert not worker.exists()
        info = requests.post(f"{url}/model_info", json={}, timeout=30).json()
        assert info["tag"] == tag
        assert info["model"] == str(tmp_path / "bentoml" / "models" / "synclip" / tag.split(":")[1])
    assert "left by a process that is gone" in (tmp_path / "server.log").read_text()
