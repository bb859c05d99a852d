"""syncnet_python's face tracks (synclip.nn.s3fd, synclip.eval.face_tracks) against LatentSync's own code.

tests/fixtures/latentsync/s3fd.safetensors (scripts/latentsync_fixtures/s3fd.py): upstream's S3FD on seeded
random weights (tests/s3fd_inputs.py `boosted`: the face logits raised so scores straddle 0.9) and
closed-form images, its track_face / crop_video on synthetic detections over 76 frames, its scene_detect
(scenedetect 0.6.1) on closed-form videos, and ffmpeg's audio cut. Bit-equal where the arithmetic is the
same (input, priors, detection head, boxes, tracks, crops, audio, shot scores). The network outputs are
asserted within 1e-10 (float64, against upstream's float64 copy) and 1e-5 (float32) of upstream's peak;
both measured 0 here (the same torch kernels in the same order), as were the boxes (asserted ≤ 1e-3 px).
"""

from __future__ import annotations

import copy
import hashlib
import pickle
from fractions import Fraction

import cv2
import numpy as np
import pytest
import torch
from latentsync_fixture import load_fixture, peak_relative
from s3fd_inputs import (
    RAW_IMAGE_SIZE,
    SEED,
    TRACK_CASES,
    boosted,
    detector_image,
    scene_frames,
    speech_samples,
    tracking_detections,
    tracking_frame,
    tracking_frames,
)
from seeded_weights import seeded_state, shapes_of

from synclip.errors import UserError
from synclip.eval.face_tracks import (
    ContentShotCuts,
    content_shot_cuts,
    crop_tracks,
    detect_faces,
    detector_input,
    face_tracks,
    load_s3fd,
    shot_detection_frame,
    shots,
    smooth_track,
    track_faces_mediapipe,
    track_faces_s3fd,
)
from synclip.nn.s3fd import S3FDConfig, S3FDHeads, S3FDNet, detect, nms

CONFIG = S3FDConfig()
FPS = Fraction(25)


@pytest.fixture(scope="module")
def fixture() -> tuple[dict[str, torch.Tensor], dict]:
    return load_fixture("s3fd")


@pytest.fixture(scope="module")
def state() -> dict[str, torch.Tensor]:
    return boosted(seeded_state(shapes_of(S3FDNet(CONFIG)), SEED))


@pytest.fixture(scope="module")
def net(state, one_thread) -> S3FDNet:
    net = S3FDNet(CONFIG)
    net.load_state_dict(state, strict=True)
    return net.eval()


def sha256(array: np.ndarray) -> np.ndarray:
    return np.frombuffer(hashlib.sha256(np.ascontiguousarray(array).tobytes()).digest(), np.uint8)


# --- the network -------------------------------------------------------------------------------------


def test_state_dict_is_upstreams(fixture):
    _, notes = fixture
    ours = {name: list(shape) for name, shape in shapes_of(S3FDNet(CONFIG)).items()}
    assert ours == notes["state_shapes"]  # names, order and shapes: sfd_face.pth loads as it is


def test_input_and_priors_are_upstreams(fixture, net):
    tensors, _ = fixture
    x = detector_input(detector_image(), 0.25)
    assert x.shape == (3, 59, 75)
    assert np.array_equal(x, tensors["detector.input"].numpy())
    assert np.array_equal(
        detector_input(detector_image(RAW_IMAGE_SIZE), 1.0), tensors["raw64b.input"].numpy()
    )
    with torch.no_grad():
        heads = net(torch.from_numpy(x)[None])
    assert torch.equal(heads.priors, tensors["detector.priors"])


