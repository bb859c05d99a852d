"""Fixtures of syncnet_python's face tracks as LatentSync's eval makes them (eval/detectors/s3fd,
eval/syncnet_detect.py), on seeded random weights and closed-form inputs: tests/fixtures/latentsync/s3fd.safetensors.

Weights: `tests.seeded_weights.seeded_state(shapes_of(S3FDNet), SEED)` with FACE_BIAS added to every face
logit's bias (`tests.s3fd_inputs.boosted`; seeded weights alone score hardly a prior above 0.9), loaded
strictly into upstream's S3FDNet; the test rebuilds them. Inputs come from tests/s3fd_inputs.py, which the
test computes too; none are stored.

Recorded:
- `detector.*`: upstream's `S3FD.detect_faces(image, conf_th=0.9, scales=[0.25])` on `detector_image()`:
  the network's input, what its `Detect` received (loc, softmax scores, priors; float32), what it returned
  (1, 2, 750, 5), and the boxes. `raw64.*` / `raw64b.*`: the same network as a `.double()` copy on that
  input (and on `RAW_IMAGE_SIZE` at scale 1), loc and scores in float64 (fp32 rounding would hide the
  differences the test looks for; upstream's Detect output stays float32 as it fills a default-dtype
  buffer).
- `track{case}.*`: upstream's `track_face` per shot, as its `__call__` loops over shots, on
  `tracking_detections()` for each (cuts, min_track) of TRACK_CASES, with the shots as scenedetect 0.6.1
  returns them (below); then `crop_video` on each track over `tracking_frame`s, written as PNGs under
  the .jpg names it globs (cv2.imread decodes by content, so no JPEG loss), with `cv2.VideoWriter`
  swapped for a recorder and the mp4 mux skipped. Stored: frames and interpolated boxes, the
  median-filtered (s, x, y), each crop's sha256 (the pixels for 2 frames of the first track), and the
  audio ffmpeg cut for the track (imageio-ffmpeg's binary on PATH, upstream's own `-ss/-to` command on a
  16 kHz wav of `speech_samples()`): its length and sha256, and whether it equals samples
  [first·640 : (last + 1)·640].
- `scenes.*`: upstream's `scene_detect` (scenedetect 0.6.1, VideoManager) on `scene_frames()` and on
  `tracking_frames()`, each written as an FFV1 video (lossless: cv2 decodes the same RGB bits back) named
  video.mp4; the scenes and its StatsManager's per-frame `content_val`. scenedetect 0.6.1 runs in a
  subprocess from /tmp/upstream-deps/scenedetect061 (`.venv/bin/pip install --no-deps --target
  /tmp/upstream-deps/scenedetect061 scenedetect==0.6.1`), apart from the 0.7 that synclip uses.

Stubbed: `latentsync.utils.util` (`check_model_and_download` only downloads a missing file; the real
module needs decord) and, in this process, `scenedetect.video_manager` (gone in 0.7; only scene_detect uses
it, and that runs in the subprocess).
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import os
import subprocess
import sys
import tempfile
import types
from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar

import cv2
import imageio_ffmpeg
import numpy as np
import torch
from scipy.io import wavfile

from scripts.latentsync_fixtures.common import write_fixture
from tests.s3fd_inputs import (
    DETECTOR_IMAGE_SIZE,
    FACE_BIAS,
    RAW_IMAGE_SIZE,
    SAMPLES_PER_FRAME,
    SEED,
    TRACK_CASES,
    boosted,
    detector_image,
    scene_frames,
    speech_samples,
    tracking_detections,
    tracking_frames,
)
from tests.seeded_weights import seeded_state, shapes_of

SCENEDETECT_061 = "/tmp/upstream-deps/scenedetect061"
REPO = Path(__file__).resolve().parents[2]
SOURCES = (
    "eval/detectors/s3fd/__init__.py",
    "eval/detectors/s3fd/box_utils.py",
    "eval/detectors/s3fd/nets.py",
    "eval/syncnet_detect.py",
    "eval/eval_sync_conf.py",
)
OUT_ROWS = 200  # rows of the float64 runs' Detect output stored (the rest are zero)
PIXEL_FRAMES = (0, 37)  # crops of the first track stored as pixels (first frame: the median filter's edge)


def stub_util() -> None:
    util = types.ModuleType("latentsync.utils.util")
    util.check_model_and_download = lambda path: None
    sys.modules.setdefault("latentsync.utils.util", util)


def sha256(array: np.ndarray) -> np.ndarray:
    """(32,) uint8 digest of an array's bytes (C order)."""
    return np.frombuffer(hashlib.sha256(np.ascontiguousarray(array).tobytes()).digest(), np.uint8)


