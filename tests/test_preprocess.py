"""The preprocess and validate stages on SynthTalk and on broken inputs, run as DVC runs them."""

from __future__ import annotations

import dataclasses
import json
import shutil
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from synclip.config import load_params
from synclip.data.faces import FaceRenderer, Identity, MouthState, Pose, background
from synclip.data.preprocess import (
    REASONS,
    ground_truth_report,
    preprocess_corpus,
    segments_of,
)
from synclip.media.decode import iter_frames
from synclip.media.io import VideoWriter
from synclip.quality.expectations import validate_manifest

pytestmark = pytest.mark.pretrained


@pytest.fixture(scope="module")
def params(root):
    return load_params(root / "params.yaml")


def test_segments_follow_shots_and_length_limits():
    kept, short = segments_of([61, 100], 400, min_seconds=2.0, max_seconds=6.0)
    assert [(s.first, s.last) for s in kept] == [(0, 61), (100, 250), (250, 400)]
    assert [(s.first, s.last) for s in short] == [(61, 100)]
    assert all(s.last - s.first <= 150 for s in kept)


def test_every_unusable_clip_is_rejected_for_its_own_reason(corpus, processed):
    raw, _, gts = corpus
    _, manifest, rejects = processed
    report = ground_truth_report(raw, rejects, manifest)
    assert report["precision"] == 1.0, report
    assert report["recall"] == 1.0, report
    assert set(rejects["reason"]) <= set(REASONS)
    kept = set(manifest["source"])
    for gt in gts.values():
        kind = (gt["defect"] or {}).get("kind")
        if kind in (None, "av_shift", "shot_cut"):
            assert gt["file"] in kept, (
                gt["clip"],
                rejects[rejects["source"] == gt["file"]].to_dict("records"),
            )


def test_a_shot_cut_splits_the_source_at_the_cut(corpus, processed):
    _, _, gts = corpus
    _, manifest, rejects = processed
    (gt,) = [g for g in gts.values() if (g["defect"] or {}).get("kind") == "shot_cut"]
    kept = manifest[manifest["source"] == gt["file"]]
    short = rejects[(rejects["source"] == gt["file"]) & (rejects["reason"] == "too_short")]
    pieces = sorted(
        [
            *zip(kept["start"], kept["end"], kept["identity"], strict=True),
            *zip(short["start"], short["end"], [None] * len(short), strict=True),
        ]
    )
    # two pieces, split at the cut; a piece shorter than min_segment_seconds is rejected as too_short
    assert len(pieces) == 2
    assert len(kept) >= 1
    assert abs(pieces[0][1] - gt["defect"]["cut_time"]) <= 0.04 + 1e-9
    expected = {pieces[0][0]: gt["identity"], pieces[1][0]: gt["defect"]["partner"]}
    assert all(identity == expected[start] for start, _, identity in pieces if identity is not None)


def test_clips_are_aligned_25_fps_with_16k_audio_and_the_manifest_is_complete(processed, params):
    out, manifest, _ = processed
    assert manifest.notna().drop(columns=["gt_av_offset"]).all().all()
    for row in manifest.itertuples():
        frames = list(iter_frames(out / "clips" / f"{row.clip}.mp4"))
        assert len(frames) == row.frames
        assert frames[0].shape == (params.preprocess.resolution,) * 2 + (3,)
        npz = np.load(out / "clips" / f"{row.clip}.npz")
        assert npz["matrices"].shape == (row.frames, 2, 3)
        assert row.mouth_jitter_px < 1.0
        assert row.eye_jitter_px < 1.0
    assert set(manifest["split"]) <= {"train", "val", "test"}
    assert manifest.groupby("identity")["split"].nunique().max() == 1


