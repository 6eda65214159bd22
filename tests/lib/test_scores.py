"""Score pass: token / segment / query-segment decompositions, groups, rank r, invariances, sign.

Run: ``pytest tests/lib/test_scores.py -q`` (float64 micro model, under a minute).
"""
import copy

import pytest
import torch

from infra_lib.factors import FactorConfig, fit_factors
from infra_lib.scores import ScoreConfig, compute_scores, load_scores, scores_exist
from infra_lib.tracking import select_modules

from conftest import autograd_example_grads, autograd_token_tensors, summed_nll

F64 = dict(dtype="float64")


@pytest.fixture(scope="module")
def ekfac(micro):
    model, train, _ = micro
    return fit_factors(model, train, FactorConfig(dtype="float64", batch_size=8), progress=False)


@pytest.fixture(scope="module")
def identity(micro):
    model, train, _ = micro
    return fit_factors(model, train, FactorConfig(strategy="identity", dtype="float64"), progress=False)


def test_token_scores_equal_position_oracle(micro, identity):
    """Identity token scores equal sum_m g_{t-1}^T G_q a_{t-1} from autograd (entry t = position t-1)."""
    model, train, queries = micro
    names = select_modules(model)
    s = compute_scores(model, identity, queries[:3], train[:5], ScoreConfig(token_scores=True, batch_size=3, **F64),
                       progress=False)
    gq = autograd_example_grads(model, queries[:3], names)
    for i, ex in enumerate(train[:5]):
        a, g = autograd_token_tensors(model, ex, names)
        pos = sum(torch.einsum("to,qoi,ti->qt", g[n], gq[n], a[n]) for n in names)  # (Q, T)
        want = torch.cat([torch.zeros(3, 1, dtype=pos.dtype), pos[:, :-1]], 1)
        torch.testing.assert_close(s.tokens_of(i), want, rtol=1e-9, atol=1e-12 * float(pos.abs().max()))
        assert float(pos[:, -1].abs().max()) == 0.0  # the last position predicts nothing


def test_token_segment_and_query_segment_sums(micro, ekfac):
    model, train, queries = micro
    cfg = ScoreConfig(token_scores=True, segment_scores=True, query_segment_scores=True, batch_size=5, **F64)
    s = compute_scores(model, ekfac, queries, train, cfg, progress=False)
    tol = dict(rtol=1e-9, atol=1e-11 * float(s.example.abs().max()))
    sums = torch.stack([s.tokens_of(i).sum(1) for i in range(len(train))], 1)
    torch.testing.assert_close(sums, s.example, **tol)
    for i, ex in enumerate(train):
        tok, seg = s.tokens_of(i), ex["segment_ids"]
        k = int(seg.max()) + 1
        want = torch.stack([tok[:, seg == j].sum(1) for j in range(k)], 1)
        torch.testing.assert_close(s.segments_of(i), want, **tol)
        counts = torch.stack([(seg == j).sum() for j in range(k)]).double()
        torch.testing.assert_close(s.segments_of(i, mean=True), want / counts, **tol)
    parents = s.query_segment_parent
    assert len(parents) == sum(int(q["segment_ids"].max()) + 1 for q in queries)
    for r, qid in enumerate(s.row_ids):
        rows = [j for j, p in enumerate(parents) if p == qid]
        assert len(rows) >= 2
        torch.testing.assert_close(s.query_segment[rows].sum(0), s.example[r], **tol)
        steps = s.steps_of(qid, len(rows) + 1)  # one step more than the query has: a zero row
        torch.testing.assert_close(steps[:-1], s.query_segment[rows], **tol)
        assert not steps[-1].any()
    with pytest.raises(KeyError, match="no query-segment rows"):
        s.steps_of("not-a-query")


