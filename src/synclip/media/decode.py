"""Streaming decode: video frames resampled to a constant rate, audio resampled to 16 kHz mono."""

from __future__ import annotations

from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from synclip.constants import AUDIO_SAMPLE_RATE, VIDEO_FPS
from synclip.media.probe import MediaError, _reason


def rotate_for_display(frame: np.ndarray, rotation: int) -> np.ndarray:
    """Turn a stored frame (H, W, C) counter-clockwise by `rotation` degrees (a display matrix)."""
    if rotation % 90:
        raise ValueError(f"rotation must be a multiple of 90, got {rotation}")
    return np.ascontiguousarray(np.rot90(frame, k=(rotation // 90) % 4))


def iter_frames(
    path: str | Path,
    fps: Fraction | int = VIDEO_FPS,
    start: float = 0.0,
    end: float | None = None,
    rotate: bool = True,
) -> Iterator[np.ndarray]:
    """RGB frames (H, W, 3) uint8 at `fps` over [start, end) seconds of the video stream.

    Frame-rate conversion picks, for output frame i (covering [i/fps, (i+1)/fps) from `start`), the
    source frame on screen at the middle of that interval, the convention SynthTalk's ground truth
    uses. Frames are produced one at a time, so memory does not grow with the length of the video.
    Raises MediaError when the stream cannot be decoded to the end (a truncated or corrupt file).
    """
    path = Path(path)
    # exact arithmetic: a frame boundary that falls on an output frame's middle must be judged the
    # same way whether decoding starts at 0 or at `start`
    step = 1 / Fraction(fps)
    begin = _exact(start)
    stop_at = None if end is None else _exact(end)
    index = 0
    held: np.ndarray | None = None
    held_time = Fraction(-(10**9))
    rotation = 0
    try:
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            origin = (
                Fraction(stream.start_time * stream.time_base)
                if stream.start_time is not None
                else Fraction(0)
            )
            if begin > 0:
                container.seek(int((begin + origin) / stream.time_base), stream=stream, backward=True)
            for frame in container.decode(stream):
                if frame.pts is None:
                    continue
                time = Fraction(frame.pts * stream.time_base) - origin
                # emit every output frame whose middle falls before this source frame starts
                while held is not None and begin + (index + Fraction(1, 2)) * step < time:
                    if stop_at is not None and begin + (index + 1) * step > stop_at:
                        return
                    yield _display(held, rotation, rotate)
                    index += 1
                held, held_time, rotation = frame.to_ndarray(format="rgb24"), time, int(round(frame.rotation))
            # the last source frame stays on screen until the end of the stream; only whole
            # output intervals are emitted, so N seconds give floor(N · fps) frames
            stream_end = _stream_end(stream, origin, held_time)
            rate = stream.average_rate or stream.guessed_rate or Fraction(VIDEO_FPS)
            if held is None or stream_end - held_time > 2 / Fraction(rate) + Fraction(1, 10):
                decoded = "no frame" if held is None else f"frames up to {float(held_time):.2f} s"
                raise MediaError(
                    f"{path}: truncated: decoded {decoded} of a {float(stream_end):.2f} s video stream"
                )
            stop = stream_end if stop_at is None else min(stop_at, stream_end)
            while held is not None and begin + (index + 1) * step <= stop:
                yield _display(held, rotation, rotate)
                index += 1
    except av.error.FFmpegError as error:
        raise MediaError(f"{path}: decoding failed after {index} frames ({_reason(error)})") from None


def _exact(seconds: float | Fraction) -> Fraction:
    """A time given in seconds as an exact fraction (floats like 0.6 mean 3/5)."""
    return Fraction(seconds).limit_denominator(1_000_000)


def _display(frame: np.ndarray, rotation: int, rotate: bool) -> np.ndarray:
    return rotate_for_display(frame, rotation % 360) if rotate and rotation % 360 else frame


def _stream_end(stream: av.video.stream.VideoStream, origin: Fraction, last_time: Fraction) -> Fraction:
    if stream.duration:
        return Fraction(stream.duration * stream.time_base)
    rate = stream.average_rate or stream.guessed_rate
    return last_time + (1 / Fraction(rate) if rate else Fraction(0))


def read_audio(
    path: str | Path, sample_rate: int = AUDIO_SAMPLE_RATE, start: float = 0.0, end: float | None = None
) -> np.ndarray:
    """Mono float32 samples at `sample_rate` over [start, end) seconds; MediaError without audio."""
    path = Path(path)
    resampler = av.AudioResampler(format="flt", layout="mono", rate=sample_rate)
    chunks: list[np.ndarray] = []
    first: float | None = None
    declared: float | None = None
    failure: av.error.FFmpegError | None = None
    try:
        with av.open(str(path)) as container:
            if not container.streams.audio:
                raise MediaError(f"{path}: no audio stream")
            stream = container.streams.audio[0]
            origin = float(stream.start_time * stream.time_base) if stream.start_time is not None else 0.0
            declared = float(stream.duration * stream.time_base) if stream.duration else None
            for frame in container.decode(stream):
                if first is None and frame.pts is not None:
                    first = float(frame.pts * stream.time_base) - origin
                for out in resampler.resample(frame):
                    chunks.append(out.to_ndarray().reshape(-1))
            for out in resampler.resample(None):
                chunks.append(out.to_ndarray().reshape(-1))
    except av.error.FFmpegError as error:  # a file cut off inside a packet fails here: judged by length below
        failure = error
    samples = np.concatenate(chunks) if chunks else np.zeros(0, np.float32)
    lead = int(round(max(first or 0.0, 0.0) * sample_rate))
    if lead:
        samples = np.concatenate([np.zeros(lead, np.float32), samples])
    if declared and len(samples) / sample_rate < declared - 0.25:
        raise MediaError(
            f"{path}: truncated: decoded {len(samples) / sample_rate:.2f} s of a {declared:.2f} s audio stream"
            + (f" ({_reason(failure)})" if failure is not None else "")
        )
    if failure is not None:
        raise MediaError(f"{path}: audio decoding failed ({_reason(failure)})")
    begin = int(round(start * sample_rate))
    stop = len(samples) if end is None else int(round(end * sample_rate))
    clip = samples[begin:stop]
    if end is not None and len(clip) < stop - begin:  # audio shorter than asked: pad with silence
        clip = np.pad(clip, (0, stop - begin - len(clip)))
    return clip.astype(np.float32, copy=False)
