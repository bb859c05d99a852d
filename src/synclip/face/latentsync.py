"""LatentSync's face front end as an option: its 3-point alignment to a 210×280 crop stretched to R×R, its
fixed mask and its paste-back, on MediaPipe's landmarks.
Glossary: N frames, R crop resolution, H/W frame pixels, h/w the crop before the stretch (280×210 at R = 256).

Re-implemented from bytedance/LatentSync (Apache-2.0) at a229c39: `latentsync/utils/affine_transform.py`
(`AlignRestore`, itself adapted from StyleSync), `latentsync/utils/image_processor.py` (the 3 points,
`load_fixed_mask`) and `LipsyncPipeline.restore_video`. Upstream warps with kornia; kornia is not a
dependency, so `_warp` re-does kornia 0.8's `warp_affine` (align_corners=True, bilinear, fill) with
torch's `affine_grid`/`grid_sample`, in the same float32 steps. tests/test_latentsync_face.py checks all of
it against fixtures made with upstream's own code (scripts/latentsync_fixtures/face.py).
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np
import torch
import torch.nn.functional as F

# MediaPipe face-mesh groups standing in for InsightFace-106's (upstream: mean of {43, 48, 49, 50, 51}, of
# {101..105} and of {74, 77, 83, 86}). The eyebrow centre is the mean of both eyebrow contours (upper
# 70..107, lower 46..55), so it sits mid-brow whichever contour InsightFace's five points follow.
LEFT_BROW = (70, 63, 105, 66, 107, 46, 53, 52, 65, 55)  # the subject's right brow, on the image's left
RIGHT_BROW = (336, 296, 334, 293, 300, 276, 283, 282, 295, 285)
# Nose centre: two midline points (dorsum 195 and 5, above the tip) and a symmetric pair on the upper alae
# (48, 278), like upstream's two midline + two side points (as far as InsightFace's layout is known here).
# Chosen by geometry on the frontal astronaut fixture: their mean lies 0.62 brow-separations below the
# brows (the template's own nose point: 0.49; the tip 4: 0.69), which puts the nose base (2) on rows
# 126..128 of 256, at the last row the mask keeps (127), the upper lip inside the generated region
# (row 141) and the chin (152) near row 212, 30 rows above the mask's lower edge (242): LatentSync's mask
# keeps the nose and generates mouth and jaw. InsightFace itself could not be run here (no weights).
NOSE = (195, 5, 48, 278)
# the landmarks to keep from `FaceTracker(..., keep={"latentsync": KEPT})`, in this order
KEPT = LEFT_BROW + RIGHT_BROW + NOSE

# upstream's template for (left brow, right brow, nose) in units of `ratio`, and the crop (w, h) = (75, 100)
TEMPLATE = np.array([[17.0, 20.0], [58.0, 20.0], [37.5, 40.0]])
CROP_UNITS = (75, 100)
RATIO_PER_PIXEL = 2.8 / 256  # ratio = 2.8 · R / 256
SMOOTH_PREVIOUS = 0.2  # the nose bias is an EMA: 0.2 · previous + 0.8 · current
FILL = 127.0  # grey outside the frame, in pixel values

# LatentSync's `latentsync/utils/mask.png` (Apache-2.0), measured: 256×256, 0 = generate, 255 = keep,
# identical in its three channels, 40.70 % generated. Generated: rows 95..242, columns LEFT..RIGHT
# (inclusive) per row, except the nose window (rows 95..127, columns 78..177), which is kept.
MASK_SIZE = 256
MASK_TOP = 95
# first and last generated column of rows MASK_TOP.. (148 rows), as text: a table, not code
_MASK_LEFT_TEXT = """
    9 9 9 9 9 9 9 9 9 9 9 9 9 9 9 9 9 9 9 9 9 9 9 9 9 9 9 9 9 9 9 9 9 9 9 9 9 9 9 9 9 10 10 10 10 10
    10 10 10 10 10 10 10 10 10 11 11 11 11 11 11 11 11 11 11 11 11 11 11 12 12 12 12 12 12 12 13 13
    14 14 15 15 16 16 17 18 18 19 19 20 21 21 22 22 23 24 25 26 26 27 28 29 30 31 32 33 34 34 35 36
    37 38 39 40 42 43 44 45 47 48 49 51 52 54 56 57 59 60 62 64 66 68 70 72 74 76 78 80 82 85 87 90
    93 95 99 104 108 131