def test_group_means_and_per_query_rows(micro, ekfac):
    model, train, queries = micro
    ids = [q["id"] for q in queries]
    groups = {"even": ids[0::2], "odd": ids[1::2]}
    per = compute_scores(model, ekfac, queries, train, ScoreConfig(**F64), progress=False)
    mean = compute_scores(model, ekfac, queries, train, ScoreConfig(aggregation="mean", groups=groups, token_scores=True,
                                                                   **F64), progress=False)
    assert mean.row_ids == ["even", "odd"] and per.row_ids == ids
    torch.testing.assert_close(mean.example, torch.stack([per.example[0::2].mean(0), per.example[1::2].mean(0)]),
                               rtol=1e-9, atol=1e-12)
    with pytest.raises(ValueError, match="not among the queries"):
        compute_scores(model, ekfac, queries, train, ScoreConfig(aggregation="mean", groups={"x": ["nope"]}),
                       progress=False)


def test_batch_size_and_padding_invariance(micro, ekfac):
    model, train, queries = micro
    cfg = dict(token_scores=True, segment_scores=True, **F64)
    one = compute_scores(model, ekfac, queries, train, ScoreConfig(batch_size=1, query_batch_size=1, **cfg),
                         progress=False)
    many = compute_scores(model, ekfac, queries, train, ScoreConfig(batch_size=7, query_batch_size=4, **cfg),
                          progress=False)
    for k in ("example", "token", "segment"):
        torch.testing.assert_close(getattr(one, k), getattr(many, k), rtol=1e-9, atol=1e-12)


def test_rank_r_query_store(micro, ekfac):
    model, train, queries = micro
    full = compute_scores(model, ekfac, queries, train, ScoreConfig(**F64), progress=False)
    exact_r = compute_scores(model, ekfac, queries, train, ScoreConfig(rank=16, token_scores=True, **F64),
                             progress=False)  # 16 = min(d_out, d_in): lossless
    torch.testing.assert_close(exact_r.example, full.example, rtol=1e-8, atol=1e-10)
    low = compute_scores(model, ekfac, queries, train, ScoreConfig(rank=2, token_scores=True, **F64), progress=False)
    sums = torch.stack([low.tokens_of(i).sum(1) for i in range(len(train))], 1)
    torch.testing.assert_close(sums, low.example, rtol=1e-9, atol=1e-12)
    assert float(torch.corrcoef(torch.stack([low.example.flatten(), full.example.flatten()]))[0, 1]) > 0.5


def test_sign_positive_is_helpful(micro, identity):
    """Identity scores are g_q . g_i: one small gradient step on training example i changes the query
    loss by -eps * score (first order), so a positive score means the example helps the query."""
    model, train, queries = micro
    s = compute_scores(model, identity, queries[:2], train[:6], ScoreConfig(**F64), progress=False)
    names = select_modules(model)
    eps = 1e-6
    for i in range(6):
        m = copy.deepcopy(model)
        gi = autograd_example_grads(m, [train[i]], names)
        mods = dict(m.named_modules())
        with torch.no_grad():
            for n in names:
                mods[n].weight -= eps * gi[n][0]
        with torch.no_grad():
            for q in range(2):
                delta = float(summed_nll(m, queries[q]) - summed_nll(model, queries[q]))
                assert delta == pytest.approx(-eps * float(s.example[q, i]), rel=1e-3)


def test_save_load_roundtrip(micro, ekfac, tmp_path):
    model, train, queries = micro
    cfg = ScoreConfig(token_scores=True, segment_scores=True, query_segment_scores=True, **F64)
    s = compute_scores(model, ekfac, queries, train, cfg, out_dir=tmp_path, progress=False)
    assert scores_exist(tmp_path) and not list(tmp_path.glob(".*"))
    t = load_scores(tmp_path)
    assert t.row_ids == s.row_ids and t.train_ids == s.train_ids and t.query_segment_ids == s.query_segment_ids
    assert t.config == cfg
    for k in ("example", "token", "token_offsets", "segment", "segment_mean", "segment_offsets", "query_segment"):
        torch.testing.assert_close(getattr(t, k), getattr(s, k), rtol=0, atol=0)


def test_score_config_validation():
    with pytest.raises(ValueError, match="groups"):
        ScoreConfig(aggregation="mean")
    with pytest.raises(ValueError, match="rank"):
        ScoreConfig(rank=0)
    assert ScoreConfig(aggregation="mean", groups={"a": ["x"]}).groups == (("a", ("x",)),)


