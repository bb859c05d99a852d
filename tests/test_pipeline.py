"""LipSyncPipeline (tensors) and `synclip lipsync` (files): sampler equivalences, streaming, bad input."""

from __future__ import annotations

import json
import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np
import pytest
import torch
from conftest import tiny_whisper_folder
from diffusers import AutoencoderKL, DDIMScheduler
from einops import rearrange, repeat

from synclip.artifacts import CheckpointError
from synclip.audio.tokens import AudioTokens, frame_tokens
from synclip.audio.whisper import whisper_features, whisper_log_mel
from synclip.config import ConfigError
from synclip.data.faces import FaceRenderer, Identity, MouthState, Pose
from synclip.errors import UserError
from synclip.face.align import invert
from synclip.face.landmarks import FACE_OVAL
from synclip.face.mask import load_mask
from synclip.face.paste import Placement, feather
from synclip.inference.lipsync import (
    LipSyncOptions,
    SynclipFaces,
    lipsync_file,
    output_frames,
    ping_pong,
    speech_tokens,
    synced_frames,
)
from synclip.inference.package import PIPELINE_FILE, assemble, load_pipeline
from synclip.inference.pipeline import LipSyncPipeline, PipelineConfig
from synclip.media.decode import iter_frames, read_audio
from synclip.media.io import VideoWriter
from synclip.media.probe import probe
from synclip.nn.unet import UNet3DConditionModel, UNetConfig
from synclip.runtime import cpu_has_bf16

ROOT = Path(__file__).resolve().parents[1]
SYNCLIP = Path(sys.executable).with_name("synclip")
RES, WIDTH, TOKENS = 32, 16, 30  # face size, audio width D, S = 10 tokens × 3 Whisper states


pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_unet(
    joint: bool = False,
    seed: int = 0,
    latent_channels: int = 4,
    prediction_type: str = "epsilon",
    latent_norm: str = "none",
) -> UNet3DConditionModel:
    """Two levels, 16/32 channels; `joint=False` makes frames independent (chunking cannot matter)."""
    torch.manual_seed(seed)
    return UNet3DConditionModel(
        UNetConfig(
            in_channels=3 * latent_channels + 1,
            out_channels=latent_channels,
            block_out_channels=(16, 32),
            down_block_types=("CrossAttnDownBlock3D", "DownBlock3D"),
            up_block_types=("UpBlock3D", "CrossAttnUpBlock3D"),
            layers_per_block=1,
            num_attention_heads=2,
            norm_num_groups=8,
            cross_attention_dim=WIDTH,
            joint_frame_groupnorm=joint,
            prediction_type=prediction_type,
            latent_norm=latent_norm,
        )
    )


def tiny_vae() -> AutoencoderKL:
    torch.manual_seed(1)
    return AutoencoderKL(
        block_out_channels=(8, 8, 8),
        down_block_types=["DownEncoderBlock2D"] * 3,
        up_block_types=["UpDecoderBlock2D"] * 3,
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=4,
        sample_size=RES,
    )


def tiny_whisper(folder: Path) -> Path:
    return tiny_whisper_folder(folder, seed=2)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("model")
    config = PipelineConfig(resolution=RES, num_frames=4, overlap=1, steps=2, guidance=1.5, seed=7)
    return assemble(tmp / "synclip", tiny_unet(), tiny_vae(), tiny_whisper(tmp / "whisper"), config)


@pytest.fixture(scope="module")
def pipe(model_dir) -> LipSyncPipeline:
    return load_pipeline(model_dir)


