"""The file adapter of LipSyncPipeline: a video and a speech file in, a lip-synced video file out."""

from __future__ import annotations

import itertools
import logging
import math
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from fractions import Fraction
from pathlib import Path
from typing import Protocol

import numpy as np
import torch

from synclip.audio.latentsync import LatentSyncAudioTokens
from synclip.audio.tokens import AudioTokens
from synclip.constants import AUDIO_SAMPLE_RATE
from synclip.face.align import warp_face
from synclip.face.landmarks import FACE_OVAL
from synclip.face.latentsync import KEPT, LatentSyncAligner, kept_points
from synclip.face.paste import Placement, feather, paste
from synclip.face.track import FaceTracker
from synclip.images import to_uint8, to_unit
from synclip.inference.pipeline import LipSyncPipeline
from synclip.media.decode import iter_frames, read_audio
from synclip.media.io import VideoWriter
from synclip.media.memory import trimmed
from synclip.media.probe import MediaError, probe, require_video

log = logging.getLogger(__name__)

REVERSE_BLOCK = 32  # frames decoded at once when the ping-pong loop plays the video backwards


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


def ping_pong(index: int, frames: int, repeat_ends: bool = False) -> int:
    """Source frame of output frame `index` when a `frames`-long video plays forward, backward, forward …;
    with `repeat_ends` each end frame shows twice at the turn (LatentSync's loop: 0 … N−1, N−1 … 0, 0 …)."""
    if repeat_ends:
        phase = index % (2 * frames)
        return phase if phase < frames else 2 * frames - 1 - phase
    if frames == 1:
        return 0
    phase = index % (2 * frames - 2)
    return phase if phase < frames else 2 * frames - 2 - phase


class Faces(Protocol):
    """The chosen face on every source frame, and how a generated face goes in and out of a frame."""

    @property
    def found(self) -> np.ndarray:
        """(N,) bool: the face is on source frame i."""
        ...

    @property
    def several(self) -> int:
        """Frames with more faces than one."""
        ...

    def crop(self, frame: np.ndarray, source: int) -> torch.Tensor:
        """RGB frame (H, W, 3) uint8 of source frame `source` → aligned face (3, R, R) in [−1, 1]."""
        ...

    def paste(self, frame: np.ndarray, generated: torch.Tensor, source: int) -> np.ndarray:
        """The generated face (3, R, R) in [−1, 1] onto the frame → (H, W, 3) uint8."""
        ...


@dataclass
class SynclipFaces:
    """synclip's own: smoothed eye/nose similarity to its template, pasted inside the face's outline."""

    placement: Placement
    mask: torch.Tensor  # (1, R, R), 1 keep
    resolution: int

    @property
    def found(self) -> np.ndarray:
        return self.placement.found

    @property
    def several(self) -> int:
        return self.placement.several

    def crop(self, frame: np.ndarray, source: int) -> torch.Tensor:
        return to_unit(warp_face(frame, self.placement.matrices[source], self.resolution))

    def paste(self, frame: np.ndarray, generated: torch.Tensor, source: int) -> np.ndarray:
        weight = feather(self.mask, self.placement.outline(source))
        return paste(frame, to_uint8(generated), weight, self.placement.matrices[source])


@dataclass
class LatentSyncFaces:
    """LatentSync's: eyebrows and nose onto its 210×280 template, stretched to R×R, EMA-smoothed; the
    whole crop pasted back with an eroded, blurred border (`synclip.face.latentsync`)."""

    aligner: LatentSyncAligner
    matrices: np.ndarray  # (N, 2, 3) source → crop before the stretch, NaN without the face
    several: int

    @property
    def found(self) -> np.ndarray:
        return np.isfinite(self.matrices).all(axis=(1, 2))

    def crop(self, frame: np.ndarray, source: int) -> torch.Tensor:
        return to_unit(self.aligner.crop(frame, self.matrices[source]))

    def paste(self, frame: np.ndarray, generated: torch.Tensor, source: int) -> np.ndarray:
        return self.aligner.paste(frame, generated, self.matrices[source])


