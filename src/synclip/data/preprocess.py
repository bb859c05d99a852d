"""Raw talking-head videos -> aligned 25 fps face clips, a manifest and the rejects with reasons."""

from __future__ import annotations

import functools
import hashlib
import itertools
import json
import logging
import multiprocessing
import os
import socket
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import cv2
import numpy as np
import pandas as pd

from synclip.config import Params, PreprocessParams, to_dict
from synclip.constants import AUDIO_SAMPLE_RATE, VIDEO_FPS
from synclip.data.cluster import dask_address, map_on_dask
from synclip.errors import UserError
from synclip.face.align import apply, track_transforms, warp_face
from synclip.face.landmarks import LIPS, MOUTH_LEFT, MOUTH_RIGHT, FaceLandmarker, find_small_faces
from synclip.face.track import FaceTrack, FaceTracker
from synclip.files import atomic_path, write_json
from synclip.log import progress
from synclip.media.decode import iter_frames, read_audio
from synclip.media.io import VideoWriter
from synclip.media.memory import reproducible_encoding
from synclip.media.probe import MediaError, MediaInfo, probe, require_video
from synclip.pretrained.store import require, sha256_file

log = logging.getLogger(__name__)

MANIFEST = "manifest.parquet"
REJECTS = "rejects.csv"
CLIPS = "clips"
WORK = ".work"
SIDECAR_SCHEMA = "synthtalk-gt/1"
SHOT_DETECT_WIDTH = 256
# A source whose decoded 25 fps frames fit in this many bytes is decoded once: the detection pass
# keeps its frames for the alignment pass. Longer sources are decoded again per segment.
FRAME_CACHE_BYTES = 1 << 30
NOT_MEDIA = {".json", ".txt", ".md", ".csv", ".dvc", ".yaml", ".yml", ".parquet", ".npz", ".png", ".jpg"}
REASONS = {
    "unreadable": "not a readable media file",
    "no_video": "no video stream",
    "no_audio": "no audio stream",
    "truncated": "the file ends before its declared length",
    "silent_audio": "the audio is silent",
    "too_short": "shot shorter than the minimum segment",
    "no_face": "too many frames without a face",
    "face_too_small": "the face is smaller than the minimum size",
    "several_faces": "more than one face",
    "low_quality": "image quality below the threshold",
}


@dataclass(frozen=True)
class Segment:
    """Frames [first, last) of a source on the 25 fps grid."""

    index: int
    first: int
    last: int

    @property
    def start(self) -> float:
        return self.first / VIDEO_FPS

    @property
    def end(self) -> float:
        return self.last / VIDEO_FPS


# --- planning ----------------------------------------------------------------------------------


def list_sources(raw_dir: Path) -> list[Path]:
    """Every file under `raw_dir` that could be a video (sidecars, manifests and hidden files excluded)."""
    return sorted(
        p
        for p in raw_dir.rglob("*")
        if p.is_file()
        and not any(part.startswith(".") for part in p.relative_to(raw_dir).parts)
        and p.suffix.lower() not in NOT_MEDIA
    )


def segments_of(
    cuts: list[int], frames: int, min_seconds: float, max_seconds: float
) -> tuple[list[Segment], list[Segment]]:
    """(kept, too short): the shots between `cuts` (25 fps frame indices), cut into equal segments."""
    kept, short = [], []
    index = 0
    bounds = [0, *sorted(c for c in cuts if 0 < c < frames), frames]
    for first, last in itertools.pairwise(bounds):
        length = last - first
        if length < min_seconds * VIDEO_FPS:
            short.append(Segment(index, first, last))
            index += 1
            continue
        pieces = int(np.ceil(length / (max_seconds * VIDEO_FPS)))
        edges = np.linspace(first, last, pieces + 1).round().astype(int)
        for a, b in itertools.pairwise(edges):
            kept.append(Segment(index, int(a), int(b)))
            index += 1
    return kept, short


def shot_cuts(index: int, frame: np.ndarray, detector) -> list[int]:
    """Feed frame `index` (RGB) to a PySceneDetect ContentDetector; returns the frame indices it cuts at."""
    from scenedetect.common import FrameTimecode

    # PySceneDetect's own SceneManager scores frames downscaled to about 256 px wide; so do we
    factor = min(1.0, SHOT_DETECT_WIDTH / frame.shape[1])
    small = (
        cv2.resize(frame, None, fx=factor, fy=factor, interpolation=cv2.INTER_AREA) if factor < 1 else frame
    )
    cuts = detector.process_frame(
        FrameTimecode(index, fps=Fraction(VIDEO_FPS)), cv2.cvtColor(small, cv2.COLOR_RGB2BGR)
    )
    return [cut.frame_num for cut in cuts]