def inputs(frames: int = 6, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    faces = torch.rand(frames, 3, RES, RES, generator=generator) * 2 - 1
    return faces, torch.randn(frames, TOKENS, WIDTH, generator=generator)


def with_config(pipe: LipSyncPipeline, unet=None, **changes) -> LipSyncPipeline:
    config = PipelineConfig(**{**pipe.config.__dict__, **changes})
    return LipSyncPipeline(unet or pipe.unet, pipe.vae, pipe.audio_encoder, pipe.mask.cpu(), config)


# --- the tensor core -------------------------------------------------------------------------------


def test_guidance_one_is_exactly_the_conditional_ddim_loop(pipe):
    faces, audio = inputs(4)
    batches = []
    hook = pipe.unet.register_forward_hook(lambda _m, args, _o: batches.append(args[0].shape[0]))
    try:
        ours = pipe(faces, audio, steps=3, guidance=1.0, seed=3)
    finally:
        hook.remove()
    assert batches == [1, 1, 1]  # no unconditional pass

    # the reference sampler written out: shared noise, [noisy, mask, masked, reference], DDIM eta 0
    scheduler = DDIMScheduler.from_config(pipe.scheduler_config)
    scheduler.set_timesteps(3)
    with torch.no_grad():
        reference = pipe.encode(faces)
        masked = pipe.encode(faces * pipe.mask)
        noise = torch.randn(reference.shape[1:], generator=torch.Generator().manual_seed(3))
        latent_mask = torch.nn.functional.interpolate(pipe.mask[None], size=reference.shape[-2:])
        condition = torch.cat([latent_mask.expand(4, -1, -1, -1), masked, reference], dim=1)
        condition = rearrange(condition, "f c h w -> 1 c f h w")
        latents = repeat(noise, "c h w -> 1 c f h w", f=4)
        for t in scheduler.timesteps:
            eps = pipe.unet(torch.cat([latents, condition], dim=1), t, audio[None])
            latents = scheduler.step(eps, t, latents).prev_sample
        expected = pipe.decode(rearrange(latents, "1 c f h w -> f c h w"))
    expected = expected * (1 - pipe.mask) + faces * pipe.mask
    assert torch.equal(ours, expected)


def test_guidance_runs_a_null_audio_pass_and_changes_the_output(pipe):
    faces, audio = inputs(4)
    batches = []
    hook = pipe.unet.register_forward_hook(lambda _m, args, _o: batches.append(args[0].shape[0]))
    try:
        guided = pipe(faces, audio, steps=2, guidance=2.0)
    finally:
        hook.remove()
    assert batches == [2, 2]
    assert not torch.allclose(guided, pipe(faces, audio, steps=2, guidance=1.0))


def test_same_seed_same_output_other_seed_other_output(pipe):
    faces, audio = inputs(5)
    first = pipe(faces, audio, seed=11)
    assert torch.equal(first, pipe(faces, audio, seed=11))
    assert not torch.equal(first, pipe(faces, audio, seed=12))


def test_eta_draws_fresh_seeded_noise_every_step(pipe):
    faces, audio = inputs(5)
    ancestral = with_config(pipe, eta=1.0)
    first = ancestral(faces, audio, steps=3, seed=11)
    assert torch.equal(first, ancestral(faces, audio, steps=3, seed=11))  # seeded: reproducible
    assert not torch.equal(first, pipe(faces, audio, steps=3, seed=11))  # η 0 takes no noise after the first
    assert not torch.equal(first, ancestral(faces, audio, steps=3, seed=12))
    with pytest.raises(ValueError, match="eta must be in"):
        with_config(pipe, eta=1.5)


def test_only_the_masked_region_changes(pipe):
    faces, audio = inputs(4)
    out = pipe(faces, audio)
    keep = pipe.mask.bool().expand_as(faces[0])
    assert torch.equal(out[:, keep], faces[:, keep])
    assert not torch.equal(out[:, ~keep], faces[:, ~keep])


def test_noise_scale_multiplies_only_the_fresh_noise_of_each_step(pipe):
    """noise_scale s: the chain with draws (z_0, z_1 … z_n) equals s = 1's chain with (z_0, s·z_1 … s·z_n);
    at 0 the per-step draws no longer matter, at 1 they do."""
    faces, audio = inputs(4)
    with torch.no_grad():
        shape = tuple(pipe.encode(faces).shape[1:])
    noise = pipe.noise(5, shape, steps=3)  # (1 + steps, C, h, w)
    other = torch.cat([noise[:1], torch.randn(noise[1:].shape, generator=torch.Generator().manual_seed(6))])

    def run(scale: float, draws: torch.Tensor) -> torch.Tensor:
        return with_config(pipe, eta=1.0, noise_scale=scale).generate(faces, audio, draws, 3, 1.0, 1.0)

    scaled = torch.cat([noise[:1], 0.5 * noise[1:]])
    torch.testing.assert_close(run(0.5, noise), run(1.0, scaled), rtol=0, atol=1e-6)
    assert not torch.equal(run(0.5, noise), run(1.0, noise))
    torch.testing.assert_close(run(0.0, noise), run(0.0, other), rtol=0, atol=1e-6)
    assert float((run(1.0, noise) - run(1.0, other)).abs().max()) > 1e-3
    with pytest.raises(ConfigError, match="noise_scale must be >= 0"):
        with_config(pipe, noise_scale=-0.1)


@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_replaced_kept_cells_follow_the_input_latents_noised_with_the_first_draw(pipe, eta):
    """kept_cells replaced: at every step the UNet sees, on the cells the mask keeps, the input's own latents
    noised to that step's level with the initial draw; the decoded latents hold them almost noise-free.
    `generated` (LatentSync) leaves those cells to the UNet."""
    faces, audio = inputs(4)
    scheduler = DDIMScheduler.from_config(pipe.scheduler_config)
    scheduler.set_timesteps(3)
    alpha_bars = scheduler.alphas_cumprod[scheduler.timesteps].view(-1, 1, 1, 1, 1, 1)
    with torch.no_grad():
        reference = rearrange(pipe.encode(faces), "f c h w -> 1 c f h w")
    keep = torch.nn.functional.interpolate(pipe.mask[None], size=reference.shape[-2:])[0, 0] > 0.5  # (h, w)

    def sample(kept_cells: str) -> tuple[torch.Tensor, float, torch.Tensor]:
        """(steps, 1, C, F, kept cells) ε that each step's z_t implies there, the decoded latents' mean
        distance from the input's there, and the output."""
        sampler = with_config(pipe, kept_cells=kept_cells, eta=eta)
        seen, decoded = [], []
        hook = sampler.unet.register_forward_hook(lambda _m, args, _o: seen.append(args[0][:, :4]))
        decode = sampler.decode
        sampler.decode = lambda latents: decoded.append(latents) or decode(latents)
        try:
            out = sampler(faces, audio, steps=3, seed=3)
        finally:
            hook.remove()
        implied = (torch.stack(seen) - alpha_bars.sqrt() * reference) / (1 - alpha_bars).sqrt()
        error = decoded[0] - rearrange(reference, "1 c f h w -> f c h w")
        return implied[..., keep], float(error[..., keep].abs().mean()), out

    draws, error, out = sample("replaced")
    first = torch.randn(reference.shape[1], *reference.shape[-2:], generator=torch.Generator().manual_seed(3))
    for step in draws:  # the initial draw at every step
        torch.testing.assert_close(step[0], repeat(first[:, keep], "c n -> c f n", f=4))
    assert error < 0.05  # sqrt(1 − ᾱ) of the last step ≈ 0.03 of unit noise
    keep_pixels = pipe.mask.bool().expand_as(faces[0])
    assert torch.equal(out[:, keep_pixels], faces[:, keep_pixels])
    generated_draws, generated_error, generated = sample("generated")
    assert float((generated_draws - generated_draws[0]).abs().max()) > 0.1
    assert generated_error > 0.1
    assert not torch.equal(out, generated)


@pytest.mark.parametrize(
    ("num_frames", "overlap", "eta"), [(4, 1, 0.0), (4, 2, 0.0), (3, 0, 0.0), (2, 1, 0.0), (4, 1, 1.0)]
)
def test_chunked_equals_one_chunk_when_frames_are_independent(pipe, num_frames, overlap, eta):
    faces, audio = inputs(9)
    whole = with_config(pipe, num_frames=9, overlap=0, eta=eta)(faces, audio)
    chunked = with_config(pipe, num_frames=num_frames, overlap=overlap, eta=eta)(faces, audio)
    assert chunked.shape == whole.shape
    torch.testing.assert_close(chunked, whole, rtol=0, atol=1e-5)  # batch-size rounding only


def test_chunks_with_frame_mixing_differ_only_by_their_seams(pipe):
    """With clip-wide GroupNorm, chunks see different statistics; every frame still comes out, bounded."""
    faces, audio = inputs(7)
    unet = tiny_unet(joint=True)
    out = with_config(pipe, unet=unet, num_frames=4, overlap=2)(faces, audio)
    assert out.shape == faces.shape
    assert out.abs().max() <= 1


def test_stream_holds_one_chunk_of_inputs(pipe):
    """The stream pulls at most F inputs ahead of what it has given out (plus the overlap)."""
    faces, audio = inputs(12)
    pulled = 0

    def items():
        nonlocal pulled
        for item in zip(faces, audio, strict=True):
            pulled += 1
            yield item

    given = 0
    for _ in pipe.stream(items()):
        given += 1
        assert pulled - given <= pipe.config.num_frames
    assert given == 12


@pytest.mark.parametrize(("latents", "encoded"), [("mean", 2 * 9), ("sample", 2 * 4 * 3)])
def test_mean_latents_encode_each_frame_once_and_samples_each_chunk(pipe, latents, encoded):
    """9 frames in chunks of 4 overlapping by 1: 3 chunks. The means are kept for the shared frames;
    posterior samples are drawn per chunk (LatentSync's order), so each chunk encodes all its frames."""
    faces, audio = inputs(9)
    chunked = with_config(pipe, num_frames=4, overlap=1, latents=latents)
    frames = []
    hook = chunked.vae.encoder.register_forward_hook(lambda _m, args, _o: frames.append(args[0].shape[0]))
    try:
        out = chunked(faces, audio)
    finally:
        hook.remove()
    assert sum(frames) == encoded + (latents == "sample")  # sample: one more frame for the latent shape
    assert out.shape == faces.shape


def test_bf16_runs_the_unet_under_autocast_where_the_cpu_has_native_bf16(pipe):
    """precision bf16: the UNet's passes in bf16 where oneDNN runs it natively (fp32 elsewhere); the
    sampler's arithmetic and the output stay fp32, close to the fp32 run's."""
    faces, audio = inputs(4)
    autocast = []
    hook = pipe.unet.register_forward_hook(lambda *_: autocast.append(torch.is_autocast_enabled("cpu")))
    try:
        fp32 = pipe(faces, audio, steps=3)
        bf16 = with_config(pipe, precision="bf16")(faces, audio, steps=3)
    finally:
        hook.remove()
    native = cpu_has_bf16()
    assert autocast == [False] * 3 + [native] * 3
    assert bf16.dtype == torch.float32
    if native:
        assert not torch.equal(bf16, fp32)
    torch.testing.assert_close(bf16, fp32, rtol=0, atol=0.05)


def test_bad_shapes_and_settings_are_errors(pipe):
    faces, audio = inputs(3)
    with pytest.raises(ValueError, match="faces must be"):
        pipe(faces[:, :, :16], audio)
    with pytest.raises(ValueError, match="audio tokens must be"):
        pipe(faces, audio[:2])
    with pytest.raises(UserError, match="guidance"):
        pipe(faces, audio, guidance=0.5)
    with pytest.raises(UserError, match="steps"):
        pipe(faces, audio, steps=0)


def streamed_and_whole(pipe: LipSyncPipeline, samples: np.ndarray, frames: int, fps: Fraction):
    length = int(np.ceil(Fraction(frames + 1) / fps * 16_000))
    features = whisper_features(np.pad(samples, (0, length - len(samples))), pipe.audio_encoder)
    whole = frame_tokens(features, range(frames), fps)
    audio = AudioTokens(pipe.audio_encoder, samples, fps, length)
    streamed, held = [], []
    for i in range(frames):
        streamed.append(audio.frame(i))
        held.append(len(audio.held))
    return torch.stack(streamed), whole, held, audio


def test_audio_tokens_of_long_speech_are_the_whole_signal_features_two_windows_at_a_time(pipe):
    """70 s: four 30 s windows; the loud part is in the first only, so the others need the whole signal's floor."""
    rng = np.random.default_rng(5)
    samples = (1e-5 * rng.standard_normal(60 * 16_000)).astype(np.float32)  # quiet, 10^-10 below the tone
    t = np.arange(2 * 16_000) / 16_000
    samples[5 * 16_000 : 7 * 16_000] += (0.5 * np.sin(2 * np.pi * 300 * t)).astype(np.float32)
    samples[40 * 16_000 : 41 * 16_000] += (1e-3 * rng.standard_normal(16_000)).astype(np.float32)
    streamed, whole, held, audio = streamed_and_whole(pipe, samples, 70 * 25, Fraction(25))  # 10 s silent
    assert streamed.shape == whole.shape == (70 * 25, TOKENS, WIDTH)
    torch.testing.assert_close(streamed, whole, rtol=0, atol=1e-6)
    assert max(held) == 2  # a frame whose token window crosses a join needs both windows
    assert held[-1] == 1
    # each window's log-mel is the whole signal's: the same STFT frames, the same floor
    mel = whisper_log_mel(np.pad(samples, (0, audio.padded - len(samples))), 80)
    assert len(audio.spans) == 4
    for window, (start, _, _) in enumerate(audio.spans):
        cut = mel[:, 2 * start : 2 * start + 3000]
        torch.testing.assert_close(audio.window_mel(window), cut, rtol=0, atol=1e-6)
        if window == 0:  # the loud one: its floor is its own
            assert torch.equal(audio.window_mel(window), cut)


def test_audio_tokens_of_short_speech_are_bit_equal(pipe, media):
    samples = read_audio(media[1])  # 1 s, one window
    streamed, whole, held, _ = streamed_and_whole(pipe, samples, 30, Fraction(30))
    assert torch.equal(streamed, whole)
    assert set(held) == {1}


# --- packaging --------------------------------------------------------------------------------------


def test_packaged_folder_round_trips(model_dir, pipe):
    meta = json.loads((model_dir / PIPELINE_FILE).read_text())
    assert meta["kind"] == "synclip-pipeline"
    assert meta["resolution"] == RES
    assert "synclip_version" in meta
    assert pipe.config == PipelineConfig(
        resolution=RES, num_frames=4, overlap=1, steps=2, guidance=1.5, seed=7
    )
    assert pipe.scheduler_config["beta_schedule"] == "scaled_linear"
    assert pipe.scheduler_config["steps_offset"] == 1
    assert not pipe.scheduler_config["set_alpha_to_one"]
    assert torch.equal(pipe.mask.cpu(), load_mask(RES))
    for name, tensor in tiny_unet().state_dict().items():
        assert torch.equal(pipe.unet.state_dict()[name], tensor), name


def test_a_v_prediction_unet_is_packaged_and_sampled_as_v(tmp_path, model_dir, pipe):
    config = PipelineConfig(resolution=RES, num_frames=4, overlap=1, steps=2, guidance=1.0, seed=7)
    unet = tiny_unet(prediction_type="v_prediction")
    folder = assemble(tmp_path / "v", unet, tiny_vae(), model_dir / "whisper", config)
    scheduler = json.loads((folder / "scheduler" / "scheduler_config.json").read_text())
    assert scheduler["prediction_type"] == "v_prediction"
    v_pipe = load_pipeline(folder)
    assert v_pipe.scheduler_config["prediction_type"] == "v_prediction"
    assert pipe.scheduler_config["prediction_type"] == "epsilon"
    # the same weights read as v and as ε sample different faces
    faces, audio = inputs(4)
    as_eps = with_config(v_pipe, unet=tiny_unet())
    assert as_eps.scheduler_config["prediction_type"] == "epsilon"
    assert not torch.equal(v_pipe(faces, audio, seed=3), as_eps(faces, audio, seed=3))


def test_a_reference_normalised_unet_samples_in_its_standardised_latents(tmp_path, model_dir, pipe):
    config = PipelineConfig(resolution=RES, num_frames=4, overlap=1, steps=2, guidance=1.0, seed=7)
    folder = assemble(
        tmp_path / "n", tiny_unet(latent_norm="reference"), tiny_vae(), model_dir / "whisper", config
    )
    normalised = load_pipeline(folder)
    assert normalised.unet.config.latent_norm == "reference"
    seen = []
    hook = normalised.unet.register_forward_hook(lambda _m, args, _o: seen.append(args[0]))
    try:
        faces, audio = inputs(4)
        out = normalised(faces, audio, seed=3)
    finally:
        hook.remove()
    # (1, 13, F, h, w): z_t, mask, masked, reference. The reference channels on the kept cells have
    # mean 0 and at most unit std in every channel; the raw latents of these faces do not
    keep = seen[0][0, 4] > 0.5  # (F, h, w)
    reference = seen[0][0, 9:13][:, keep]  # (C, kept cells)
    assert float(reference.mean(dim=1).abs().max()) < 1e-4
    assert float(reference.std(dim=1, unbiased=False).max()) <= 1.0
    raw = normalised.encode(faces).detach()[:, :, keep[0]]  # (F, C, kept cells per frame)
    assert float(raw.mean(dim=(0, 2)).abs().max()) > 0.01
    # the same weights on raw latents sample other faces
    assert not torch.equal(out, with_config(normalised, unet=tiny_unet())(faces, audio, seed=3))


def test_assemble_replaces_a_folder_whole(tmp_path, model_dir):
    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "stale.txt").write_text("old")
    config = PipelineConfig(resolution=RES, num_frames=4, overlap=1)
    assemble(folder, tiny_unet(), tiny_vae(), model_dir / "whisper", config)
    assert not (folder / "stale.txt").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]  # no temporary left


