"""Visual fidelity as lip-sync papers report it: FVD (LatentSync's I3D protocol) and FID (pytorch-fid).

Glossary: B videos, F frames of a window, N frames of a clip or a set, H/W pixels, K I3D features.
The networks are the published ones, read from local files: the I3D TorchScript `i3d_torchscript.pt` and
pytorch-fid's `pt_inception-2015-12-05-6726825d.pth`; nothing here downloads.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import scipy.linalg
import torch
import torch.nn.functional as F
import torchvision
from einops import rearrange

from synclip.artifacts import load_published_state
from synclip.errors import UserError
from synclip.face.landmarks import FaceLandmarker

# LatentSync eval/fvd.py: raw I3D features before the softmax, input used as given
I3D_CALL = {"rescale": False, "resize": False, "return_features": True}
FVD_START, FVD_LENGTH, FVD_SIZE = 20, 16, 224  # eval/eval_fvd.py: frames 20:36, 224×224 face crops


def _first_line(error: BaseException) -> str:
    return (str(error).strip().splitlines() or [""])[0][:200]


def _device_of(model: torch.nn.Module) -> torch.device:
    parameter = next(iter(model.parameters()), None)
    return parameter.device if parameter is not None else torch.device("cpu")


def _check_uint8(array: np.ndarray, name: str, layout: str, ndim: int) -> None:
    if array.ndim != ndim or array.shape[-1] != 3 or array.dtype != np.uint8 or len(array) == 0:
        raise ValueError(f"{name} must be non-empty {layout} RGB uint8, got {array.shape} {array.dtype}")


# --- FVD ----------------------------------------------------------------------------------------------


def load_i3d(path: str | Path) -> torch.jit.ScriptModule:
    """The FVD network: the I3D TorchScript `i3d_torchscript.pt` (LatentSync's checkpoints/auxiliary/), on
    the CPU in eval mode.

    Checked once: it must take the published call `model(x, rescale=False, resize=False,
    return_features=True)` on one (1, 3, 16, 224, 224) window of zeros and return (1, K) features (K =
    400 for the published file). That is the window LatentSync feeds it, and smaller ones need not pass:
    Kinetics I3D ends in a 2×7×7 average pool over the stride-32 map of a 224 px input. A missing,
    unreadable or non-conforming file raises UserError naming it.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such file (the FVD I3D, i3d_torchscript.pt)")
    try:
        with warnings.catch_warnings():
            # the published network exists only as TorchScript; there is nothing to switch to
            warnings.filterwarnings(
                "ignore", message=r".*torch\.jit\.load.* is deprecated", category=FutureWarning
            )
            model = torch.jit.load(str(path), map_location="cpu")
    except RuntimeError as error:
        raise UserError(f"{path}: not a TorchScript file ({_first_line(error)})") from None
    model.eval()
    probe = torch.zeros(1, 3, FVD_LENGTH, FVD_SIZE, FVD_SIZE)
    call = "model(x, rescale=False, resize=False, return_features=True) on (1, 3, 16, 224, 224)"
    try:
        with torch.no_grad():
            out = model(probe, **I3D_CALL)
    except RuntimeError as error:
        raise UserError(f"{path}: does not take the I3D call {call} ({_first_line(error)})") from None
    if not isinstance(out, torch.Tensor) or out.ndim != 2 or out.shape[0] != 1:
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise UserError(f"{path}: the I3D call {call} returned {got}, not (1, K) features")
    return model


def _upstream_crop(frame: np.ndarray, box: tuple[float, float, float, float]) -> np.ndarray:
    """eval_fvd.FVD.detect_face's crop of a (x0, y0, x1, y1) pixel box: corner and size truncated to
    int, the corner clamped to the frame before the far edge is computed from it (so a box over the
    left or top border keeps its size and shifts inwards), the far edge clamped to the frame."""
    height, width = frame.shape[:2]
    x0, y0, x1, y1 = box
    left, top = max(0, int(x0)), max(0, int(y0))
    right, bottom = min(width, left + int(x1 - x0)), min(height, top + int(y1 - y0))
    return frame[top:bottom, left:right]


def fvd_window(
    frames_rgb: np.ndarray,
    landmarker_path: str | Path,
    start: int = FVD_START,
    length: int = FVD_LENGTH,
    size: int = FVD_SIZE,
) -> np.ndarray:
    """(N, H, W, 3) RGB uint8 clip → (F, size, size, 3) uint8 face crops of frames start:start+F.

    LatentSync's eval_fvd.py: frames 20:36, on each the first detected face's box cut out (no margin)
    and resized to 224×224 with INTER_AREA. Upstream's box comes from MediaPipe's FaceDetection
    solution (model_selection 0, min confidence 0.5), which MediaPipe 1.2 no longer has: here it is the
    bounding box of the largest face's 478 FaceLandmarker points (IMAGE mode, each frame on its own,
    min confidence 0.5). That box reaches from the upper forehead to the chin and from cheek to cheek,
    so it differs from the detector's, and FVDs from the two crops are not interchangeable (the size
    of the difference is not measured here).

    A clip shorter than start + F raises ValueError (upstream silently takes fewer frames, and its
    "fewer than 16" check returns the error instead of raising it); so does a frame without a face
    (upstream raises "Face not detected").
    """
    _check_uint8(frames_rgb, "frames_rgb", "(N, H, W, 3)", 4)
    if len(frames_rgb) < start + length:
        raise ValueError(
            f"the clip has {len(frames_rgb)} frames; the FVD window is frames {start}:{start + length}, "
            f"so it needs {start + length}"
        )
    crops = []
    with FaceLandmarker(landmarker_path, min_confidence=0.5, video=False) as landmarker:
        for index in range(start, start + length):
            faces = landmarker.detect(frames_rgb[index])
            if not faces:
                raise ValueError(f"frame {index}: no face found (the FVD window {start}:{start + length})")
            crop = _upstream_crop(frames_rgb[index], faces[0].box)
            if crop.size == 0:
                raise ValueError(f"frame {index}: the face box {faces[0].box} lies outside the frame")
            crops.append(cv2.resize(crop, (size, size), interpolation=cv2.INTER_AREA))
    return np.stack(crops)


@torch.no_grad()
def i3d_features(
    model: torch.jit.ScriptModule,
    windows: np.ndarray,
    batch: int = 8,
    device: torch.device | str | None = None,
) -> np.ndarray:
    """(B, F, 224, 224, 3) uint8 windows → (B, K) float64 raw I3D features (before the softmax).

    As LatentSync feeds the I3D: uint8 / 255 in float32, (B, C, F, H, W), rescale=False. The published
    I3D's own rescale flag would map [0, 255] to the [−1, 1] its layers were trained on; LatentSync's
    [0, 1] input is kept so that FVDs compare with its table. The model is moved to `device` (default:
    where it is).
    """
    _check_uint8(windows, "windows", "(B, F, H, W, 3)", 5)
    return _batched(lambda x: model(x, **I3D_CALL), model, windows, "b f h w c -> b c f h w", batch, device)


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Fréchet distance between Gaussians fitted to (n, d) and (m, d) feature sets:
    ‖μa − μb‖² + tr(Σa + Σb − 2·(Σa·Σb)^½), real part, with np.cov's unbiased covariances.

    The formula of LatentSync's `compute_fvd(a, b)` and pytorch-fid's `calculate_frechet_distance`
    (which also retries with a 1e-6 ridge when the root is not finite and raises on a large imaginary
    part; here, as in LatentSync, the real part is taken). Symmetric in a and b up to the root's rounding.
    With fewer samples than features (LatentSync: 30 videos × 400), both covariances live in the span
    of the centred samples, so they are written in an orthonormal basis of it first: sqrtm then runs on an
    (n + m)² matrix instead of d², with the same trace; upstream's d×d root only adds rounding noise
    outside the span (measured ≤ 1e-7 relative).
    """
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1] or min(len(a), len(b)) < 2:
        raise ValueError(
            f"need two (n, d) feature sets with n ≥ 2 and the same d, got {a.shape} and {b.shape}"
        )
    mean_a, mean_b = a.mean(axis=0), b.mean(axis=0)
    if len(a) + len(b) < a.shape[1]:
        basis, _ = np.linalg.qr(np.concatenate([a - mean_a, b - mean_b]).T)  # (d, n + m), orthonormal
        a, b = a @ basis, b @ basis
    sigma_a = np.atleast_2d(np.cov(a, rowvar=False))
    sigma_b = np.atleast_2d(np.cov(b, rowvar=False))
    with warnings.catch_warnings():
        # with fewer samples than features Σa·Σb is singular or ill-conditioned by construction, yet its
        # root exists (the product of two PSD matrices has real eigenvalues ≥ 0); upstream's disp=False
        # silences the same warnings
        warnings.filterwarnings("ignore", category=scipy.linalg.LinAlgWarning)
        root = scipy.linalg.sqrtm(sigma_a @ sigma_b)
    value = np.square(mean_a - mean_b).sum() + np.trace(sigma_a + sigma_b - 2 * root)
    return float(np.real(value))


def fvd(
    model: torch.jit.ScriptModule,
    real_windows: np.ndarray,
    fake_windows: np.ndarray,
    batch: int = 8,
    device: torch.device | str | None = None,
) -> float:
    """FVD between two sets of (B, F, 224, 224, 3) uint8 windows (`fvd_window`), LatentSync's protocol.

    eval_fvd calls `compute_our_fvd(real, fake)`, whose parameters are named (fake, real), so its
    compute_fvd gets the real features first; the same order here.
    """
    real = i3d_features(model, real_windows, batch, device)
    fake = i3d_features(model, fake_windows, batch, device)
    return frechet_distance(real, fake)


# --- FID ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FidInceptionConfig:
    num_classes: int = 1008  # the 2015-12-05 TF graph's classifier; only fc's shape, unused by the features
    image_size: int = 299  # every image is resized to this before the network


class FidInception(torchvision.models.Inception3):
    """pytorch-fid's FID Inception: torchvision's Inception3 (no aux head) with the TF graph's patched
    blocks (pyiqa's copies of pytorch-fid's FIDInceptionA/C/E_1/E_2), so the state dict keys are those
    of `pt_inception-2015-12-05-6726825d.pth`.

    forward: (B, 3, H, W) float in [0, 1] → (B, 2048) final average-pool features, preprocessed as
    pytorch-fid does (bilinear resize to 299 with align_corners=False, then 2x − 1).
    """

    def __init__(self, config: FidInceptionConfig) -> None:
        # imported here: `import pyiqa` loads every metric it has (seconds)
        from pyiqa.archs.inception import FIDInceptionA, FIDInceptionC, FIDInceptionE_1, FIDInceptionE_2

        super().__init__(num_classes=config.num_classes, aux_logits=False, init_weights=False)
        self.config = config
        self.Mixed_5b = FIDInceptionA(192, pool_features=32)
        self.Mixed_5c = FIDInceptionA(256, pool_features=64)
        self.Mixed_5d = FIDInceptionA(288, pool_features=64)
        self.Mixed_6b = FIDInceptionC(768, channels_7x7=128)
        self.Mixed_6c = FIDInceptionC(768, channels_7x7=160)
        self.Mixed_6d = FIDInceptionC(768, channels_7x7=160)
        self.Mixed_6e = FIDInceptionC(768, channels_7x7=192)
        self.Mixed_7b = FIDInceptionE_1(1280)
        self.Mixed_7c = FIDInceptionE_2(2048)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        size = self.config.image_size
        x = F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False)
        x = 2 * x - 1
        # pytorch-fid's InceptionV3 blocks 0-3, in order, up to the final average pool
        for layer in (
            self.Conv2d_1a_3x3,
            self.Conv2d_2a_3x3,
            self.Conv2d_2b_3x3,
            self.maxpool1,
            self.Conv2d_3b_1x1,
            self.Conv2d_4a_3x3,
            self.maxpool2,
            self.Mixed_5b,
            self.Mixed_5c,
            self.Mixed_5d,
            self.Mixed_6a,
            self.Mixed_6b,
            self.Mixed_6c,
            self.Mixed_6d,
            self.Mixed_6e,
            self.Mixed_7a,
            self.Mixed_7b,
            self.Mixed_7c,
            self.avgpool,
        ):
            x = layer(x)
        return rearrange(x, "b c 1 1 -> b c")


def load_fid_inception(path: str | Path, config: FidInceptionConfig | None = None) -> FidInception:
    """pytorch-fid's `pt_inception-2015-12-05-6726825d.pth` (a state dict) as a FidInception in eval mode,
    strictly (`synclip.artifacts.load_published_state`: an error names the file and the keys)."""
    model = FidInception(config or FidInceptionConfig())
    what = "pytorch-fid's FID Inception, pt_inception-2015-12-05-6726825d.pth"
    return load_published_state(model, path, what).requires_grad_(False)


@torch.no_grad()
def fid_features(
    model: FidInception, frames: np.ndarray, batch: int = 32, device: torch.device | str | None = None
) -> np.ndarray:
    """(N, H, W, 3) RGB uint8 frames → (N, 2048) float64 FID Inception features (uint8 / 255 in, as
    pytorch-fid's ToTensor). The model is moved to `device` (default: where it is)."""
    _check_uint8(frames, "frames", "(N, H, W, 3)", 4)
    return _batched(model, model, frames, "n h w c -> n c h w", batch, device)


def _batched(
    call: Callable[[torch.Tensor], torch.Tensor],
    model: torch.nn.Module,
    pixels: np.ndarray,
    layout: str,
    batch: int,
    device: torch.device | str | None,
) -> np.ndarray:
    """`call` on uint8 `pixels` / 255 in float32, `batch` at a time, rearranged by `layout`, on `device`
    (default: the model's; the model is moved there) → float64 (N, K)."""
    device = torch.device(device) if device is not None else _device_of(model)
    model.to(device)
    features = []
    for first in range(0, len(pixels), batch):
        chunk = torch.from_numpy(np.ascontiguousarray(pixels[first : first + batch])).to(device)
        features.append(call(rearrange(chunk, layout).float() / 255.0).double().cpu())
    return torch.cat(features).numpy()


def fid(
    model: FidInception,
    real_frames: np.ndarray,
    fake_frames: np.ndarray,
    batch: int = 32,
    device: torch.device | str | None = None,
) -> float:
    """FID between two sets of (N, H, W, 3) uint8 frames, as Wav2Lip and Hallo report it (pytorch-fid
    over all frames)."""
    return frechet_distance(
        fid_features(model, real_frames, batch, device), fid_features(model, fake_frames, batch, device)
    )
