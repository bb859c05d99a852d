"""Sync-C / Sync-D (`synclip.eval.sync_conf`, `synclip.nn.syncnet_v2`, `synclip.audio.mfcc`) against fixtures
made by LatentSync's eval/syncnet code (scripts/latentsync_fixtures/sync_conf.py) on seeded random weights
and the closed-form clip of tests/sync_conf_inputs.py.

Tolerances, all relative to the reference's scale:
- MFCC 1e-12 of its peak: the same numpy operations in the same order (bit-equal here); the margin is
  for another FFT build's last bits.
- float64 embeddings 1e-10 of the peak: both sides run S in float64; only the conv algorithms differ.
- float32 embeddings and distances 1e-5: upstream's float32 protocol on both sides (bit-equal here); the
  margin is for other CPU kernels or thread counts.
- Sync-C is median − min of distances of ~760, so its error is bounded on that scale (1e-5 · Sync-D), not
  on its own; the best offset is 0.11 ahead of the second best, far outside that bound, so it must match
  exactly.
"""

from __future__ import annotations

import hashlib
from dataclasses import replace

import cv2
import numpy as np
import pytest
import torch
from latentsync_fixture import load_fixture, peak_relative
from seeded_weights import seeded_state, shapes_of
from sync_conf_inputs import AUDIO_DELAY, FRAMES, SAMPLES_PER_FRAME, mouth_crops, speech

import synclip.eval.sync_conf as sync_conf_module
from synclip.audio.mfcc import speech_mfcc
from synclip.errors import UserError
from synclip.eval.sync_conf import (
    SyncConf,
    aggregate,
    crops_from_frames,
    embed_windows,
    load_syncnet_v2,
    score_distances,
    sync_conf,
    window_distances,
)
from synclip.nn.syncnet_v2 import SyncNetV2, SyncNetV2Config

pytestmark = pytest.mark.usefixtures("one_thread")
MFCC_TOLERANCE = 1e-12
FLOAT64_TOLERANCE = 1e-10
FLOAT32_TOLERANCE = 1e-5
# what the file round trips of upstream's `evaluate` cost on the fixture clip (module docstring of
# synclip.eval.sync_conf): lossless video + AAC audio, then JPEG frames and an ffmpeg wav
FILE_EFFECT = {"sync_c": 0.1, "sync_d": 0.03}  # |Δ Sync-C| absolute; |Δ Sync-D| relative


@pytest.fixture(scope="module")
def fixture():
    return load_fixture("sync_conf")


@pytest.fixture(scope="module")
def inputs(fixture):
    """(N, 224, 224, 3) BGR crops and (M,) int16 samples, checked to be the bytes the fixture was made from."""
    _, notes = fixture
    crops, samples = mouth_crops(notes["frames"]), speech(notes["frames"], notes["audio_delay"])
    assert hashlib.sha256(crops.tobytes()).hexdigest() == notes["sha256"]["crops"]
    assert hashlib.sha256(samples.tobytes()).hexdigest() == notes["sha256"]["samples"]
    return crops, samples


@pytest.fixture(scope="module")
def state(fixture):
    _, notes = fixture
    return seeded_state(shapes_of(SyncNetV2(SyncNetV2Config())), notes["seed"])


@pytest.fixture(scope="module")
def model_file(state, tmp_path_factory):
    path = tmp_path_factory.mktemp("syncnet") / "syncnet_v2.model"
    torch.save(state, path)  # upstream's format: a plain state dict
    return path


@pytest.fixture(scope="module")
def net(model_file):
    return load_syncnet_v2(model_file)


def test_inputs_follow_the_protocol_clock():
    assert mouth_crops(3).shape == (3, 224, 224, 3)
    assert speech(3, AUDIO_DELAY).shape == (3 * SAMPLES_PER_FRAME,)
    assert FRAMES * SAMPLES_PER_FRAME == 32000


# --- MFCC -----------------------------------------------------------------------------------------


def test_mfcc_is_python_speech_features(fixture, inputs):
    tensors, _ = fixture
    _, samples = inputs
    ours = speech_mfcc(samples)
    assert ours.shape == tuple(tensors["mfcc"].shape) == (13, 4 * FRAMES - 1)
    assert ours.dtype == np.float64
    assert peak_relative(torch.from_numpy(ours), tensors["mfcc"]) <= MFCC_TOLERANCE


def test_mfcc_takes_int16_scale_floats_and_not_normalised_audio(inputs):
    _, samples = inputs
    ours = speech_mfcc(samples[:4000])
    np.testing.assert_array_equal(speech_mfcc(samples[:4000].astype(np.float64)), ours)
    normalised = speech_mfcc(samples[:4000] / 32768.0)
    np.testing.assert_allclose(ours[0] - normalised[0], 2 * np.log(32768.0), rtol=1e-9)  # only c0 moves
    np.testing.assert_allclose(ours[1:], normalised[1:], rtol=1e-9, atol=1e-9)