@contextlib.contextmanager
def ffmpeg_on_path() -> Iterator[None]:
    """imageio-ffmpeg's binary as `ffmpeg` on PATH (upstream calls it through the shell)."""
    with tempfile.TemporaryDirectory() as folder:
        os.symlink(imageio_ffmpeg.get_ffmpeg_exe(), Path(folder) / "ffmpeg")
        old = os.environ["PATH"]
        os.environ["PATH"] = f"{folder}{os.pathsep}{old}"
        try:
            yield
        finally:
            os.environ["PATH"] = old


# --- the detector ----------------------------------------------------------------------------------


def detector_records() -> tuple[dict[str, torch.Tensor | np.ndarray], dict]:
    from eval.detectors.s3fd import S3FD
    from eval.detectors.s3fd.nets import S3FDNet

    net = S3FDNet(device="cpu")
    net.load_state_dict(boosted(seeded_state(shapes_of(net), SEED)), strict=True)
    net.eval()
    seen: dict[str, torch.Tensor] = {}

    def keep_input(_module, args):
        seen["input"] = args[0].detach().clone()

    detect_forward = net.detect.forward

    def keep_detect(loc, conf, priors):
        out = detect_forward(loc, conf, priors)
        seen.update(
            loc=loc.detach().clone(), scores=conf.detach().clone(), priors=priors.clone(), out=out.clone()
        )
        return out

    net.register_forward_pre_hook(keep_input)
    net.detect.forward = keep_detect
    detector = S3FD.__new__(S3FD)  # __init__ would read checkpoints/auxiliary/sfd_face.pth
    detector.device, detector.net = "cpu", net
    image = detector_image()
    boxes = detector.detect_faces(image, conf_th=0.9, scales=[0.25])
    tensors: dict[str, torch.Tensor | np.ndarray] = {
        "detector.input": seen["input"][0],
        "detector.loc": seen["loc"][0],
        "detector.scores": seen["scores"][0],
        "detector.priors": seen["priors"],
        "detector.out": seen["out"][0],
        "detector.boxes": boxes,
    }
    faces = seen["out"][0, 1, :, 0]
    above = int((faces > 0.9).sum())
    notes = {
        "state_shapes": {name: list(shape) for name, shape in shapes_of(net).items()},
        "detector": {
            "image": list(DETECTOR_IMAGE_SIZE),
            "candidates_above_0.05": int((seen["scores"][0, :, 1] > 0.05).sum()),
            "detect_rows_above_0.9": above,
            "boxes_after_nms_0.1": len(boxes),
            "closest_score_to_0.9": float(faces[(faces - 0.9).abs().argmin()]),
        },
    }

    detector.detect_faces(detector_image(RAW_IMAGE_SIZE), conf_th=0.9, scales=[1.0])  # for its input
    inputs = {"raw64": tensors["detector.input"][None], "raw64b": seen["input"]}
    tensors["raw64b.input"] = seen["input"][0]
    net.double()
    for key, x in inputs.items():
        with torch.no_grad():
            out = net(x.double())
        assert seen["loc"].dtype == torch.float64
        assert out.dtype == torch.float32
        tensors[f"{key}.loc"] = seen["loc"][0]
        tensors[f"{key}.scores"] = seen["scores"][0]
        assert not out[0, 1, OUT_ROWS:].any(), "more detections than the stored rows"
        tensors[f"{key}.out"] = out[0, 1, :OUT_ROWS]  # class 1 (class 0 stays zero), rows past OUT_ROWS zero
    return tensors, notes


# --- tracks and crops ------------------------------------------------------------------------------


class RecordingWriter:
    """cv2.VideoWriter's calls as crop_video makes them; `release` leaves the empty file it deletes."""

    frames: ClassVar[dict[str, list[np.ndarray]]] = {}

    def __init__(self, path: str, fourcc: int, fps: float, size: tuple[int, int]) -> None:
        self.path = path
        RecordingWriter.frames[path] = []

    def write(self, frame: np.ndarray) -> None:
        RecordingWriter.frames[self.path].append(frame.copy())

    def release(self) -> None:
        Path(self.path).touch()


