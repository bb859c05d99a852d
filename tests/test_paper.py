"""The papers' instruments put together: LatentSync's auxiliary weights imported, `synclip sync-score
--judge syncnet-v2`, and the `evaluate` stage writing Sync-C, Sync-D, FVD, FID and LPIPS, or why not."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from fidelity_inputs import save_script, tiny_i3d
from s3fd_inputs import SEED as S3FD_SEED
from seeded_weights import seeded_state, shapes_of
from test_eval import params, tiny_package  # noqa: F401 (fixtures, used by name)
from typer.testing import CliRunner

from synclip.artifacts import save_syncnet
from synclip.cli import app
from synclip.config import load_params
from synclip.constants import AUDIO_SAMPLE_RATE, SAMPLES_PER_FRAME, VIDEO_FPS
from synclip.errors import UserError
from synclip.eval.auxiliary import SOURCES_FILE, check_auxiliary, import_auxiliary
from synclip.eval.fidelity import FidInception, FidInceptionConfig
from synclip.eval.paper import SETTINGS, load_paper_instruments, locate
from synclip.eval.report import evaluate_stage
from synclip.inference.latentsync import AUXILIARY_FILES
from synclip.media.io import VideoWriter
from synclip.nn.s3fd import S3FDConfig, S3FDNet
from synclip.nn.syncnet import StableSyncNet, syncnet_config
from synclip.nn.syncnet_v2 import SyncNetV2, SyncNetV2Config

ROOT = Path(__file__).resolve().parents[1]
FACE = ROOT / "tests" / "fixtures" / "astronaut_face.png"

pytestmark = pytest.mark.usefixtures("one_thread")


def write_syncnet_v2(path: Path, seed: int = 11) -> Path:
    """syncnet_v2.model as published: a plain state dict, torch.save'd."""
    torch.save(seeded_state(shapes_of(SyncNetV2(SyncNetV2Config())), seed), path)
    return path


def write_s3fd(path: Path) -> Path:
    torch.save(seeded_state(shapes_of(S3FDNet(S3FDConfig())), S3FD_SEED), path)
    return path


def write_vgg16_trunk(path: Path) -> Path:
    """torchvision's vgg16 state dict, its convolutional trunk only (`features.*`, 59 MB of the 528): all
    that LPIPS reads of `vgg16-397923af.pth`."""
    from torchvision.models import vgg16

    trunk = {k: v for k, v in shapes_of(vgg16(weights=None)).items() if k.startswith("features.")}
    torch.save(seeded_state(trunk, 5), path)
    return path


def write_fid_inception(path: Path) -> Path:
    torch.save(seeded_state(shapes_of(FidInception(FidInceptionConfig())), 3), path)
    return path


@pytest.fixture(scope="module")
def auxiliary(tmp_path_factory) -> Path:
    """LatentSync's auxiliary/ folder with test-made files in the published formats (no VGG16: 528 MB),
    and one file synclip does not use."""
    folder = tmp_path_factory.mktemp("auxiliary")
    write_syncnet_v2(folder / "syncnet_v2.model")
    write_s3fd(folder / "sfd_face.pth")
    save_script(tiny_i3d(), folder / "i3d_torchscript.pt")
    (folder / "koniq_pretrained.pkl").write_bytes(b"hyperIQA")
    return folder


# --- the auxiliary import ------------------------------------------------------------------------


def test_auxiliary_files_are_loaded_then_copied_whole(auxiliary, tmp_path, caplog):
    out = tmp_path / "models" / "auxiliary"
    with caplog.at_level(logging.INFO):
        settings = import_auxiliary(auxiliary, out)
    assert settings == {
        "pretrained.syncnet_v2": str(out / "syncnet_v2.model"),
        "pretrained.s3fd": str(out / "sfd_face.pth"),
        "pretrained.i3d": str(out / "i3d_torchscript.pt"),
    }
    assert "koniq_pretrained.pkl" in caplog.text  # listed as not used, not silently dropped
    assert "vgg16-397923af.pth" in caplog.text  # missing: its instrument stays off
    sources = json.loads((out / SOURCES_FILE).read_text())
    assert set(sources) == {"syncnet_v2.model", "sfd_face.pth", "i3d_torchscript.pt"}
    assert sorted(p.name for p in out.iterdir()) == sorted([*sources, SOURCES_FILE])
    # a second import replaces the folder whole and leaves nothing beside it
    (auxiliary.parent / "only").mkdir()
    shutil.copy(auxiliary / "syncnet_v2.model", auxiliary.parent / "only")
    import_auxiliary(auxiliary.parent / "only", out)
    assert sorted(p.name for p in out.iterdir()) == [SOURCES_FILE, "syncnet_v2.model"]
    assert sorted(p.name for p in out.parent.iterdir()) == ["auxiliary"]


