"""The file adapter of LipSyncPipeline: a video and a speech file in, a lip-synced video file out.

Two streaming decodes of the video: the first finds the face on every frame (MediaPipe, the largest
or the `face_index`-th largest) and fits smoothed alignments as preprocessing does; the second
aligns, generates and pastes back. Only the generated region (mask = 0) inside the face's outline
(MediaPipe's face oval, widened by `OUTLINE_MARGIN` so a dropping jaw fits) is pasted, feathered,
so the background and neck that the mask's margin around the jaw also covers stay the input's, as
does every pixel outside the mask. Frames without the face pass through unchanged, and each run of
frames with a face is its own pipeline stream (so a long cut-away never buffers frames). The speech is
Whisper-encoded one 30 s window at a time as the frames reach it (`AudioTokens`), so memory does
not grow with the length but for the 16 kHz samples (64 kB a second) and 80 numbers per frame (the
face track: alignment and outline). `lossless` writes RGB exactly (libx264rgb at qp 0) instead of
yuv420p. The output keeps the input's frame rate (its average rate; VFR is resampled to it), display
size and orientation (pixels are written turned for display), and carries the speech file's audio
stream as it is (packets copied when mp4 can hold the codec, else AAC at the original rate and
channels).
"""

from __future__ import annotations

import bisect
import contextlib
import ctypes
import ctypes.util
import functools
import itertools
import logging
import math
import os
import sys
import tempfile
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np
import torch

from synclip.audio.whisper import SAMPLES_PER_TOKEN, num_whisper_tokens, whisper_log_mel, whisper_windows
from synclip.constants import (
    AUDIO_SAMPLE_RATE,
    WHISPER_CHUNK_MEL_FRAMES,
    WHISPER_CHUNK_SAMPLES,
    WHISPER_CHUNK_TOKENS,
    WHISPER_HOP_LENGTH,
    WHISPER_TOKENS_PER_SECOND,
)
from synclip.face.align import invert, stable_points, track_transforms, warp_face
from synclip.media.decode import iter_frames, read_audio
from synclip.media.probe import MediaError, probe, require_video
from synclip.pipeline import LipSyncPipeline

log = logging.getLogger(__name__)

# audio codecs the mp4 muxer takes as they are; anything else (PCM WAV …) is encoded to AAC
MP4_AUDIO = {"aac", "mp3", "alac", "opus", "flac", "ac3", "eac3"}
LAYOUTS = {1: "mono", 2: "stereo", 3: "2.1", 4: "quad", 5: "5.0", 6: "5.1", 8: "7.1"}
REVERSE_BLOCK = 32  # frames decoded at once when the ping-pong loop plays the video backwards
TOKENS_BEFORE, TOKENS_AFTER = 4, 6  # LatentSync's window [2i − 4, 2i + 6) around a frame's token
TRIM_EVERY = 25  # frames between hand-backs of the allocator's free memory (see `release_free_memory`)


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c"))
    except OSError:  # no C library to load by name: nothing to trim through
        return None
    return getattr(libc, "malloc_trim", None)  # glibc's; musl has none


def release_free_memory() -> None:
    """Hand the free pages of glibc's malloc arenas back to the OS (`malloc_trim`); elsewhere nothing.

    Frame-sized buffers are allocated and freed in MediaPipe's and FFmpeg's worker threads, from
    per-thread arenas that keep what is freed: without trimming, the resident set of the tracking
    pass grew by about a frame per frame (+670 MB over 1500 frames of 480×360; flat with one arena or
    a trim every 100 frames) though nothing is held, and by 390 MB more for 300 s than for 10 s.
    """
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


@dataclass(frozen=True)
class LipSyncOptions:
    steps: int | None = None  # None: the model's default
    guidance: float | None = None
    seed: int | None = None
    face_index: int = 0  # 0 = the largest face, 1 = the second largest …
    cut: bool = False  # audio longer than the video: cut it instead of looping the video ping-pong
    pad: bool = False  # video longer than the audio: pad the audio with silence instead of cutting the video
    smoothing_frames: float = 1.5  # Gaussian sigma of the landmark smoothing (as preprocess)
    crf: int = 18
    preset: str = "medium"
    lossless: bool = False  # RGB kept exactly (H.264 4:4:4 RGB, qp 0): unchanged pixels decode bit-equal

    def __post_init__(self) -> None:
        if self.face_index < 0:
            raise MediaError(f"face index must be >= 0, got {self.face_index}")