def test_a_still_head_aligns_to_under_a_pixel(tmp_path, params, pretrained_dir):
    """A talking-free still face: the aligned mouth corners must not wander (128×128 crops)."""
    from synclip.data.preprocess import detect_pass
    from synclip.face.align import apply, track_transforms
    from synclip.face.landmarks import LIPS, MOUTH_LEFT, MOUTH_RIGHT

    identity = Identity.sample("still", np.random.default_rng(5))
    renderer = FaceRenderer(identity)
    backdrop = background(identity, 640, 480, np.random.default_rng(6))
    path = tmp_path / "still.mp4"
    with VideoWriter(path, 640, 480, 25, crf=16) as writer:
        for _ in range(75):
            image = backdrop.copy()
            renderer.draw(image, Pose(320, 220, 100, 0.05), MouthState(0.0, 0.45, 0.1, 0.0, 0.7), 1.0)
            writer.write_frame(image)
    faces = detect_pass(path, params.preprocess, str(pretrained_dir / "face_landmarker.task")).faces
    matrices = track_transforms(faces.stable, 128, params.preprocess.smoothing_frames)
    corners = np.stack([apply(m, p) for m, p in zip(matrices, faces.points["lips"], strict=True)])[
        :, [LIPS.index(MOUTH_LEFT), LIPS.index(MOUTH_RIGHT)]
    ]
    spread = np.linalg.norm(corners - corners.mean(axis=0), axis=-1).max()
    assert spread < 1.0, spread


def test_the_aligned_crop_resizes_only_the_part_of_the_frame_it_sees():
    """Against an area resize of the whole frame: the same crop, in the middle and at the border."""
    import cv2

    from synclip.face.align import warp_face

    rng = np.random.default_rng(3)
    frame = cv2.GaussianBlur(rng.integers(0, 256, (480, 720, 3), dtype=np.uint8), (0, 0), 3)
    for scale, (x, y) in ((0.3, (360.0, 240.0)), (0.45, (20.0, 460.0)), (0.6, (700.0, 10.0))):
        angle = 0.2
        rotation = scale * np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
        matrix = np.hstack([rotation, (np.array([64.0, 64.0]) - rotation @ [x, y])[:, None]])
        factor = 1.5 * scale  # the whole frame through INTER_AREA, as before the crop was limited
        small = cv2.resize(frame, None, fx=factor, fy=factor, interpolation=cv2.INTER_AREA)
        sx, sy = small.shape[1] / frame.shape[1], small.shape[0] / frame.shape[0]
        to_small = np.array([[sx, 0, 0.5 * sx - 0.5], [0, sy, 0.5 * sy - 0.5], [0, 0, 1]])
        full = cv2.warpAffine(
            small,
            (np.vstack([matrix, [0, 0, 1]]) @ np.linalg.inv(to_small))[:2],
            (128, 128),
            flags=cv2.INTER_LINEAR,
            borderMode=cv2.BORDER_REPLICATE,
        )
        error = np.abs(warp_face(frame, matrix, 128).astype(float) - full)
        assert error.mean() < 0.5, (scale, error.mean())
        assert error.max() <= 6, (scale, error.max())


def test_a_source_decoded_once_gives_the_clips_of_one_decoded_per_segment(
    corpus, params, pretrained_dir, tmp_path, monkeypatch
):
    """The detection pass keeps the frames of a short source; a long one is decoded again per segment."""
    from synclip.data import preprocess

    raw, _, gts = corpus
    (shot,) = [g["file"] for g in gts.values() if (g["defect"] or {}).get("kind") == "shot_cut"]
    clean = next(g["file"] for g in gts.values() if g["defect"] is None)
    decodes = []
    counted = preprocess.iter_frames

    def counting(*args, **kwargs):
        decodes.append(args[0])
        return counted(*args, **kwargs)

    monkeypatch.setattr(preprocess, "iter_frames", counting)
    outputs = {}
    for budget in (preprocess.FRAME_CACHE_BYTES, 0):
        monkeypatch.setattr(preprocess, "FRAME_CACHE_BYTES", budget)
        out = tmp_path / str(budget)
        (out / preprocess.CLIPS).mkdir(parents=True)
        decodes.clear()
        rows = []
        for name in (shot, clean):
            job = preprocess.Job(
                str(raw / name),
                name,
                str(out),
                params.preprocess,
                str(pretrained_dir / "face_landmarker.task"),
            )
            rows += preprocess.process_source(job)[0]
        outputs[budget] = (
            rows,
            {p.name: list(iter_frames(p)) for p in sorted((out / preprocess.CLIPS).glob("*.mp4"))},
        )
        assert len(decodes) == (2 if budget else 2 + len(rows)), decodes
    (rows, clips), (again_rows, again) = outputs.values()
    assert [r["clip"] for r in rows] == [r["clip"] for r in again_rows]
    assert len(clips) == len(rows) >= 2
    for name, frames in clips.items():
        assert len(frames) == len(again[name])
        assert all(np.array_equal(a, b) for a, b in zip(frames, again[name], strict=True)), name


