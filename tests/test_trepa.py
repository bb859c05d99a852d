"""TREPA (a frozen VideoMAE judge) and the tiny VideoMAE's masked-autoencoding pretraining."""

from __future__ import annotations

import dataclasses
import json
import logging

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from synclip.artifacts import save_videomae
from synclip.config import ConfigError, VideoMAEParams, load_params
from synclip.errors import UserError
from synclip.nn.videomae import videomae_config
from synclip.train.trainer import CHECKPOINT, Trainer
from synclip.train.trepa import TrepaLoss, load_trepa
from synclip.train.videomae import VideoMAERecipe, tube_mask

FRAMES = 4
SIZE = 16


pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_params(**changes) -> VideoMAEParams:
    params = VideoMAEParams(
        source="trained",
        image_size=SIZE,
        patch_size=4,
        num_frames=FRAMES,
        tubelet_size=2,
        hidden_size=32,
        num_layers=2,
        num_heads=2,
        intermediate_size=64,
        decoder_hidden_size=16,
        decoder_num_layers=1,
        decoder_num_heads=2,
        decoder_intermediate_size=32,
        mask_ratio=0.75,
        batch_size=2,
        lr=1e-3,
        warmup_steps=2,
        final_lr_fraction=0.1,
        weight_decay=0.05,
        grad_clip=1.0,
        max_steps=6,
        val_every=3,
        val_windows=2,
        checkpoint_every=2,
    )
    return dataclasses.replace(params, **changes)


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A randomly initialised tiny VideoMAEForPreTraining saved as `pretrain_videomae` saves it."""
    from transformers import VideoMAEForPreTraining

    torch.manual_seed(0)
    model = VideoMAEForPreTraining(videomae_config(tiny_params())).eval()
    folder = save_videomae(model, tmp_path_factory.mktemp("videomae"))
    return model, folder


@pytest.fixture(scope="module")
def trepa(saved) -> TrepaLoss:
    return load_trepa(saved[1])


def clips(seed: int, batch: int = 2, size: int = 24) -> torch.Tensor:
    """(B, 3, F, H, W) in [−1, 1]: a bright square moving across a noisy background."""
    generator = torch.Generator().manual_seed(seed)
    video = torch.rand(batch, 3, FRAMES, size, size, generator=generator) * 0.4 - 0.2
    for f in range(FRAMES):
        video[:, :, f, 4:12, 3 * f : 3 * f + 8] = 0.9
    return video


def test_identical_clips_cost_nothing_and_shuffled_or_noised_clips_cost_more(trepa):
    real = clips(1)
    assert float(trepa(real.clone(), real)) == 0.0
    shuffled = real[:, :, [3, 1, 0, 2]]
    noised = (real + 0.3 * torch.randn(real.shape, generator=torch.Generator().manual_seed(2))).clamp(-1, 1)
    assert float(trepa(shuffled, real)) > 1e-7
    assert float(trepa(noised, real)) > 1e-7


def test_gradients_reach_the_generated_clip_but_not_the_videomae(trepa):
    generated = clips(3).requires_grad_(True)
    trepa.train()  # a parent's .train() must not wake the judge up
    assert not trepa.training
    assert not trepa.encoder.training
    loss = trepa(generated, clips(1))
    loss.backward()
    assert generated.grad is not None
    assert generated.grad.abs().sum() > 0
    assert all(not p.requires_grad and p.grad is None for p in trepa.parameters())


def test_features_are_unit_vectors_at_the_models_size_and_frame_count(trepa):
    features = trepa.features(clips(1, batch=3, size=40))  # resized to 16 px inside
    assert features.shape == (3, 32)
    torch.testing.assert_close(features.norm(dim=-1), torch.ones(3))
    with pytest.raises(ValueError, match=r"\(B, 3, 4, H, W\)"):
        trepa.features(torch.zeros(1, 3, FRAMES + 1, SIZE, SIZE))


def test_saved_pretraining_model_loads_as_the_same_encoder(saved, trepa):
    model, folder = saved
    assert {"config.json", "model.safetensors", "preprocessor_config.json"} <= {
        p.name for p in folder.iterdir()
    }
    for name, tensor in model.videomae.state_dict().items():
        torch.testing.assert_close(trepa.encoder.state_dict()[name], tensor, rtol=0, atol=0)
    assert trepa.fc_norm is None
    processor = json.loads((folder / "preprocessor_config.json").read_text())
    torch.testing.assert_close(trepa.mean.flatten(), torch.tensor(processor["image_mean"]))


def test_a_classification_folder_brings_its_fc_norm_and_latentsync_scaling(tmp_path):
    """A VideoMAE-v2-style folder: fine-tuned classifier checkpoint, mean pooling + fc_norm, no processor file."""
    from transformers import VideoMAEConfig, VideoMAEForVideoClassification

    config = VideoMAEConfig(
        **{**videomae_config(tiny_params()).to_dict(), "use_mean_pooling": True, "num_labels": 5}
    )
    torch.manual_seed(1)
    model = VideoMAEForVideoClassification(config).eval()
    with torch.no_grad():
        model.fc_norm.weight.uniform_(0.5, 1.5)
    model.save_pretrained(tmp_path)
    trepa = load_trepa(tmp_path)
    assert trepa.fc_norm is not None
    torch.testing.assert_close(trepa.fc_norm.weight, model.fc_norm.weight)
    assert trepa.mean.abs().sum() == 0
    assert torch.all(trepa.std == 1)
    video = clips(4, size=SIZE)
    with torch.no_grad():
        tokens = model.videomae(pixel_values=((video + 1) / 2).permute(0, 2, 1, 3, 4)).last_hidden_state
        expected = torch.nn.functional.normalize(model.fc_norm(tokens.mean(1)), dim=-1)
        torch.testing.assert_close(trepa.features(video), expected)


def test_missing_or_broken_folders_name_the_param(tmp_path, saved):
    with pytest.raises(UserError, match=r"pretrained\.videomae"):
        load_trepa(tmp_path / "nowhere")
    with pytest.raises(UserError, match=r"pretrained\.videomae is not set"):
        load_trepa(None)
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text((saved[1] / "config.json").read_text())
    with pytest.raises(UserError, match=r"no model\.safetensors.*pretrained\.videomae"):
        load_trepa(broken)
    save_file(
        {"embeddings.patch_embeddings.projection.bias": torch.zeros(32)}, str(broken / "model.safetensors")
    )
    with pytest.raises(UserError, match=r"missing or mis-shaped.*pretrained\.videomae"):
        load_trepa(broken)


def test_tube_mask_hides_the_same_patches_in_every_tubelet():
    config = videomae_config(tiny_params(num_frames=8))
    mask = tube_mask(3, config, 0.75, np.random.default_rng(0)).view(3, 4, 16)  # (B, F/t, n)
    assert mask.dtype == torch.bool
    assert torch.all(mask.sum(-1) == 12)
    assert torch.equal(mask, mask[:, :1].expand_as(mask))
    assert not torch.equal(mask[0], mask[1])


def synthetic_clips(seed: int, count: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (FRAMES + 3 + i, SIZE, SIZE, 3), dtype=np.uint8) for i in range(count)]


def test_a_killed_pretraining_resumes_to_the_same_weights(tmp_path, caplog):
    params = tiny_params()
    train, val = synthetic_clips(0, 3), synthetic_clips(1, 2)

    def fit(folder, stop_after=None):
        return Trainer(
            VideoMAERecipe(train, val, params), tmp_path / folder, torch.device("cpu"), seed=5
        ).fit(stop_after)

    whole, history = fit("whole")
    assert [row["step"] for row in history.rows] == [3, 6]
    assert all(np.isfinite(row["val_loss"]) for row in history.rows)
    fit("killed", stop_after=3)
    state = torch.load(tmp_path / "killed" / CHECKPOINT, weights_only=True)
    assert state["step"] == 2  # killed after step 3: the last checkpoint is step 2's
    assert not (tmp_path / "killed" / "model.safetensors").exists()  # the artifact only when finished
    with caplog.at_level(logging.INFO, logger="synclip.train"):
        resumed, resumed_history = fit("killed")
    assert "resuming pretrain_videomae from step 2" in caplog.text
    for name, tensor in whole.state_dict().items():
        torch.testing.assert_close(resumed.state_dict()[name], tensor, rtol=0, atol=0, msg=name)
    assert [r["val_loss"] for r in resumed_history.rows] == [r["val_loss"] for r in history.rows]
    loaded = load_trepa(tmp_path / "killed")
    for name, tensor in whole.videomae.state_dict().items():
        torch.testing.assert_close(loaded.encoder.state_dict()[name], tensor, rtol=0, atol=0)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("videomae.source=pretrained", r"pretrained\.videomae is not set"),
        ("videomae.patch_size=7", r"videomae\.image_size \(64\) must be a multiple of videomae\.patch_size"),
        ("videomae.mask_ratio=1.0", r"videomae\.mask_ratio"),
    ],
)
def test_videomae_params_are_checked(root, override, message):
    assert load_params(root / "params.yaml").videomae.num_frames == 16  # LatentSync's TREPA clip length
    with pytest.raises(ConfigError, match=message):
        load_params(root / "params.yaml", [override])
