"""Intervals over clips: they cover what they claim, narrow with more clips, and handle shares and NaN."""

from __future__ import annotations

import math

import numpy as np
import pytest

from synclip.eval.intervals import bootstrap, estimate, mean_of, ratio_of_means, share_estimate, wilson


def test_the_bootstrap_interval_covers_the_true_mean_about_95_percent_of_the_time():
    rng = np.random.default_rng(1)
    hits = 0
    for _ in range(200):
        sample = rng.normal(0.3, 0.1, size=30)
        low, high = bootstrap(sample, mean_of(), resamples=1000, seed=int(rng.integers(1 << 30)))
        hits += low <= 0.3 <= high
    assert 0.88 <= hits / 200 <= 0.99  # the percentile bootstrap runs a little narrow at n = 30


def test_the_interval_narrows_as_one_over_root_n_and_is_the_same_every_time():
    rng = np.random.default_rng(2)
    population = rng.normal(0.0, 1.0, size=4000)
    small = estimate(population[:25], mean_of(), frames=25)
    large = estimate(population[:400], mean_of(), frames=400)
    assert small.half_width / large.half_width == pytest.approx(4.0, rel=0.25)
    assert estimate(population[:25], mean_of(), frames=25) == small  # seeded: reproducible


def test_a_ratio_of_means_resamples_numerator_and_denominator_together():
    # model and truth LSE-C of the same clips: clip-to-clip swings cancel in the ratio
    truth = np.array([0.2, 0.4, 0.6, 0.8, 1.0, 1.2])
    paired = estimate(np.column_stack([0.5 * truth, truth]), ratio_of_means(0, 1), frames=6)
    assert paired.value == pytest.approx(0.5)
    assert paired.low == pytest.approx(0.5)
    assert paired.high == pytest.approx(0.5)
    shuffled = estimate(np.column_stack([0.5 * truth[::-1], truth]), ratio_of_means(0, 1), frames=6)
    assert shuffled.half_width > 0.05  # the same numbers unpaired would look uncertain


def test_missing_per_clip_scores_are_left_out_not_counted_as_zero():
    values = np.array([0.9, np.nan, 1.0, 0.8])
    item = estimate(values, mean_of(), frames=4)
    assert item.value == pytest.approx(0.9)
    assert 0.8 <= item.low <= item.high <= 1.0
    assert all(math.isnan(v) for v in bootstrap(np.array([np.nan, np.nan]), mean_of()))


def test_a_share_gets_wilsons_interval_which_does_not_collapse_when_every_clip_agrees():
    low, high = wilson(8, 8)
    assert high == 1.0
    assert low == pytest.approx(0.6756, abs=1e-4)
    low, high = wilson(6, 8)
    assert (low, high) == pytest.approx((0.4093, 0.9285), abs=1e-4)
    item = share_estimate(np.array([True] * 20 + [False] * 5), frames=2500)
    assert (item.value, item.clips, item.frames) == (0.8, 25, 2500)
    assert item.as_dict()["ci_low"] == item.low
    assert all(math.isnan(v) for v in wilson(0, 0))
