"""synclip's UNet, StableSyncNet and sampler against LatentSync's own (tests/fixtures/latentsync, made by
scripts/latentsync_fixtures/sampler.py from upstream's code on small seeded random weights)."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from diffusers import AutoencoderKL
from latentsync_fixture import load_fixture, peak_relative

from synclip.artifacts import load_strict, load_unet_state
from synclip.inference.pipeline import SCHEDULER_CONFIG, LipSyncPipeline, PipelineConfig
from synclip.nn.syncnet import StableSyncNet, SyncNetConfig, TowerConfig
from synclip.nn.unet import CROSS_ATTN_DOWN, CROSS_ATTN_UP, DOWN, UP, UNet3DConditionModel, UNetConfig

TOLERANCE = 1e-4  # max |synclip − upstream| / max |upstream|
# Upstream ran in fp64 and synclip is compared in fp64: on these random weights fp32 rounding alone
# moves upstream's own UNet output by 1.1e-4 of its peak (synclip's, whose attention runs through
# SDPA, by 5.5e-4 of the fp64 output), and the fp32 sampler lands 8.7e-5 from upstream's fp32 run.

pytestmark = pytest.mark.usefixtures("one_thread")


def state(tensors: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """The fixture's `prefix`-ed state dict, in fp32 (fp16-exact weights are stored as fp16)."""
    return {k.removeprefix(prefix): v.float() for k, v in tensors.items() if k.startswith(prefix)}


def measured(name: str, error: float) -> float:
    print(f"{name}: {error:.2e} of the peak")  # shown with pytest -s
    return error


def upstream_unet() -> UNet3DConditionModel:
    """synclip's UNet with the fixture's geometry (configs/unet/stage2.yaml reduced), upstream's weights."""
    tensors, notes = load_fixture("unet")
    upstream = notes["config"]
    motion = upstream["motion_module_kwargs"]
    config = UNetConfig(
        block_out_channels=tuple(upstream["block_out_channels"]),
        down_block_types=(CROSS_ATTN_DOWN,) * 3 + (DOWN,),
        up_block_types=(UP,) + (CROSS_ATTN_UP,) * 3,
        layers_per_block=upstream["layers_per_block"],
        num_attention_heads=upstream["attention_head_dim"],  # SD-1.5's name for the number of heads
        norm_num_groups=upstream["norm_num_groups"],
        joint_frame_groupnorm=True,  # upstream: a plain GroupNorm over (B, C, F, h, w)
        motion_num_attention_heads=motion["num_attention_heads"],
        in_channels=upstream["in_channels"],
        out_channels=upstream["out_channels"],
        cross_attention_dim=upstream["cross_attention_dim"],
        norm_eps=upstream["norm_eps"],
        motion_modules=upstream["use_motion_module"],
        motion_max_frames=motion["temporal_position_encoding_max_len"],
    )
    model = UNet3DConditionModel(config)
    assert load_unet_state(model, state(tensors, "state."), "unet fixture") == []
    return model.eval()


def test_unet_equals_upstream():
    tensors, _ = load_fixture("unet")
    with torch.no_grad():
        output = upstream_unet().double()(tensors["sample"], tensors["timestep"], tensors["audio"])
    error = measured("UNet", peak_relative(output, tensors["output"]))
    assert error < TOLERANCE, f"UNet differs from upstream by {error:.2e} of the peak"


def test_syncnet_equals_upstream():
    tensors, notes = load_fixture("syncnet")

    def tower(section: dict) -> TowerConfig:
        return TowerConfig(
            in_channels=section["in_channels"],
            block_out_channels=tuple(section["block_out_channels"]),
            downsample_factors=tuple(
                tuple(f) if isinstance(f, list) else f for f in section["downsample_factors"]
            ),
            attn_blocks=tuple(section["attn_blocks"]),
            dropout=section["dropout"],
        )

    frames, mel = tensors["frames"], tensors["mel"]  # (B, 3·F, H, W), (B, 1, M, T)
    config = SyncNetConfig(
        visual=tower(notes["config"]["visual_encoder"]),
        audio=tower(notes["config"]["audio_encoder"]),
        num_frames=frames.shape[1] // 3,
        image_size=tuple(frames.shape[-2:]),
        mel_bins=mel.shape[2],
        mel_frames=mel.shape[3],
    )
    model = StableSyncNet(config)
    load_strict(model, state(tensors, "state."), "syncnet fixture")
    with torch.no_grad():
        visual, audio = model.double().eval()(frames, mel)  # (B, E) each
    errors = (
        measured("SyncNet visual", peak_relative(visual, tensors["visual"])),
        measured("SyncNet audio", peak_relative(audio, tensors["audio_embeds"])),
    )
    assert max(errors) < TOLERANCE, f"SyncNet embeddings differ from upstream by {errors}"


@pytest.fixture(scope="module")
def sampler() -> tuple[LipSyncPipeline, dict[str, torch.Tensor], dict]:
    """LatentSync's sampler settings on the fixture's UNet, VAE and mask."""
    tensors, notes = load_fixture("sampler")
    vae = AutoencoderKL(**notes["vae"])
    load_strict(vae, state(tensors, "vae."), "sampler fixture VAE")
    config = PipelineConfig(
        resolution=notes["resolution"],
        num_frames=notes["num_frames"],
        overlap=0,
        steps=notes["steps"],
        guidance=notes["guidance"],
        seed=notes["seed"],
        eta=notes["eta"],
        latents="sample",
        last_chunk="short",
    )
    scheduler = {key: notes["scheduler"][key] for key in SCHEDULER_CONFIG if key in notes["scheduler"]}
    assert scheduler == {k: v for k, v in SCHEDULER_CONFIG.items() if k in scheduler}, "not upstream's DDIM"
    assert notes["dtype"] == "float64"
    pipe = LipSyncPipeline(upstream_unet().double(), vae.double().eval(), None, tensors["mask"], config)
    return pipe, tensors, notes


