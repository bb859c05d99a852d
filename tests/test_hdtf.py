"""HDTF: the vendored lists, the committed test list, and offline builds from stand-in sources."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import subprocess
import sys
from collections import Counter
from fractions import Fraction
from pathlib import Path

import cv2
import numpy as np
import pytest

from synclip.data import hdtf
from synclip.data.hdtf import (
    ASSETS,
    GROUPS,
    TEST_LIST,
    TEST_ROOT_ENV,
    HdtfListError,
    build_hdtf,
    choose_clips,
    format_test_list,
    load_lists,
    parse_time,
    select_test_clips,
)
from synclip.errors import UserError
from synclip.media.decode import iter_frames, read_audio
from synclip.media.io import VideoWriter
from synclip.media.probe import probe

FIXTURES = Path(__file__).parent / "fixtures"
SYNCLIP = Path(sys.executable).with_name("synclip")
# sha256 over the 15 vendored list files (sorted by name, each as bytes): they are HDTF's, unchanged
LISTS_SHA256 = "10ac39374db23c566f7e3d000b1f762470c81a01ba5db6f55dc7f6fcf533b51f"

# --- stand-in sources: 640x360, 30 fps, 4 s, a 200-2000 Hz chirp, the astronaut's face in the crop window
SOURCE_FPS = 30
SOURCE_SECONDS = 4
CROP = (160, 20, 320, 320)  # x, y, w, h
BIT = 16  # px: the source frame index is written in 7 black/white squares along the window's bottom edge
IDS = {"Alpha": "alpha_AAAAA", "Beta": "beta-BBBBBB", "Gamma": "gamma_GGGGG"}
TEST_LISTS = {
    # RD: two clips of one source; WDA: a clip, then a range past the source's end; WRA: download fails
    "annotion_time": {
        "RD": "Alpha.mp4 00:00-00:03 00:01-00:02",
        "WDA": "Beta.mp4 00:01-00:02 00:03-00:06 ",
        "WRA": "Gamma.mp4 00:00-00:01",
    },
    "resolution": {"RD": "Alpha.mp4 360", "WDA": "Beta.mp4 360", "WRA": "Gamma.mp4 360"},
    "video_url": {
        "RD": f"Alpha https://www.youtube.com/watch?v={IDS['Alpha']}",
        "WDA": f"Beta https://www.youtube.com/watch?v={IDS['Beta']}&t=6s",
        "WRA": f"Gamma https://www.youtube.com/watch?v={IDS['Gamma']}",
    },
    "crop_wh": {
        "RD": "Alpha_0.mp4 160 320 20 320\nAlpha_1.mp4 160 320 20 320",
        "WDA": "Beta_0.mp4 160 320 20 320\nBeta_1.mp4 160 320 20 320",
        "WRA": "Gamma_0.mp4 160 320 20 320",
    },
    "crop_ratio": {
        "RD": "Alpha_0.mp4 1.2\nAlpha_1.mp4 1.2",
        "WDA": "Beta_0.mp4 1.2\nBeta_1.mp4 1.2",
        "WRA": "Gamma_0.mp4 1.2",
    },
}
BUILT = ["RD_Alpha_0", "RD_Alpha_1", "WDA_Beta_0"]


def write_lists(folder: Path, edit: dict[tuple[str, str], str] | None = None) -> Path:
    """The test lists in HDTF's format (a BOM on one file, as HDTF has), with `edit`[(group, kind)] replacing a file."""
    folder.mkdir(parents=True, exist_ok=True)
    for kind, groups in TEST_LISTS.items():
        for group, text in groups.items():
            text = (edit or {}).get((group, kind), text)
            prefix = "\ufeff" if (group, kind) == ("WDA", "video_url") else ""
            (folder / f"{group}_{kind}.txt").write_text(prefix + text + "\n", encoding="utf-8")
    return folder


