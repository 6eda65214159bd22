"""What each setting runs: notes of the chapters, the planted-copy ranks on a real model, the
before/after accuracy table (run: ``pytest tests/study/test_setting.py``; seconds, no model)."""
import json

import numpy as np
import pandas as pd
import pytest

from infra_study import arms, setting
from infra_study.attribution import copy_ranks
from infra_study.profiles import get_profile


def test_tiny_runs_everything_and_says_nothing():
    cfg = get_profile("tiny")
    assert setting.retrains(cfg) and setting.micro_checks(cfg)
    assert all(setting.chapter_note_html(cfg, n) == "" for n in ("00", "01", "02", "03", "04", "05"))


def test_pretrained_skips_the_retraining_parts_and_says_why():
    cfg = get_profile("pretrained")
    assert not setting.retrains(cfg) and not setting.micro_checks(cfg)
    for n in ("01", "02", "03"):
        note = setting.skipped_html(cfg, n)
        assert "Skipped under <code>pretrained</code>" in note and "GPU-scale" in note
    assert "exact inverses do not fit" in setting.skipped_html(cfg, "05")
    assert setting.skipped_html(cfg, "04") == ""
    assert "SmolLM2-135M-Instruct" in setting.chapter_note_html(cfg, "00")


def test_sft_runs_count_what_the_arms_would_train():
    cfg = get_profile("tiny")
    a = cfg.arms
    flip = [s for name in ("baseline", "flipped", "control", "influence") for s in a.seeds_of(arms.Arm(name, cfg.sft))]
    assert setting.sft_runs(cfg, "flip") == len(flip) - 1  # baseline at the first seed: the canonical model
    abl = [s for x in arms.ablation_arms(cfg.sft)[1:] for s in a.seeds_of(x)]
    assert setting.sft_runs(cfg, "ablation") == len(abl)
    assert setting.sft_runs(cfg, "trend") == len(cfg.trend_models)
    with pytest.raises(KeyError, match="parts"):
        setting.sft_runs(cfg, "nothing")


def test_copy_ranks_equal_sorting_the_whole_pool():
    rng = np.random.default_rng(0)
    R, N = 5, 40
    train, copies = rng.normal(size=(R, N)), rng.normal(size=(R, R))
    copies[np.arange(R), np.arange(R)] += rng.choice([0.0, 3.0], size=R)  # some copies stand out, some do not
    ranks = copy_ranks(train, copies)
    for r in range(R):
        pool = np.concatenate([train[r], copies[r]])
        order = np.argsort(-pool, kind="stable")
        assert ranks[r] == 1 + int(np.flatnonzero(order == N + r)[0])
    assert copy_ranks(np.zeros((2, 3)), np.eye(2)).tolist() == [1, 1]
    assert copy_ranks(np.ones((1, 3)), np.ones((1, 1))).tolist() == [4]  # ties count against the copy
    with pytest.raises(ValueError, match="R, R"):
        copy_ranks(train, copies[:, :3])