@pytest.mark.parametrize("key", ["raw64", "raw64b"])
def test_float64_outputs_match_upstream(fixture, net, key):
    tensors, _ = fixture
    x = tensors["detector.input" if key == "raw64" else "raw64b.input"][None].double()
    net64 = copy.deepcopy(net).double()
    with torch.no_grad():
        heads = net64(x)
        out = net64.detect(x)
    assert peak_relative(heads.loc[0], tensors[f"{key}.loc"]) < 1e-10  # measured 0
    assert peak_relative(heads.scores[0], tensors[f"{key}.scores"]) < 1e-10
    # upstream's Detect stores float32; ours keeps float64: the same rows, rounded
    theirs = tensors[f"{key}.out"]
    count = int((theirs[:, 0] > 0).sum())
    assert count > 10
    assert not out[0, 1, count:].any()
    assert torch.allclose(out[0, 1, : len(theirs)].float(), theirs, rtol=0, atol=1e-6)


def test_float32_outputs_and_head_match_upstream(fixture, net):
    tensors, _ = fixture
    x = tensors["detector.input"][None]
    with torch.no_grad():
        heads = net(x)
    assert peak_relative(heads.loc[0], tensors["detector.loc"]) < 1e-5  # measured 0 (same kernels)
    assert peak_relative(heads.scores[0], tensors["detector.scores"]) < 1e-5
    # the head on upstream's own raw outputs: bit-equal on the fixture's CPU; an AVX-512 Xeon rounds
    # two of its 7500 values one float32 step apart (6e-8, 2026-12-06)
    recorded = S3FDHeads(
        tensors["detector.loc"][None], tensors["detector.scores"][None], tensors["detector.priors"]
    )
    assert peak_relative(detect(recorded, CONFIG)[0], tensors["detector.out"]) < 1e-6


def test_detect_faces_matches_upstream(fixture, net):
    tensors, _ = fixture
    boxes = detect_faces(net, detector_image(), conf_th=0.9, scale=0.25)
    theirs = tensors["detector.boxes"].numpy()
    assert boxes.dtype == np.float64
    assert boxes.shape == theirs.shape == (14, 5)
    assert np.abs(boxes - theirs).max() <= 1e-3  # measured 0
    assert detect_faces(net, detector_image(), conf_th=0.999).shape == (0, 5)


def test_nms_keeps_the_best_of_overlapping_boxes():
    dets = np.array([[0, 0, 10, 10, 0.5], [1, 1, 11, 11, 0.9], [20, 20, 30, 30, 0.7], [0, 0, 10, 10.5, 0.1]])
    assert nms(dets, 0.1).tolist() == [1, 2]
    assert nms(dets, 0.9).tolist() == [1, 2, 0]  # box 3 overlaps box 0 by 100 / 105
    assert nms(np.empty((0, 5)), 0.1).dtype == np.int32


# --- loading -------------------------------------------------------------------------------------


def test_load_s3fd_is_strict(tmp_path, state, net):
    path = tmp_path / "sfd_face.pth"
    torch.save(state, path)
    loaded = load_s3fd(path)
    assert not loaded.training
    assert all(
        torch.equal(a, b)
        for a, b in zip(loaded.state_dict().values(), net.state_dict().values(), strict=True)
    )

    with pytest.raises(UserError, match=r"missing\.pth: no such file"):
        load_s3fd(tmp_path / "missing.pth")
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a torch file at all")
    with pytest.raises(UserError, match=r"garbage\.pth: not a readable torch state dict") as error:
        load_s3fd(garbage)
    assert "\n" not in str(error.value)
    listed = tmp_path / "list.pth"
    torch.save([torch.zeros(1)], listed)
    with pytest.raises(UserError, match=r"list\.pth: not a state dict of tensors"):
        load_s3fd(listed)

    small = {k: v for k, v in state.items() if k in ("conf.5.bias", "loc.5.bias")}  # a few, to save writing
    partial = tmp_path / "partial.pth"
    torch.save({**small, "extra.weight": torch.zeros(2)}, partial)
    with pytest.raises(
        UserError,
        match=r"partial\.pth: not S3FD's sfd_face\.pth: 63 missing: vgg\.0\.weight.*unexpected: extra",
    ):
        load_s3fd(partial)
    broken = dict(state)
    broken["conf.0.bias"] = torch.zeros(2)
    misshapen = tmp_path / "misshapen.pth"
    torch.save(broken, misshapen)
    with pytest.raises(UserError, match=r"1 misshapen: conf\.0\.bias \(2,\) \(expected \(4,\)\)"):
        load_s3fd(misshapen)


