"""Streaming video + audio writing through PyAV (its wheel bundles FFmpeg; no system ffmpeg)."""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path
from types import TracebackType

import av
import numpy as np

from synclip.files import atomic_path, sibling

AAC_FRAME = 1024  # samples per AAC frame
# audio codecs the mp4 muxer takes as they are; anything else (PCM WAV …) is encoded to AAC
MP4_AUDIO = {"aac", "mp3", "alac", "opus", "flac", "ac3", "eac3"}
LAYOUTS = {1: "mono", 2: "stereo", 3: "2.1", 4: "quad", 5: "5.0", 6: "5.1", 8: "7.1"}
MP4_SUFFIXES = ("", ".mp4", ".m4v")


class VideoWriter:
    """H.264 mp4 writer fed frame by frame; use as a context manager.

    One writer for every mp4 synclip makes: H.264 frames fed one at a time, with audio either fed as
    samples (AAC) or taken from another file as it is (`audio_from`: packets copied when mp4 can hold
    the codec, else AAC at the original rate and channels), interleaved by time. Files are written
    atomically (`synclip.files.atomic_path`), so an error never leaves a partial file under the final
    name.

    Video frames are (H, W, 3) uint8 RGB: yuv420p (yuv444p for odd sizes) at `crf`, or with
    `lossless` the RGB planes themselves (libx264rgb at qp 0: unchanged pixels decode bit-equal).
    Audio is either fed with `write_audio`, float32 in [-1, 1] shaped (C, N) in any chunk sizes
    (`audio_rate` set), or the first audio stream of the file `audio_from`, cut at `audio_seconds`.
    """

    def __init__(
        self,
        path: str | Path,
        width: int,
        height: int,
        fps: Fraction | int,
        audio_rate: int | None = None,
        audio_channels: int = 1,
        *,
        audio_from: str | Path | None = None,
        audio_seconds: float | None = None,
        crf: int = 18,
        preset: str = "medium",
        threads: int = 0,
        faststart: bool = False,
        lossless: bool = False,
    ) -> None:
        if audio_rate is not None and audio_from is not None:
            raise ValueError(
                "audio comes from write_audio (audio_rate) or from a file (audio_from), not both"
            )
        self.path = Path(path)
        self.tmp = sibling(self.path, self.path.suffix or ".mp4")
        options = {"movflags": "+faststart"} if faststart else {}
        kind = "mp4" if self.path.suffix.lower() in MP4_SUFFIXES else None
        self.container = av.open(str(self.tmp), mode="w", format=kind, options=options)
        self.fps = Fraction(fps)
        if lossless:
            # libx264rgb codes the RGB planes themselves (no YUV conversion); at qp 0 it is lossless
            self.video = self.container.add_stream("libx264rgb", rate=self.fps)
            self.video.pix_fmt = "rgb24"
            self.video.options = {"qp": "0", "preset": preset}
        else:
            self.video = self.container.add_stream("libx264", rate=self.fps)
            self.video.pix_fmt = "yuv420p" if width % 2 == 0 and height % 2 == 0 else "yuv444p"
            self.video.options = {"crf": str(crf), "preset": preset, "threads": str(threads)}
        self.video.width, self.video.height = width, height
        self.frames = 0
        self.audio = None
        self._pending = np.zeros((audio_channels, 0), np.float32)
        self._audio_pts = 0
        self._source: PassThrough | None = None
        if audio_rate is not None:
            layout = {1: "mono", 2: "stereo"}[audio_channels]
            self.audio = self.container.add_stream("aac", rate=audio_rate, layout=layout)
            # AAC carries at most 6144 bits per channel per 1024-sample frame
            self.audio.bit_rate = min(128_000, 6 * audio_rate) * audio_channels
        elif audio_from is not None:
            if audio_seconds is None:
                raise ValueError("audio_from needs audio_seconds, the length to cut the audio at")
            self._source = PassThrough(self.container, Path(audio_from), audio_seconds)

    @property
    def audio_description(self) -> str:
        """How the audio got in: "copied <codec>", "encoded aac", or "none"."""
        if self._source is not None:
            return self._source.description
        return "encoded aac" if self.audio is not None else "none"

    def write_frame(self, rgb: np.ndarray) -> None:
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
        frame.pts = self.frames
        frame.time_base = 1 / self.fps
        for packet in self.video.encode(frame):
            self.container.mux(packet)
        self.frames += 1
        if self._source is not None:
            self._source.mux_until(float(self.frames / self.fps))

    def write_audio(self, samples: np.ndarray) -> None:
        if self.audio is None:
            raise ValueError("this writer has no audio stream fed by samples")
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
        for packet in self.video.encode(None):
            self.container.mux(packet)
        if self.audio is not None:
            for packet in self.audio.encode(None):
                self.container.mux(packet)
        if self._source is not None:
            self._source.mux_until(None)
        self.container.close()
        if self._source is not None:
            self._source.close()
        self.tmp.replace(self.path)
        return self.path

    def abort(self) -> None:
        """Drop the partial file."""
        # the containers may be unusable after the failure being cleaned up from
        with contextlib.suppress(av.error.FFmpegError, ValueError):
            self.container.close()
        if self._source is not None:
            self._source.close()
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


