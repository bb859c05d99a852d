"""Face detection + 478-point landmarks with MediaPipe's FaceLandmarker (Tasks API, local model)."""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

import cv2
import numpy as np

log = logging.getLogger(__name__)


@contextlib.contextmanager
def _quiet_stderr():
    """Silence file descriptor 2 while MediaPipe's C++ side prints its start-up notices.

    They bypass Python's logging (absl/TFLite write straight to fd 2) and would repeat for every
    source a worker processes; real failures still surface as Python exceptions.
    """
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "wb") as null:
            os.dup2(null.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


# MediaPipe face-mesh indices used by synclip.
LEFT_EYE = (33, 133, 159, 145, 160, 144, 158, 153)  # the subject's right eye, on the image's left
RIGHT_EYE = (362, 263, 386, 374, 385, 380, 387, 373)
NOSE_BRIDGE = 168
NOSE_TIP = 4
MOUTH_LEFT, MOUTH_RIGHT = 61, 291
INNER_LIP_TOP, INNER_LIP_BOTTOM = 13, 14
FOREHEAD, CHIN = 10, 152
# the lips (outer and inner contours)
LIPS = (
    61,
    146,
    91,
    181,
    84,
    17,
    314,
    405,
    321,
    375,
    291,
    409,
    270,
    269,
    267,
    0,
    37,
    39,
    40,
    185,
    78,
    95,
    88,
    178,
    87,
    14,
    317,
    402,
    318,
    324,
    308,
    415,
    310,
    311,
    312,
    13,
    82,
    81,
    80,
    191,
)
# the face oval (MediaPipe's FACEMESH_FACE_OVAL contour)
FACE_OVAL = (
    10,
    338,
    297,
    332,
    284,
    251,
    389,
    356,
    454,
    323,
    361,
    288,
    397,
    365,
    379,
    378,
    400,
    377,
    152,
    148,
    176,
    149,
    150,
    136,
    172,
    58,
    132,
    93,
    234,
    127,
    162,
    21,
    54,
    103,
    67,
    109,
)


@dataclass(frozen=True)
class Face:
    points: np.ndarray  # (478, 2) pixels, x right, y down

    @property
    def box(self) -> tuple[float, float, float, float]:
        x0, y0 = self.points.min(axis=0)
        x1, y1 = self.points.max(axis=0)
        return float(x0), float(y0), float(x1), float(y1)

    @property
    def width(self) -> float:
        x0, _, x1, _ = self.box
        return x1 - x0

    @property
    def area(self) -> float:
        x0, y0, x1, y1 = self.box
        return (x1 - x0) * (y1 - y0)


class FaceLandmarker:
    """MediaPipe FaceLandmarker over a sequence of frames (VIDEO mode: it tracks between frames).

    Use as a context manager; `detect(frame, index)` needs strictly increasing indices. The model
    file comes from `pretrained.face_landmarker` (see models/README.md); it is checked by
    `synclip.pretrained.require` before use. Landmarks are returned in pixels of the given frame.
    """

    def __init__(
        self,
        model_path: str | Path,
        max_faces: int = 3,
        min_confidence: float = 0.5,
        fps: float = 25.0,
        video: bool = True,
    ) -> None:
        from mediapipe.tasks.python import BaseOptions, vision

        mode = vision.RunningMode.VIDEO if video else vision.RunningMode.IMAGE
        options = vision.FaceLandmarkerOptions(
            base_options=BaseOptions(model_asset_path=str(model_path)),
            running_mode=mode,
            num_faces=max_faces,
            min_face_detection_confidence=min_confidence,
            min_face_presence_confidence=min_confidence,
            min_tracking_confidence=min_confidence,
        )
        with _quiet_stderr():
            self._landmarker = vision.FaceLandmarker.create_from_options(options)
        self._video = video
        self._warm = False
        self._ms_per_frame = 1000.0 / fps

    def detect(self, frame: np.ndarray, index: int = 0) -> list[Face]:
        """Faces in one RGB frame (H, W, 3) uint8, largest first."""
        import mediapipe as mp

        height, width = frame.shape[:2]
        image = mp.Image(image_format=mp.ImageFormat.SRGB, data=np.ascontiguousarray(frame))
        with _quiet_stderr() if not self._warm else contextlib.nullcontext():
            if self._video:
                result = self._landmarker.detect_for_video(image, int(round(index * self._ms_per_frame)))
            else:
                result = self._landmarker.detect(image)
        self._warm = True
        faces = [
            Face(np.array([(p.x * width, p.y * height) for p in landmarks], dtype=np.float32))
            for landmarks in result.face_landmarks
        ]
        return sorted(faces, key=lambda face: -face.area)

    def close(self) -> None:
        self._landmarker.close()

    def __enter__(self) -> FaceLandmarker:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self.close()


def find_small_faces(
    landmarker: FaceLandmarker, frame: np.ndarray, grids: tuple[int, ...] = (3, 6)
) -> list[Face]:
    """Faces too small for the detector at full view: search zoomed, half-overlapping tiles.

    The detector needs a face to span about a fifth of its input, so a g×g grid of tiles finds
    faces down to roughly 1/(2.5·g) of the frame; grids 3 and 6 reach about 7 % of the frame.
    `landmarker` must be in IMAGE mode. Faces are returned in the frame's pixel coordinates.
    """
    height, width = frame.shape[:2]
    found: list[Face] = []
    for grid in grids:
        tile_h, tile_w = 2 * height // (grid + 1), 2 * width // (grid + 1)
        for top in np.linspace(0, height - tile_h, grid).astype(int):
            for left in np.linspace(0, width - tile_w, grid).astype(int):
                tile = frame[top : top + tile_h, left : left + tile_w]
                scale = max(1.0, 512 / max(tile_w, tile_h))
                zoomed = cv2.resize(tile, None, fx=scale, fy=scale, interpolation=cv2.INTER_CUBIC)
                for face in landmarker.detect(zoomed):
                    found.append(Face(face.points / scale + np.array([left, top], np.float32)))
        if found:
            break
    # the tiles overlap: keep one face per place
    unique: list[Face] = []
    for face in sorted(found, key=lambda f: -f.area):
        centre = face.points.mean(axis=0)
        if all(np.linalg.norm(centre - other.points.mean(axis=0)) > 0.5 * other.width for other in unique):
            unique.append(face)
    return unique
