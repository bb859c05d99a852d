"""The face tracks and 224 px crops Sync-C / Sync-D are measured on, as syncnet_python's pipeline makes them.

Written anew after LatentSync's eval/syncnet_detect.py (`SyncNetDetector`: detect_face, scene_detect,
track_face, crop_video; itself syncnet_python's run_pipeline.py) and eval/detectors/s3fd/__init__.py
(`S3FD.detect_faces`): S3FD on every frame at scale 0.25 (faces scoring above 0.9), shots by PySceneDetect's
ContentDetector, per shot IoU tracks of more than `min_track` detections with at most 25 frames missing,
boxes interpolated over the gaps, a 13-frame median filter, a crop 0.4 box sizes wider than the face
(more below the mouth), padded with grey 110 and resized to 224 × 224 (BGR, as upstream writes them).
With the same frames and detections, tracks and crops are bit-equal to upstream's (same float64
arithmetic, same scipy/cv2 calls).

Where synclip differs from upstream, which works on files: it re-encodes the video (`-qscale:v 2 -r 25`,
MPEG-4) and detects and crops on JPEG frames (`-qscale:v 2`); synclip takes decoded 25 fps RGB frames as
they are, twice (detection, then crops), never holding them all. The crops are arrays, not an mp4. Shots:
upstream runs scenedetect 0.6.1's ContentDetector (threshold 27, min_scene_len 15, suppressing a cut
closer than 15 frames to the previous one, auto downscale by W // 256 with bilinear resizing); synclip
runs scenedetect 0.7's with the same settings (`ContentShotCuts`), whose scores and cuts are the same.
When S3FD's weights are absent, `track_faces_mediapipe` boxes faces with MediaPipe's landmarks instead.

Glossary: N frames, H/W pixels, K detections of a frame.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import NamedTuple

import cv2
import numpy as np
import torch
from scipy import signal
from scipy.interpolate import interp1d

from synclip.artifacts import load_published_state
from synclip.constants import SAMPLES_PER_FRAME, VIDEO_FPS
from synclip.face.landmarks import Face, FaceLandmarker
from synclip.nn.s3fd import S3FDConfig, S3FDNet, nms

log = logging.getLogger(__name__)

# --- upstream's settings (syncnet_detect.py, eval_sync_conf.py, detectors/s3fd) ----------------------
FACEDET_SCALE = 0.25  # detect_face: frames are shrunk by this before S3FD
CONF_TH = 0.9  # detect_face: a face must score above this
FINAL_NMS = 0.1  # S3FD.detect_faces: the second suppression, over the thresholded boxes
IMAGE_MEAN_BGR = (104.0, 117.0, 123.0)  # Caffe VGG16's channel means, subtracted before S3FD
IOU_THRESHOLD = 0.5  # track_face: a detection joins a track above this IoU with its last box
NUM_FAILED_DET = 25  # track_face: the most frames a track may go without a detection
MIN_TRACK = 50  # eval_sync_conf.py: a track needs more detections than this (and a shot this many frames)
MIN_FACE_SIZE = 100  # track_face: the mean box width or height must exceed this, pixels
CROP_SCALE = 0.4  # crop_video: the crop reaches 0.4 box sizes beyond the face (1.4 sideways, 1.8 down)
MEDFILT_KERNEL = 13  # crop_video: median filter of the box size and centre, frames
PAD_VALUE = 110  # crop_video: the grey the frame is padded with
CROP_SIZE = 224  # crop_video: crops are resized to this square
SHOT_THRESHOLD, SHOT_MIN_LENGTH = 27.0, 15  # scene_detect: ContentDetector() defaults
SHOT_MIN_WIDTH = 256  # scenedetect's auto downscale: by W // 256 from 512 px wide on


FrameSource = Callable[[], Iterable[np.ndarray]] | Sequence[np.ndarray] | np.ndarray


class TrackBoxes(NamedTuple):
    """One face track before cropping: upstream's `{"frame", "bbox"}`."""

    frames: np.ndarray  # (N,) int64 consecutive frame indices
    boxes: np.ndarray  # (N, 4) float64 (x1, y1, x2, y2), pixels, interpolated over missed frames