def ground_truth(path: Path) -> dict | None:
    """The SynthTalk sidecar of a source, when there is one."""
    sidecar = path.with_suffix(".json")
    if not sidecar.is_file():
        return None
    try:
        data = json.loads(sidecar.read_text())
    except json.JSONDecodeError:
        return None
    return data if isinstance(data, dict) and data.get("schema") == SIDECAR_SCHEMA else None


def split_of(source_key: str, val_fraction: float, test_fraction: float) -> str:
    """A stable split for a source without ground truth: every segment of a source lands together."""
    bucket = int(hashlib.sha256(source_key.encode()).hexdigest()[:8], 16) / 16**8
    if bucket < test_fraction:
        return "test"
    if bucket < test_fraction + val_fraction:
        return "val"
    return "train"


# --- one source --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Job:
    path: str  # absolute: what every worker opens
    key: str  # the source's path relative to the raw folder
    out_dir: str
    params: PreprocessParams
    model_path: str
    shown: str = ""  # the path as the caller named it, for messages (outputs must not depend on the checkout)


def _reject(job: Job, reason: str, detail: str, segment: Segment | None = None) -> dict:
    return {
        "source": job.key,
        "segment": -1 if segment is None else segment.index,
        "start": np.nan if segment is None else segment.start,
        "end": np.nan if segment is None else segment.end,
        "reason": reason,
        "detail": detail.replace(job.path, job.shown) if job.shown else detail,
    }


@dataclass
class Scan:
    """What the detection pass saw on every 25 fps frame of a source."""

    faces: FaceTrack  # the only face of each frame (NaN where there are none or several), with its lips
    cuts: list[int]  # shot cuts (first frame of each new shot)
    frames: list[np.ndarray] | None = None  # the decoded frames, when they fit FRAME_CACHE_BYTES


def _fits_in_memory(info: MediaInfo) -> bool:
    width, height = info.video.display_size
    return info.duration * VIDEO_FPS * width * height * 3 <= FRAME_CACHE_BYTES


def detect_pass(path: Path, params: PreprocessParams, model_path: str, keep_frames: bool = False) -> Scan:
    """One decode of the whole source: shot cuts (PySceneDetect) and the face track (MediaPipe) per frame."""
    from scenedetect import ContentDetector

    detector = ContentDetector(threshold=params.shot_threshold)
    cuts: list[int] = []
    kept: list[np.ndarray] | None = [] if keep_frames else None
    with FaceTracker(model_path, VIDEO_FPS, only_single=True, keep={"lips": LIPS}) as tracker:
        for index, frame in enumerate(iter_frames(path)):
            if kept is not None:
                kept.append(frame)
            cuts += shot_cuts(index, frame, detector)
            tracker.add(index, frame)
    return Scan(tracker.result(), cuts, kept)


def process_source(job: Job) -> tuple[list[dict], list[dict]]:
    """Manifest rows and reject rows for one source file.

    Probe, check the audio, find shots (PySceneDetect), cut them into segments, then per segment
    detect faces and landmarks on every 25 fps frame, filter (exactly one face, face size, image
    quality, silence), align to the face template with smoothed similarity transforms and write the
    aligned clip with its 16 kHz mono audio. A bad file or segment becomes a reject row.
    """
    path = Path(job.path)
    params = job.params
    try:
        info = probe(path)
        require_video(info)
    except MediaError as error:
        reason = "no_video" if "no video stream" in str(error) else "unreadable"
        return [], [_reject(job, reason, str(error))]
    if info.audio is None:
        return [], [_reject(job, "no_audio", f"{job.key}: no audio stream")]
    try:
        audio = read_audio(path)
        peak = _dbfs(np.abs(audio).max(initial=0.0))
        if peak < params.min_audio_dbfs:
            return [], [
                _reject(job, "silent_audio", f"audio peak {peak:.1f} dBFS < {params.min_audio_dbfs} dBFS")
            ]
        track = detect_pass(path, params, job.model_path, keep_frames=_fits_in_memory(info))
    except MediaError as error:
        return [], [_reject(job, "truncated" if "truncated" in str(error) else "unreadable", str(error))]

    gt = ground_truth(path)
    segments, short = segments_of(
        track.cuts, len(track.faces.counts), params.min_segment_seconds, params.max_segment_seconds
    )
    rows: list[dict] = []
    rejects = [_short_reject(job, s, track) for s in short]
    for segment in segments:
        try:
            row, reject = _process_segment(job, segment, audio, track, gt)
        except MediaError as error:  # a file that breaks while writing is dropped whole
            return [], [_reject(job, "truncated" if "truncated" in str(error) else "unreadable", str(error))]
        if reject is not None:
            rejects.append(reject)
        else:
            rows.append(row)
    return rows, rejects


