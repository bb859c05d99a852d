"""SynthTalk: the built-in talking-face corpus, with ground truth."""

from __future__ import annotations

import dataclasses
import json
import logging
import multiprocessing
from dataclasses import dataclass
from fractions import Fraction
from importlib.resources import files
from pathlib import Path

import cv2
import numpy as np
from scipy.signal import resample_poly

from synclip.config import CorpusParams, to_dict
from synclip.constants import VIDEO_FPS
from synclip.data.faces import FaceRenderer, Identity, MouthState, Pose, background, light_map
from synclip.data.speech import Voice, synthesize_batch
from synclip.data.visemes import MOUTH_PARAMS, mouth_track, segments
from synclip.errors import UserError
from synclip.files import atomic_path
from synclip.log import progress
from synclip.media.io import VideoWriter
from synclip.media.memory import reproducible_encoding

log = logging.getLogger(__name__)

GT_SCHEMA = "synthtalk-gt/1"
CORPUS_SCHEMA = "synthtalk-corpus/1"
MANIFEST = "synthtalk.json"

DEFECTS = (
    "shot_cut",  # the camera cuts to another shot (another person, another room) mid-clip
    "no_face",  # a stretch of frames shows only the room
    "two_faces",  # a second, silent person is in the picture
    "tiny_face",  # the face is far too small to use
    "av_shift",  # the audio is delayed or advanced by several frames
    "silent_audio",  # the audio track holds digital silence while the person talks
    "no_audio",  # the file has no audio stream
    "truncated",  # the file was cut short (an interrupted download)
    "not_a_video",  # the file is not a video at all
)
# English eSpeak voices whose output is the same in every process. The female variants f2, f3 and
# f5 are not (their breath/echo settings read memory that differs between runs), so they are left out.
VOICES = (
    "en-us",
    "en",
    "en-gb-x-rp",
    "en-029",
    "en-gb-scotland",
    "en-us-nyc",
    "en-us+m1",
    "en+m3",
    "en-us+m7",
    "en-us+f1",
    "en+f4",
    "en-us+f4",
    "en-us+linda",
)


@dataclass(frozen=True)
class ClipPlan:
    name: str
    identity: str
    split: str
    seed: int
    fps: str
    width: int
    height: int
    audio_rate: int
    channels: int
    seconds: float
    defect: str | None
    partner: str | None  # the other identity of a shot_cut or two_faces clip


# --- planning ----------------------------------------------------------------------------------


def plan_corpus(spec: CorpusParams) -> tuple[dict[str, str], list[ClipPlan]]:
    """Identity -> split, and one plan per clip; a pure function of `spec`."""
    rng = np.random.default_rng(spec.seed)
    counts = dataclasses.asdict(spec.identities)
    total = sum(counts.values())
    names = [f"id{index:03d}" for index in range(total)]
    order = rng.permutation(total)
    splits: dict[str, str] = {}
    cursor = 0
    for split, count in counts.items():
        for index in order[cursor : cursor + count]:
            splits[names[index]] = split
        cursor += count
    by_split = {split: sorted(n for n, s in splits.items() if s == split) for split in counts}

    owners = [names[i % total] for i in rng.permutation(spec.clips)]
    defective = rng.choice(spec.clips, size=round(spec.clips * spec.defect_rate), replace=False)
    kinds = {int(clip): DEFECTS[i % len(DEFECTS)] for i, clip in enumerate(sorted(defective))}
    seeds = np.random.SeedSequence(spec.seed).spawn(spec.clips)
    taken: dict[str, int] = {}
    plans = []
    for index, identity in enumerate(owners):
        number = taken.get(identity, 0)
        taken[identity] = number + 1
        defect = kinds.get(index)
        partner = None
        if defect in ("shot_cut", "two_faces"):
            others = [n for n in by_split[splits[identity]] if n != identity] or [identity]
            partner = others[rng.integers(len(others))]
        width, height = spec.sizes[rng.integers(len(spec.sizes))]
        plans.append(
            ClipPlan(
                name=f"{identity}_{number:02d}",
                identity=identity,
                split=splits[identity],
                seed=int(seeds[index].generate_state(1)[0]),
                fps=spec.frame_rates[rng.integers(len(spec.frame_rates))],
                width=int(width),
                height=int(height),
                audio_rate=int(spec.audio_rates[rng.integers(len(spec.audio_rates))]),
                channels=2 if rng.random() < spec.stereo_fraction else 1,
                seconds=float(rng.uniform(spec.min_seconds, spec.max_seconds)),
                defect=defect,
                partner=partner,
            )
        )
    return splits, sorted(plans, key=lambda p: p.name)


