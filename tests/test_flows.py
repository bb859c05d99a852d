"""The Prefect flows, run for real: over a small DVC repository, and deployed to a server and a worker."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from prefect.utilities.templating import apply_values
from test_drift import table
from test_serving import free_port, wait_until_ready
from test_store import bentoml_home

from synclip import store

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def prefect_env(home: Path) -> dict[str, str]:
    """A Prefect of its own: its home (database, settings) in a temporary folder, nothing reported out."""
    return {
        "PREFECT_HOME": str(home),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "DO_NOT_TRACK": "1",
        "DVC_NO_ANALYTICS": "1",
    }


def stop(process: subprocess.Popen) -> None:
    """SIGTERM, and SIGKILL if it has not exited 30 s later (a worker on a loaded machine can take that long)."""
    process.terminate()
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=30)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """`prefect server start` on a free loopback port; the environment that talks to it."""
    tmp = tmp_path_factory.mktemp("prefect")
    port = free_port()
    env = {**os.environ, **prefect_env(tmp / "home"), "PREFECT_API_URL": f"http://127.0.0.1:{port}/api"}
    log = (tmp / "server.log").open("w")
    process = subprocess.Popen(
        [str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
        env={**env, "PREFECT_UI_ENABLED": "false"},
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        wait_until_ready(process, f"http://127.0.0.1:{port}/api/health", tmp / "server.log")
        yield env
    finally:
        stop(process)
        log.close()


@pytest.fixture(scope="module")
def flows(server):
    """flows/retrain.py and flows/monitor.py, imported in this process with the server behind them."""
    saved = dict(os.environ)
    os.environ.update(server)
    modules = {}
    for name in ("retrain", "monitor"):
        spec = importlib.util.spec_from_file_location(f"synclip_flow_{name}", ROOT / "flows" / f"{name}.py")
        modules[name] = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(modules[name])
    yield modules
    os.environ.clear()
    os.environ.update(saved)


GATE = """import sys, yaml
rows = open("rows.txt").read().split()
need = yaml.safe_load(open("params.yaml"))["data_quality"]["min_clips"]
if len(rows) < need:
    print(f"1 of 1 expectations failed: clips: expect_table_row_count_to_be_between observed {len(rows)}")
    sys.exit(2)
open("gate.ok", "w").write(str(len(rows)))
"""
ARM = """import os, sys, time
start = time.time()
time.sleep(1.5)
open(sys.argv[1] + ".txt", "w").write(f"{start} {time.time()} {os.environ.get('OMP_NUM_THREADS')}")
"""
ASSEMBLE = """import json, os, shutil
os.makedirs("model", exist_ok=True)
shutil.copyfile("score.txt", "model/score.txt")
json.dump({"kind": "synclip-pipeline"}, open("model/pipeline.json", "w"))  # what marks a package
"""
# the model's LSE-C on 8 clips: the clips' own spread, the model's level and its sampling noise (seeded
# by the level: another model, other noise); the promoted model's copy scores exactly as it did
EVALUATE = """import argparse, csv, json, os, random
parser = argparse.ArgumentParser()
parser.add_argument("--model")
parser.add_argument("--out")
args = parser.parse_args()
level = float(open(os.path.join(args.model, "score.txt")).read())
clips, noise = random.Random(0), random.Random(str(level))
values = [clips.uniform(0.1, 0.5) + level - 0.25 + noise.gauss(0, 0.02) for _ in range(8)]
os.makedirs(args.out, exist_ok=True)
with open(os.path.join(args.out, "clips.csv"), "w", newline="") as f:
    rows = csv.writer(f)
    rows.writerow(["protocol", "clip", "audio_of", "variant", "frames", "lse_c", "silent_closed"])
    for i, value in enumerate(values):
        rows.writerow(["dubbing", f"c{i}", f"c{(i + 1) % 8}", "model", 100, value, 1.0])