class PassThrough:
    """The first audio stream of a file, into an output container as it is (or as AAC), up to `seconds`."""

    def __init__(self, container: av.container.OutputContainer, path: Path, seconds: float) -> None:
        self.container = container
        self.seconds = seconds
        self.source = av.open(str(path))
        stream = self.source.streams.audio[0]
        self.in_stream = stream
        self.copy = stream.codec_context.name in MP4_AUDIO
        if self.copy:
            self.stream = container.add_stream_from_template(stream)
            self.description = f"copied {stream.codec_context.name}"
        else:
            channels = stream.codec_context.channels
            # WAV often declares "2 channels" without an order; AAC needs a named layout of that size
            layout = LAYOUTS.get(channels, stream.codec_context.layout.name)
            self.stream = container.add_stream("aac", rate=stream.codec_context.sample_rate, layout=layout)
            self.resampler = av.AudioResampler(
                format="fltp", layout=layout, rate=stream.codec_context.sample_rate, frame_size=1024
            )
            self.samples_out = 0
            self.description = "encoded aac"
        self.packets = self._packets()
        self.next_packet: tuple[float, av.Packet] | None = None
        self.done = False

    def _packets(self) -> Iterator[tuple[float, av.Packet]]:
        """(time in seconds, packet) of the output's audio, in order."""
        if self.copy:
            for packet in self.source.demux(self.in_stream):
                if packet.dts is None or packet.size == 0:
                    continue
                time = float(packet.pts * packet.time_base) if packet.pts is not None else 0.0
                if time >= self.seconds:
                    return
                packet.stream = self.stream
                yield time, packet
            return
        rate = self.in_stream.codec_context.sample_rate
        limit = int(round(self.seconds * rate))
        for frame in itertools.chain(self.source.decode(self.in_stream), [None]):
            for out in self.resampler.resample(frame):
                if self.samples_out >= limit:
                    break
                keep = min(out.samples, limit - self.samples_out)
                if keep < out.samples:
                    array = out.to_ndarray()[:, :keep]
                    out = av.AudioFrame.from_ndarray(
                        np.ascontiguousarray(array), format="fltp", layout=out.layout.name
                    )
                    out.sample_rate = rate
                out.pts = self.samples_out
                out.time_base = Fraction(1, rate)
                time = self.samples_out / rate
                self.samples_out += keep
                for packet in self.stream.encode(out):
                    yield time, packet
        for packet in self.stream.encode(None):
            yield self.samples_out / rate, packet

    def mux_until(self, seconds: float | None) -> None:
        """Mux the packets that start before `seconds` (all that are left with None)."""
        while not self.done:
            if self.next_packet is None:
                try:
                    self.next_packet = next(self.packets)
                except StopIteration:
                    self.done = True
                    return
            time, packet = self.next_packet
            if seconds is not None and time >= seconds:
                return
            self.container.mux(packet)
            self.next_packet = None

    def close(self) -> None:
        with contextlib.suppress(av.error.FFmpegError, ValueError):
            self.source.close()


def write_wav(path: str | Path, samples: np.ndarray, sample_rate: int) -> Path:
    """Mono float samples in [-1, 1] → a 16-bit PCM WAV, written atomically."""
    import wave

    path = Path(path)
    pcm = (np.clip(np.asarray(samples, dtype=np.float32), -1, 1) * 32767).round().astype("<i2")
    with atomic_path(path) as tmp, wave.open(str(tmp), "wb") as file:
        file.setnchannels(1)
        file.setsampwidth(2)
        file.setframerate(sample_rate)
        file.writeframes(pcm.tobytes())
    return path