def _short_reject(job: Job, segment: Segment, track: Scan) -> dict:
    """A shot too short to use; when it also lacks a single face, that is the more telling reason."""
    counts = track.faces.counts[segment.first : segment.last]
    if np.mean(counts == 1) < job.params.min_one_face_fraction:
        none, many = float(np.mean(counts == 0)), float(np.mean(counts >= 2))
        if many >= none:
            return _reject(
                job, "several_faces", f"2+ faces in {many:.0%} of a {len(counts)}-frame shot", segment
            )
        return _reject(job, "no_face", f"no face in {none:.0%} of a {len(counts)}-frame shot", segment)
    return _reject(job, "too_short", f"{segment.end - segment.start:.2f} s shot", segment)


def _process_segment(
    job: Job, segment: Segment, audio: np.ndarray, track: Scan, gt: dict | None
) -> tuple[dict | None, dict | None]:
    params = job.params
    path = Path(job.path)
    resolution = params.resolution
    part = slice(segment.first, segment.last)
    faces = track.faces
    counts = faces.counts[part]
    frames = len(counts)
    one = float(np.mean(counts == 1))
    if one < params.min_one_face_fraction:
        none, many = float(np.mean(counts == 0)), float(np.mean(counts >= 2))
        if many >= none:
            return None, _reject(job, "several_faces", f"2+ faces in {many:.0%} of {frames} frames", segment)
        faceless = [i for i, count in enumerate(counts) if count == 0]
        small = _small_face_width(path, segment, job.model_path, faceless[:: max(1, len(faceless) // 3)][:3])
        if small is not None and small < params.min_face_px:
            detail = f"a {small:.0f} px face, found only by zooming (minimum {params.min_face_px:.0f} px)"
            return None, _reject(job, "face_too_small", detail, segment)
        return None, _reject(job, "no_face", f"no face in {none:.0%} of {frames} frames", segment)
    widths = faces.widths[part]
    face_width = float(np.nanmedian(widths))
    if face_width < params.min_face_px:
        detail = f"median face width {face_width:.0f} px < {params.min_face_px:.0f} px"
        return None, _reject(job, "face_too_small", detail, segment)

    per_frame = AUDIO_SAMPLE_RATE // VIDEO_FPS
    clip_audio = audio[segment.first * per_frame : segment.last * per_frame]
    clip_audio = np.pad(clip_audio, (0, frames * per_frame - len(clip_audio)))
    segment_peak = _dbfs(np.abs(clip_audio).max(initial=0.0))
    if segment_peak < params.min_audio_dbfs:
        return None, _reject(job, "silent_audio", f"segment audio peak {segment_peak:.1f} dBFS", segment)

    matrices = track_transforms(faces.stable[part], resolution, params.smoothing_frames)
    clip_id = _clip_id(job.key, segment.index)
    clips_dir = Path(job.out_dir) / CLIPS
    samples = []
    with VideoWriter(
        clips_dir / f"{clip_id}.mp4",
        resolution,
        resolution,
        VIDEO_FPS,
        audio_rate=AUDIO_SAMPLE_RATE,
        crf=params.crf,
        threads=1,
    ) as writer:
        if track.frames is not None:
            source = iter(track.frames[part])
        else:
            source = iter_frames(path, start=segment.start, end=segment.end)
        for index, frame in enumerate(source):
            crop = warp_face(frame, matrices[index], resolution)
            writer.write_frame(crop)
            writer.write_audio(clip_audio[None, index * per_frame : (index + 1) * per_frame])
            if index in (0, frames // 2, frames - 1):
                samples.append(crop)
        if writer.frames != frames:
            raise MediaError(
                f"{path}: truncated: {writer.frames} of {frames} frames decoded for segment {segment.index}"
            )
    quality = _piqe(samples)
    if quality > params.max_piqe:
        (clips_dir / f"{clip_id}.mp4").unlink()
        return None, _reject(job, "low_quality", f"PIQE {quality:.1f} > {params.max_piqe}", segment)

    lips = np.stack([apply(m, p) for m, p in zip(matrices, faces.points["lips"][part], strict=True)])
    aligned_stable = np.stack([apply(m, p) for m, p in zip(matrices, faces.stable[part], strict=True)])
    np.savez_compressed(
        clips_dir / f"{clip_id}.npz",
        matrices=matrices.astype(np.float32),
        lips=lips.astype(np.float16),
        face_found=counts == 1,
    )
    identity, split, offset = _identity(job, segment, gt)
    corners = lips[:, [LIPS.index(MOUTH_LEFT), LIPS.index(MOUTH_RIGHT)]]
    return {
        "clip": clip_id,
        "source": job.key,
        "segment": segment.index,
        "start": segment.start,
        "end": segment.end,
        "fps": VIDEO_FPS,
        "frames": frames,
        "resolution": resolution,
        "face_width_px": face_width,
        "face_width_min_px": float(np.nanmin(widths)),
        "one_face_fraction": one,
        "eye_jitter_px": _jitter(aligned_stable[:, :2]),
        "mouth_jitter_px": _jitter(corners),
        "quality_piqe": quality,
        "audio_peak_dbfs": segment_peak,
        "identity": identity,
        "split": split,
        "gt_av_offset": offset,
    }, None


def align_video(path: str | Path, out: str | Path, params: PreprocessParams, model_path: str | Path) -> dict:
    """Write the aligned face crop of a whole video (25 fps, 16 kHz mono audio) for inspection.

    Frames without a face reuse the nearest face's alignment. Returns a small summary.
    """
    path, out = Path(path), Path(out)
    info = probe(path)
    require_video(info)
    track = detect_pass(path, params, str(model_path))
    faces = track.faces
    if not (faces.counts == 1).any():
        raise MediaError(f"{path}: no frame shows exactly one face; nothing to align to")
    matrices = track_transforms(faces.stable, params.resolution, params.smoothing_frames)
    audio = read_audio(path) if info.audio else None
    per_frame = AUDIO_SAMPLE_RATE // VIDEO_FPS
    with VideoWriter(
        out,
        params.resolution,
        params.resolution,
        VIDEO_FPS,
        crf=params.crf,
        audio_rate=AUDIO_SAMPLE_RATE if audio is not None else None,
    ) as writer:
        for index, frame in enumerate(iter_frames(path)):
            writer.write_frame(warp_face(frame, matrices[index], params.resolution))
            if audio is not None:
                chunk = audio[index * per_frame : (index + 1) * per_frame]
                writer.write_audio(np.pad(chunk, (0, per_frame - len(chunk)))[None])
    lips = np.stack([apply(m, p) for m, p in zip(matrices, faces.points["lips"], strict=True)])
    corners = lips[:, [LIPS.index(MOUTH_LEFT), LIPS.index(MOUTH_RIGHT)]]
    return {
        "frames": int(len(faces.counts)),
        "frames_with_one_face": int((faces.counts == 1).sum()),
        "shot_cuts": track.cuts,
        "mouth_jitter_px": _jitter(corners),
    }


def _clip_id(key: str, index: int) -> str:
    stem = Path(key).with_suffix("").as_posix().replace("/", "__")
    return f"{stem}_s{index:02d}"


def _identity(job: Job, segment: Segment, gt: dict | None) -> tuple[str, str, float]:
    if gt is None:
        return (
            Path(job.key).with_suffix("").as_posix(),
            split_of(job.key, job.params.val_fraction, job.params.test_fraction),
            np.nan,
        )
    fps = float(Fraction(gt["video"]["fps"]))
    frame = segment.start * fps
    identity = gt["identity"]
    for shot in gt.get("shots", []):
        if shot["start_frame"] <= frame + 0.5:
            identity = shot["identity"]
    return identity, gt["split"], float(gt.get("av_offset_frames", 0))


def _small_face_width(path: Path, segment: Segment, model_path: str, wanted: list[int]) -> float | None:
    """Width of a face the detector missed at full view, searched by zooming into frames `wanted`."""
    if not wanted:
        return None
    with FaceLandmarker(model_path, max_faces=2, video=False) as landmarker:
        for index, frame in enumerate(iter_frames(path, start=segment.start, end=segment.end)):
            if index > max(wanted):
                break
            if index in wanted:
                faces = find_small_faces(landmarker, frame)
                if faces:
                    return faces[0].width
    return None


def _jitter(track: np.ndarray) -> float:
    """Median frame-to-frame wobble of points (F, K, 2): |x_t − (x_{t−1} + x_{t+1})/2| in pixels."""
    if len(track) < 3:
        return 0.0
    wobble = track[1:-1] - 0.5 * (track[:-2] + track[2:])
    return float(np.nanmedian(np.linalg.norm(wobble.astype(np.float64), axis=-1)))


def _dbfs(peak: float) -> float:
    return float(20 * np.log10(peak)) if peak > 0 else -np.inf


_PIQE = None


def _piqe(crops: list[np.ndarray]) -> float:
    """Mean PIQE (pyiqa; works offline, lower is better) of a few aligned crops."""
    global _PIQE
    import torch

    if _PIQE is None:
        import pyiqa

        _PIQE = pyiqa.create_metric("piqe", device="cpu")
    batch = torch.from_numpy(np.stack(crops)).permute(0, 3, 1, 2).float() / 255
    with torch.no_grad():
        return float(_PIQE(batch).mean())


# --- the corpus --------------------------------------------------------------------------------


@functools.cache
def _code_digest() -> str:
    """A digest of the code that shapes the outputs, so a code change invalidates remembered work."""
    package = Path(__file__).resolve().parents[1]
    files = [
        Path(__file__).resolve(),
        *sorted((package / "face").glob("*.py")),
        *sorted((package / "media").glob("*.py")),
    ]
    digest = hashlib.sha256()
    for file in files:
        digest.update(file.read_bytes())
    return digest.hexdigest()


# Where and how wide the work runs: a source's result does not depend on them.
_HOW_NOT_WHAT = {"workers", "scheduler", "dask_address"}


def _work_key(path: Path, params: PreprocessParams, model_path: str) -> str:
    """Same source bytes, params, model and code: the remembered result is still valid.

    Content hashes, not timestamps, so a fresh clone reproduces the same `.work` records (and
    DVC sees the same output).
    """
    shaping = {name: value for name, value in to_dict(params).items() if name not in _HOW_NOT_WHAT}
    payload = json.dumps(
        [shaping, _file_digest(Path(path)), _file_digest(Path(model_path)), _code_digest()], sort_keys=True
    )
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def _file_digest(path: Path) -> str:
    stat = path.stat()
    return _digest_of(str(path), stat.st_size, stat.st_mtime_ns)


@functools.cache
def _digest_of(path: str, size: int, mtime_ns: int) -> str:  # size and mtime only key the cache
    return sha256_file(Path(path))


def _run_job(job: Job) -> tuple[str, list[dict], list[dict]]:
    reproducible_encoding()  # the clips, and so DVC's hash of data/processed, repeat byte for byte
    rows, rejects = process_source(job)
    record = {"key": job_key(job), "rows": rows, "rejects": rejects}
    work = Path(job.out_dir) / WORK / f"{_clip_id(job.key, 0)}.json"
    with atomic_path(work) as tmp:
        tmp.write_text(json.dumps(record, default=_json_default))
    return job.key, rows, rejects


def _run_job_on_worker(job: Job, expected_key: str) -> tuple[str, list[dict], list[dict]]:
    """`_run_job` as a Dask task: the worker writes the source's `.work` record on the shared file system.

    Dask reruns a finished task whose result died with its worker before the client fetched it:
    then the record is already there and the source is not processed again.
    """
    found = job_key(job)
    if found != expected_key:
        raise UserError(
            f"{job.key}: job key {found} on Dask worker {socket.gethostname()} (pid {os.getpid()}) but "
            f"{expected_key} on the client: the worker runs other synclip code or reads other bytes at "
            f"{job.path} or {job.model_path}"
        )
    cached = _cached(job)
    if cached is not None:
        return job.key, *cached
    return _run_job(job)


def dask_task_key(job: Job) -> str:
    """The Dask task of one source: named by its key, unique per output folder and job key."""
    digest = hashlib.sha256(json.dumps([job.out_dir, job_key(job)]).encode()).hexdigest()[:12]
    return f"preprocess-{digest}-{job.key}"


def job_key(job: Job) -> str:
    return _work_key(Path(job.path), job.params, job.model_path)


def _json_default(value):
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def _cached(job: Job) -> tuple[list[dict], list[dict]] | None:
    work = Path(job.out_dir) / WORK / f"{_clip_id(job.key, 0)}.json"
    if not work.is_file():
        return None
    record = json.loads(work.read_text())
    if record.get("key") != job_key(job):
        return None
    clips = Path(job.out_dir) / CLIPS
    if not all((clips / f"{row['clip']}.mp4").is_file() for row in record["rows"]):
        return None
    return record["rows"], record["rejects"]


def preprocess_corpus(
    raw_dir: str | Path,
    out_dir: str | Path,
    params: PreprocessParams,
    model_path: str | Path,
    workers: int | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Process every source under `raw_dir` into `out_dir`; returns (manifest, rejects).

    Writes `clips/`, `manifest.parquet` and `rejects.csv`; removes clips that no longer belong to
    the manifest (from an earlier run with other parameters). Nothing in the raw folder is ever
    modified. A bad file or segment becomes a row of `rejects.csv` and the run goes on. Finished
    sources are remembered in `<out>/.work/`, so a rerun (or a killed run) resumes.

    The sources run in this process (`workers` 1), on a pool of `workers` processes, or, with
    `params.scheduler: dask` or `SYNCLIP_DASK_SCHEDULER` set, as one Dask task each
    (`synclip.data.cluster`). The manifest and rejects list the sources in path order however
    they completed.
    """
    raw_dir, out_dir = Path(raw_dir), Path(out_dir)
    sources = list_sources(raw_dir)
    (out_dir / CLIPS).mkdir(parents=True, exist_ok=True)
    (out_dir / WORK).mkdir(parents=True, exist_ok=True)
    # absolute paths: what a Dask worker on a shared file system opens is what this process lists
    out, model = str(out_dir.absolute()), str(Path(model_path).absolute())
    jobs = [
        Job(str(p.absolute()), p.relative_to(raw_dir).as_posix(), out, params, model, shown=str(p))
        for p in sources
    ]
    results: dict[str, tuple[list[dict], list[dict]]] = {}
    todo = []
    for job in jobs:
        cached = _cached(job)
        if cached is None:
            todo.append(job)
        else:
            results[job.key] = cached
    workers = workers or params.workers
    address = dask_address(params.scheduler, params.dask_address)
    where = (
        f"{workers} worker(s)" if address is None else f"Dask at {address or f'a LocalCluster of {workers}'}"
    )
    log.info(
        "preprocess: %d sources (%d to process, %d cached), %s", len(jobs), len(todo), len(results), where
    )
    with progress("sources") as bar:
        task = bar.add_task("preprocess", total=len(todo))
        if address is not None:
            remote = [(job, job_key(job)) for job in todo]
            keys = [dask_task_key(job) for job in todo]
            for key, rows, rejects in map_on_dask(_run_job_on_worker, remote, keys, address, workers):
                results[key] = (rows, rejects)
                bar.advance(task)
        elif workers == 1:
            outcomes = map(_run_job, todo)
            for key, rows, rejects in outcomes:
                results[key] = (rows, rejects)
                bar.advance(task)
        else:
            with multiprocessing.get_context("spawn").Pool(workers) as pool:
                for key, rows, rejects in pool.imap_unordered(_run_job, todo):
                    results[key] = (rows, rejects)
                    bar.advance(task)
    rows = [row for job in jobs for row in results[job.key][0]]
    rejects = [reject for job in jobs for reject in results[job.key][1]]
    manifest = pd.DataFrame(rows, columns=_MANIFEST_COLUMNS)
    manifest["gt_av_offset"] = manifest["gt_av_offset"].astype("float64")
    rejected = pd.DataFrame(rejects, columns=["source", "segment", "start", "end", "reason", "detail"])
    _prune(out_dir, set(manifest["clip"]))
    manifest.to_parquet(out_dir / MANIFEST, index=False)
    rejected.to_csv(out_dir / REJECTS, index=False)
    return manifest, rejected


_MANIFEST_COLUMNS = [
    "clip",
    "source",
    "segment",
    "start",
    "end",
    "fps",
    "frames",
    "resolution",
    "face_width_px",
    "face_width_min_px",
    "one_face_fraction",
    "eye_jitter_px",
    "mouth_jitter_px",
    "quality_piqe",
    "audio_peak_dbfs",
    "identity",
    "split",
    "gt_av_offset",
]


def _prune(out_dir: Path, keep: set[str]) -> None:
    for path in (out_dir / CLIPS).iterdir():
        if path.stem not in keep or path.name.startswith("."):
            path.unlink()


def ground_truth_report(raw_dir: str | Path, rejects: pd.DataFrame, manifest: pd.DataFrame) -> dict:
    """How the preprocessing outcome compares with SynthTalk's defect labels (other sources are skipped).

    A source counts as rejected when none of its segments made it into the manifest. Expected:
    every clip whose defect makes it unusable is rejected with the matching reason; clean clips and
    shifted-audio clips (the sync stage corrects them) are kept. Shot cuts are judged apart: the
    source must be split within one frame of the cut (pieces may still be too short to keep).
    """
    expected = {
        "no_face": "no_face",
        "two_faces": "several_faces",
        "tiny_face": "face_too_small",
        "silent_audio": "silent_audio",
        "no_audio": "no_audio",
        "truncated": "truncated",
        "not_a_video": "unreadable",
    }
    raw_dir = Path(raw_dir)
    kept_sources = set(manifest["source"])
    per_kind: dict[str, dict[str, int]] = {}
    true_positive = false_positive = false_negative = 0
    cuts_found = cuts = 0
    for path in list_sources(raw_dir):
        gt = ground_truth(path)
        if gt is None:
            continue
        key = path.relative_to(raw_dir).as_posix()
        kind = (gt["defect"] or {}).get("kind", "clean")
        reasons = set(rejects.loc[rejects["source"] == key, "reason"])
        rejected = key not in kept_sources
        stats = per_kind.setdefault(kind, {"clips": 0, "rejected": 0, "right_reason": 0})
        stats["clips"] += 1
        stats["rejected"] += int(rejected)
        if kind == "shot_cut":
            bounds = [
                *manifest.loc[manifest["source"] == key, "start"],
                *rejects.loc[rejects["source"] == key, "start"],
            ]
            found = any(abs(b - gt["defect"]["cut_time"]) <= 1 / VIDEO_FPS + 1e-6 for b in bounds if b > 0)
            cuts += 1
            cuts_found += int(found)
            stats["right_reason"] += int(found)
            continue
        should_reject = kind in expected
        right = should_reject and rejected and expected[kind] in reasons
        stats["right_reason"] += int(right)
        true_positive += int(right)
        false_positive += int(rejected and not should_reject)
        false_negative += int(should_reject and not right)
    return {
        "precision": round(true_positive / max(true_positive + false_positive, 1), 4),
        "recall": round(true_positive / max(true_positive + false_negative, 1), 4),
        "shot_cuts_split": f"{cuts_found}/{cuts}",
        "per_defect": per_kind,
    }


def preprocess_stage(raw: Path, out: Path, metrics: Path, params: Params) -> None:
    """The `preprocess` stage: every source of `raw` into `out` (clips, manifest, rejects) and its metrics."""
    model = require("face_landmarker", params.pretrained.face_landmarker, "pretrained.face_landmarker")
    manifest, rejects = preprocess_corpus(raw, out, params.preprocess, model)
    accepted = len(manifest) > 0
    write_json(
        metrics,
        {
            "clips": len(manifest),
            "hours": round(float(manifest["frames"].sum()) / VIDEO_FPS / 3600, 4),
            "sources_rejected_whole": int((rejects["segment"] == -1).sum()),
            "segments_rejected": int((rejects["segment"] >= 0).sum()),
            "rejects_by_reason": rejects["reason"].value_counts().sort_index().to_dict(),
            "clips_by_split": manifest["split"].value_counts().sort_index().to_dict(),
            "median_eye_jitter_px": round(float(manifest["eye_jitter_px"].median()), 4) if accepted else None,
            "median_mouth_jitter_px": round(float(manifest["mouth_jitter_px"].median()), 4)
            if accepted
            else None,
            "ground_truth": ground_truth_report(raw, rejects, manifest),
        },
    )