def test_score_pass_resumes(micro, ekfac, tmp_path, monkeypatch):
    """A score pass interrupted after some chunks resumes from the last one and gives the same scores."""
    import infra_lib.scores as scores_mod
    from infra_lib.tracking import ModuleTracker

    model, train, queries = micro
    cfg = ScoreConfig(token_scores=True, batch_size=2, save_every=3, **F64)
    ref = compute_scores(model, ekfac, queries, train, cfg, progress=False)
    real_run = ModuleTracker.run
    calls = {"n": 0}

    def flaky(self, *a, **k):
        calls["n"] += 1
        if calls["n"] == 9 + 1:  # 1 query batch of 6 (query_batch_size 16), then the 9th training batch
            raise KeyboardInterrupt
        return real_run(self, *a, **k)

    monkeypatch.setattr(ModuleTracker, "run", flaky)
    with pytest.raises(KeyboardInterrupt):
        compute_scores(model, ekfac, queries, train, cfg, out_dir=tmp_path, progress=False)
    assert (tmp_path / ".partial_scores.safetensors").is_file()
    calls["n"] = -10**6
    got = compute_scores(model, ekfac, queries, train, cfg, out_dir=tmp_path, progress=False)
    assert calls["n"] == -10**6 + 1 + (12 - 6)  # query batch + the 6 batches after the checkpoint at 6
    torch.testing.assert_close(got.example, ref.example, rtol=1e-10, atol=1e-13)
    torch.testing.assert_close(got.token, ref.token, rtol=1e-10, atol=1e-13)
    assert not list(tmp_path.glob(".partial_*"))
    del scores_mod


def test_individual_rows_beside_group_means_equal_their_own_passes(micro, ekfac, tmp_path):
    """One pass with group means and individual queries (and their steps) gives the rows that a
    mean pass and a per-query pass give on their own (each checked against autograd above)."""
    model, train, queries = micro
    ids = [q["id"] for q in queries]
    groups = {"even": ids[0::2], "odd": ids[1::2]}
    pick = [ids[3], ids[0]]
    both = compute_scores(model, ekfac, queries, train, ScoreConfig(
        aggregation="mean", groups=groups, token_scores=True, query_segment_scores=True, individual=pick, **F64),
        out_dir=tmp_path, progress=False)
    mean = compute_scores(model, ekfac, queries, train,
                          ScoreConfig(aggregation="mean", groups=groups, token_scores=True, **F64), progress=False)
    per = compute_scores(model, ekfac, [queries[3], queries[0]], train, ScoreConfig(query_segment_scores=True, **F64),
                         progress=False)
    tol = dict(rtol=1e-10, atol=1e-12 * float(per.example.abs().max()))
    assert both.row_ids == ["even", "odd"] and both.individual_ids == pick
    torch.testing.assert_close(both.example, mean.example, **tol)
    torch.testing.assert_close(both.token, mean.token, **tol)
    torch.testing.assert_close(both.individual, per.example, **tol)
    assert both.query_segment_ids == per.query_segment_ids and set(both.query_segment_parent) == set(pick)
    torch.testing.assert_close(both.query_segment, per.query_segment, **tol)
    single = load_scores(tmp_path).single_queries()
    assert single.row_ids == pick and single.config.individual == tuple(pick)
    torch.testing.assert_close(single.example, per.example, **tol)
    torch.testing.assert_close(single.steps_of(ids[0]), per.steps_of(ids[0]), **tol)
    with pytest.raises(ValueError, match="no individual query rows"):
        mean.single_queries()
    with pytest.raises(ValueError, match="individual rows go beside group means"):
        ScoreConfig(individual=(ids[0],))
    with pytest.raises(ValueError, match="individual names ids not among the queries"):
        compute_scores(model, ekfac, queries, train, ScoreConfig(aggregation="mean", groups=groups, individual=("nope",)),
                       progress=False)
