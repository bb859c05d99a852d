"""Scoring every processed clip with the SyncNet: drop what is badly out of sync, correct the rest."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from synclip.artifacts import load_syncnet
from synclip.config import Params, SyncNetParams
from synclip.data.manifest import read_manifest
from synclip.data.sync_pairs import Clip, SyncView, load_clip
from synclip.eval.sync import score_clip
from synclip.files import write_json
from synclip.log import track
from synclip.nn.syncnet import StableSyncNet

log = logging.getLogger(__name__)


def score_manifest(
    manifest: pd.DataFrame, clips_dir: Path, model: StableSyncNet, params: SyncNetParams, device: torch.device
) -> tuple[pd.DataFrame, dict[str, Clip]]:
    """(manifest + sync_offset, sync_confidence, sync_distance columns, the loaded clips by name)."""
    offsets, confidences, distances, clips = [], [], [], {}
    view = SyncView.of(model.config)
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

    LatentSync keeps a clip when the original SyncNet's confidence is ≥ 3 and |offset| ≤ 6 frames and
    shifts its audio by the offset. synclip does the same with its own SyncNet (on its own confidence
    scale, see `synclip.eval.sync`); the correction is recorded as `audio_shift` (frames) in the
    manifest the UNet trains on, and applied when the audio windows are read.

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
    return {
        "n": len(values),
        "mean": round(float(values.mean()), 5),
        **{
            f"p{int(q * 100):02d}": round(float(v), 5)
            for q, v in zip((0.05, 0.25, 0.5, 0.75, 0.95), quantiles, strict=True)
        },
    }


def sync_filter_stage(
    processed: Path, syncnet: Path, out: Path, metrics: Path, params: Params, device: torch.device
) -> None:
    """The `sync_filter` stage: score every processed clip, keep and correct the good ones (`out`:
    manifest.parquet and rejects.csv); the metrics say how the offsets agree with the known ones and
    how confident the SyncNet is on in-sync against mismatched audio."""
    model = load_syncnet(syncnet).to(device)
    manifest = read_manifest(processed / "manifest.parquet")
    scored, clips = score_manifest(manifest, processed / "clips", model, params.syncnet, device)
    kept, rejects = filter_by_sync(scored, params.syncnet)
    out.mkdir(parents=True, exist_ok=True)
    kept.to_parquet(out / "manifest.parquet", index=False)
    rejects.to_csv(out / "rejects.csv", index=False)
    test = scored[scored["split"] == "test"]
    in_sync = test[test["gt_av_offset"].fillna(0) == 0]
    mismatched = mismatched_confidences([clips[c] for c in in_sync["clip"]], model, params.syncnet, device)
    write_json(
        metrics,
        {
            "clips_scored": len(scored),
            "clips_kept": len(kept),
            "rejects_by_reason": rejects["reason"].value_counts().sort_index().to_dict(),
            "offsets_corrected": int((kept["audio_shift"] != 0).sum()),
            "ground_truth": ground_truth_agreement(scored),
            "test_lse_c_in_sync": distribution(in_sync["sync_confidence"]),
            "test_lse_c_mismatched_audio": distribution(mismatched),
            "test_lse_d_in_sync": distribution(in_sync["sync_distance"]),
        },
    )
