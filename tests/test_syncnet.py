"""The SyncNet: reference geometry, mel, strict loading, resumable training and sync scoring."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from synclip.artifacts import (
    CheckpointError,
    load_latentsync_syncnet,
    load_strict,
    load_syncnet,
    read_latentsync_checkpoint,
    save_artifact,
)
from synclip.audio.mel import mel_window, syncnet_mel
from synclip.config import load_params
from synclip.data.sync_pairs import Clip, PairSampler, audio_window, augment_windows, validation_rows
from synclip.eval.sync import score_clip
from synclip.eval.sync_filter import filter_by_sync
from synclip.nn.syncnet import StableSyncNet, released_config, syncnet_config
from synclip.train.losses import offset_losses
from synclip.train.optim import learning_rate
from synclip.train.syncnet import SyncNetRecipe
from synclip.train.trainer import Trainer

SYNCLIP = Path(sys.executable).with_name("synclip")


def test_the_released_geometry_has_latentsyncs_parameter_count():
    with torch.device("meta"):
        model = StableSyncNet(released_config())
        visual, audio = model(torch.zeros(2, 48, 128, 256), torch.zeros(2, 1, 80, 52))
    assert sum(p.numel() for p in model.parameters()) == 401_306_080
    assert len(model.state_dict()) == 266
    assert visual.shape == audio.shape == (2, 2048)
    config = released_config()
    plain = dataclasses.replace(
        config,
        visual=dataclasses.replace(config.visual, attn_blocks=(0,) * 8),
        audio=dataclasses.replace(config.audio, attn_blocks=(0,) * 7),
    )
    with torch.device("meta"):
        assert sum(p.numel() for p in StableSyncNet(plain).parameters()) == 371_766_496


def test_embeddings_are_unit_non_negative_and_cosine_is_a_probability(root):
    model = StableSyncNet(syncnet_config(load_params(root / "params.yaml").syncnet)).eval()
    with torch.no_grad():
        visual, audio = model(torch.randn(3, 48, *model.config.image_size), torch.randn(3, 1, 80, 52))
    assert torch.allclose(visual.norm(dim=1), torch.ones(3), atol=1e-5)
    assert (visual >= 0).all()
    assert (audio >= 0).all()


def test_mel_matches_the_librosa_recipe_and_windows_follow_the_clock():
    import librosa

    rng = np.random.default_rng(0)
    audio = (rng.standard_normal(16000) * 0.1).astype(np.float32)
    ours = syncnet_mel(audio).numpy()
    # Wav2Lip's audio.py with LatentSync's hparams, written with librosa directly
    emphasised = np.append(audio[0], audio[1:] - 0.97 * audio[:-1])
    spec = np.abs(librosa.stft(emphasised, n_fft=800, hop_length=200, win_length=800, pad_mode="constant"))
    mel = librosa.filters.mel(sr=16000, n_fft=800, n_mels=80, fmin=55, fmax=7600) @ spec
    db = 20 * np.log10(np.maximum(1e-5, mel)) - 20
    reference = np.clip(8 * (db + 100) / 100 - 4, -4, 4)
    assert ours.shape == (80, 81)
    np.testing.assert_allclose(ours, reference, atol=2e-3)
    window = mel_window(torch.from_numpy(ours), 5, 16)
    assert window.shape == (80, 52)
    torch.testing.assert_close(window, torch.from_numpy(ours[:, 16:68]))


def test_loading_is_strict_and_names_the_keys(root, tmp_path):
    model = StableSyncNet(syncnet_config(load_params(root / "params.yaml").syncnet))
    state = model.state_dict()
    broken = {k: v for k, v in state.items() if not k.startswith("audio_encoder.norm_out")}
    broken["visual_encoder.extra.weight"] = torch.zeros(1)
    with pytest.raises(
        CheckpointError, match=r"missing: audio_encoder\.norm_out.*unexpected: visual_encoder\.extra"
    ):
        load_strict(model, broken, "test weights")
    # the published layout: a .pt with "state_dict", read weights-only
    torch.save({"state_dict": state, "global_step": 5}, tmp_path / "stable_syncnet.pt")
    loaded = load_latentsync_syncnet(tmp_path / "stable_syncnet.pt", model.config)
    torch.testing.assert_close(loaded.state_dict(), state)
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match=r"junk\.pt"):
        read_latentsync_checkpoint(tmp_path / "junk.pt")


def synthetic_clips(count: int, frames: int, seed: int) -> list[Clip]:
    """Clips whose 'mouth' brightness follows the loudness of their audio (a learnable sync signal)."""
    rng = np.random.default_rng(seed)
    clips = []
    for index in range(count):
        level = np.clip(np.cumsum(rng.standard_normal(frames)) * 0.3, -2, 2)
        loud = 1 / (1 + np.exp(-3 * level))
        images = np.full((frames, 16, 32, 3), 90, np.uint8)  # params.yaml's syncnet.image_size
        images[:, 4:10, 10:22] = (60 + 180 * loud)[:, None, None, None].astype(np.uint8)
        samples = np.concatenate([np.sin(np.arange(640) * 0.3) * a for a in loud]).astype(np.float32) * 0.5
        clips.append(Clip(f"c{index}", f"id{index}", images, syncnet_mel(samples)))
    return clips


@pytest.fixture(scope="module")
def tiny_params(root):
    params = load_params(root / "params.yaml").syncnet
    return dataclasses.replace(
        params, max_steps=6, val_every=3, checkpoint_every=3, val_pairs=16, batch_size=8
    )


def test_an_interrupted_run_resumes_to_the_same_weights(tiny_params, tmp_path):
    train, val = synthetic_clips(4, 60, 0), synthetic_clips(2, 60, 1)

    def fit(folder, stop_after=None):
        return Trainer(
            SyncNetRecipe(train, val, tiny_params), tmp_path / folder, torch.device("cpu"), seed=3
        ).fit(stop_after)

    straight, history = fit("a")
    fit("b", stop_after=3)
    assert not (tmp_path / "b" / "model.safetensors").exists()  # killed before the end
    state = torch.load(tmp_path / "b" / "checkpoint.pt", weights_only=False)
    decayed = state["optimizer"]["param_groups"][0]["lr"]  # set for the 3rd step (index 2) of 6
    assert decayed == pytest.approx(learning_rate(tiny_params, 2))
    assert tiny_params.lr * tiny_params.final_lr_fraction < decayed < tiny_params.lr
    resumed, resumed_history = fit("b")
    torch.testing.assert_close(resumed.state_dict(), straight.state_dict(), rtol=0, atol=0)
    assert [r["val_loss"] for r in resumed_history.rows] == [r["val_loss"] for r in history.rows]
    reloaded = load_syncnet(tmp_path / "b")
    torch.testing.assert_close(reloaded.state_dict(), straight.state_dict())
    assert reloaded.audio_encoder.conv_in.weight.is_contiguous(memory_format=torch.channels_last)


def test_sampler_pairs_are_balanced_and_negatives_are_other_windows():
    clips = synthetic_clips(3, 60, 2)
    sampler = PairSampler(clips, 16, 0.5, np.random.default_rng(0))
    pairs = [sampler.draw() for _ in range(400)]
    labels = np.array([p.label for p in pairs])
    assert 0.4 < labels.mean() < 0.6
    assert all((p.start == p.audio_start) == (p.label == 1.0) for p in pairs)
    assert any(abs(p.start - p.audio_start) <= 3 for p in pairs if p.label == 0.0)


def test_grouped_anchors_take_distinct_voiced_windows_of_each_clip():
    clips = synthetic_clips(3, 60, 2)
    sampler = PairSampler(clips, 16, 0.0, np.random.default_rng(0))
    anchors = sampler.anchors(32, per_clip=4)
    assert len(anchors) == 32
    for group in range(0, 32, 4):
        members = anchors[group : group + 4]
        assert len({clip for clip, _ in members}) == 1
        assert len({start for _, start in members}) == 4
        assert all(start in sampler.starts[clip] for clip, start in members)
    frames, mel, owners = sampler.offset_batch(8, (0,), per_clip=4)
    assert frames.shape[0] == 8
    assert mel.shape[:2] == (8, 1)
    assert owners[:4].unique().numel() == 1
    assert owners[4:].unique().numel() == 1


def test_augmentation_mirrors_and_relights_whole_windows_only():
    frames = torch.rand(200, 48, 16, 32) * 1.6 - 0.8
    assert torch.equal(augment_windows(frames, np.random.default_rng(0), 0.0, 0.0, 1.0), frames)
    assert torch.equal(augment_windows(frames, np.random.default_rng(0), 1.0, 0.0, 1.0), frames.flip(-1))
    relit = augment_windows(frames, np.random.default_rng(1), 0.5, 0.1, 1.25)
    assert relit.shape == frames.shape
    assert relit.abs().max() <= 1
    mirrored = 0
    for window, original in zip(relit, frames, strict=True):
        fits = [_affine_fit(window, source) for source in (original, original.flip(-1))]
        residual, gain, offset = min(fits)
        assert residual < 1e-5  # one gain and one offset for the whole window
        assert 0.8 - 1e-4 <= gain <= 1.25 + 1e-4
        assert abs(offset) <= 0.1 + 1e-4
        mirrored += fits[1][0] < fits[0][0]
    assert 60 < mirrored < 140


def _affine_fit(window: torch.Tensor, source: torch.Tensor) -> tuple[float, float, float]:
    """(max residual, gain, offset) of the least-squares map source → window, on unclipped values."""
    x, y = source.flatten().double(), window.flatten().double()
    keep = y.abs() < 1
    design = torch.stack([x[keep], torch.ones_like(x[keep])], dim=1)
    solution = torch.linalg.lstsq(design, y[keep][:, None]).solution
    residual = (design @ solution - y[keep][:, None]).abs().max()
    return float(residual), float(solution[0]), float(solution[1])


def test_without_shifted_audio_the_bce_takes_the_other_windows_as_negatives():
    visual = torch.eye(4)  # four windows, orthogonal unit embeddings
    matched = visual[:, None, :].clone()  # (B, D=1, E): each window's own audio
    bce, match = offset_losses(visual, matched, temperature=0.1)
    assert bce < 1e-3
    assert match < 1e-3
    everything_alike = torch.full((4, 1, 4), 0.5)  # every audio equally close to every window
    bce_alike, match_alike = offset_losses(visual, everything_alike, temperature=0.1)
    assert bce_alike > 0.6
    assert match_alike == pytest.approx(np.log(4), rel=1e-4)


def test_same_clip_bce_negatives_ignore_the_other_clips_windows():
    visual = torch.eye(4, dtype=torch.float64)  # float64: the clamp at 1 - 1e-7 is exact
    audio = visual[:, None, :].clone()
    audio[1, 0] = visual[0]  # clip 0: window 1's audio looks like window 0's (a hard negative)
    audio[3, 0] = visual[0]  # window 3 (clip 1) also looks like window 0: an easy negative elsewhere
    clips = torch.tensor([0, 0, 1, 1])
    bce_all, _ = offset_losses(visual, audio, temperature=0.1)
    bce_same, _ = offset_losses(visual, audio, temperature=0.1, clips=clips)
    # positives: windows 0 and 2 match (log 1 = 0), 1 and 3 do not (clamped cos 1e-7);
    # negatives: cos 1 for window 0 against window 1's audio (1 of the 4 same-clip pairs) and
    # against window 3's (2 of all 12 pairs)
    positive = -np.log(1e-7) / 2
    assert bce_same == pytest.approx(0.5 * (positive - np.log(1e-7) / 4), rel=1e-3)
    assert bce_all == pytest.approx(0.5 * (positive - 2 * np.log(1e-7) / 12), rel=1e-3)
    alone = offset_losses(visual, audio, temperature=0.1, clips=torch.arange(4))[0]
    assert alone == pytest.approx(bce_all)  # no clip has two windows: every other window is a negative


def test_validation_leaves_out_only_clips_known_to_be_shifted():
    manifest = pd.DataFrame(
        {
            "clip": ["a", "b", "c", "d"],
            "split": ["val", "val", "val", "train"],
            "gt_av_offset": [0.0, np.nan, 6.0, -7.0],
        }
    )
    assert validation_rows(manifest)["clip"].tolist() == ["a", "b"]


def test_score_finds_a_shift_that_a_perfect_expert_would_see(root):
    """With an 'expert' that embeds loudness exactly, the detected offset is the applied shift."""
    clip = synthetic_clips(1, 120, 4)[0]
    shifted = Clip(clip.name, clip.identity, clip.frames, clip.mel, shift=0)
    # delay the audio by 4 frames: audio of frame t now sits at t + 4
    pad = torch.full((80, int(4 * 16 / 5)), -4.0)
    shifted.mel = torch.cat([pad, clip.mel], dim=1)

    class Expert(StableSyncNet):
        def embed_visual(self, frames):  # mean brightness of the mouth box, per frame
            mouth = frames.reshape(len(frames), 16, 3, 16, 32)[:, :, 0, 4:10, 10:22].mean(dim=(2, 3))
            return torch.nn.functional.normalize(torch.cat([mouth + 1, 1 - mouth], 1), dim=1)

        def embed_audio(self, mel):  # loudness per video frame
            energy = mel[:, 0].mean(dim=1)  # (B, W)
            per_frame = torch.stack(
                [energy[:, int(i * 3.2) : int(i * 3.2) + 3].mean(1) for i in range(16)], 1
            )
            level = (per_frame + 4) / 8 * 2 - 1
            return torch.nn.functional.normalize(torch.cat([level + 1, 1 - level], 1), dim=1)

    expert = Expert(syncnet_config(load_params(root / "params.yaml").syncnet))
    assert score_clip(expert, clip, max_offset=8).offset == 0
    result = score_clip(expert, shifted, max_offset=8)
    assert result.offset == 4
    assert result.lse_c > 0


def test_sync_filter_drops_unsure_and_far_clips_and_corrects_the_rest(root):
    params = dataclasses.replace(
        load_params(root / "params.yaml").syncnet, min_confidence=0.05, max_abs_offset=6, min_correction=2
    )
    scored = pd.DataFrame(
        {
            "clip": ["good", "late", "nearly", "unsure", "far"],
            "sync_offset": [0, 3, -1, 0, -9],
            "sync_confidence": [0.3, 0.2, 0.3, 0.01, 0.4],
            "sync_distance": [0.5, 0.6, 0.5, 0.9, 0.4],
        }
    )
    kept, rejects = filter_by_sync(scored, params)
    assert kept["clip"].tolist() == ["good", "late", "nearly"]
    # -1 is within the expert's resolution (min_correction 2): left uncorrected
    assert kept["audio_shift"].tolist() == [0, 3, 0]
    assert dict(zip(rejects["clip"], rejects["reason"], strict=True)) == {
        "unsure": "low_sync_confidence",
        "far": "offset_too_large",
    }
    assert "offset -9 (max ±6)" in rejects.loc[rejects["clip"] == "far", "detail"].item()


def test_a_corrected_clip_pairs_frames_with_the_shifted_audio():
    clip = synthetic_clips(1, 60, 5)[0]
    corrected = dataclasses.replace(clip, shift=3)
    torch.testing.assert_close(audio_window(corrected, 10, 16), audio_window(clip, 13, 16))


@pytest.mark.pretrained
def test_sync_score_cli_scores_a_real_video_and_refuses_bad_input(root, corpus, pretrained_dir, tmp_path):
    model = StableSyncNet(syncnet_config(load_params(root / "params.yaml").syncnet))
    save_artifact(tmp_path / "syncnet", {"model": dataclasses.asdict(model.config)}, model, "syncnet")
    folder, manifest, gts = corpus
    clean = [c["clip"] for c in manifest["clips"] if gts[c["clip"]]["defect"] is None]
    video, other = folder / f"{clean[0]}.mp4", folder / f"{clean[1]}.mp4"

    def sync_score(*args):
        return subprocess.run(
            [SYNCLIP, "sync-score", *map(str, args)], capture_output=True, text=True, check=False, cwd=root
        )

    result = sync_score(video, "--model", tmp_path / "syncnet", "--audio", other, "--json")
    assert result.returncode == 0, result.stderr
    score = json.loads(result.stdout)
    assert len(score["distances"]) == 31  # ±15 frames
    assert score["lse_d"] == min(score["distances"].values())
    assert -15 <= score["offset"] <= 15
    assert score["lse_c"] >= 0

    not_a_video = tmp_path / "notes.mp4"
    not_a_video.write_text("hello")
    for args, message in (
        ((video, "--model", tmp_path / "missing"), "not a synclip syncnet artifact"),
        ((not_a_video, "--model", tmp_path / "syncnet"), str(not_a_video)),
    ):
        failed = sync_score(*args)
        assert failed.returncode == 2, failed.stderr
        assert message in failed.stderr
        assert "Traceback" not in failed.stderr
