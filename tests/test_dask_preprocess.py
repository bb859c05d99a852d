"""Preprocessing on a Dask cluster of 2 worker processes: the one-process outputs, no finished source lost."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import signal
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import pandas as pd
import pytest

from synclip.config import ConfigError, load_params
from synclip.data import cluster as dask_cluster
from synclip.data.cluster import SCHEDULER_ENV, dask_address
from synclip.data.preprocess import Job, dask_task_key, preprocess_corpus
from synclip.errors import UserError

pytestmark = [pytest.mark.pretrained, pytest.mark.slow]

# Three clean sources, a shot cut and three rejects: clips and reject rows of every kind, ~20 s of work
KINDS = ["clean", "clean", "clean", "shot_cut", "two_faces", "no_audio", "silent_audio"]


@pytest.fixture(scope="module")
def params(root):
    return load_params(root / "params.yaml").preprocess


@pytest.fixture(scope="module")
def model(pretrained_dir):
    return pretrained_dir / "face_landmarker.task"


@pytest.fixture(scope="module")
def raw(corpus, tmp_path_factory):
    """A copy of some of the small corpus's sources with their sidecars: the folder and {file name: kind}."""
    source, _, gts = corpus
    folder = tmp_path_factory.mktemp("dask_raw")
    by_kind: dict[str, list[str]] = {}
    for gt in sorted(gts.values(), key=lambda gt: gt["file"]):
        by_kind.setdefault((gt["defect"] or {}).get("kind", "clean"), []).append(gt["file"])
    names = [by_kind[kind].pop(0) for kind in KINDS]
    for name in names:
        shutil.copy(source / name, folder / name)
        shutil.copy((source / name).with_suffix(".json"), folder / Path(name).with_suffix(".json"))
    return folder, dict(zip(names, KINDS, strict=True))


@pytest.fixture(scope="module")
def reference(raw, params, model, tmp_path_factory):
    """The single-machine run in this process (workers=1): (folder, manifest, rejects)."""
    out = tmp_path_factory.mktemp("one_process")
    manifest, rejects = preprocess_corpus(raw[0], out, params, model, workers=1)
    assert len(manifest) >= 4  # every kind of outcome is compared
    assert len(rejects) >= 3
    return out, manifest, rejects


@pytest.fixture(scope="module")
def cluster():
    """A LocalCluster of 2 worker processes with one thread each, and a client of it."""
    from distributed import Client, LocalCluster

    with (
        LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0") as local,
        Client(local) as client,
    ):
        yield client


def recorder(folder: Path):
    """A worker plugin that appends a line per preprocess task it starts or finishes to `folder/<pid>.jsonl`.

    A class made here, not at module level, so cloudpickle ships it by value to the worker processes.
    """
    from distributed.diagnostics.plugin import WorkerPlugin

    class Recorder(WorkerPlugin):
        def transition(self, key, start, finish, **kwargs):
            if isinstance(key, str) and key.startswith("preprocess-") and finish in ("executing", "memory"):
                line = {"key": key, "state": finish, "pid": os.getpid(), "time": time.time()}
                with (folder / f"{os.getpid()}.jsonl").open("a") as records:
                    records.write(json.dumps(line) + "\n")

    return Recorder()


@pytest.fixture
def recorded(cluster, tmp_path):
    """The preprocess tasks the workers run from now on: a function giving {source: [pid per run]}."""
    folder = tmp_path / "records"
    folder.mkdir()
    cluster.register_plugin(recorder(folder), name="recorder")

    def runs(state: str = "executing") -> dict[str, list[int]]:
        """{source: [pid, ...]} in the order the tasks reached `state`."""
        records = [
            json.loads(line) for file in folder.glob("*.jsonl") for line in file.read_text().splitlines()
        ]
        found: dict[str, list[int]] = {}
        for record in sorted(records, key=lambda record: record["time"]):
            if record["state"] == state:
                found.setdefault(record["key"].split("-", 2)[2], []).append(record["pid"])
        return found

    return runs


