"""The repository's DVC remote (.dvc/config's `storage`) against a real S3 server on 127.0.0.1 (moto):
a clone pushes, a second clone pulls and then trains nothing; the retrain flow pulls and pushes.

Each repository here carries the project's own .dvc/config; only the endpoint and the credentials
are set per test, the way a machine sets them (.dvc/config.local or the environment).
"""

from __future__ import annotations

import json
import logging
import shutil
import socket
import subprocess
import threading
import urllib.request
from pathlib import Path

import boto3
import pytest
import test_flows
import yaml
from moto.server import ThreadedMotoServer
from test_flows import ROOT

from synclip import ops

# test_flows' fixtures: a Prefect server, the flows imported against it, its small synclip-shaped
# repository and a BentoML store in a temporary home
server, flows, repo, store_home = test_flows.server, test_flows.flows, test_flows.repo, test_flows.store_home

pytestmark = pytest.mark.slow

REMOTE = "storage"

# every stage appends its name to a counter outside the repository and writes random bytes into
# its outputs: a stage that runs again shows in the counter and in its outputs' contents
STAGE = """import os, sys
name, counter, out, *deps = sys.argv[1:]
os.makedirs(out, exist_ok=True)
with open(os.path.join(out, name + ".bin"), "wb") as f:
    for dep in deps:
        for folder, _, files in sorted(os.walk(dep)):
            for file in sorted(files):
                f.write(open(os.path.join(folder, file), "rb").read())
    f.write(os.urandom(4096))
with open(counter, "a") as f:
    f.write(name + "\\n")
"""


def dvc(repo: Path, *args: str) -> str:
    return ops.run_command([*ops.dvc_command(), *args], repo, "dvc " + " ".join(args))


def git(repo: Path, *args: str) -> None:
    subprocess.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@example.com", *args],
        cwd=repo,
        check=True,
        capture_output=True,
    )


def use_project_remote(repo: Path) -> None:
    """The project's .dvc/config (the remote `storage`, the default) in place of `dvc init`'s."""
    shutil.copyfile(ROOT / ".dvc" / "config", repo / ".dvc" / "config")


def bucket_and_prefix(repo: Path) -> tuple[str, str]:
    url = dvc(repo, "config", "--project", f"remote.{REMOTE}.url").strip()
    assert url.startswith("s3://"), url
    bucket, _, prefix = url.removeprefix("s3://").partition("/")
    return bucket, prefix


@pytest.fixture(scope="module")
def moto_endpoint():
    """moto's S3 server on a free loopback port, for the whole module."""
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # not a line per request
    moto = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    moto.start()
    host, port = moto.get_host_and_port()
    yield f"http://{host}:{port}"
    moto.stop()


@pytest.fixture
def s3(moto_endpoint, monkeypatch, tmp_path):
    """An empty S3 with the bucket of .dvc/config's remote, fake credentials in the environment (DVC's
    subprocesses inherit them); a boto3 client to look into it."""
    request = urllib.request.Request(f"{moto_endpoint}/moto-api/reset", method="POST")
    urllib.request.urlopen(request, timeout=30).close()
    for name, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        # nothing from this machine's AWS files (a profile, a region, an endpoint)
        "AWS_CONFIG_FILE": str(tmp_path / "no-aws-config"),
        "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "no-aws-credentials"),
    }.items():
        monkeypatch.setenv(name, value)
    for name in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_PROFILE", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    client = boto3.client("s3", endpoint_url=moto_endpoint)
    client.create_bucket(Bucket=bucket_and_prefix(ROOT)[0])
    return client


def keys(client, bucket: str) -> set[str]:
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket)
    return {item["Key"] for page in pages for item in page.get("Contents", [])}


