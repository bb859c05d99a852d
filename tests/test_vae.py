"""The tiny profile's VAE: training, exact resumption, scaling factor, diffusers round trip, metrics."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from diffusers import AutoencoderKL

from synclip.artifacts import load_vae
from synclip.config import ConfigError, load_params
from synclip.data.frames import Faces, spaced
from synclip.errors import UserError
from synclip.images import image_metrics
from synclip.train.trainer import Trainer
from synclip.train.vae import (
    VaeRecipe,
    latent_scaling_factor,
    reconstruct,
    reconstruction_grid,
    showcase_frames,
)

CPU = torch.device("cpu")
MOUTH = (0.5625, 0.8125, 0.25, 0.75)


def faces(count: int, seed: int, size: int = 32) -> Faces:
    """Smooth random 'faces': a coloured background, a bright oval and a dark mouth bar that opens."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size] / size
    frames = []
    for i in range(count):
        background = rng.uniform(40, 200, 3)
        skin = rng.uniform(150, 240, 3)
        image = np.broadcast_to(background, (size, size, 3)).copy()
        image[((x - 0.5) / 0.35) ** 2 + ((y - 0.5) / 0.45) ** 2 < 1] = skin
        opening = 0.02 + 0.06 * (i % 4) / 3
        image[(abs(y - 0.66) < opening) & (abs(x - 0.5) < 0.15)] = (60, 20, 30)
        frames.append(image)
    frames = np.clip(np.stack(frames) + rng.normal(0, 3, (count, size, size, 3)), 0, 255).astype(np.uint8)
    identities = np.array([f"id{i % 3}" for i in range(count)])
    return Faces(frames, identities, [f"clip{seed}"])


@pytest.fixture(scope="module")
def params(root):
    base = load_params(root / "params.yaml").vae
    return dataclasses.replace(
        base,
        block_out_channels=(8, 16),  # 2 levels: 32 px -> 16x16 latents
        norm_num_groups=4,
        batch_size=4,
        lr=2e-3,
        warmup_steps=2,
        max_steps=6,
        val_every=3,
        val_frames=6,
        checkpoint_every=3,
        scale_frames=16,
    )


@pytest.fixture(scope="module")
def trained(params, tmp_path_factory):
    out = tmp_path_factory.mktemp("vae")
    model, history = Trainer(VaeRecipe(faces(24, 0), faces(6, 1), params), out, CPU, seed=3).fit()
    return out, model, history