def test_a_broken_auxiliary_file_is_named_and_nothing_is_written(auxiliary, tmp_path):
    src = Path(shutil.copytree(auxiliary, tmp_path / "aux"))
    data = (src / "sfd_face.pth").read_bytes()
    (src / "sfd_face.pth").write_bytes(data[: len(data) // 2])
    out = tmp_path / "out"
    with pytest.raises(Exception, match=r"sfd_face\.pth") as error:
        import_auxiliary(src, out)
    assert "\n" not in str(error.value)
    assert not out.exists()
    assert list(tmp_path.iterdir()) == [src]  # no staging folder left behind
    (tmp_path / "empty").mkdir()
    with pytest.raises(Exception, match=r"none of syncnet_v2\.model"):
        check_auxiliary(tmp_path / "empty")


def test_the_cli_imports_the_auxiliary_files_from_the_hub_beside_the_model(auxiliary, tmp_path, monkeypatch):
    import huggingface_hub
    from latentsync_snapshot import make_snapshot

    snapshot = make_snapshot(tmp_path / "snapshot", "1.6", seed=0)
    shutil.copytree(auxiliary, Path(snapshot["src"]) / "auxiliary")
    calls = []

    def fake_snapshot_download(**kwargs):
        calls.append(kwargs)
        return str(snapshot["src"])

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot_download)
    out, aux_out = tmp_path / "model", tmp_path / "aux"
    args = ["weights", "import-latentsync", "--from-hub", "--version", "1.6", "-o", str(out)]
    args += ["--vae", str(snapshot["vae"]), "--unet-config", str(snapshot["unet_config"])]
    args += [
        "--syncnet-config",
        str(snapshot["syncnet_config"]),
        "--auxiliary",
        "--auxiliary-out",
        str(aux_out),
    ]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert calls[0]["allow_patterns"][3:] == [f"auxiliary/{name}" for name in AUXILIARY_FILES]
    assert f"pretrained.syncnet_v2: {aux_out / 'syncnet_v2.model'}" in result.output
    assert (out / "pipeline.json").is_file()
    assert (aux_out / "i3d_torchscript.pt").is_file()

    # a broken auxiliary file stops the import before the model is written
    broken = tmp_path / "broken"
    shutil.copytree(snapshot["src"], broken)
    (broken / "auxiliary" / "syncnet_v2.model").write_bytes(b"not a torch file")
    args = ["weights", "import-latentsync", str(broken), "--version", "1.6", "-o", str(tmp_path / "model2")]
    args += ["--vae", str(snapshot["vae"]), "--unet-config", str(snapshot["unet_config"])]
    args += [
        "--syncnet-config",
        str(snapshot["syncnet_config"]),
        "--auxiliary",
        "--auxiliary-out",
        str(tmp_path / "a2"),
    ]
    result = CliRunner().invoke(app, args)
    assert isinstance(result.exception, UserError)  # `synclip` prints it as one line, exit code 2
    assert "syncnet_v2.model" in str(result.exception)
    assert not (tmp_path / "model2").exists()
    assert not (tmp_path / "a2").exists()


# --- instruments on and off ----------------------------------------------------------------------


def test_an_instrument_is_off_with_its_reason_or_on_with_its_sha256(tmp_path):
    resolved = load_params(ROOT / "params.yaml")
    off = {name: locate(resolved.pretrained, name) for name in SETTINGS}
    assert not any(item.on for item in off.values())
    assert off["sync"].describe()["status"].startswith("disabled: pretrained.syncnet_v2 is null")
    missing = load_params(ROOT / "params.yaml", [f"pretrained.i3d={tmp_path / 'nope.pt'}"])
    assert (
        locate(missing.pretrained, "fvd").reason == f"pretrained.i3d: {tmp_path / 'nope.pt'} does not exist"
    )
    path = write_syncnet_v2(tmp_path / "syncnet_v2.model")
    on = locate(load_params(ROOT / "params.yaml", [f"pretrained.syncnet_v2={path}"]).pretrained, "sync")
    assert on.on
    assert len(on.sha256) == 64


def face_video(path: Path, frames: int = 60, size: int = 384) -> Path:
    """A real face (about 140 px: syncnet_python tracks faces over 100 px) drifting a few px, with a
    tone that swells at 4 Hz, at 25 fps."""
    face = cv2.cvtColor(cv2.imread(str(FACE)), cv2.COLOR_BGR2RGB)
    face = cv2.resize(face, (size - 32, size - 32), interpolation=cv2.INTER_AREA)
    t = np.arange(frames * SAMPLES_PER_FRAME) / AUDIO_SAMPLE_RATE
    tone = (0.3 * np.sin(2 * np.pi * 220 * t) * (0.5 + 0.5 * np.sin(2 * np.pi * 4 * t))).astype(np.float32)
    with VideoWriter(path, size, size, VIDEO_FPS, audio_rate=AUDIO_SAMPLE_RATE) as writer:
        for index in range(frames):
            canvas = np.full((size, size, 3), 90, np.uint8)
            dx = 16 + int(round(6 * np.sin(index / 9)))
            canvas[16 : size - 16, dx : dx + size - 32] = face
            writer.write_frame(canvas)
            writer.write_audio(tone[None, index * SAMPLES_PER_FRAME : (index + 1) * SAMPLES_PER_FRAME])
    return path


@pytest.mark.pretrained
def test_sync_score_with_syncnet_v2_on_mediapipe_crops(pretrained_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)  # models/pretrained/face_landmarker.task, as params.yaml names it
    video = face_video(tmp_path / "face.mp4")
    weights = write_syncnet_v2(tmp_path / "syncnet_v2.model")
    runner = CliRunner()
    result = runner.invoke(
        app,
        [
            "sync-score",
            str(video),
            "--judge",
            "syncnet-v2",
            "--json",
            "-S",
            f"pretrained.syncnet_v2={weights}",
        ],
    )
    assert result.exit_code == 0, result.output
    score = json.loads(result.stdout)
    assert score["face_tracks"] == 1
    assert score["crops"] == "mediapipe"
    assert score["tracks"][0]["windows"] == 60 - 5
    assert np.isfinite(score["sync_c"])
    assert score["sync_d"] > 0
    assert (
        score["instruments"]["sync"]["sha256"]
        == locate(
            load_params(ROOT / "params.yaml", [f"pretrained.syncnet_v2={weights}"]).pretrained, "sync"
        ).sha256
    )

    result = runner.invoke(app, ["sync-score", str(video), "--judge", "syncnet-v2"])
    assert isinstance(result.exception, UserError)
    assert "pretrained.syncnet_v2 is null" in str(result.exception)
    short = face_video(tmp_path / "short.mp4", frames=40)
    result = runner.invoke(
        app, ["sync-score", str(short), "--judge", "syncnet-v2", "-S", f"pretrained.syncnet_v2={weights}"]
    )
    assert isinstance(result.exception, UserError)
    assert "no face track of more than 50 frames" in str(result.exception)


# --- the evaluate stage --------------------------------------------------------------------------


@pytest.mark.pretrained
@pytest.mark.slow
def test_evaluate_writes_the_papers_numbers_or_why_not(
    processed,
    corpus,
    pretrained_dir,
    tiny_package,  # noqa: F811
    tmp_path,
    monkeypatch,
):
    monkeypatch.chdir(ROOT)
    folder, _manifest, _ = processed
    syncnet = save_syncnet(
        tmp_path / "syncnet", StableSyncNet(syncnet_config(load_params(ROOT / "params.yaml").syncnet))
    )
    weights = {
        "syncnet_v2": write_syncnet_v2(tmp_path / "syncnet_v2.model"),
        "i3d": save_script(tiny_i3d(), tmp_path / "i3d_torchscript.pt"),
        "fid_inception": write_fid_inception(tmp_path / "pt_inception.pth"),
        "lpips_vgg": write_vgg16_trunk(tmp_path / "vgg16-397923af.pth"),
    }
    # two identities of the train split (the test corpus has one clean test clip), 2 s each (a face track
    # must hold more than 50 frames; FVD needs frames 20–35)
    run = ["evaluate.split=train", "evaluate.clips=2", "evaluate.max_frames=52", "evaluate.steps=1"]
    run += ["evaluate.samples=0", "evaluate.sheet_frames=2"]
    resolved = load_params(
        ROOT / "params.yaml", run + [f"pretrained.{key}={path}" for key, path in weights.items()]
    )
    out = tmp_path / "eval"
    evaluate_stage(folder, corpus[0], tiny_package, syncnet, out, resolved, torch.device("cpu"))

    metrics = json.loads((out / "metrics.json").read_text())
    paper = metrics["paper"]
    for name in ("sync", "fvd", "fid", "lpips"):
        assert paper["instruments"][name]["status"] == "on"
        assert len(paper["instruments"][name]["sha256"]) == 64
    assert paper["instruments"]["crops"]["status"].startswith("disabled: pretrained.s3fd is null")
    assert paper["instruments"]["crops"]["used"] == "mediapipe"
    for protocol in ("reconstruction", "dubbing"):
        model = metrics[protocol]["model"]
        assert model["sync_d"] > 0
        assert model["sync_c"] is not None
        assert paper[protocol]["fvd"] >= 0
        assert paper[protocol]["fid"] >= 0
        assert 0 < paper[protocol]["lpips"] < 1
    assert metrics["reconstruction"]["model"]["lpips_lower"] > 0  # synclip's own lower-half LPIPS, same VGG
    summary = (out / "summary.md").read_text()
    assert "| instrument | weights | sha256 | status |" in summary
    assert weights["syncnet_v2"].name in summary

    assert "| target | value | 95 % interval | bar | met |" in summary
    assert metrics["headline"]["dubbing"]["lse_c"]["clips"] == 2

    # no weights: the same stage says what is off and why, and writes no paper numbers; without the
    # photo check its sheet (a DVC output) says it is off
    bare = load_params(ROOT / "params.yaml", [*run, "evaluate.photo=false"])
    evaluate_stage(folder, corpus[0], tiny_package, syncnet, out, bare, torch.device("cpu"))
    metrics = json.loads((out / "metrics.json").read_text())
    assert "photo" not in metrics
    assert (out / "photo_sheet.png").stat().st_size > 0
    assert all(item["status"].startswith("disabled: ") for item in metrics["paper"]["instruments"].values())
    assert metrics["protocol"]["lpips"].startswith("disabled: ")
    assert "sync_c" not in metrics["dubbing"]["model"]
    assert metrics["paper"]["dubbing"] == {"fvd": None, "fid": None, "lpips": None}


def test_every_instrument_loads_the_files_it_names(auxiliary, tmp_path):
    resolved = load_params(
        ROOT / "params.yaml",
        [
            f"pretrained.syncnet_v2={auxiliary / 'syncnet_v2.model'}",
            f"pretrained.s3fd={auxiliary / 'sfd_face.pth'}",
            f"pretrained.i3d={auxiliary / 'i3d_torchscript.pt'}",
            f"pretrained.fid_inception={write_fid_inception(tmp_path / 'fid.pth')}",
        ],
    )
    loaded = load_paper_instruments(resolved.pretrained, "unused.task", torch.device("cpu"))
    assert isinstance(loaded.syncnet, SyncNetV2)
    assert isinstance(loaded.s3fd, S3FDNet)
    assert isinstance(loaded.inception, FidInception)
    assert loaded.i3d is not None
    assert loaded.lpips is None
    assert loaded.describe()["crops"]["used"] == "s3fd"
    (tmp_path / "bad.model").write_bytes(b"junk")
    broken = load_params(ROOT / "params.yaml", [f"pretrained.syncnet_v2={tmp_path / 'bad.model'}"])
    with pytest.raises(Exception, match=r"bad\.model"):  # a file that is there but broken is an error
        load_paper_instruments(broken.pretrained, "unused.task", torch.device("cpu"))