def test_delaying_the_audio_shifts_the_mfcc_by_four_frames_per_video_frame(inputs):
    _, samples = inputs
    base = speech_mfcc(samples)
    for frames in (1, 3):
        delayed = np.concatenate([np.zeros(frames * SAMPLES_PER_FRAME, np.int16), samples])[: len(samples)]
        shifted = speech_mfcc(delayed)[:, 4 * frames :]
        length = shifted.shape[1] - 1  # the last column sees the zero padding of the truncated end
        np.testing.assert_allclose(shifted[:, :length], base[:, :length], rtol=1e-12, atol=0)


def test_mfcc_of_short_and_silent_signals():
    assert speech_mfcc(np.zeros(400, np.int16)).shape == (13, 1)  # one window, as upstream
    assert speech_mfcc(np.zeros(401, np.int16)).shape == (13, 2)
    silent = speech_mfcc(np.zeros(1600, np.int16))
    np.testing.assert_array_equal(silent[0], np.log(np.finfo(float).eps))  # log of zero energy → log eps
    with pytest.raises(ValueError, match="non-empty"):
        speech_mfcc(np.zeros((2, 400), np.int16))


# --- the network ------------------------------------------------------------------------------------


def test_network_is_upstreams_geometry(state):
    net = SyncNetV2(SyncNetV2Config())
    assert list(net.state_dict()) == list(state)
    assert sum(p.numel() for p in net.parameters()) > 13_000_000
    with pytest.raises(ValueError, match=r"\(B, 1, 13, 20\)"):
        net.embed_audio(torch.zeros(2, 1, 13, 19))
    with pytest.raises(ValueError, match=r"\(B, 3, 5, 224, 224\)"):
        net.embed_lips(torch.zeros(1, 3, 4, 224, 224))


def test_embeddings_are_upstreams_in_float64(fixture, inputs, net):
    tensors, _ = fixture
    crops, samples = inputs
    net64 = SyncNetV2(SyncNetV2Config()).double().eval()
    net64.load_state_dict(net.state_dict())
    windows = tensors["embed.windows"].tolist()
    clip = torch.from_numpy(crops).double().permute(3, 0, 1, 2)  # (C, N, H, W)
    mfcc = torch.from_numpy(speech_mfcc(samples))
    with torch.no_grad():
        lips = net64.embed_lips(torch.stack([clip[:, v : v + 5] for v in windows]))
        audio = net64.embed_audio(torch.stack([mfcc[None, :, 4 * v : 4 * v + 20] for v in windows]))
    assert lips.shape == audio.shape == (3, 1024)
    assert peak_relative(lips, tensors["embed.lips"]) <= FLOAT64_TOLERANCE
    assert peak_relative(audio, tensors["embed.audio"]) <= FLOAT64_TOLERANCE


# --- the protocol -----------------------------------------------------------------------------------


def test_window_distances_are_calc_pdist(fixture):
    tensors, notes = fixture
    pdist = window_distances(tensors["memory.lips"], tensors["memory.audio"], notes["vshift"])
    assert pdist.shape == (2 * notes["vshift"] + 1, notes["windows"])
    torch.testing.assert_close(pdist, tensors["memory.pdist"], rtol=FLOAT32_TOLERANCE, atol=0)
    score = score_distances(tensors["memory.pdist"])
    offset, min_dist, conf = tensors["memory.result"].tolist()
    assert score.offset == offset
    assert score.sync_d == pytest.approx(min_dist, rel=FLOAT32_TOLERANCE)
    assert score.sync_c == pytest.approx(conf, abs=FLOAT32_TOLERANCE * min_dist)
    torch.testing.assert_close(torch.tensor(score.distances), tensors["memory.mean"], rtol=1e-6, atol=0)