@dataclass(frozen=True)
class LipSyncSummary:
    out: str
    frames: int  # output frames
    fps: str
    width: int
    height: int
    video_frames: int  # frames in the input video
    audio_seconds: float
    frames_generated: int
    frames_without_face: int  # passed through unchanged
    frames_with_several_faces: int
    looped: bool
    audio: str  # "copied <codec>" or "encoded aac"

    def as_dict(self) -> dict:
        return asdict(self)


def output_frames(video_frames: int, audio_frames: int, cut: bool = False, pad: bool = False) -> int:
    """Frames of the output: the audio's length (video looped or cut), unless `cut` / `pad` say otherwise."""
    if audio_frames > video_frames:
        return video_frames if cut else audio_frames
    return video_frames if pad else audio_frames


def ping_pong(index: int, frames: int) -> int:
    """Source frame of output frame `index` when a `frames`-long video plays forward, backward, forward …"""
    if frames == 1:
        return 0
    phase = index % (2 * frames - 2)
    return phase if phase < frames else 2 * frames - 2 - phase


def frame_tokens(features: torch.Tensor, frames: range, fps: Fraction) -> torch.Tensor:
    """(T_w, L, D) Whisper states → (len(frames), 10·L, D) tokens of frames at `fps` (LatentSync's window).

    Frame i's own token is floor(50 · i / fps) (2i at 25 fps); indices are clamped at the ends.
    """
    centre = [math.floor(Fraction(WHISPER_TOKENS_PER_SECOND) * i / fps) for i in frames]
    index = torch.tensor([list(range(c - TOKENS_BEFORE, c + TOKENS_AFTER)) for c in centre], dtype=torch.long)
    windows = features[index.clamp(0, features.shape[0] - 1)]  # (F, 10, L, D)
    return windows.flatten(1, 2)  # time-major, layer-minor


class AudioTokens:
    """Per-frame audio tokens of a speech signal, Whisper-encoded one 30 s window at a time, on demand.

    The windows, stitching and dynamic-range floor (the loudest log-mel frame of the whole signal − 8)
    of `whisper_features` on the whole signal, so the tokens are `frame_tokens` of those features (bit
    for bit up to 30 s; to float rounding of the floor beyond). But a window is encoded when a frame
    first needs it and dropped once the frames have passed it, so at most two windows' states are held:
    the whole signal's (T_w, L, D) float32 states are 50 · L · D · 4 bytes a second (110 MiB for 300 s
    with tiny.en, L = 5, D = 384) and encoding them at once peaked 316 MiB above a 10 s signal's.
    """

    MARGIN = 2  # mel frames cut past each end of a window, so its frames get the whole signal's STFT context

    def __init__(self, pipeline: LipSyncPipeline, samples: np.ndarray, fps: Fraction, length: int) -> None:
        """`samples` (N,) 16 kHz mono; `length` ≥ N samples are covered, the part past N silent."""
        if pipeline.audio_encoder is None:
            raise ValueError("this pipeline has no audio encoder; pass audio tokens instead")
        self.encoder = pipeline.audio_encoder
        self.samples = samples
        self.fps = fps
        self.num_tokens = num_whisper_tokens(max(length, len(samples)))
        self.spans = whisper_windows(self.num_tokens)
        self.keep_from = [lo for _, lo, _ in self.spans]
        self.padded = (self.spans[-1][0] + WHISPER_CHUNK_TOKENS) * SAMPLES_PER_TOKEN
        self.held: dict[int, torch.Tensor] = {}  # window → its kept states (keep_to − keep_from, L, D)
        # Whisper's log-mel is max(log10 E, peak − 8), rescaled as (· + 4) / 4, over the signal it is given
        self.peak = max(float(self._mel(k).max()) for k in range(len(self.spans)))
        self.floor = self.peak - 2  # (peak − 8 + 4) / 4 in the rescaled units

    def _mel(self, window: int) -> torch.Tensor:
        """(n_mels, 3000) log-mel of a window, each frame computed from the same samples as the whole signal's."""
        start = self.spans[window][0] * SAMPLES_PER_TOKEN
        first = max(0, start - self.MARGIN * WHISPER_HOP_LENGTH)
        last = min(self.padded, start + WHISPER_CHUNK_SAMPLES + self.MARGIN * WHISPER_HOP_LENGTH)
        piece = self.samples[first:last]
        piece = np.pad(piece, (0, last - first - len(piece)))  # past the speech: Whisper's zero padding
        mel = whisper_log_mel(piece, self.encoder.num_mel_bins, next(self.encoder.parameters()).device)
        offset = (start - first) // WHISPER_HOP_LENGTH
        return mel[:, offset : offset + WHISPER_CHUNK_MEL_FRAMES]

    def window_mel(self, window: int) -> torch.Tensor:
        """(n_mels, 3000): the whole signal's log-mel over a window (its frames, the whole signal's floor)."""
        mel = self._mel(window)
        if float(mel.max()) < self.peak:  # its own floor is lower than the whole signal's
            mel = mel.clamp(min=self.floor)
        return mel

    def _states(self, window: int) -> torch.Tensor:
        if window not in self.held:
            parameter = next(self.encoder.parameters())
            mel = self.window_mel(window)[None].to(parameter.device, parameter.dtype)
            with torch.no_grad():
                states = self.encoder(mel)[0]  # (1500, L, D)
            start, lo, hi = self.spans[window]
            self.held[window] = states[lo - start : hi - start].to("cpu", torch.float32, copy=True)
        return self.held[window]

    def frame(self, index: int) -> torch.Tensor:
        """(S, D) = (10 · L, D) tokens of frame `index` (LatentSync's window, as `frame_tokens`)."""
        centre = math.floor(Fraction(WHISPER_TOKENS_PER_SECOND) * index / self.fps)
        last = self.num_tokens - 1
        tokens = [min(max(t, 0), last) for t in range(centre - TOKENS_BEFORE, centre + TOKENS_AFTER)]
        for window in [w for w in self.held if self.spans[w][2] <= tokens[0]]:
            del self.held[window]  # frames come in order: no later frame needs it
        rows = []
        for t in tokens:
            window = bisect.bisect_right(self.keep_from, t) - 1
            rows.append(self._states(window)[t - self.keep_from[window]])  # (L, D)
        return torch.stack(rows).flatten(0, 1)  # time-major, layer-minor


