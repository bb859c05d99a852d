"""UNet training: mixed noise, x̂0, named loss terms, windows and their audio, exact resumption, stage 2."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from diffusers import AutoencoderKL

from synclip.artifacts import CheckpointError, load_unet, save_unet
from synclip.audio.mel import mel_window
from synclip.audio.tokens import frame_tokens
from synclip.config import load_params
from synclip.constants import SAMPLES_PER_FRAME
from synclip.data.unet_windows import WindowClip, WindowSampler
from synclip.eval.samples import SampleSource, ValidationSample
from synclip.face.mask import load_mask
from synclip.inference.pipeline import PipelineConfig
from synclip.media.decode import iter_frames, read_audio
from synclip.nn.latent_norm import LatentNorm
from synclip.nn.syncnet import StableSyncNet, syncnet_config
from synclip.nn.unet import UNet3DConditionModel, unet_config
from synclip.train.diffusion import (
    DiffusionObjective,
    LowerFaceJitter,
    add_noise,
    mixed_noise,
    noise_correlation,
    noise_scheduler,
    predict_x0,
    velocity,
)
from synclip.train.losses import load_lpips
from synclip.train.optim import learning_rate
from synclip.train.trainer import Trainer
from synclip.train.trepa import load_trepa_term
from synclip.train.unet import UNetRecipe, Validation, initial_unet, judges, select_trainable

CPU = torch.device("cpu")
LATENT, WIDTH, STATES = 8, 8, 1  # h = w, audio width D, Whisper states L (S = 10·L tokens per frame)


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def params(root):
    return load_params(root / "params.yaml")


def tiny_unet_params(params):
    return dataclasses.replace(
        params.unet,
        block_out_channels=(8, 16, 16),
        norm_num_groups=4,
        num_attention_heads=2,
        motion_num_attention_heads=2,
    )


def tiny_stage(params, **changes):
    stage = params.train_unet.stage1
    values = dict(num_frames=4, batch_size=1, max_steps=4, val_every=2, val_windows=2, checkpoint_every=1)
    return dataclasses.replace(stage, **(values | changes))


def synthetic_clip(name: str, frames: int, shift: int = 0, seed: int = 0) -> WindowClip:
    generator = torch.Generator().manual_seed(seed)
    tokens = 2 * frames + 1
    # token t's features are all t, so a window's values name the tokens it holds
    features = torch.arange(tokens, dtype=torch.float32)[:, None, None].expand(tokens, STATES, WIDTH)
    posteriors = {
        k: torch.randn(frames, 4, LATENT, LATENT, generator=generator) for k in ("mean", "masked_mean")
    }
    posteriors |= {k: torch.full((frames, 4, LATENT, LATENT), 0.05) for k in ("std", "masked_std")}
    mel = torch.arange(4 * frames, dtype=torch.float32)[None].expand(80, -1)  # mel frame k holds k
    return WindowClip(name, name[:4], posteriors, features.contiguous(), mel.contiguous(), shift, None)


def test_mixed_noise_has_the_stated_inter_frame_correlation():
    generator = torch.Generator().manual_seed(0)
    for alpha in (1.0, 2.0, 0.0):
        noise = mixed_noise((20_000, 1, 3, 1, 1), alpha, generator).flatten(1)  # (N, F)
        assert noise.var(dim=0).sub(1).abs().max() < 0.05  # unit variance per frame
        measured = torch.corrcoef(noise.T)[0, 1:]
        assert (measured - noise_correlation(alpha)).abs().max() < 0.03, (alpha, measured)
    assert noise_correlation(1.0) == 0.5


def test_one_step_x0_inverts_the_forward_process_when_the_noise_is_known():
    scheduler = noise_scheduler()
    assert scheduler.config.beta_schedule == "scaled_linear"
    assert scheduler.config.num_train_timesteps == 1000
    latents = torch.randn(3, 4, 2, 4, 4)
    noise = mixed_noise(tuple(latents.shape), 1.0)
    timesteps = torch.tensor([0, 500, 999])
    noisy = add_noise(scheduler, latents, noise, timesteps)
    torch.testing.assert_close(noisy, scheduler.add_noise(latents, noise, timesteps), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(predict_x0(scheduler, noisy, noise, timesteps), latents, rtol=0, atol=1e-4)


def test_v_prediction_target_and_its_x0_match_diffusers():
    scheduler = noise_scheduler()
    latents, noise = torch.randn(3, 4, 2, 4, 4), torch.randn(3, 4, 2, 4, 4)
    timesteps = torch.tensor([0, 500, 999])
    noisy = add_noise(scheduler, latents, noise, timesteps)
    v = velocity(scheduler, latents, noise, timesteps)
    torch.testing.assert_close(v, scheduler.get_velocity(latents, noise, timesteps), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(
        predict_x0(scheduler, noisy, v, timesteps, "v_prediction"), latents, atol=1e-5, rtol=0
    )
    # at t = 999 ε's x̂0 multiplies an output error by 1/sqrt(ᾱ) ≈ 15, v's by sqrt(1 − ᾱ) < 1
    error = torch.full_like(noise, 0.01)
    eps_x0 = predict_x0(scheduler, noisy, noise + error, timesteps)
    v_x0 = predict_x0(scheduler, noisy, v + error, timesteps, "v_prediction")
    assert float((eps_x0 - latents)[2].abs().max()) > 0.1
    assert float((v_x0 - latents)[2].abs().max()) < 0.01
    with pytest.raises(ValueError, match="prediction_type"):
        predict_x0(scheduler, noisy, v, timesteps, "sample")


class FakeUNet(torch.nn.Module):
    """Outputs `output` (None: zeros shaped like the latents) and keeps every input it was given."""

    def __init__(self, output: torch.Tensor | None = None):
        super().__init__()
        self.output, self.seen = output, []

    def forward(self, sample, timestep, audio):
        self.seen.append(sample)
        return self.output if self.output is not None else torch.zeros_like(sample[:, :4])


def test_a_v_prediction_objective_scores_the_unet_against_v():
    clips = [synthetic_clip("m000", 30)]
    sampler = WindowSampler(clips, 2, np.random.default_rng(0))
    batch = sampler.batch([sampler.draw()])
    noise, timesteps = torch.randn_like(batch.latents), torch.tensor([700])
    v = velocity(noise_scheduler(), batch.latents, noise, timesteps)
    for prediction, exact, other in (("v_prediction", v, noise), ("epsilon", noise, v)):
        objective = DiffusionObjective({"recon": 1.0}, prediction_type=prediction)
        assert float(objective(FakeUNet(exact), batch, noise, timesteps)["recon"]) < 1e-10
        assert float(objective(FakeUNet(other), batch, noise, timesteps)["recon"]) > 0.01
    with pytest.raises(ValueError, match="prediction_type"):
        DiffusionObjective({"recon": 1.0}, prediction_type="sample")


def test_latent_norm_reads_only_the_kept_cells_and_inverts_exactly():
    generator = torch.Generator().manual_seed(0)
    reference = torch.randn(2, 4, 3, 8, 8, generator=generator) * 3 + 5
    keep = torch.zeros(1, 1, 1, 8, 8)
    keep[..., :4, :] = 1  # the upper half, as the mask keeps it
    norm = LatentNorm.of_reference(reference, keep)
    upper = reference[..., :4, :]
    torch.testing.assert_close(norm.mean, upper.mean(dim=(2, 3, 4), keepdim=True))
    torch.testing.assert_close(norm.std**2, upper.var(dim=(2, 3, 4), unbiased=False, keepdim=True) + 0.01)
    # the generated (lower) cells, where the mouth is, do not move the statistics
    mouth = reference.clone()
    mouth[..., 4:, :] = torch.randn(2, 4, 3, 4, 8, generator=generator) * 10
    moved = LatentNorm.of_reference(mouth, keep)
    assert torch.equal(moved.mean, norm.mean)
    assert torch.equal(moved.std, norm.std)
    latents = torch.randn(2, 4, 3, 8, 8, generator=generator)
    torch.testing.assert_close(norm.invert(norm.apply(latents)), latents)
    with pytest.raises(ValueError, match="keeps no latent cell"):
        LatentNorm.of_reference(reference, torch.zeros_like(keep))


def test_a_reference_normalised_objective_sees_a_recoloured_face_as_the_same_face():
    """Every latent of a window moved by a per-channel affine map (another face colour, as far as the
    latent space is concerned): with latent_norm reference the UNet gets the same input and the loss
    is the same; without, it sees another face."""
    clips = [synthetic_clip("m000", 30)]
    sampler = WindowSampler(clips, 2, np.random.default_rng(0))
    batch = sampler.batch([sampler.draw()])
    gain, shift = (
        torch.linspace(1.0, 2.0, 4).view(1, 4, 1, 1, 1),
        torch.linspace(-3, 3, 4).view(1, 4, 1, 1, 1),
    )
    recoloured = dataclasses.replace(
        batch,
        latents=batch.latents * gain + shift,
        masked_latents=batch.masked_latents * gain + shift,
        reference_latents=batch.reference_latents * gain + shift,
    )
    noise, timesteps = torch.randn_like(batch.latents), torch.tensor([700])
    for latent_norm in ("reference", "none"):
        objective = DiffusionObjective(
            {"recon": 1.0}, prediction_type="v_prediction", latent_norm=latent_norm
        )
        unet = FakeUNet()
        losses = [float(objective(unet, b, noise, timesteps)["recon"]) for b in (batch, recoloured)]
        same_input = torch.allclose(unet.seen[0], unet.seen[1], atol=0.02)
        same_loss = abs(losses[0] - losses[1]) < 0.02 * losses[0]
        assert same_input == same_loss == (latent_norm == "reference"), latent_norm
    with pytest.raises(ValueError, match="latent_norm"):
        DiffusionObjective({"recon": 1.0}, latent_norm="batch")


def test_lower_face_jitter_changes_the_generated_cells_of_target_and_reference_alike():
    """The same per-channel gain and shift on the generated cells of the target and the reference; the kept
    cells and the masked latents (the UNet's view of the upper face) stay as they are."""
    sampler = WindowSampler([synthetic_clip("m000", 30)], 2, np.random.default_rng(0))
    batch = sampler.batch([sampler.draw(), sampler.draw()], sample=False)
    torch.manual_seed(0)
    jitter = LowerFaceJitter.draw(2, 4, 0.2, 0.5)
    assert jitter.gain.shape == jitter.shift.shape == (2, 4, 1, 1, 1)
    assert not torch.allclose(jitter.gain[0], jitter.gain[1])  # one draw per window
    kept = (batch.mask > 0.5).expand_as(batch.latents)
    for latents in (batch.latents, batch.reference_latents):
        moved = jitter.apply(latents, batch.mask)
        torch.testing.assert_close(moved[kept], latents[kept], rtol=0, atol=0)
        torch.testing.assert_close(moved[~kept], (latents * jitter.gain + jitter.shift)[~kept])

    noise, timesteps = torch.randn_like(batch.latents), torch.tensor([700, 300])
    objective = DiffusionObjective({"recon": 1.0}, prediction_type="v_prediction", latent_norm="reference")
    unet = FakeUNet()
    plain = float(objective(unet, batch, noise, timesteps)["recon"])
    jittered = float(objective(unet, batch, noise, timesteps, jitter=jitter)["recon"])
    assert plain != pytest.approx(jittered)  # the target moved with it
    channels = batch.latents.shape[1]
    as_seen = [sample[:, 1 + channels :] for sample in unet.seen]  # (mask, masked, reference) after the noisy
    torch.testing.assert_close(as_seen[0][:, :channels], as_seen[1][:, :channels])  # masked: untouched
    generated = ~(batch.mask > 0.5).expand_as(batch.latents)
    assert not torch.allclose(as_seen[0][:, channels:][generated], as_seen[1][:, channels:][generated])
    torch.testing.assert_close(as_seen[0][:, channels:][~generated], as_seen[1][:, channels:][~generated])

    with_pixels = DiffusionObjective({"recon": 1.0, "trepa": 1.0}, vae=tiny_vae(), trepa=torch.nn.Identity())
    with pytest.raises(ValueError, match="jitter with pixel loss terms"):
        with_pixels(unet, batch, noise, timesteps, jitter=jitter)


@pytest.mark.parametrize(
    ("key", "stored", "wanted", "message"),
    [
        (
            "prediction_type",
            "epsilon",
            "v_prediction",
            r"trained to predict epsilon; unet\.prediction_type is v_prediction",
        ),
        ("latent_norm", "none", "reference", r"latent_norm none latents; unet\.latent_norm is reference"),
    ],
)
def test_a_stage_does_not_start_from_a_unet_trained_for_other_latents_or_outputs(
    params, tmp_path, key, stored, wanted, message
):
    """ε against v, raw against standardised latents: the weights would load and predict the wrong thing."""
    unet_params = dataclasses.replace(tiny_unet_params(params), **{key: stored})
    stage1 = params.train_unet.stage(1)
    save_unet(tmp_path / "init", UNet3DConditionModel(unet_config(unet_params, stage1, audio_width=WIDTH)))
    other = dataclasses.replace(unet_params, **{key: wanted})
    with pytest.raises(CheckpointError, match=message):
        initial_unet(unet_config(other, stage1, audio_width=WIDTH), tmp_path / "init")
    model, _ = initial_unet(unet_config(unet_params, stage1, audio_width=WIDTH), tmp_path / "init")
    assert getattr(model.config, key) == stored
    fresh, _ = initial_unet(unet_config(other, stage1, audio_width=WIDTH), None)
    save_unet(tmp_path / "fresh", fresh)
    assert getattr(load_unet(tmp_path / "fresh").config, key) == wanted


def test_reference_windows_never_overlap_and_audio_follows_the_shift():
    clips = [
        synthetic_clip("a000", 40, shift=0),
        synthetic_clip("b000", 40, shift=3),
        synthetic_clip("c000", 7),
    ]
    sampler = WindowSampler(clips, 8, np.random.default_rng(0))
    assert sampler.skipped == ["c000"]  # too short for two 8-frame windows
    for _ in range(300):
        window = sampler.draw()
        clip = sampler.clips[window.clip]
        assert abs(window.reference - window.start) >= 8
        assert 0 <= window.reference <= clip.num_frames - 8
        assert window.start + clip.shift >= 0
        assert window.start + clip.shift + 8 <= clip.audio_frames
    window = next(w for w in iter(sampler.draw, None) if sampler.clips[w.clip].shift == 3)
    clip = sampler.clips[window.clip]
    batch = sampler.batch([window], sample=False)
    first = window.start + 3  # the audio of frame t is at t + audio_shift
    expected = frame_tokens(clip.features, range(clip.audio_frames))[first : first + 8]
    torch.testing.assert_close(batch.audio[0], expected)
    # frame i's tokens are [2i − 4, 2i + 6): token 2i sits at position 4
    assert batch.audio[0, :, 4, 0].tolist() == [2.0 * (first + i) for i in range(8)]
    torch.testing.assert_close(batch.mel[0, 0], mel_window(clip.mel, first, 8))
    torch.testing.assert_close(
        batch.latents[0].transpose(0, 1), clip.posteriors["mean"][window.start : window.start + 8]
    )
    torch.testing.assert_close(
        batch.reference_latents[0].transpose(0, 1),
        clip.posteriors["mean"][window.reference : window.reference + 8],
    )
    assert batch.mask.shape == (1, 1, 8, LATENT, LATENT)
    assert set(batch.mask.unique().tolist()) == {0.0, 1.0}


def test_single_frame_references_keep_the_gap():
    clips = [synthetic_clip("a000", 40), synthetic_clip("b000", 20)]
    sampler = WindowSampler(clips, 1, np.random.default_rng(0), gap=16)
    assert sampler.skipped == []  # 20 frames: targets 0-3 and 16-19 have a reference 16 away
    starts = set()
    for _ in range(500):
        window = sampler.draw()
        assert abs(window.reference - window.start) >= 16
        starts.add((window.clip, window.start))
    assert {s for c, s in starts if c == 1} == {0, 1, 2, 3, 16, 17, 18, 19}
    with pytest.raises(ValueError, match="20 frames apart"):
        WindowSampler([synthetic_clip("c000", 20)], 1, np.random.default_rng(0), gap=20)


class AudioEcho(torch.nn.Module):
    """ε̂ = the mean audio token of each frame (or 0 when `listens` is False): a UNet stand-in."""

    def __init__(self, listens: bool) -> None:
        super().__init__()
        self.listens = listens

    def forward(self, sample, timestep, audio):
        batch, _, frames, height, width = sample.shape
        level = audio.mean(dim=(2, 3)) if self.listens else torch.zeros(batch, frames)
        return level[:, None, :, None, None].expand(batch, 4, frames, height, width)


def test_validation_audio_gain_is_zero_for_a_unet_that_ignores_the_audio():
    clips = [synthetic_clip(f"v{i:03d}", 30, seed=i) for i in range(3)]
    validation = Validation(WindowSampler(clips, 2, np.random.default_rng(1)), 6, 1.0, 2, batch_size=4)
    assert [len(t) for t in validation.timesteps] == [4, 2]
    objective = DiffusionObjective({"recon": 1.0})
    deaf = validation(AudioEcho(listens=False), objective, torch.device("cpu"))
    assert deaf["audio_gain"] == 0.0
    assert deaf["recon"] == pytest.approx(1.0, abs=0.3)  # ε̂ = 0 against unit noise
    # the synthetic tokens name their position in the clip, so another window's audio changes ε̂
    listening = validation(AudioEcho(listens=True), objective, torch.device("cpu"))
    assert listening["audio_gain"] != 0.0
    assert listening["recon"] != deaf["recon"]


class FixedError(torch.nn.Module):
    """ε̂ = `error` whatever the input (the tests below draw zero noise)."""

    def __init__(self, error: torch.Tensor) -> None:
        super().__init__()
        self.error = error

    def forward(self, sample, timestep, audio):
        return self.error.expand(sample.shape[0], 4, sample.shape[2], -1, -1)


def test_the_mouth_weighted_error_counts_the_mouth_cells_more():
    clips = [synthetic_clip("m000", 30)]
    sampler = WindowSampler(clips, 2, np.random.default_rng(0))
    batch = sampler.batch([sampler.draw()])
    noise, timesteps = torch.zeros_like(batch.latents), torch.tensor([500])
    mouth = torch.zeros(LATENT, LATENT)
    box = (0.5, 0.75, 0.25, 0.75)  # rows 4-6 and columns 2-6 of 8
    mouth[4:6, 2:6] = 1
    inside, outside = FixedError(mouth), FixedError(1 - mouth)
    plain = DiffusionObjective({"recon": 1.0})
    weighted = DiffusionObjective({"recon": 1.0}, recon_mouth=box, recon_mouth_weight=4.0)
    unweighted = DiffusionObjective({"recon": 1.0}, recon_mouth=box, recon_mouth_weight=0.0)
    for model in (inside, outside):
        assert (
            unweighted(model, batch, noise, timesteps)["recon"]
            == plain(model, batch, noise, timesteps)["recon"]
        )

    # per unit of plain error, a mouth cell weighs 1 + 4 times a cell elsewhere
    def ratio(model) -> float:
        return float(
            weighted(model, batch, noise, timesteps)["recon"] / plain(model, batch, noise, timesteps)["recon"]
        )

    assert ratio(inside) / ratio(outside) == pytest.approx(5.0)
    assert float(weighted.recon_weights((LATENT, LATENT), torch.device("cpu")).mean()) == pytest.approx(1.0)


def test_unavailable_terms_are_disabled_with_their_reason():
    lpips, lpips_reason = load_lpips(None)
    trepa, trepa_reason = load_trepa_term(None)
    assert lpips is None
    assert "lpips_vgg" in lpips_reason
    objective = DiffusionObjective(
        {"recon": 1.0, "sync": 0.0, "lpips": 0.1, "trepa": 10.0},
        vae=tiny_vae(),
        lpips=lpips,
        trepa=trepa,
        unavailable={"lpips": lpips_reason, "trepa": trepa_reason},
    )
    assert objective.weights == {"recon": 1.0}
    assert objective.disabled == {"sync": "weight 0", "lpips": lpips_reason, "trepa": trepa_reason}
    assert load_trepa_term("/no/such/folder")[0] is None
    with pytest.raises(ValueError, match="unknown loss terms"):
        DiffusionObjective({"recon": 1.0, "l2": 1.0})


def tiny_vae(resolution: int = 64) -> AutoencoderKL:
    torch.manual_seed(0)
    vae = AutoencoderKL(
        down_block_types=["DownEncoderBlock2D"] * 4,
        up_block_types=["UpDecoderBlock2D"] * 4,
        block_out_channels=[8, 8, 8, 8],
        layers_per_block=1,
        norm_num_groups=4,
        sample_size=resolution,
    )
    vae.register_to_config(scaling_factor=0.5)
    return vae.eval().requires_grad_(False)


def test_sync_term_reaches_the_unet_through_the_decoder(params):
    sync = syncnet_config(params.syncnet)  # 16 frames of the mouth crop of a 128 px face
    syncnet = StableSyncNet(sync).eval().requires_grad_(False)
    objective = DiffusionObjective(
        {"recon": 1.0, "sync": 0.05}, pixel_region=sync.crop, vae=tiny_vae(128), syncnet=syncnet
    )
    clip = synthetic_clip("a000", 40)
    clip.posteriors = {
        k: torch.nn.functional.interpolate(v, size=(16, 16)) for k, v in clip.posteriors.items()
    }
    sampler = WindowSampler([clip], 16, np.random.default_rng(0))
    batch = sampler.batch([sampler.draw()])
    config = unet_config(tiny_unet_params(params), tiny_stage(params), audio_width=WIDTH)
    unet = UNet3DConditionModel(config)
    terms = objective(unet, batch, mixed_noise(tuple(batch.latents.shape), 1.0), torch.tensor([300]))
    assert set(terms) == {"recon", "sync", "total"}
    torch.testing.assert_close(terms["total"], terms["recon"] + 0.05 * terms["sync"])
    terms["sync"].backward()
    assert unet.conv_out.weight.grad is not None
    assert unet.conv_out.weight.grad.abs().sum() > 0


def test_a_new_judge_keeps_a_finished_checkpoint_from_being_resumed(params):
    """The stage-2 loss goes through the SyncNet and the VAE decoder: other weights, another run."""
    sync = syncnet_config(params.syncnet)
    first, second = (StableSyncNet(sync).eval().requires_grad_(False) for _ in range(2))
    vae = tiny_vae(128)

    def objective(weights, syncnet):
        return DiffusionObjective(weights, pixel_region=sync.crop, vae=vae, syncnet=syncnet)

    stage_two = judges(objective({"recon": 1.0, "sync": 0.05}, first))
    assert set(stage_two) == {"sync", "vae"}
    assert judges(objective({"recon": 1.0, "sync": 0.05}, first)) == stage_two
    assert judges(objective({"recon": 1.0, "sync": 0.05}, second))["sync"] != stage_two["sync"]
    assert judges(objective({"recon": 1.0}, first)) == {}  # stage 1: the SyncNet only scores samples


def test_a_killed_run_resumes_to_the_same_weights(params, tmp_path):
    stage = tiny_stage(params)
    config = unet_config(tiny_unet_params(params), stage, audio_width=WIDTH)
    train = [synthetic_clip(f"t{i:03d}", 24, shift=i - 1, seed=i) for i in range(3)]
    val = [synthetic_clip("v000", 24, seed=9)]
    objective = DiffusionObjective({"recon": 1.0})

    def fit(folder, stop_after=None):
        return Trainer(UNetRecipe(train, val, objective, config, stage), tmp_path / folder, CPU, seed=5).fit(
            stop_after
        )

    straight, history = fit("a")
    fit("b", stop_after=3)
    assert not (tmp_path / "b" / "model.safetensors").exists()  # killed before the end
    resumed, resumed_history = fit("b")
    torch.testing.assert_close(resumed.state_dict(), straight.state_dict(), rtol=0, atol=0)
    assert [r["val_recon"] for r in resumed_history.rows] == [r["val_recon"] for r in history.rows]
    assert [r["step"] for r in history.rows] == [2, 4]
    torch.testing.assert_close(load_unet(tmp_path / "b").state_dict(), straight.state_dict())


def test_validation_samples_are_written_scored_and_survive_a_resume(params, tmp_path):
    stage = tiny_stage(params, sample_every=2)
    config = unet_config(tiny_unet_params(params), stage, audio_width=WIDTH)
    train = [synthetic_clip(f"t{i:03d}", 24, seed=i) for i in range(2)]
    val = [synthetic_clip("v000", 24, seed=9)]
    objective = DiffusionObjective({"recon": 1.0})
    rng = np.random.default_rng(0)
    frames = 46  # syncnet.num_frames + 2 · max_offset, the least the config allows
    source = SampleSource(
        "v000",
        "v001",
        rng.integers(0, 255, (frames, 128, 128, 3), dtype=np.uint8),
        rng.uniform(-0.5, 0.5, frames * SAMPLES_PER_FRAME).astype(np.float32),
        rng.integers(0, 255, (frames, 128, 128, 3), dtype=np.uint8),
    )
    tokens = torch.randn(frames, 10 * STATES, WIDTH, generator=torch.Generator().manual_seed(0))
    syncnet = StableSyncNet(syncnet_config(params.syncnet)).eval()
    sampler = PipelineConfig(resolution=128, num_frames=16, overlap=4, steps=2, guidance=1.5, seed=1, eta=1.0)

    def fit(folder, samples=True, stop_after=None):
        vae, mask, out = tiny_vae(128), load_mask(128), tmp_path / f"{folder}_samples"
        sample = ValidationSample(source, tokens, vae, mask, sampler, out, syncnet) if samples else None
        recipe = UNetRecipe(train, val, objective, config, stage, sample=sample)
        return Trainer(recipe, tmp_path / folder, CPU, seed=5).fit(stop_after)

    straight, history = fit("a")
    plain, _ = fit("plain", samples=False)  # sampling draws nothing from the training RNGs:
    torch.testing.assert_close(straight.state_dict(), plain.state_dict(), rtol=0, atol=0)
    assert [r["step"] for r in history.rows if "sample_lse_c" in r] == [2, 4]
    assert all(isinstance(r["sample_offset"], int) and r["sample_lse_c"] >= 0 for r in history.rows)
    video = tmp_path / "a_samples" / "step_000004.mp4"
    pictures = list(iter_frames(video))
    assert len(pictures) == frames
    assert pictures[0].shape == (128, 256, 3)  # generated | input
    assert abs(len(read_audio(video)) - frames * SAMPLES_PER_FRAME) <= SAMPLES_PER_FRAME

    samples = tmp_path / "b_samples"
    samples.mkdir()
    (samples / "step_000006.mp4").write_bytes(b"from an earlier run")
    fit("b", stop_after=3)
    assert sorted(p.name for p in samples.iterdir()) == ["step_000002.mp4"]
    resumed, resumed_history = fit("b")
    assert sorted(p.name for p in samples.iterdir()) == ["step_000002.mp4", "step_000004.mp4"]
    assert [r["sample_lse_c"] for r in resumed_history.rows] == [r["sample_lse_c"] for r in history.rows]
    torch.testing.assert_close(resumed.state_dict(), straight.state_dict(), rtol=0, atol=0)


def test_the_learning_rate_warms_up_then_decays_to_its_floor(params, tmp_path):
    stage = tiny_stage(params, lr=1e-3, warmup_steps=2, final_lr_fraction=0.1, max_steps=6)
    ratios = [round(learning_rate(stage, s) / stage.lr, 4) for s in range(7)]
    assert ratios == [0.5, 1.0, 1.0, 0.8682, 0.55, 0.2318, 0.1]
    constant = tiny_stage(params, lr=1e-3, warmup_steps=0, final_lr_fraction=1.0)
    assert {learning_rate(constant, s) for s in range(5)} == {1e-3}

    config = unet_config(tiny_unet_params(params), stage, audio_width=WIDTH)
    train = [synthetic_clip(f"t{i:03d}", 24, seed=i) for i in range(2)]
    val = [synthetic_clip("v000", 24, seed=9)]
    recipe = UNetRecipe(train, val, DiffusionObjective({"recon": 1.0}), config, stage)
    Trainer(recipe, tmp_path, CPU, seed=5).fit(stop_after=4)
    state = torch.load(tmp_path / "checkpoint.pt", weights_only=False)
    last_lr = state["optimizer"]["param_groups"][0]["lr"]  # set for the 4th step (step index 3)
    assert last_lr == pytest.approx(learning_rate(stage, 3))


def test_stage_two_starts_from_stage_one_and_trains_only_its_patterns(params, tmp_path):
    unet_params = tiny_unet_params(params)
    stage1, stage2 = params.train_unet.stage(1), params.train_unet.stage(2)
    first = UNet3DConditionModel(unet_config(unet_params, stage1, audio_width=WIDTH))
    save_unet(tmp_path / "stage1", first)
    model, fresh = initial_unet(unet_config(unet_params, stage2, audio_width=WIDTH), tmp_path / "stage1")
    assert fresh
    assert all(".motion_modules." in k for k in fresh)
    torch.testing.assert_close(model.conv_in.weight, first.conv_in.weight)
    trainable = set(select_trainable(model, stage2.trainable))
    clip = synthetic_clip("a000", 20)
    sampler = WindowSampler([clip], 4, np.random.default_rng(0))
    batch = sampler.batch([sampler.draw()])
    terms = DiffusionObjective({"recon": 1.0})(
        model, batch, torch.randn_like(batch.latents), torch.tensor([10])
    )
    terms["total"].backward()
    for name, parameter in model.named_parameters():
        assert (parameter.grad is not None) == (name in trainable), name
    assert any(".motion_modules." in n for n in trainable)
    assert any(".attentions." in n for n in trainable)
    assert not any(n.startswith(("conv_in", "conv_out", "time_embedding")) for n in trainable)
    with pytest.raises(ValueError, match="matches no parameter"):
        select_trainable(model, ("*no_such_module*",))