def chirp(t: np.ndarray) -> np.ndarray:
    """A 200 Hz → 2 kHz sweep over the source: no two stretches alike, so an audio shift shows."""
    return (0.3 * np.sin(2 * np.pi * (200 * t + 1800 / (2 * SOURCE_SECONDS) * t**2))).astype(np.float32)


def make_source(path: Path) -> Path:
    face = cv2.cvtColor(cv2.imread(str(FIXTURES / "astronaut_face.png")), cv2.COLOR_BGR2RGB)
    x, y, w, h = CROP
    rate = 48_000
    t = np.arange(SOURCE_SECONDS * rate) / rate
    tone = chirp(t)
    with VideoWriter(
        path, 640, 360, SOURCE_FPS, audio_rate=rate, audio_channels=2, preset="ultrafast"
    ) as writer:
        writer.write_audio(np.stack([tone, tone]))
        for index in range(SOURCE_FPS * SOURCE_SECONDS):
            frame = np.full((360, 640, 3), 90, np.uint8)
            frame[y : y + h, x : x + w] = cv2.resize(face, (w, h), interpolation=cv2.INTER_CUBIC)
            for bit in range(7):
                frame[y + h - BIT : y + h, x + bit * BIT : x + (bit + 1) * BIT] = 255 * (index >> bit & 1)
            writer.write_frame(frame)
    return path


@pytest.fixture(scope="module")
def stand_in(tmp_path_factory):
    """A test root as TEST_ROOT_ENV expects it: lists/ (with a 2-clip test list) and sources/."""
    root = tmp_path_factory.mktemp("hdtf_root")
    write_lists(root / "lists")
    (root / "lists" / TEST_LIST).write_text("# test\nRD_Alpha_1\nWDA_Beta_0\n")
    (root / "sources").mkdir()
    make_source(root / "sources" / f"{IDS['Alpha']}.mp4")
    shutil.copyfile(root / "sources" / f"{IDS['Alpha']}.mp4", root / "sources" / f"{IDS['Beta']}.mp4")
    return root


class StandIn:
    """A `download` that copies the stand-in source and counts its calls; Gamma's "network" is down."""

    def __init__(self, sources: Path) -> None:
        self.sources = sources
        self.calls: Counter[str] = Counter()

    def __call__(self, url: str, dest: Path, height: int) -> None:
        video_id = url.rsplit("=", 1)[1]
        self.calls[video_id] += 1
        assert dest.name.endswith(".part")
        assert height == 360
        if video_id == IDS["Gamma"]:
            raise ConnectionError("network is unreachable")
        shutil.copyfile(self.sources / f"{video_id}.mp4", dest)


# --- the vendored lists ---------------------------------------------------------------------------


def test_vendored_lists_are_hdtfs_files():
    files = sorted(p for p in ASSETS.glob("*.txt") if p.name != TEST_LIST)
    assert [p.name for p in files] == sorted(f"{g}_{k}.txt" for g in GROUPS for k in TEST_LISTS)
    digest = hashlib.sha256(b"".join(p.read_bytes() for p in files)).hexdigest()
    assert digest == LISTS_SHA256, digest
    assert (ASSETS / "README.md").is_file()


