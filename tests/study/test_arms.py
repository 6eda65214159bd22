"""Retrained arms: the recipes (flip, control, influence weights), judging, and the run cache.

Run: pytest tests/study/test_arms.py (the cache test trains the smoke setting, ~20 s).
"""
import dataclasses

import numpy as np
import pandas as pd
import pytest

from infra_study import arms
from infra_study.profiles import get_profile
from infra_study.training import TrainConfig

SFT = TrainConfig(token_budget=1000, math_level_weights=(0.30, 0.25, 0.20, 0.15, 0.10),
                  code_level_weights=(0.10, 0.15, 0.20, 0.25, 0.30))


def test_flip_reverses_both_domains_and_keeps_budget():
    f = arms.flipped_config(SFT)
    assert f.math_level_weights == (0.10, 0.15, 0.20, 0.25, 0.30)
    assert f.code_level_weights == (0.30, 0.25, 0.20, 0.15, 0.10)
    assert (f.token_budget, f.math_token_share, f.seed) == (SFT.token_budget, SFT.math_token_share, SFT.seed)


def test_control_is_a_seeded_permutation_other_than_flip_and_baseline():
    flipped = arms.flipped_config(SFT)
    for seed in range(20):
        c = arms.control_config(SFT, seed)
        for d in ("math", "code"):
            w = c.level_weights(d)
            assert sorted(w) == sorted(flipped.level_weights(d))
            assert w not in (flipped.level_weights(d), SFT.level_weights(d))
        assert c == arms.control_config(SFT, seed)
    assert len({arms.control_config(SFT, s).math_level_weights for s in range(20)}) > 1
    flat = dataclasses.replace(SFT, math_level_weights=(1, 1, 1, 1, 1))
    with pytest.raises(ValueError, match="no order other than"):
        arms.control_config(flat, 0)


def test_influence_weights_keep_only_positive_buckets():
    means = {("math", 1): -1.0, ("math", 2): 1.0, ("math", 3): 3.0, ("math", 4): 0.0, ("math", 5): float("nan"),
             ("code", 1): -2.0, ("code", 2): -1.0}
    w = arms.influence_weights(means)
    assert w["math"] == pytest.approx((0.0, 0.25, 0.75, 0.0, 0.0))
    assert w["code"] == pytest.approx((0.2,) * 5)  # nothing helpful: uniform, the share is fixed
    cfg = arms.influence_config(SFT, means)
    assert cfg.math_level_weights == pytest.approx(w["math"]) and cfg.token_budget == SFT.token_budget


def _outcomes():
    rows = []
    # 2 levels x 2 problems, 2 seeds; arm "b" solves problem p1 at seed 0 only, "a" nothing.
    for arm, solved in (("a", set()), ("b", {("p1", 0)})):
        for seed in (0, 1):
            for pid, lvl in (("p1", 1), ("p2", 1), ("p3", 2), ("p4", 2)):
                rows.append({"id": pid, "domain": "math", "level": lvl, "arm": arm, "seed": seed,
                             "correct": float((pid, seed) in solved), "gold_loglik": -10.0 + (arm == "b") * (lvl == 2)})
    return pd.DataFrame(rows)


def test_paired_difference_is_per_seed_then_two_level():
    out = _outcomes()
    e, per_seed = arms.paired_difference(out, "b", "a", "math", "correct", n_boot=300)
    assert per_seed == {0: pytest.approx(0.25), 1: pytest.approx(0.0)}  # b solves p1 at seed 0 only
    assert e.value == pytest.approx(0.5 / 4)
    assert e.lo <= e.value <= e.hi and e.lo <= 0.0  # seed 1 shows no gain: the seed level reaches 0
    g, _ = arms.paired_difference(out, "b", "a", "math", "gold_loglik", n_boot=300)
    assert g.value == pytest.approx(0.5) and g.lo == pytest.approx(0.5) and g.hi == pytest.approx(0.5)  # strata fixed
    with pytest.raises(ValueError, match="no outcomes for arm"):
        arms.paired_difference(out, "b", "missing", "math", "correct")
    # an arm run at fewer seeds is compared on the seeds both have
    fewer = out[~((out["arm"] == "b") & (out["seed"] == 1))]
    e2, per2 = arms.paired_difference(fewer, "b", "a", "math", "correct", n_boot=300)
    assert per2 == {0: pytest.approx(0.25)} and e2.value == pytest.approx(0.25)


def test_secondary_arms_run_at_fewer_seeds():
    cfg = arms.ArmsConfig(seeds=(0, 1, 2, 3), secondary_seeds=2)
    assert cfg.seeds_of(arms.Arm("flipped", SFT)) == (0, 1, 2, 3)
    assert cfg.seeds_of(arms.Arm("control", SFT)) == (0, 1)
    with pytest.raises(ValueError, match="secondary_seeds"):
        arms.ArmsConfig(seeds=(0, 1), secondary_seeds=3)
    with pytest.raises(ValueError, match="strip"):
        arms.Arm("x", SFT, strip="yes")


def test_accuracy_by_level_mean_and_seed_range():
    t = arms.accuracy_by_level(_outcomes())
    r = t[(t["arm"] == "b") & (t["level"] == 1)].iloc[0]
    assert (r["accuracy"], r["seed_min"], r["seed_max"]) == pytest.approx((0.25, 0.0, 0.5))


def test_runs_are_cached_and_the_canonical_run_is_reused(tmp_path, monkeypatch):
    """Baseline seed 0 is the canonical model (no second training); a second call trains nothing."""
    monkeypatch.setenv("INFRA_RUNS", str(tmp_path))
    from infra_study import pipeline

    arms._base.cache_clear()
    arms._train_records.cache_clear()
    cfg = get_profile("smoke")
    pipeline.ensure_eval(cfg)
    acfg = arms.ArmsConfig(seeds=(0, 1), secondary_seeds=1, workers=1, n_boot=100)
    plan = arms.ablation_arms(cfg.sft)
    first = arms.ensure_runs(cfg, plan, acfg)
    assert list(zip(first["arm"], first["seed"])) == [("baseline", 0), ("baseline", 1), ("no-exploration", 0),
                                                      ("no-exploration (equal problems)", 0)]
    assert first["model_dir"].iloc[0] == str(tmp_path / "smoke" / "model")
    assert len(set(first["key"])) == 4
    stamps = {p: p.stat().st_mtime_ns for p in (tmp_path / "smoke" / "arms").glob("*/model/model.safetensors")}
    assert len(stamps) == 3
    again = arms.ensure_runs(cfg, plan, acfg)
    assert list(again["key"]) == list(first["key"])
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps
    out = arms.outcomes(again)
    assert len(out) == 4 * len(pipeline.load_split(cfg, "test"))
    assert np.isin(out["correct"], [0.0, 1.0]).all() and out["pass1"].between(0, 1).all()
    arms._base.cache_clear()
    arms._train_records.cache_clear()
