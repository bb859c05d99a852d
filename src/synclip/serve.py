"""The HTTP service's request handling, apart from BentoML (serving/service.py wraps it): limits, input
checks and one lip-sync job, all runnable without a server, so they are testable on their own."""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

from synclip.config import check_sampling
from synclip.errors import UserError
from synclip.inference.lipsync import (
    LipSyncOptions,
    LipSyncSummary,
    check_inputs,
    lipsync_file,
    output_frames,
)
from synclip.inference.pipeline import LipSyncPipeline
from synclip.quality.drift import input_features

REQUEST_OPTIONS = ("steps", "guidance", "seed", "face_index", "cut", "pad")  # what a request may set


class RequestError(UserError):
    """A request the service refuses; `status` is the HTTP status to answer with."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class ServiceLimits:
    max_upload_mb: float = 200.0  # per file
    max_seconds: float = 120.0  # of the output video (the audio's length, unless the request cuts it)
    max_steps: int = 50  # DDIM steps a request may ask for

    @staticmethod
    def from_env(env: dict[str, str] | None = None) -> ServiceLimits:
        """SYNCLIP_MAX_UPLOAD_MB, SYNCLIP_MAX_SECONDS, SYNCLIP_MAX_STEPS override the defaults."""
        env = dict(os.environ if env is None else env)
        names = {"max_upload_mb": float, "max_seconds": float, "max_steps": int}
        values = {}
        for name, kind in names.items():
            key = f"SYNCLIP_{name.upper()}"
            if key in env:
                try:
                    values[name] = kind(env[key])
                except ValueError:
                    raise UserError(f"{key}={env[key]!r} is not a {kind.__name__}") from None
                if values[name] <= 0:
                    raise UserError(f"{key} must be positive, got {env[key]}")
        return ServiceLimits(**values)


def named(error: UserError, video: Path, audio: Path) -> str:
    """The error with the server's temporary upload paths replaced by the request's field names."""
    return str(error).replace(str(video), "video").replace(str(audio), "audio")


def check_request(video: Path, audio: Path, options: LipSyncOptions, limits: ServiceLimits) -> None:
    """RequestError (413 for too large or too long, 400 otherwise) before any model work starts."""
    for path in (video, audio):
        megabytes = path.stat().st_size / 2**20
        if megabytes > limits.max_upload_mb:
            raise RequestError(
                f"{'video' if path == video else 'audio'}: {megabytes:.1f} MB is over the service's limit of {limits.max_upload_mb:g} MB",
                413,
            )
    if options.steps is not None and not 1 <= options.steps <= limits.max_steps:
        raise RequestError(f"steps must be 1..{limits.max_steps}, got {options.steps}")
    try:
        # the pipeline's own rules; None is the model's default, which assemble checked
        check_sampling(
            1 if options.steps is None else options.steps,
            1.0 if options.guidance is None else options.guidance,
        )
        info, _, audio_info = check_inputs(video, audio)
    except UserError as error:
        raise RequestError(named(error, video, audio)) from None
    # lipsync_file's length rule (loop, cut or pad), applied to the durations
    seconds = output_frames(info.duration, audio_info.duration, options.cut, options.pad)
    if seconds > limits.max_seconds:
        raise RequestError(
            f"the output would be {seconds:.1f} s long; the service's limit is {limits.max_seconds:g} s", 413
        )


@dataclass(frozen=True)
class RequestLog:
    """Where the service appends each lip-synced request's record, and how its features are taken."""

    path: Path
    sampled_frames: int  # params.yaml drift.sampled_frames, as the drift reference was made


def lipsync_request(
    pipeline: LipSyncPipeline,
    landmarker: Path,
    video: Path,
    audio: Path,
    workdir: Path,
    options: LipSyncOptions,
    limits: ServiceLimits,
    request_log: RequestLog | None = None,
) -> tuple[Path, LipSyncSummary]:
    """Check one request and lip-sync it into `workdir`/lipsync.mp4 (nothing is left there on failure).

    With `request_log`, a lip-synced request appends one JSON line there: its time, its inputs' drift
    features (`synclip drift` compares them with the training data), the options and the summary.
    """
    check_request(video, audio, options, limits)
    out = workdir / "lipsync.mp4"
    started = time.perf_counter()
    try:
        features = None
        if request_log is not None:
            features = input_features(video, audio, landmarker, request_log.sampled_frames)
        summary = lipsync_file(pipeline, video, audio, out, landmarker, options)
    except UserError as error:  # a file ffmpeg or the face tracker rejects midway
        raise RequestError(named(error, video, audio)) from None
    if request_log is not None:
        record = {
            "time": datetime.now(UTC).isoformat(timespec="seconds"),
            "seconds": round(time.perf_counter() - started, 3),
            "features": {k: None if v != v else v for k, v in features.items()},  # NaN -> null
            "options": {k: v for k, v in asdict(options).items() if k in REQUEST_OPTIONS},
            "summary": {k: v for k, v in summary.as_dict().items() if k != "out"},
        }
        append_line(request_log.path, json.dumps(record))
    return out, summary


def append_line(path: Path, line: str) -> None:
    """Append one whole line (a single write on an O_APPEND file, so concurrent writers do not interleave)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(descriptor, (line + "\n").encode())
    finally:
        os.close(descriptor)
