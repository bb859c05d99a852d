"""Procedurally drawn talking faces that MediaPipe detects: identities, head motion, mouth shapes."""

from __future__ import annotations

import colorsys
import math
from dataclasses import dataclass

import cv2
import numpy as np

_SHIFT = 4  # fixed-point bits for sub-pixel polygon vertices
_SCALE = 1 << _SHIFT

SKIN_TONES = np.array(
    [
        (255, 226, 202),
        (244, 204, 176),
        (232, 185, 150),
        (214, 160, 120),
        (186, 130, 94),
        (156, 104, 72),
        (122, 80, 56),
        (92, 62, 44),
    ],
    dtype=np.float64,
)
HAIR_COLOURS = np.array(
    [
        (24, 20, 18),
        (58, 40, 30),
        (98, 66, 40),
        (150, 108, 62),
        (214, 180, 120),
        (160, 70, 40),
        (150, 150, 150),
    ],
    dtype=np.float64,
)
IRIS_COLOURS = np.array(
    [(90, 56, 30), (60, 40, 25), (70, 110, 160), (80, 120, 80), (120, 95, 50)], dtype=np.float64
)
HAIR_STYLES = ("short", "long", "bald", "fringe", "bun")


@dataclass(frozen=True)
class Identity:
    """Everything that makes one synthetic person look like themselves (colours are RGB)."""

    name: str
    skin: tuple[float, float, float]
    aspect: float  # face half-height / half-width
    jaw: float  # lower-face width at the chin relative to the cheeks
    eye_spacing: float
    eye_y: float
    eye_size: float
    iris: tuple[float, float, float]
    brow_height: float
    brow_thickness: float
    brow_tilt: float
    nose_length: float
    nose_width: float
    mouth_width: float
    lip_thickness: float
    lip: tuple[float, float, float]
    hair_style: str
    hair: tuple[float, float, float]
    hairline: float
    clothing: tuple[float, float, float]
    glasses: bool
    background: tuple[tuple[float, float, float], tuple[float, float, float]]
    light_angle: float  # radians, direction the key light comes from
    light_strength: float  # 0 flat .. 0.4 strong side light
    articulation: float  # how wide this person opens the mouth

    @staticmethod
    def sample(name: str, rng: np.random.Generator) -> Identity:
        tone = SKIN_TONES[rng.integers(len(SKIN_TONES))] * rng.uniform(0.93, 1.05, 3)
        skin = np.clip(tone, 30, 255)
        lip = np.clip(
            skin * np.array([0.82, 0.52, 0.55]) + np.array([30, 0, 8]) * rng.uniform(0.5, 1.5), 20, 255
        )
        hair_style = HAIR_STYLES[rng.integers(len(HAIR_STYLES))]
        hair = HAIR_COLOURS[rng.integers(len(HAIR_COLOURS))] * rng.uniform(0.85, 1.15)
        bg_a = _hsv(rng.uniform(0, 1), rng.uniform(0.03, 0.45), rng.uniform(0.25, 0.92))
        bg_b = np.clip(bg_a * rng.uniform(0.6, 1.25) + rng.uniform(-25, 25, 3), 10, 245)
        return Identity(
            name=name,
            skin=_rgb(skin),
            aspect=rng.uniform(1.22, 1.42),
            jaw=rng.uniform(0.55, 0.8),
            eye_spacing=rng.uniform(0.36, 0.46),
            eye_y=rng.uniform(-0.2, -0.08),
            eye_size=rng.uniform(0.15, 0.2),
            iris=_rgb(IRIS_COLOURS[rng.integers(len(IRIS_COLOURS))]),
            brow_height=rng.uniform(0.2, 0.3),
            brow_thickness=rng.uniform(0.04, 0.075),
            brow_tilt=rng.uniform(-0.06, 0.1),
            nose_length=rng.uniform(0.32, 0.45),
            nose_width=rng.uniform(0.15, 0.22),
            mouth_width=rng.uniform(0.36, 0.48),
            lip_thickness=rng.uniform(0.8, 1.25),
            lip=_rgb(lip),
            hair_style=hair_style,
            hair=_rgb(np.clip(hair, 0, 255)),
            hairline=rng.uniform(-0.72, -0.55),
            clothing=_rgb(rng.uniform(20, 235, 3)),
            glasses=bool(rng.random() < 0.2),
            background=(_rgb(bg_a), _rgb(bg_b)),
            light_angle=rng.uniform(0, 2 * math.pi),
            light_strength=rng.uniform(0.05, 0.35),
            articulation=rng.uniform(0.85, 1.1),
        )