def test_vendored_lists_parse_with_the_measured_counts():
    lists = load_lists()
    clips = Counter(clip.group for clip in lists.clips)
    unbuildable = Counter(entry.name.split("_")[0] for entry in lists.unbuildable)
    videos = {g: len({c.video for c in lists.clips if c.group == g}) for g in GROUPS}
    ids = {g: len({c.video_id for c in lists.clips if c.group == g}) for g in GROUPS}
    assert clips == {"RD": 64, "WDA": 187, "WRA": 165}  # buildable clips: 416
    assert unbuildable == {"RD": 2, "WDA": 8, "WRA": 10}  # annotated clips: 66, 195, 175 = 436
    assert videos == {"RD": 54, "WDA": 175, "WRA": 123}  # videos with a buildable clip
    assert ids == {"RD": 54, "WDA": 174, "WRA": 123}  # WhipJimClyburn and JamesClyburn1 share a video
    reasons = {entry.name: entry.reason for entry in lists.unbuildable}
    assert sum(reason.startswith("no crop window in") for reason in reasons.values()) == 15
    assert {name: reason for name, reason in reasons.items() if not reason.startswith("no crop")} == {
        "WDA_MaggieHassan_0": "its crop window (rows 0-776) reaches below a frame 720 px high (WDA_crop_wh.txt:126)",
        "WDA_MazieHirono1_0": "its crop window (rows 0-1134) reaches below a frame 720 px high (WDA_crop_wh.txt:135)",
        "WRA_KevinMcCarthy1_0": "its resolution is 0 (WRA_resolution.txt:76)",
        "WRA_KevinMcCarthy1_1": "its resolution is 0 (WRA_resolution.txt:76)",
        "WRA_PeterKing_0": "its crop window (rows 0-872) reaches below a frame 720 px high (WRA_crop_wh.txt:138)",
    }
    assert lists.notes == (
        "RD_video_url.txt:24: RD Radio24 has a URL but no time ranges: no clip",
        "WRA_annotion_time.txt:96: WRA MittRomney: a range starts at 00:33, before the previous one ends at 08:30",
    )
    by_name = lists.by_name()
    assert all(c.url == f"https://www.youtube.com/watch?v={c.video_id}" for c in lists.clips)  # no &t=
    assert "WDA_CarolynMaloney2_0" in by_name  # the first name of a file with a BOM
    radio = by_name["RD_Radio11_1"]
    assert (radio.start, radio.end, radio.height, radio.frames) == (90, 150, 720, 1500)
    assert dataclasses.astuple(radio.crop) == (557, 0, 478, 478)  # "557 478 0 478": x w y h
    assert all(c.crop.w == c.crop.h and c.crop.y + c.crop.h <= c.height for c in lists.clips)


def test_the_committed_test_list_is_the_seeded_selection():
    lists = load_lists()
    chosen, unbuildable = choose_clips(lists, "30")
    assert unbuildable == []
    assert len({c.name for c in chosen}) == 30
    assert len({c.video_id for c in chosen}) == 30
    assert Counter(c.group for c in chosen) == {"RD": 10, "WDA": 10, "WRA": 10}
    assert [c.group for c in chosen[:3]] == list(GROUPS)
    assert (ASSETS / TEST_LIST).read_text() == format_test_list(select_test_clips(lists))
    assert choose_clips(lists, "4")[0] == chosen[:4]
    everything, unbuildable = choose_clips(lists, "all")
    assert (len(everything), len(unbuildable)) == (416, 20)


def test_times():
    assert parse_time("01:30") == 90
    assert parse_time("1:02:03") == 3723
    assert parse_time("00:05.5") == 5.5
    for bad in ("1:3", "00:60", "1:60:00", "5", "a:00"):
        with pytest.raises(HdtfListError, match="not a time"):
            parse_time(bad)


@pytest.mark.parametrize(
    ("group", "kind", "text", "line", "message"),
    [
        ("RD", "annotion_time", "Alpha.mp4 00:00-00:03 00:05-00:02", 1, "ends before it starts"),
        ("RD", "annotion_time", "Alpha.mp4 00:00-00:03 00:01", 1, "not a time range"),
        ("WDA", "annotion_time", "Beta.mp4 00:01-00:02\n\nBeta2.mp4 00:75-00:80", 3, "not a time"),
        ("WDA", "annotion_time", "Beta.mp4 00:01-00:02\nBeta.mp4 00:03-00:04", 2, "listed again"),
        ("WDA", "annotion_time", "Beta.mp4", 1, "at least one time range"),
        ("WRA", "resolution", "Gamma.mp4 720p", 1, "whole number"),
        ("WRA", "resolution", "Gamma.mp4", 1, "expected 2 fields"),
        ("RD", "crop_wh", "Alpha_0.mp4 160 320 20 320\nAlpha_1.mp4 160 320 20", 2, "expected 5 fields"),
        ("RD", "crop_wh", "Alpha_0.mp4 160 320 20 320\nAlpha_1.mp4 160 x 20 320", 2, "whole number"),
        ("WRA", "video_url", "Gamma https://vimeo.com/123", 1, "not a YouTube watch URL"),
    ],
)
def test_a_malformed_line_is_named_by_file_and_line(tmp_path, group, kind, text, line, message):
    folder = write_lists(tmp_path, {(group, kind): text})
    with pytest.raises(HdtfListError, match=message) as caught:
        load_lists(folder)
    assert f"{folder / f'{group}_{kind}.txt'}:{line}:" in str(caught.value)