def test_sync_conf_is_upstreams_evaluate(fixture, inputs, net, monkeypatch):
    """The whole protocol on the in-memory clip against upstream's `evaluate` with its file reading
    replaced by the same frames and samples."""
    tensors, notes = fixture
    crops, samples = inputs
    offset, min_dist, conf = tensors["memory.result"].tolist()
    assert notes["memory_margin"] > 10 * FLOAT32_TOLERANCE * min_dist  # the offset is no near-tie
    seen = {}

    def spy(*args, **kwargs):  # keeps the embeddings, so the one network pass is checked twice
        seen["lips"], seen["audio"] = embed_windows(*args, **kwargs)
        return seen["lips"], seen["audio"]

    monkeypatch.setattr(sync_conf_module, "embed_windows", spy)
    score = sync_conf(net, crops, samples)
    assert peak_relative(seen["lips"], tensors["memory.lips"]) <= FLOAT32_TOLERANCE
    assert peak_relative(seen["audio"], tensors["memory.audio"]) <= FLOAT32_TOLERANCE
    assert score.windows == notes["windows"] == FRAMES - 5
    assert score.offset == offset
    assert score.sync_d == pytest.approx(min_dist, rel=FLOAT32_TOLERANCE)
    assert score.sync_c == pytest.approx(conf, abs=FLOAT32_TOLERANCE * min_dist)
    torch.testing.assert_close(
        torch.tensor(score.distances), tensors["memory.mean"], rtol=FLOAT32_TOLERANCE, atol=0
    )
    # upstream's `evaluate` on the mp4 of this clip differs by its JPEG and wav round trips only
    e2e_offset, e2e_min_dist, e2e_conf = tensors["e2e.result"].tolist()
    assert score.offset == e2e_offset
    assert abs(score.sync_c - e2e_conf) <= FILE_EFFECT["sync_c"]
    assert abs(score.sync_d - e2e_min_dist) <= FILE_EFFECT["sync_d"] * e2e_min_dist


def test_jpeg_effect_is_what_the_docs_say(fixture):
    _, notes = fixture
    jpeg = notes["effects"]["jpeg"]
    assert jpeg["offset"] == 0
    assert jpeg["conf"] == pytest.approx(0.019, abs=5e-4)
    assert jpeg["min_dist"] == pytest.approx(-18.3, abs=0.05)


class MouthAndLoudness(torch.nn.Module):
    """A stand-in judge that does see sync: the dark-mouth area per frame against the log energy per frame
    (MFCC coefficient 0), each window's 5 values centred and unit-normed."""

    def __init__(self) -> None:
        super().__init__()
        self.unused = torch.nn.Parameter(torch.zeros(()))  # sync_conf reads the dtype and device here

    @staticmethod
    def unit(x: torch.Tensor) -> torch.Tensor:
        x = x - x.mean(1, keepdim=True)
        return x / (x.norm(dim=1, keepdim=True) + 1e-3)

    def embed_lips(self, windows: torch.Tensor) -> torch.Tensor:  # (B, 3, 5, H, W) → (B, 5)
        return self.unit((windows < 60).all(1).flatten(2).float().mean(2))

    def embed_audio(self, mfcc: torch.Tensor) -> torch.Tensor:  # (B, 1, 13, 20) → (B, 5)
        return self.unit(mfcc[:, 0, 0].reshape(-1, 5, 4).mean(2))


@pytest.mark.parametrize("delay", [0, 3, -2])
def test_a_voice_late_by_k_frames_scores_offset_minus_k(inputs, delay):
    crops, _ = inputs
    score = sync_conf(MouthAndLoudness(), crops, speech(FRAMES, delay))
    assert score.offset == -delay
    assert score.offsets[int(np.argmin(score.distances))] == -delay
    assert score.sync_c > 0.5