def test_pickled_code_is_not_run(tmp_path):
    class Payload:
        def __reduce__(self):
            return (print, ("ran",))

    path = tmp_path / "code.pth"
    path.write_bytes(pickle.dumps({"vgg.0.weight": Payload()}, protocol=2))
    with pytest.raises(UserError, match=r"code\.pth: not a readable torch state dict"):
        load_s3fd(path)


# --- shots ---------------------------------------------------------------------------------------


def test_shots_as_scenedetect_061_lists_them():
    assert shots([], 76) == [(0, 76)]
    assert shots([], 0) == [(0, 0)]
    assert shots([25, 40], 64) == [(0, 25), (25, 40), (40, 63)]  # the last frame is in no shot
    for bad in ([0], [30, 20], [64]):
        with pytest.raises(ValueError, match="shot cuts must increase"):
            shots(bad, 64)


@pytest.mark.parametrize(("name", "frames"), [("scenes", scene_frames), ("scenes_one", tracking_frames)])
def test_shot_cuts_match_upstream(fixture, name, frames):
    from scenedetect import ContentDetector, StatsManager
    from scenedetect.common import FrameTimecode
    from scenedetect.detector import FlashFilter

    tensors, _ = fixture
    video = list(frames())
    assert shots(content_shot_cuts(video), len(video)) == [
        tuple(s) for s in tensors[f"{name}.scenes"].tolist()
    ]
    # scenedetect 0.7's scores on our downscaled frames are 0.6.1's on its own, bit for bit
    stats = StatsManager()
    detector = ContentDetector(filter_mode=FlashFilter.Mode.SUPPRESS)
    detector.stats_manager = stats
    for index, frame in enumerate(video):
        detector.process_frame(FrameTimecode(index, fps=FPS), shot_detection_frame(frame))
    ours = [
        stats.get_metrics(FrameTimecode(int(i), fps=FPS), ["content_val"])[0]
        for i in tensors[f"{name}.score_frames"]
    ]
    assert np.array_equal(np.array(ours, np.float64), tensors[f"{name}.scores"].numpy())


def test_flash_is_suppressed_not_merged():
    """0.7's default filter (merge) would cut this video elsewhere; upstream's 0.6.1 suppresses the flash."""
    from scenedetect import ContentDetector
    from scenedetect.common import FrameTimecode

    cuts = ContentShotCuts()
    merging, merged = ContentDetector(), []
    for index, frame in enumerate(scene_frames()):
        cuts.add(frame)
        merged += [
            c.frame_num
            for c in merging.process_frame(FrameTimecode(index, fps=FPS), shot_detection_frame(frame))
        ]
    assert cuts.cuts == [25, 40]  # 30 is 5 frames after 25: suppressed; 40 is 15 after 25
    assert merged != cuts.cuts


# --- tracks and crops ----------------------------------------------------------------------------


@pytest.mark.parametrize("case", range(len(TRACK_CASES)))
def test_tracks_and_crops_match_upstream(fixture, case):
    tensors, notes = fixture
    cuts, min_track = TRACK_CASES[case]
    tracks = face_tracks(tracking_detections(), cuts, min_track=min_track)
    assert len(tracks) == int(tensors[f"track{case}.count"]) == (2 if case == 0 else 4)
    cropped = crop_tracks(tracking_frames(), tracks)
    samples = speech_samples()
    pixel_frames = notes["pixel_frames"]
    for k, track in enumerate(cropped):
        key = f"track{case}.{k}"
        assert np.array_equal(track.frames, tensors[f"{key}.frames"].numpy())
        assert np.array_equal(track.boxes, tensors[f"{key}.boxes"].numpy())
        assert np.array_equal(smooth_track(track.boxes), tensors[f"{key}.smooth"].numpy())
        assert track.crops.shape == (len(track.frames), 224, 224, 3)
        assert track.crops.dtype == np.uint8
        if f"{key}.crop_pixels" in tensors:
            assert np.array_equal(track.crops[pixel_frames], tensors[f"{key}.crop_pixels"].numpy())
        assert np.array_equal(
            np.stack([sha256(c) for c in track.crops]), tensors[f"{key}.crop_sha256"].numpy()
        )
        audio = samples[track.audio_slice]  # upstream's ffmpeg -ss/-to cut, sample for sample
        assert len(audio) == int(tensors[f"{key}.audio_length"])
        assert np.array_equal(sha256(audio), tensors[f"{key}.audio_sha256"].numpy())