# MediaPipe face-mesh indices of the face oval (its FACEMESH_FACE_OVAL contour)
FACE_OVAL = (10, 338, 297, 332, 284, 251, 389, 356, 454, 323, 361, 288, 397, 365, 379, 378, 400, 377,
             152, 148, 176, 149, 150, 136, 172, 58, 132, 93, 234, 127, 162, 21, 54, 103, 67, 109)  # fmt: skip
OUTLINE_MARGIN = 1 / 12  # the outline is widened by this share of the crop (about 11 px at 128)


def feather(mask: torch.Tensor, outline: np.ndarray | None = None) -> np.ndarray:
    """(R, R) float32 alpha of the generated region: (1 − mask), within the widened convex hull of
    `outline` ((K, 2) crop pixels) when given, blurred so the paste has no hard edge."""
    region = (1 - mask[0].cpu().numpy()).astype(np.float32)
    size = region.shape[0]
    if outline is not None:
        face = np.zeros((size, size), np.uint8)
        cv2.fillConvexPoly(face, np.round(cv2.convexHull(outline.astype(np.float32))).astype(np.int32), 1)
        radius = max(round(size * OUTLINE_MARGIN), 1)
        face = cv2.dilate(
            face, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))
        )
        region *= face
    sigma = max(size / 48, 0.5)
    return np.clip(cv2.GaussianBlur(region, (0, 0), sigma) * region.max(), 0, 1)


