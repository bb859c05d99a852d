"""FVD, FID and LPIPS (synclip.eval.fidelity, synclip.train.losses) against LatentSync's eval/fvd.py.

tests/fixtures/latentsync/fidelity.safetensors (scripts/latentsync_fixtures/fidelity.py): upstream's
`compute_fvd` on seeded feature sets (40×16 vs 30×16; 12×32 vs 10×32 and 6×24 vs 5×24, fewer samples
than features, as LatentSync's 30 videos × 400), and `compute_our_fvd` end to end on 6 + 5 videos with the
scripted TinyI3D (tests/fidelity_inputs.py) in place of i3d_torchscript.pt. The FID Inception and VGG16 files are
made here from the architectures (seeded), never downloaded.

Tolerances: Fréchet distances 1e-6 relative to upstream (its d×d sqrtm vs synclip's root in the samples'
span, and float32 vs float64 means of the I3D features; measured ≤ 1e-7); I3D features 1e-5 of the peak
(batch 4 here, one batch upstream); FID Inception vs pyiqa's pytorch-fid InceptionV3 1e-5 of the peak.
"""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch
import torchvision
from fidelity_inputs import MapNet, PlainNet, expand, save_script, tiny_i3d
from latentsync_fixture import load_fixture, peak_relative
from seeded_weights import seeded_state, shapes_of

from synclip.errors import UserError
from synclip.eval.fidelity import (
    FidInception,
    FidInceptionConfig,
    fid,
    fid_features,
    frechet_distance,
    fvd,
    fvd_window,
    i3d_features,
    load_fid_inception,
    load_i3d,
)
from synclip.train.losses import load_lpips

FD_RTOL = 1e-6


@pytest.fixture(scope="module")
def fixture():
    return load_fixture("fidelity")[0]


def relative(value: float, reference: float) -> float:
    return abs(value - reference) / abs(reference)


# --- Fréchet distance -----------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["tall", "wide", "low_rank"])
def test_frechet_distance_matches_upstream(fixture, name):
    a, b = fixture[f"features.{name}.a"].numpy(), fixture[f"features.{name}.b"].numpy()
    ab, ba = frechet_distance(a, b), frechet_distance(b, a)
    assert relative(ab, float(fixture[f"fd.{name}.ab"])) <= FD_RTOL
    assert relative(ba, float(fixture[f"fd.{name}.ba"])) <= FD_RTOL
    # symmetric up to the root's rounding, here and upstream
    assert relative(ab, ba) <= FD_RTOL
    assert relative(float(fixture[f"fd.{name}.ab"]), float(fixture[f"fd.{name}.ba"])) <= FD_RTOL


def test_frechet_distance_of_a_set_with_itself_is_zero(fixture):
    a = fixture["features.low_rank.a"].numpy()
    assert abs(frechet_distance(a, a)) <= 1e-9 * np.trace(np.cov(a, rowvar=False))


@pytest.mark.parametrize(
    ("a", "b"), [((5, 4), (5, 3)), ((1, 4), (5, 4)), ((5,), (5, 4))], ids=["widths", "one-row", "1-d"]
)
def test_frechet_distance_rejects_bad_sets(a, b):
    with pytest.raises(ValueError, match="feature sets"):
        frechet_distance(np.zeros(a), np.zeros(b))


# --- FVD ------------------------------------------------------------------------------------------


def test_fvd_end_to_end_matches_upstream(fixture, tmp_path):
    model = load_i3d(save_script(tiny_i3d(), tmp_path / "i3d_torchscript.pt"))
    real, fake = expand(fixture["fvd.real_small"].numpy()), expand(fixture["fvd.fake_small"].numpy())
    assert real.shape == (6, 16, 224, 224, 3)
    features = i3d_features(model, real, batch=4)
    assert features.dtype == np.float64
    assert features.shape == (6, 12)
    assert peak_relative(torch.from_numpy(features), fixture["fvd.features_real"]) <= 1e-5
    features = i3d_features(model, fake, batch=4)
    assert peak_relative(torch.from_numpy(features), fixture["fvd.features_fake"]) <= 1e-5
    value = fvd(model, real, fake, batch=4)
    assert relative(value, float(fixture["fvd.value"])) <= FD_RTOL


def test_load_i3d_errors(tmp_path):
    with pytest.raises(UserError, match=r"missing\.pt: no such file"):
        load_i3d(tmp_path / "missing.pt")
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a model")
    with pytest.raises(UserError, match=r"junk\.pt: not a TorchScript file"):
        load_i3d(junk)
    state = tmp_path / "state.pt"
    torch.save(tiny_i3d().state_dict(), state)
    with pytest.raises(UserError, match=r"state\.pt: not a TorchScript file"):
        load_i3d(state)
    with pytest.raises(UserError, match=r"plain\.pt: does not take the I3D call model\(x, rescale=False"):
        load_i3d(save_script(PlainNet(), tmp_path / "plain.pt"))
    with pytest.raises(UserError, match=r"map\.pt: the I3D call .* returned \(1, 3, 16, 224, 224\)"):
        load_i3d(save_script(MapNet(), tmp_path / "map.pt"))


