"""What a media file holds: streams, frame rate, duration, rotation; one clear error when it is unusable."""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av

from synclip.errors import UserError


class MediaError(UserError):
    """A file that cannot be used as a video (or audio) input; the message names the file and why."""


@dataclass(frozen=True)
class VideoInfo:
    width: int  # as stored (before rotation)
    height: int
    fps: Fraction  # average frame rate
    frames: int | None  # as the container declares it; None when it does not
    duration: float  # seconds
    rotation: int  # degrees counter-clockwise the picture must be turned for display (0, 90, 180, 270)
    codec: str

    @property
    def display_size(self) -> tuple[int, int]:
        """(width, height) after rotation."""
        return (self.height, self.width) if self.rotation in (90, 270) else (self.width, self.height)


@dataclass(frozen=True)
class AudioInfo:
    sample_rate: int
    channels: int
    duration: float
    codec: str


@dataclass(frozen=True)
class MediaInfo:
    path: Path
    format: str
    duration: float
    video: VideoInfo | None
    audio: AudioInfo | None


def probe(path: str | Path) -> MediaInfo:
    """Read a file's streams; MediaError for a missing, empty or non-media file."""
    path = Path(path)
    if not path.exists():
        raise MediaError(f"{path}: no such file")
    if path.is_dir():
        raise MediaError(f"{path}: is a directory, not a media file")
    if path.stat().st_size == 0:
        raise MediaError(f"{path}: empty file (0 bytes)")
    try:
        with av.open(str(path)) as container:
            duration = container.duration / av.time_base if container.duration else 0.0
            video = _video_info(container, duration) if container.streams.video else None
            audio = _audio_info(container, duration) if container.streams.audio else None
            fmt = container.format.name
    except av.error.FFmpegError as error:
        raise MediaError(f"{path}: not a readable media file ({_reason(error)})") from None
    return MediaInfo(path=path, format=fmt, duration=duration, video=video, audio=audio)


def require_video(info: MediaInfo) -> VideoInfo:
    if info.video is None:
        kind = "an audio-only file" if info.audio else "a file without streams"
        raise MediaError(f"{info.path}: no video stream ({kind})")
    if info.video.fps <= 0:
        raise MediaError(f"{info.path}: the video stream declares no frame rate")
    return info.video


def _video_info(container: av.container.InputContainer, duration: float) -> VideoInfo:
    stream = container.streams.video[0]
    fps = stream.average_rate or stream.guessed_rate or Fraction(0)
    stream_duration = float(stream.duration * stream.time_base) if stream.duration else duration
    return VideoInfo(
        width=stream.codec_context.width,
        height=stream.codec_context.height,
        fps=Fraction(fps),
        frames=stream.frames or None,
        duration=stream_duration,
        rotation=_rotation(container),
        codec=stream.codec_context.name,
    )


def _audio_info(container: av.container.InputContainer, duration: float) -> AudioInfo:
    stream = container.streams.audio[0]
    stream_duration = float(stream.duration * stream.time_base) if stream.duration else duration
    return AudioInfo(
        sample_rate=stream.codec_context.sample_rate,
        channels=stream.codec_context.channels,
        duration=stream_duration,
        codec=stream.codec_context.name,
    )


def _rotation(container: av.container.InputContainer) -> int:
    """Display rotation from the first decoded frame's display matrix (0 when absent or undecodable)."""
    try:
        for frame in container.decode(video=0):
            return int(round(frame.rotation)) % 360
    except av.error.FFmpegError:
        return 0
    return 0


def _reason(error: av.error.FFmpegError) -> str:
    return (error.strerror or type(error).__name__).rstrip(".")