def track_face(
    video: Path, fps: Fraction, pipeline: LipSyncPipeline, landmarker: str | Path, options: LipSyncOptions
) -> Faces:
    """First decode: the chosen face on every frame → its alignments, for the pipeline's face front end."""
    latentsync = pipeline.config.face_frontend == "latentsync"
    keep = {"latentsync": KEPT} if latentsync else {"outline": FACE_OVAL}
    with FaceTracker(landmarker, fps, face_index=options.face_index, keep=keep) as tracker:
        for index, frame in enumerate(trimmed(iter_frames(video, fps=fps))):
            tracker.add(index, frame)
    track = tracker.result()
    if not len(track.counts):
        raise MediaError(f"{video}: the video stream has no frames")
    resolution = pipeline.config.resolution
    if latentsync:
        aligner = LatentSyncAligner(resolution)
        matrices = aligner.matrices(kept_points(track.points["latentsync"]))
        return LatentSyncFaces(aligner, matrices, track.several)
    return SynclipFaces(Placement.of(track, resolution, options.smoothing_frames), pipeline.mask, resolution)


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
    audio: AudioTokens | LatentSyncAudioTokens,
    fps: Fraction,
    faces: Faces,
    frames: int,
    options: LipSyncOptions,
    counts: dict,
) -> Iterator[np.ndarray]:
    """The output frames (H, W, 3) uint8 in order: generated where the face was found, else the input's."""
    total = len(faces.found)
    repeat_ends = pipeline.config.loop == "repeat_ends"
    order = (ping_pong(i, total, repeat_ends) for i in range(frames))
    decoded = zip(range(frames), source_frames(video, fps, order), strict=False)
    runs = itertools.groupby(decoded, key=lambda item: bool(faces.found[item[1][0]]))
    for has_face, run in runs:
        if not has_face:
            for _, (_, frame) in run:
                counts["without_face"] += 1
                yield frame
            continue
        waiting: deque[tuple[int, np.ndarray]] = deque()

        def items(run=run, waiting=waiting) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
            for out_index, (source, frame) in run:
                waiting.append((source, frame))
                yield faces.crop(frame, source), audio.frame(out_index)

        for generated in pipeline.stream(items(), options.steps, options.guidance, options.seed):
            source, frame = waiting.popleft()
            counts["generated"] += 1
            yield faces.paste(frame, generated, source)


def speech_tokens(
    pipeline: LipSyncPipeline, samples: np.ndarray, fps: Fraction, video_frames: int, options: LipSyncOptions
) -> tuple[AudioTokens | LatentSyncAudioTokens, int]:
    """The per-frame audio tokens of the speech, by the pipeline's audio front end, and the output's frames.

    synclip's: as many frames as the speech lasts (ceil), the video looped or cut to it. LatentSync's: its
    own count (`latentsync_frame_count`, two past the speech), the video looped or cut to that.
    """
    if pipeline.audio_encoder is None:
        raise ValueError("this pipeline has no audio encoder; pass audio tokens instead")
    if pipeline.config.audio_frontend == "latentsync":
        tokens = LatentSyncAudioTokens(pipeline.audio_encoder, samples, fps)
        return tokens, output_frames(video_frames, tokens.num_frames, options.cut, options.pad)
    audio_frames = int(math.ceil(Fraction(len(samples), AUDIO_SAMPLE_RATE) * fps))
    frames = output_frames(video_frames, audio_frames, options.cut, options.pad)
    # the speech, zero-padded, covers every output frame plus the token window after the last one
    needed = int(math.ceil(Fraction(frames + 1) / fps * AUDIO_SAMPLE_RATE))
    return AudioTokens(pipeline.audio_encoder, samples, fps, needed), frames


def lipsync_file(
    pipeline: LipSyncPipeline,
    video: str | Path,
    audio: str | Path,
    out: str | Path,
    landmarker: str | Path,
    options: LipSyncOptions = LipSyncOptions(),
    on_progress: Callable[[int, int], None] | None = None,
) -> LipSyncSummary:
    """Lip-sync `video` to the speech in `audio`, written to `out` atomically (nothing is left on failure).

    Two streaming decodes of the video: the first tracks the face on every frame (`FaceTracker`: the
    largest, or the `face_index`-th largest) and fits smoothed alignments as preprocessing does; the
    second aligns, generates and pastes back (`synclip.face.paste`). Frames without the face pass through
    unchanged, and each run of frames with a face is its own pipeline stream (so a long cut-away never
    buffers frames). The speech is Whisper-encoded one 30 s window at a time as the frames reach it
    (`AudioTokens`), so memory does not grow with the length but for the 16 kHz samples (64 kB a second)
    and 80 numbers per frame (the face track: alignment and outline). `lossless` writes RGB exactly
    (libx264rgb at qp 0) instead of yuv420p. The output keeps the input's frame rate (its average rate;
    VFR is resampled to it), display size and orientation (pixels are written turned for display), and
    carries the speech file's audio stream as it is (`VideoWriter`'s `audio_from`).
    """
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
    fps = Fraction(pipeline.config.fps) if pipeline.config.fps else stream.fps
    faces = track_face(video, fps, pipeline, landmarker, options)
    video_frames = len(faces.found)
    tokens, frames = speech_tokens(pipeline, samples, fps, video_frames, options)
    first = next(iter_frames(video, fps=fps))
    height, width = first.shape[:2]
    del first
    counts = {"generated": 0, "without_face": 0}
    writer = VideoWriter(
        out,
        width,
        height,
        fps,
        audio_from=audio,
        audio_seconds=float(Fraction(frames) / fps),
        crf=options.crf,
        preset=options.preset,
        lossless=options.lossless,
    )
    try:
        output = synced_frames(pipeline, video, tokens, fps, faces, frames, options, counts)
        for done, frame in enumerate(trimmed(output), 1):
            writer.write_frame(frame)
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
        frames_with_several_faces=faces.several,
        looped=frames > video_frames,
        audio=writer.audio_description,
    )