def test_not_a_model_folder_and_mismatched_parts_are_errors(tmp_path, pipe):
    with pytest.raises(UserError, match="not a packaged synclip model"):
        load_pipeline(tmp_path)
    wide = UNet3DConditionModel(dataclass_replace(pipe.unet.config, cross_attention_dim=24))
    with pytest.raises(CheckpointError, match="cross_attention_dim"):
        LipSyncPipeline(wide, pipe.vae, pipe.audio_encoder, pipe.mask.cpu(), pipe.config)


def dataclass_replace(config, **changes):
    import dataclasses

    return dataclasses.replace(config, **changes)


# --- lengths ----------------------------------------------------------------------------------------


def test_lengths_follow_the_audio_unless_cut_or_pad():
    assert output_frames(10, 25) == 25
    assert output_frames(10, 25, cut=True) == 10
    assert output_frames(30, 25) == 25
    assert output_frames(30, 25, pad=True) == 30


def test_ping_pong_plays_forward_then_backward_without_repeating_ends():
    assert [ping_pong(i, 4) for i in range(9)] == [0, 1, 2, 3, 2, 1, 0, 1, 2]
    assert [ping_pong(i, 1) for i in range(3)] == [0, 0, 0]
    # LatentSync's loop shows each end frame twice at the turn
    assert [ping_pong(i, 4, repeat_ends=True) for i in range(10)] == [0, 1, 2, 3, 3, 2, 1, 0, 0, 1]
    assert [ping_pong(i, 1, repeat_ends=True) for i in range(3)] == [0, 0, 0]


