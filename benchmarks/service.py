"""Latency, throughput and peak memory of the BentoML service (`bentoml serve serving.service:LipSync`).

    python benchmarks/service.py --video data/raw/id002_00.mp4 --audio demo/speech.wav --steps 2 20 \
        --repeats 3 --out benchmarks/results/service.json

Starts the server on a free loopback port over `--model`, waits for /readyz (the start-up time),
posts the same request `--repeats` times per step count and records each latency and the frames it
returned. Peak memory is the largest VmHWM among the server's processes (BentoML runs the service in
a child of the CLI process), read after the last request. The load average is recorded with it.
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
from pathlib import Path

import requests

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


def peak_mib(pid: int) -> float:
    peaks = []
    for member in tree(pid):
        for line in Path(f"/proc/{member}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                peaks.append(int(line.split()[1]) / 1024)
    return max(peaks)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--video", type=Path, required=True)
    parser.add_argument("--audio", type=Path, required=True)
    parser.add_argument("--model", type=Path, default=ROOT / "models" / "synclip")
    parser.add_argument("--steps", type=int, nargs="+", default=[2])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "service.json")
    args = parser.parse_args()

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    bentoml = Path(sys.executable).parent / "bentoml"
    home = tempfile.mkdtemp(prefix="bentoml-home-")
    env = {
        **os.environ,
        "SYNCLIP_MODEL": str(args.model.resolve()),
        "BENTOML_HOME": home,
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
                with args.video.open("rb") as v, args.audio.open("rb") as a:
                    files = {
                        "video": (args.video.name, v, "video/mp4"),
                        "audio": (args.audio.name, a, "audio/wav"),
                    }
                    begin = time.perf_counter()
                    response = requests.post(
                        f"{url}/lipsync", files=files, data={"steps": str(steps)}, timeout=3600
                    )
                    seconds = time.perf_counter() - begin
                response.raise_for_status()
                summary = json.loads(response.headers["x-synclip-summary"])
                runs.append(
                    {
                        "steps": steps,
                        "seconds": round(seconds, 3),
                        "frames": summary["frames"],
                        "frames_per_second": round(summary["frames"] / seconds, 2),
                        "bytes_out": len(response.content),
                    }
                )
                print(json.dumps(runs[-1]))
        peak = peak_mib(server.pid)
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
        "audio": str(args.audio),
        "model": str(args.model),
        "ready_seconds": round(ready_s, 2),
        "server_peak_rss_mib": round(peak, 1),
        "runs": runs,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    print(f"{args.out}: ready in {ready_s:.1f} s, server peak {peak:.0f} MiB")


if __name__ == "__main__":
    main()