@dataclass(frozen=True)
class Pose:
    """Where the head is in the image: centre (px), half-width (px) and in-plane rotation (rad)."""

    cx: float
    cy: float
    scale: float
    angle: float


@dataclass(frozen=True)
class MouthState:
    opening: float
    width: float
    roundness: float
    teeth: float
    lip_contact: float

    @staticmethod
    def from_vector(values: np.ndarray) -> MouthState:
        return MouthState(*(float(v) for v in values))


# --- geometry ----------------------------------------------------------------------------------


def _hsv(hue: float, saturation: float, value: float) -> np.ndarray:
    return np.array(colorsys.hsv_to_rgb(hue, saturation, value)) * 255


def _rgb(values) -> tuple[float, float, float]:
    return tuple(float(v) for v in values)  # type: ignore[return-value]


def _ellipse(cx: float, cy: float, rx: float, ry: float, n: int = 40) -> np.ndarray:
    t = np.linspace(0, 2 * np.pi, n, endpoint=False)
    return np.stack([cx + rx * np.cos(t), cy + ry * np.sin(t)], axis=1)


def _transform(points: np.ndarray, pose: Pose) -> np.ndarray:
    c, s = math.cos(pose.angle), math.sin(pose.angle)
    rotation = np.array([[c, -s], [s, c]]) * pose.scale
    return points @ rotation.T + np.array([pose.cx, pose.cy])


def _fill(image: np.ndarray, points: np.ndarray, colour, pose: Pose) -> None:
    pixels = np.round(_transform(points, pose) * _SCALE).astype(np.int32)
    cv2.fillPoly(image, [pixels], _colour(colour), lineType=cv2.LINE_AA, shift=_SHIFT)


def _line(image: np.ndarray, points: np.ndarray, colour, width: float, pose: Pose) -> None:
    pixels = np.round(_transform(points, pose) * _SCALE).astype(np.int32)
    thickness = max(1, round(width * pose.scale))
    cv2.polylines(image, [pixels], False, _colour(colour), thickness, lineType=cv2.LINE_AA, shift=_SHIFT)


def _colour(colour) -> tuple[int, int, int]:
    return tuple(int(round(min(max(c, 0), 255))) for c in colour)  # type: ignore[return-value]


def _shade(colour, factor: float) -> tuple[float, float, float]:
    return tuple(min(255.0, c * factor) for c in colour)  # type: ignore[return-value]


# --- the person --------------------------------------------------------------------------------