# --- files ------------------------------------------------------------------------------------------

FACELESS = range(8, 12)  # frames of the test video that show no face


def talking_video(path: Path, frames: int = 20, size: tuple[int, int] = (192, 160)) -> Path:
    """A drawn face (SynthTalk's renderer) with a moving mouth; FACELESS frames show the background only."""
    width, height = size
    renderer = FaceRenderer(Identity.sample("id0001", np.random.default_rng(0)))
    rng = np.random.default_rng(1)
    backdrop = np.full((height, width, 3), (90, 120, 150), np.uint8)
    with VideoWriter(path, width, height, 25, audio_rate=16_000, crf=16, threads=1) as writer:
        for i in range(frames):
            image = backdrop.copy()
            if i not in FACELESS:
                opening = 0.5 + 0.5 * np.sin(i / 2)
                mouth = MouthState(opening, 0.5, 0.2, 0.3, 0.0)
                renderer.draw(
                    image, Pose(width / 2, height * 0.42, height * 0.28, 0.02 * np.sin(i)), mouth, 1.0
                )
            writer.write_frame(image)
            writer.write_audio(0.1 * rng.standard_normal((1, 640)).astype(np.float32))
    return path


def speech_wav(path: Path, seconds: float, rate: int = 44_100) -> Path:
    """Stereo 16-bit PCM WAV (mp4 cannot carry it as is: it must be encoded, keeping rate and channels)."""
    t = np.arange(int(seconds * rate)) / rate
    tone = (0.3 * np.sin(2 * np.pi * 220 * t) * (1 + np.sin(2 * np.pi * 3 * t))).astype(np.float32)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("pcm_s16le", rate=rate, layout="stereo")
        frame = av.AudioFrame.from_ndarray(
            (np.stack([tone, -tone]) * 32767).astype(np.int16).reshape(1, -1), format="s16", layout="stereo"
        )
        frame.sample_rate = rate
        for packet in stream.encode(frame):
            container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    return path


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    folder = tmp_path_factory.mktemp("media")
    return talking_video(folder / "face.mp4"), speech_wav(folder / "speech.wav", 1.0)


