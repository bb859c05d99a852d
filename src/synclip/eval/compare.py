"""Two evaluated models, scored on the same clips, compared clip by clip: the promotion rule.

A candidate replaces the promoted model only when the paired difference of the score (candidate −
promoted, per clip, mean over clips) has a 95 % interval wholly above the margin, and no guard metric's
interval lies wholly on the worse side of zero. Pairing removes what both share (a clip that is hard
for one model is hard for the other), so it sees gains that two separate intervals would hide, and it
refuses differences the clips cannot tell from noise.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from synclip.config import PromoteParams
from synclip.errors import UserError
from synclip.eval.intervals import Estimate, estimate, mean_of


@dataclass(frozen=True)
class PairedMetric:
    """A per-clip score of the model's rows in the evaluation's clips.csv."""

    protocol: str
    column: str
    higher_is_better: bool = True
    share: bool = False  # the per-clip value is 0 / 1 (offset == 0), its mean a share of clips

    def per_clip(self, table: pd.DataFrame) -> pd.Series:
        rows = table[(table["protocol"] == self.protocol) & (table["variant"] == "model")]
        if self.column not in rows:
            raise UserError(f"the evaluation's per-clip table has no {self.column!r} column")
        values = (rows[self.column] == 0).astype(float) if self.share else rows[self.column].astype(float)
        return pd.Series(values.to_numpy(), index=pd.MultiIndex.from_frame(rows[["clip", "audio_of"]]))


PAIRED = {
    "dubbing.lse_c": PairedMetric("dubbing", "lse_c"),
    "dubbing.lse_d": PairedMetric("dubbing", "lse_d", higher_is_better=False),
    "dubbing.offset_zero_share": PairedMetric("dubbing", "offset", share=True),
    "dubbing.opening_r": PairedMetric("dubbing", "opening_r"),
    "dubbing.silent_closed": PairedMetric("dubbing", "silent_closed"),
    "reconstruction.ssim_mouth": PairedMetric("reconstruction", "ssim_mouth"),
    "reconstruction.ssim_lower": PairedMetric("reconstruction", "ssim_lower"),
    "reconstruction.psnr_mouth": PairedMetric("reconstruction", "psnr_mouth"),
    "reconstruction.lse_c": PairedMetric("reconstruction", "lse_c"),
}


@dataclass(frozen=True)
class PhotoMetric:
    """A number of the photo check (`metrics.json`'s `photo`). One photo: no clips to resample, so the
    guard is a tolerance (`promote.<tolerance>`), not an interval."""

    path: tuple[str, ...]  # keys into the photo scores
    higher_is_better: bool
    tolerance: str  # the PromoteParams field

    def value(self, scores: dict) -> float:
        for key in self.path:
            scores = scores[key]
        return float("nan") if scores is None else float(scores)


PHOTO = {
    "photo.outside_mask_change": PhotoMetric(("outside_mask_change",), False, "photo_tolerance"),
    # a model that draws no moving mouth on a real face must not replace one that does, however it scores
    # on SynthTalk (the v-prediction model did exactly that: docs/experiments/2026-12-06-v-prediction.md)
    "photo.opening_r": PhotoMetric(("model", "opening_r"), True, "photo_opening_tolerance"),
}


def check_rule(rule: PromoteParams) -> None:
    """Fail early (before any training) on a rule that names metrics the comparison cannot pair."""
    unknown = [name for name in (rule.score, *rule.guards) if name not in PAIRED and name not in PHOTO]
    if rule.score in PHOTO or unknown:
        known = ", ".join([*PAIRED, *(f"{name} (guards only)" for name in PHOTO)])
        raise UserError(
            f"promote: cannot compare {', '.join(unknown) or rule.score} clip by clip; known: {known}"
        )


@dataclass(frozen=True)
class PairedRow:
    metric: str
    role: str  # "score" | "guard"
    candidate: float
    promoted: float
    difference: Estimate | None  # candidate − promoted over the paired clips (None: the photo)
    verdict: str  # better | worse | no clear difference
    ok: bool  # the score: a clear gain; a guard: not clearly worse


@dataclass(frozen=True)
class Comparison:
    promote: bool
    reason: str
    rows: list[PairedRow]

    def markdown(self) -> str:
        lines = [
            "| metric | role | candidate | promoted | difference | 95 % interval | verdict |",
            "|---|---|---|---|---|---|---|",
        ]
        for row in self.rows:
            d = row.difference
            interval = "–" if d is None else f"[{d.low:+.4f}, {d.high:+.4f}] ({d.clips} clips)"
            change = row.candidate - row.promoted
            lines.append(
                f"| {row.metric} | {row.role} | {row.candidate:.4f} | {row.promoted:.4f} | {change:+.4f} | "
                f"{interval} | {row.verdict} |"
            )
        return "\n".join(lines)


def paired_difference(
    candidate: pd.DataFrame, promoted: pd.DataFrame, metric: str
) -> tuple[float, float, Estimate]:
    """(candidate's mean, promoted's mean, candidate − promoted per clip with its clip-bootstrap interval).

    Both must have scored the same clips with the same driving audio; a clip whose score one of them
    lacks (no silent frames, no landmarks) is left out of both.
    """
    spec = PAIRED[metric]
    a, b = spec.per_clip(candidate), spec.per_clip(promoted)
    if set(a.index) != set(b.index):
        only = sorted({str(k) for k in set(a.index) ^ set(b.index)})[:4]
        raise UserError(
            f"{metric}: the two evaluations did not score the same clips (e.g. {', '.join(only)})"
        )
    b = b.loc[a.index]
    both = np.isfinite(a.to_numpy()) & np.isfinite(b.to_numpy())
    if not both.any():
        raise UserError(f"{metric}: no clip has a finite score in both evaluations")
    frames = int(
        candidate[(candidate["protocol"] == spec.protocol) & (candidate["variant"] == "model")][
            "frames"
        ].sum()
    )
    difference = estimate(a.to_numpy()[both] - b.to_numpy()[both], mean_of(), frames)
    return float(a.to_numpy()[both].mean()), float(b.to_numpy()[both].mean()), difference


def compare(
    candidate: pd.DataFrame,
    promoted: pd.DataFrame,
    rule: PromoteParams,
    candidate_photo: dict | None = None,
    promoted_photo: dict | None = None,
) -> Comparison:
    """The rule on two per-clip tables (`reports/eval/clips.csv` of each model, same clips and seeds)."""
    check_rule(rule)
    rows = []
    for metric, role in [(rule.score, "score"), *((g, "guard") for g in rule.guards)]:
        if metric in PHOTO:
            row = _photo_guard(metric, candidate_photo, promoted_photo, rule)
            if row is not None:
                rows.append(row)
            continue
        mine, theirs, d = paired_difference(candidate, promoted, metric)
        sign = 1 if PAIRED[metric].higher_is_better else -1
        low, high = sorted((sign * d.low, sign * d.high))  # in the better direction
        if role == "score":
            verdict = "better" if low > rule.margin else ("worse" if high < 0 else "no clear difference")
            ok = verdict == "better"
        else:
            verdict = "worse" if high < 0 else ("better" if low > 0 else "no clear difference")
            ok = verdict != "worse"
        rows.append(PairedRow(metric, role, mine, theirs, d, verdict, ok))
    score, guards = rows[0], [row for row in rows[1:] if not row.ok]
    d = score.difference
    what = f"{score.metric} {score.candidate:.4g} vs {score.promoted:.4g}, paired difference 95 % interval [{d.low:+.4f}, {d.high:+.4f}] on {d.clips} clips"
    if not score.ok:
        bar = "zero" if rule.margin == 0 else f"the margin {rule.margin:g}"
        return Comparison(False, f"no clear gain: {what} does not lie above {bar}", rows)
    if guards:
        names = ", ".join(f"{row.metric} ({row.candidate:.4g} vs {row.promoted:.4g})" for row in guards)
        return Comparison(False, f"{what}, but a guard got worse: {names}", rows)
    return Comparison(True, f"a clear gain: {what}; no guard worse", rows)


def _photo_guard(
    metric: str, candidate: dict | None, promoted: dict | None, rule: PromoteParams
) -> PairedRow | None:
    """A photo check number: worse when it moved the wrong way by more than its tolerance; a NaN
    (no mouth movement to correlate) is worse than any number. Left out when either evaluation ran
    without the photo check."""
    if not candidate or not promoted:
        return None
    spec = PHOTO[metric]
    mine, theirs = spec.value(candidate), spec.value(promoted)
    tolerance = getattr(rule, spec.tolerance)
    sign = 1 if spec.higher_is_better else -1
    if np.isnan(mine) or np.isnan(theirs):
        worse, better = np.isnan(mine) and not np.isnan(theirs), np.isnan(theirs) and not np.isnan(mine)
    else:
        worse, better = sign * (theirs - mine) > tolerance, sign * (mine - theirs) > tolerance
    verdict = "worse" if worse else ("better" if better else "no clear difference")
    return PairedRow(metric, "guard", mine, theirs, None, verdict, not worse)
