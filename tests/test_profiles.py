"""The GPU profiles: `full` is LatentSync's size, `latentsync-1.x` extend it; a stage may start from given weights."""

from __future__ import annotations

import dataclasses
import json
import shutil
import subprocess
import sys

import pytest
import torch
import yaml
from conftest import tiny_whisper_folder

from synclip.artifacts import load_unet, save_unet
from synclip.config import ConfigError, load_params
from synclip.errors import UserError
from synclip.nn.unet import UNet3DConditionModel, unet_config
from synclip.train.unet import unet_stage

WHISPER_TINY_WIDTH = 384  # LatentSync's cross_attention_dim: Whisper tiny's d_model


@pytest.fixture
def params_file(root, tmp_path):
    shutil.copy(root / "params.yaml", tmp_path / "params.yaml")
    shutil.copytree(root / "params", tmp_path / "params")
    return tmp_path / "params.yaml"


def test_params_show_full_prints_latentsyncs_unet_at_256_px(params_file):
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "synclip",
            "params",
            "show",
            "--params",
            str(params_file),
            "--profile",
            "full",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    shown = yaml.safe_load(result.stdout)
    assert shown["unet"]["block_out_channels"] == [320, 640, 1280, 1280]
    assert shown["unet"]["down_block_types"] == ["CrossAttnDownBlock3D"] * 3 + ["DownBlock3D"]
    assert shown["unet"]["layers_per_block"] == 2
    assert shown["unet"]["num_attention_heads"] == 8
    assert shown["preprocess"]["resolution"] == 256
    assert shown["train_unet"]["stage1"]["num_frames"] == 16


@pytest.mark.parametrize("profile", ["full", "latentsync-1.5", "latentsync-1.6"])
def test_the_gpu_profiles_build_latentsyncs_unet_with_its_published_parameter_count(params_file, profile):
    params = load_params(params_file, profile=profile)
    stage1 = dataclasses.replace(
        params.train_unet.stage(1), motion_modules=False
    )  # latentsync-*: adopted whole
    with torch.device("meta"):
        stage1 = UNet3DConditionModel(unet_config(params.unet, stage1, WHISPER_TINY_WIDTH))
        stage2 = UNet3DConditionModel(
            unet_config(params.unet, params.train_unet.stage(2), WHISPER_TINY_WIDTH)
        )
    # reference §4.2 / §10.2: 849.962 M without motion modules (a user's stage-1 log, LatentSync issue #278);
    # 1,267,099,844 with them (upstream's classes counted on the meta device)
    assert round(sum(p.numel() for p in stage1.parameters()) / 1e6, 3) == 849.962
    assert sum(p.numel() for p in stage2.parameters()) == 1_267_099_844
    assert len(stage2.state_dict()) == 1246


def test_latentsync_profiles_extend_full_and_set_upstreams_resolution_and_sampler(params_file):
    full = load_params(params_file, profile="full")
    for version, resolution in (("1.5", 256), ("1.6", 512)):
        params = load_params(params_file, profile=f"latentsync-{version}")
        assert params.unet == full.unet
        assert params.vae == full.vae
        assert params.preprocess.resolution == resolution
        sampler = params.inference
        assert (sampler.overlap, sampler.last_chunk, sampler.eta, sampler.latents) == (
            0,
            "short",
            0.0,
            "sample",
        )
        assert (sampler.audio_frontend, sampler.face_frontend, sampler.fps) == (
            "latentsync",
            "latentsync",
            25,
        )


def test_a_profile_that_extends_itself_in_a_loop_is_refused(params_file):
    (params_file.parent / "params" / "a.yaml").write_text("extends: b\n")
    (params_file.parent / "params" / "b.yaml").write_text("extends: a\n")
    with pytest.raises(ConfigError, match="loop"):
        load_params(params_file, profile="a")


def test_zero_steps_need_weights_to_start_from(params_file):
    with pytest.raises(ConfigError, match="max_steps must be >= 1"):
        load_params(params_file, ["train_unet.stage1.max_steps=0"])


def stage_args(tmp_path, params, stage):
    return dict(
        stage=stage,
        manifest=tmp_path / "none.parquet",  # never read: a stage of 0 steps trains on nothing
        clips=tmp_path / "clips",
        vae=tmp_path / "vae",
        whisper_cache=tmp_path / "wc",
        latent_cache=tmp_path / "lc",
        out=tmp_path / f"unet{stage}",
        metrics=tmp_path / f"m{stage}.json",
        history=tmp_path / f"h{stage}.csv",
        params=params,
        device=torch.device("cpu"),
        init=None,
        samples=tmp_path / f"samples{stage}",
    )


def test_a_stage_of_zero_steps_adopts_init_from_unchanged(params_file, tmp_path):
    whisper = tiny_whisper_folder(tmp_path / "whisper")
    base = load_params(params_file, [f"pretrained.whisper={whisper}"])
    config = unet_config(base.unet, base.train_unet.stage(2), audio_width=16)
    torch.manual_seed(0)
    published = UNet3DConditionModel(config)
    save_unet(tmp_path / "published", published)
    overrides = [
        f"pretrained.whisper={whisper}",
        f"train_unet.stage1.init_from={tmp_path / 'published'}",
        "train_unet.stage1.max_steps=0",
        "train_unet.stage1.motion_modules=true",
        "train_unet.stage1.num_frames=16",
    ]
    params = load_params(params_file, overrides)
    unet_stage(**stage_args(tmp_path, params, 1))
    adopted = load_unet(tmp_path / "unet1")
    for key, value in published.state_dict().items():
        assert torch.equal(adopted.state_dict()[key], value), key
    assert json.loads((tmp_path / "m1.json").read_text()) == {
        "stage": 1,
        "steps": 0,
        "init_from": str(tmp_path / "published"),
    }
    assert (tmp_path / "samples1").is_dir()


def test_a_stage_of_zero_steps_refuses_a_unet_without_its_motion_modules(params_file, tmp_path):
    whisper = tiny_whisper_folder(tmp_path / "whisper")
    base = load_params(params_file, [f"pretrained.whisper={whisper}"])
    save_unet(tmp_path / "stage1", UNet3DConditionModel(unet_config(base.unet, base.train_unet.stage(1), 16)))
    raw = yaml.safe_load(params_file.read_text())
    raw["train_unet"]["stage2"].update(init_from=str(tmp_path / "stage1"), max_steps=0)
    params_file.write_text(yaml.safe_dump(raw))
    params = load_params(params_file, [f"pretrained.whisper={whisper}"])
    with pytest.raises(UserError, match="0 steps must start from a whole UNet"):
        unet_stage(**stage_args(tmp_path, params, 2))
    assert not (tmp_path / "unet2").exists()


def test_latentsync_profiles_judge_with_the_published_syncnet_and_fine_tune_the_published_unet(params_file):
    from synclip.nn.syncnet import released_config, syncnet_config

    for version in ("1.5", "1.6"):
        params = load_params(params_file, profile=f"latentsync-{version}")
        assert syncnet_config(params.syncnet) == released_config()
        assert params.syncnet.source == "pretrained"
        stage1, stage2 = params.train_unet.stage(1), params.train_unet.stage(2)
        assert stage1.max_steps == 0
        assert stage1.init_from == f"models/latentsync-{version}/unet"
        assert stage2.init_from == stage1.init_from
        assert stage2.max_steps > 0
        assert stage1.motion_modules
        assert stage2.motion_modules