def decoded(path: Path) -> list[np.ndarray]:
    return list(iter_frames(path, fps=probe(path).video.fps))


@pytest.mark.pretrained
@pytest.mark.slow
def test_lipsync_keeps_size_rate_and_the_speech_and_loops_the_video(pipe, media, tmp_path, pretrained_dir):
    video, speech = media
    out = tmp_path / "out.mp4"
    summary = lipsync_file(pipe, video, speech, out, pretrained_dir / "face_landmarker.task")
    info = probe(out)
    assert (info.video.width, info.video.height, info.video.fps) == (192, 160, Fraction(25))
    assert summary.frames == 25 == len(decoded(out))  # 1 s of speech > 0.8 s of video: looped
    assert summary.looped
    assert summary.video_frames == 20
    assert summary.frames_without_face == len(FACELESS)
    assert summary.frames_generated == 25 - len(FACELESS)
    assert (info.audio.sample_rate, info.audio.channels) == (44_100, 2)  # not downmixed to 16 kHz mono
    assert abs(info.audio.duration - 1.0) < 0.05
    heard, said = read_audio(out), read_audio(speech)
    n = min(len(heard), len(said))
    assert np.corrcoef(heard[2000 : n - 2000], said[2000 : n - 2000])[0, 1] > 0.95
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.mp4"]