def test_sampler_equals_upstream(sampler):
    """Same seed → same draws in the same order (fp64 draws for an fp64 pipeline, as upstream's) →
    LatentSync's frames.

    Upstream leaves the decoded faces unclamped until the paste-back into the video frame
    (AlignRestore.restore_img clamps after warping); synclip clamps the decoded face to [−1, 1]
    before compositing, so the upstream frames are compared clamped.
    """
    pipe, tensors, _ = sampler
    frames = pipe(tensors["faces"], tensors["audio"])  # (F, 3, R, R)
    error = measured("sampler", peak_relative(frames, tensors["frames"].clamp(-1, 1)))
    assert error < TOLERANCE, f"sampler differs from upstream by {error:.2e} of the peak"


def test_the_seeded_draws_are_upstreams(sampler):
    pipe, tensors, notes = sampler
    generator = torch.Generator().manual_seed(notes["seed"])
    draws = [pipe._draw(generator, (1, *tensors["initial_noise"].shape))[0]]
    for chunk in (0, 1):
        frames = len(tensors[f"posterior_noise.{chunk}"][0])
        draws += [pipe._draw(generator, (frames, *draws[0].shape)) for _ in range(2)]
    recorded = [tensors["initial_noise"]]
    for chunk in (0, 1):
        recorded += list(tensors[f"posterior_noise.{chunk}"])
    for ours, theirs in zip(draws, recorded, strict=True):
        torch.testing.assert_close(ours, theirs, rtol=0, atol=0)


def test_injected_noise_reproduces_each_chunk(sampler):
    """`generate` with the recorded draws (no generator) gives upstream's frames chunk by chunk."""
    pipe, tensors, notes = sampler
    size = notes["num_frames"]
    for chunk in (0, 1):
        span = slice(chunk * size, (chunk + 1) * size)
        out = pipe.generate(
            tensors["faces"][span],
            tensors["audio"][span],
            tensors["initial_noise"],
            notes["steps"],
            notes["guidance"],
            posterior_noise=tensors[f"posterior_noise.{chunk}"],
        )
        error = measured(f"chunk {chunk}", peak_relative(out, tensors["frames"][span].clamp(-1, 1)))
        assert error < TOLERANCE, f"chunk {chunk} differs from upstream by {error:.2e}"


def chunk_lengths(pipe: LipSyncPipeline, frames: int, monkeypatch, **changes) -> list[int]:
    """The lengths of the chunks `stream` generates for `frames` frames (generation replaced by identity)."""
    config = dataclasses.replace(pipe.config, **changes)
    other = LipSyncPipeline(pipe.unet, pipe.vae, None, pipe.mask.cpu(), config)
    lengths: list[int] = []

    def fake(faces, audio, noise, steps, guidance, eta=0.0, posterior_noise=None, encoded=None):
        lengths.append(len(faces))
        assert posterior_noise is None or posterior_noise.shape[:2] == (2, len(faces))
        assert encoded is None or all(len(z) == len(faces) for z in encoded)
        assert (posterior_noise is None) != (encoded is None)  # sample: drawn per chunk; mean: kept latents
        return faces

    monkeypatch.setattr(other, "generate", fake)
    tensors, _ = load_fixture("sampler")
    faces = torch.cat([tensors["faces"]] * 2)[:frames]
    audio = torch.cat([tensors["audio"]] * 2)[:frames]
    out = other(faces, audio)
    torch.testing.assert_close(out, faces.to(out))  # every frame once, in order
    return lengths


@pytest.mark.parametrize(
    ("frames", "overlap", "last_chunk", "expected"),
    [
        (20, 0, "short", [16, 4]),
        (20, 0, "slide", [16, 16]),
        (32, 0, "short", [16, 16]),
        (10, 0, "short", [10]),
        (20, 4, "short", [16, 8]),  # the last chunk: the 4 new frames and the 4 shared before them
        (20, 4, "slide", [16, 16]),
    ],
)
def test_last_chunk(sampler, monkeypatch, frames, overlap, last_chunk, expected):
    pipe, _, _ = sampler
    assert chunk_lengths(pipe, frames, monkeypatch, overlap=overlap, last_chunk=last_chunk) == expected


def test_mean_latents_draw_no_posterior_noise(sampler, monkeypatch):
    pipe, _, _ = sampler
    seen: list[object] = []

    def fake(faces, audio, noise, steps, guidance, eta=0.0, posterior_noise=None, encoded=None):
        seen.append(posterior_noise)
        assert encoded is not None  # the means, encoded once per frame by `stream`
        return faces

    other = LipSyncPipeline(
        pipe.unet, pipe.vae, None, pipe.mask.cpu(), dataclasses.replace(pipe.config, latents="mean")
    )
    monkeypatch.setattr(other, "generate", fake)
    tensors, _ = load_fixture("sampler")
    other(tensors["faces"], tensors["audio"])
    assert seen == [None, None]
