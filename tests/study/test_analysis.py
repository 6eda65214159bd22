"""Intervals, verdicts and token categories, on samples small enough to check by hand.

Run: pytest tests/study/test_analysis.py
"""
import numpy as np
import pytest
from scipy import stats

from infra_study import analysis as A


def test_bootstrap_mean_covers_the_mean_and_shrinks_with_n():
    rng = np.random.default_rng(0)
    small = A.bootstrap_mean(rng.normal(1.0, 1.0, 30))
    large = A.bootstrap_mean(rng.normal(1.0, 1.0, 3000))
    assert small.lo < small.value < small.hi
    assert large.lo < 1.0 < large.hi
    assert (large.hi - large.lo) < (small.hi - small.lo) / 5


def test_constant_sample_has_degenerate_interval():
    e = A.bootstrap_mean([2.0, 2.0, 2.0])
    assert (e.value, e.lo, e.hi) == (2.0, 2.0, 2.0)


def test_stratified_resampling_keeps_strata_sizes():
    # two strata with constant values: a stratified mean can never move
    vals = [0.0] * 5 + [10.0] * 5
    e = A.bootstrap_mean(vals, strata=[1] * 5 + [2] * 5)
    assert e.lo == e.hi == 5.0
    free = A.bootstrap_mean(vals)
    assert free.lo < 5.0 < free.hi


def test_mean_diff_and_spearman_point_estimates_match_scipy():
    a, b = [1.0, 2.0, 3.0, 4.0], [0.0, 1.0]
    assert A.bootstrap_mean_diff(a, b).value == pytest.approx(2.5 - 0.5)
    x = [1, 2, 3, 4, 5, 6]
    y = [2, 1, 4, 3, 6, 5]
    assert A.bootstrap_spearman(x, y).value == pytest.approx(stats.spearmanr(x, y).statistic)


@pytest.mark.parametrize("value,lo,hi,sign,expected", [
    (0.5, 0.1, 0.9, 1, "holds"),
    (0.5, -0.1, 0.9, 1, "inconclusive"),
    (-0.5, -0.9, -0.1, 1, "does not hold"),
    (-0.5, -0.9, -0.1, -1, "holds"),
    (0.2, -0.3, 0.5, -1, "inconclusive"),
    (0.2, 0.1, 0.5, -1, "does not hold"),
    (float("nan"), 0.0, 1.0, 1, "inconclusive"),
])
def test_verdict_rule(value, lo, hi, sign, expected):
    assert A.verdict(A.Estimate(value, lo, hi, 100), sign) == expected


def test_inconclusive_says_why():
    wide = A.Estimate(0.01, -0.2, 0.22, 100)
    v, why = A.judge(wide, +1, paper_effect=0.10)
    assert v == "inconclusive" and "exceeds the paper's effect" in why
    v, why = A.judge(A.Estimate(0.0, -0.01, 0.01, 100), +1, paper_effect=0.10)
    assert v == "inconclusive" and "no effect of that size" in why
    v, why = A.judge(wide, +1, bounded=A.bounded_levels({1: 0.97, 2: 0.96, 3: 0.5, 5: 0.02}))
    assert "levels 1, 2" in why and "level 5" in why
    assert A.judge(A.Estimate(0.3, 0.1, 0.5, 100), +1) == ("holds", None)
    assert A.bounded_levels({1: 0.5, 2: 0.6}) is None


def test_judge_against_a_declared_threshold():
    # recall 0.95 [0.92, 0.98] against ">= 0.9": above the threshold although 0.9 > 0
    assert A.judge(A.Estimate(0.95, 0.92, 0.98, 100), +1, null=0.9) == ("holds", None)
    assert A.judge(A.Estimate(0.80, 0.70, 0.88, 100), +1, null=0.9) == ("does not hold", None)
    v, why = A.judge(A.Estimate(0.91, 0.85, 0.97, 100), +1, null=0.9)
    assert v == "inconclusive" and "[+0.85, +0.97] includes the threshold +0.9" in why
    # a difference against "within 0.02": -0.01 [-0.03, +0.01] straddles -0.02
    v, why = A.judge(A.Estimate(-0.01, -0.03, 0.01, 100), +1, null=-0.02)
    assert v == "inconclusive" and "threshold -0.02" in why
    assert A.judge(A.Estimate(0.0, 0.0, 0.0, 100), +1, null=-0.02) == ("holds", None)
    # an interval that only excludes zero does not pass a threshold it includes
    row = A.effect_row("c", "m", A.Estimate(0.5, 0.1, 0.9, 100), +1, paper=">= 0.9", null=0.9)
    assert row["verdict"] == "inconclusive" and row["interval"] == [0.1, 0.9]