def test_missing_entries_make_unbuildable_clips_with_reasons(tmp_path):
    folder = write_lists(
        tmp_path,
        {
            ("RD", "crop_wh"): "Alpha_0.mp4 160 320 20 320",
            ("WDA", "resolution"): "Beta.mp4 0",
            ("WRA", "video_url"): "Delta https://www.youtube.com/watch?v=delta_DDDDD",
        },
    )
    lists = load_lists(folder)
    assert [c.name for c in lists.clips] == ["RD_Alpha_0"]
    assert {u.name: u.reason for u in lists.unbuildable} == {
        "RD_Alpha_1": "no crop window in RD_crop_wh.txt",
        "WDA_Beta_0": "its resolution is 0 (WDA_resolution.txt:1)",
        "WDA_Beta_1": "its resolution is 0 (WDA_resolution.txt:1)",
        "WRA_Gamma_0": "no URL in WRA_video_url.txt",
    }
    assert lists.notes == (
        "RD_annotion_time.txt:1: RD Alpha: a range starts at 00:01, before the previous one ends at 00:03",
        "WRA_video_url.txt:1: WRA Delta has a URL but no time ranges: no clip",
    )


# --- offline builds ---------------------------------------------------------------------------------


def _check_clip(path: Path, seconds: float) -> None:
    info = probe(path)
    assert (info.video.width, info.video.height, info.video.fps) == (512, 512, 25)
    assert abs(info.video.duration - seconds) <= 1 / 25 + 1e-6
    assert info.audio is not None
    assert (info.audio.sample_rate, info.audio.channels) == (16_000, 1)


def _marks(path: Path) -> list[int]:
    """The source frame index each output frame shows (read off the squares)."""
    side = 512 / CROP[2] * BIT
    centres = [(round(512 - side / 2), round((bit + 0.5) * side)) for bit in range(7)]
    return [
        sum((frame[r, c].mean() > 128) << bit for bit, (r, c) in enumerate(centres))
        for frame in iter_frames(path)
    ]


@pytest.fixture(scope="module")
def built(stand_in, tmp_path_factory):
    """The test lists built once: (out folder, report, the stand-in download)."""
    out = tmp_path_factory.mktemp("hdtf_out")
    download = StandIn(stand_in / "sources")
    lists = load_lists(stand_in / "lists")
    report = build_hdtf(out, lists.clips, download=download, retries=1, sleep=0)
    return out, report, download


