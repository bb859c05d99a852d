"""SynthTalk: real mp4 files through real decoders, MediaPipe on every frame, defects as labelled."""

from __future__ import annotations

import dataclasses
import itertools
import json
import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from synclip.config import load_params
from synclip.data.synthtalk import DEFECTS, MANIFEST, plan_corpus, synthesize_corpus
from synclip.errors import UserError


def by_defect(gts, kind):
    return [gt for gt in gts.values() if (gt["defect"] or {}).get("kind") == kind]


def fps_of(gt) -> Fraction:
    return Fraction(gt["video"]["fps"])


def decode(path: Path):
    """(frames (N, H, W, 3) uint8, audio (C, S) float32 or None, audio rate, video stream average rate)."""
    with av.open(str(path)) as container:
        rate = container.streams.video[0].average_rate
        frames = np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])
    audio, audio_rate = None, None
    with av.open(str(path)) as container:
        if container.streams.audio:
            audio_rate = container.streams.audio[0].rate
            audio = np.concatenate([f.to_ndarray() for f in container.decode(audio=0)], axis=1)
    return frames, audio, audio_rate, rate


def face_counts(frames: np.ndarray, landmarker_path: Path) -> np.ndarray:
    import mediapipe as mp
    from mediapipe.tasks.python import BaseOptions, vision

    options = vision.FaceLandmarkerOptions(
        base_options=BaseOptions(model_asset_path=str(landmarker_path)),
        num_faces=3,
        running_mode=vision.RunningMode.IMAGE,
    )
    with vision.FaceLandmarker.create_from_options(options) as landmarker:
        return np.array(
            [
                len(
                    landmarker.detect(
                        mp.Image(image_format=mp.ImageFormat.SRGB, data=np.ascontiguousarray(f))
                    ).face_landmarks
                )
                for f in frames
            ]
        )


def envelope(audio: np.ndarray, audio_rate: int, fps: Fraction, frames: int) -> np.ndarray:
    mono = audio.mean(axis=0)
    edges = [int(round(Fraction(i) / fps * audio_rate)) for i in range(frames + 1)]
    return np.array([np.sqrt(np.mean(mono[a:b] ** 2)) for a, b in itertools.pairwise(edges)])


def best_lag(opening: np.ndarray, env: np.ndarray, max_lag: int) -> int:
    """The k that best aligns mouth(t − k) with sound(t): k < 0 means the audio comes early."""
    n = len(opening)
    scores = {
        k: np.corrcoef(opening[max(0, -k) : n - max(0, k)], env[max(0, k) : n - max(0, -k)])[0, 1]
        for k in range(-max_lag, max_lag + 1)
    }
    return max(scores, key=scores.get)


# --- planning ------------------------------------------------------------------------------------


def test_identities_never_share_splits_and_the_plan_is_deterministic(spec):
    splits, plans = plan_corpus(spec)
    assert plan_corpus(spec) == (splits, plans)
    assert sorted(splits.values()).count("test") == 2
    assert {p.split for p in plans if p.identity in splits} <= {"train", "val", "test"}
    assert all(splits[p.identity] == p.split for p in plans)
    partners = [p for p in plans if p.partner]
    assert all(splits[p.partner] == p.split for p in partners)
    assert sorted(p.defect for p in plans if p.defect) == sorted(DEFECTS)


def test_the_default_corpus_holds_out_test_identities(root):
    spec = load_params(root / "params.yaml").corpus
    splits, plans = plan_corpus(spec)
    test_ids = {n for n, s in splits.items() if s == "test"}
    assert len(test_ids) == spec.identities.test
    assert not test_ids & {p.identity for p in plans if p.split == "train"}
    assert sum(p.split == "test" and p.defect is None for p in plans) >= 20


# --- files as written -----------------------------------------------------------------------------


def test_every_clip_has_a_video_and_a_versioned_sidecar(corpus):
    out, manifest, gts = corpus
    assert len(manifest["clips"]) == 13
    assert json.loads((out / MANIFEST).read_text())["summary"] == manifest["summary"]
    for gt in gts.values():
        assert gt["schema"] == "synthtalk-gt/1"
        assert (out / gt["file"]).is_file()
        n = gt["video"]["frames"]
        assert len(gt["frames"]["opening"]) == len(gt["frames"]["face_box"]) == n
        assert len(gt["mouth_25fps"]["opening"]) == int(gt["video"]["duration"] * 25 + 1e-9)