def identity_of(name: str, corpus_seed: int) -> Identity:
    """The appearance of an identity: a pure function of its name and the corpus seed."""
    return Identity.sample(name, np.random.default_rng([corpus_seed, int(name[2:])]))


# --- audio -------------------------------------------------------------------------------------


def load_words() -> list[str]:
    """The word list SynthTalk's sentences are drawn from (shipped with the package)."""
    text = files("synclip.data").joinpath("assets/words.txt").read_text()
    return [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]


@dataclass
class Speech:
    samples: np.ndarray  # (N,) float32 at `rate`, the clean speech
    rate: int
    phonemes: list[tuple[str, float, float]]
    words: list[tuple[str, float]]
    sentences: list[str]
    voice: Voice


def _speech(rng: np.random.Generator, seconds: float, min_lead: float, words: list[str]) -> Speech:
    voice = Voice(
        name=VOICES[rng.integers(len(VOICES))],
        rate=int(rng.integers(140, 211)),
        pitch=int(rng.integers(25, 76)),
        pitch_range=int(rng.integers(30, 81)),
        word_gap=int(rng.integers(0, 3)),
    )
    lead = max(float(rng.uniform(0.25, 0.8)), min_lead)
    tail = float(rng.uniform(0.3, 0.8))
    # More sentences than can fit (each lasts over 0.5 s); one eSpeak process speaks them all.
    candidates = [
        " ".join(words[i] for i in rng.integers(len(words), size=int(rng.integers(3, 10))))
        for _ in range(int(seconds / 0.5) + 2)
    ]
    gaps = rng.uniform(0.15, 0.9, len(candidates))
    utterances = synthesize_batch([c.capitalize() + "." for c in candidates], voice)
    rate = utterances[0].sample_rate
    pieces: list[tuple[float, np.ndarray]] = []
    phonemes: list[tuple[str, float, float]] = []
    spoken: list[tuple[str, float]] = []
    sentences: list[str] = []
    cursor = lead
    for sentence, utterance, gap in zip(candidates, utterances, gaps, strict=True):
        if sentences and cursor + utterance.duration + tail > seconds:
            break
        pieces.append((cursor, utterance.samples))
        phonemes += [(p.symbol, cursor + p.start, cursor + p.end) for p in utterance.phonemes]
        spoken += [(w.text, cursor + w.start) for w in utterance.words]
        sentences.append(sentence)
        cursor += utterance.duration + float(gap)
        if cursor + tail > seconds:
            break
    end = max(cursor, seconds)
    samples = np.zeros(int(round(end * rate)), np.float32)
    for start, chunk in pieces:
        begin = int(round(start * rate))
        samples[begin : begin + len(chunk)] += chunk[: len(samples) - begin]
    return Speech(samples, rate, phonemes, spoken, sentences, voice)


def _pink_noise(rng: np.random.Generator, length: int) -> np.ndarray:
    spectrum = np.fft.rfft(rng.standard_normal(length))
    spectrum /= np.sqrt(np.maximum(np.arange(len(spectrum)), 1))
    noise = np.fft.irfft(spectrum, n=length)
    return (noise / (noise.std() + 1e-12)).astype(np.float32)


