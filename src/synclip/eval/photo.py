"""The photo check: a real photograph (scikit-image's astronaut) as a still video, lip-synced through
`lipsync_file` (the user's path: files, tracking, alignment, paste-back) to a test clip's speech. It asks
what SynthTalk clips cannot: does a real face stay itself outside the mask, and does its mouth follow
the speech?"""

from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import cv2
import numpy as np

from synclip.constants import AUDIO_SAMPLE_RATE, SAMPLES_PER_FRAME, VIDEO_FPS
from synclip.eval.protocol import EvalClip, Scorer, json_ready
from synclip.images import to_uint8
from synclip.inference.lipsync import LipSyncOptions, lipsync_file, ping_pong, track_face
from synclip.inference.pipeline import LipSyncPipeline
from synclip.media.decode import iter_frames
from synclip.media.io import VideoWriter

log = logging.getLogger(__name__)

ZOOM = 2  # the sheet's aligned faces, magnified


def astronaut() -> np.ndarray:
    """(512, 512, 3) uint8 RGB: Eileen Collins, NASA (public domain), from scikit-image's wheel."""
    from skimage import data

    return data.astronaut()


@dataclass
class PhotoCheck:
    scores: dict
    sheet: np.ndarray  # (H, W, 3) uint8: the aligned photo, then the lip-synced faces, the driving clip below


def still_video(photo: np.ndarray, samples: np.ndarray, path: Path) -> Path:
    """`photo` (H, W, 3) uint8 held for as many 25 fps frames as `samples` (16 kHz mono) lasts, with
    that audio; lossless, so the input's pixels are the photo's."""
    frames = len(samples) // SAMPLES_PER_FRAME
    height, width = photo.shape[:2]
    with VideoWriter(path, width, height, VIDEO_FPS, audio_rate=AUDIO_SAMPLE_RATE, lossless=True) as writer:
        for index in range(frames):
            writer.write_frame(photo)
            writer.write_audio(samples[None, index * SAMPLES_PER_FRAME : (index + 1) * SAMPLES_PER_FRAME])
    return path


def photo_check(
    pipeline: LipSyncPipeline,
    photo: np.ndarray,
    driving: EvalClip,
    scorer: Scorer,
    landmarker: str | Path,
    steps: int,
    seed: int,
    sheet_frames: int,
) -> PhotoCheck:
    """Lip-sync a still video of `photo` to `driving`'s speech (losslessly, so only the model and the
    paste change pixels), then score the output's aligned faces as evaluation does:

    - `outside_mask_change`: mean |output − input| in grey levels over the aligned face where the mask
      keeps the input (eyes, nose, cheeks): what the paste-back let through of the generated face;
    - the mouth against `driving`'s ground-truth opening (`opening_r`, `silent_closed`) and the sync
      scores against its audio (`offset`, `lse_c`, `lse_d`), beside the unchanged photo's.
    """
    with tempfile.TemporaryDirectory(prefix="synclip-photo-") as tmp:
        video, out = Path(tmp) / "photo.mp4", Path(tmp) / "synced.mp4"
        still_video(photo, driving.samples, video)
        options = LipSyncOptions(steps=steps, seed=seed, lossless=True)
        summary = lipsync_file(pipeline, video, video, out, landmarker, options)
        faces = track_face(video, Fraction(VIDEO_FPS), pipeline, landmarker, options)
        if not faces.found.all():
            raise ValueError(
                f"the face was found on {int(faces.found.sum())} of {len(faces.found)} photo frames"
            )
        # output frame i shows source frame ping_pong(i) (the audio may outlast the video by a frame)
        repeat_ends = pipeline.config.loop == "repeat_ends"
        sources = [ping_pong(i, len(faces.found), repeat_ends) for i in range(summary.frames)]
        outputs = zip(iter_frames(out), sources, strict=True)
        aligned = np.stack([to_uint8(faces.crop(frame, s)) for frame, s in outputs])  # (N, R, R, 3)
    frames = min(len(aligned), len(driving.frames))
    aligned, driving = aligned[:frames], driving.cut(frames)
    still = np.stack([to_uint8(faces.crop(photo, s)) for s in sources[:frames]])
    keep = pipeline.mask[0].cpu().numpy() > 0.5  # (R, R): 1 keep
    difference = np.abs(aligned.astype(np.int16) - still.astype(np.int16))  # (N, R, R, 3)
    original = still[0]
    mouth, ratios = scorer.mouth(aligned, driving)
    still_mouth, _ = scorer.mouth(still, driving)
    scores = json_ready(
        {
            "photo": "skimage.data.astronaut (512x512)",
            "audio_of": driving.name,
            "frames": frames,
            "frames_generated": summary.frames_generated,
            "outside_mask_change": round(float(difference[:, keep].mean()), 3),
            "inside_mask_change": round(float(difference[:, ~keep].mean()), 3),
            "model": {**scorer.sync(aligned, driving.samples), **mouth},
            "input": {**scorer.sync(still, driving.samples), **still_mouth},
        }
    )
    log.info(
        "photo: outside the mask %.2f grey levels, opening r %.3f (the still photo: %.3f)",
        scores["outside_mask_change"],
        scores["model"]["opening_r"],
        scores["input"]["opening_r"],
    )
    return PhotoCheck(scores, photo_sheet(original, aligned, driving, ratios, sheet_frames))


def photo_sheet(
    original: np.ndarray, aligned: np.ndarray, driving: EvalClip, ratios: np.ndarray, count: int
) -> np.ndarray:
    """(H, W, 3) uint8: row 1 the photo's aligned face and the lip-synced faces at `count` frames picked at
    quantiles of the driving clip's true opening (time order); row 2 the driving clip's frames there.
    Captions: the true opening o and the output's measured inner-lip ratio m."""
    picks = np.unique(
        np.argsort(driving.opening)[np.linspace(0, len(aligned) - 1, count).round().astype(int)]
    )
    picks.sort()
    size = aligned.shape[1] * ZOOM

    def tile(image: np.ndarray, caption: str) -> np.ndarray:
        big = cv2.resize(image, (size, size), interpolation=cv2.INTER_NEAREST)
        band = np.full((16, size, 3), 255, np.uint8)
        cv2.putText(band, caption, (3, 12), cv2.FONT_HERSHEY_SIMPLEX, 0.38, (0, 0, 0), 1, cv2.LINE_AA)
        return np.concatenate([big, band])

    top = [tile(original, "photo (input)")]
    top += [tile(aligned[i], f"o={driving.opening[i]:.2f} m={ratios[i]:.2f}") for i in picks]
    bottom = [np.full_like(top[0], 255)]
    bottom += [tile(driving.frames[i], f"speech of {driving.name}"[:28]) for i in picks]
    return np.concatenate([np.concatenate(top, axis=1), np.concatenate(bottom, axis=1)])