@pytest.mark.parametrize("lag", [-4, 0, 2])
def test_lagged_embeddings_score_their_lag(lag):
    """lips[i] == audio[i + lag]: entry j = vshift + lag is (near) zero wherever that audio window exists."""
    vshift, windows = 6, 20
    base = torch.randn(windows + 10, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    audio = base[5 : 5 + windows]
    lips = base[5 + lag : 5 + lag + windows]
    pdist = window_distances(lips, audio, vshift)
    assert pdist.shape == (2 * vshift + 1, windows)
    row = pdist[vshift + lag]
    inside = [i for i in range(windows) if 0 <= i + lag < windows]
    assert row[inside].max() < 1e-4
    score = score_distances(pdist)
    assert score.offset == -lag
    assert score.windows == windows
    assert score.sync_d == pytest.approx(float(pdist.mean(1).min()))
    assert score.sync_c == pytest.approx(float(pdist.mean(1).median() - pdist.mean(1).min()))


def test_shifting_the_audio_embeddings_shifts_the_distance_rows():
    """Audio moved s windows later (zeros in front) moves every defined entry s rows down, bit for bit."""
    vshift, windows, shift = 5, 16, 3
    generator = torch.Generator().manual_seed(1)
    lips, audio = torch.randn(2, windows, 32, generator=generator)
    moved = torch.cat([torch.zeros(shift, 32), audio[: windows - shift]])
    before, after = window_distances(lips, audio, vshift), window_distances(lips, moved, vshift)
    for j in range(shift, 2 * vshift + 1):
        for i in range(windows):
            if shift <= i + j - vshift < windows:  # a real, moved audio window on both sides
                assert after[j, i] == before[j - shift, i]


def test_too_few_frames_is_a_value_error(net):
    crops = mouth_crops(8)
    with pytest.raises(ValueError, match=r"5 frames and 5120 samples .* 5 usable frames; .* at least 6"):
        sync_conf(net, crops[:5], speech(8))
    with pytest.raises(ValueError, match=r"8 frames and 3839 samples \(5 whole frames of audio\)"):
        sync_conf(net, crops, speech(8)[:3839])
    with pytest.raises(ValueError, match=r"\(N, 224, 224, 3\) uint8"):
        sync_conf(net, crops[:, :200], speech(8))
    with pytest.raises(ValueError, match="normalised"):
        sync_conf(net, crops, speech(8) / 32768.0)


def test_six_frames_give_one_window(inputs):
    crops, samples = inputs
    score = sync_conf(MouthAndLoudness(), crops[:6], samples, vshift=2)
    assert score.windows == 1
    assert len(score.distances) == 5
    assert score.offsets == [2, 1, 0, -1, -2]


def test_crops_from_frames_are_bgr_224():
    rgb = np.random.default_rng(0).integers(0, 256, (2, 256, 240, 3), dtype=np.uint8)
    crops = crops_from_frames(iter(rgb))
    assert crops.shape == (2, 224, 224, 3)
    assert crops.dtype == np.uint8
    np.testing.assert_array_equal(crops[1], cv2.resize(np.ascontiguousarray(rgb[1, ..., ::-1]), (224, 224)))
    same = rgb[:, :224, :224]
    np.testing.assert_array_equal(crops_from_frames(same), same[..., ::-1])
    with pytest.raises(ValueError, match="frame 0"):
        crops_from_frames(rgb.astype(np.float32))


def test_aggregate_is_eval_sync_conf():
    track = SyncConf(offset=-1, sync_d=7.0, sync_c=2.0, distances=[8.0, 7.0, 9.0], windows=40)
    result = aggregate([track, replace(track, offset=-2, sync_c=4.0, sync_d=8.0)])
    assert result == {"offset": -1, "sync_c": 3.0, "sync_d": 7.5, "tracks": 2}  # int(−1.5) truncates to −1
    assert aggregate([track, replace(track, offset=2), replace(track, offset=0)])["offset"] == 0
    with pytest.raises(ValueError, match="no face tracks"):
        aggregate([])
    assert track.as_dict() == {
        "offset": -1,
        "sync_d": 7.0,
        "sync_c": 2.0,
        "distances": [8.0, 7.0, 9.0],
        "windows": 40,
        "offsets": [1, 0, -1],
    }


# --- loading ----------------------------------------------------------------------------------------


def one_line_error(path, match: str) -> str:
    with pytest.raises(UserError) as caught:
        load_syncnet_v2(path)
    message = str(caught.value)
    assert "\n" not in message
    assert str(path) in message
    assert match in message, message
    return message


def test_loading_is_strict(state, model_file, tmp_path):
    net = load_syncnet_v2(model_file)
    assert not net.training
    assert all(torch.equal(net.state_dict()[k], v) for k, v in state.items())

    one_line_error(tmp_path / "absent.model", "no such file")
    truncated = tmp_path / "truncated.model"
    truncated.write_bytes(model_file.read_bytes()[: model_file.stat().st_size // 2])
    one_line_error(truncated, "not a readable torch state dict")

    cases = {
        "missing": (
            {k: v for k, v in state.items() if k != "netcnnlip.0.weight"},
            "1 missing: netcnnlip.0.weight",
        ),
        "misshapen": (
            {**state, "netfcaud.3.weight": torch.zeros(1000, 512)},
            "1 misshapen: netfcaud.3.weight (1000, 512) (expected (1024, 512))",
        ),
        "unexpected": ({**state, "netfcaud.9.weight": torch.zeros(1)}, "1 unexpected: netfcaud.9.weight"),
        "not_a_state_dict": ([1, 2], "not a state dict"),
    }
    for name, (content, match) in cases.items():
        path = tmp_path / f"{name}.model"
        torch.save(content, path)
        one_line_error(path, match)


def test_files_without_batch_counters_load(state, tmp_path):
    """syncnet_v2.model predates BatchNorm's num_batches_tracked (PyTorch 0.4.1)."""
    old = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
    path = tmp_path / "old.model"
    torch.save(old, path)
    net = load_syncnet_v2(path)
    assert all(torch.equal(net.state_dict()[k], v) for k, v in old.items())