def test_combine_verdicts():
    assert A.combine_verdicts(["holds", "holds"]) == "holds"
    assert A.combine_verdicts(["holds", "does not hold"]) == "mixed"
    assert A.combine_verdicts(["holds", "inconclusive"]) == "mixed"
    assert A.combine_verdicts(["inconclusive", "inconclusive"]) == "inconclusive"
    assert A.combine_verdicts(["does not hold", "does not hold"]) == "does not hold"
    with pytest.raises(ValueError):
        A.combine_verdicts(["maybe"])


def test_normalisation_verdict_and_trend_row():
    assert A.normalisation_verdict("holds", "holds") == "holds"
    assert A.normalisation_verdict("holds", "does not hold") == "depends on normalisation"
    assert A.normalisation_verdict("holds", "inconclusive") == "depends on normalisation"
    up, down = A.Estimate(0.3, 0.1, 0.5, 100), A.Estimate(-0.3, -0.5, -0.1, 100)
    row = A.trend_row("c", "m", up, down, +1, paper="positive")
    assert row["verdict"] == "depends on normalisation" and "per-token score: does not hold" in row["reason"]
    assert (row["ours_raw"], row["ours_per_token"]) == (0.3, -0.3)
    assert row["interval_raw"] == [0.1, 0.5] and row["interval_per_token"] == [-0.5, -0.1]
    assert A.trend_row("c", "m", up, up, +1, paper="p")["verdict"] == "holds"


def test_two_level_bootstrap_by_hand():
    # every problem of a seed has the same difference: the problem level adds nothing, so the
    # interval is that of resampling 3 seed means {0, 1, 2} (mean of 3 draws: 0 .. 2)
    diffs = [np.zeros(10), np.ones(10), 2 * np.ones(10)]
    est, per_seed = A.two_level_bootstrap(diffs, n_boot=4000)
    assert per_seed == [0.0, 1.0, 2.0] and est.value == 1.0
    assert 0.0 <= est.lo < 0.5 and 1.5 < est.hi <= 2.0
    # one seed: the interval is the problem-level one, stratified (constant strata: no width)
    est1, _ = A.two_level_bootstrap([[0.0] * 5 + [1.0] * 5], [[1] * 5 + [2] * 5])
    assert est1.lo == est1.hi == 0.5


def test_two_level_interval_is_wider_than_problems_alone_when_seeds_differ():
    rng = np.random.default_rng(1)
    diffs = [rng.normal(mu, 0.3, 200) for mu in (-0.1, 0.05, 0.2, 0.0, 0.15, -0.05)]
    est, _ = A.two_level_bootstrap(diffs, n_boot=2000)
    pooled = A.bootstrap_mean(np.concatenate(diffs), n_boot=2000)
    assert (est.hi - est.lo) > 2 * (pooled.hi - pooled.lo)
    # coverage of the seed-level mean under the null: the true mean 0.0083 is inside
    assert est.lo < np.mean([-0.1, 0.05, 0.2, 0.0, 0.15, -0.05]) < est.hi