def test_training_writes_a_diffusers_folder_that_loads_to_the_same_outputs(trained):
    out, model, history = trained
    assert (out / "config.json").is_file()
    assert (out / "diffusion_pytorch_model.safetensors").is_file()
    assert [row["step"] for row in history.rows] == [3, 6]
    assert {"train_l1", "train_edge", "train_kl", "train_ssim", "train_total", "val_ssim_mouth"} <= set(
        history.rows[0]
    )
    loaded = AutoencoderKL.from_pretrained(out, local_files_only=True)
    ours = load_vae(out, "vae")
    # loaded for speed in channels-last layout (see runtime.channels_last), saved contiguous
    assert ours.encoder.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
    images = torch.rand(2, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        latent = model.encode(images).latent_dist.mode()
        assert latent.shape == (2, 4, 16, 16)
        expected = model.decode(latent).sample
        for other in (loaded, ours):
            torch.testing.assert_close(other.decode(other.encode(images).latent_dist.mode()).sample, expected)


def test_scaling_factor_is_measured_on_training_frames_and_stored_in_the_config(trained, params):
    out, model, _ = trained
    frames = faces(24, 0).frames[spaced(params.scale_frames, 24)]
    scaling, posterior_std = latent_scaling_factor(model, frames, CPU, seed=3)
    assert model.config.scaling_factor == pytest.approx(scaling)
    assert model.config.scaling_factor != 0.18215  # not the default left in place
    assert model.config.shift_factor is None
    assert load_vae(out).config.scaling_factor == pytest.approx(scaling)
    assert posterior_std > 0
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        latents = model.encode(torch.from_numpy(frames).permute(0, 3, 1, 2).float() / 127.5 - 1).latent_dist
        scaled = latents.sample(generator) * model.config.scaling_factor
    assert float(scaled.std()) == pytest.approx(1.0, abs=0.1)


def test_a_killed_run_resumes_to_the_same_weights(trained, params, tmp_path):
    _, uninterrupted, history = trained
    _, partial = Trainer(VaeRecipe(faces(24, 0), faces(6, 1), params), tmp_path, CPU, seed=3).fit(
        stop_after=3
    )
    assert [row["step"] for row in partial.rows] == [3]
    assert not (tmp_path / "config.json").exists()  # no artifact before the run has finished
    resumed, resumed_history = Trainer(
        VaeRecipe(faces(24, 0), faces(6, 1), params), tmp_path, CPU, seed=3
    ).fit()
    torch.testing.assert_close(resumed.state_dict(), uninterrupted.state_dict(), rtol=0, atol=0)
    assert [{k: v for k, v in r.items() if k != "seconds"} for r in resumed_history.rows] == [
        {k: v for k, v in r.items() if k != "seconds"} for r in history.rows
    ]
    assert resumed.config.scaling_factor == uninterrupted.config.scaling_factor


def test_training_reduces_the_reconstruction_error(params, tmp_path):
    data = faces(24, 0)
    longer = dataclasses.replace(params, max_steps=40, val_every=40, checkpoint_every=40)
    model, _ = Trainer(VaeRecipe(data, faces(6, 1), longer), tmp_path, CPU, seed=3).fit()
    untrained = AutoencoderKL(**{k: v for k, v in model.config.items() if not k.startswith("_")})
    before = image_metrics(data.frames, reconstruct(untrained, data.frames, CPU), MOUTH)
    after = image_metrics(data.frames, reconstruct(model, data.frames, CPU), MOUTH)
    assert after["psnr_face"] > before["psnr_face"] + 3


def test_load_vae_names_the_parameter_when_the_folder_is_missing_or_broken(tmp_path):
    with pytest.raises(UserError, match=r"pretrained\.sd_vae"):
        load_vae(tmp_path / "absent")
    with pytest.raises(UserError, match=r"pretrained\.sd_vae is not set"):
        load_vae(None)
    (tmp_path / "config.json").write_text("{not json")
    (tmp_path / "diffusion_pytorch_model.safetensors").write_bytes(b"junk")
    with pytest.raises(UserError, match=r"pretrained\.sd_vae"):
        load_vae(tmp_path)


def test_weights_that_do_not_match_the_config_are_refused(tmp_path):
    small = AutoencoderKL(
        block_out_channels=(8,),
        norm_num_groups=4,
        down_block_types=("DownEncoderBlock2D",),
        up_block_types=("UpDecoderBlock2D",),
    )
    small.save_pretrained(tmp_path)
    wider = AutoencoderKL(
        block_out_channels=(16,),
        norm_num_groups=4,
        down_block_types=("DownEncoderBlock2D",),
        up_block_types=("UpDecoderBlock2D",),
    )
    wider.save_config(tmp_path)  # the config now describes another network than the weights
    with pytest.raises(UserError, match=r"vae\.source"):
        load_vae(tmp_path, "vae.source")


def test_metrics_are_perfect_for_identical_images_and_lower_for_noisy_ones():
    frames = faces(4, 5, size=64).frames
    same = image_metrics(frames, frames.copy(), MOUTH)
    assert same["psnr_face"] == same["psnr_mouth"] == float("inf")
    assert same["ssim_face"] == pytest.approx(1.0)
    assert same["ssim_mouth"] == pytest.approx(1.0)
    rng = np.random.default_rng(0)
    noisy = np.clip(frames + rng.normal(0, 10, frames.shape), 0, 255).astype(np.uint8)
    noisier = np.clip(frames + rng.normal(0, 30, frames.shape), 0, 255).astype(np.uint8)
    a, b = image_metrics(frames, noisy, MOUTH), image_metrics(frames, noisier, MOUTH)
    assert 25 < a["psnr_face"] < 35
    assert b["psnr_face"] < a["psnr_face"]
    assert b["ssim_face"] < a["ssim_face"] < 1
    assert b["ssim_mouth"] < a["ssim_mouth"] < 1
    # a change outside the mouth box leaves the mouth scores perfect
    hair = frames.copy()
    hair[:, :16] = 0
    outside = image_metrics(frames, hair, MOUTH)
    assert outside["psnr_mouth"] == float("inf")
    assert outside["ssim_mouth"] == pytest.approx(1.0)
    assert outside["ssim_face"] < 1


def test_ssim_matches_scikit_image():
    metrics = pytest.importorskip("skimage.metrics")
    frames = faces(2, 7, size=48).frames
    noisy = np.clip(frames + np.random.default_rng(1).normal(0, 12, frames.shape), 0, 255).astype(np.uint8)
    reference = np.mean(
        [
            metrics.structural_similarity(
                a / 255,
                b / 255,
                gaussian_weights=True,
                sigma=1.5,
                use_sample_covariance=False,
                data_range=1.0,
                channel_axis=-1,
            )
            for a, b in zip(frames, noisy, strict=True)
        ]
    )
    ours = image_metrics(frames, noisy, MOUTH)
    assert ours["ssim_face"] == pytest.approx(reference, abs=1e-4)  # float32 vs float64
    psnr = np.mean([metrics.peak_signal_noise_ratio(a, b) for a, b in zip(frames, noisy, strict=True)])
    assert ours["psnr_face"] == pytest.approx(psnr, abs=1e-9)


def test_grid_shows_each_frame_with_its_reconstruction_and_mouth():
    data = faces(9, 2, size=64)
    shown = showcase_frames(data, 2, MOUTH)
    assert len(shown) == 2
    assert list(data.identities[shown]) == ["id0", "id1"]
    grid = reconstruction_grid(data.frames[shown], data.frames[shown][:, ::-1], MOUTH, zoom=2)
    assert grid.shape == (2 * 64 * 2, 4 * 64 * 2, 3)
    assert grid.dtype == np.uint8


def test_vae_params_are_checked(root):
    path = root / "params.yaml"
    with pytest.raises(ConfigError, match=r"vae\.mouth"):
        load_params(path, ["vae.mouth=[0.8, 0.5, 0.25, 0.75]"])
    with pytest.raises(ConfigError, match=r"preprocess\.resolution"):
        load_params(path, ["vae.block_out_channels=[8, 8, 8, 8, 8, 8, 8, 8, 8]", "vae.norm_num_groups=8"])
    with pytest.raises(ConfigError, match=r"pretrained\.sd_vae is not set"):
        load_params(path, ["vae.source=pretrained"])
    assert load_params(path).vae.latent_channels == 4
