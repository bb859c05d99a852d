"""Confidence intervals over clips: how far an evaluation's headline numbers can be trusted, and whether
two models differ by more than noise.

The unit of resampling is the clip (every frame of a clip shares its face, its audio and its noise),
so the intervals say how much the numbers would move on other clips of the same kind.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

LEVEL = 0.95
RESAMPLES = 4000
SEED = 0  # the resampling's own seed: the same table always gets the same interval

Statistic = Callable[[np.ndarray], np.ndarray]  # (B, n, k) resampled clips → (B,) values


def mean_of(column: int = 0) -> Statistic:
    """The mean over clips of one column, ignoring NaN (a clip without silent frames has no silent score)."""
    return lambda table: _nanmean(table[..., column], axis=-1)


def ratio_of_means(numerator: int = 0, denominator: int = 1) -> Statistic:
    """mean(column a) / mean(column b) over the same resampled clips (LSE-C of the truth's share)."""
    return lambda table: _nanmean(table[..., numerator], axis=-1) / _nanmean(table[..., denominator], axis=-1)


def _nanmean(values: np.ndarray, axis: int) -> np.ndarray:
    finite = np.isfinite(values)
    count = finite.sum(axis=axis)
    total = np.where(finite, values, 0.0).sum(axis=axis)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, total / np.maximum(count, 1), np.nan)


def bootstrap(
    table: np.ndarray,
    statistic: Statistic,
    resamples: int = RESAMPLES,
    level: float = LEVEL,
    seed: int = SEED,
) -> tuple[float, float]:
    """The percentile bootstrap interval of `statistic` over the rows (clips) of `table` (n, k).

    Rows are drawn with replacement, n at a time; resamples whose statistic is undefined (NaN) are
    left out. When every clip scores the same the interval has width 0: no variation was seen, which
    with few clips is weak evidence, not certainty.
    """
    table = np.asarray(table, dtype=np.float64)
    if table.ndim == 1:
        table = table[:, None]
    if len(table) == 0:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, len(table), size=(resamples, len(table)))
    values = statistic(table[draws])
    values = values[np.isfinite(values)]
    if len(values) < resamples // 2:  # the statistic is undefined on most resamples
        return float("nan"), float("nan")
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(values, [tail, 100 - tail])
    return float(low), float(high)


def wilson(successes: int, trials: int, level: float = LEVEL) -> tuple[float, float]:
    """Wilson's score interval of a share (offset 0 on k of n clips): unlike the bootstrap it does not
    collapse to a point when every clip agrees, and it stays inside [0, 1]."""
    if trials == 0:
        return float("nan"), float("nan")
    z = _z(level)
    p = successes / trials
    centre = (p + z * z / (2 * trials)) / (1 + z * z / trials)
    half = z * np.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials)) / (1 + z * z / trials)
    return float(max(0.0, centre - half)), float(min(1.0, centre + half))


def _z(level: float) -> float:
    from scipy.stats import norm

    return float(norm.ppf(0.5 + level / 2))


@dataclass(frozen=True)
class Estimate:
    """A number with its interval and what it rests on."""

    value: float
    low: float
    high: float
    clips: int
    frames: int

    @property
    def half_width(self) -> float:
        return (self.high - self.low) / 2

    def as_dict(self) -> dict:
        return {
            "value": self.value,
            "ci_low": self.low,
            "ci_high": self.high,
            "clips": self.clips,
            "frames": self.frames,
        }


def estimate(table: np.ndarray, statistic: Statistic, frames: int) -> Estimate:
    """`statistic` of the whole table and its bootstrap interval."""
    table = np.asarray(table, dtype=np.float64)
    table = table[:, None] if table.ndim == 1 else table
    value = float(statistic(table[None])[0])
    low, high = bootstrap(table, statistic)
    return Estimate(value, low, high, len(table), frames)


def share_estimate(flags: np.ndarray, frames: int) -> Estimate:
    """The share of clips where `flags` holds, with Wilson's interval."""
    flags = np.asarray(flags, dtype=bool)
    low, high = wilson(int(flags.sum()), len(flags))
    return Estimate(float(flags.mean()) if len(flags) else float("nan"), low, high, len(flags), frames)
