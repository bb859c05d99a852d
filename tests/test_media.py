"""Media I/O: probing, 25 fps resampling, seeking, rotation, audio resampling and broken files."""

from __future__ import annotations

import subprocess
from fractions import Fraction

import av
import imageio_ffmpeg
import numpy as np
import pytest

from synclip.media.decode import iter_frames, read_audio
from synclip.media.io import VideoWriter
from synclip.media.probe import MediaError, probe, require_video


def numbered_video(path, fps, frames, size=(64, 48), audio_rate=None, rotation=None):
    """Frame k is filled with gray level 4·k (so decoded frames can be told apart; k < 64)."""
    width, height = size
    with VideoWriter(path, width, height, fps, audio_rate=audio_rate, crf=0, preset="ultrafast") as writer:
        if rotation is not None:
            writer.video.set_display_rotation(rotation)
        for k in range(frames):
            writer.write_frame(np.full((height, width, 3), 4 * k, np.uint8))
            if audio_rate:  # a continuous 440 Hz tone, written in step with the frames
                begin, end = (int(round(Fraction(j) / Fraction(fps) * audio_rate)) for j in (k, k + 1))
                t = np.arange(begin, end) / audio_rate
                writer.write_audio((0.5 * np.sin(2 * np.pi * 440 * t))[None].astype(np.float32))
    return path


def levels(frames):
    return [int(round(f.mean() / 4)) for f in frames]


def test_probe_reports_streams_rate_and_duration(tmp_path):
    path = numbered_video(tmp_path / "v.mp4", Fraction(30000, 1001), 30, audio_rate=48000)
    info = probe(path)
    video = require_video(info)
    assert video.fps == Fraction(30000, 1001)
    assert video.frames == 30
    assert (video.width, video.height) == (64, 48)
    assert abs(video.duration - 30 * 1001 / 30000) < 1e-3
    assert info.audio.sample_rate == 48000


@pytest.mark.parametrize(
    ("fps", "frames"), [(25, 50), (30, 60), (24, 48), (Fraction(30000, 1001), 60), (60, 60)]
)
def test_resampling_to_25_fps_shows_the_frame_on_screen_at_each_middle(tmp_path, fps, frames):
    path = numbered_video(tmp_path / "v.mp4", fps, frames)
    out = levels(iter_frames(path))
    duration = frames / Fraction(fps)
    assert len(out) == int(duration * 25)
    expected = [int((Fraction(2 * i + 1, 50)) * Fraction(fps)) for i in range(len(out))]
    assert out == expected


def test_a_window_equals_the_same_frames_of_the_whole(tmp_path):
    path = numbered_video(tmp_path / "v.mp4", 30, 60)
    whole = levels(iter_frames(path))
    assert levels(iter_frames(path, start=0.6, end=1.4)) == whole[15:35]


def test_rotation_metadata_is_applied_like_ffmpeg_does(tmp_path):
    path = tmp_path / "rotated.mp4"
    with VideoWriter(path, 64, 48, 25, crf=0, preset="ultrafast") as writer:
        writer.video.set_display_rotation(90)
        image = np.zeros((48, 64, 3), np.uint8)
        image[:10, :20] = 255  # a white patch in the stored top-left corner
        for _ in range(5):
            writer.write_frame(image)
    ours = next(iter(iter_frames(path)))
    assert ours.shape == (64, 48, 3)
    assert probe(path).video.display_size == (48, 64)
    # the independent reference: the ffmpeg binary (autorotate on) decodes the first frame
    raw = subprocess.run(
        [
            imageio_ffmpeg.get_ffmpeg_exe(),
            "-v",
            "error",
            "-i",
            str(path),
            "-frames:v",
            "1",
            "-f",
            "rawvideo",
            "-pix_fmt",
            "rgb24",
            "-",
        ],
        capture_output=True,
        check=True,
    ).stdout
    reference = np.frombuffer(raw, np.uint8).reshape(64, 48, 3)
    assert np.abs(ours.astype(int) - reference).mean() < 2


def test_audio_is_resampled_to_16k_mono(tmp_path):
    path = numbered_video(tmp_path / "v.mp4", 25, 50, audio_rate=44100)
    audio = read_audio(path)
    assert audio.dtype == np.float32
    assert abs(len(audio) - 32000) < 1024
    spectrum = np.abs(np.fft.rfft(audio[4000:20000]))
    assert abs(np.argmax(spectrum) - 440) <= 1  # 1 Hz bins
    window = read_audio(path, start=0.5, end=1.0)
    np.testing.assert_allclose(window, audio[8000:16000], atol=1e-6)


@pytest.mark.parametrize(
    ("content", "message"),
    [(b"", "empty file"), (b"<html>403</html>" * 50, "not a readable media file")],
)
def test_unusable_files_are_one_clear_error(tmp_path, content, message):
    path = tmp_path / "clip.mp4"
    path.write_bytes(content)
    with pytest.raises(MediaError, match=message):
        probe(path)


def test_audio_only_file_has_no_video_stream(tmp_path):
    path = tmp_path / "speech.m4a"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("aac", rate=16000, layout="mono")
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
        frame.sample_rate = 16000
        for packet in [*stream.encode(frame), *stream.encode(None)]:
            container.mux(packet)
    with pytest.raises(MediaError, match="no video stream"):
        require_video(probe(path))


def test_a_truncated_file_is_reported_not_padded(tmp_path):
    cut = tmp_path / "cut.mp4"
    # a faststart file keeps its index at the front, so the cut file opens and then runs dry
    with VideoWriter(tmp_path / "fs.mp4", 320, 240, 25, audio_rate=16000, faststart=True) as writer:
        for k in range(100):
            writer.write_frame(np.random.default_rng(k).integers(0, 255, (240, 320, 3), dtype=np.uint8))
            writer.write_audio(np.zeros((1, 640), np.float32))
    data = (tmp_path / "fs.mp4").read_bytes()
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(MediaError, match="truncated"):
        list(iter_frames(cut))


def test_audio_cut_off_inside_a_packet_is_truncated_not_unreadable(tmp_path):
    # flat frames make the audio most of the bytes, so most cuts end inside an audio packet, which
    # the AAC decoder answers with "Invalid data" instead of running dry (SynthTalk hit this)
    with VideoWriter(tmp_path / "fs.mp4", 320, 240, 25, audio_rate=16000, faststart=True) as writer:
        for k in range(100):
            writer.write_frame(np.full((240, 320, 3), k, np.uint8))
            writer.write_audio(np.random.default_rng(k).normal(0, 0.1, (1, 640)).astype(np.float32))
    data = (tmp_path / "fs.mp4").read_bytes()
    cut = tmp_path / "cut.mp4"
    for fraction in np.linspace(0.3, 0.8, 11):
        cut.write_bytes(data[: int(len(data) * fraction)])
        with pytest.raises(MediaError, match=r"truncated: .* of a 4\.00 s"):
            read_audio(cut)


def test_the_writer_leaves_nothing_behind_on_failure(tmp_path):
    target = tmp_path / "out.mp4"
    with pytest.raises(RuntimeError), VideoWriter(target, 64, 48, 25) as writer:  # noqa: PT012
        writer.write_frame(np.zeros((48, 64, 3), np.uint8))
        raise RuntimeError("the caller failed mid-way")
    assert list(tmp_path.iterdir()) == []