@dataclass
class FaceTrack:
    """One face track: its frames, boxes and 224 px crops.

    Its audio is `samples[track.audio_slice]` of the video's 16 kHz samples: samples first·640 to
    (last + 1)·640. Upstream cuts the same span with ffmpeg (`-ss first/25 -to (last+1)/25` on the
    16 kHz wav; the times print exactly with %.3f), which yields exactly these samples (checked in the
    fixture, tests/fixtures/latentsync/s3fd.safetensors).
    """

    frames: np.ndarray  # (N,) int64 consecutive frame indices
    boxes: np.ndarray  # (N, 4) float64 (x1, y1, x2, y2), pixels, interpolated
    crops: np.ndarray  # (N, 224, 224, 3) uint8 BGR

    @property
    def first(self) -> int:
        return int(self.frames[0])

    @property
    def last(self) -> int:
        return int(self.frames[-1])

    @property
    def audio_slice(self) -> slice:
        """The track's span of the video's 16 kHz samples."""
        return slice(self.first * SAMPLES_PER_FRAME, (self.last + 1) * SAMPLES_PER_FRAME)


# --- S3FD ----------------------------------------------------------------------------------------


def load_s3fd(path: str | Path) -> S3FDNet:
    """syncnet_python's / LatentSync's `sfd_face.pth` (a plain state dict of S3FDNet) in eval mode, on
    the CPU, strictly (`synclip.artifacts.load_published_state`: an error names the file and the keys)."""
    return load_published_state(S3FDNet(S3FDConfig()), path, "S3FD's sfd_face.pth")


def detector_input(image_rgb: np.ndarray, scale: float = FACEDET_SCALE) -> np.ndarray:
    """(H, W, 3) uint8 RGB → (3, h, w) float32 S3FD input: resized by `scale` (cv2 bilinear, h = round(H·scale)),
    minus the BGR means in RGB order (upstream swaps channels twice around the subtraction, so the
    network sees RGB)."""
    if image_rgb.ndim != 3 or image_rgb.shape[2] != 3:
        raise ValueError(f"expected an (H, W, 3) RGB image, got shape {image_rgb.shape}")
    scaled = cv2.resize(image_rgb, dsize=(0, 0), fx=scale, fy=scale, interpolation=cv2.INTER_LINEAR)
    x = scaled.transpose(2, 0, 1).astype(np.float32)
    x -= np.array(IMAGE_MEAN_BGR[::-1], np.float32)[:, None, None]
    return x


@torch.no_grad()
def detect_faces(
    net: S3FDNet, image_rgb: np.ndarray, conf_th: float = CONF_TH, scale: float = FACEDET_SCALE
) -> np.ndarray:
    """(H, W, 3) uint8 RGB → (K, 5) float64 faces (x1, y1, x2, y2, score), pixels of the image, best first.

    Upstream's `S3FD.detect_faces(image, conf_th, scales=[scale])`: S3FD's detections on
    `detector_input(image, scale)` scoring above conf_th, in pixels of the full image, suppressed again at
    IoU 0.1. Runs where the net's parameters are, in their dtype.
    """
    height, width = image_rgb.shape[:2]
    x = detector_input(image_rgb, scale)
    parameter = next(net.parameters())
    detections = net.detect(torch.from_numpy(x)[None].to(parameter.device, parameter.dtype))
    size = torch.tensor([width, height, width, height], dtype=torch.float32)
    found = []
    for cl in range(detections.shape[1]):
        rows = detections[0, cl].cpu()
        # upstream reads rows while the score exceeds conf_th; they are sorted, zeros after the last
        count = int((rows[:, 0] > conf_th).int().cumprod(0).sum())
        boxes = (rows[:count, 1:] * size).numpy().astype(np.float64)
        found.append(np.concatenate([boxes, rows[:count, :1].numpy().astype(np.float64)], axis=1))
    faces = np.concatenate(found) if found else np.empty((0, 5))
    return faces[nms(faces, FINAL_NMS)]


# --- shots ---------------------------------------------------------------------------------------


def shot_detection_frame(frame_rgb: np.ndarray) -> np.ndarray:
    """(H, W, 3) RGB → the BGR frame scenedetect 0.6.1's SceneManager scores: shrunk by W // 256 when that
    is above 1 (cv2 bilinear to round(W / f) × round(H / f)); 0.7 divides by max(W, H) / 256 instead."""
    height, width = frame_rgb.shape[:2]
    factor = 1 if width < SHOT_MIN_WIDTH else width // SHOT_MIN_WIDTH
    bgr = cv2.cvtColor(frame_rgb, cv2.COLOR_RGB2BGR)
    if factor > 1:
        bgr = cv2.resize(bgr, (round(width / factor), round(height / factor)))
    return bgr


