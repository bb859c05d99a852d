"""`dvc repro` of the real dvc.yaml in a fresh git + DVC repository, as a user runs it."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml
from fidelity_inputs import save_script, tiny_i3d
from test_hdtf import IDS, make_source, write_lists

from synclip.data.hdtf import TEST_LIST, TEST_ROOT_ENV

pytestmark = [pytest.mark.slow, pytest.mark.pretrained]


def run(args, cwd, env):
    result = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def test_dvc_repro_runs_every_stage_then_is_up_to_date(root, corpus, pretrained_dir, tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    for name in ("dvc.yaml", "params.yaml", "params", "pipelines", "stages", "src"):
        source = root / name
        (shutil.copytree if source.is_dir() else shutil.copy)(source, repo / name)
    (repo / "models").mkdir()
    shutil.copytree(pretrained_dir, repo / "models" / "pretrained")
    shutil.copytree(corpus[0], repo / "data" / "raw")
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["data_quality"]["min_clips"] = 3  # the test corpus is 13 short clips
    # every training stage, a few steps: the test is about the pipeline, not the models
    params["syncnet"].update(max_steps=4, val_every=2, checkpoint_every=2, val_pairs=8, batch_size=4)
    # a 4-step SyncNet is not confident of anything: keep every clip, uncorrected, for the next stages
    params["syncnet"].update(min_confidence=0.0, max_abs_offset=15, min_correction=16)
    params["vae"].update(
        max_steps=4,
        val_every=2,
        checkpoint_every=2,
        val_frames=8,
        scale_frames=16,
        test_stride=8,
        batch_size=2,
    )
    params["videomae"].update(max_steps=4, val_every=2, checkpoint_every=2, val_windows=4, batch_size=2)
    params["train_unet"]["stage1"].update(
        max_steps=4,
        val_every=2,
        checkpoint_every=2,
        val_windows=2,
        max_clips=4,
        sample_every=4,
        sample_frames=46,
        sample_steps=2,
    )
    params["train_unet"]["stage2"].update(max_steps=2, val_every=2, checkpoint_every=2, sample_every=2)
    # the test corpus has one clean test clip; two identities of the train split make a dubbing pair
    params["evaluate"].update(split="train", clips=2, max_frames=46, steps=2, samples=1, sheet_frames=3)
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))

    bin_dir = str(Path(sys.executable).parent)
    env = {
        **os.environ,
        "PATH": f"{bin_dir}:{os.environ['PATH']}",
        "DVC_NO_ANALYTICS": "1",
        "PYTHONPATH": str(repo / "src"),
    }
    dvc = str(Path(bin_dir) / "dvc")
    run(["git", "init", "-q"], repo, env)
    run([dvc, "init", "-q"], repo, env)
    output = run([dvc, "repro"], repo, env)
    assert "Running stage 'preprocess'" in output
    for stage in (
        "validate",
        "drift_reference",
        "train_syncnet",
        "sync_filter",
        "train_vae",
        "pretrain_videomae",
        "train_unet_stage1",
        "train_unet_stage2",
        "assemble",
        "evaluate",
    ):
        assert f"Running stage '{stage}'" in output

    metrics = json.loads((repo / "reports" / "preprocess" / "metrics.json").read_text())
    assert metrics["ground_truth"]["precision"] == metrics["ground_truth"]["recall"] == 1.0
    assert metrics["clips"] == len(pd.read_parquet(repo / "data" / "processed" / "manifest.parquet"))
    report = json.loads((repo / "reports" / "data_quality" / "validation.json").read_text())
    assert report["success"] is True
    assert "all expectations met" in (repo / "reports" / "data_quality" / "index.html").read_text()

    # the drift reference describes the training split's sources, one row each
    drift = json.loads((repo / "reports" / "drift" / "metrics.json").read_text())
    manifest = pd.read_parquet(repo / "data" / "processed" / "manifest.parquet")
    assert drift["reference_sources"] == manifest.loc[manifest["split"] == "train", "source"].nunique()
    assert (
        len(pd.read_parquet(repo / "reports" / "drift" / "reference.parquet")) == drift["reference_sources"]
    )
    # the test corpus has one test source: too few to test for drift, which the report says
    assert "a drift test needs 2" in drift["baseline"]["skipped"]
    assert (repo / "reports" / "drift" / "baseline" / "index.html").is_file()

    syncnet = json.loads((repo / "reports" / "syncnet" / "metrics.json").read_text())
    assert syncnet["steps"] == 4
    assert (repo / "models" / "syncnet" / "model.safetensors").is_file()
    synced = pd.read_parquet(repo / "data" / "synced" / "manifest.parquet")
    rejects = pd.read_csv(repo / "data" / "synced" / "rejects.csv")
    assert len(synced) + len(rejects) == metrics["clips"]
    assert {"audio_shift", "sync_offset", "sync_confidence"} <= set(synced.columns)

    stage1 = json.loads((repo / "reports" / "unet_stage1" / "metrics.json").read_text())
    assert stage1["steps"] == 4
    assert "val_audio_gain" in stage1
    stage2 = pd.read_csv(repo / "reports" / "unet_stage2" / "history.csv")
    assert stage2["step"].tolist() == [0, 2]  # opens with the stage-1 UNet's scores
    assert stage2["train_total"].isna().tolist() == [True, False]
    assert stage2["val_sync"].notna().all()
    stage2_metrics = json.loads((repo / "reports" / "unet_stage2" / "metrics.json").read_text())
    assert stage2_metrics["init"]["val_sync"] == stage2["val_sync"][0]

    # validation samples: stage 1 at its end, stage 2 at 0 (the stage-1 UNet: the same video) and 2
    def samples(stage):
        return sorted(p.name for p in (repo / "reports" / f"unet_stage{stage}" / "samples").iterdir())

    assert samples(1) == ["step_000004.mp4"]
    assert samples(2) == ["step_000000.mp4", "step_000002.mp4"]
    assert stage2["sample_lse_c"].notna().all()
    assert stage2["sample_lse_c"][0] == pytest.approx(stage1["sample_lse_c"], abs=1e-4)
    assert set(stage2_metrics["sample"]) == {"face", "audio", "frames", "input", "truth"}

    assert json.loads((repo / "models" / "synclip" / "pipeline.json").read_text())["steps"] == 20
    evaluation = json.loads((repo / "reports" / "eval" / "metrics.json").read_text())
    assert evaluation["protocol"]["clips"] == 2
    assert set(evaluation["dubbing"]) == {"model", "input", "closed", "truth"}
    assert (repo / "reports" / "eval" / "contact_sheet.png").stat().st_size > 0
    assert len(list((repo / "reports" / "eval" / "samples").glob("*.mp4"))) == 1

    shown = run([dvc, "metrics", "show", "--json"], repo, env)
    assert "ground_truth" in shown
    assert "val_accuracy" in shown
    again = run([dvc, "repro"], repo, env)
    assert "Running stage" not in again  # nothing changed, nothing runs

    # The HDTF pipeline (pipelines/hdtf/dvc.yaml) on stand-in sources (synclip data hdtf's test mode: no
    # network), evaluated with the papers' instruments from test-made weights in the published formats
    stand_in = tmp_path / "hdtf_root"
    write_lists(stand_in / "lists", {("WDA", "annotion_time"): "Beta.mp4 00:00-00:03"})
    (stand_in / "lists" / TEST_LIST).write_text("# test\nRD_Alpha_0\nWDA_Beta_0\n")
    (stand_in / "sources").mkdir()
    make_source(stand_in / "sources" / f"{IDS['Alpha']}.mp4")
    shutil.copyfile(stand_in / "sources" / f"{IDS['Alpha']}.mp4", stand_in / "sources" / f"{IDS['Beta']}.mp4")
    # one instrument on (Sync-C / D, FID and LPIPS with test-made weights: tests/test_paper.py), so the
    # report shows both kinds: FVD with its sha256, the others off with their reasons
    weights = repo / "models" / "auxiliary"
    weights.mkdir()
    save_script(tiny_i3d(), weights / "i3d_torchscript.pt")
    params["pretrained"]["i3d"] = str(weights / "i3d_torchscript.pt")
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    hdtf = run([dvc, "repro", "pipelines/hdtf/dvc.yaml"], repo, {**env, TEST_ROOT_ENV: str(stand_in)})
    for stage in ("download", "preprocess", "evaluate"):
        assert f"Running stage 'pipelines/hdtf/dvc.yaml:{stage}'" in hdtf
    assert "Running stage 'train_syncnet'" not in hdtf  # the models it evaluates are up to date
    report = json.loads((repo / "data" / "hdtf" / "hdtf_report.json").read_text())
    assert [item["clip"] for item in report["built"]] == ["RD_Alpha_0", "WDA_Beta_0"]
    evaluation = json.loads((repo / "reports" / "eval_hdtf" / "eval" / "metrics.json").read_text())
    assert evaluation["protocol"]["split"] == "all"
    assert evaluation["protocol"]["clips"] == 2
    assert evaluation["targets"] == {}  # no ground truth: SynthTalk's bar does not apply
    instruments = evaluation["paper"]["instruments"]
    assert instruments["fvd"]["status"] == "on"
    assert len(instruments["fvd"]["sha256"]) == 64
    assert instruments["sync"]["status"].startswith("disabled: pretrained.syncnet_v2 is null")
    assert evaluation["paper"]["reconstruction"]["fvd"] >= 0