@pytest.mark.pretrained
def test_frames_without_a_face_are_the_input_frames(pipe, media, pretrained_dir, monkeypatch):
    from synclip.inference.lipsync import track_face

    # a mask reaching well past the jaw (the lower half, edge to edge), so that what the face outline
    # keeps out of the paste is a large region (the shipped mask's margin beside the jaw is narrow)
    rectangle_mask = torch.ones_like(pipe.mask)
    rectangle_mask[:, RES // 2 :] = 0
    monkeypatch.setattr(pipe, "mask", rectangle_mask)
    video, speech = media
    options = LipSyncOptions()
    faces = track_face(video, Fraction(25), pipe, pretrained_dir / "face_landmarker.task", options)
    assert [i for i in range(20) if not faces.found[i]] == list(FACELESS)
    counts = {"generated": 0, "without_face": 0}
    audio, _ = speech_tokens(pipe, read_audio(speech), Fraction(25), 20, options)
    out = list(synced_frames(pipe, video, audio, Fraction(25), faces, 20, options, counts))
    source = decoded(video)
    track = faces.placement
    assert track.outlines.shape == (20, len(FACE_OVAL), 2)
    beside = 0
    for i in range(20):
        same = np.array_equal(out[i], source[i])
        assert same == (i in FACELESS), i
        # far above the generated region (the lower face) nothing moves
        assert np.array_equal(out[i][:30], source[i][:30]), i
        if i in FACELESS:
            continue
        # inside the mask but outside the widened face outline (background, neck): the input's
        size = source[i].shape[1::-1]
        back = invert(track.matrices[i])
        rectangle = cv2.warpAffine(feather(pipe.mask), back, size) > 0
        face = cv2.warpAffine(feather(pipe.mask, track.outline(i)), back, size) > 0
        assert face.sum() > 200, i
        assert not (face & ~rectangle).any(), i
        kept = rectangle & ~face
        beside += kept.sum()
        assert np.array_equal(out[i][kept], source[i][kept]), i
        assert not np.array_equal(out[i][face], source[i][face]), i
    assert beside > 16 * 200  # the mask reaches well past the drawn face's jaw
    assert counts == {"generated": 16, "without_face": 4}


def test_a_video_without_any_face_passes_through(pipe, media):
    video, speech = media
    faces = SynclipFaces(Placement(np.full((20, 2, 3), np.nan), np.zeros(20, bool), 0), pipe.mask, RES)
    counts = {"generated": 0, "without_face": 0}
    audio, _ = speech_tokens(pipe, read_audio(speech), Fraction(25), 20, LipSyncOptions())
    out = list(synced_frames(pipe, video, audio, Fraction(25), faces, 20, LipSyncOptions(), counts))
    assert all(np.array_equal(a, b) for a, b in zip(out, decoded(video), strict=True))
    assert counts["without_face"] == 20


# --- bad input ---------------------------------------------------------------------------------------


def cli(*args: str | Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [SYNCLIP, "lipsync", *map(str, args)], capture_output=True, text=True, check=False, cwd=ROOT
    )


def video_only(path: Path) -> Path:
    with VideoWriter(path, 64, 64, 25, threads=1) as writer:
        for _ in range(5):
            writer.write_frame(np.zeros((64, 64, 3), np.uint8))
    return path


@pytest.mark.slow
@pytest.mark.parametrize(
    "case", ["not_a_video", "truncated", "no_audio_stream", "audio_only_video", "missing"]
)
def test_bad_input_is_one_line_exit_2_and_no_output(case, media, tmp_path, model_dir):
    video, speech = media
    out = tmp_path / "out" / "result.mp4"
    out.parent.mkdir()
    if case == "not_a_video":
        bad = tmp_path / "notes.mp4"
        bad.write_text("hello, not a video\n" * 20)
        args, named = ("--video", bad, "--audio", speech), bad
    elif case == "truncated":
        bad = tmp_path / "cut.mp4"
        bad.write_bytes(video.read_bytes()[: video.stat().st_size // 3])
        args, named = ("--video", bad, "--audio", speech), bad
    elif case == "no_audio_stream":
        bad = video_only(tmp_path / "mute.mp4")
        args, named = ("--video", video, "--audio", bad), bad
    elif case == "audio_only_video":
        args, named = ("--video", speech, "--audio", speech), speech
    else:
        bad = tmp_path / "nowhere.mp4"
        args, named = ("--video", bad, "--audio", speech), bad
    result = cli(*args, "-o", out, "--model", model_dir)
    assert result.returncode == 2, result.stderr
    # one error line and no traceback (third-party import warnings may print lines of their own)
    lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert named.name in lines[0], result.stderr
    assert list(out.parent.iterdir()) == []


def fixed_track(pipe: LipSyncPipeline, frames: int = 20) -> SynclipFaces:
    """The alignment of a face in the middle of the 192×160 test frames, on every frame."""
    matrix = np.array([[RES / 80, 0, -56 * RES / 80], [0, RES / 80, -30 * RES / 80]])
    return SynclipFaces(
        Placement(np.repeat(matrix[None], frames, axis=0), np.ones(frames, bool), 0), pipe.mask, RES
    )


def test_output_keeps_size_rate_and_speech_without_a_landmarker(pipe, media, tmp_path, monkeypatch):
    video, speech = media
    monkeypatch.setattr(
        "synclip.inference.lipsync.track_face", lambda video, fps, pipeline, *args: fixed_track(pipeline)
    )
    out = tmp_path / "out.mp4"
    summary = lipsync_file(pipe, video, speech, out, "unused", LipSyncOptions(cut=True))
    info = probe(out)
    assert (info.video.width, info.video.height, info.video.fps) == (192, 160, Fraction(25))
    assert summary.frames == 20 == len(decoded(out))
    assert not summary.looped
    assert (info.audio.sample_rate, info.audio.channels, info.audio.codec) == (44_100, 2, "aac")
    assert abs(info.audio.duration - 0.8) < 0.05  # cut to the video
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.mp4"]


def test_a_failure_while_writing_leaves_nothing(pipe, media, tmp_path, monkeypatch):
    from synclip.inference import lipsync

    video, speech = media
    monkeypatch.setattr(lipsync, "track_face", lambda video, fps, pipeline, *args: fixed_track(pipeline))
    real, calls = lipsync.paste, []

    def paste(*args):
        calls.append(1)
        if len(calls) == 6:
            raise RuntimeError("disk on fire")
        return real(*args)

    monkeypatch.setattr(lipsync, "paste", paste)
    out = tmp_path / "out.mp4"
    with pytest.raises(RuntimeError, match="disk on fire"):
        lipsync_file(pipe, video, speech, out, "unused")
    assert list(tmp_path.iterdir()) == []


# --- lossless output and the face index ---------------------------------------------------------------


def pasted_region(pipe: LipSyncPipeline, matrix: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """(H, W) bool: the frame pixels the feathered paste of the generated region (mask = 0) can touch."""
    height, width = shape[:2]
    alpha = cv2.warpAffine(feather(pipe.mask), invert(matrix), (width, height), flags=cv2.INTER_LINEAR)
    return alpha > 0


def test_lossless_output_keeps_frames_without_a_face_bit_exact(pipe, media, tmp_path, monkeypatch):
    """Decoded from the output file: no-face frames are the input's, face frames change inside the mask only."""
    video, speech = media
    faces = fixed_track(pipe)
    faces.found[list(FACELESS)] = False
    monkeypatch.setattr("synclip.inference.lipsync.track_face", lambda *args: faces)
    out = tmp_path / "out.mp4"
    summary = lipsync_file(pipe, video, speech, out, "unused", LipSyncOptions(cut=True, lossless=True))
    assert (summary.frames_without_face, summary.frames_generated) == (len(FACELESS), 20 - len(FACELESS))
    written, source = decoded(out), decoded(video)
    assert len(written) == len(source) == 20
    inside = pasted_region(pipe, faces.placement.matrices[0], source[0].shape)
    outside = ~cv2.dilate(inside.astype(np.uint8), np.ones((5, 5), np.uint8)).astype(bool)
    assert inside.sum() > 500
    assert outside.sum() > 10_000
    for i in range(20):
        if i in FACELESS:
            assert np.array_equal(written[i], source[i]), i
        else:
            assert not np.array_equal(written[i][inside], source[i][inside]), i
            assert np.array_equal(written[i][outside], source[i][outside]), i


def test_lossy_output_is_not_bit_exact(pipe, media, tmp_path, monkeypatch):
    """The reason for `lossless`: through H.264 yuv420p even untouched frames come back changed."""
    video, speech = media
    track = Placement(np.full((20, 2, 3), np.nan), np.zeros(20, bool), 0)
    monkeypatch.setattr("synclip.inference.lipsync.track_face", lambda *args: track)
    out = tmp_path / "out.mp4"
    lipsync_file(pipe, video, speech, out, "unused", LipSyncOptions(cut=True))
    written, source = decoded(out), decoded(video)
    assert not all(np.array_equal(a, b) for a, b in zip(written, source, strict=True))


BIG, SMALL = (100, 84, 52), (250, 92, 32)  # (cx, cy, half-width) in px of the two faces of a 352×192 video


def two_face_video(path: Path, frames: int = 12) -> Path:
    """Two drawn people side by side, the left one larger; both mouths move."""
    width, height = 352, 192
    renderers = [FaceRenderer(Identity.sample(name, np.random.default_rng(k))) for k, name in enumerate("ab")]
    backdrop = np.full((height, width, 3), (90, 120, 150), np.uint8)
    with VideoWriter(path, width, height, 25, crf=16, threads=1) as writer:
        for i in range(frames):
            image = backdrop.copy()
            for renderer, (cx, cy, half), phase in zip(renderers, (BIG, SMALL), (0, 2), strict=True):
                mouth = MouthState(0.5 + 0.5 * np.sin(i / 2 + phase), 0.5, 0.2, 0.3, 0.0)
                renderer.draw(image, Pose(cx, cy, half, 0.0), mouth, 1.0)
            writer.write_frame(image)
    return path


@pytest.mark.pretrained
@pytest.mark.slow
def test_face_index_picks_the_larger_or_the_smaller_face(pipe, tmp_path, pretrained_dir):
    from synclip.inference.lipsync import track_face

    video = two_face_video(tmp_path / "two.mp4")
    speech = speech_wav(tmp_path / "speech.wav", 0.48)
    landmarker = pretrained_dir / "face_landmarker.task"
    source = decoded(video)
    split = (BIG[0] + BIG[2] + SMALL[0] - SMALL[2]) // 2  # a column between the two faces
    changed = {}
    for index in (0, 1):
        options = LipSyncOptions(face_index=index, cut=True, lossless=True)
        track = track_face(video, Fraction(25), pipe, landmarker, options)
        assert track.found.all(), index
        assert track.several == len(source), index  # MediaPipe sees both people on every frame
        out = tmp_path / f"face{index}.mp4"
        summary = lipsync_file(pipe, video, speech, out, landmarker, options)
        assert summary.frames_generated == len(source) == summary.frames_with_several_faces
        written = decoded(out)
        changed[index] = [
            (not np.array_equal(w[:, :split], s[:, :split]), not np.array_equal(w[:, split:], s[:, split:]))
            for w, s in zip(written, source, strict=True)
        ]
    assert all(left and not right for left, right in changed[0])  # the larger face, on the left
    assert all(right and not left for left, right in changed[1])  # the smaller face, on the right