class ContentShotCuts:
    """Shot cuts as LatentSync's `scene_detect` finds them: feed frames in order (`add`), read `cuts`.

    PySceneDetect's ContentDetector (threshold 27, min_scene_len 15) on `shot_detection_frame`s. A cut
    closer than 15 frames to the previous one (or to the start) is dropped, as 0.6.1 does; 0.7's
    default would merge it instead, so the SUPPRESS filter is asked for. (synclip.data.preprocess
    detects shots differently: 0.7's merging filter on frames area-resized to 256 px wide.)
    """

    def __init__(self) -> None:
        from scenedetect import ContentDetector
        from scenedetect.detector import FlashFilter

        self._detector = ContentDetector(
            threshold=SHOT_THRESHOLD, min_scene_len=SHOT_MIN_LENGTH, filter_mode=FlashFilter.Mode.SUPPRESS
        )
        self._index = 0
        self.cuts: list[int] = []  # first frame of each new shot

    def add(self, frame_rgb: np.ndarray) -> None:
        from scenedetect.common import FrameTimecode

        timecode = FrameTimecode(self._index, fps=Fraction(VIDEO_FPS))
        self.cuts += [
            cut.frame_num for cut in self._detector.process_frame(timecode, shot_detection_frame(frame_rgb))
        ]
        self._index += 1


def content_shot_cuts(frames: Iterable[np.ndarray]) -> list[int]:
    """`ContentShotCuts` over every frame (RGB (H, W, 3) uint8) of `frames`."""
    cuts = ContentShotCuts()
    for frame in frames:
        cuts.add(frame)
    return cuts.cuts


def shots(cuts: Sequence[int], num_frames: int) -> list[tuple[int, int]]:
    """[start, end) frames of each shot, as upstream's scene list: with cuts c1 < … < ck, (0, c1) … (ck, N − 1)
    (scenedetect 0.6.1 ends the last scene at the last frame's index, so that frame is never tracked);
    without cuts, (0, N)."""
    cuts = [int(c) for c in cuts]
    if not cuts:
        return [(0, num_frames)]
    if any(b <= a for a, b in zip([0, *cuts], [*cuts, num_frames], strict=True)):
        raise ValueError(f"shot cuts must increase strictly within (0, {num_frames}), got {cuts}")
    return list(zip([0, *cuts], [*cuts, num_frames - 1], strict=True))


# --- tracks --------------------------------------------------------------------------------------


class _Face(NamedTuple):
    """One detection as upstream's dict {"frame", "bbox", "conf"} (compared by value, as dicts are)."""

    frame: int
    box: tuple[float, float, float, float]
    conf: float


def bounding_box_iou(box_a: Sequence[float], box_b: Sequence[float]) -> float:
    """IoU of two (x1, y1, x2, y2) boxes (upstream's `bounding_box_iou`)."""
    x_a, y_a = max(box_a[0], box_b[0]), max(box_a[1], box_b[1])
    x_b, y_b = min(box_a[2], box_b[2]), min(box_a[3], box_b[3])
    inter = max(0, x_b - x_a) * max(0, y_b - y_a)
    area_a = (box_a[2] - box_a[0]) * (box_a[3] - box_a[1])
    area_b = (box_b[2] - box_b[0]) * (box_b[3] - box_b[1])
    return inter / float(area_a + area_b - inter)


def track_shot(
    shot_faces: list[list[_Face]],
    min_track: int = MIN_TRACK,
    min_face_size: float = MIN_FACE_SIZE,
    num_failed_det: int = NUM_FAILED_DET,
) -> list[TrackBoxes]:
    """Upstream's `track_face` over one shot's detections (consumed: joined faces are removed).

    Greedy: each pass starts a track at the first remaining face and walks the frames, taking a face
    whose IoU with the track's last box exceeds 0.5, until a gap of more than `num_failed_det` frames.
    Kept: tracks of more than `min_track` faces whose mean box width or height exceeds `min_face_size`.
    """
    tracks = []
    while True:
        track: list[_Face] = []
        for frame_faces in shot_faces:
            # upstream removes the face it is visiting from the list it iterates, which skips the next
            # face of that frame; kept, so the tracks are upstream's
            for face in frame_faces:
                if not track:
                    track.append(face)
                    frame_faces.remove(face)
                elif face.frame - track[-1].frame <= num_failed_det:
                    if bounding_box_iou(face.box, track[-1].box) > IOU_THRESHOLD:
                        track.append(face)
                        frame_faces.remove(face)
                else:
                    break
        if not track:
            return tracks
        if len(track) > min_track:
            frame_numbers = np.array([face.frame for face in track])
            boxes = np.array([np.array(face.box) for face in track])
            frames = np.arange(frame_numbers[0], frame_numbers[-1] + 1)
            interpolated = np.stack([interp1d(frame_numbers, boxes[:, i])(frames) for i in range(4)], axis=1)
            widths, heights = interpolated[:, 2] - interpolated[:, 0], interpolated[:, 3] - interpolated[:, 1]
            if max(np.mean(widths), np.mean(heights)) > min_face_size:
                tracks.append(TrackBoxes(frames, interpolated))