def recorded_objects(repo: Path, prefix: str) -> set[str]:
    """The remote's keys for every cached output dvc.lock and the .dvc files record: each file, and
    each directory's listing (a `.dir` object) with the files it lists (read from `repo`'s cache)."""
    stages = yaml.safe_load((repo / "dvc.yaml").read_text())["stages"]
    uncached = {
        path
        for stage in stages.values()
        for kind in ("outs", "metrics", "plots")
        for out in stage.get(kind, [])
        if isinstance(out, dict)
        for path, flags in out.items()
        if flags.get("cache") is False
    }
    entries = [
        out
        for stage in yaml.safe_load((repo / "dvc.lock").read_text())["stages"].values()
        for out in stage.get("outs", [])
    ]
    for tracked in repo.glob("*.dvc"):
        if tracked.is_file():  # not the .dvc folder
            entries += yaml.safe_load(tracked.read_text())["outs"]
    cache = repo / ".dvc" / "cache" / "files" / "md5"
    hashes = set()
    for entry in entries:
        if entry["path"] in uncached:  # in git, not in the remote
            continue
        md5 = entry["md5"]
        hashes.add(md5)
        if md5.endswith(".dir"):
            hashes |= {item["md5"] for item in json.loads((cache / md5[:2] / md5[2:]).read_text())}
    return {f"{prefix}/files/md5/{md5[:2]}/{md5[2:]}" for md5 in hashes}


def files(folder: Path) -> dict[str, bytes]:
    return {
        str(path.relative_to(folder)): path.read_bytes()
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


def pipeline_repo(repo: Path, counter: Path) -> Path:
    """git + DVC: raw/ tracked by raw.dvc (like data.dvc), then prepare -> train -> model/, with a
    metrics file kept in git (cache: false, like the reports)."""
    repo.mkdir()
    (repo / "stage.py").write_text(STAGE)
    (repo / "raw").mkdir()
    for i in range(3):
        (repo / "raw" / f"clip{i}.txt").write_text(f"clip {i}\n" * 100)
    pipeline = {
        "stages": {
            "prepare": {
                "cmd": f"python stage.py prepare {counter} processed raw",
                "deps": ["stage.py", "raw"],
                "outs": ["processed"],
            },
            "train": {
                "cmd": f"python stage.py train {counter} model processed && echo '{{\"loss\": 0.5}}' > metrics.json",
                "deps": ["stage.py", "processed"],
                "outs": ["model"],
                "metrics": [{"metrics.json": {"cache": False}}],
            },
        }
    }
    (repo / "dvc.yaml").write_text(yaml.safe_dump(pipeline, sort_keys=False))
    git(repo, "init", "-q")
    dvc(repo, "init", "-q")
    use_project_remote(repo)
    dvc(repo, "add", "-q", "raw")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "pipeline")
    return repo


OUTPUTS = ("raw", "processed", "model")


def test_a_clone_pulls_what_another_pushed_and_trains_nothing(s3, moto_endpoint, tmp_path):
    counter = tmp_path / "runs.txt"
    a = pipeline_repo(tmp_path / "a", counter)
    bucket, prefix = bucket_and_prefix(a)
    dvc(a, "remote", "modify", "--local", REMOTE, "endpointurl", moto_endpoint)

    ops.pull(a, REMOTE)  # an empty remote: nothing to pull, and not an error (the first run anywhere)
    ops.repro(a)
    assert counter.read_text().split() == ["prepare", "train"]
    git(a, "add", "-A")
    git(a, "commit", "-q", "-m", "trained")
    assert not keys(s3, bucket)
    ops.push(a, REMOTE)
    pushed = keys(s3, bucket)
    assert pushed == recorded_objects(a, prefix)  # raw.dvc's files, processed/ and model/, listings
    assert len(pushed) == 4 + 2 + 2  # raw/: 3 files and its listing; processed/, model/: 1 and 1

    # the second clone: dvc.lock from git, no cache, no outputs; the remote from the project's config
    # and its endpoint from .dvc/config.local. A's cache is gone: the bucket is the only source.
    b = tmp_path / "b"
    git(tmp_path, "clone", "-q", str(a), str(b))
    assert not (b / "model").exists()
    assert not (b / ".dvc" / "cache").exists()
    shutil.rmtree(a / ".dvc" / "cache")
    dvc(b, "remote", "modify", "--local", REMOTE, "endpointurl", moto_endpoint)
    ops.pull(b, REMOTE)
    assert "Data and pipelines are up to date" in dvc(b, "status")
    output = ops.repro(b)
    assert "Running stage" not in output
    assert counter.read_text().split() == ["prepare", "train"]  # nothing ran again
    for name in OUTPUTS:
        assert files(b / name) == files(a / name), name  # a rerun would write other random bytes

    # with the bucket emptied a third clone gets nothing: B's outputs came through S3 alone
    s3.delete_objects(Bucket=bucket, Delete={"Objects": [{"Key": key} for key in pushed]})
    c = tmp_path / "c"
    git(tmp_path, "clone", "-q", str(a), str(c))
    dvc(c, "remote", "modify", "--local", REMOTE, "endpointurl", moto_endpoint)
    ops.pull(c, REMOTE)
    assert not any((c / name).exists() for name in OUTPUTS)
    with pytest.raises(ops.CommandError, match="missing"):
        dvc(c, "pull", "--remote", REMOTE)  # without --allow-missing DVC says what it lacks