@pytest.fixture(scope="module")
def clip(root):
    """(40, 256, 256, 3) RGB uint8: the astronaut photo drifting 1 px right every 5 frames and 1 px up
    and down in a 3-frame cycle (reflected at the borders)."""
    photo = cv2.imread(str(root / "tests" / "fixtures" / "astronaut_face.png"))
    assert photo is not None
    out = []
    for index in range(40):
        shift = np.float32([[1, 0, index // 5 - 4], [0, 1, index % 3 - 1]])
        out.append(cv2.warpAffine(photo, shift, (256, 256), borderMode=cv2.BORDER_REFLECT))
    return np.stack(out)[..., ::-1].copy()  # BGR → RGB


@pytest.mark.pretrained
def test_fvd_window_on_a_real_face(clip, pretrained_dir):
    landmarker = pretrained_dir / "face_landmarker.task"
    window = fvd_window(clip, landmarker)
    assert window.shape == (16, 224, 224, 3)
    assert window.dtype == np.uint8
    # a face crop, not the whole frame: it differs from the resized frame and follows the 1 px drift
    whole = cv2.resize(clip[20], (224, 224), interpolation=cv2.INTER_AREA)
    assert np.abs(window[0].astype(int) - whole).mean() > 10
    assert np.abs(window.astype(int) - window[:1]).mean() < 10
    faceless = clip.copy()
    faceless[23] = 128
    with pytest.raises(ValueError, match="frame 23: no face found"):
        fvd_window(faceless, landmarker)


def test_fvd_window_needs_the_whole_window(clip, tmp_path):
    with pytest.raises(
        ValueError, match=r"the clip has 35 frames; the FVD window is frames 20:36, so it needs 36"
    ):
        fvd_window(clip[:35], tmp_path / "never_opened.task")
    with pytest.raises(ValueError, match="frames_rgb must be"):
        fvd_window(clip.astype(np.float32), tmp_path / "never_opened.task")


# --- FID ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def fid_state(tmp_path_factory):
    """(path, state): a seeded state dict with the FID Inception's keys and shapes, saved as torch.save."""
    model = FidInception(FidInceptionConfig())
    state = seeded_state(shapes_of(model), seed=3)
    path = tmp_path_factory.mktemp("fid") / "pt_inception.pth"
    torch.save(state, path)
    return path, state


@pytest.fixture(scope="module")
def fid_model(fid_state):
    return load_fid_inception(fid_state[0])


def test_fid_inception_loads_strictly(fid_model, fid_state):
    loaded = fid_model.state_dict()
    assert loaded.keys() == fid_state[1].keys()
    assert all(torch.equal(loaded[k], v) for k, v in fid_state[1].items())
    assert not fid_model.training


def test_fid_inception_load_errors(fid_state, tmp_path):
    with pytest.raises(UserError, match=r"nothing\.pth: no such file"):
        load_fid_inception(tmp_path / "nothing.pth")
    state = dict(fid_state[1])
    state["fc.weight"] = torch.zeros(1000, 2048)
    torch.save(state, tmp_path / "misshapen.pth")
    with pytest.raises(
        UserError,
        match=r"misshapen\.pth: .*1 misshapen: fc\.weight \(1000, 2048\) \(expected \(1008, 2048\)\)",
    ):
        load_fid_inception(tmp_path / "misshapen.pth")
    # a lost weight is named; absent num_batches_tracked counters (pre-0.4.1 files) are not an error
    state = {k: v for k, v in fid_state[1].items() if not k.endswith("num_batches_tracked")}
    del state["Mixed_6b.branch1x1.conv.weight"]
    torch.save(state, tmp_path / "missing.pth")
    with pytest.raises(UserError, match=r"missing\.pth: .*: 1 missing: Mixed_6b\.branch1x1\.conv\.weight$"):
        load_fid_inception(tmp_path / "missing.pth")


def test_fid_features_are_pytorch_fids(fid_model, fid_state, monkeypatch):
    """The same features as pyiqa's copy of pytorch-fid's InceptionV3 (resize and normalize on, uint8 / 255
    in), with its weight download replaced by a strict load of the test-made state dict."""
    from pyiqa.archs import inception

    monkeypatch.setattr(
        inception, "load_pretrained_network", lambda net, *_, **__: net.load_state_dict(fid_state[1])
    )
    reference = inception.InceptionV3(output_blocks=[3]).eval()
    frames = np.random.default_rng(0).integers(0, 256, size=(2, 64, 80, 3), dtype=np.uint8)
    with torch.no_grad():
        images = torch.from_numpy(frames).permute(0, 3, 1, 2) / 255.0
        expected = reference(images, resize_input=True, normalize_input=True)[0].flatten(1)
    features = fid_features(fid_model, frames, batch=1)
    assert features.shape == (2, 2048)
    assert features.dtype == np.float64
    assert peak_relative(torch.from_numpy(features), expected) <= 1e-5


def test_fid_of_a_set_with_itself_and_another(fid_model, clip):
    frames = np.stack([cv2.resize(frame, (64, 64), interpolation=cv2.INTER_AREA) for frame in clip[::15]])
    other = 255 - frames[:, ::-1]  # negative, upside down
    different = fid(fid_model, frames, other)
    assert different > 0
    assert abs(fid(fid_model, frames, frames)) <= 1e-6 * different


# --- LPIPS ----------------------------------------------------------------------------------------


def test_lpips_loads_torchvision_vgg16(tmp_path):
    torch.manual_seed(0)
    path = tmp_path / "vgg16-397923af.pth"
    torch.save(torchvision.models.vgg16(weights=None).state_dict(), path)
    term, why = load_lpips(str(path))
    assert term is not None, why
    generator = torch.Generator().manual_seed(1)
    a, b = (torch.rand(2, 3, 64, 64, generator=generator) * 2 - 1 for _ in range(2))
    with torch.no_grad():
        same, different = float(term(a, a)), float(term(a, b))
    assert same == 0
    assert np.isfinite(different)
    assert different > 0