summary = {"dubbing": {"model": {"lse_c": sum(values) / 8}}, "beats_baselines": {"lse_c": True}}
json.dump(summary, open(os.path.join(args.out, "metrics.json"), "w"))
"""


def stage(cmd: str, deps: list[str], outs: list[str], params: list[str] | None = None) -> dict:
    return {"cmd": cmd, "deps": deps, **({"params": params} if params else {}), "outs": outs}


@pytest.fixture
def repo(tmp_path):
    """A git + DVC repository shaped like synclip's: a gate stage, two arms, an evaluation with metrics."""
    repo = tmp_path / "repo"
    repo.mkdir()
    for name, text in {
        "gate.py": GATE,
        "arm.py": ARM,
        "assemble.py": ASSEMBLE,
        "evaluate.py": EVALUATE,
    }.items():
        (repo / name).write_text(text)
    (repo / "rows.txt").write_text("a b c\n")
    (repo / "score.txt").write_text("0.25\n")
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["data_quality"]["min_clips"] = 5
    params["promote"] = {
        "score": "dubbing.lse_c",
        "margin": 0.0,
        "required": ["beats_baselines.lse_c"],
        "guards": ["dubbing.silent_closed"],
        "photo_tolerance": 0.5,
        "photo_opening_tolerance": 0.2,
    }
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    shutil.copytree(ROOT / "params", repo / "params")
    pipeline = {
        "stages": {
            "validate": stage(
                "python gate.py", ["gate.py", "rows.txt"], ["gate.ok"], ["data_quality.min_clips"]
            ),
            "arm_a": stage("python arm.py a", ["arm.py", "gate.ok"], ["a.txt"]),
            "arm_b": stage("python arm.py b", ["arm.py", "gate.ok"], ["b.txt"]),
            "assemble": stage(
                "python assemble.py", ["assemble.py", "score.txt", "a.txt", "b.txt"], ["model"]
            ),
            "evaluate": {
                "cmd": "python evaluate.py --model model --out eval",
                "deps": ["evaluate.py", "model"],
                "outs": [{"eval/clips.csv": {"cache": False}}],
                "metrics": [{"eval/metrics.json": {"cache": False}}],
            },
        }
    }
    (repo / "dvc.yaml").write_text(yaml.safe_dump(pipeline, sort_keys=False))
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@example.com"]
    for command in (
        ["git", "init", "-q"],
        [str(BIN / "dvc"), "init", "-q"],
        ["git", "add", "-A"],
        [*git, "commit", "-q", "-m", "pipeline"],
    ):
        subprocess.run(command, cwd=repo, check=True, capture_output=True)
    return repo


@pytest.fixture
def store_home(tmp_path):
    """BentoML's model store in a temporary home: the flow imports what it promotes into it."""
    with bentoml_home(tmp_path / "bentoml") as home:
        yield home


@pytest.mark.slow
@pytest.mark.usefixtures("store_home")
def test_retrain_stops_at_the_gate_then_trains_side_by_side_and_promotes_only_a_clear_gain(flows, repo):
    retrain = flows["retrain"].retrain
    run = {"repo": str(repo), "arms": [["arm_a"], ["arm_b"]], "bentofile": None, "record": "promoted.json"}

    # 3 clips, the gate wants 5: the flow fails there and nothing trains
    state = retrain(**run, return_state=True)
    assert state.is_failed()
    with pytest.raises(Exception, match=r"(?s)dvc repro validate failed.*expect_table_row_count"):
        state.result()
    assert not (repo / "a.txt").exists()
    assert not (repo / "promoted.json").exists()

    (repo / "rows.txt").write_text("a b c d e f\n")
    outcome = retrain(**run)
    assert outcome["promoted"]
    assert outcome["reason"] == "first promotion"
    a, b = ((repo / f"{arm}.txt").read_text().split() for arm in ("a", "b"))
    assert float(a[0]) < float(b[1])
    assert float(b[0]) < float(a[1])
    assert a[2] == b[2] == "1"  # one thread each
    record = json.loads((repo / "promoted.json").read_text())
    first = record["score"]
    assert first == pytest.approx(
        json.loads((repo / "eval" / "metrics.json").read_text())["dubbing"]["model"]["lse_c"]
    )
    assert record["bento"] is None
    assert record["package"] == "promoted/model"
    assert (
        repo / "promoted" / "model" / "score.txt"
    ).read_text() == "0.25\n"  # the copy the next run compares with
    head = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True
    ).stdout.strip()
    assert record["revision"] == head + "+dirty"  # rows.txt and dvc.lock changed since the commit
    # the promoted copy is in BentoML's store too, labelled, and served
    first_tag = record["model_tag"]
    assert outcome["model_tag"] == first_tag == store.served()
    folder, _ = store.resolve(None)
    assert (folder / "score.txt").read_text() == "0.25\n"
    labels = store.get(first_tag).info.labels
    assert labels["revision"] == record["revision"]
    assert labels["params"] == store.params_hash(repo / "params.yaml")
    assert labels["score"] == f"{first:.4f}"

    # nothing changed: DVC reruns nothing; the promoted copy, re-scored, ties clip for clip
    trained = (repo / "a.txt").stat().st_mtime
    outcome = retrain(**run)
    assert not outcome["promoted"]
    assert "no clear gain" in outcome["reason"]
    assert "[+0.0000, +0.0000] on 8 clips" in outcome["reason"]
    assert "model_tag" not in outcome
    assert store.served() == first_tag
    assert (repo / "a.txt").stat().st_mtime == trained
    assert (repo / "promoted" / "rescored" / "clips.csv").is_file()

    # a slightly higher mean that the clips cannot tell from noise is refused …
    (repo / "score.txt").write_text("0.26\n")
    outcome = retrain(**run)
    assert not outcome["promoted"], outcome["reason"]
    assert outcome["score"] > first
    assert "no clear gain" in outcome["reason"]

    # … a clear gain is promoted; the promoted copy is replaced, only the model's stages reran
    (repo / "score.txt").write_text("0.35\n")
    outcome = retrain(**run)
    assert outcome["promoted"], outcome["reason"]
    assert outcome["reason"].startswith("a clear gain: dubbing.lse_c")
    assert (repo / "a.txt").stat().st_mtime == trained
    assert json.loads((repo / "promoted.json").read_text())["score"] == outcome["score"]
    assert (repo / "promoted" / "model" / "score.txt").read_text() == "0.35\n"
    assert store.served() == outcome["model_tag"] != first_tag
    assert (store.resolve(None)[0] / "score.txt").read_text() == "0.35\n"
    assert store.rollback() == first_tag  # `make rollback`
    assert (store.resolve(None)[0] / "score.txt").read_text() == "0.25\n"

    # the promoted model's copy gone: the flow says so instead of promoting blindly
    shutil.rmtree(repo / "promoted" / "model")
    (repo / "score.txt").write_text("0.45\n")
    state = retrain(**run, return_state=True)
    assert state.is_failed()
    with pytest.raises(Exception, match="the promoted model's copy is missing"):
        state.result()