def test_crops_need_every_frame_of_the_tracks():
    tracks = face_tracks(tracking_detections(), [], min_track=50)
    with pytest.raises(ValueError, match="the frames ended after 40; the face tracks need 76"):
        crop_tracks((tracking_frame(i) for i in range(40)), tracks)


def test_s3fd_front_end_is_detections_then_tracks(net):
    """track_faces_s3fd = detect_faces on every frame, face_tracks, crop_tracks (a re-readable source)."""
    frames = [tracking_frame(i)[::2, ::3].copy() for i in range(10)]  # (144, 128)
    found = [detect_faces(net, frame) for frame in frames]
    expected = crop_tracks(frames, face_tracks(found, [], min_track=4, min_face_size=20))
    ours = track_faces_s3fd(lambda: iter(frames), net, [], min_track=4, device="cpu", min_face_size=20)
    assert len(ours) == len(expected) > 0
    for a, b in zip(ours, expected, strict=True):
        assert np.array_equal(a.boxes, b.boxes)
        assert np.array_equal(a.crops, b.crops)
    with pytest.raises(ValueError, match="re-readable"):
        track_faces_s3fd(iter(frames), net, [], min_track=4)


def test_no_face_no_tracks(state):
    plain = S3FDNet(CONFIG)
    plain.load_state_dict(seeded_state(shapes_of(plain), SEED), strict=True)  # not boosted: no score > 0.9
    frames = [tracking_frame(i)[::2, ::3].copy() for i in range(8)]
    assert track_faces_s3fd(frames, plain.eval(), None, min_track=4, min_face_size=20) == []


# --- MediaPipe in place of S3FD -------------------------------------------------------------------


def shifted_photo(root, count: int) -> list[np.ndarray]:
    """`count` RGB frames of the astronaut photo, shifted right by 0.5 px and down by 0.25 px a frame."""
    photo = cv2.cvtColor(
        cv2.imread(str(root / "tests" / "fixtures" / "astronaut_face.png")), cv2.COLOR_BGR2RGB
    )
    photo = cv2.resize(photo, (320, 320), interpolation=cv2.INTER_CUBIC)
    moves = [np.float32([[1, 0, 0.5 * t - 15], [0, 1, 0.25 * t]]) for t in range(count)]
    return [cv2.warpAffine(photo, m, (320, 320), borderMode=cv2.BORDER_REPLICATE) for m in moves]


@pytest.mark.pretrained
def test_mediapipe_tracks_a_real_face(root, pretrained_dir):
    frames = shifted_photo(root, 56)
    tracks = track_faces_mediapipe(lambda: iter(frames), pretrained_dir / "face_landmarker.task", None)
    assert len(tracks) == 1
    track = tracks[0]
    assert (track.first, track.last) == (0, 55)
    assert track.audio_slice == slice(0, 56 * 640)
    assert track.crops.shape == (56, 224, 224, 3)
    assert track.crops.dtype == np.uint8
    widths = track.boxes[:, 2] - track.boxes[:, 0]
    assert widths.min() > 100
    centre = (track.boxes[:, 0] + track.boxes[:, 2]) / 2
    assert abs((centre[-1] - centre[0]) - 27.5) < 3  # the photo moved 27.5 px right


@pytest.mark.pretrained
def test_mediapipe_no_face_no_tracks(pretrained_dir):
    frames = [tracking_frame(i) for i in range(56)]
    assert track_faces_mediapipe(frames, pretrained_dir / "face_landmarker.task", []) == []
