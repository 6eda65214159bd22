"""The trend on other models: rows, the mixes the models saw, and the shift table, on frames
small enough to check by hand.

Run: pytest tests/study/test_attribution.py
"""
import pandas as pd
import pytest

from infra_study import attribution as T
from infra_study.profiles import get_profile


def _frame(values):
    """A frame like ``other_model_trends``: ``values[model][(train, query, variant)] = rho``, with
    a +-0.05 interval around each value."""
    rows = [{"model": m, "train": tr, "query": q, "variant": v, "value": x, "lo": x - 0.05, "hi": x + 0.05}
            for m, per in values.items() for (tr, q, v), x in per.items()]
    return pd.DataFrame(rows)


def _all_pairs(raw, per_token):
    return {(tr, q, v): x for tr, q, *_ in T.TREND_PAIRS for v, x in (("raw", raw), ("per_token", per_token))}


def test_mix_trend_of_the_declared_mixes():
    assert T.mix_trend([0.3, 0.25, 0.2, 0.15, 0.1]) == pytest.approx(-1.0)
    assert T.mix_trend([0.1, 0.15, 0.2, 0.25, 0.3]) == pytest.approx(1.0)
    # ranks 3 5 1 4 2 against 1..5: sum of squared rank differences 26, rho = 1 - 6 * 26 / 120
    assert T.mix_trend([0.2, 0.3, 0.1, 0.25, 0.15]) == pytest.approx(1 - 6 * 26 / 120)


def test_model_mixes_follow_the_arms():
    p = get_profile("tiny")
    mixes = T.model_mixes(p)
    assert list(mixes) == ["baseline@0", *p.trend_models]
    assert mixes["baseline@0"]["math"] == tuple(p.sft.math_level_weights)
    assert mixes["baseline@1"] == mixes["baseline@0"]
    assert mixes["flipped@0"]["math"] == tuple(p.sft.math_level_weights[::-1])
    assert mixes["flipped@0"]["code"] == tuple(p.sft.code_level_weights[::-1])
    # the control permutes the flipped weights within each domain
    assert sorted(mixes["control@0"]["math"]) == sorted(mixes["flipped@0"]["math"])


def test_model_trend_rows_judge_each_model_and_pair():
    frame = _frame({"baseline@0": _all_pairs(0.3, 0.3), "flipped@0": _all_pairs(0.3, -0.3)})
    rows = T.model_trend_rows(frame)
    assert len(rows) == len(T.TREND_PAIRS) and {r["model"] for r in rows} == {"flipped@0"}
    by = {r["claim"]: r for r in rows}
    up = by["harder math examples help math reasoning more"]  # paper +: raw holds, per token does not
    assert up["verdict"] == "depends on normalisation" and not up["primary"]
    assert up["ours_raw"] == 0.3 and up["interval_per_token"] == pytest.approx([-0.35, -0.25])
    down = by["easier code examples help code reasoning more"]  # paper -: raw does not hold, per token holds
    assert (down["verdict_raw"], down["verdict_per_token"]) == ("does not hold", "holds")
    assert "flipped@0" in down["metric"]


def test_trend_shift_table_by_hand():
    mixes = T.model_mixes(get_profile("tiny"))
    frame = _frame({"baseline@0": _all_pairs(0.10, 0.0), "baseline@1": _all_pairs(0.20, 0.0),
                    "baseline@2": _all_pairs(0.30, 0.0), "flipped@0": _all_pairs(-0.20, 0.05)})
    t = T.trend_shift_table(frame, {m: mixes[m] for m in ("baseline@0", "flipped@0")})
    r = t.loc[("math", "math", "raw")]
    assert r["baseline spread"] == pytest.approx(0.20)
    assert r["flipped@0 - baseline mean"] == pytest.approx(-0.20 - 0.20)
    assert (r["baseline mix trend"], r["flipped@0 mix trend"]) == (pytest.approx(-1.0), pytest.approx(1.0))
    c = t.loc[("code", "code", "per_token")]  # code: the baseline weights hard code most
    assert (c["baseline mix trend"], c["flipped@0 mix trend"]) == (pytest.approx(1.0), pytest.approx(-1.0))
    assert c["flipped@0 - baseline mean"] == pytest.approx(0.05)
    assert len(t) == 2 * len(T.TREND_PAIRS)
