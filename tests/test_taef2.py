"""TAEF2, the tiny profile's latent space: the vendored weights, the module against the reference
implementation's outputs (tests/fixtures/taef2, scripts/taef2_fixture.py), strict loading, the per-channel
latent scaling and the CPU's bf16 autocast."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from synclip.artifacts import CheckpointError, load_taef2_published, load_vae, save_vae
from synclip.errors import UserError
from synclip.inference.pipeline import PipelineConfig
from synclip.nn.taef2 import Taef2
from synclip.nn.vae import downsampling, latent_affine, scale_latents, scale_spread, unscale_latents
from synclip.pretrained.store import PretrainedError, require
from synclip.runtime import cpu_has_bf16, frozen_autocast
from synclip.train.vae import fit_latent_affine


@pytest.fixture(scope="module")
def vendored(root):
    return root / "src" / "synclip" / "pretrained" / "assets" / "taef2"


@pytest.fixture(scope="module")
def taef2(vendored):
    return load_vae(vendored, "pretrained.taef2")


@pytest.fixture(scope="module")
def reference(root):
    return load_file(root / "tests" / "fixtures" / "taef2" / "reference.safetensors")


def test_the_vendored_taef2_reproduces_the_reference_implementation(taef2, reference):
    """The published weights in synclip's module give the reference's latents and pixels; images in
    [−1, 1] here, [0, 1] there."""
    assert isinstance(taef2, Taef2)
    assert next(taef2.parameters()).dtype == torch.float32
    with torch.no_grad():
        latents = taef2.encode(reference["image"] * 2 - 1).latent_dist.mode()
        decoded = taef2.decode(reference["latents"]).sample
    assert latents.shape == (1, 32, 8, 8)
    torch.testing.assert_close(latents, reference["latents"], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close((decoded + 1) / 2, reference["decoded"], atol=1e-4, rtol=1e-4)
    # a few values pinned (what a silently changed layer order or activation would move)
    flat = reference["latents"].flatten()
    assert [round(float(v), 3) for v in flat[:3]] == [round(float(v), 3) for v in latents.flatten()[:3]]
    assert downsampling(taef2) == 8


def test_taef2_reconstructs_a_real_face(taef2, reference):
    """The autoencoder's purpose: a real photograph comes back close (the astronaut's face at 64 px:
    26.2 dB; a 4-channel VAE trained on SynthTalk gets about 18 dB on real faces at 128 px)."""
    image = reference["image"] * 2 - 1
    with torch.no_grad():
        back = taef2(image).sample.clamp(-1, 1)
    mse = float(((back - image) / 2).square().mean())
    assert 10 * np.log10(1 / mse) > 25.0


def test_the_vendored_files_are_checksummed_and_verified(vendored, tmp_path):
    assert require("taef2", vendored, "pretrained.taef2") == vendored
    copy = tmp_path / "assets"
    shutil.copytree(vendored.parent, copy)
    weights = copy / "taef2" / "diffusion_pytorch_model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(
        PretrainedError, match=r"pretrained\.taef2: .*diffusion_pytorch_model\.safetensors has sha256"
    ):
        require("taef2", copy / "taef2", "pretrained.taef2")


def test_published_state_dicts_load_strictly(tmp_path, vendored):
    """The .pth files as published: a missing, unexpected or misshapen key is an error naming it."""
    state = load_file(vendored / "diffusion_pytorch_model.safetensors")
    encoder = {k.removeprefix("encoder."): v for k, v in state.items() if k.startswith("encoder.")}
    decoder = {k.removeprefix("decoder."): v for k, v in state.items() if k.startswith("decoder.")}
    torch.save(encoder, tmp_path / "taef2_encoder.pth")
    torch.save(decoder, tmp_path / "taef2_decoder.pth")
    model = load_taef2_published(tmp_path / "taef2_encoder.pth", tmp_path / "taef2_decoder.pth")
    assert model.config.latents_mean is None
    torch.testing.assert_close(model.state_dict()["encoder.0.weight"], state["encoder.0.weight"].float())

    broken = dict(decoder)
    del broken["3.pool.0.weight"]  # the FLUX.2 branch diffusers' AutoencoderTiny cannot hold
    torch.save(broken, tmp_path / "no_pool.pth")
    with pytest.raises(CheckpointError, match=r"1 missing: decoder\.3\.pool\.0\.weight"):
        load_taef2_published(tmp_path / "taef2_encoder.pth", tmp_path / "no_pool.pth")
    torch.save({**encoder, "0.weight": torch.zeros(64, 3, 5, 5)}, tmp_path / "misshapen.pth")
    with pytest.raises(CheckpointError, match=r"wrong shape: encoder\.0\.weight"):
        load_taef2_published(tmp_path / "misshapen.pth", tmp_path / "taef2_decoder.pth")
    (tmp_path / "text.pth").write_text("not a checkpoint")
    with pytest.raises(CheckpointError, match=r"text\.pth: not a readable torch state dict"):
        load_taef2_published(tmp_path / "text.pth", tmp_path / "taef2_decoder.pth")


def test_a_vae_folder_of_another_class_or_with_missing_weights_is_refused(vendored, tmp_path):
    folder = tmp_path / "vae"
    shutil.copytree(vendored, folder)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "_class_name": "AutoencoderTiny"}))
    with pytest.raises(
        UserError, match=r"_class_name 'AutoencoderTiny', expected one of AutoencoderKL, Taef2"
    ):
        load_vae(folder, "pretrained.taef2")
    (folder / "config.json").write_text(json.dumps(config))
    state = load_file(folder / "diffusion_pytorch_model.safetensors")
    save_file(
        {k: v for k, v in state.items() if ".pool." not in k}, folder / "diffusion_pytorch_model.safetensors"
    )
    with pytest.raises(CheckpointError, match=r"24 missing"):
        load_vae(folder, "pretrained.taef2")


def test_per_channel_scaling_gives_unit_latents_and_round_trips(taef2, reference, tmp_path):
    """fit_latent_affine's (mean, std) per channel, stored in the config, give the fitted latents zero
    mean and unit std in every channel; the artifact keeps them; unscale inverts scale."""
    rng = np.random.default_rng(0)
    face = (reference["image"][0].permute(1, 2, 0).numpy() * 255).astype(np.uint8)
    frames = np.stack(
        [np.clip(face.astype(int) + rng.integers(-20, 21, face.shape), 0, 255) for _ in range(6)]
    )
    mean, std = fit_latent_affine(taef2, frames.astype(np.uint8), torch.device("cpu"), "fp32", batch=4)
    assert len(mean) == len(std) == 32
    assert min(std) > 0
    model = Taef2(latents_mean=mean, latents_std=std)
    model.load_state_dict(taef2.state_dict())
    save_vae(model, tmp_path / "vae")
    loaded = load_vae(tmp_path / "vae", "--vae")
    assert loaded.config.latents_mean == mean
    assert loaded.config.latents_std == std
    with torch.no_grad():
        raw = loaded.encode(
            torch.from_numpy(frames).permute(0, 3, 1, 2).float() / 127.5 - 1
        ).latent_dist.mode()
    scaled = scale_latents(loaded, raw)
    per_channel = scaled.transpose(0, 1).reshape(32, -1)
    assert per_channel.mean(dim=1).abs().max() < 1e-3
    assert (per_channel.std(dim=1, unbiased=False) - 1).abs().max() < 1e-3
    torch.testing.assert_close(unscale_latents(loaded, scaled), raw, atol=1e-5, rtol=1e-5)
    shift, scale = latent_affine(loaded, raw)
    assert shift.shape == scale.shape == (1, 32, 1, 1)
    torch.testing.assert_close(scale_spread(loaded, torch.ones(1, 32, 2, 2))[0, :, 0, 0], scale.flatten())
    # a 5-D latent (B, C, F, h, w) broadcasts per channel too
    assert latent_affine(loaded, raw[None].transpose(1, 2))[0].shape == (1, 32, 1, 1, 1)


def test_the_scaling_must_fit_the_channels():
    with pytest.raises(ValueError, match="latents_mean has 3 values for 32 latent channels"):
        Taef2(latents_mean=(0.0, 0.0, 0.0), latents_std=(1.0,) * 32)
    with pytest.raises(ValueError, match="latents_std must be positive"):
        Taef2(latents_mean=(0.0,) * 32, latents_std=(0.0,) * 32)


def test_the_posterior_is_a_point_mass(taef2, reference):
    """encode answers like an AutoencoderKL whose posterior has no spread: mean = mode = any sample."""
    with torch.no_grad():
        posterior = taef2.encode(reference["image"] * 2 - 1).latent_dist
    assert torch.equal(posterior.mean, posterior.mode())
    assert torch.count_nonzero(posterior.std) == 0
    assert torch.equal(posterior.sample(torch.Generator().manual_seed(1)), posterior.mean)


def test_bf16_autocast_only_where_asked_and_native(taef2, reference):
    cpu = torch.device("cpu")
    assert not torch.is_autocast_enabled("cpu")
    with frozen_autocast(cpu, "fp32"):
        assert not torch.is_autocast_enabled("cpu")
    with frozen_autocast(torch.device("meta"), "bf16"):
        assert not torch.is_autocast_enabled("cpu")
    with frozen_autocast(cpu, "bf16"):
        assert torch.is_autocast_enabled("cpu") == cpu_has_bf16()
    if cpu_has_bf16():  # the speed-up's price: reconstructions within a few grey levels of fp32's
        image = reference["image"] * 2 - 1
        with torch.no_grad():
            exact = taef2(image).sample
            with frozen_autocast(cpu, "bf16"):
                fast = taef2(image).sample.float()
        assert float((fast - exact).abs().mean()) * 127.5 < 2.0


def test_packaged_pipelines_without_a_vae_precision_run_fp32():
    """pipeline.json files written before vae_precision existed (LatentSync imports) still load."""
    config = PipelineConfig.from_dict({"resolution": 256})
    assert config.vae_precision == "fp32"
    assert PipelineConfig.from_dict({"resolution": 256, "vae_precision": "bf16"}).vae_precision == "bf16"
