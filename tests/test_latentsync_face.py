"""LatentSync's face front end (synclip.face.latentsync) against fixtures made with LatentSync's own code.

tests/fixtures/latentsync/face.safetensors (scripts/latentsync_fixtures/face.py): 6 frames of the astronaut
photo, the 3 points synclip derives from MediaPipe, upstream's AlignRestore matrices (float32), crops,
paste-backs and load_fixed_mask. Given upstream's own matrices, synclip's warps are bit-equal here; from
its own float64 matrices (upstream computes them in float32) a pixel can land on the other side of a
truncation to uint8: measured at most 1 level on 0.08 % of crop pixels and 0.19–0.41 % of paste pixels.
The tolerances below allow 1 level on up to 0.2 % (crops) and 1 % (paste) of the pixels.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from latentsync_fixture import load_fixture, peak_relative

from synclip.face.align import TEMPLATE, fit_similarity, stable_points, warp_face
from synclip.face.landmarks import NOSE_TIP, Face
from synclip.face.latentsync import (
    KEPT,
    LatentSyncAligner,
    kept_points,
    latentsync_mask,
    latentsync_points,
)
from synclip.face.mask import draw_mask


@pytest.fixture(scope="module")
def fixture() -> dict[str, torch.Tensor]:
    return load_fixture("face")[0]


def differ(ours: np.ndarray, theirs: torch.Tensor) -> tuple[int, float]:
    """(largest difference in levels, share of values that differ) of two uint8 images."""
    gap = np.abs(ours.astype(np.int16) - theirs.numpy().astype(np.int16))
    return int(gap.max()), float((gap > 0).mean())


def same_pixels(ours: np.ndarray, theirs: torch.Tensor) -> None:
    """Within 1 level on under 1 % of the values. Upstream's own matrices through our warp / paste are
    bit-equal on the CPU that made the fixture; elsewhere OpenCV's other SIMD paths round a few pixels one
    level apart (an Intel Xeon with AVX-512, 2026-12-06: up to 0.41 % of the values). Our matrices
    (MediaPipe's landmarks) give pastes as close (measured 1 level on 0.19–0.41 %)."""
    largest, share = differ(ours, theirs)
    assert largest <= 1, largest
    assert share < 1e-2, share


def unit(face: torch.Tensor) -> torch.Tensor:
    """uint8 (R, R, 3) → (3, R, R) float32 in [−1, 1], as the generator handed it to upstream."""
    return face.permute(2, 0, 1).float() / 127.5 - 1


def test_points_from_landmarks(fixture):
    points478 = fixture["points478"].numpy()
    assert np.array_equal(latentsync_points(points478), fixture["points"].numpy())
    assert np.array_equal(kept_points(points478[:, list(KEPT)]), fixture["points"].numpy())
    with pytest.raises(ValueError, match="478"):
        latentsync_points(points478[:, :10])


@pytest.mark.parametrize("resolution", [128, 256, 512])
def test_matrices_match_upstream(fixture, resolution):
    ours = LatentSyncAligner(resolution).matrices(fixture["points"].numpy())
    assert peak_relative(torch.from_numpy(ours), fixture[f"matrices_{resolution}"]) < 1e-4  # measured 2.7e-7


def test_the_smoothing_carries_over_frames_without_a_face(fixture):
    points = fixture["points"].numpy()
    gap = np.insert(points, 2, np.nan, axis=0)  # frame 2 has no face: upstream's sequence without it
    ours = LatentSyncAligner(256).matrices(gap)
    assert np.isnan(ours[2]).all()
    kept = np.delete(ours, 2, axis=0)
    assert peak_relative(torch.from_numpy(kept), fixture["matrices_256"]) < 1e-4
    # the bias is an EMA: the first frame alone is not what it is after the others
    alone = LatentSyncAligner(256).matrices(points[3:4])[0]
    assert np.abs(alone - fixture["matrices_256"][3].numpy()).max() > 1e-3


def test_crops_match_upstream(fixture):
    frames = fixture["frames"].numpy()
    small = LatentSyncAligner(128)
    for index, frame in enumerate(frames):
        given = small.crop(frame, fixture["matrices_128"][index].double().numpy())
        same_pixels(given, fixture["crops_128"][index])
    ours = np.stack(
        [
            small.crop(frame, matrix)
            for frame, matrix in zip(frames, small.matrices(fixture["points"].numpy()), strict=True)
        ]
    )
    largest, share = differ(ours, fixture["crops_128"])
    assert largest <= 1, largest
    assert share < 2e-3, share  # measured 1 level on 0.08 %

    aligner = LatentSyncAligner(256)
    assert aligner.crop_size == (210, 280)
    for slot, index in enumerate((0, 2)):
        matrix = fixture["matrices_256"][index].double().numpy()
        same_pixels(aligner.warp(frames[index], matrix), fixture["warped_256"][slot])
        same_pixels(aligner.crop(frames[index], matrix), fixture["crops_256"][slot])


@pytest.mark.parametrize("resolution", [128, 256])
def test_paste_matches_upstream(fixture, resolution):
    frames = fixture["frames"].numpy()
    aligner = LatentSyncAligner(resolution)
    ours = aligner.matrices(fixture["points"].numpy())
    indices = fixture[f"paste_index_{resolution}"].tolist()
    for slot, index in enumerate(indices):
        face = unit(fixture[f"paste_faces_{resolution}"][slot])
        expected = fixture[f"pasted_{resolution}"][slot]
        given = aligner.paste(frames[index], face, fixture[f"matrices_{resolution}"][index].double().numpy())
        same_pixels(given, expected)
        same_pixels(aligner.paste(frames[index], face, ours[index]), expected)
        assert differ(given, torch.from_numpy(frames[index]))[1] > 0.1  # the face did change the frame


def test_paste_and_crop_refuse_frames_without_a_face(fixture):
    aligner = LatentSyncAligner(128)
    frame = fixture["frames"][0].numpy()
    with pytest.raises(ValueError, match="no face"):
        aligner.crop(frame, np.full((2, 3), np.nan))
    with pytest.raises(ValueError, match="no face"):
        aligner.paste(frame, torch.zeros(3, 128, 128), np.full((2, 3), np.nan))
    with pytest.raises(ValueError, match="128"):
        aligner.paste(frame, torch.zeros(3, 64, 64), fixture["matrices_128"][0].double().numpy())


def test_mask_matches_upstream(fixture):
    exact = latentsync_mask(256)
    assert exact.shape == (1, 256, 256)
    assert exact.dtype == torch.float32
    assert torch.equal(exact[0], fixture["mask_256"].float() / 255)
    assert abs(float(1 - exact.mean()) - 0.4070) < 1e-4  # upstream's generated share
    soft = latentsync_mask(512)
    assert soft.shape == (1, 512, 512)
    assert (soft[0] * 255).round().to(torch.uint8).equal(fixture["mask_512"])  # measured: equal
    assert float((soft[0] - fixture["mask_512"].float() / 255).abs().max()) < 1e-6


def test_not_synclips_own_crop_or_mask(fixture):
    """The option is real: synclip's template and mask put the face elsewhere."""
    frame = fixture["frames"][0].numpy()
    face = Face(fixture["points478"][0].numpy())
    own = fit_similarity(stable_points(face), TEMPLATE * 256)
    ours = LatentSyncAligner(256)
    matrix = ours.matrices(fixture["points"][:1].numpy())[0]
    theirs = ours.crop(frame, matrix)
    assert np.abs(warp_face(frame, own, 256).astype(int) - theirs.astype(int)).mean() > 10
    tip = face.points[NOSE_TIP].astype(np.float64)
    own_row = (own[:, :2] @ tip + own[:, 2])[1]
    their_row = (matrix[:, :2] @ tip + matrix[:, 2])[1] * 256 / ours.crop_size[1]
    assert abs(own_row - their_row) > 5
    generated = latentsync_mask(256)[0] < 0.5
    own_generated = torch.from_numpy(draw_mask(256) < 128)
    iou = float((generated & own_generated).sum() / (generated | own_generated).sum())
    assert iou < 0.9
