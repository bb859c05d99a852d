"""`synclip weights import-latentsync`: LatentSync's published files → a packaged model, at tiny sizes."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import yaml
from latentsync_snapshot import (
    SYNCNET_MODEL,
    make_snapshot,
    syncnet_config,
    tiny_vae_folder,
    unet_config,
    unet_yaml,
)
from typer.testing import CliRunner

from synclip.artifacts import CheckpointError, load_syncnet, load_unet, load_whisper_encoder
from synclip.cli import app
from synclip.config import load_params
from synclip.errors import UserError
from synclip.inference import latentsync
from synclip.inference.latentsync import (
    HUB_REPOS,
    HUB_REVISIONS,
    LATENTSYNC_SAMPLER,
    SOURCES_FILE,
    VAE_REPO,
    LatentSyncImportError,
    import_latentsync,
    syncnet_config_from_yaml,
    unet_config_from_yaml,
)
from synclip.inference.package import PIPELINE_FILE, load_pipeline
from synclip.nn.syncnet import released_config
from synclip.nn.unet import UNet3DConditionModel, full_config
from synclip.pretrained.store import sha256_file
from synclip.pretrained.whisper import WhisperConversionError

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def snapshot16(tmp_path_factory) -> dict:
    return make_snapshot(tmp_path_factory.mktemp("snapshot16"), "1.6", seed=0)


@pytest.fixture(scope="module")
def snapshot15(tmp_path_factory) -> dict:
    return make_snapshot(tmp_path_factory.mktemp("snapshot15"), "1.5", seed=1)


def run_import(snapshot: dict, out: Path, version: str = "1.6", src: Path | None = None) -> Path:
    return import_latentsync(
        src or snapshot["src"],
        version,
        out,
        vae=snapshot["vae"],
        unet_config=snapshot["unet_config"],
        syncnet_config=snapshot["syncnet_config"],
    )


@pytest.fixture(scope="module")
def package16(snapshot16, tmp_path_factory) -> Path:
    return run_import(snapshot16, tmp_path_factory.mktemp("out") / "latentsync-1.6")


def copy_src(snapshot: dict, tmp_path: Path) -> Path:
    return Path(shutil.copytree(snapshot["src"], tmp_path / "src"))


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


# --- the sampler table ---------------------------------------------------------------------------


@pytest.mark.parametrize("profile", ["latentsync-1.5", "latentsync-1.6"])
def test_sampler_table_equals_the_profiles(profile):
    assert load_params(ROOT / "params.yaml", profile=profile).inference == LATENTSYNC_SAMPLER


# --- upstream configs ----------------------------------------------------------------------------


def upstream_full_unet_yaml() -> dict:
    """configs/unet/stage2_512.yaml's model values (the reduced yaml with upstream's sizes put back)."""
    data = unet_yaml(512)
    model = data["model"]
    model.update(attention_head_dim=8, block_out_channels=[320, 640, 1280, 1280], cross_attention_dim=384)
    model.update(norm_num_groups=32, sample_size=64)
    model["motion_module_kwargs"]["num_attention_heads"] = 8
    return data


def test_upstream_stage2_yaml_is_the_full_config(tmp_path):
    path = tmp_path / "stage2_512.yaml"
    path.write_text(yaml.safe_dump(upstream_full_unet_yaml()))
    assert unet_config_from_yaml(path) == (full_config(True), 512)


def test_reduced_yamls_give_the_snapshot_configs(snapshot16, snapshot15):
    assert unet_config_from_yaml(snapshot16["unet_config"]) == (unet_config(), 64)
    assert unet_config_from_yaml(snapshot15["unet_config"]) == (unet_config(), None)
    assert syncnet_config_from_yaml(snapshot16["syncnet_config"]) == syncnet_config()


def test_upstream_syncnet_yaml_is_the_released_config(tmp_path):
    model = {
        "audio_encoder": {
            "in_channels": 1,
            "block_out_channels": [32, 64, 128, 256, 512, 1024, 2048],
            "downsample_factors": [[2, 1], 2, 2, 1, 2, 2, [2, 3]],
            "attn_blocks": [0, 0, 0, 1, 1, 0, 0],
            "dropout": 0.0,
        },
        "visual_encoder": {
            "in_channels": 48,
            "block_out_channels": [64, 128, 256, 256, 512, 1024, 2048, 2048],
            "downsample_factors": [[1, 2], 2, 2, 2, 2, 2, 2, 2],
            "attn_blocks": [0, 0, 0, 0, 1, 1, 0, 0],
            "dropout": 0.0,
        },
    }
    data = {"num_frames": 16, "resolution": 256, "latent_space": False, "lower_half": True}
    path = tmp_path / "syncnet_16_pixel_attn.yaml"
    path.write_text(yaml.safe_dump({"model": model, "data": data}))
    assert syncnet_config_from_yaml(path) == released_config()


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"motion_module_mid_block": True}, "motion_module_mid_block"),
        ({"use_linear_projection": True}, "use_linear_projection"),
        ({"motion_module_resolutions": [1, 2]}, "leaves out"),
        ({"attention_head_dim": 3}, "num_attention_heads"),
    ],
)
def test_unet_yaml_that_synclip_cannot_build_is_refused(tmp_path, change, message):
    data = unet_yaml(64)
    data["model"].update(change)
    path = tmp_path / "unet.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(LatentSyncImportError, match=message) as error:
        unet_config_from_yaml(path)
    assert str(path) in str(error.value)


def test_latent_space_syncnet_is_refused(tmp_path):
    path = tmp_path / "syncnet.yaml"
    path.write_text(yaml.safe_dump({"model": SYNCNET_MODEL, "data": {"latent_space": True}}))
    with pytest.raises(LatentSyncImportError, match="latent-space"):
        syncnet_config_from_yaml(path)


# --- the import ----------------------------------------------------------------------------------


def test_import_writes_a_package_load_pipeline_loads(package16, snapshot16):
    names = {p.name for p in package16.iterdir()}
    assert {
        "unet",
        "vae",
        "whisper",
        "scheduler",
        "syncnet",
        "mask.png",
        PIPELINE_FILE,
        SOURCES_FILE,
    } <= names
    pipe = load_pipeline(package16)
    assert pipe.config.resolution == 64
    assert dataclasses.asdict(pipe.config) == {
        "resolution": 64,
        "vae_precision": "fp32",  # LatentSync's VAE as upstream runs it
        **dataclasses.asdict(LATENTSYNC_SAMPLER),
    }
    assert pipe.vae.config.scaling_factor == 0.18215  # forced, whatever the folder's config says
    assert (pipe.vae.config.shift_factor or 0.0) == 0.0


def test_import_of_version_15_uses_its_resolution(snapshot15, tmp_path):
    out = run_import(snapshot15, tmp_path / "latentsync-1.5", version="1.5")
    assert json.loads((out / PIPELINE_FILE).read_text())["resolution"] == 256
    assert json.loads((out / SOURCES_FILE).read_text())["version"] == "1.5"
    assert load_pipeline(out).config.resolution == 256


def test_sources_record_every_file_read(package16, snapshot16):
    sources = json.loads((package16 / SOURCES_FILE).read_text())
    src = snapshot16["src"]
    assert sources["version"] == "1.6"
    assert sources["hub"] is None
    assert sources["files"] == {
        name: sha256_file(src / name)
        for name in ("latentsync_unet.pt", "stable_syncnet.pt", "whisper/tiny.pt")
    }
    vae = snapshot16["vae"]
    assert sources["vae_files"] == {
        name: sha256_file(vae / name) for name in ("config.json", "diffusion_pytorch_model.safetensors")
    }
    assert sources["configs"]["unet"]["sha256"] == sha256_file(snapshot16["unet_config"])
    assert sources["configs"]["syncnet"]["sha256"] == sha256_file(snapshot16["syncnet_config"])


def test_imported_unet_computes_what_the_checkpoint_computes(package16, snapshot16):
    checkpoint = torch.load(snapshot16["src"] / "latentsync_unet.pt", weights_only=True)
    direct = UNet3DConditionModel(unet_config())
    direct.load_state_dict(checkpoint["state_dict"], strict=True)
    imported = load_unet(package16 / "unet")
    generator = torch.Generator().manual_seed(0)
    sample = torch.randn(1, 13, 3, 8, 8, generator=generator)
    audio = torch.randn(1, 3, 2, 64, generator=generator)
    with torch.no_grad():
        torch.testing.assert_close(
            imported(sample, 500, audio), direct.eval()(sample, 500, audio), rtol=0, atol=0
        )
    assert imported.config.motion_modules
    assert any(".motion_modules." in key for key in checkpoint["state_dict"])


def test_imported_syncnet_and_whisper_hold_the_checkpoint_weights(package16, snapshot16):
    syncnet = load_syncnet(package16 / "syncnet")
    assert syncnet.config == syncnet_config()
    for key, value in snapshot16["syncnet"].items():
        torch.testing.assert_close(syncnet.state_dict()[key], value, rtol=0, atol=0)
    encoder = load_whisper_encoder(package16 / "whisper")
    conv1 = dict(encoder.named_parameters())
    (name,) = [k for k in conv1 if k.endswith("conv1.weight")]
    torch.testing.assert_close(
        conv1[name], snapshot16["whisper"]["encoder.conv1.weight"].float(), rtol=0, atol=0
    )


def test_mask_is_upstreams_at_the_resolution(package16):
    from synclip.face.latentsync import latentsync_mask

    image = cv2.imread(str(package16 / "mask.png"), cv2.IMREAD_GRAYSCALE)
    assert image.shape == (64, 64)
    np.testing.assert_array_equal(image, np.round(latentsync_mask(64)[0].numpy() * 255).astype(np.uint8))


def test_vae_from_a_bin_folder(snapshot16, tmp_path):
    from diffusers import AutoencoderKL

    model = AutoencoderKL.from_pretrained(snapshot16["vae"])
    model.save_pretrained(tmp_path / "vae-bin", safe_serialization=False)
    assert not (tmp_path / "vae-bin" / "diffusion_pytorch_model.safetensors").exists()
    vae = latentsync.read_sd_vae(tmp_path / "vae-bin")
    assert vae.config.scaling_factor == 0.18215
    for key, value in model.state_dict().items():
        torch.testing.assert_close(vae.state_dict()[key], value, rtol=0, atol=0)


def test_vae_with_the_old_attention_names(snapshot16, tmp_path):
    """sd-vae-ft-mse's files predate diffusers' attention renaming (query/key/value/proj_attn)."""
    from safetensors.torch import load_file, save_file

    folder = Path(shutil.copytree(snapshot16["vae"], tmp_path / "vae"))
    weights = folder / "diffusion_pytorch_model.safetensors"
    new_names = load_file(weights)
    old = {"to_q": "query", "to_k": "key", "to_v": "value", "to_out.0": "proj_attn"}

    def old_name(key: str) -> str:
        for ours, theirs in old.items():
            key = key.replace(f".attentions.0.{ours}.", f".attentions.0.{theirs}.")
        return key

    save_file({old_name(k): v for k, v in new_names.items()}, str(weights))
    assert any(".query." in k for k in load_file(weights))
    vae = latentsync.read_sd_vae(folder)
    for key, value in new_names.items():
        torch.testing.assert_close(vae.state_dict()[key], value, rtol=0, atol=0)


# --- strict errors, atomicity ----------------------------------------------------------------------


def truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def drop_motion_key(path: Path) -> None:
    checkpoint = torch.load(path, weights_only=True)
    key = next(k for k in checkpoint["state_dict"] if ".motion_modules." in k)
    del checkpoint["state_dict"][key]
    torch.save(checkpoint, path)


def wrong_shape(path: Path) -> None:
    checkpoint = torch.load(path, weights_only=True)
    checkpoint["state_dict"]["conv_in.weight"] = torch.zeros(32, 9, 3, 3)
    torch.save(checkpoint, path)


def bare_state_dict(path: Path) -> None:
    torch.save(torch.load(path, weights_only=True)["state_dict"], path)


@pytest.mark.parametrize(
    ("name", "damage", "error", "message"),
    [
        ("stable_syncnet.pt", Path.unlink, LatentSyncImportError, "missing stable_syncnet.pt"),
        ("latentsync_unet.pt", truncate, CheckpointError, "not a readable PyTorch checkpoint"),
        ("latentsync_unet.pt", drop_motion_key, CheckpointError, "1 missing: down_blocks.0.motion_modules"),
        ("latentsync_unet.pt", wrong_shape, CheckpointError, r"wrong shape: conv_in.weight \(32, 9, 3, 3\)"),
        ("stable_syncnet.pt", bare_state_dict, CheckpointError, "a dict with `state_dict`"),
        ("whisper/tiny.pt", truncate, WhisperConversionError, "not a readable torch checkpoint"),
    ],
)
def test_bad_source_file_is_a_one_line_error_and_writes_nothing(
    snapshot16, tmp_path, name, damage, error, message
):
    src = copy_src(snapshot16, tmp_path)
    damage(src / name)
    with pytest.raises(error, match=message) as raised:
        run_import(snapshot16, tmp_path / "out" / "model", src=src)
    text = str(raised.value)
    assert "\n" not in text
    assert name.split("/")[-1] in text
    assert not (tmp_path / "out").exists() or leftovers(tmp_path / "out") == []


def test_failed_reimport_keeps_the_old_package(snapshot16, tmp_path):
    out = run_import(snapshot16, tmp_path / "model")
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    src = copy_src(snapshot16, tmp_path)
    truncate(src / "whisper" / "tiny.pt")  # fails after the UNet and SyncNet loaded
    with pytest.raises(WhisperConversionError):
        run_import(snapshot16, out, src=src)
    assert {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    assert leftovers(tmp_path) == ["model", "src"]  # no staged folder, no converted Whisper left


def test_failing_verification_leaves_no_folder(snapshot16, tmp_path, monkeypatch):
    """The staged package is loaded before the swap: a failure there leaves nothing behind."""

    def broken(folder, *args, **kwargs):
        raise CheckpointError(f"{folder}: refused by the test")

    monkeypatch.setattr("synclip.inference.package.load_pipeline", broken)
    with pytest.raises(CheckpointError, match="refused by the test"):
        run_import(snapshot16, tmp_path / "out" / "model")
    assert leftovers(tmp_path / "out") == []


def test_output_that_is_not_a_package_is_not_replaced(snapshot16, tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep")
    with pytest.raises(LatentSyncImportError, match="not a packaged model"):
        run_import(snapshot16, tmp_path / "mine")
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep"


def test_whisper_wider_than_the_unet_is_refused(snapshot16, tmp_path):
    data = unet_yaml(64)
    data["model"]["cross_attention_dim"] = 32
    path = tmp_path / "unet.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(CheckpointError, match="wrong shape"):  # attn2's k/v do not fit first
        import_latentsync(
            snapshot16["src"], "1.6", tmp_path / "out", snapshot16["vae"], path, snapshot16["syncnet_config"]
        )


# --- the Hub -------------------------------------------------------------------------------------


def hub_copy(snapshot: dict, tmp_path: Path) -> Path:
    """The snapshot as the Hub cache holds it: snapshots/<commit>/…"""
    folder = tmp_path / "hub" / "snapshots" / ("ab" * 20)
    shutil.copytree(snapshot["src"], folder)
    return folder


def test_from_hub_downloads_the_three_files_and_records_the_commit(snapshot16, tmp_path, monkeypatch):
    import huggingface_hub

    calls = []
    cached = hub_copy(snapshot16, tmp_path)

    def fake_snapshot_download(**kwargs):
        calls.append(kwargs)
        return str(cached)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot_download)
    out = tmp_path / "model"
    args = ["weights", "import-latentsync", "--from-hub", "--version", "1.6", "-o", str(out)]
    args += ["--vae", str(snapshot16["vae"]), "--unet-config", str(snapshot16["unet_config"])]
    args += ["--syncnet-config", str(snapshot16["syncnet_config"])]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert calls == [
        {
            "repo_id": HUB_REPOS["1.6"],
            "revision": HUB_REVISIONS["1.6"],
            "allow_patterns": ["latentsync_unet.pt", "stable_syncnet.pt", "whisper/tiny.pt"],
        }
    ]
    sources = json.loads((out / SOURCES_FILE).read_text())
    assert sources["hub"] == {"repo": "ByteDance/LatentSync-1.6", "revision": "main", "commit": "ab" * 20}
    assert sources["vae_hub"] is None


def test_from_hub_with_a_revision_and_the_vae_from_the_hub(snapshot16, tmp_path, monkeypatch):
    import huggingface_hub

    calls = []
    cached = hub_copy(snapshot16, tmp_path)
    vae = tiny_vae_folder(tmp_path / "vae-cache" / "snapshots" / ("cd" * 20), seed=0)

    def fake_snapshot_download(**kwargs):
        calls.append(kwargs)
        return str(vae if kwargs["repo_id"] == VAE_REPO else cached)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot_download)
    src, hub = latentsync.download_latentsync("1.5", revision="0123abc")
    out = import_latentsync(
        src, "1.5", tmp_path / "model", None, snapshot16["unet_config"], snapshot16["syncnet_config"], hub=hub
    )
    assert [c["repo_id"] for c in calls] == ["ByteDance/LatentSync-1.5", VAE_REPO]
    assert calls[0]["revision"] == "0123abc"
    assert calls[1]["allow_patterns"] == ["config.json", "diffusion_pytorch_model.safetensors"]
    sources = json.loads((out / SOURCES_FILE).read_text())
    assert sources["hub"]["revision"] == "0123abc"
    assert sources["vae_hub"] == {"repo": VAE_REPO, "revision": "main", "commit": "cd" * 20}


def run_cli(args: list[str], tmp_path: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf-home"), "NO_COLOR": "1"}
    env.pop("HF_HUB_CACHE", None)
    return subprocess.run(
        [sys.executable, "-m", "synclip", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=300,
    )


def test_offline_with_an_empty_cache_is_a_one_line_error(tmp_path):
    result = run_cli(
        ["weights", "import-latentsync", "--from-hub", "--version", "1.6", "-o", "out"], tmp_path
    )
    assert result.returncode == 2, result.stderr
    lines = [line for line in (result.stdout + result.stderr).splitlines() if line.strip()]
    assert len(lines) == 1, lines
    assert "LatentSync 1.6" in lines[0]
    assert "latentsync_unet.pt" in lines[0]
    assert "huggingface-cli download ByteDance/LatentSync-1.6" in lines[0]
    assert not (tmp_path / "out").exists()


def test_offline_without_vae_says_how_to_get_it(snapshot16, tmp_path, monkeypatch):
    """In process (the subprocess test above covers the CLI's one line): offline, empty cache."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub-cache"))
    with pytest.raises(LatentSyncImportError) as raised:
        import_latentsync(snapshot16["src"], "1.6", tmp_path / "out", unet_config=snapshot16["unet_config"])
    text = str(raised.value)
    assert "\n" not in text
    assert f"the VAE {VAE_REPO} is not in the Hugging Face cache" in text
    assert f"pass --vae DIR, a folder from `huggingface-cli download {VAE_REPO} --local-dir DIR`" in text
    assert not (tmp_path / "out").exists()


def test_cli_needs_src_or_from_hub(tmp_path):
    result = CliRunner().invoke(
        app, ["weights", "import-latentsync", "--version", "1.6", "-o", str(tmp_path / "o")]
    )
    assert isinstance(result.exception, UserError)
    assert "SRC" in str(result.exception)


def test_defaults_are_latentsyncs_geometry(snapshot16, tmp_path, monkeypatch):
    """Without --unet-config / --syncnet-config: the stage-2 UNet and syncnet_16_pixel_attn."""
    seen = {}

    def capture(path, config):
        seen[path.name] = config
        raise CheckpointError(f"{path}: stop here")

    monkeypatch.setattr(latentsync, "load_latentsync_unet", capture)
    with pytest.raises(CheckpointError, match="stop here"):
        import_latentsync(snapshot16["src"], "1.6", tmp_path / "out", vae=snapshot16["vae"])
    assert seen == {"latentsync_unet.pt": full_config(True)}
    monkeypatch.setattr(latentsync, "load_latentsync_unet", lambda path, config: None)
    monkeypatch.setattr(latentsync, "load_latentsync_syncnet", capture)
    with pytest.raises(CheckpointError, match="stop here"):
        import_latentsync(snapshot16["src"], "1.6", tmp_path / "out", vae=snapshot16["vae"])
    assert seen["stable_syncnet.pt"] == released_config()
    assert not (tmp_path / "out").exists()


def test_hub_snapshot_without_a_file_names_it(snapshot16, tmp_path):
    cached = hub_copy(snapshot16, tmp_path)
    (cached / "stable_syncnet.pt").unlink()
    hub = latentsync.HubSource(repo=HUB_REPOS["1.6"], revision="main", commit=cached.name)
    with pytest.raises(
        LatentSyncImportError, match=f"missing stable_syncnet.pt; the Hub snapshot {HUB_REPOS['1.6']}@"
    ):
        import_latentsync(cached, "1.6", tmp_path / "out", vae=snapshot16["vae"], hub=hub)


def test_imported_package_generates_a_chunk(package16):
    """A smoke test of the imported networks working together (the lip-sync run itself is tested elsewhere)."""
    pipe = load_pipeline(package16)
    generator = torch.Generator().manual_seed(0)
    faces = torch.rand(16, 3, 64, 64, generator=generator) * 2 - 1
    audio = torch.randn(16, 10, 64, generator=generator)
    with torch.no_grad():
        out = pipe.generate(faces, audio, pipe.noise(7, (4, 8, 8)), steps=2, guidance=1.5)
    assert out.shape == faces.shape
    assert torch.isfinite(out).all()