class FaceRenderer:
    """Draws one identity; stateless across frames, so frames can be drawn in any order.

    A face is a set of polygons in face coordinates (origin at the face centre, x right, y down,
    one unit = the face's half-width; the chin is at y = +aspect). Each frame maps them into the
    image with a similarity transform (head translation, in-plane rotation, scale) and fills them
    with anti-aliased OpenCV polygons. The mouth is rebuilt every frame from the five mouth
    parameters of `visemes.MOUTH_PARAMS`; the jaw and chin drop with the mouth opening.
    """

    def __init__(self, identity: Identity) -> None:
        self.id = identity

    def mouth_centre_y(self) -> float:
        return 0.56 * self.id.aspect

    def face_outline(self, jaw_drop: float) -> np.ndarray:
        ident = self.id
        t = np.linspace(0, 2 * np.pi, 72, endpoint=False)
        x = np.cos(t)
        y = np.sin(t) * ident.aspect
        lower = np.clip(y / ident.aspect, 0, 1)
        x = x * (1 - (1 - ident.jaw) * lower**2.2)
        y = y + jaw_drop * np.clip((y - 0.3 * ident.aspect) / (0.7 * ident.aspect), 0, 1)
        return np.stack([x, y], axis=1)

    def draw(
        self, image: np.ndarray, pose: Pose, mouth: MouthState, eye_open: float
    ) -> dict[str, np.ndarray]:
        """Draw the person into `image` (H, W, 3 RGB uint8, in place); returns key points in pixels."""
        ident = self.id
        h = ident.aspect
        gap = 0.42 * mouth.opening * (1 - 0.9 * mouth.lip_contact)
        jaw_drop = 0.75 * gap
        skin = ident.skin
        body_pose = Pose(pose.cx, pose.cy, pose.scale, 0.3 * pose.angle)

        # body: neck and shoulders (clothing)
        neck = np.array([[-0.42, 0.4 * h], [0.42, 0.4 * h], [0.46, 1.9 * h], [-0.46, 1.9 * h]])
        _fill(image, neck, _shade(skin, 0.82), body_pose)
        torso = np.array(
            [
                [-2.3, 3.5 * h],
                [-2.1, 1.9 * h],
                [-0.9, 1.5 * h],
                [0.9, 1.5 * h],
                [2.1, 1.9 * h],
                [2.3, 3.5 * h],
            ]
        )
        _fill(image, torso, ident.clothing, body_pose)
        collar = np.array([[-0.5, 1.5 * h], [0.0, 1.9 * h], [0.5, 1.5 * h]])
        _fill(image, collar, _shade(skin, 0.78), body_pose)

        if ident.hair_style == "long":
            _fill(image, _ellipse(0, 0.05 * h, 1.28, 1.12 * h, 48), ident.hair, pose)
        elif ident.hair_style == "bun":
            _fill(image, _ellipse(0, -1.15 * h, 0.45, 0.35, 32), ident.hair, pose)

        # ears
        for side in (-1, 1):
            _fill(image, _ellipse(side * 0.98, -0.02 * h, 0.16, 0.28, 24), _shade(skin, 0.9), pose)

        _fill(image, self.face_outline(jaw_drop), skin, pose)

        self._draw_hair(image, pose)
        self._draw_eyes(image, pose, eye_open)
        self._draw_brows(image, pose)
        self._draw_nose(image, pose)
        mouth_points = self._draw_mouth(image, pose, mouth, gap)
        if ident.glasses:
            for side in (-1, 1):
                ring = _ellipse(side * ident.eye_spacing, ident.eye_y * h, 0.27, 0.2, 32)
                _line(image, np.vstack([ring, ring[:1]]), (30, 30, 30), 0.035, pose)
            _line(
                image, np.array([[-0.15, ident.eye_y * h], [0.15, ident.eye_y * h]]), (30, 30, 30), 0.03, pose
            )

        outline = self.face_outline(jaw_drop)
        keypoints = {
            "face_box": _transform(outline, pose),
            "eye_left": _transform(np.array([[-ident.eye_spacing, ident.eye_y * h]]), pose)[0],
            "eye_right": _transform(np.array([[ident.eye_spacing, ident.eye_y * h]]), pose)[0],
            "nose_tip": _transform(np.array([[0, (ident.eye_y + ident.nose_length + 0.12) * h]]), pose)[0],
            "chin": _transform(np.array([[0, h + jaw_drop]]), pose)[0],
            **{name: _transform(p[None], pose)[0] for name, p in mouth_points.items()},
        }
        return keypoints

    def _draw_hair(self, image: np.ndarray, pose: Pose) -> None:
        ident = self.id
        if ident.hair_style == "bald":
            return
        h = ident.aspect
        cap = _ellipse(0, -0.02 * h, 1.06, 1.06 * h, 72)
        hairline = ident.hairline * h
        if ident.hair_style == "fringe":
            hairline += 0.25 * h
        # keep the part of the cap above a curved hairline that dips at the temples
        line_y = hairline + 0.35 * h * (cap[:, 0] / 1.06) ** 4
        cap[:, 1] = np.minimum(cap[:, 1], line_y)
        _fill(image, cap, ident.hair, pose)

    def _draw_eyes(self, image: np.ndarray, pose: Pose, eye_open: float) -> None:
        ident = self.id
        y = ident.eye_y * ident.aspect
        rx = ident.eye_size
        ry = rx * 0.55 * max(eye_open, 0.02)
        for side in (-1, 1):
            cx = side * ident.eye_spacing
            if eye_open > 0.15:
                _fill(image, _ellipse(cx, y, rx, ry, 32), (245, 245, 240), pose)
                for radius, colour in ((0.52 * rx, ident.iris), (0.24 * rx, (12, 10, 10))):
                    iris = _ellipse(cx, y, radius, radius, 24)
                    limit = ry * np.sqrt(np.clip(1 - ((iris[:, 0] - cx) / rx) ** 2, 0, 1))
                    iris[:, 1] = np.clip(iris[:, 1], y - limit, y + limit)
                    _fill(image, iris, colour, pose)
            upper = _ellipse(cx, y, rx * 1.05, ry * 1.1 + 0.01, 32)[16:]  # the upper half, right to left
            _line(image, upper[::-1] * [1, 1], (25, 20, 20), 0.035, pose)
            _line(image, np.flip(upper, 0) * [1, -1] + [0, 2 * y], _shade(ident.skin, 0.6), 0.015, pose)

    def _draw_brows(self, image: np.ndarray, pose: Pose) -> None:
        ident = self.id
        y = (ident.eye_y - ident.brow_height) * ident.aspect
        for side in (-1, 1):
            xs = np.linspace(-0.2, 0.2, 9)
            arc = np.stack([side * ident.eye_spacing + xs, y - 0.06 * np.cos(xs / 0.2 * np.pi / 2)], axis=1)
            arc[:, 1] += side * ident.brow_tilt * xs
            _line(image, arc, _shade(ident.hair, 0.8), ident.brow_thickness, pose)

    def _draw_nose(self, image: np.ndarray, pose: Pose) -> None:
        ident = self.id
        h = ident.aspect
        top = ident.eye_y * h + 0.05
        tip = top + ident.nose_length * h
        w = ident.nose_width
        bridge = np.array([[-0.05, top], [0.05, top], [w, tip], [0, tip + 0.05], [-w, tip]])
        _fill(image, bridge, _shade(ident.skin, 0.88), pose)
        for side in (-1, 1):
            _fill(
                image, _ellipse(side * 0.45 * w, tip + 0.01, 0.045, 0.028, 12), _shade(ident.skin, 0.45), pose
            )

    def _draw_mouth(
        self, image: np.ndarray, pose: Pose, mouth: MouthState, gap: float
    ) -> dict[str, np.ndarray]:
        ident = self.id
        cy = self.mouth_centre_y()
        half = ident.mouth_width * (0.78 + 0.4 * mouth.width - 0.3 * mouth.roundness)
        upper_t = 0.085 * ident.lip_thickness * (1 + 0.35 * mouth.roundness - 0.35 * mouth.lip_contact)
        lower_t = 0.11 * ident.lip_thickness * (1 + 0.3 * mouth.roundness - 0.3 * mouth.lip_contact)
        inner_half = half * (0.92 - 0.25 * mouth.roundness)
        power = 1.0 - 0.5 * mouth.roundness  # rounder opening for rounded vowels
        top = cy - 0.25 * gap  # the upper lip rises a little; the jaw carries the lower lip down
        bottom = cy + 0.75 * gap

        xs = np.linspace(-inner_half, inner_half, 25)
        profile = np.clip(1 - (xs / inner_half) ** 2, 0, 1) ** power
        upper_inner = np.stack([xs, top - 0.0 * profile], axis=1)
        upper_inner[:, 1] = top + (cy - top) * (1 - profile)
        lower_inner = np.stack([xs, cy + (bottom - cy) * profile], axis=1)

        xo = np.linspace(-half, half, 29)
        outer_profile = np.clip(1 - (xo / half) ** 2, 0, 1)
        bow = 1 - 0.35 * np.exp(-((xo / (0.16 * half)) ** 2))  # cupid's bow dip in the middle
        inner_at = np.interp(xo, xs, upper_inner[:, 1], left=cy, right=cy)
        upper_outer = np.stack([xo, inner_at - upper_t * np.sqrt(outer_profile) * bow], axis=1)
        lower_at = np.interp(xo, xs, lower_inner[:, 1], left=cy, right=cy)
        lower_outer = np.stack([xo, lower_at + lower_t * np.sqrt(outer_profile)], axis=1)

        lips = np.vstack([upper_outer, lower_outer[::-1]])
        _fill(image, lips, ident.lip, pose)
        _fill(image, np.vstack([upper_outer, upper_inner[::-1]]), _shade(ident.lip, 0.9), pose)
        inner = np.vstack([upper_inner, lower_inner[::-1]])
        if gap > 0.004:
            _fill(image, inner, (45, 14, 20), pose)
            if mouth.opening > 0.35:  # tongue
                tongue = np.stack(
                    [xs * 0.7, np.minimum(lower_inner[:, 1], bottom) - 0.35 * gap * profile], axis=1
                )
                _fill(image, np.vstack([tongue, lower_inner[::-1] * [0.7, 1]]), (170, 70, 80), pose)
            tooth = 0.075 * mouth.teeth
            if tooth > 0.005:
                teeth_bottom = np.minimum(upper_inner[:, 1] + tooth, lower_inner[:, 1])
                _fill(
                    image,
                    np.vstack([upper_inner, np.stack([xs, teeth_bottom], 1)[::-1]]),
                    (238, 234, 222),
                    pose,
                )
                low_top = np.maximum(lower_inner[:, 1] - 0.5 * tooth, teeth_bottom)
                _fill(
                    image, np.vstack([np.stack([xs, low_top], 1), lower_inner[::-1]]), (220, 214, 200), pose
                )
        _line(image, upper_inner, _shade(ident.lip, 0.45), 0.018, pose)
        return {
            "mouth_left": np.array([-half, cy]),
            "mouth_right": np.array([half, cy]),
            "lip_top": np.array([0.0, top]),
            "lip_bottom": np.array([0.0, bottom]),
        }