def digests(folder: Path) -> dict[str, str]:
    return {
        p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def assert_same_outputs(out: Path, manifest, rejects, reference) -> None:
    ref_out, ref_manifest, ref_rejects = reference
    pd.testing.assert_frame_equal(manifest, ref_manifest, check_exact=True)
    pd.testing.assert_frame_equal(rejects, ref_rejects, check_exact=True)
    assert digests(out) == digests(ref_out)  # clips, .npz, manifest.parquet, rejects.csv, .work records


def test_a_dask_run_equals_the_one_process_run_and_both_workers_ran_sources(
    raw, reference, cluster, recorded, params, model, tmp_path, monkeypatch
):
    monkeypatch.setenv(SCHEDULER_ENV, cluster.scheduler.address)  # params.yaml says scheduler: local
    out = tmp_path / "dask"
    manifest, rejects = preprocess_corpus(raw[0], out, params, model)
    assert_same_outputs(out, manifest, rejects, reference)
    runs = recorded()
    assert sorted(runs) == sorted(raw[1])
    assert all(len(pids) == 1 for pids in runs.values()), runs  # one task per source, each run once
    worker_pids = set(cluster.run(os.getpid).values())
    assert {pid for pids in runs.values() for pid in pids} == worker_pids, (runs, worker_pids)
    assert len(worker_pids) == 2
    assert os.getpid() not in worker_pids


def test_a_worker_killed_mid_run_loses_no_finished_source(
    raw, reference, cluster, recorded, params, model, tmp_path, monkeypatch
):
    """SIGKILL a worker that finished a source and now runs another: Dask reruns only the one it ran."""
    monkeypatch.setenv(SCHEDULER_ENV, cluster.scheduler.address)
    out = tmp_path / "killed"
    outcome: dict = {}

    def run():
        try:
            outcome["result"] = preprocess_corpus(raw[0], out, params, model)
        except BaseException as error:  # re-raised in the test's thread below
            outcome["error"] = error

    def held(dask_scheduler) -> list[str]:  # the tasks the scheduler still knows of (a client wants them)
        return [key for key in dask_scheduler.tasks if isinstance(key, str)]

    thread = threading.Thread(target=run)
    thread.start()
    deadline = time.monotonic() + 120
    while True:
        finished = {p.name for p in (out / ".work").glob("*.json") if not p.name.startswith(".")}
        wanted = {
            key.split("-", 2)[2] for key in cluster.run_on_scheduler(held) if key.startswith("preprocess-")
        }
        done = recorded("memory")
        # a worker whose finished result the client has taken (the scheduler forgot the task) and that
        # runs another source now: killing it loses a finished result and a running task
        taken = {pids[-1]: source for source, pids in done.items() if source not in wanted}
        running = {source: pids[-1] for source, pids in recorded().items() if source not in done}
        running = {source: pid for source, pid in running.items() if pid in taken}
        if running:
            break
        assert thread.is_alive(), (
            "the run ended before a worker finished a source and began another",
            outcome,
        )
        assert time.monotonic() < deadline
        time.sleep(0.05)
    kept = [
        f"clips/{row['clip']}{suffix}"
        for name in finished
        for row in json.loads((out / ".work" / name).read_text())["rows"]
        for suffix in (".mp4", ".npz")
    ]
    stamps = {
        name: ((out / name).stat().st_ino, (out / name).stat().st_mtime_ns)
        for name in [*(f".work/{name}" for name in finished), *kept]
    }
    victim, pid = next(iter(running.items()))
    lost = taken[pid]  # finished on the process killed now
    os.kill(pid, signal.SIGKILL)
    thread.join(timeout=180)
    assert not thread.is_alive()
    if "error" in outcome:
        raise outcome["error"]
    manifest, rejects = outcome["result"]
    assert_same_outputs(out, manifest, rejects, reference)
    # the sources finished before the kill: not run again, their records and clips never rewritten
    runs = recorded()
    before = {source for source in runs if f"{Path(source).stem}_s00.json" in finished}
    assert lost in before
    assert all(len(runs[source]) == 1 for source in before), (before, runs)
    for name, stamp in stamps.items():
        path = out / name
        assert (path.stat().st_ino, path.stat().st_mtime_ns) == stamp, name
    # the killed one ran again, on another worker process
    assert runs[victim][0] == pid, (victim, pid, runs)
    assert len(set(runs[victim])) == 2, (victim, pid, runs)


def test_a_task_dask_runs_again_reads_the_finished_record_and_a_worker_with_other_code_fails(
    raw, reference, params, model, monkeypatch
):
    """What the worker does first: no second processing of a recorded source, no silent key mismatch."""
    from synclip.data import preprocess

    out, manifest, _ = reference
    name = manifest["source"].iloc[0]
    job = Job(str(raw[0] / name), name, str(out), params, str(model))
    monkeypatch.setattr(preprocess, "process_source", lambda job: pytest.fail(f"{job.key} processed again"))
    key, rows, _ = preprocess._run_job_on_worker(job, preprocess.job_key(job))
    assert key == name
    assert [row["clip"] for row in rows] == list(manifest.loc[manifest["source"] == name, "clip"])
    with pytest.raises(UserError, match="other synclip code"):
        preprocess._run_job_on_worker(job, "0" * 16)


def test_scheduler_dask_without_an_address_starts_a_local_cluster_of_workers_processes(
    raw, reference, params, model, tmp_path, monkeypatch
):
    folder, kinds = raw
    cheap = tmp_path / "raw"
    cheap.mkdir()
    for name, kind in kinds.items():
        if kind in ("no_audio", "silent_audio"):  # rejected before any face detection: a cheap run
            shutil.copy(folder / name, cheap / name)
    seen: dict = {}
    connect = dask_cluster.connect

    @contextmanager
    def spying(address, workers):
        from distributed import get_task_stream

        with connect(address, workers) as client, get_task_stream(client) as stream:
            seen["workers"] = client.scheduler_info()["workers"]
            yield client
        seen["tasks"] = {task["key"]: task["worker"] for task in stream.data}

    monkeypatch.setattr(dask_cluster, "connect", spying)
    monkeypatch.delenv(SCHEDULER_ENV, raising=False)
    out = tmp_path / "out"
    dask = dataclasses.replace(params, scheduler="dask", dask_address="", workers=2)
    manifest, rejects = preprocess_corpus(cheap, out, dask, model)
    assert sorted(worker["nthreads"] for worker in seen["workers"].values()) == [1, 1]
    jobs = [Job(str(p), p.name, str(out), dask, str(model)) for p in sorted(cheap.iterdir())]
    assert set(seen["tasks"]) == {dask_task_key(job) for job in jobs}
    assert set(seen["tasks"].values()) <= set(seen["workers"])
    _, _, ref_rejects = reference
    expected = ref_rejects[ref_rejects["source"].isin([job.key for job in jobs])].reset_index(drop=True)
    pd.testing.assert_frame_equal(rejects, expected, check_exact=True)
    assert manifest.empty


def test_the_scheduler_comes_from_params_or_the_environment(params):
    assert dask_address("local", "", {}) is None
    assert dask_address("dask", "", {}) == ""
    assert dask_address("dask", "tcp://10.0.0.5:8786", {}) == "tcp://10.0.0.5:8786"
    assert dask_address("local", "", {SCHEDULER_ENV: "tcp://head:8786"}) == "tcp://head:8786"
    with pytest.raises(UserError, match="head:8786"):
        dask_address("local", "", {SCHEDULER_ENV: "head:8786"})
    with pytest.raises(ConfigError, match="scheduler dask"):
        dataclasses.replace(params, dask_address="tcp://head:8786").validate()
    with pytest.raises(ConfigError, match="tcp://host:8786"):
        dataclasses.replace(params, scheduler="dask", dask_address="head").validate()