@pytest.fixture
def listener():
    """A TCP port on 127.0.0.1 that counts the connections made to it and closes each at once."""
    sock = socket.create_server(("127.0.0.1", 0))
    count = {"connections": 0}

    def accept():
        while True:
            try:
                connection, _ = sock.accept()
            except OSError:  # closed at teardown
                return
            count["connections"] += 1
            connection.close()

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{sock.getsockname()[1]}", count
    sock.shutdown(socket.SHUT_RDWR)  # wakes the accept() (close alone does not)
    sock.close()
    thread.join(timeout=10)
    assert not thread.is_alive()


def test_only_push_pull_and_cloud_status_reach_the_default_remote(s3, listener, tmp_path, monkeypatch):
    """`storage` is the default remote, and `make demo`, CI and the flow without `remote` must work
    where it cannot be reached: repro, status, commit, checkout and metrics never connect to it."""
    endpoint, count = listener
    repo = pipeline_repo(tmp_path / "repo", tmp_path / "runs.txt")
    assert dvc(repo, "config", "core.remote").strip() == REMOTE
    dvc(repo, "remote", "modify", "--local", REMOTE, "endpointurl", endpoint)
    ops.repro(repo)
    dvc(repo, "status")
    dvc(repo, "metrics", "show")
    dvc(repo, "commit", "--force")
    dvc(repo, "checkout")
    # an output lost with the cache: repro rebuilds it, it does not look for it in the remote
    shutil.rmtree(repo / ".dvc" / "cache")
    shutil.rmtree(repo / "model")
    assert "Running stage 'train'" in ops.repro(repo)
    assert count["connections"] == 0

    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")  # fail fast
    with pytest.raises(ops.CommandError):
        dvc(repo, "status", "--cloud")
    assert count["connections"] > 0  # the listener would have seen any of the commands above


@pytest.mark.usefixtures("store_home")
def test_the_retrain_flow_pulls_before_and_pushes_after(
    flows, repo, s3, moto_endpoint, monkeypatch, tmp_path
):
    """A worker with an empty cache runs the flow with `remote`: it pulls what the last run pushed,
    trains nothing, rebuilds only what changed and pushes it."""
    # the endpoint from the environment this time, as a Prefect work pool would set it
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", moto_endpoint)
    a = repo
    use_project_remote(a)
    (a / "rows.txt").write_text("a b c d e f\n")  # past the gate
    ops.repro(a)
    ops.push(a, REMOTE)
    git(a, "add", "-A")
    git(a, "commit", "-q", "-m", "trained")
    bucket, prefix = bucket_and_prefix(a)
    pushed = recorded_objects(a, prefix)
    assert keys(s3, bucket) == pushed
    shutil.rmtree(a / ".dvc" / "cache")  # the bucket is the only source

    b = tmp_path / "worker"
    git(tmp_path, "clone", "-q", str(a), str(b))
    (b / "score.txt").write_text("0.35\n")  # a change to the model, not to the arms
    outcome = flows["retrain"].retrain(
        repo=str(b), arms=[["arm_a"], ["arm_b"]], bentofile=None, record="promoted.json", remote=REMOTE
    )
    assert outcome["promoted"]
    for arm in ("a.txt", "b.txt"):  # pulled, not trained again: the same start and end times
        assert (b / arm).read_bytes() == (a / arm).read_bytes()
    assert (b / "model" / "score.txt").read_text() == "0.35\n"
    assert recorded_objects(b, prefix) - pushed  # a new model …
    assert recorded_objects(b, prefix) <= keys(s3, bucket)  # … and the remote holds all of it
    assert "in sync" in dvc(b, "status", "--cloud")