def test_build_writes_512px_25fps_clips_with_audio_and_reports_failures(built):
    out, report, download = built
    assert [entry["clip"] for entry in report["built"]] == BUILT
    for name, seconds in zip(BUILT, (3, 1, 1), strict=True):
        _check_clip(out / f"{name}.mp4", seconds)
    # frame exact: output frame k of a clip from s shows the source frame on screen at s + (k + 1/2) / 25
    for name, start in (("RD_Alpha_0", 0), ("RD_Alpha_1", 1)):
        marks = _marks(out / f"{name}.mp4")
        expected = [int((start + Fraction(2 * k + 1, 50)) * SOURCE_FPS) for k in range(len(marks))]
        assert marks == expected
    # the audio is the source's over the same span: best match at lag 0 of ±300 samples
    source = chirp(np.arange(SOURCE_SECONDS * 16_000) / 16_000)
    for name, start in (("RD_Alpha_1", 1), ("WDA_Beta_0", 1)):
        audio = read_audio(out / f"{name}.mp4")
        assert 16_000 <= len(audio) <= 16_000 + 1024  # N·640 samples and the AAC frame's padding
        middle = audio[2000:14000]
        lags = np.arange(-300, 301)
        match = [np.dot(middle, source[start * 16_000 + 2000 + lag :][: len(middle)]) for lag in lags]
        assert lags[int(np.argmax(match))] == 0

    failed = {entry["clip"]: entry for entry in report["failed"]}
    assert set(failed) == {"WDA_Beta_1", "WRA_Gamma_0"}
    assert failed["WDA_Beta_1"]["stage"] == "cut"
    assert "ends past the end of the video (4.00 s)" in failed["WDA_Beta_1"]["reason"]
    assert failed["WRA_Gamma_0"]["stage"] == "download"
    assert failed["WRA_Gamma_0"]["reason"] == "failed after 2 tries: ConnectionError: network is unreachable"
    assert json.loads((out / "hdtf_report.json").read_text()) == report
    assert report["summary"] == {"built": 3, "skipped": 0, "failed": 2, "unbuildable": 0}
    # one download per source (Gamma: the first try and one retry); Alpha's source deleted once cut,
    # Beta's kept because one of its clips failed; nothing half written anywhere
    assert download.calls == {IDS["Alpha"]: 1, IDS["Beta"]: 1, IDS["Gamma"]: 2}
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["hdtf_report.json", ".downloads", *(f"{n}.mp4" for n in BUILT)]
    )
    assert [p.name for p in (out / ".downloads").iterdir()] == [f"{IDS['Beta']}_360p.mp4"]


def test_a_second_run_skips_what_is_built(built, stand_in):
    out, _, _ = built
    download = StandIn(stand_in / "sources")
    clips = [c for c in load_lists(stand_in / "lists").clips if c.name != "WRA_Gamma_0"]
    stamps = {name: (out / f"{name}.mp4").stat().st_mtime_ns for name in BUILT}
    report = build_hdtf(out, clips, download=download, retries=0, sleep=0, keep_sources=True)
    assert [entry["clip"] for entry in report["skipped"]] == BUILT
    assert [entry["clip"] for entry in report["failed"]] == ["WDA_Beta_1"]
    assert download.calls == {}  # Alpha: nothing to do; Beta: its source was kept
    assert stamps == {name: (out / f"{name}.mp4").stat().st_mtime_ns for name in BUILT}


def test_a_broken_clip_under_the_final_name_is_built_again(built, stand_in, tmp_path):
    out, _, _ = built
    clip = load_lists(stand_in / "lists").by_name()["RD_Alpha_1"]
    (tmp_path / "RD_Alpha_1.mp4").write_bytes((out / "RD_Alpha_1.mp4").read_bytes()[:5000])
    download = StandIn(stand_in / "sources")
    report = build_hdtf(tmp_path, [clip], download=download, retries=0, sleep=0)
    assert [entry["clip"] for entry in report["built"]] == ["RD_Alpha_1"]
    assert download.calls == {IDS["Alpha"]: 1}
    _check_clip(tmp_path / "RD_Alpha_1.mp4", 1)


def test_rates():
    assert [hdtf.parse_rate(text) for text in ("500K", "2M", "1.5m", "100")] == [
        512_000,
        2 << 20,
        3 << 19,
        100,
    ]
    for bad in ("", "2X", "-1M", "0"):
        with pytest.raises(UserError, match="--rate-limit"):
            hdtf.parse_rate(bad)