@pytest.mark.slow
def test_drift_check_reports_and_fails_on_drift_when_asked(flows, tmp_path):
    drift_check = flows["monitor"].drift_check
    table(120, seed=0).to_parquet(tmp_path / "reference.parquet")
    table(40, seed=1).to_parquet(tmp_path / "alike.parquet")
    table(40, seed=2, darker=40, smaller=0.5, rate="8000").to_parquet(tmp_path / "moved.parquet")
    common = {"repo": str(ROOT), "reference": str(tmp_path / "reference.parquet"), "fail_on_drift": True}
    summary = drift_check(**common, current=str(tmp_path / "alike.parquet"), out=str(tmp_path / "alike"))
    assert not summary["dataset_drift"]
    state = drift_check(
        **common, current=str(tmp_path / "moved.parquet"), out=str(tmp_path / "moved"), return_state=True
    )
    assert state.is_failed()
    with pytest.raises(Exception, match="face_width_fraction"):
        state.result()
    assert (tmp_path / "moved" / "index.html").is_file()


@pytest.mark.slow
def test_the_deployments_register_and_a_worker_runs_one(server, tmp_path):
    """`prefect deploy` of flows/prefect.yaml; a process worker picks up a run of drift-check."""
    env = server

    def prefect(*args: str, timeout: int = 180) -> str:
        done = subprocess.run(
            [str(BIN / "prefect"), *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout
        )
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        return done.stdout

    for pool in ("gpu", "cpu"):
        prefect("work-pool", "create", pool, "--type", "process")
    template = "flows/gpu-kubernetes.json"
    prefect("work-pool", "create", "gpu-k8s", "--type", "kubernetes", "--base-job-template", template)
    env = {**env, "SYNCLIP_GIT_URL": "https://git.example.com/synclip.git"}
    prefect("--no-prompt", "deploy", "--all", "--prefect-file", "flows/prefect.yaml")
    listed = prefect("deployment", "ls")
    for name in ("retrain/retrain-weekly", "retrain/retrain-kubernetes", "drift-check/drift-daily"):
        assert name in listed
    # the GPU job: the server kept the template, and the deployment's values fill it in
    pool = json.loads(prefect("work-pool", "inspect", "gpu-k8s", "--output", "json"))
    assert pool["type"] == "kubernetes"
    deployment = json.loads(
        prefect("deployment", "inspect", "retrain/retrain-kubernetes", "--output", "json")
    )
    assert (
        deployment["pull_steps"][0]["prefect.deployments.steps.git_clone"]["repository"]
        == env["SYNCLIP_GIT_URL"]
    )
    assert deployment["parameters"]["remote"] == "storage"
    variables = pool["base_job_template"]["variables"]["properties"]
    values = {name: spec["default"] for name, spec in variables.items() if "default" in spec}
    values |= deployment["job_variables"]
    job = apply_values(pool["base_job_template"]["job_configuration"], values)
    (container,) = job["job_manifest"]["spec"]["template"]["spec"]["containers"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert container["image"] == "synclip-worker:latest"
    assert container["envFrom"] == [{"secretRef": {"name": "synclip-dvc-remote"}}]
    assert container["env"] == {"OMP_NUM_THREADS": "8"}

    table(120, seed=0).to_parquet(tmp_path / "reference.parquet")
    table(40, seed=1).to_parquet(tmp_path / "current.parquet")
    parameters = {
        "reference": str(tmp_path / "reference.parquet"),
        "current": str(tmp_path / "current.parquet"),
        "out": str(tmp_path / "report"),
    }
    log = (tmp_path / "worker.log").open("w")
    worker = subprocess.Popen(
        [str(BIN / "prefect"), "worker", "start", "--pool", "cpu"],
        cwd=tmp_path,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        done = subprocess.run(
            [
                str(BIN / "prefect"),
                "deployment",
                "run",
                "drift-check/drift-daily",
                "--params",
                json.dumps(parameters),
                "--watch",
                "--watch-timeout",
                "240",
            ],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
    finally:
        stop(worker)
        log.close()
    assert done.returncode == 0, done.stdout[-2000:] + (tmp_path / "worker.log").read_text()[-3000:]
    assert "Completed" in done.stdout
    assert json.loads((tmp_path / "report" / "drift.json").read_text())["dataset_drift"] is False