def test_accuracy_before_after_reads_both_evaluations(tmp_path, monkeypatch):
    cfg = get_profile("pretrained", {"pretrained.before_sampled": True, "pretrained.before_humaneval": True})
    before, after = tmp_path / "before", tmp_path / "after"
    for d, acc in ((before, {"math": {"1": 0.25}, "code": {"1": 0.5}}), (after, {"math": {"1": 0.75}, "code": {"1": 1.0}})):
        d.mkdir()
        (d / "accuracy.json").write_text(json.dumps(acc))
        (d / "accuracy_sampled.json").write_text(json.dumps({k: {"1": v["1"] / 2} for k, v in acc.items()}))
    for d, n in ((before, 2), (after, 4)):
        (d / "test_generations.jsonl").write_text("".join(
            json.dumps({"domain": dom, "difficulty": 1}) + "\n" for dom in ("math",) * n + ("code",) * 2))
    import infra_study.pipeline as pl
    import infra_study.pretrained_stages as ps

    monkeypatch.setattr(ps, "ensure_before_eval", lambda p: before)
    monkeypatch.setattr(pl, "ensure_eval", lambda p: after)
    monkeypatch.setattr(pl, "ensure_model", lambda p: tmp_path / "sft")
    monkeypatch.setattr(ps, "ensure_pretrained_base", lambda p: tmp_path / "base")
    he = {"base": {"n": 3, "accuracy": 1 / 3, "by_level": {"2": 0.5}}, "sft": {"n": 3, "accuracy": 2 / 3, "by_level": {"2": 1.0}}}
    monkeypatch.setattr(ps, "ensure_humaneval", lambda p, m, o: he[m.name])
    t = setting.accuracy_before_after(cfg)
    assert list(t.columns) == ["problems before", "problems after", "greedy before", "greedy after",
                               "sampled pass@1 before", "sampled pass@1 after"]
    assert t.loc[("math", "1"), "greedy before"] == 0.25 and t.loc[("math", "1"), "greedy after"] == 0.75
    assert t.loc[("code", "1"), "sampled pass@1 after"] == 0.5 and t.loc[("math", "1"), "problems after"] == 4
    assert t.loc[("math", "1"), "problems before"] == 2 and t.loc[("humaneval", "all"), "problems after"] == 3
    assert t.loc[("humaneval", "all"), "greedy after"] == pytest.approx(2 / 3)
    assert t.loc[("humaneval", "2"), "greedy before"] == 0.5
    assert list(t.index.get_level_values(0)) == ["code", "math", "humaneval", "humaneval"]
    # the defaults: greedy only before SFT (no sampled file there) and HumanEval after SFT only
    (before / "accuracy_sampled.json").unlink()
    monkeypatch.setattr(ps, "ensure_humaneval", lambda p, m, o: he["sft"] if m.name == "sft" else pytest.fail("HumanEval before SFT"))
    t = setting.accuracy_before_after(get_profile("pretrained"))
    assert list(t.columns) == ["problems before", "problems after", "greedy before", "greedy after", "sampled pass@1 after"]
    assert pd.isna(t.loc[("humaneval", "all"), "greedy before"]) and pd.isna(t.loc[("humaneval", "all"), "problems before"])
    assert t.loc[("humaneval", "all"), "greedy after"] == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match="no pretrained model"):
        setting.accuracy_before_after(get_profile("tiny"))


def test_domains_without_greedy_queries_reads_the_greedy_sets(tmp_path, monkeypatch):
    import infra_study.pipeline as pl
    from infra_study import attribution

    (tmp_path / "queries_greedy_math.jsonl").write_text("")
    rec = {"id": "code-1-0", "domain": "code", "difficulty": 1, "prompt": "p", "response": "r", "tests": ["assert True"],
           "meta": {"segments": [[0, 1, "answer"]]}}
    (tmp_path / "queries_greedy_code.jsonl").write_text(json.dumps(rec) + "\n")
    monkeypatch.setattr(pl, "ensure_eval", lambda p: tmp_path)
    assert attribution.domains_without_greedy_queries(get_profile("pretrained")) == ["math"]


def test_gold_loglik_before_after_joins_the_same_problems(tmp_path, monkeypatch):
    """Per-token gold log-likelihood, before and after SFT, over the problems evaluated in both (by
    id): a problem seen only after SFT does not enter the after mean."""
    import infra_study.pipeline as pl
    import infra_study.pretrained_stages as ps

    before, after = tmp_path / "before", tmp_path / "after"
    rows = {before: [("m1", "math", 1, -10.0, 5), ("m2", "math", 1, -6.0, 2), ("c1", "code", 2, -4.0, 4)],
            after: [("m1", "math", 1, -5.0, 5), ("m2", "math", 1, -2.0, 2), ("m3", "math", 1, -100.0, 1),
                    ("c1", "code", 2, -1.0, 4)]}
    for d, rs in rows.items():
        d.mkdir()
        (d / "test_generations.jsonl").write_text("".join(json.dumps(
            {"id": i, "domain": dom, "difficulty": lv, "gold_loglik": ll, "gold_tokens": n}) + "\n" for i, dom, lv, ll, n in rs))
    monkeypatch.setattr(ps, "ensure_before_eval", lambda p: before)
    monkeypatch.setattr(pl, "ensure_eval", lambda p: after)
    t = setting.gold_loglik_before_after(get_profile("pretrained"))
    assert t.loc[("math", "1"), "problems"] == 2 and t.loc[("code", "2"), "problems"] == 1
    assert t.loc[("math", "1"), "before"] == pytest.approx((-10 / 5 + -6 / 2) / 2)
    assert t.loc[("math", "1"), "after"] == pytest.approx((-5 / 5 + -2 / 2) / 2)  # m3 is not in both
    assert t.loc[("code", "2"), "after - before"] == pytest.approx(-1 / 4 - -4 / 4)
    with pytest.raises(ValueError, match="no pretrained model"):
        setting.gold_loglik_before_after(get_profile("tiny"))