def face_tracks(
    detections: Sequence[np.ndarray],
    shot_cuts: Sequence[int],
    min_track: int = MIN_TRACK,
    min_face_size: float = MIN_FACE_SIZE,
) -> list[TrackBoxes]:
    """Tracks of every shot long enough (at least `min_track` frames), in order; `detections[i]` is frame
    i's (K, 5) faces (x1, y1, x2, y2, score), best first (upstream's `__call__` after detect_face)."""
    faces = [
        [
            _Face(index, tuple(row[:4].tolist()), row[4])
            for row in np.asarray(found, np.float64).reshape(-1, 5)
        ]
        for index, found in enumerate(detections)
    ]
    tracks = []
    for start, end in shots(shot_cuts, len(detections)):
        if end - start >= min_track:
            tracks += track_shot(faces[start:end], min_track=min_track, min_face_size=min_face_size)
    return tracks


# --- crops ---------------------------------------------------------------------------------------


def smooth_track(boxes: np.ndarray) -> np.ndarray:
    """(N, 4) boxes → (N, 3) median-filtered (half size, centre x, centre y), upstream's `dets` (s, x, y):
    scipy's medfilt pads with zeros, so the first and last 6 frames lean towards 0, as upstream's do."""
    size = np.maximum(boxes[:, 3] - boxes[:, 1], boxes[:, 2] - boxes[:, 0]) / 2
    centre_y = (boxes[:, 1] + boxes[:, 3]) / 2
    centre_x = (boxes[:, 0] + boxes[:, 2]) / 2
    with warnings.catch_warnings():
        # a track shorter than the kernel (only with min_track < 13) is zero-padded as any track's ends are
        warnings.filterwarnings("ignore", "kernel_size exceeds volume extent", UserWarning)
        smoothed = [signal.medfilt(v, kernel_size=MEDFILT_KERNEL) for v in (size, centre_x, centre_y)]
    return np.stack(smoothed, axis=1)


def crop_face(
    frame_bgr: np.ndarray, size: float, centre_x: float, centre_y: float, crop_scale: float = CROP_SCALE
) -> np.ndarray:
    """(H, W, 3) uint8 frame → (224, 224, 3) crop about a face of half size `size` (upstream's crop_video
    for one frame): from `size` above the centre to 1.8 `size` below it, 1.4 `size` either side, in the
    frame padded with grey 110, bilinear to 224 × 224."""
    bsi = int(size * (1 + 2 * crop_scale))  # the padding, pixels
    padded = np.pad(
        frame_bgr, ((bsi, bsi), (bsi, bsi), (0, 0)), "constant", constant_values=(PAD_VALUE, PAD_VALUE)
    )
    my, mx = centre_y + bsi, centre_x + bsi
    face = padded[
        int(my - size) : int(my + size * (1 + 2 * crop_scale)),
        int(mx - size * (1 + crop_scale)) : int(mx + size * (1 + crop_scale)),
    ]
    return cv2.resize(face, (CROP_SIZE, CROP_SIZE))


def crop_tracks(frames: Iterable[np.ndarray], tracks: Sequence[TrackBoxes]) -> list[FaceTrack]:
    """One pass over the RGB frames: each track's (N, 224, 224, 3) BGR crops (`smooth_track`, `crop_face`).
    Stops after the last frame a track needs; ValueError when `frames` ends before it."""
    if not tracks:
        return []
    smoothed = [smooth_track(track.boxes) for track in tracks]
    crops = [np.empty((len(track.frames), CROP_SIZE, CROP_SIZE, 3), np.uint8) for track in tracks]
    needed = max(int(track.frames[-1]) for track in tracks) + 1
    seen = 0
    for index, frame in enumerate(frames):
        seen = index + 1
        bgr = None
        for track, dets, out in zip(tracks, smoothed, crops, strict=True):
            k = index - int(track.frames[0])
            if 0 <= k < len(out):
                bgr = frame[..., ::-1] if bgr is None else bgr
                out[k] = crop_face(bgr, *dets[k])
        if seen == needed:
            break
    if seen < needed:
        raise ValueError(
            f"the frames ended after {seen}; the face tracks need {needed} (was the source re-read?)"
        )
    return [FaceTrack(track.frames, track.boxes, out) for track, out in zip(tracks, crops, strict=True)]