def _mix_audio(
    speech: Speech,
    plan: ClipPlan,
    spec: CorpusParams,
    frames: int,
    shift_frames: int,
    rng: np.random.Generator,
) -> tuple[np.ndarray, dict]:
    """The audio track as written: (C, N) float32 at the plan's rate, and its description."""
    rate = plan.audio_rate
    fps = Fraction(plan.fps)
    length = int(round(Fraction(frames) / fps * rate))
    divisor = np.gcd(rate, speech.rate)
    clean = resample_poly(speech.samples, rate // divisor, speech.rate // divisor).astype(np.float32)
    clean = np.pad(clean, (0, max(0, length - len(clean))))[:length]
    shift = shift_frames * rate // VIDEO_FPS  # exact for 44.1 and 48 kHz
    if shift > 0:
        clean = np.concatenate([np.zeros(shift, np.float32), clean[:-shift]])
    elif shift < 0:
        clean = np.concatenate([clean[-shift:], np.zeros(-shift, np.float32)])
    peak = np.abs(clean).max(initial=0.0)
    gain_db = float(rng.uniform(-12.0, -2.0))
    clean *= (10 ** (gain_db / 20)) / max(peak, 1e-6)
    active = np.abs(clean) > 0.02 * np.abs(clean).max(initial=1e-6)
    speech_rms = float(np.sqrt(np.mean(clean[active] ** 2))) if active.any() else 1e-3
    snr_db = float(rng.uniform(*spec.snr_db))
    noise_rms = speech_rms / 10 ** (snr_db / 20)
    hum = np.zeros(length, np.float32)
    if rng.random() < 0.3:  # mains hum, 50 or 60 Hz
        mains = 50 if rng.random() < 0.5 else 60
        hum = (
            float(rng.uniform(0.2, 0.6)) * noise_rms * np.sin(2 * np.pi * mains * np.arange(length) / rate)
        ).astype(np.float32)
    channels = []
    for channel in range(plan.channels):
        noise = _pink_noise(rng, length) * noise_rms + hum
        level = 1.0 if channel == 0 else float(rng.uniform(0.8, 1.0))
        channels.append(clean * level + noise)
    audio = np.clip(np.stack(channels), -1, 1).astype(np.float32)
    info = {
        "sample_rate": rate,
        "channels": plan.channels,
        "gain_db": round(gain_db, 2),
        "snr_db": round(snr_db, 2),
    }
    if plan.defect == "silent_audio":
        audio[:] = 0.0
        info["snr_db"] = None
    return audio, info


# --- motion ------------------------------------------------------------------------------------


def _wander(
    rng: np.random.Generator, times: np.ndarray, amplitude: float, slow: float = 0.05, fast: float = 0.4
):
    """A smooth random signal: three sinusoids of random frequency and phase, peak about ±amplitude."""
    freqs = rng.uniform(slow, fast, 3)
    phases = rng.uniform(0, 2 * np.pi, 3)
    weights = rng.dirichlet(np.ones(3))
    return amplitude * sum(
        w * np.sin(2 * np.pi * f * times + p) for w, f, p in zip(weights, freqs, phases, strict=True)
    )


def _poses(
    rng: np.random.Generator, plan: ClipPlan, times: np.ndarray, face_width: float, anchor: float
) -> list[Pose]:
    width, height = plan.width, plan.height
    half = min(face_width * width / 2, 0.16 * height)
    cx = anchor * width + _wander(rng, times, 0.04 * width)
    cy = rng.uniform(0.4, 0.48) * height + _wander(rng, times, 0.03 * height)
    scale = half * (1 + _wander(rng, times, 0.05))
    angle = _wander(rng, times, np.deg2rad(rng.uniform(3, 10)))
    return [
        Pose(float(x), float(y), float(s), float(a)) for x, y, s, a in zip(cx, cy, scale, angle, strict=True)
    ]


def _eyes(rng: np.random.Generator, times: np.ndarray) -> np.ndarray:
    """Eye openness per frame: blinks of 0.12–0.2 s at random, about every 2–6 s."""
    openness = np.ones(len(times))
    t = float(rng.uniform(0.3, 3.0))
    end = times[-1] if len(times) else 0.0
    while t < end:
        length = float(rng.uniform(0.12, 0.2))
        phase = (times - t) / length
        inside = (phase >= 0) & (phase <= 1)
        openness[inside] = np.minimum(openness[inside], np.abs(2 * phase[inside] - 1))
        t += float(rng.uniform(2.0, 6.0))
    return openness


# --- one clip ----------------------------------------------------------------------------------


def make_clip(plan: ClipPlan, spec: CorpusParams, out_dir: Path, words: list[str]) -> dict:
    """Write `<name>.mp4` and `<name>.json` into `out_dir`; returns the manifest row.

    The clip is a real mp4 (H.264 + AAC at one of several frame rates, sizes and audio rates) of a
    procedurally drawn person saying random sentences with eSpeak NG, and the JSON sidecar holds the
    ground truth: text, phoneme timings, per-frame mouth parameters, face boxes and key points, the
    true audio/video offset, identity, split and defect.
    """
    reproducible_encoding()
    rng = np.random.default_rng(plan.seed)
    video_path = out_dir / f"{plan.name}.mp4"
    shift = 0
    if plan.defect == "av_shift":
        shift = int(rng.choice([-8, -7, -6, -5, -4, -3, 3, 4, 5, 6, 7, 8]))
    speech = _speech(rng, plan.seconds, min_lead=abs(shift) / VIDEO_FPS + 0.2, words=words)
    fps = Fraction(plan.fps)
    duration = len(speech.samples) / speech.rate
    frames = int(round(duration * fps))
    times = (np.arange(frames) + 0.5) / float(fps)  # each frame shows the middle of its interval
    segs = segments(speech.phonemes, duration)
    main = identity_of(plan.identity, spec.seed)
    mouth = mouth_track(segs, times, main.articulation)
    eyes = _eyes(rng, times)

    face_width = float(rng.uniform(*spec.face_width))
    if plan.defect == "tiny_face":
        face_width = float(rng.uniform(0.06, 0.09))
    anchor = float(rng.uniform(0.4, 0.6))
    if plan.defect == "two_faces":
        face_width, anchor = min(face_width, 0.24), 0.3
    poses = _poses(rng, plan, times, face_width, anchor)
    backdrop = background(main, plan.width, plan.height, rng)
    lighting = light_map(main, plan.width, plan.height)
    renderer = FaceRenderer(main)

    shots = [{"start_frame": 0, "identity": plan.identity}]
    second = None
    cut = frames
    if plan.defect == "shot_cut":
        cut = int(frames * rng.uniform(0.35, 0.65))
        other = identity_of(plan.partner, spec.seed)
        second = (
            FaceRenderer(other),
            background(other, plan.width, plan.height, rng),
            light_map(other, plan.width, plan.height),
        )
        other_poses = _poses(
            rng, plan, times, float(rng.uniform(*spec.face_width)), float(rng.uniform(0.4, 0.6))
        )
        other_mouth = mouth_track(segs, times, other.articulation)
        shots.append({"start_frame": cut, "identity": plan.partner})
    companion = None
    if plan.defect == "two_faces":
        other = identity_of(plan.partner, spec.seed)
        companion = (
            FaceRenderer(other),
            _poses(rng, plan, times, face_width * 0.85, 0.72),
            _eyes(rng, times),
        )
    hidden = np.zeros(frames, bool)
    if plan.defect == "no_face":
        length = int(round(float(rng.uniform(1.0, 2.5)) * float(fps)))
        start = int(rng.integers(int(0.2 * frames), max(int(0.2 * frames) + 1, frames - length - 1)))
        hidden[start : start + length] = True

    audio, audio_info = _mix_audio(speech, plan, spec, frames, shift, rng)
    per_frame_audio = [int(round(Fraction(i) / fps * plan.audio_rate)) for i in range(frames + 1)]
    with_audio = plan.defect != "no_audio"
    drawn: list[dict[str, np.ndarray] | None] = []
    writer = VideoWriter(
        video_path,
        plan.width,
        plan.height,
        fps,
        audio_rate=plan.audio_rate if with_audio else None,
        audio_channels=plan.channels,
        crf=spec.crf,
        preset=spec.preset,
        threads=1,
        faststart=plan.defect == "truncated",
    )
    with writer:
        for index in range(frames):
            after_cut = second is not None and index >= cut
            image = (second[1] if after_cut else backdrop).copy()
            points = None
            if not hidden[index]:
                if after_cut:
                    points = second[0].draw(
                        image, other_poses[index], MouthState.from_vector(other_mouth[index]), eyes[index]
                    )
                else:
                    points = renderer.draw(
                        image, poses[index], MouthState.from_vector(mouth[index]), eyes[index]
                    )
            if companion is not None:
                rest = MouthState(0.0, 0.45, 0.1, 0.0, 0.7)
                companion[0].draw(image, companion[1][index], rest, companion[2][index])
            image = cv2.multiply(image, second[2] if after_cut else lighting, scale=1 / 255)
            writer.write_frame(image)
            if with_audio:
                writer.write_audio(audio[:, per_frame_audio[index] : per_frame_audio[index + 1]])
            drawn.append(points)

    file_info: dict = {"bytes": video_path.stat().st_size}
    if plan.defect == "truncated":
        keep = int(file_info["bytes"] * rng.uniform(0.35, 0.75))
        with video_path.open("r+b") as file:
            file.truncate(keep)
        file_info = {"bytes": keep, "original_bytes": file_info["bytes"]}
    elif plan.defect == "not_a_video":
        junk = b"<html><head><title>403 Forbidden</title></head><body>Access denied.</body></html>\n"
        junk += rng.bytes(int(rng.integers(2_000, 20_000)))
        _write_atomic(video_path, junk)
        file_info = {"bytes": len(junk)}

    boxes = [_box(points["face_box"], plan) if points else None for points in drawn]
    names = sorted({name for points in drawn if points for name in points} - {"face_box"})
    keypoints = {
        name: [[round(float(v), 2) for v in points[name]] if points else None for points in drawn]
        for name in names
    }
    gt = {
        "schema": GT_SCHEMA,
        "clip": plan.name,
        "file": video_path.name,
        "identity": plan.identity,
        "split": plan.split,
        "defect": _defect_info(plan, shift, cut, hidden, fps),
        "av_offset_frames": shift,
        "video": {
            "fps": plan.fps,
            "width": plan.width,
            "height": plan.height,
            "frames": frames,
            "duration": round(frames / float(fps), 6),
            "has_audio": with_audio,
            **file_info,
        },
        "audio": audio_info if with_audio else None,
        "voice": dataclasses.asdict(speech.voice),
        "text": speech.sentences,
        "phonemes": [
            [s, round(a + shift / VIDEO_FPS, 4), round(b + shift / VIDEO_FPS, 4)]
            for s, a, b in speech.phonemes
        ],
        "words": [[w, round(t + shift / VIDEO_FPS, 4)] for w, t in speech.words],
        "visemes": [[s.viseme.value, round(s.start, 4), round(s.end, 4)] for s in segs],
        "shots": shots,
        "frames": {
            "time": [round(i / float(fps), 6) for i in range(frames)],
            "face_visible": [b is not None for b in boxes],
            "face_box": boxes,
            "eye_open": [round(float(e), 3) for e in eyes],
            **{name: [round(float(v), 4) for v in mouth[:, k]] for k, name in enumerate(MOUTH_PARAMS)},
            "keypoints": keypoints,
        },
        "mouth_25fps": _track_25fps(segs, main.articulation, frames / float(fps)),
    }
    _write_atomic(out_dir / f"{plan.name}.json", json.dumps(gt, sort_keys=True).encode())
    return {
        "clip": plan.name,
        "file": video_path.name,
        "identity": plan.identity,
        "split": plan.split,
        "defect": plan.defect,
        "fps": plan.fps,
        "size": [plan.width, plan.height],
        "seconds": round(frames / float(fps), 3),
    }


def _track_25fps(segs, articulation: float, video_seconds: float) -> dict[str, list[float]]:
    """Mouth parameters at 25 fps on the video clock, the rate every processed clip uses."""
    count = int(np.floor(video_seconds * VIDEO_FPS))
    track = mouth_track(segs, (np.arange(count) + 0.5) / VIDEO_FPS, articulation)
    return {name: [round(float(v), 4) for v in track[:, k]] for k, name in enumerate(MOUTH_PARAMS)}


def _box(outline: np.ndarray, plan: ClipPlan) -> list[float]:
    x0, y0 = outline.min(axis=0)
    x1, y1 = outline.max(axis=0)
    return [
        round(float(max(x0, 0)), 2),
        round(float(max(y0, 0)), 2),
        round(float(min(x1, plan.width)), 2),
        round(float(min(y1, plan.height)), 2),
    ]


def _defect_info(plan: ClipPlan, shift: int, cut: int, hidden: np.ndarray, fps: Fraction) -> dict | None:
    if plan.defect is None:
        return None
    info: dict = {"kind": plan.defect}
    if plan.defect == "av_shift":
        info["offset_frames"] = shift  # > 0: the audio is late by this many 25 fps frames
    elif plan.defect == "shot_cut":
        info["cut_frame"] = cut
        info["cut_time"] = round(cut / float(fps), 6)
        info["partner"] = plan.partner
    elif plan.defect == "no_face":
        where = np.flatnonzero(hidden)
        info["frames"] = [int(where[0]), int(where[-1]) + 1]
    elif plan.defect == "two_faces":
        info["partner"] = plan.partner
    return info


def _write_atomic(path: Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


# --- the corpus --------------------------------------------------------------------------------


def _clip_done(plan: ClipPlan, out_dir: Path) -> bool:
    return (out_dir / f"{plan.name}.json").is_file() and (out_dir / f"{plan.name}.mp4").is_file()


def _work(job: tuple[ClipPlan, CorpusParams, str]) -> dict:
    plan, spec, out = job
    return make_clip(plan, spec, Path(out), load_words())


def synthesize_corpus(
    spec: CorpusParams, out_dir: str | Path, workers: int | None = None, force: bool = False
) -> dict:
    """Generate (or complete) the corpus under `out_dir`; returns the corpus manifest.

    Clips whose sidecar already exists are kept unless `force`. The manifest `synthtalk.json`
    is written last, so its presence means the corpus is complete. Identities are split train /
    val / test, and a share of clips is deliberately defective, each labelled. The same seed and
    parameters give byte-identical files (each clip draws from its own seed, so worker count does
    not matter).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    manifest_path = out_dir / MANIFEST
    if manifest_path.is_file():
        existing = json.loads(manifest_path.read_text())
        if existing.get("params") != to_dict(spec) and not force:
            raise UserError(
                f"{out_dir} holds a SynthTalk corpus made with other parameters; "
                "choose another --out or pass --force to regenerate it"
            )
    splits, plans = plan_corpus(spec)
    todo = [p for p in plans if force or not _clip_done(p, out_dir)]
    rows = {p.name: None for p in plans}
    for plan in plans:
        if plan not in todo:
            rows[plan.name] = _row_from_sidecar(out_dir / f"{plan.name}.json")
    workers = workers or spec.workers
    log.info(
        "SynthTalk: %d clips (%d to make) from %d identities, %d worker(s) -> %s",
        len(plans),
        len(todo),
        len(splits),
        workers,
        out_dir,
    )
    jobs = [(plan, spec, str(out_dir)) for plan in todo]
    with progress("clips") as bar:
        task = bar.add_task("SynthTalk", total=len(todo))
        if workers == 1:
            for job in jobs:
                row = _work(job)
                rows[row["clip"]] = row
                bar.advance(task)
        else:
            with multiprocessing.get_context("spawn").Pool(workers) as pool:
                for row in pool.imap_unordered(_work, jobs):
                    rows[row["clip"]] = row
                    bar.advance(task)
    identities = []
    for name, split in sorted(splits.items()):
        identity = identity_of(name, spec.seed)
        identities.append(
            {
                "identity": name,
                "split": split,
                "hair_style": identity.hair_style,
                "glasses": identity.glasses,
                "skin": [round(c) for c in identity.skin],
            }
        )
    manifest = {
        "schema": CORPUS_SCHEMA,
        "params": to_dict(spec),
        "identities": identities,
        "clips": [rows[p.name] for p in plans],
        "summary": summarize([rows[p.name] for p in plans]),
    }
    _write_atomic(manifest_path, json.dumps(manifest, indent=1, sort_keys=True).encode())
    return manifest


def _row_from_sidecar(path: Path) -> dict:
    gt = json.loads(path.read_text())
    return {
        "clip": gt["clip"],
        "file": gt["file"],
        "identity": gt["identity"],
        "split": gt["split"],
        "defect": (gt["defect"] or {}).get("kind"),
        "fps": gt["video"]["fps"],
        "size": [gt["video"]["width"], gt["video"]["height"]],
        "seconds": round(gt["video"]["duration"], 3),
    }


def summarize(rows: list[dict]) -> dict:
    """Clip counts, hours and defects per split."""
    summary: dict = {"clips": len(rows), "hours": round(sum(r["seconds"] for r in rows) / 3600, 4)}
    for split in ("train", "val", "test"):
        chosen = [r for r in rows if r["split"] == split]
        summary[split] = {
            "clips": len(chosen),
            "identities": len({r["identity"] for r in chosen}),
            "clean_clips": sum(r["defect"] is None for r in chosen),
            "hours": round(sum(r["seconds"] for r in chosen) / 3600, 4),
        }
    summary["defects"] = {kind: sum(r["defect"] == kind for r in rows) for kind in DEFECTS}
    return summary
