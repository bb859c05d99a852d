"""Scoring every processed clip with the SyncNet: drop what is badly out of sync, correct the rest.

LatentSync keeps a clip when the original SyncNet's confidence is ≥ 3 and |offset| ≤ 6 frames and
shifts its audio by the offset. synclip does the same with its own SyncNet (on its own confidence
scale, see `synclip.eval.sync`); the correction is recorded as `audio_shift` (frames) in the
manifest the UNet trains on, and applied when the audio windows are read.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from synclip.config import SyncNetParams
from synclip.data.sync_pairs import Clip, SyncView, load_clip
from synclip.eval.sync import score_clip
from synclip.log import track
from synclip.nn.syncnet import StableSyncNet

log = logging.getLogger(__name__)


def score_manifest(
    manifest: pd.DataFrame, clips_dir: Path, model: StableSyncNet, params: SyncNetParams, device: torch.device
) -> tuple[pd.DataFrame, dict[str, Clip]]:
    """(manifest + sync_offset, sync_confidence, sync_distance columns, the loaded clips by name)."""
    offsets, confidences, distances, clips = [], [], [], {}
    view = SyncView(crop=model.config.crop, size=model.config.image_size)
    for row in track(list(manifest.itertuples()), "sync scores", unit="clips"):
        clip = load_clip(clips_dir / f"{row.clip}.mp4", view, row.clip, row.identity)
        score = score_clip(model, clip, params.max_offset, device)
        offsets.append(score.offset)
        confidences.append(score.lse_c)
        distances.append(score.lse_d)
        clips[row.clip] = clip
    scored = manifest.copy()
    scored["sync_offset"] = np.array(offsets, dtype=np.int64)
    scored["sync_confidence"] = np.array(confidences, dtype=np.float64)
    scored["sync_distance"] = np.array(distances, dtype=np.float64)
    return scored, clips


def filter_by_sync(scored: pd.DataFrame, params: SyncNetParams) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(kept rows with `audio_shift` = detected offset, rejected rows with a reason).

    Offsets smaller than `min_correction` frames are not corrected: a SyncNet places in-sync clips
    within a frame or so of zero, and shifting by its noise would only misalign good clips.
    """
    low = scored["sync_confidence"] < params.min_confidence
    far = scored["sync_offset"].abs() > params.max_abs_offset
    rejects = scored[low | far].copy()
    rejects["reason"] = np.where(low[low | far], "low_sync_confidence", "offset_too_large")
    rejects["detail"] = [
        f"confidence {c:.3f} (min {params.min_confidence}), offset {o:+d} (max ±{params.max_abs_offset})"
        for c, o in zip(rejects["sync_confidence"], rejects["sync_offset"], strict=True)
    ]
    kept = scored[~(low | far)].copy()
    offsets = kept["sync_offset"].astype(np.int64)
    kept["audio_shift"] = offsets.where(offsets.abs() >= params.min_correction, 0)
    return kept.reset_index(drop=True), rejects.reset_index(drop=True)


def mismatched_confidences(
    clips: list[Clip], model: StableSyncNet, params: SyncNetParams, device: torch.device
) -> list[float]:
    """LSE-C of each clip's frames paired with the next clip's audio (an out-of-sync reference)."""
    if len(clips) < 2:
        return []
    values = []
    for clip, other in zip(clips, clips[1:] + clips[:1], strict=True):
        paired = Clip(clip.name, clip.identity, clip.frames, other.mel)
        values.append(score_clip(model, paired, params.max_offset, device).lse_c)
    return values


def ground_truth_agreement(scored: pd.DataFrame) -> dict:
    """How the detected offsets compare with SynthTalk's known ones (rows without ground truth skipped)."""
    return {
        "held_out": _agreement(scored[scored["split"].isin(["val", "test"])]),
        "all": _agreement(scored),
    }


def _agreement(scored: pd.DataFrame) -> dict:
    known = scored[scored["gt_av_offset"].notna()]
    if known.empty:
        return {"clips_with_ground_truth": 0}
    truth = known["gt_av_offset"].astype(int)
    shifted = truth != 0
    return {
        "clips_with_ground_truth": len(known),
        "in_sync_clips": int((~shifted).sum()),
        "offset_zero_in_sync_clips": round(float((known.loc[~shifted, "sync_offset"] == 0).mean()), 4),
        "offset_within_1_in_sync_clips": round(
            float((known.loc[~shifted, "sync_offset"].abs() <= 1).mean()), 4
        ),
        "offset_exact_shifted_clips": round(
            float((known.loc[shifted, "sync_offset"] == truth[shifted]).mean()), 4
        )
        if shifted.any()
        else None,
        "shifted_clips": [
            {"clip": c, "split": s, "true_offset": int(t), "detected_offset": int(d)}
            for c, s, t, d in zip(
                known.loc[shifted, "clip"],
                known.loc[shifted, "split"],
                truth[shifted],
                known.loc[shifted, "sync_offset"],
                strict=True,
            )
        ],
    }


def distribution(values: list[float] | pd.Series) -> dict:
    values = np.asarray(values, dtype=np.float64)
    if not len(values):
        return {"n": 0}
    quantiles = np.quantile(values, [0.05, 0.25, 0.5, 0.75, 0.95])
    return {"n": len(values), "mean": round(float(values.mean()), 5),
            **{f"p{int(q * 100):02d}": round(float(v), 5) for q, v in zip((0.05, 0.25, 0.5, 0.75, 0.95), quantiles, strict=True)}}  # fmt: skip
