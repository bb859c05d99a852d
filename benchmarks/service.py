"""Latency, throughput, load and soak of the BentoML service (`bentoml serve serving.service:LipSync`).

    python benchmarks/service.py --video data/raw/id002_00.mp4 --audio data/raw/id002_00.mp4 \
        --seconds 0.6 --steps 2 --repeats 3 --concurrent 50 --sequential 200 \
        --out benchmarks/results/service.json

Starts the server on a free loopback port over `--model` (queue of SYNCLIP_QUEUE_SIZE, default 4),
waits for /readyz (the start-up time), then:
- latency: the same request `--repeats` times per step count (latency, frames/s);
- load: `--concurrent` requests at once, each must be answered 200 or 503 (with Retry-After) within
  its timeout: none may hang;
- soak: `--sequential` requests one after another; the worker's RSS after the first 10 and after the
  last (growth in %), and the files left in the service's work folder once it is quiet.
The speech is the first `--seconds` of `--audio`, written as a 16 kHz WAV. Peak memory is the largest
VmHWM among the server's processes (BentoML runs the service in a child of the CLI process).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
import wave
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import requests

from synclip.media.decode import read_audio

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def tree(pid: int) -> list[int]:
    """pid and all its descendants, from /proc."""
    children: dict[int, list[int]] = {}
    for status in Path("/proc").glob("[0-9]*/status"):
        try:
            fields = dict(line.split(":\t", 1) for line in status.read_text().splitlines() if ":\t" in line)
        except OSError:  # the process ended while we read
            continue
        children.setdefault(int(fields["PPid"]), []).append(int(fields["Pid"]))
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        todo.extend(children.get(current, []))
    return found


def memory_mib(pid: int, field: str = "VmHWM") -> float:
    """The largest `field` (VmHWM: peak, VmRSS: now) among pid's process tree, in MiB."""
    values = []
    for member in tree(pid):
        for line in Path(f"/proc/{member}/status").read_text().splitlines():
            if line.startswith(f"{field}:"):
                values.append(int(line.split()[1]) / 1024)
    return max(values)


def short_speech(source: Path, seconds: float, out: Path) -> Path:
    samples = read_audio(source, end=seconds)
    with wave.open(str(out), "wb") as file:
        file.setnchannels(1)
        file.setsampwidth(2)
        file.setframerate(16_000)
        file.writeframes((np.clip(samples, -1, 1) * 32767).astype("<i2").tobytes())
    return out


def request(url: str, video: Path, audio: Path, steps: int, timeout: float) -> dict:
    """One POST /lipsync: status, seconds, and what the answer says."""
    with video.open("rb") as v, audio.open("rb") as a:
        files = {"video": (video.name, v, "video/mp4"), "audio": (audio.name, a, "audio/wav")}
        begin = time.perf_counter()
        try:
            response = requests.post(
                f"{url}/lipsync", files=files, data={"steps": str(steps)}, timeout=timeout
            )
        except requests.Timeout:
            return {"status": "hung", "seconds": round(time.perf_counter() - begin, 3)}
    answer = {"status": response.status_code, "seconds": round(time.perf_counter() - begin, 3)}
    if response.status_code == 200:
        answer["frames"] = json.loads(response.headers["x-synclip-summary"])["frames"]
    elif response.status_code == 503:
        answer["retry_after"] = int(response.headers["retry-after"])
    else:
        answer["error"] = response.text[:300]
    return answer