def test_write_findings_validates_rows(tmp_path, monkeypatch):
    monkeypatch.setenv("INFRA_RUNS", str(tmp_path))
    row = {"claim": "c", "metric": "m", "ours": 0.1, "interval": [0.0, 0.2], "paper": "+", "verdict": "mixed"}
    with pytest.raises(ValueError, match="reason"):
        A.write_findings("smoke", "03", [{**row, "verdict": "inconclusive"}])
    path = A.write_findings("smoke", "01", [row], seed=0)
    assert path == tmp_path / "smoke" / "findings" / "01.json"
    assert A.read_findings("smoke")["01"]["rows"] == [row]
    with pytest.raises(ValueError, match="verdict"):
        A.write_findings("smoke", "02", [{**row, "verdict": "yes"}])
    with pytest.raises(ValueError, match="missing"):
        A.write_findings("smoke", "02", [{"claim": "c"}])
    assert not (tmp_path / "smoke" / "findings" / "02.json").exists()


def test_words_are_classified_whole_via_offsets():
    text = "Altern atively... Since 7 > 5, so we check.\n```python\ndef f(x):\n    if x:\n        return 1\n```"
    # split words as a small BPE vocabulary would: fragments take their whole word's category
    pieces = ["Altern", " atively", "...", " Si", "nce", " 7", " >", " 5", ",", " so", " we", " che", "ck", ".\n",
              "```", "python", "\n", "def", " f", "(", "x", "):", "\n   ", " if", " x", ":", "\n       ", " return", " 1",
              "\n", "```"]
    offs, k = [], 0
    for p in pieces:
        j = text.index(p, k)
        offs.append((j, j + len(p)))
        k = j + len(p)
    cats = dict(zip(pieces, A.word_categories(text, offs)))
    assert cats["Altern"] == "other"  # "Altern" is its own word here (a space follows)
    assert cats[" Si"] == cats["nce"] == "connector"  # "Since", split in two
    assert cats[" che"] == cats["ck"] == "connector"
    assert cats[" so"] == "connector" and cats[" we"] == "other" and cats[" 7"] == "number"
    assert cats[" >"] == "other"  # a symbol outside code is prose
    assert cats["def"] == cats[" if"] == cats[" return"] == cats["("] == cats["):"] == "code syntax"
    assert cats["\n   "] == "code syntax"  # indentation inside code
    assert cats[" f"] == cats[" x"] == "other" and cats[" 1"] == "number"
    assert cats["```"] == cats["python"] == "code syntax"


def _recs(levels_domains):
    return [{"domain": d, "difficulty": l} for d, l in levels_domains]


def test_bucket_influence_means_by_hand():
    recs = _recs([("math", 1), ("math", 1), ("math", 2), ("code", 1)])
    df = A.bucket_influence([1.0, 3.0, -2.0, 5.0], recs, n_boot=200)
    got = {(r.domain, r.level): (r.n, r.mean) for r in df.itertuples()}
    assert got == {("code", 1): (1, 5.0), ("math", 1): (2, 2.0), ("math", 2): (1, -2.0)}
    with pytest.raises(ValueError, match="expected"):
        A.bucket_influence([1.0], recs)


def test_difficulty_trend_is_spearman_within_domain():
    recs = _recs([("math", l) for l in (1, 2, 3, 4, 5)] + [("code", 1)] * 3)
    est = A.difficulty_trend([1, 2, 3, 4, 5, 9, 9, 9], recs, "math", n_boot=200)
    assert est.value == pytest.approx(1.0)


def test_group_contrast_averages_within_example_first():
    # example 0: many 'a' tokens at 1.0; example 1: one 'a' token at 3.0; b tokens at 0
    vals = [[1.0] * 10 + [0.0], [3.0, 0.0]]
    labs = [["a"] * 10 + ["b"], ["a", "b"]]
    est = A.group_contrast(vals, labs, "a", "b", n_boot=200)
    assert est.value == pytest.approx((1.0 + 3.0) / 2 - 0.0)  # not the pooled (10+3)/11


def test_token_table_counts_and_means():
    df = A.token_table([["a", "b", "a"], ["a"]], [[1.0, 5.0, 3.0], [2.0]], min_count=2)
    assert list(df["token"]) == ["a"]
    assert df.loc[0, "count"] == 3 and df.loc[0, "examples"] == 2 and df.loc[0, "mean"] == pytest.approx(2.0)


