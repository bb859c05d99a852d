"""One lip-sync request, apart from any HTTP server: the service's limits, every input check (run before
any model work) and the lip-sync run itself, so they are testable on their own."""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable, Mapping
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
MAX_FACE_INDEX = 9  # the tracker follows at most ten faces
MAX_SEED = 2**63 - 1
MAX_FILENAME = 255  # characters; what most file systems allow for one name
TRUE, FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off", "")


class RequestError(UserError):
    """A request the service refuses; `status` is the HTTP status to answer with."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class ServiceLimits:
    max_upload_mb: float = 200.0  # per file
    max_seconds: float = 120.0  # of the output video (the audio's length, unless the request cuts it)
    max_sync_seconds: float = 20.0  # longer outputs go through a job (POST /jobs)
    max_steps: int = 50  # DDIM steps a request may ask for
    queue_size: int = 4  # jobs waiting behind the running one; beyond it 503
    keep_seconds: float = 3600.0  # how long a finished job's result stays downloadable

    @staticmethod
    def from_env(env: Mapping[str, str] | None = None) -> ServiceLimits:
        """SYNCLIP_MAX_UPLOAD_MB, SYNCLIP_MAX_SECONDS, SYNCLIP_MAX_SYNC_SECONDS, SYNCLIP_MAX_STEPS,
        SYNCLIP_QUEUE_SIZE and SYNCLIP_KEEP_SECONDS override the defaults."""
        env = dict(os.environ if env is None else env)
        names = {
            "max_upload_mb": float,
            "max_seconds": float,
            "max_sync_seconds": float,
            "max_steps": int,
            "queue_size": int,
            "keep_seconds": float,
        }
        values = {}
        for name, kind in names.items():
            key = f"SYNCLIP_{name.upper()}"
            if key in env:
                try:
                    values[name] = kind(env[key])
                except ValueError:
                    raise UserError(f"{key}={env[key]!r} is not a {kind.__name__}") from None
                if not (values[name] > 0 and math.isfinite(values[name])):
                    raise UserError(f"{key} must be a positive number, got {env[key]}")
        return ServiceLimits(**values)

    @property
    def max_body_bytes(self) -> int:
        """The most a request body may carry: two files at the limit and the form around them."""
        return int(2 * self.max_upload_mb * 2**20) + 2**20


def _integer(name: str, value: object, low: int, high: int) -> int:
    if isinstance(value, str):
        try:
            value = int(value.strip())
        except ValueError:
            raise RequestError(f"{name} must be an integer, got {value!r}") from None
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise RequestError(f"{name} must be an integer in [{low}, {high}], got {value!r}")
    return value


def _number(name: str, value: object) -> float:
    if isinstance(value, str):
        try:
            value = float(value.strip())
        except ValueError:
            raise RequestError(f"{name} must be a number, got {value!r}") from None
    if not isinstance(value, int | float) or isinstance(value, bool) or not math.isfinite(value):
        raise RequestError(f"{name} must be a finite number, got {value!r}")
    return float(value)


def _flag(name: str, value: object) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in TRUE + FALSE:
        return value.strip().lower() in TRUE
    raise RequestError(f"{name} must be true or false, got {value!r}")


def parse_options(
    fields: Mapping[str, object], limits: ServiceLimits, smoothing_frames: float
) -> LipSyncOptions:
    """A request's options (form strings or JSON values; absent or empty: the model's default), every
    one checked: a RequestError (400) names the first bad one with its value."""
    unknown = sorted(set(fields) - set(REQUEST_OPTIONS))
    if unknown:
        raise RequestError(f"unknown option {unknown[0]!r}; the options are {', '.join(REQUEST_OPTIONS)}")
    given = {name: value for name, value in fields.items() if value is not None and value != ""}
    steps = _integer("steps", given["steps"], 1, limits.max_steps) if "steps" in given else None
    guidance = _number("guidance", given["guidance"]) if "guidance" in given else None
    try:
        check_sampling(1 if steps is None else steps, 1.0 if guidance is None else guidance)
    except UserError as error:
        raise RequestError(str(error)) from None
    return LipSyncOptions(
        steps=steps,
        guidance=guidance,
        seed=_integer("seed", given["seed"], 0, MAX_SEED) if "seed" in given else None,
        face_index=_integer("face_index", given.get("face_index", 0), 0, MAX_FACE_INDEX),
        cut=_flag("cut", given.get("cut", False)),
        pad=_flag("pad", given.get("pad", False)),
        smoothing_frames=smoothing_frames,
    )


def check_filename(field: str, name: str | None) -> None:
    """An upload's file name may be absent; a present one must be a usable name."""
    if name is not None and len(name) > MAX_FILENAME:
        raise RequestError(
            f"{field}: the file name is {len(name)} characters long; the limit is {MAX_FILENAME}"
        )


def named(error: UserError, video: Path, audio: Path) -> str:
    """The error with the server's temporary upload paths replaced by the request's field names."""
    return str(error).replace(str(video), "video").replace(str(audio), "audio")


def check_request(
    video: Path, audio: Path, options: LipSyncOptions, limits: ServiceLimits, max_seconds: float | None = None
) -> float:
    """The output's length in seconds, after every check on the files that needs no model: a RequestError
    (413 for too large or too long, 400 otherwise). `max_seconds`: a tighter length limit (the
    synchronous endpoint's)."""
    for field, path in (("video", video), ("audio", audio)):
        megabytes = path.stat().st_size / 2**20
        if megabytes > limits.max_upload_mb:
            raise RequestError(
                f"{field}: {megabytes:.1f} MB is over the service's limit of {limits.max_upload_mb:g} MB", 413
            )
    try:
        info, _, audio_info = check_inputs(video, audio)
    except UserError as error:
        raise RequestError(named(error, video, audio)) from None
    # lipsync_file's length rule (loop, cut or pad), applied to the durations
    seconds = output_frames(info.duration, audio_info.duration, options.cut, options.pad)
    if seconds > limits.max_seconds:
        raise RequestError(
            f"the output would be {seconds:.1f} s long; the service's limit is {limits.max_seconds:g} s", 413
        )
    if max_seconds is not None and seconds > max_seconds:
        raise RequestError(
            f"the output would be {seconds:.1f} s long; this endpoint's limit is {max_seconds:g} s "
            "(submit it as a job: POST /jobs)",
            413,
        )
    return seconds


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
    on_progress: Callable[[int, int], None] | None = None,
) -> tuple[Path, LipSyncSummary]:
    """Check one request and lip-sync it into `workdir`/lipsync.mp4 (nothing is left there on failure).

    A video in which no frame could be lip-synced (no face, or not the `face_index`-th) is refused with
    422 rather than answered with the input unchanged. With `request_log`, a lip-synced request appends
    one JSON line there: its time, its inputs' drift features (`synclip drift` compares them with the
    training data), the options and the summary.
    """
    check_request(video, audio, options, limits)
    out = workdir / "lipsync.mp4"
    started = time.perf_counter()
    try:
        features = None
        if request_log is not None:
            features = input_features(video, audio, landmarker, request_log.sampled_frames)
        summary = lipsync_file(pipeline, video, audio, out, landmarker, options, on_progress)
    except UserError as error:  # a file ffmpeg or the face tracker rejects midway
        raise RequestError(named(error, video, audio)) from None
    if summary.frames_generated == 0:
        out.unlink()
        which = "no face" if options.face_index == 0 else f"no face number {options.face_index + 1}"
        raise RequestError(
            f"video: {which} was found in any of its {summary.frames} frames; nothing to lip-sync", 422
        )
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
