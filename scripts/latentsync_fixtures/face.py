"""LatentSync's face crop, mask and paste-back run on a real photograph: tests/fixtures/latentsync/face.safetensors.

Upstream code run (from `root`): `ImageProcessor.affine_transform` (the 3 points from 106 landmarks, rounded,
`AlignRestore.align_warp_face`, Lanczos to R×R), `AlignRestore.restore_img` and `load_fixed_mask`. It needs
kornia==0.8.0, which is not a synclip dependency: install it apart with
`.venv/bin/pip install --no-deps --target /tmp/upstream-deps kornia==0.8.0 kornia_rs` (appended to sys.path
here). Stubbed in sys.modules because they cannot be satisfied here: `latentsync.utils.face_detector`
(InsightFace, no weights) and `latentsync.utils.util` (decord, matplotlib; only `read_video`/`write_video`
are imported from it, and never called).

In place of InsightFace, the detector is a stub that returns synclip's MediaPipe landmarks reduced to the 3
points (`synclip.face.latentsync.latentsync_points`), written into the 106 slots upstream averages; its
means of equal, already rounded points are the points themselves. AlignRestore runs in float32 on the
CPU (dtype=torch.float32): upstream's default is float16, and the published pipeline runs it in fp16 on
CUDA, so its crops differ from these by fp16 rounding of the frame, matrix and grid. The paste-back
resizes the face as `LipsyncPipeline.restore_video` does (torchvision bicubic, antialias) before
`restore_img`; importing the pipeline module would need diffusers and the whole model stack.

Frames: tests/fixtures/astronaut_face.png and 5 moved copies of the whole photo (shift, rotation, scale),
cut to the same 256×256 window, so the matrices' smoothing bias carries over a sequence.
"""

from __future__ import annotations

import sys
import types
from pathlib import Path

import cv2
import numpy as np
import torch
import torchvision.transforms.functional as TF
from torchvision import transforms

from scripts.latentsync_fixtures.common import write_fixture
from synclip.face.landmarks import FaceLandmarker
from synclip.face.latentsync import latentsync_points

UPSTREAM_DEPS = "/tmp/upstream-deps"  # kornia==0.8.0 (+ kornia_rs), installed with --target
REPO = Path(__file__).resolve().parents[2]
PHOTO = REPO / "tests" / "fixtures" / "astronaut_face.png"
SOURCE = Path("/tmp/skimage_x/skimage/data/astronaut.png")  # only for the moved copies, see frames()
WINDOW = (0, 96)  # top, left of the 256×256 window in astronaut.png
LANDMARKER = REPO / "models" / "pretrained" / "face_landmarker.task"
# (angle in degrees, scale, shift x, shift y) about the face, per frame after the first
MOVES = (
    (0.0, 1.0, 3.4, -2.1),
    (8.0, 1.0, 0.0, 0.0),
    (0.0, 1.6, 1.5, 2.5),
    (-5.0, 1.1, -2.0, 1.0),
    (3.0, 0.9, 2.0, 0),
)
FILES = [
    "latentsync/utils/affine_transform.py",
    "latentsync/utils/image_processor.py",
    "latentsync/utils/mask.png",
]
LEFT_SLOTS, RIGHT_SLOTS, NOSE_SLOTS = [43, 48, 49, 50, 51], [101, 102, 103, 104, 105], [74, 77, 83, 86]


def frames(photo_path: Path, source_path: Path) -> np.ndarray:
    """(6, 256, 256, 3) RGB uint8: the committed window, then moved copies of the whole photo cut to it."""
    window = cv2.cvtColor(cv2.imread(str(photo_path)), cv2.COLOR_BGR2RGB)
    photo = cv2.cvtColor(cv2.imread(str(source_path)), cv2.COLOR_BGR2RGB)
    top, left = WINDOW
    assert (photo[top : top + 256, left : left + 256] == window).all(), (
        "the committed window is not astronaut.png's"
    )
    centre = (left + 128.0, top + 125.0)
    out = [window]
    for angle, scale, dx, dy in MOVES:
        matrix = cv2.getRotationMatrix2D(centre, angle, scale)
        matrix[:, 2] += (dx, dy)
        moved = cv2.warpAffine(
            photo, matrix, photo.shape[1::-1], flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT
        )
        out.append(moved[top : top + 256, left : left + 256])
    return np.stack(out)


def landmarks(video: np.ndarray) -> np.ndarray:
    """(N, 478, 2) float32 MediaPipe landmarks of the one face on each frame (IMAGE mode)."""
    with FaceLandmarker(LANDMARKER, video=False) as landmarker:
        faces = [landmarker.detect(frame) for frame in video]
    assert all(len(found) == 1 for found in faces), [len(found) for found in faces]
    return np.stack([found[0].points for found in faces])


