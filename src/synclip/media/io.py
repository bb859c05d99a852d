"""Streaming video + audio writing through PyAV (its wheel bundles FFmpeg; no system ffmpeg).

Files are written atomically: to a hidden temporary name next to the target, renamed on success,
removed on failure, so a crash or an error never leaves a partial file under the final name.
"""

from __future__ import annotations

import contextlib
import os
from fractions import Fraction
from pathlib import Path
from types import TracebackType

import av
import numpy as np

AAC_FRAME = 1024  # samples per AAC frame


class VideoWriter:
    """H.264 (+ optional AAC) mp4 writer fed frame by frame; use as a context manager.

    Video frames are (H, W, 3) uint8 RGB. Audio is float32 in [-1, 1], shaped (C, N), fed in any
    chunk sizes; it is muxed in step with the video as the caller interleaves the two.
    """

    def __init__(
        self,
        path: str | Path,
        width: int,
        height: int,
        fps: Fraction | int,
        audio_rate: int | None = None,
        audio_channels: int = 1,
        crf: int = 18,
        preset: str = "medium",
        threads: int = 0,
        faststart: bool = False,
    ) -> None:
        if width % 2 or height % 2:
            raise ValueError(f"H.264 with yuv420p needs even sizes, got {width}x{height}")
        self.path = Path(path)
        self.tmp = self.path.with_name(f".{self.path.stem}.partial{self.path.suffix}")
        options = {"movflags": "+faststart"} if faststart else {}
        self.container = av.open(str(self.tmp), mode="w", format="mp4", options=options)
        self.video = self.container.add_stream("libx264", rate=Fraction(fps))
        self.video.width, self.video.height = width, height
        self.video.pix_fmt = "yuv420p"
        self.video.options = {"crf": str(crf), "preset": preset, "threads": str(threads)}
        self.audio = None
        self._pending = np.zeros((audio_channels, 0), np.float32)
        self._audio_pts = 0
        if audio_rate is not None:
            layout = {1: "mono", 2: "stereo"}[audio_channels]
            self.audio = self.container.add_stream("aac", rate=audio_rate, layout=layout)
            # AAC carries at most 6144 bits per channel per 1024-sample frame
            self.audio.bit_rate = min(128_000, 6 * audio_rate) * audio_channels
        self.frames = 0

    def write_frame(self, rgb: np.ndarray) -> None:
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
        frame.pts = self.frames
        frame.time_base = Fraction(1) / self.video.codec_context.framerate
        for packet in self.video.encode(frame):
            self.container.mux(packet)
        self.frames += 1

    def write_audio(self, samples: np.ndarray) -> None:
        if self.audio is None:
            raise ValueError("this writer has no audio stream")
        samples = np.asarray(samples, dtype=np.float32)
        if samples.ndim != 2 or samples.shape[0] != self._pending.shape[0]:
            raise ValueError(f"audio must be (channels={self._pending.shape[0]}, N), got {samples.shape}")
        self._pending = np.concatenate([self._pending, samples], axis=1)
        while self._pending.shape[1] >= AAC_FRAME:
            self._encode_audio(self._pending[:, :AAC_FRAME])
            self._pending = self._pending[:, AAC_FRAME:]

    def _encode_audio(self, chunk: np.ndarray) -> None:
        frame = av.AudioFrame.from_ndarray(
            np.ascontiguousarray(chunk), format="fltp", layout=self.audio.layout
        )
        frame.sample_rate = self.audio.rate
        frame.pts = self._audio_pts
        frame.time_base = Fraction(1, self.audio.rate)
        self._audio_pts += chunk.shape[1]
        for packet in self.audio.encode(frame):
            self.container.mux(packet)

    def close(self) -> Path:
        """Flush the encoders, finish the file and move it to its final name."""
        if self.audio is not None and self._pending.shape[1]:
            self._encode_audio(self._pending)
            self._pending = self._pending[:, :0]
        for stream in (self.video, self.audio):
            if stream is not None:
                for packet in stream.encode(None):
                    self.container.mux(packet)
        self.container.close()
        os.replace(self.tmp, self.path)
        return self.path

    def abort(self) -> None:
        """Drop the partial file."""
        # the container may be unusable after the failure being cleaned up from
        with contextlib.suppress(av.error.FFmpegError, ValueError):
            self.container.close()
        self.tmp.unlink(missing_ok=True)

    def __enter__(self) -> VideoWriter:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        if kind is None:
            self.close()
        else:
            self.abort()


def write_wav(path: str | Path, samples: np.ndarray, sample_rate: int) -> Path:
    """Mono float samples in [-1, 1] → a 16-bit PCM WAV, written atomically."""
    import wave

    path = Path(path)
    pcm = (np.clip(np.asarray(samples, dtype=np.float32), -1, 1) * 32767).round().astype("<i2")
    tmp = path.with_name(f".{path.stem}.partial{path.suffix}")
    try:
        with wave.open(str(tmp), "wb") as file:
            file.setnchannels(1)
            file.setsampwidth(2)
            file.setframerate(sample_rate)
            file.writeframes(pcm.tobytes())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path