@pytest.mark.parametrize("interruption", [KeyboardInterrupt, OSError])
def test_an_interrupted_cut_leaves_no_partial_clip(stand_in, tmp_path, monkeypatch, interruption):
    def failing_frames(*args, **kwargs):
        for index, frame in enumerate(iter_frames(*args, **kwargs)):
            if index == 10:
                raise interruption("stopped midway")
            yield frame

    monkeypatch.setattr(hdtf, "iter_frames", failing_frames)
    clip = load_lists(stand_in / "lists").by_name()["RD_Alpha_0"]
    download = StandIn(stand_in / "sources")
    if interruption is KeyboardInterrupt:
        with pytest.raises(KeyboardInterrupt):
            build_hdtf(tmp_path, [clip], download=download, retries=0, sleep=0)
    else:
        report = build_hdtf(tmp_path, [clip], download=download, retries=0, sleep=0)
        assert report["failed"] == [{"clip": "RD_Alpha_0", "stage": "cut", "reason": "stopped midway"}]
    assert [p.name for p in tmp_path.iterdir() if p.suffix == ".mp4" or "partial" in p.name] == []


def test_the_cli_builds_lists_and_fails_with_one_line(stand_in, tmp_path):
    assert SYNCLIP.is_file(), "the synclip console script is not installed (pip install -e .)"
    env = {**os.environ, TEST_ROOT_ENV: str(stand_in)}

    def run(*args):
        return subprocess.run(
            [SYNCLIP, "data", "hdtf", *args], capture_output=True, text=True, env=env, check=False
        )

    listed = run("--list", "--clips", "all")
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout.splitlines()[-1] == "5 clips (0.1 min) from 3 videos, 0 unbuildable"
    result = run("--out", str(tmp_path), "--clips", "all", "--sleep", "0", "--retries", "0")
    assert result.returncode == 1
    lines = result.stdout.splitlines()
    assert (
        lines[-1]
        == f"hdtf: 3 built, 0 skipped, 2 failed, 0 unbuildable (report: {tmp_path / 'hdtf_report.json'})"
    )
    assert lines[0].startswith("failed       WDA_Beta_1 (cut): time range 00:03-00:06 ends past the end")
    assert lines[1].startswith("failed       WRA_Gamma_0 (download): unavailable: stand-in source")
    assert "Traceback" not in result.stderr
    assert TEST_ROOT_ENV in result.stderr
    # --allow-failures (the DVC stage's): a vanished video does not stop the pipeline while clips are there
    result = run(
        "--out", str(tmp_path), "--clips", "all", "--sleep", "0", "--retries", "0", "--allow-failures"
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-1].startswith("hdtf: 0 built, 3 skipped, 2 failed")
    gone = tmp_path / "gone"  # every source has vanished
    shutil.copytree(stand_in / "lists", gone / "lists")
    (gone / "sources").mkdir()
    result = subprocess.run(
        [
            SYNCLIP,
            "data",
            "hdtf",
            "--out",
            str(gone / "out"),
            "--clips",
            "all",
            "--sleep",
            "0",
            "--allow-failures",
        ],
        capture_output=True,
        text=True,
        env={**env, TEST_ROOT_ENV: str(gone)},
        check=False,
    )
    assert result.returncode == 1  # nothing built at all: a failure even so
    result = run("--out", str(tmp_path), "--clips", "3")
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert "--clips must be between 1 and 2" in result.stderr


@pytest.mark.pretrained
def test_preprocess_accepts_a_built_clip(built, pretrained_dir, root, tmp_path):
    from synclip.config import load_params
    from synclip.data.preprocess import preprocess_corpus

    out, _, _ = built
    params = dataclasses.replace(load_params(root / "params.yaml").preprocess, workers=1)
    manifest, rejects = preprocess_corpus(out, tmp_path, params, pretrained_dir / "face_landmarker.task")
    assert list(manifest["source"]) == ["RD_Alpha_0.mp4"], rejects
    assert manifest["frames"].iloc[0] == 75
    assert set(rejects["reason"]) == {"too_short"}  # the 1 s clips
