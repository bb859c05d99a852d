"""The one face tracker: MediaPipe's landmarks on every frame of a video, reduced to the chosen face.
Glossary: N frames, K landmarks of a named subset.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import numpy as np

from synclip.face.align import stable_points, track_transforms
from synclip.face.landmarks import FaceLandmarker


@dataclass
class FaceTrack:
    """What the tracker saw, frame by frame."""

    counts: np.ndarray  # (N,) faces found
    widths: np.ndarray  # (N,) width of the largest face, NaN without one
    stable: np.ndarray  # (N, 4, 2) stable points of the chosen face, NaN where it is absent
    points: dict[str, np.ndarray] = field(
        default_factory=dict
    )  # name → (N, K, 2) landmarks of the chosen face

    @property
    def found(self) -> np.ndarray:
        """(N,) bool: the chosen face is on the frame."""
        return ~np.isnan(self.stable).any(axis=(1, 2))

    @property
    def several(self) -> int:
        """Frames with more faces than one."""
        return int((self.counts > 1).sum())

    def alignments(self, resolution: int, smoothing_frames: float) -> np.ndarray:
        """(N, 2, 3) smoothed source → crop matrices (`track_transforms`); all NaN without any face."""
        if not self.found.any():
            return np.full((len(self.stable), 2, 3), np.nan)
        return track_transforms(self.stable, resolution, smoothing_frames)


class FaceTracker:
    """Feed frames in order (`add`); `result()` is the track. Use as a context manager.

    The chosen face is the `face_index`-th largest (0: the largest); with `only_single` a frame's
    face counts only when it is the frame's one face. `keep` names landmark subsets of the chosen
    face to record, e.g. {"lips": LIPS}.

    Preprocessing keeps a frame's face only when it is the frame's only one (`only_single`); lip sync
    follows the `face_index`-th largest face and keeps its outline for the paste-back. Both smooth the
    stable points into alignments with `synclip.face.align.track_transforms` (`FaceTrack.alignments`).
    """

    def __init__(
        self,
        landmarker: str | Path,
        fps: Fraction | float,
        face_index: int = 0,
        only_single: bool = False,
        keep: Mapping[str, tuple[int, ...]] | None = None,
    ) -> None:
        self.detector = FaceLandmarker(landmarker, max_faces=max(2, face_index + 1), fps=float(fps))
        self.face_index, self.only_single = face_index, only_single
        self.keep = dict(keep or {})
        self.counts: list[int] = []
        self.widths: list[float] = []
        self.stable: list[np.ndarray] = []
        self.points: dict[str, list[np.ndarray]] = {name: [] for name in self.keep}

    def add(self, index: int, frame: np.ndarray) -> None:
        """The faces of frame `index` (RGB (H, W, 3) uint8); indices must increase."""
        faces = self.detector.detect(frame, index)
        self.counts.append(len(faces))
        self.widths.append(faces[0].width if faces else np.nan)
        if self.only_single:
            face = faces[0] if len(faces) == 1 else None
        else:
            face = faces[self.face_index] if len(faces) > self.face_index else None
        self.stable.append(stable_points(face) if face is not None else np.full((4, 2), np.nan))
        for name, indices in self.keep.items():
            chosen = face.points[list(indices)] if face is not None else np.full((len(indices), 2), np.nan)
            self.points[name].append(chosen)

    def result(self) -> FaceTrack:
        return FaceTrack(
            np.array(self.counts, int),
            np.array(self.widths, dtype=np.float64),
            np.array(self.stable, dtype=np.float64).reshape(-1, 4, 2),
            {
                name: np.array(points).reshape(-1, len(self.keep[name]), 2)
                for name, points in self.points.items()
            },
        )

    def __enter__(self) -> FaceTracker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.detector.close()


def track_faces(
    frames: Iterable[np.ndarray], landmarker: str | Path, fps: Fraction | float, **options
) -> FaceTrack:
    """`FaceTracker(landmarker, fps, **options)` over every frame of `frames`."""
    with FaceTracker(landmarker, fps, **options) as tracker:
        for index, frame in enumerate(frames):
            tracker.add(index, frame)
    return tracker.result()