def paste(frame: np.ndarray, crop: np.ndarray, alpha: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """Blend the generated crop (R, R, 3) uint8 into `frame` (H, W, 3) through the inverse of `matrix`.

    Only the bounding box of the warped alpha is touched; where alpha is 0 the frame is unchanged.
    """
    height, width = frame.shape[:2]
    back = invert(matrix)
    ys, xs = np.nonzero(alpha > 0)
    if not len(xs):
        return frame
    corners = np.array([[xs.min(), ys.min()], [xs.max() + 1, ys.min()], [xs.min(), ys.max() + 1], [xs.max() + 1, ys.max() + 1]], np.float64)  # fmt: skip
    mapped = corners @ back[:, :2].T + back[:, 2]
    x0, y0 = np.floor(mapped.min(axis=0)).astype(int) - 1
    x1, y1 = np.ceil(mapped.max(axis=0)).astype(int) + 2
    x0, y0, x1, y1 = max(x0, 0), max(y0, 0), min(x1, width), min(y1, height)
    if x1 <= x0 or y1 <= y0:
        return frame
    local = back.copy()
    local[:, 2] -= (x0, y0)
    size = (x1 - x0, y1 - y0)
    face = cv2.warpAffine(crop, local, size, flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    weight = cv2.warpAffine(alpha, local, size, flags=cv2.INTER_LINEAR, borderValue=0)[..., None]
    out = frame.copy()
    roi = out[y0:y1, x0:x1].astype(np.float32)
    out[y0:y1, x0:x1] = np.round(weight * face + (1 - weight) * roi).astype(np.uint8)
    return out


@dataclass
class FaceTrack:
    matrices: np.ndarray  # (N, 2, 3) source → crop, per source frame
    found: np.ndarray  # (N,) bool: the chosen face is on the frame
    several: int  # frames with more faces than one
    # (N, K, 2) FACE_OVAL points in source pixels; None: paste the whole mask region
    outlines: np.ndarray | None = None

    def outline(self, source: int) -> np.ndarray | None:
        """The face oval of source frame `source` in crop pixels (None without outlines)."""
        if self.outlines is None:
            return None
        matrix = self.matrices[source]
        return self.outlines[source] @ matrix[:, :2].T + matrix[:, 2]


def track_face(
    video: Path, fps: Fraction, resolution: int, landmarker: str | Path, options: LipSyncOptions
) -> FaceTrack:
    """First decode: the chosen face's stable points per frame → smoothed alignments."""
    from synclip.face.landmarks import FaceLandmarker

    points, outlines, several = [], [], 0
    with FaceLandmarker(landmarker, max_faces=max(2, options.face_index + 1), fps=float(fps)) as detector:
        for index, frame in enumerate(iter_frames(video, fps=fps)):
            if index % TRIM_EVERY == 0:
                release_free_memory()
            faces = detector.detect(frame, index)
            several += len(faces) > 1
            face = faces[options.face_index] if len(faces) > options.face_index else None
            points.append(stable_points(face) if face is not None else np.full((4, 2), np.nan))
            outlines.append(
                face.points[list(FACE_OVAL)] if face is not None else np.full((len(FACE_OVAL), 2), np.nan)
            )
    if not points:
        raise MediaError(f"{video}: the video stream has no frames")
    stable = np.stack(points)
    found = ~np.isnan(stable).any(axis=(1, 2))
    if found.any():
        matrices = track_transforms(stable, resolution, options.smoothing_frames)
    else:
        matrices = np.full((len(stable), 2, 3), np.nan)
    return FaceTrack(matrices, found, several, np.stack(outlines).astype(np.float32))


def source_frames(video: Path, fps: Fraction, order: Iterator[int]) -> Iterator[tuple[int, np.ndarray]]:
    """(source index, frame) for each index of `order`: forward runs decode once, backward runs in blocks."""
    indices = list(order)  # ints only: small next to any frame
    start = 0
    while start < len(indices):
        step = 1 if start + 1 >= len(indices) or indices[start + 1] >= indices[start] else -1
        end = start + 1
        while end < len(indices) and indices[end] - indices[end - 1] == step:
            end += 1
        run = indices[start:end]
        if step == 1:
            first = run[0]
            decoded = iter_frames(
                video, fps=fps, start=Fraction(first) / fps, end=Fraction(run[-1] + 1) / fps
            )
            for index, frame in zip(run, decoded, strict=False):
                yield index, frame
        else:
            for hi in range(run[0], run[-1] - 1, -REVERSE_BLOCK):
                lo = max(run[-1], hi - REVERSE_BLOCK + 1)
                block = list(
                    iter_frames(video, fps=fps, start=Fraction(lo) / fps, end=Fraction(hi + 1) / fps)
                )
                for index in range(hi, lo - 1, -1):
                    yield index, block[index - lo]
        start = end


class _Output:
    """The output file: H.264 video (lossy YUV, or lossless RGB) + the speech file's audio, interleaved,
    written to a temp name."""

    def __init__(
        self,
        out: Path,
        audio_path: Path,
        width: int,
        height: int,
        fps: Fraction,
        seconds: float,
        options: LipSyncOptions,
    ) -> None:
        self.out = out
        handle, tmp = tempfile.mkstemp(dir=out.parent, prefix=f".{out.stem}.", suffix=out.suffix or ".mp4")
        os.close(handle)
        self.tmp = Path(tmp)
        self.container = av.open(
            str(self.tmp), mode="w", format="mp4" if out.suffix.lower() in ("", ".mp4", ".m4v") else None
        )
        if options.lossless:
            # libx264rgb codes the RGB planes themselves (no YUV conversion); at qp 0 it is lossless
            self.video = self.container.add_stream("libx264rgb", rate=fps)
            self.video.pix_fmt = "rgb24"
            self.video.options = {"qp": "0", "preset": options.preset}
        else:
            self.video = self.container.add_stream("libx264", rate=fps)
            self.video.pix_fmt = "yuv420p" if width % 2 == 0 and height % 2 == 0 else "yuv444p"
            self.video.options = {"crf": str(options.crf), "preset": options.preset}
        self.video.width, self.video.height = width, height
        self.fps = fps
        self.frames = 0
        self.seconds = seconds
        self.source = av.open(str(audio_path))
        stream = self.source.streams.audio[0]
        self.copy = stream.codec_context.name in MP4_AUDIO
        if self.copy:
            self.audio = self.container.add_stream_from_template(stream)
            self.description = f"copied {stream.codec_context.name}"
        else:
            channels = stream.codec_context.channels
            # WAV often declares "2 channels" without an order; AAC needs a named layout of that size
            layout = LAYOUTS.get(channels, stream.codec_context.layout.name)
            self.audio = self.container.add_stream(
                "aac", rate=stream.codec_context.sample_rate, layout=layout
            )
            self.resampler = av.AudioResampler(
                format="fltp", layout=layout, rate=stream.codec_context.sample_rate, frame_size=1024
            )
            self.samples_out = 0
            self.description = "encoded aac"
        self.in_stream = stream
        self.packets = self._audio_packets()
        self.next_packet: av.Packet | None = None
        self.audio_done = False

    def _audio_packets(self) -> Iterator[tuple[float, av.Packet]]:
        if self.copy:
            for packet in self.source.demux(self.in_stream):
                if packet.dts is None or packet.size == 0:
                    continue
                time = float(packet.pts * packet.time_base) if packet.pts is not None else 0.0
                if time >= self.seconds:
                    return
                packet.stream = self.audio
                yield time, packet
            return
        rate = self.in_stream.codec_context.sample_rate
        limit = int(round(self.seconds * rate))
        frames = itertools.chain(self.source.decode(self.in_stream), [None])
        for frame in frames:
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
                for packet in self.audio.encode(out):
                    yield time, packet
        for packet in self.audio.encode(None):
            yield self.samples_out / rate, packet

    def _mux_audio_until(self, seconds: float | None) -> None:
        while not self.audio_done:
            if self.next_packet is None:
                try:
                    self.next_packet = next(self.packets)
                except StopIteration:
                    self.audio_done = True
                    return
            time, packet = self.next_packet
            if seconds is not None and time >= seconds:
                return
            self.container.mux(packet)
            self.next_packet = None

    def write(self, rgb: np.ndarray) -> None:
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
        frame.pts = self.frames
        frame.time_base = 1 / self.fps
        for packet in self.video.encode(frame):
            self.container.mux(packet)
        self.frames += 1
        self._mux_audio_until(float(self.frames / self.fps))

    def close(self) -> None:
        for packet in self.video.encode(None):
            self.container.mux(packet)
        self._mux_audio_until(None)
        self.container.close()
        self.source.close()
        os.replace(self.tmp, self.out)

    def abort(self) -> None:
        with contextlib.suppress(av.error.FFmpegError, ValueError):
            self.container.close()
        with contextlib.suppress(av.error.FFmpegError, ValueError):
            self.source.close()
        self.tmp.unlink(missing_ok=True)


def to_tensor(crop: np.ndarray) -> torch.Tensor:
    """(R, R, 3) uint8 → (3, R, R) float in [−1, 1]."""
    return torch.from_numpy(crop).permute(2, 0, 1).float() / 127.5 - 1


def to_image(face: torch.Tensor) -> np.ndarray:
    """(3, R, R) in [−1, 1] → (R, R, 3) uint8."""
    return ((face.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()


def check_inputs(video: Path, audio: Path) -> tuple:
    """Probe both files; MediaError (a UserError) naming the file and what is wrong."""
    info = probe(video)
    stream = require_video(info)
    audio_info = probe(audio)
    if audio_info.audio is None:
        raise MediaError(f"{audio}: no audio stream; lip sync needs speech")
    return info, stream, audio_info


def synced_frames(
    pipeline: LipSyncPipeline,
    video: Path,
    samples: np.ndarray,
    fps: Fraction,
    track: FaceTrack,
    frames: int,
    options: LipSyncOptions,
    counts: dict,
) -> Iterator[np.ndarray]:
    """The output frames (H, W, 3) uint8 in order: generated where the face was found, else the input's."""
    resolution = pipeline.config.resolution
    total = len(track.found)
    # the speech, zero-padded, covers every output frame plus the token window after the last one
    needed = int(math.ceil(Fraction(frames + 1) / fps * AUDIO_SAMPLE_RATE))
    audio = AudioTokens(pipeline, samples, fps, needed)
    alpha = feather(pipeline.mask) if track.outlines is None else None
    order = (ping_pong(i, total) for i in range(frames))
    decoded = zip(range(frames), source_frames(video, fps, order), strict=False)
    runs = itertools.groupby(decoded, key=lambda item: bool(track.found[item[1][0]]))
    for has_face, run in runs:
        if not has_face:
            for _, (_, frame) in run:
                counts["without_face"] += 1
                yield frame
            continue
        waiting: deque[tuple[int, np.ndarray, np.ndarray]] = deque()

        def items(run=run, waiting=waiting) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
            for out_index, (source, frame) in run:
                matrix = track.matrices[source]
                waiting.append((source, frame, matrix))
                crop = to_tensor(warp_face(frame, matrix, resolution))
                yield crop, audio.frame(out_index)

        for generated in pipeline.stream(items(), options.steps, options.guidance, options.seed):
            source, frame, matrix = waiting.popleft()
            counts["generated"] += 1
            weight = alpha if alpha is not None else feather(pipeline.mask, track.outline(source))
            yield paste(frame, to_image(generated), weight, matrix)


def lipsync_file(
    pipeline: LipSyncPipeline,
    video: str | Path,
    audio: str | Path,
    out: str | Path,
    landmarker: str | Path,
    options: LipSyncOptions = LipSyncOptions(),
    on_progress: Callable[[int, int], None] | None = None,
) -> LipSyncSummary:
    """Lip-sync `video` to the speech in `audio`, written to `out` atomically (nothing is left on failure)."""
    video, audio, out = Path(video), Path(audio), Path(out)
    _, stream, _audio_info = check_inputs(video, audio)
    if out.resolve() in (video.resolve(), audio.resolve()):
        raise MediaError(f"{out}: the output would overwrite an input")
    if not out.parent.is_dir():
        raise MediaError(f"{out.parent}: the output folder does not exist")
    samples = read_audio(audio)
    if not len(samples):
        raise MediaError(f"{audio}: the audio stream holds no samples")
    if not np.abs(samples).max() > 0:
        log.warning("%s: the audio is silent; mouths will close", audio)
    fps = stream.fps
    track = track_face(video, fps, pipeline.config.resolution, landmarker, options)
    video_frames = len(track.found)
    audio_frames = int(math.ceil(Fraction(len(samples), AUDIO_SAMPLE_RATE) * fps))
    frames = output_frames(video_frames, audio_frames, options.cut, options.pad)
    first = next(iter_frames(video, fps=fps))
    height, width = first.shape[:2]
    del first
    counts = {"generated": 0, "without_face": 0}
    writer = _Output(out, audio, width, height, fps, float(Fraction(frames) / fps), options)
    try:
        for done, frame in enumerate(
            synced_frames(pipeline, video, samples, fps, track, frames, options, counts), 1
        ):
            writer.write(frame)
            if done % TRIM_EVERY == 0:
                release_free_memory()
            if on_progress is not None:
                on_progress(done, frames)
        if writer.frames != frames:
            raise MediaError(
                f"{video}: decoded {writer.frames} of {frames} frames; the file changed or is damaged"
            )
        writer.close()
    except BaseException:
        writer.abort()
        raise
    return LipSyncSummary(
        out=str(out),
        frames=frames,
        fps=str(fps),
        width=width,
        height=height,
        video_frames=video_frames,
        audio_seconds=round(len(samples) / AUDIO_SAMPLE_RATE, 3),
        frames_generated=counts["generated"],
        frames_without_face=counts["without_face"],
        frames_with_several_faces=track.several,
        looped=frames > video_frames,
        audio=writer.description,
    )
