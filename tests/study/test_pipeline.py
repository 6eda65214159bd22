"""Pure helpers of infra_study/pipeline.py (no stage runs): which queries the step explorer shows,
and where a training example's answer starts. Run: pytest tests/study/test_pipeline.py"""
from __future__ import annotations

from infra_study import pipeline


def queries(levels_counts: dict[int, int], samples: int = 1) -> list[dict]:
    """Fake D_correct records: ``count`` problems per level, ``samples`` answers each, shuffled ids."""
    out = []
    for lvl, count in levels_counts.items():
        for p in range(count):
            for s in range(samples):
                pid = f"math-{lvl}-query-{p:05d}"
                out.append({"id": f"{pid}#s{s}", "difficulty": lvl, "meta": {"problem_id": pid}})
    return out[::-1]  # not in id order: the helper must sort


def test_explorer_queries_spread_over_levels():
    recs = queries({1: 4, 2: 4, 3: 4, 4: 4, 5: 4}, samples=3)
    got = pipeline.spread_over_levels(recs, 3)
    assert [r["difficulty"] for r in got] == [1, 3, 5]  # not the first three, which are all level 1
    assert [r["id"] for r in got] == ["math-1-query-00000#s0", "math-3-query-00000#s0", "math-5-query-00000#s0"]
    assert pipeline.spread_over_levels(list(reversed(recs)), 3) == got  # the same picks whatever the order
    five = pipeline.spread_over_levels(recs, 5)
    assert [r["difficulty"] for r in five] == [1, 2, 3, 4, 5]
    # fewer levels than picks: every level in turn, different problems before a second sample of one
    two = queries({2: 3, 4: 1}, samples=2)
    got = pipeline.spread_over_levels(two, 4)
    assert sorted(r["difficulty"] for r in got) == [2, 2, 4, 4]
    lvl2 = [r["meta"]["problem_id"] for r in got if r["difficulty"] == 2]
    assert len(set(lvl2)) == 2
    assert len({r["id"] for r in got}) == 4
    # one level only, or more picks than records: what there is, no repeats
    assert len(pipeline.spread_over_levels(queries({3: 2}), 5)) == 2
    assert [r["difficulty"] for r in pipeline.spread_over_levels(recs, 1)] == [3]
    assert pipeline.spread_over_levels([], 3) == [] and pipeline.spread_over_levels(recs, 0) == []


def test_answer_token_is_where_the_last_answer_segment_starts():
    resp = "So 2 + 2 = 4.\nThe answer is 4.\nCheck again.\nThe answer is 4."
    first = resp.index("The answer")
    last = resp.rindex("The answer")
    rec = {"response": resp, "meta": {"segments": [[0, first, "step"], [first, first + 17, "answer"],
                                                   [first + 17, last, "exploratory"], [last, len(resp), "answer"]]}}
    # word-ish tokens with their character spans
    offsets, pos = [], 0
    for piece in resp.replace("\n", "\n ").split(" "):
        piece = piece.replace("\n", "")
        start = resp.index(piece, pos) if piece else pos
        offsets.append((start, start + len(piece)))
        pos = start + len(piece)
    i = pipeline.answer_token(rec, offsets)
    assert offsets[i][0] <= last < offsets[i][1]
    assert resp[offsets[i][0]:].startswith("The answer is 4.") and resp[offsets[i][0]:] == resp[last:]
    assert pipeline.answer_token({"meta": {"segments": [[0, 5, "step"]]}}, offsets) is None


def test_bench_facts_show_each_peer_or_why_not():
    from infra_study.pipeline import bench_facts

    bench = {"pearson_example": 0.99999994, "pipeline_ratio_vs_kronfluence": 0.61234, "pipeline_floor_multiple": 3.456,
             "kronfluence_pipeline_floor_multiple": 5.678, "repeats": 3, "token_ratio_vs_kronfluence": 0.4321,
             "pipeline_ratio_vs_dattri": 0.2345, "pearson_example_vs_dattri": 0.98765,
             "skipped": {"bergson": "no --peer-python given"}}
    f = bench_facts(bench)
    assert f["pipeline ratio ours / kronfluence"] == 0.612 and f["ours / floor"] == 3.46
    assert f["token scores ratio ours / kronfluence"] == 0.432 and f["repeats (minimum over)"] == 3
    assert f["pipeline ratio ours / dattri"] == 0.234 and f["Pearson ours vs dattri (example)"] == 0.9877
    assert f["pipeline ratio ours / bergson"] == "no --peer-python given"
    quick = bench_facts({k: v for k, v in bench.items() if k not in ("skipped", "pipeline_ratio_vs_dattri", "token_ratio_vs_kronfluence")})
    assert quick["pipeline ratio ours / dattri"] == "not timed (quick bench)"
    assert "token scores ratio ours / kronfluence" not in quick


def test_spread_and_explorer_queries_share_one_scoring_pass(monkeypatch):
    """The per-query spread rows (chapter 01) and the step explorer (chapter 05) come from the
    domain-mean pass (its individual rows): every chosen query once, spread queries first; another
    explorer size gets a pass of its own with query-side steps."""
    from types import SimpleNamespace

    qs = {"math": [dict(r, domain="math") for r in queries({1: 2, 3: 2, 5: 2})],
          "code": [dict(r, id=r["id"].replace("math", "code"), domain="code") for r in queries({2: 3, 4: 3})]}
    monkeypatch.setattr(pipeline, "load_queries", lambda p: qs)
    single = object()
    monkeypatch.setattr(pipeline, "ensure_scores", lambda p: SimpleNamespace(single_queries=lambda: single))
    calls = []
    monkeypatch.setattr(pipeline, "_chosen_query_scores",
                        lambda p, chosen, cfg, sub: calls.append(([q["id"] for q in chosen], cfg, sub)) or len(calls))
    profile = SimpleNamespace(spread_queries=2)
    assert pipeline.ensure_query_scores(profile) is single and pipeline.ensure_step_scores(profile) is single
    ids = [q["id"] for q in pipeline._individual_queries(qs, profile.spread_queries)]
    spread = [q["id"] for d in ("math", "code") for q in qs[d][:2]]
    explorer = [q["id"] for d in ("math", "code") for q in pipeline.spread_over_levels(qs[d], 3)]
    assert pipeline.spread_query_ids(profile) == spread
    assert ids[: len(spread)] == spread and len(ids) == len(set(ids)) and set(ids) == set(spread) | set(explorer)
    assert pipeline.ensure_step_scores(profile, 2) == 1
    got, cfg, sub = calls[0]
    assert set(got) == set(spread) | {q["id"] for d in ("math", "code") for q in pipeline.spread_over_levels(qs[d], 2)}
    assert sub == "per_query" and cfg.aggregation == "per-query" and cfg.query_segment_scores