"""
_MASK_RIGHT_TEXT = """
    246 246 246 246 246 246 246 246 246 246 246 246 246 246 246 246 246 246 246 246 246 246 246 246
    246 246 246 246 246 246 246 246 246 247 247 247 247 247 247 247 246 246 246 246 246 246 246 246
    246 246 246 246 246 246 245 245 245 245 245 245 245 245 245 245 245 245 245 245 244 244 244 244
    244 244 244 243 243 242 242 241 241 240 240 239 238 238 237 236 236 235 234 234 233 232 232 231
    230 230 229 228 228 227 226 225 224 223 223 222 221 220 219 218 217 216 215 214 213 212 211 210
    208 207 206 204 203 202 200 199 197 196 194 192 191 189 187 185 183 180 178 175 173 171 168 166
    164 160 156 152
"""
MASK_LEFT = tuple(int(column) for column in _MASK_LEFT_TEXT.split())
MASK_RIGHT = tuple(int(column) for column in _MASK_RIGHT_TEXT.split())
MASK_NOSE = (95, 127, 78, 177)  # kept window: first row, last row, first column, last column


def _group_means(points: np.ndarray, groups: Sequence[Sequence[int]]) -> np.ndarray:
    """(..., K, 2) landmarks → (..., 3, 2) group means, rounded to whole pixels as upstream (np.round)."""
    points = np.asarray(points, dtype=np.float64)
    return np.round(np.stack([points[..., list(group), :].mean(axis=-2) for group in groups], axis=-2))


def latentsync_points(face_points: np.ndarray) -> np.ndarray:
    """(..., 478, 2) MediaPipe landmarks → (..., 3, 2) left brow, right brow, nose centre (NaN stays NaN)."""
    if face_points.shape[-2:] != (478, 2):
        raise ValueError(f"expected (..., 478, 2) MediaPipe landmarks, got {face_points.shape}")
    return _group_means(face_points, (LEFT_BROW, RIGHT_BROW, NOSE))


def kept_points(kept: np.ndarray) -> np.ndarray:
    """(..., len(KEPT), 2) landmarks kept as `KEPT` by the tracker → (..., 3, 2) as `latentsync_points`."""
    if kept.shape[-2:] != (len(KEPT), 2):
        raise ValueError(f"expected (..., {len(KEPT)}, 2) points in KEPT's order, got {kept.shape}")
    ends = np.cumsum([len(LEFT_BROW), len(RIGHT_BROW), len(NOSE)])
    groups = [range(start, end) for start, end in zip((0, *ends[:-1]), ends, strict=True)]
    return _group_means(kept, groups)


def _procrustes(points: np.ndarray, template: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(2, 3) similarity mapping `points` (3, 2) onto `template` and the template's nose minus the
    points' nose, both normalised (centred, divided by the std of all coordinates, torch's unbiased one)."""
    c1, c2 = points.mean(axis=0), template.mean(axis=0)
    s1, s2 = (points - c1).std(ddof=1), (template - c2).std(ddof=1)
    n1, n2 = (points - c1) / s1, (template - c2) / s2
    u, _, vh = np.linalg.svd(n1.T @ n2)
    v = vh.T
    rotation = v @ u.T
    if np.linalg.det(rotation) < 0:  # no reflections
        v[:, -1] = -v[:, -1]
        rotation = v @ u.T
    matrix = np.zeros((2, 3))
    matrix[:, :2] = s2 / s1 * rotation
    matrix[:, 2] = c2 - s2 / s1 * rotation @ c1
    return matrix, n2[2] - n1[2]