def test_broken_inputs_are_rejected_and_the_stage_still_succeeds(tmp_path, corpus, root, pretrained_dir):
    raw_src, _, gts = corpus
    raw = tmp_path / "raw"
    raw.mkdir()
    good = next(g for g in gts.values() if g["defect"] is None)
    shutil.copy(raw_src / good["file"], raw / "good.mp4")
    (raw / "empty.mp4").write_bytes(b"")
    (raw / "corrupt.mp4").write_bytes((raw_src / good["file"]).read_bytes()[:2000] + b"\x00" * 5000)
    import av

    with av.open(str(raw / "speech.m4a"), "w") as container:  # an audio-only file
        stream = container.add_stream("aac", rate=16000, layout="mono")
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 16000), np.float32), format="fltp", layout="mono")
        frame.sample_rate = 16000
        for packet in [*stream.encode(frame), *stream.encode(None)]:
            container.mux(packet)
    (raw / "notes").mkdir()
    (raw / "notes" / "clip.mov").write_bytes(b"not a movie")
    before = {p: p.read_bytes() for p in raw.rglob("*") if p.is_file()}
    out, metrics = tmp_path / "processed", tmp_path / "metrics.json"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "stages.preprocess",
            "--raw",
            str(raw),
            "--out",
            str(out),
            "--metrics",
            str(metrics),
            "--params",
            str(root / "params.yaml"),
        ],
        cwd=root,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    rejects = pd.read_csv(out / "rejects.csv")
    reasons = dict(zip(rejects["source"], rejects["reason"], strict=True))
    assert reasons == {
        "empty.mp4": "unreadable",
        "corrupt.mp4": "unreadable",
        "speech.m4a": "no_video",
        "notes/clip.mov": "unreadable",
    }
    assert list(pd.read_parquet(out / "manifest.parquet")["source"]) == ["good.mp4"]
    assert json.loads(metrics.read_text())["clips"] == 1
    assert {p: p.read_bytes() for p in raw.rglob("*") if p.is_file()} == before  # raw data untouched


def test_a_rerun_resumes_without_redoing_finished_sources(corpus, processed, params, pretrained_dir):
    raw, _, _ = corpus
    out, manifest, _ = processed
    stamps = {p.name: p.stat().st_mtime_ns for p in (out / "clips").iterdir()}
    again, _ = preprocess_corpus(raw, out, params.preprocess, pretrained_dir / "face_landmarker.task")
    pd.testing.assert_frame_equal(again, manifest)
    assert {p.name: p.stat().st_mtime_ns for p in (out / "clips").iterdir()} == stamps


def test_the_quality_gate_passes_good_data_and_names_what_is_wrong(processed, params):
    _, manifest, _ = processed
    gate = dataclasses.replace(params.data_quality, min_clips=3)
    assert validate_manifest(manifest, params.preprocess, gate).success
    bad = manifest.copy()
    bad.loc[0, "fps"] = 30
    bad.loc[1, "split"] = "train" if bad.loc[0, "split"] != "train" else "test"
    bad.loc[1, "identity"] = bad.loc[0, "identity"]
    outcome = validate_manifest(bad, params.preprocess, gate)
    assert not outcome.success
    failed = {(r["table"], r["expectation"], r["column"]) for r in outcome.failures()}
    assert ("clips", "expect_column_values_to_be_in_set", "fps") in failed
    assert ("identities", "expect_column_values_to_be_in_set", "splits") in failed
    assert "fps" in outcome.summary()


def test_reject_details_name_a_source_as_given_not_where_the_checkout_is(params, tmp_path):
    # jobs carry absolute paths for Dask workers; rejects.csv must be the same in every clone
    from synclip.data import preprocess

    source = tmp_path / "checkout" / "data" / "raw" / "x.mp4"
    job = preprocess.Job(str(source), "x.mp4", str(tmp_path), params.preprocess, "m", shown="data/raw/x.mp4")
    reject = preprocess._reject(job, "unreadable", f"{source}: not a readable media file")
    assert reject["detail"] == "data/raw/x.mp4: not a readable media file"