def test_clean_clips_decode_with_the_written_frames_fps_and_audio(corpus):
    out, _, gts = corpus
    clean = [gt for gt in gts.values() if gt["defect"] is None]
    assert len(clean) == 4
    for gt in clean:
        frames, audio, audio_rate, rate = decode(out / gt["file"])
        assert frames.shape == (gt["video"]["frames"], gt["video"]["height"], gt["video"]["width"], 3)
        assert rate == fps_of(gt)
        assert audio_rate == gt["audio"]["sample_rate"]
        assert audio.shape[0] == gt["audio"]["channels"]
        assert abs(audio.shape[1] / audio_rate - gt["video"]["duration"]) < 1024 / audio_rate + 1e-6


@pytest.mark.pretrained
def test_mediapipe_finds_exactly_one_face_in_clean_clips(corpus, pretrained_dir):
    out, _, gts = corpus
    counts = np.concatenate(
        [
            face_counts(decode(out / gt["file"])[0], pretrained_dir / "face_landmarker.task")
            for gt in gts.values()
            if gt["defect"] is None
        ]
    )
    assert len(counts) > 250
    assert np.mean(counts == 1) >= 0.99


def test_the_mouth_closes_in_pauses_and_follows_the_audio_envelope(corpus):
    out, _, gts = corpus
    for gt in (gt for gt in gts.values() if gt["defect"] is None):
        _, audio, audio_rate, _ = decode(out / gt["file"])
        fps = fps_of(gt)
        opening = np.array(gt["frames"]["opening"])
        times = np.array(gt["frames"]["time"]) + float(1 / fps) / 2
        speaking = np.zeros(len(times), bool)
        for symbol, start, end in gt["phonemes"]:
            if not symbol.startswith("_"):
                speaking |= (times >= start) & (times < end)
        assert opening[~speaking].mean() < 0.05
        assert opening[speaking].mean() > 4 * opening[~speaking].mean()
        assert np.percentile(opening[speaking], 90) > 0.25
        env = envelope(audio, audio_rate, fps, len(opening))
        assert np.corrcoef(opening, env)[0, 1] > 0.5, gt["clip"]


# --- defects ---------------------------------------------------------------------------------------


def test_shifted_audio_has_the_labelled_offset(corpus):
    out, _, gts = corpus
    (gt,) = by_defect(gts, "av_shift")
    _, audio, audio_rate, _ = decode(out / gt["file"])
    fps = fps_of(gt)
    opening = np.array(gt["frames"]["opening"])
    lag = best_lag(opening, envelope(audio, audio_rate, fps, len(opening)), max_lag=12)
    expected = gt["defect"]["offset_frames"] * fps / 25  # the label is in 25 fps frames
    assert gt["av_offset_frames"] == gt["defect"]["offset_frames"] != 0
    assert abs(lag - expected) <= 1.01, (lag, float(expected))


def test_clean_clips_measure_in_sync(corpus):
    out, _, gts = corpus
    for gt in (gt for gt in gts.values() if gt["defect"] is None):
        _, audio, audio_rate, _ = decode(out / gt["file"])
        opening = np.array(gt["frames"]["opening"])
        assert abs(best_lag(opening, envelope(audio, audio_rate, fps_of(gt), len(opening)), 12)) <= 1


def test_silent_and_missing_audio(corpus):
    out, _, gts = corpus
    (silent,) = by_defect(gts, "silent_audio")
    _, audio, _, _ = decode(out / silent["file"])
    assert np.abs(audio).max() == 0
    assert np.std(silent["frames"]["opening"]) > 0.1  # the person still talks
    (mute,) = by_defect(gts, "no_audio")
    with av.open(str(out / mute["file"])) as container:
        assert not container.streams.audio
        assert container.streams.video


def test_broken_files_fail_to_decode_as_labelled(corpus):
    out, _, gts = corpus
    (truncated,) = by_defect(gts, "truncated")
    assert (
        (out / truncated["file"]).stat().st_size
        == truncated["video"]["bytes"]
        < truncated["video"]["original_bytes"]
    )
    decoded = 0
    with pytest.raises(av.error.FFmpegError), av.open(str(out / truncated["file"])) as container:  # noqa: PT012
        for _ in container.decode(video=0):
            decoded += 1
        raise av.error.InvalidDataError(0, "ended early")  # reached only if decoding stopped quietly
    assert decoded < truncated["video"]["frames"]
    (junk,) = by_defect(gts, "not_a_video")
    with pytest.raises(av.error.FFmpegError):
        av.open(str(out / junk["file"]))