def _normaliser(height: int, width: int) -> torch.Tensor:
    """(3, 3) pixel → [−1, 1] coordinates with align_corners=True (kornia's `normal_transform_pixel`)."""
    return torch.tensor(
        [[2.0 / max(width - 1, 1e-14), 0.0, -1.0], [0.0, 2.0 / max(height - 1, 1e-14), -1.0], [0, 0, 1]],
        dtype=torch.float32,
    )


def _warp(
    src: torch.Tensor,
    matrix: torch.Tensor,
    size: tuple[int, int],
    box: tuple[int, int, int, int] | None = None,
    fill: float | None = None,
) -> torch.Tensor:
    """kornia 0.8's `warp_affine(src, matrix, size, "bilinear", align_corners=True)`: (C, h, w) float32 →
    (C, H, W) for `size` (H, W), or only the rows y0:y1 and columns x0:x1 of it for `box` (y0, y1, x0, x1).

    Destination pixel (x, y) samples `src` at matrix⁻¹ · (x, y), pixel centres on integers (as cv2's
    warpAffine, but without its 1/32-pixel grid). Outside `src`, `fill` (or 0) is blended in bilinearly.
    The steps repeat kornia's in float32: normalise the 2×3 `matrix` (float32) to [−1, 1] coordinates,
    invert, then `affine_grid`'s base grid (linspace) times the inverse, and `grid_sample`.
    """
    _, height, width = src.shape
    out_h, out_w = size
    y0, y1, x0, x1 = box if box is not None else (0, out_h, 0, out_w)
    full = torch.cat([matrix.to(torch.float32), torch.tensor([[0.0, 0.0, 1.0]])])
    to_norm = _normaliser(out_h, out_w) @ (full @ torch.linalg.inv(_normaliser(height, width)))
    theta = torch.linalg.inv(to_norm)[:2]
    xs = torch.linspace(-1, 1, out_w)[x0:x1]
    ys = torch.linspace(-1, 1, out_h)[y0:y1]
    base = torch.stack(
        [xs.expand(len(ys), -1), ys[:, None].expand(-1, len(xs)), torch.ones(len(ys), len(xs))], dim=-1
    )
    grid = (base.reshape(1, -1, 3) @ theta.T).reshape(1, len(ys), len(xs), 2)
    out = F.grid_sample(src[None], grid, mode="bilinear", padding_mode="zeros", align_corners=True)[0]
    if fill is not None:
        inside = F.grid_sample(
            torch.ones(1, 1, height, width), grid, mode="bilinear", padding_mode="zeros", align_corners=True
        )[0]
        out = out + (1 - inside) * fill
    return out


def _gaussian_blur(image: torch.Tensor, size: int, sigma: float) -> torch.Tensor:
    """(H, W) float32 blurred as kornia's `gaussian_blur2d` (separable, x then y, reflect border)."""
    x = torch.arange(size, dtype=torch.float32) - size // 2
    kernel = torch.exp(-x.pow(2) / (2 * torch.tensor(sigma, dtype=torch.float32).pow(2)))
    kernel = kernel / kernel.sum()
    half = size // 2
    out = F.conv2d(F.pad(image[None, None], (half, half, 0, 0), mode="reflect"), kernel.view(1, 1, 1, -1))
    out = F.conv2d(F.pad(out, (0, 0, half, half), mode="reflect"), kernel.view(1, 1, -1, 1))
    return out[0, 0]