# --- the two front ends --------------------------------------------------------------------------


def _reopen(frames: FrameSource) -> Callable[[], Iterable[np.ndarray]]:
    """A callable giving a fresh pass over the frames each time it is called."""
    if callable(frames):
        return frames
    if isinstance(frames, Iterator):
        raise ValueError("frames must be re-readable (a callable returning a fresh iterator, or a sequence)")
    return lambda: frames


def track_and_crop(
    frames: FrameSource,
    detect: Callable[[int, np.ndarray], np.ndarray],
    shot_cuts: Sequence[int] | None = None,
    min_track: int = MIN_TRACK,
    min_face_size: float = MIN_FACE_SIZE,
) -> list[FaceTrack]:
    """Two passes over the RGB frames: `detect(index, frame)` → (K, 5) faces on each (and the shot cuts
    when `shot_cuts` is None), then the tracks' crops. `frames` is a callable returning a fresh iterable
    of (H, W, 3) uint8 RGB frames at 25 fps (or a sequence of them); only the detections are kept between
    the passes."""
    reopen = _reopen(frames)
    cutter = ContentShotCuts() if shot_cuts is None else None
    detections = []
    for index, frame in enumerate(reopen()):
        detections.append(detect(index, frame))
        if cutter is not None:
            cutter.add(frame)
    cuts = cutter.cuts if cutter is not None else list(shot_cuts or [])
    tracks = face_tracks(detections, cuts, min_track=min_track, min_face_size=min_face_size)
    log.debug("%d frames, shots cut at %s: %d face tracks", len(detections), cuts, len(tracks))
    return crop_tracks(reopen(), tracks)


def track_faces_s3fd(
    frames: FrameSource,
    net: S3FDNet,
    shot_cuts: Sequence[int] | None = None,
    min_track: int = MIN_TRACK,
    device: torch.device | str | None = None,
    conf_th: float = CONF_TH,
    scale: float = FACEDET_SCALE,
    min_face_size: float = MIN_FACE_SIZE,
) -> list[FaceTrack]:
    """syncnet_python's face tracks: S3FD (`detect_faces`) on every frame, tracked per shot, cropped.

    `shot_cuts`: first frames of new shots; None detects them (`ContentShotCuts`) in the detection
    pass; [] is one shot. `device`: where S3FD runs (the net is moved there); None leaves it where it is.
    """
    if device is not None:
        net = net.to(device)
    return track_and_crop(
        frames,
        lambda _index, frame: detect_faces(net, frame, conf_th=conf_th, scale=scale),
        shot_cuts,
        min_track=min_track,
        min_face_size=min_face_size,
    )


def landmark_boxes(faces: Sequence[Face]) -> np.ndarray:
    """(K, 5) boxes (x1, y1, x2, y2, 1.0) of MediaPipe faces (`synclip.face.landmarks.Face`): the bounding
    box of the 478 mesh points, unchanged.

    It stands for S3FD's box. The mesh spans the top of the forehead (point 10) to the chin (152) and
    cheek to cheek at the ears (234, 454), the extent WIDER FACE's boxes are drawn to contain (forehead,
    chin and cheeks; S3FD was trained on them), so no scale or shift is applied. How far S3FD's real
    boxes are from it is not measured (no published weights here). The crop depends on the box only through its
    centre and larger side (`smooth_track`); IoU tracking and the 100 px minimum see the whole box.
    """
    rows = [(*face.box, 1.0) for face in faces]
    return np.array(rows, np.float64).reshape(-1, 5)


def track_faces_mediapipe(
    frames: FrameSource,
    landmarker: str | Path,
    shot_cuts: Sequence[int] | None = None,
    min_track: int = MIN_TRACK,
    max_faces: int = 4,
    min_face_size: float = MIN_FACE_SIZE,
) -> list[FaceTrack]:
    """`track_faces_s3fd` with MediaPipe's FaceLandmarker (VIDEO mode, up to `max_faces` faces, the model
    file `landmarker`) for S3FD: the same shots, tracking and crops on `landmark_boxes`."""
    with FaceLandmarker(landmarker, max_faces=max_faces, fps=VIDEO_FPS, video=True) as detector:
        return track_and_crop(
            frames,
            lambda index, frame: landmark_boxes(detector.detect(frame, index)),
            shot_cuts,
            min_track=min_track,
            min_face_size=min_face_size,
        )