def test_a_shot_cut_changes_the_picture_at_the_labelled_frame(corpus):
    out, _, gts = corpus
    (gt,) = by_defect(gts, "shot_cut")
    frames = decode(out / gt["file"])[0].astype(np.float32)
    change = np.abs(np.diff(frames, axis=0)).mean(axis=(1, 2, 3))
    assert int(np.argmax(change)) + 1 == gt["defect"]["cut_frame"]
    assert change.max() > 5 * np.median(change)
    assert [s["identity"] for s in gt["shots"]] == [gt["identity"], gt["defect"]["partner"]]


@pytest.mark.pretrained
def test_face_defects_as_mediapipe_sees_them(corpus, pretrained_dir):
    out, _, gts = corpus
    task = pretrained_dir / "face_landmarker.task"
    (two,) = by_defect(gts, "two_faces")
    assert np.mean(face_counts(decode(out / two["file"])[0], task) == 2) >= 0.95
    (gap,) = by_defect(gts, "no_face")
    counts = face_counts(decode(out / gap["file"])[0], task)
    start, stop = gap["defect"]["frames"]
    assert (counts[start:stop] == 0).all()
    assert np.mean(np.delete(counts, np.s_[start:stop]) == 1) >= 0.95
    assert gap["frames"]["face_visible"][start:stop] == [False] * (stop - start)
    (tiny,) = by_defect(gts, "tiny_face")
    widths = [(b[2] - b[0]) / tiny["video"]["width"] for b in tiny["frames"]["face_box"]]
    assert max(widths) < 0.1
    assert np.mean(face_counts(decode(out / tiny["file"])[0], task) == 0) >= 0.9


# --- determinism, resuming, the command line ---------------------------------------------------------


def test_same_seed_gives_byte_identical_clips_in_a_fresh_process(corpus, spec, tmp_path):
    """The fixture made its clips one after another in this process; a new process must agree."""
    out, _, _ = corpus
    _, plans = plan_corpus(spec)
    names = [p.name for p in plans if p.defect in (None, "av_shift", "shot_cut")]
    script = (
        "import sys, dataclasses, pickle; from pathlib import Path; "
        "from synclip.data.synthtalk import make_clip, plan_corpus, load_words; "
        "spec = pickle.loads(bytes.fromhex(sys.argv[1])); _, plans = plan_corpus(spec); "
        "[make_clip(p, spec, Path(sys.argv[2]), load_words()) for p in plans if p.name in sys.argv[3:]]"
    )
    import pickle

    subprocess.run(
        [sys.executable, "-c", script, pickle.dumps(spec).hex(), str(tmp_path), *names], check=True
    )
    for name in names:
        for suffix in (".mp4", ".json"):
            assert (tmp_path / f"{name}{suffix}").read_bytes() == (out / f"{name}{suffix}").read_bytes(), name


def test_a_second_run_resumes_and_other_params_are_refused(corpus, spec):
    out, manifest, _ = corpus
    stamps = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    assert synthesize_corpus(spec, out)["clips"] == manifest["clips"]
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir() if p.name != MANIFEST} == {
        k: v for k, v in stamps.items() if k != MANIFEST
    }
    with pytest.raises(UserError, match="other parameters"):
        synthesize_corpus(dataclasses.replace(spec, seed=spec.seed + 1), out)


def test_cli_generates_with_two_workers(tmp_path, root):
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "synclip",
            "corpus",
            "synth",
            "--out",
            str(tmp_path),
            "--clips",
            "2",
            "--workers",
            "2",
            "--params",
            str(root / "params.yaml"),
            "-S",
            "corpus.max_seconds=3.0",
            "-S",
            "corpus.min_seconds=2.0",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["clips"] == 2
    assert len(list(tmp_path.glob("*.mp4"))) == 2
    assert not list(tmp_path.glob(".*partial*"))


def test_every_corpus_voice_speaks_identically_in_separate_processes():
    script = (
        "import hashlib, sys; from synclip.data.speech import synthesize_batch, Voice; "
        "from synclip.data.synthtalk import VOICES; "
        "print(' '.join(hashlib.md5(synthesize_batch(['Fast wonder chair fish.', 'Pull fifty fall.'], "
        "Voice(name=v, rate=180))[1].samples.tobytes()).hexdigest() for v in VOICES))"
    )
    runs = [
        subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout
        for _ in range(3)
    ]
    assert runs[0] == runs[1] == runs[2]