def audio_cut_runner(commands: list[str]):
    """subprocess.run for crop_video: the `-ss/-to` audio cut runs (ffmpeg on PATH), the mp4 mux does not."""

    def run(command: str, shell: bool = False, stdout=None):
        commands.append(command)
        if " -ss " in command:
            return subprocess.run(command, shell=shell, stdout=stdout, check=True)
        return subprocess.CompletedProcess(command, 0)

    return run


def track_records() -> tuple[dict[str, torch.Tensor | np.ndarray], dict]:
    from eval import syncnet_detect

    tensors: dict[str, torch.Tensor | np.ndarray] = {}
    notes: dict[str, object] = {}
    cv2_proxy = types.ModuleType("cv2")
    cv2_proxy.__dict__.update(cv2.__dict__)
    cv2_proxy.VideoWriter = RecordingWriter
    commands: list[str] = []
    syncnet_detect.cv2 = cv2_proxy
    syncnet_detect.subprocess = types.SimpleNamespace(run=audio_cut_runner(commands))
    detector = syncnet_detect.SyncNetDetector.__new__(syncnet_detect.SyncNetDetector)
    samples = speech_samples()
    with tempfile.TemporaryDirectory() as tmp, ffmpeg_on_path():
        frames_dir, video_dir, temp_dir, crop_dir = (
            Path(tmp) / name for name in ("frames", "video", "temp", "crop")
        )
        for folder in (frames_dir, video_dir, temp_dir, crop_dir):
            folder.mkdir()
        for index, frame in enumerate(tracking_frames()):
            ok, png = cv2.imencode(".png", cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
            assert ok
            png.tofile(frames_dir / f"{index + 1:06d}.jpg")  # ffmpeg's %06d.jpg names, PNG bits
        wavfile.write(video_dir / "audio.wav", 16000, samples)
        num_frames = len(tracking_detections())
        for case, (cuts, min_track) in enumerate(TRACK_CASES):
            # upstream's shots, as scenedetect 0.6.1 returns them (see scene_records: the last one ends at N − 1)
            bounds = [0, *cuts, num_frames - 1] if cuts else [0, num_frames]
            faces = [
                [{"frame": index, "bbox": row[:4].tolist(), "conf": row[4]} for row in found]
                for index, found in enumerate(tracking_detections())
            ]
            tracks = []
            for start, end in itertools.pairwise(bounds):
                if end - start >= min_track:  # upstream's __call__
                    tracks += detector.track_face(faces[start:end], min_track=min_track)
            prefix = f"track{case}"
            tensors[f"{prefix}.count"] = torch.tensor(len(tracks))
            case_notes = []
            for k, track in enumerate(tracks):
                cropfile = str(crop_dir / f"{k:05d}")
                RecordingWriter.frames.clear()
                result = detector.crop_video(
                    track, cropfile, str(frames_dir), 25, str(temp_dir), str(video_dir)
                )
                crops = np.stack(RecordingWriter.frames[cropfile + "t.mp4"])
                _, cut = wavfile.read(temp_dir / "audio.wav")
                first, last = int(track["frame"][0]), int(track["frame"][-1])
                expected = samples[first * SAMPLES_PER_FRAME : (last + 1) * SAMPLES_PER_FRAME]
                key = f"{prefix}.{k}"
                tensors[f"{key}.frames"] = track["frame"]
                tensors[f"{key}.boxes"] = track["bbox"]
                tensors[f"{key}.smooth"] = np.stack(
                    [result["proc_track"][v] for v in ("s", "x", "y")], axis=1
                )
                tensors[f"{key}.crop_sha256"] = np.stack([sha256(crop) for crop in crops])
                tensors[f"{key}.audio_sha256"] = sha256(cut)
                tensors[f"{key}.audio_length"] = torch.tensor(len(cut))
                if case == 0 and k == 0:
                    tensors[f"{key}.crop_pixels"] = crops[list(PIXEL_FRAMES)]
                case_notes.append(
                    {
                        "frames": [first, last],
                        "crops": len(crops),
                        "audio_cut_equals_slice": bool(
                            len(cut) == len(expected) and np.array_equal(cut, expected)
                        ),
                        "audio_cut_length": len(cut),
                        "slice_length": len(expected),
                    }
                )
            notes[prefix] = {"cuts": list(cuts), "min_track": min_track, "tracks": case_notes}
    notes["commands"] = sorted(
        {c.split(" -i ")[0] + " …" + (" -ss/-to" if " -ss " in c else " mux") for c in commands}
    )
    return tensors, notes


# --- shots (a subprocess with scenedetect 0.6.1) -----------------------------------------------------


def write_lossless(frames: Iterator[np.ndarray], path: Path) -> int:
    """FFV1 in AVI (cv2 decodes the same bits back), renamed to the `path` upstream opens."""
    writer, count = None, 0
    avi = path.with_suffix(".avi")
    for frame in frames:
        if writer is None:
            height, width = frame.shape[:2]
            writer = cv2.VideoWriter(str(avi), cv2.VideoWriter_fourcc(*"FFV1"), 25, (width, height))
            assert writer.isOpened()
        writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
        count += 1
    writer.release()
    os.replace(avi, path)
    return count


def upstream_scenes(root: str, video_dir: str) -> dict:
    """Run in the subprocess: upstream's scene_detect, its scenes and per-frame content_val."""
    sys.path[:0] = [SCENEDETECT_061, root]
    stub_util()
    import scenedetect
    from eval import syncnet_detect

    assert scenedetect.__version__ == "v0.6.1", scenedetect.__version__
    managers = []

    def keep(*args, **kwargs):
        managers.append(syncnet_detect_stats(*args, **kwargs))
        return managers[-1]

    syncnet_detect_stats = syncnet_detect.StatsManager
    syncnet_detect.StatsManager = keep
    detector = syncnet_detect.SyncNetDetector.__new__(syncnet_detect.SyncNetDetector)
    scenes = detector.scene_detect(video_dir)
    stats = managers[0]
    frames = sorted(stats._frame_metrics)
    scores = [stats.get_metrics(frame, ["content_val"])[0] for frame in frames]
    return {
        "scenes": [[a.frame_num, b.frame_num] for a, b in scenes],
        "score_frames": frames,
        "scores": [float("nan") if s is None else float(s) for s in scores],
        "scenedetect": scenedetect.__version__,
    }


def scene_records(root: Path) -> tuple[dict[str, torch.Tensor | np.ndarray], dict]:
    tensors: dict[str, torch.Tensor | np.ndarray] = {}
    notes: dict[str, object] = {}
    for name, frames in (("scenes", scene_frames()), ("scenes_one", tracking_frames())):
        with tempfile.TemporaryDirectory() as video_dir:
            count = write_lossless(frames, Path(video_dir) / "video.mp4")
            out = Path(video_dir) / "scenes.json"
            env = {**os.environ, "PYTHONPATH": str(REPO)}
            code = (
                "import json, sys; from scripts.latentsync_fixtures.s3fd import upstream_scenes; "
                "json.dump(upstream_scenes(sys.argv[1], sys.argv[2]), open(sys.argv[3], 'w'))"
            )
            subprocess.run([sys.executable, "-c", code, str(root), video_dir, str(out)], env=env, check=True)
            result = json.loads(out.read_text())
        tensors[f"{name}.scenes"] = torch.tensor(result["scenes"])
        tensors[f"{name}.score_frames"] = torch.tensor(result["score_frames"])
        tensors[f"{name}.scores"] = torch.tensor(result["scores"], dtype=torch.float64)
        notes[name] = {"frames": count, "scenes": result["scenes"], "scenedetect": result["scenedetect"]}
    return tensors, notes


def generate(root: Path) -> None:
    stub_util()
    # eval.syncnet_detect imports scenedetect.video_manager, which 0.7 no longer has; only scene_detect
    # uses it, and scene_records runs that with 0.6.1 in a subprocess
    sys.modules.setdefault("scenedetect.video_manager", types.ModuleType("scenedetect.video_manager"))
    sys.modules["scenedetect.video_manager"].VideoManager = None
    torch.set_num_threads(1)
    detector_tensors, detector_notes = detector_records()
    track_tensors, track_notes = track_records()
    scene_tensors, scene_notes = scene_records(root)
    write_fixture(
        "s3fd",
        {**detector_tensors, **track_tensors, **scene_tensors},
        root,
        SOURCES,
        notes={
            "seed": SEED,
            "face_bias": FACE_BIAS,
            "pixel_frames": list(PIXEL_FRAMES),
            "torch": torch.__version__,
            "opencv": cv2.__version__,
            "ffmpeg": imageio_ffmpeg.get_ffmpeg_version(),
            **detector_notes,
            **track_notes,
            **scene_notes,
        },
    )