class LatentSyncAligner:
    """LatentSync's alignment at resolution R: frames → (R, R) crops and generated crops → frames.

    The crop is (w, h) = (int(75 · ratio), int(100 · ratio)), ratio = 2.8 · R / 256 (210×280 at 256),
    stretched to R×R with Lanczos (anisotropic: faces get wider), as upstream.
    """

    def __init__(self, resolution: int) -> None:
        if resolution <= 0:
            raise ValueError(f"resolution must be positive, got {resolution}")
        self.resolution = resolution
        ratio = RATIO_PER_PIXEL * resolution
        self.template = TEMPLATE * ratio
        self.crop_size = (int(CROP_UNITS[0] * ratio), int(CROP_UNITS[1] * ratio))  # (w, h)

    def matrices(self, points: np.ndarray) -> np.ndarray:
        """(N, 3, 2) points per frame (`latentsync_points`, NaN where no face) → (N, 2, 3) frame → crop
        (w, h) matrices, one video's worth: upstream's smoothing carries a bias on the translation from
        frame to frame (an EMA of the normalised nose offset), starting fresh at the first frame of each
        call. Frames without a face get a NaN matrix and leave the EMA as it was (upstream stops instead).
        """
        if points.ndim != 3 or points.shape[1:] != (3, 2):
            raise ValueError(f"expected (N, 3, 2) points, got {points.shape}")
        out = np.full((len(points), 2, 3), np.nan)
        previous = None
        for index, frame_points in enumerate(points.astype(np.float64)):
            if np.isnan(frame_points).any():
                continue
            matrix, bias = _procrustes(frame_points, self.template)
            if previous is not None:
                bias = SMOOTH_PREVIOUS * previous + (1 - SMOOTH_PREVIOUS) * bias
            previous = bias
            matrix[:, 2] += bias
            out[index] = matrix
        return out

    def warp(self, frame: np.ndarray, matrix: np.ndarray) -> np.ndarray:
        """RGB frame (H, W, 3) uint8 → the crop before the stretch (h, w, 3) uint8: grey 127 outside the
        frame, truncated to uint8 (upstream's `astype`)."""
        if not np.isfinite(matrix).all():
            raise ValueError("no matrix for this frame (NaN): it has no face")
        width, height = self.crop_size
        src = torch.from_numpy(np.ascontiguousarray(frame)).permute(2, 0, 1).to(torch.float32)
        warped = _warp(src, torch.from_numpy(matrix), (height, width), fill=FILL)
        return warped.permute(1, 2, 0).numpy().astype(np.uint8)

    def crop(self, frame: np.ndarray, matrix: np.ndarray) -> np.ndarray:
        """RGB frame (H, W, 3) uint8 → aligned face (R, R, 3) uint8: `warp`, then Lanczos-stretched to R×R."""
        face = self.warp(frame, matrix)
        return cv2.resize(face, (self.resolution, self.resolution), interpolation=cv2.INTER_LANCZOS4)

    def paste(self, frame: np.ndarray, face: torch.Tensor, matrix: np.ndarray) -> np.ndarray:
        """Generated face (3, R, R) float in [−1, 1] (the decoder's output, as upstream pastes it) onto
        the RGB frame (H, W, 3) uint8 → (H, W, 3) uint8.

        As upstream's `restore_video` + `restore_img`: bicubic (antialiased) back to (h, w), warped into
        the frame; the mask is the warped all-ones crop, eroded 2×2, then by 2·e (e = ⌊√area⌋ // 20) and
        Gaussian-blurred (kernel 2e + 1); blended over the frame and truncated to uint8. Only the box
        the blurred mask can reach is computed; the rest of the frame is returned as it was.
        """
        if not np.isfinite(matrix).all():
            raise ValueError("no matrix for this frame (NaN): it has no face")
        if face.shape != (3, self.resolution, self.resolution):
            raise ValueError(
                f"expected a (3, {self.resolution}, {self.resolution}) face, got {tuple(face.shape)}"
            )
        width, height = self.crop_size
        frame_h, frame_w = frame.shape[:2]
        resized = F.interpolate(
            face[None].detach().cpu().float(),
            (height, width),
            mode="bicubic",
            align_corners=False,
            antialias=True,
        )[0]
        # upstream inverts the float32 matrix (kornia `invert_affine_transform`), and kornia's warp inverts again
        full = torch.cat([torch.from_numpy(matrix).to(torch.float32), torch.tensor([[0.0, 0.0, 1.0]])])
        inverse = torch.linalg.inv(full)[:2]
        # frame box of the warped crop (bilinear reaches one pixel out), widened below by the blur
        corners = np.array([[-1, -1], [width, -1], [-1, height], [width, height]], np.float64)
        seen = corners @ inverse[:, :2].double().numpy().T + inverse[:, 2].double().numpy()
        x0, y0 = np.floor(seen.min(axis=0)).astype(int) - 1
        x1, y1 = np.ceil(seen.max(axis=0)).astype(int) + 2
        box = (max(y0, 0), min(y1, frame_h), max(x0, 0), min(x1, frame_w))
        if box[0] >= box[1] or box[2] >= box[3]:
            return frame.copy()
        mask = _warp(torch.ones(1, height, width), inverse, (frame_h, frame_w), box)[0]
        eroded = -F.max_pool2d(-F.pad(mask[None, None], (1, 0, 1, 0), value=float("inf")), 2, stride=1)[0, 0]
        edge = int(float(eroded.double().sum()) ** 0.5) // 20
        blur = 2 * edge + 1
        sigma = 0.3 * ((blur - 1) * 0.5 - 1) + 0.8
        # the blurred mask reaches `edge` pixels past the eroded one; widen the box by 2·edge (within the
        # frame) so that the reflect border of the blur sees only zeros, as it would on the whole frame.
        # The box already holds every non-zero pixel of the warped mask, so the widening is zeros.
        margin = 2 * edge
        top, bottom = min(margin, box[0]), min(margin, frame_h - box[1])
        left, right = min(margin, box[2]), min(margin, frame_w - box[3])
        eroded = F.pad(eroded, (left, right, top, bottom))
        box = (box[0] - top, box[1] + bottom, box[2] - left, box[3] + right)
        centre = cv2.erode(eroded.numpy(), np.ones((2 * edge, 2 * edge), np.uint8))
        soft = _gaussian_blur(torch.from_numpy(centre), blur, sigma)
        warped = _warp(resized, inverse, (frame_h, frame_w), box, fill=FILL)
        warped = (warped / 2 + 0.5).clamp(0, 1) * 255
        y0, y1, x0, x1 = box
        region = torch.from_numpy(np.ascontiguousarray(frame[y0:y1, x0:x1])).permute(2, 0, 1).float()
        blended = soft * (eroded * warped) + (1 - soft) * region
        out = frame.copy()
        out[y0:y1, x0:x1] = blended.permute(1, 2, 0).to(torch.uint8).numpy()
        return out


def mask_image(resolution: int = MASK_SIZE) -> np.ndarray:
    """(R, R) uint8 LatentSync's mask.png, 255 keep, 0 generate: rebuilt from its measured rows, then
    Lanczos-resized to R as `load_fixed_mask` resizes it (soft edges at R ≠ 256)."""
    image = np.full((MASK_SIZE, MASK_SIZE), 255, np.uint8)
    for row, (left, right) in enumerate(zip(MASK_LEFT, MASK_RIGHT, strict=True), start=MASK_TOP):
        image[row, left : right + 1] = 0
    top, bottom, left, right = MASK_NOSE
    image[top : bottom + 1, left : right + 1] = 255
    if resolution != MASK_SIZE:
        image = cv2.resize(image, (resolution, resolution), interpolation=cv2.INTER_LANCZOS4)
    return image


def latentsync_mask(resolution: int) -> torch.Tensor:
    """(1, R, R) float32, 1 keep / 0 generate: LatentSync's mask as `load_fixed_mask` loads it (the
    uint8 `mask_image` at R, divided by 255)."""
    return torch.from_numpy(mask_image(resolution).astype(np.float32) / 255)[None]
