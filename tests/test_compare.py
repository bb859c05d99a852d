"""The promotion rule on per-clip tables: a gain it can tell from noise, guards, the photo, the clips."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from synclip.config import PromoteParams
from synclip.errors import UserError
from synclip.eval.compare import check_rule, compare, paired_difference

RULE = PromoteParams(
    score="dubbing.lse_c",
    margin=0.0,
    required=(),
    guards=(
        "dubbing.silent_closed",
        "reconstruction.ssim_mouth",
        "photo.outside_mask_change",
        "photo.opening_r",
    ),
    photo_tolerance=0.5,
    photo_opening_tolerance=0.2,
)


def table(lse_c, silent=None, ssim=None) -> pd.DataFrame:
    """A clips.csv of the model's rows: one dubbing and one reconstruction row per clip."""
    n = len(lse_c)
    clips = [f"c{i}" for i in range(n)]
    silent = np.ones(n) if silent is None else silent
    ssim = np.full(n, 0.8) if ssim is None else ssim
    rows = []
    for i, clip in enumerate(clips):
        audio = clips[(i + 1) % n]
        rows.append(
            {"protocol": "dubbing", "clip": clip, "audio_of": audio, "variant": "model", "frames": 100}
            | {"lse_c": lse_c[i], "offset": 0, "silent_closed": silent[i]}
        )
        rows.append(
            {"protocol": "reconstruction", "clip": clip, "audio_of": clip, "variant": "model", "frames": 100}
            | {"lse_c": lse_c[i], "offset": 0, "ssim_mouth": ssim[i]}
        )
        rows.append(  # other variants are not the model's: never compared
            {"protocol": "dubbing", "clip": clip, "audio_of": audio, "variant": "truth", "frames": 100}
            | {"lse_c": 9.0, "offset": 0, "silent_closed": 0.0}
        )
    return pd.DataFrame(rows)


# LSE-C of 16 clips: clips differ far more from each other than a model from itself
BASE = np.random.default_rng(0).uniform(0.1, 0.5, size=16)


def test_the_same_model_with_other_noise_is_not_promoted():
    noise = np.random.default_rng(1).normal(0, 0.02, size=16)
    decision = compare(table(BASE + noise), table(BASE), RULE)
    assert not decision.promote
    assert decision.reason.startswith("no clear gain")
    score = decision.rows[0]
    assert score.difference.low < 0 < score.difference.high
    assert score.difference.clips == 16


def test_a_small_gain_on_every_clip_is_promoted_though_the_unpaired_intervals_overlap():
    candidate, promoted = table(BASE + 0.03), table(BASE)
    decision = compare(candidate, promoted, RULE)
    assert decision.promote, decision.reason
    assert decision.rows[0].difference.low == pytest.approx(0.03)
    # each model alone: its interval is far wider than the gain
    assert BASE.std() / np.sqrt(16) * 2 > 0.03
    assert "| dubbing.lse_c | score |" in decision.markdown()


def test_a_margin_asks_for_more_than_a_gain():
    rule = PromoteParams(**{**RULE.__dict__, "margin": 0.05})
    assert not compare(table(BASE + 0.03), table(BASE), rule).promote
    assert compare(table(BASE + 0.08), table(BASE), rule).promote


def test_a_guard_that_gets_clearly_worse_vetoes_a_gain():
    silent = np.ones(16)
    decision = compare(table(BASE + 0.1, silent=silent - 0.2), table(BASE, silent=silent), RULE)
    assert not decision.promote
    assert "a guard got worse: dubbing.silent_closed (0.8 vs 1)" in decision.reason
    # a guard that moves within noise does not
    wobble = np.random.default_rng(2).normal(0, 0.01, size=16)
    assert compare(table(BASE + 0.1, ssim=0.8 + wobble), table(BASE), RULE).promote


def photo(change: float, opening_r: float | None) -> dict:
    return {"outside_mask_change": change, "model": {"opening_r": opening_r}}


def test_the_photo_guards_allow_their_tolerance_and_no_more():
    promoted_photo = photo(0.4, 0.6)
    ok = compare(table(BASE + 0.1), table(BASE), RULE, photo(0.8, 0.45), promoted_photo)
    assert ok.promote
    bad = compare(table(BASE + 0.1), table(BASE), RULE, photo(1.2, 0.6), promoted_photo)
    assert not bad.promote
    assert "photo.outside_mask_change (1.2 vs 0.4)" in bad.reason
    # SynthTalk gains do not buy a photo whose mouth stopped following the speech
    still = compare(table(BASE + 0.1), table(BASE), RULE, photo(0.4, 0.3), promoted_photo)
    assert not still.promote
    assert "photo.opening_r (0.3 vs 0.6)" in still.reason
    frozen = compare(table(BASE + 0.1), table(BASE), RULE, photo(0.4, None), promoted_photo)  # r undefined
    assert not frozen.promote
    assert compare(table(BASE + 0.1), table(BASE), RULE, photo(0.4, 0.9), photo(0.4, None)).promote
    assert len(compare(table(BASE + 0.1), table(BASE), RULE).rows) == 3  # no photo: no photo rows


def test_only_the_same_clips_with_the_same_audio_compare():
    with pytest.raises(UserError, match="did not score the same clips"):
        paired_difference(table(BASE[:8]), table(BASE), "dubbing.lse_c")
    shifted = table(BASE)
    dubbing = shifted["protocol"] == "dubbing"
    shifted.loc[dubbing, "audio_of"] = shifted.loc[dubbing, "audio_of"].str.replace("c1", "c2")  # other audio
    with pytest.raises(UserError, match="did not score the same clips"):
        paired_difference(shifted, table(BASE), "dubbing.lse_c")
    # a clip one of them could not score (no silent frames) drops out of both
    silent = np.ones(16)
    silent[3] = np.nan
    _, _, d = paired_difference(table(BASE, silent=silent), table(BASE), "dubbing.silent_closed")
    assert d.clips == 15


def test_a_rule_naming_what_cannot_be_paired_fails_early():
    with pytest.raises(UserError, match=r"cannot compare dubbing\.fvd clip by clip"):
        check_rule(PromoteParams(**{**RULE.__dict__, "score": "dubbing.fvd"}))
    with pytest.raises(UserError, match=r"photo\.outside_mask_change"):
        check_rule(PromoteParams(**{**RULE.__dict__, "score": "photo.outside_mask_change"}))