def files_in(folder: Path) -> list[str]:
    return sorted(str(path.relative_to(folder)) for path in folder.rglob("*") if path.is_file())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--video", type=Path, required=True)
    parser.add_argument("--audio", type=Path, required=True)
    parser.add_argument("--model", type=Path, default=ROOT / "models" / "synclip")
    parser.add_argument("--seconds", type=float, default=0.6, help="of speech per request")
    parser.add_argument("--steps", type=int, nargs="+", default=[2])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--concurrent", type=int, default=50)
    parser.add_argument("--sequential", type=int, default=200)
    parser.add_argument("--timeout", type=float, default=600, help="seconds a client waits for an answer")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "service.json")
    args = parser.parse_args()

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    bentoml = Path(sys.executable).parent / "bentoml"
    home = Path(tempfile.mkdtemp(prefix="bentoml-home-"))
    work = home / "work"
    speech = short_speech(args.audio, args.seconds, home / "speech.wav")
    env = {
        **os.environ,
        "SYNCLIP_MODEL": str(args.model.resolve()),
        "SYNCLIP_WORK_DIR": str(work),
        "SYNCLIP_REQUEST_LOG": "",
        "BENTOML_HOME": str(home),
        "BENTOML_DO_NOT_TRACK": "true",
    }
    command = [str(bentoml), "serve", "serving.service:LipSync", "--host", "127.0.0.1", "--port", str(port)]
    load_before = os.getloadavg()
    started = time.perf_counter()
    server = subprocess.Popen(
        command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    runs = []
    try:
        while True:
            if server.poll() is not None:
                raise SystemExit(f"the server exited with {server.returncode} before it was ready")
            try:
                if requests.get(f"{url}/readyz", timeout=2).status_code == 200:
                    break
            except (requests.ConnectionError, requests.Timeout):
                pass
            time.sleep(0.25)
        ready_s = time.perf_counter() - started
        for steps in args.steps:
            for _ in range(args.repeats):
                run = request(url, args.video, speech, steps, args.timeout)
                assert run["status"] == 200, run
                runs.append(
                    {"steps": steps, **run, "frames_per_second": round(run["frames"] / run["seconds"], 2)}
                )
                print(json.dumps(runs[-1]))
        steps = args.steps[0]
        with ThreadPoolExecutor(args.concurrent) as pool:
            begin = time.perf_counter()
            answers = list(
                pool.map(
                    lambda _: request(url, args.video, speech, steps, args.timeout), range(args.concurrent)
                )
            )
            load_seconds = time.perf_counter() - begin
        statuses = [answer["status"] for answer in answers]
        load = {
            "requests": args.concurrent,
            "seconds": round(load_seconds, 2),
            "answered": {str(status): statuses.count(status) for status in sorted(set(statuses), key=str)},
            "all_200_or_503": all(status in (200, 503) for status in statuses),
            "ok_seconds_median": float(
                np.median([a["seconds"] for a in answers if a["status"] == 200] or [0])
            ),
            "ok_seconds_max": max([a["seconds"] for a in answers if a["status"] == 200] or [0]),
            "busy_seconds_max": max([a["seconds"] for a in answers if a["status"] == 503] or [0]),
            "retry_after": sorted({a["retry_after"] for a in answers if "retry_after" in a}),
        }
        print(json.dumps(load))
        soak_runs, rss = [], {}
        for index in range(1, args.sequential + 1):
            soak_runs.append(request(url, args.video, speech, steps, args.timeout))
            assert soak_runs[-1]["status"] == 200, soak_runs[-1]
            if index in (10, args.sequential):
                rss[index] = memory_mib(server.pid, "VmRSS")
            if index % 25 == 0:
                print(f"soak: {index} requests, last {soak_runs[-1]['seconds']} s")
        time.sleep(2)  # a request's folder goes after its answer is sent
        left = files_in(work)
        soak = {
            "requests": args.sequential,
            "seconds_median": float(np.median([run["seconds"] for run in soak_runs])),
            "rss_mib_after_10": round(rss[10], 1),
            "rss_mib_after_last": round(rss[args.sequential], 1),
            "rss_growth_percent": round(100 * (rss[args.sequential] / rss[10] - 1), 2),
            "files_left": left,
        }
        print(json.dumps(soak))
        metrics = requests.get(f"{url}/metrics", timeout=30).text
        counters = [
            line for line in metrics.splitlines() if line.startswith("synclip_") and "_created" not in line
        ]
        peak = memory_mib(server.pid)
    finally:
        server.terminate()
        server.wait(timeout=60)
    result = {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "load_before": load_before,
            "load_after": os.getloadavg(),
        },
        "video": str(args.video),
        "audio": f"{args.audio} (first {args.seconds:g} s)",
        "model": str(args.model),
        "ready_seconds": round(ready_s, 2),
        "server_peak_rss_mib": round(peak, 1),
        "runs": runs,
        "load": load,
        "soak": soak,
        "metrics": counters,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    print(f"{args.out}: ready in {ready_s:.1f} s, server peak {peak:.0f} MiB")
    if not load["all_200_or_503"]:
        raise SystemExit(f"load: an answer other than 200 or 503: {load['answered']}")
    if soak["rss_growth_percent"] >= 5 or left:
        raise SystemExit(f"soak: RSS grew {soak['rss_growth_percent']} %, files left: {left[:5]}")


if __name__ == "__main__":
    main()
