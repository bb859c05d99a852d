"""How much the face-crop box moves Sync-C / Sync-D / the offset: syncnet_python's SyncNet, seeded random weights.

    python benchmarks/sync_conf_crops.py --out benchmarks/results/sync_conf_crops.json
    python benchmarks/sync_conf_crops.py --seeds 11 --frames 60 --out /tmp/crops.json   # a quick look

S3FD with random weights finds no face, so the crop source's effect is measured as the scores'
sensitivity to the box instead. Clips (25 fps, 512 × 512, their first `--frames` frames): the astronaut
photograph drifting with a 4 Hz-swelling tone (tests/test_paper.py `face_video`), and three SynthTalk
clips of three identities speaking (eSpeak NG), made here by `synthesize_corpus` (params.yaml's corpus
with 3 clips, 25 fps, 512 × 512, no defects). Boxes are MediaPipe's (`landmark_boxes`, FaceLandmarker in
VIDEO mode), tracked as `track_faces_mediapipe` tracks them (`face_tracks`: one shot, tracks of more than
50 frames). Each track's boxes are then edited (CHANGES: scaled about their centres, or moved by 10 % of
their larger side, the size syncnet_python's crop is cut from) and every version is cropped in the same
pass (`crop_tracks`: the same median filter, margins, padding and resize), so only the box differs.
Each version is scored by `sync_conf` with the SyncNetV2 of each seed (`seeded_state`), against the same
int16 samples. The summary compares every change with the box as used, over clips × seeds.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import sys
import tempfile
import time
from itertools import islice
from pathlib import Path
from statistics import median

import numpy as np
import torch

from synclip.config import load_params
from synclip.data.synthtalk import synthesize_corpus
from synclip.eval.face_tracks import TrackBoxes, bounding_box_iou, crop_tracks, face_tracks, landmark_boxes
from synclip.eval.paper import MIN_TRACK, int16_samples
from synclip.eval.sync_conf import VSHIFT, aggregate, sync_conf
from synclip.face.landmarks import FaceLandmarker
from synclip.media.decode import iter_frames, read_audio
from synclip.nn.syncnet_v2 import SyncNetV2, SyncNetV2Config

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
from seeded_weights import seeded_state, shapes_of  # noqa: E402
from test_paper import face_video  # noqa: E402

LANDMARKER = ROOT / "models" / "pretrained" / "face_landmarker.task"
SIZE = 512  # HDTF's clips
# change → (scale about the centre, x shift, y shift), shifts in units of the box's larger side
CHANGES = {
    "as_used": (1.0, 0.0, 0.0),
    "scale_0.85": (0.85, 0.0, 0.0),
    "scale_1.15": (1.15, 0.0, 0.0),
    "up_10pct": (1.0, 0.0, -0.1),
    "down_10pct": (1.0, 0.0, 0.1),
    "left_10pct": (1.0, -0.1, 0.0),
    "right_10pct": (1.0, 0.1, 0.0),
}


def edit_boxes(boxes: np.ndarray, scale: float, dx: float, dy: float) -> np.ndarray:
    """(N, 4) boxes (x1, y1, x2, y2) → scaled by `scale` about their centres, then moved by dx and dy
    times each box's larger side (the crop's size, `smooth_track`)."""
    centre = (boxes[:, :2] + boxes[:, 2:]) / 2  # (N, 2)
    half = (boxes[:, 2:] - boxes[:, :2]) / 2 * scale  # (N, 2)
    side = np.max(boxes[:, 2:] - boxes[:, :2], axis=1, keepdims=True)  # (N, 1)
    centre = centre + side * np.array([dx, dy])
    return np.concatenate([centre - half, centre + half], axis=1)


def mean_iou(boxes: np.ndarray, others: np.ndarray) -> float:
    """Mean IoU of (N, 4) boxes with (N, 4) others, frame by frame."""
    return float(np.mean([bounding_box_iou(a, b) for a, b in zip(boxes, others, strict=True)]))


def make_clips(workdir: Path, frames: int) -> dict[str, Path]:
    """The astronaut face video and three SynthTalk clips (different identities), 25 fps, 512 px."""
    clips = {"astronaut": face_video(workdir / "astronaut.mp4", frames=frames, size=SIZE)}
    base = load_params(ROOT / "params.yaml").corpus
    seconds = frames / 25 + 0.6  # speech a little longer than the frames used
    spec = dataclasses.replace(
        base,
        clips=3,
        identities=dataclasses.replace(base.identities, train=3, val=0, test=0),
        min_seconds=seconds,
        max_seconds=seconds + 0.2,
        frame_rates=("25",),
        sizes=((SIZE, SIZE),),
        defect_rate=0.0,
        workers=1,
    )
    manifest = synthesize_corpus(spec, workdir / "synthtalk")
    for row in manifest["clips"]:
        clips[f"synthtalk_{row['clip']}"] = workdir / "synthtalk" / f"{row['clip']}.mp4"
    return clips


def crops_per_change(path: Path, frames: int) -> tuple[dict[str, list], np.ndarray, dict]:
    """Each change's face tracks (FaceTrack list) of the clip's first `frames` frames, the (frames · 640,)
    int16 samples, and a description of the boxes."""
    clip = list(islice(iter_frames(path), frames))
    if len(clip) < frames:
        raise ValueError(f"{path}: {len(clip)} frames, {frames} wanted")
    samples = int16_samples(read_audio(path))[: frames * 640]
    with FaceLandmarker(LANDMARKER, max_faces=4, fps=25, video=True) as detector:
        detections = [landmark_boxes(detector.detect(frame, index)) for index, frame in enumerate(clip)]
    tracks = face_tracks(detections, [], min_track=MIN_TRACK)
    if not tracks:
        raise ValueError(f"{path}: no face track of more than {MIN_TRACK} frames")
    edited = [
        TrackBoxes(track.frames, edit_boxes(track.boxes, *CHANGES[name]))
        for name in CHANGES
        for track in tracks
    ]
    cropped = crop_tracks(clip, edited)
    per_change = {name: cropped[i * len(tracks) : (i + 1) * len(tracks)] for i, name in enumerate(CHANGES)}
    boxes = tracks[0].boxes
    described = {
        "frames": frames,
        "frame_size": list(clip[0].shape[:2]),
        "tracks": len(tracks),
        "median_box_wh_px": [
            round(float(np.median(boxes[:, 2] - boxes[:, 0])), 1),
            round(float(np.median(boxes[:, 3] - boxes[:, 1])), 1),
        ],
        "mean_iou_with_as_used": {
            name: round(mean_iou(boxes, edit_boxes(boxes, *change)), 3) for name, change in CHANGES.items()
        },
    }
    return per_change, samples, described


def summarize(rows: list[dict]) -> dict:
    """Per change: Sync-C and Sync-D against the box as used (same clip, same seed), over clips × seeds."""
    base = {(r["clip"], r["seed"]): r for r in rows if r["change"] == "as_used"}
    offsets = sorted({r["offset"] for r in base.values()})
    summary = {
        "as_used_offsets": offsets,
        "as_used_offsets_at_search_edge": sum(abs(r["offset"]) == VSHIFT for r in base.values()),
    }
    for name in CHANGES:
        if name == "as_used":
            continue
        pairs = [(r, base[r["clip"], r["seed"]]) for r in rows if r["change"] == name]
        c_rel = [(r["sync_c"] - b["sync_c"]) / abs(b["sync_c"]) for r, b in pairs]
        d_rel = [(r["sync_d"] - b["sync_d"]) / b["sync_d"] for r, b in pairs]
        c_abs = [r["sync_c"] - b["sync_c"] for r, b in pairs]
        moved = [
            f"{r['clip']} seed {r['seed']}: {b['offset']} → {r['offset']}"
            for r, b in pairs
            if r["offset"] != b["offset"]
        ]
        # each offset's mean distance against the same offset's with the box as used: how much the whole
        # curve moves, not only its minimum and median
        curve = [
            abs(np.asarray(r["distances"]) - np.asarray(b["distances"])) / np.asarray(b["distances"])
            for r, b in pairs
        ]
        summary[name] = {
            "pairs": len(pairs),
            "sync_c_rel_median_abs": round(median(map(abs, c_rel)), 4),
            "sync_c_rel_max_abs": round(max(map(abs, c_rel)), 4),
            "sync_c_rel_median_signed": round(median(c_rel), 4),
            "sync_c_abs_median_abs": round(median(map(abs, c_abs)), 4),
            "sync_c_abs_max_abs": round(max(map(abs, c_abs)), 4),
            "sync_d_rel_median_abs": round(median(map(abs, d_rel)), 4),
            "sync_d_rel_max_abs": round(max(map(abs, d_rel)), 4),
            "sync_d_rel_median_signed": round(median(d_rel), 4),
            "distance_curve_rel_median": round(float(np.median(curve)), 4),
            "distance_curve_rel_max": round(float(np.max(curve)), 4),
            "offset_changed": len(moved),
            "offset_changes": moved,
        }
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[11, 23, 37], help="SyncNetV2 weight seeds")
    parser.add_argument("--frames", type=int, default=100, help="frames of each clip (more than 50)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/sync_conf_crops.json"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    rows, clips_described = [], {}
    with tempfile.TemporaryDirectory() as workdir:
        clips = make_clips(Path(workdir), args.frames)
        prepared = {}
        for clip, path in clips.items():
            per_change, samples, clips_described[clip] = crops_per_change(path, args.frames)
            prepared[clip] = (per_change, samples)
            print(f"{clip}: {json.dumps(clips_described[clip])}", flush=True)
    shapes = shapes_of(SyncNetV2(SyncNetV2Config()))
    for seed in args.seeds:
        net = SyncNetV2(SyncNetV2Config())
        net.load_state_dict(seeded_state(shapes, seed))  # strict: every key and shape
        net.eval()
        for clip, (per_change, samples) in prepared.items():
            for name, tracks in per_change.items():
                scores = [sync_conf(net, track.crops, samples[track.audio_slice]) for track in tracks]
                summary = aggregate(scores)
                row = {"clip": clip, "seed": seed, "change": name, **summary, "windows": scores[0].windows}
                row["distances"] = scores[0].distances  # the first track's 31 mean distances, +15 … −15
                rows.append(row)
                print(json.dumps({k: v for k, v in row.items() if k != "distances"}), flush=True)
    report = {
        "what": "Sync-C / Sync-D / offset on crops from edited MediaPipe landmark boxes; seeded random SyncNetV2",
        "machine": {"cpu": platform.processor() or platform.machine(), "python": platform.python_version()},
        "torch": torch.__version__,
        "threads": args.threads,
        "seeds": args.seeds,
        "changes": {
            name: {"scale": s, "dx_of_larger_side": dx, "dy_of_larger_side": dy}
            for name, (s, dx, dy) in CHANGES.items()
        },
        "clips": clips_described,
        "summary": summarize(rows),
        "rows": rows,
        "wall_s": round(time.perf_counter() - start, 1),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1))
    print(json.dumps(report["summary"], indent=1))


if __name__ == "__main__":
    main()