def test_category_table_means_per_example_first():
    vals = [[1.0, 1.0, 1.0, 4.0], [3.0, 0.0]]
    labs = [["connector", "connector", "connector", "number"], ["connector", "other"]]
    t = A.category_table(vals, labs, n_boot=100).set_index("category")
    assert t.loc["connector", "mean"] == pytest.approx(2.0)  # (1 + 3) / 2, not 6 / 4
    assert t.loc["connector", "n_examples"] == 2 and t.loc["number", "n_examples"] == 1
    assert t.loc["code syntax", "n_examples"] == 0


def test_within_example_contrast_by_hand_and_permutation():
    """Estimate = mean over examples having both groups of (mean a - mean b); examples lacking a
    group are left out; a strong effect gets a small permutation p, no effect a large one."""
    from infra_study.analysis import within_example_contrast

    values = [[3.0, 1.0, 2.0], [5.0, 1.0], [9.0, 9.0]]
    labels = [["a", "b", "b"], ["a", "b"], ["b", "b"]]
    est, p, n = within_example_contrast(values, labels, "a", "b", n_boot=200, n_perm=200)
    assert n == 2 and est.value == pytest.approx(((3 - 1.5) + (5 - 1)) / 2)

    rng = np.random.default_rng(0)
    strong = [list(rng.normal(0, 1, 6) + np.r_[2.0, 2.0, 0, 0, 0, 0]) for _ in range(40)]
    lab = [["a", "a", "b", "b", "b", "b"]] * 40
    assert within_example_contrast(strong, lab, "a", "b", n_perm=500)[1] < 0.01
    # Under the null the p-value is calibrated: about 5% of null data sets fall below 0.05.
    ps = [within_example_contrast([list(rng.normal(0, 1, 6)) for _ in range(40)], lab, "a", "b",
                                  n_boot=100, n_perm=200)[1] for _ in range(60)]
    assert np.mean(np.array(ps) < 0.05) <= 0.15 and 0.3 < np.mean(ps) < 0.7
    with pytest.raises(ValueError, match="no example has both"):
        within_example_contrast([[1.0]], [["a"]], "a", "b")


def test_category_interaction_by_hand():
    # two examples; token labels c (connector) and s (syntax); math/code targets with equal scales
    labels = [["c", "s"], ["c", "s"]]
    on_math = [[2.0, 0.0], [2.0, 0.0]]
    on_code = [[0.0, 2.0], [0.0, 2.0]]
    est, na, nb = A.category_interaction(on_math, on_code, labels, "c", "s", n_boot=200)
    # std of {2,0,2,0} is 1 on both targets: d_c = 2 - 0 = 2, d_s = 0 - 2 = -2, interaction 4
    assert (na, nb) == (2, 2) and est.value == pytest.approx(4.0) and est.lo == pytest.approx(4.0)
    # scale invariance: multiplying one target by 10 changes nothing
    est10, _, _ = A.category_interaction([[20.0, 0.0]] * 2, on_code, labels, "c", "s", n_boot=200)
    assert est10.value == pytest.approx(4.0)
    assert A.category_interaction(on_math, on_code, [["c", "c"]] * 2, "c", "s") is None


def test_record_findings_freezes_rows_config_and_commit(tmp_path, monkeypatch):
    import json

    from infra_study.profiles import get_profile

    monkeypatch.setenv("INFRA_RUNS", str(tmp_path))
    row = {"claim": "c", "metric": "m", "ours": 0.1, "interval": [0.0, 0.2], "paper": "+", "verdict": "holds"}
    A.write_findings("smoke", "01", [row], seed=0)
    out = A.record_findings(get_profile("smoke"), tmp_path / "rec.json", setting="smoke, test")
    rec = json.loads(out.read_text())
    assert rec["findings"]["01"]["rows"] == [row] and rec["setting"] == "smoke, test"
    assert rec["config"]["name"] == "smoke" and rec["config"]["corpus"] == json.loads(json.dumps(
        __import__("infra_lib.io", fromlist=["config_to_dict"]).config_to_dict(get_profile("smoke").corpus)))
    assert rec["commit"] is None or len(rec["commit"]) == 40
    with pytest.raises(ValueError, match="no findings"):
        A.record_findings(get_profile("tiny"), tmp_path / "none.json", setting="x")