def background(identity: Identity, width: int, height: int, rng: np.random.Generator) -> np.ndarray:
    """A static backdrop: a two-colour gradient and a few soft rectangles (furniture, a window)."""
    a, b = (np.array(c) for c in identity.background)
    ramp = np.linspace(0, 1, height)[:, None, None]
    image = (a * (1 - ramp) + b * ramp).repeat(width, axis=1)
    image = np.ascontiguousarray(image.astype(np.uint8))
    for _ in range(rng.integers(1, 4)):
        x0, y0 = rng.integers(0, width), rng.integers(0, height)
        w, h = rng.integers(width // 10, width // 3), rng.integers(height // 10, height // 2)
        colour = np.clip(a + rng.uniform(-60, 60, 3), 0, 255)
        cv2.rectangle(image, (int(x0), int(y0)), (int(x0 + w), int(y0 + h)), _colour(colour), -1, cv2.LINE_AA)
    return cv2.GaussianBlur(image, (0, 0), 2.0)


def light_map(identity: Identity, width: int, height: int) -> np.ndarray:
    """(H, W, 3) uint8 multiplier (255 = unchanged) for directional light across the frame."""
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    direction = np.array([math.cos(identity.light_angle), math.sin(identity.light_angle)], np.float32)
    t = ((xx / width - 0.5) * direction[0] + (yy / height - 0.5) * direction[1]) * 2
    gain = 1.0 - identity.light_strength * 0.5 * (1 - t)
    return np.repeat(np.clip(gain * 255, 0, 255).astype(np.uint8)[..., None], 3, axis=2)