def generated_face(crop: np.ndarray) -> np.ndarray:
    """(R, R, 3) uint8 stand-in for a generated face: the crop with a dark mouth and a colour ramp below the
    nose, so the paste-back visibly changes the frame."""
    size = crop.shape[0]
    face = crop.copy()
    rows = np.linspace(0, 1, size, dtype=np.float32)[:, None, None]
    ramp = np.array([60, -30, 20], np.float32) * rows
    lower = slice(size // 2, size)
    face[lower] = np.clip(face[lower].astype(np.float32) + ramp[lower], 0, 255).astype(np.uint8)
    cv2.ellipse(face, (size // 2, int(size * 0.66)), (size // 6, size // 14), 0, 0, 360, (40, 10, 20), -1)
    return face


def unit(face: np.ndarray) -> torch.Tensor:
    """uint8 (R, R, 3) → (3, R, R) float32 in [−1, 1], as the test builds it."""
    return torch.from_numpy(face).permute(2, 0, 1).float() / 127.5 - 1


def generate(root: Path) -> None:
    if UPSTREAM_DEPS not in sys.path:
        sys.path.append(UPSTREAM_DEPS)
    import kornia

    assert kornia.__version__ == "0.8.0", kornia.__version__
    util = types.ModuleType("latentsync.utils.util")
    util.read_video = util.write_video = None
    detector = types.ModuleType("latentsync.utils.face_detector")
    detector.FaceDetector = None
    sys.modules.setdefault("latentsync.utils.util", util)
    sys.modules.setdefault("latentsync.utils.face_detector", detector)
    from latentsync.utils.affine_transform import AlignRestore
    from latentsync.utils.image_processor import ImageProcessor, load_fixed_mask

    video = frames(PHOTO, SOURCE)
    points478 = landmarks(video)
    points = latentsync_points(points478)

    class StubDetector:
        """InsightFace's call contract: (bbox, (106, 2) landmarks); only upstream's slots are filled."""

        def __init__(self) -> None:
            self.index = 0

        def __call__(self, image: np.ndarray) -> tuple[list[int], np.ndarray]:
            marks = np.zeros((106, 2))
            left, right, nose = points[self.index]
            marks[LEFT_SLOTS], marks[RIGHT_SLOTS], marks[NOSE_SLOTS] = left, right, nose
            self.index += 1
            return [0, 0, 1, 1], marks

    tensors: dict[str, np.ndarray | torch.Tensor] = {
        "frames": video,
        "points478": points478,
        "points": points,
    }
    for resolution in (128, 256, 512):
        processor = ImageProcessor.__new__(ImageProcessor)  # __init__ would build InsightFace on CUDA
        processor.resolution = resolution
        processor.restorer = AlignRestore(resolution=resolution, device="cpu", dtype=torch.float32)
        processor.face_detector = StubDetector()
        raw = AlignRestore(
            resolution=resolution, device="cpu", dtype=torch.float32
        )  # same state, unresized crops
        crops, matrices, raws = [], [], []
        for index, frame in enumerate(video):
            face, _box, matrix = processor.affine_transform(frame)
            raw_face, raw_matrix = raw.align_warp_face(frame.copy(), landmarks3=points[index], smooth=True)
            assert torch.equal(raw_matrix, matrix)
            crops.append(face.permute(1, 2, 0).numpy())
            matrices.append(matrix[0])
            raws.append(raw_face)
        tensors[f"matrices_{resolution}"] = torch.stack(matrices)
        if resolution == 128:
            tensors["crops_128"] = np.stack(crops)
        if resolution == 256:
            tensors["crops_256"] = np.stack([crops[i] for i in (0, 2)])
            tensors["warped_256"] = np.stack([raws[i] for i in (0, 2)])  # (2, 280, 210, 3) before the stretch
        if resolution in (128, 256):
            chosen = (0, 2, 3) if resolution == 256 else (3,)
            faces, pasted = [], []
            restorer = AlignRestore(resolution=resolution, device="cpu", dtype=torch.float32)
            for index in chosen:
                face = generated_face(crops[index])
                height, width = raws[index].shape[:2]
                resized = TF.resize(
                    unit(face),
                    size=(height, width),
                    interpolation=transforms.InterpolationMode.BICUBIC,
                    antialias=True,
                )
                faces.append(face)
                pasted.append(restorer.restore_img(video[index], resized, matrices[index][None]))
            tensors[f"paste_index_{resolution}"] = torch.tensor(chosen)
            tensors[f"paste_faces_{resolution}"] = np.stack(faces)
            tensors[f"pasted_{resolution}"] = np.stack(pasted)
    for resolution in (256, 512):
        mask = load_fixed_mask(resolution, str(root / "latentsync" / "utils" / "mask.png"))
        assert (mask == mask[0:1]).all(), "mask channels differ"
        levels = (mask[0] * 255).round()
        assert torch.equal(levels / 255, mask[0]), "mask is not k / 255"
        tensors[f"mask_{resolution}"] = levels.to(torch.uint8)
    write_fixture(
        "face",
        tensors,
        root,
        FILES,
        notes={
            "photo": "tests/fixtures/astronaut_face.png (+ moved copies of skimage astronaut.png, MOVES)",
            "moves": MOVES,
            "dtype": "AlignRestore in float32 on the CPU (upstream default float16; the pipeline runs fp16 on CUDA)",
            "kornia": kornia.__version__,
            "torch": torch.__version__,
            "opencv": cv2.__version__,
            "faces": "paste_faces_R uint8 (R, R, 3); upstream got face = uint8 / 127.5 - 1, (3, R, R) float32, "
            "resized to (h, w) with torchvision bicubic antialias, then restore_img",
            "masks": "mask_R = round(load_fixed_mask(R)[0] * 255), channels equal, exactly k / 255",
        },
    )
