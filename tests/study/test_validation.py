"""The validation oracles and metrics (infra_lib/validation.py) against ground truth.

- the Gauss-Newton oracle equals the expected Fisher built by enumerating every label of the
  vocabulary at every loss position (one plain backward per label), and its output Hessian equals
  autograd's dense Hessian of the cross-entropy in the logits;
- exact inverse scores equal a direct float64 solve; flat gradients equal autograd's per-module ones;
- the LDS machinery gives 1 where the linear prediction is exact (one gradient step of a linear
  query loss; a ridge regression up-weighted infinitesimally, scored with the exact inverse);
- recall@k and top-k overlap on hand-made arrays; the config refuses bad values; the cached stage
  reuses its results.

Run: ``pytest tests/study/test_validation.py -q`` (float64 micro models, seconds).
"""
import numpy as np
import pytest
import torch

from infra_study import validation as v
from infra_lib.testing import make_examples, make_model, train_briefly
from infra_lib.tracking import select_modules

from conftest import autograd_example_grads


@pytest.fixture(scope="module")
def one_layer():
    # vocabulary 16: the brute-force Fisher below costs one backward per (position, label)
    model = train_briefly(make_model(0, layers=1, vocab=16), make_examples(16, seed=1, prefix="pool", vocab=16), steps=10)
    data = make_examples(2, seed=4, prefix="d", min_len=7, max_len=9, vocab=16)
    return model, data, select_modules(model)


def test_gauss_newton_is_the_expected_fisher_summed_over_the_vocabulary(one_layer):
    model, data, names = one_layer
    mods = dict(model.named_modules())
    params = [mods[n].weight for n in names]
    P = sum(p.numel() for p in params)
    want = torch.zeros(P, P, dtype=torch.float64)
    for ex in data:
        ids, lab = torch.as_tensor(ex["input_ids"]), torch.as_tensor(ex["labels"])
        for t in (lab[1:] != -100).nonzero().squeeze(1).tolist():
            logits = model(input_ids=ids[None]).logits[0, t]
            p = torch.softmax(logits.detach(), -1)
            for y in range(logits.shape[0]):
                g = torch.autograd.grad(-torch.log_softmax(logits, -1)[y], params, retain_graph=True)
                g = torch.cat([x.flatten() for x in g])
                want += p[y] * torch.outer(g, g)
    got = v.gauss_newton_matrix(model, data, names)
    torch.testing.assert_close(got, want / len(data), rtol=1e-7, atol=1e-10 * float(want.abs().max()))


def test_softmax_output_hessian_matches_autograd():
    """The output Hessian the oracle uses, diag(p) - p p^T, is the Hessian of the cross-entropy in the logits."""
    z = torch.randn(7, dtype=torch.float64)
    h = torch.autograd.functional.hessian(lambda x: torch.nn.functional.cross_entropy(x[None], torch.tensor([3])), z)
    p = torch.softmax(z, -1)
    torch.testing.assert_close(h, torch.diag(p) - torch.outer(p, p))


def test_exact_scores_and_gradients(one_layer):
    model, data, names = one_layer
    g = v.flat_gradients(model, data, names)
    ref = autograd_example_grads(model, data, names)
    torch.testing.assert_close(g, torch.cat([ref[n].flatten(1) for n in names], 1))
    M = v.empirical_fisher_matrix(g)
    torch.testing.assert_close(M, sum(torch.outer(x, x) for x in g) / len(g))
    lam = 0.3
    s = v.exact_inverse_scores(g[:1], g, M, lam)
    direct = g[:1] @ torch.linalg.inv(M + lam * torch.eye(M.shape[0], dtype=M.dtype)) @ g.T
    torch.testing.assert_close(s, direct, rtol=1e-6, atol=1e-9 * float(direct.abs().max()))


def test_lds_is_one_when_the_linear_prediction_is_exact():
    """One gradient step on a subset, a query loss linear in the weights: the loss after "training" is
    exactly ``w_q . theta_0 - lr * sum_{i in S} g_q . g_i``, so gradient dot products give LDS 1."""
    rng = np.random.default_rng(0)
    N, Q, P = 30, 5, 7
    g, w = rng.normal(size=(N, P)), rng.normal(size=(Q, P))
    theta0 = rng.normal(size=P)
    masks = v.half_subsets(N, 40, 0.5, seed=1)
    assert masks.shape == (40, N) and (masks.sum(1) == 15).all()
    assert len({m.tobytes() for m in masks}) == 40
    losses = np.stack([w @ (theta0 - 0.1 * g[m].sum(0)) for m in masks])  # (S, Q)
    np.testing.assert_allclose(v.lds_per_query(w @ g.T, masks, losses), 1.0)
    np.testing.assert_allclose(v.lds_per_query(-(w @ g.T), masks, losses), -1.0)


def test_lds_of_exact_inverse_on_ridge_regression():
    """Ridge regression up-weighted by ``1 + eps * mask``: for small eps the change of a query's loss
    is ``-eps/N sum_{i in S} g_q^T H^-1 g_i`` to first order, so exact-inverse scores give LDS 1, and
    plain dot products less (H is far from isotropic)."""
    rng = np.random.default_rng(1)
    N, P, lam = 40, 5, 0.1
    X = rng.normal(size=(N, P)) * np.array([10.0, 3.0, 1.0, 0.3, 0.1])
    y = X @ rng.normal(size=P) + rng.normal(size=N)
    Xq, yq = rng.normal(size=(4, P)) * 3, rng.normal(size=4)

    def fit(weights):
        return np.linalg.solve(X.T @ (weights[:, None] * X) / N + lam * np.eye(P), X.T @ (weights * y) / N)

    theta = fit(np.ones(N))
    H = X.T @ X / N + lam * np.eye(P)
    gi = (X @ theta - y)[:, None] * X  # (N, P) per-example gradients of 0.5 (x theta - y)^2
    gq = (Xq @ theta - yq)[:, None] * Xq
    masks = v.half_subsets(N, 32, 0.5, seed=2)
    losses = np.stack([0.5 * (Xq @ fit(1 + 1e-4 * m) - yq) ** 2 for m in masks])
    exact = v.lds_per_query(gq @ np.linalg.solve(H, gi.T), masks, losses)
    plain = v.lds_per_query(gq @ gi.T, masks, losses)
    np.testing.assert_allclose(exact, 1.0, atol=1e-6)
    assert plain.mean() < 0.99


def test_recall_at_k_by_hand():
    s = np.array([[5.0, 4.0, 3.0, 2.0],
                  [1.0, 2.0, 3.0, 4.0],
                  [1.0, 1.0, 1.0, 0.0]])
    np.testing.assert_array_equal(v.recall_at_k(s, [1, 0, 2], 2), [True, False, False])  # a 3-way tie at the top
    np.testing.assert_array_equal(v.recall_at_k(s, [1, 0, 2], 3), [True, False, True])
    np.testing.assert_array_equal(v.recall_at_k(s, [3, 0, 3], 4), [True, True, True])
    with pytest.raises(ValueError, match="targets"):
        v.recall_at_k(s, [0, 4, 0], 2)
    with pytest.raises(ValueError, match="targets"):
        v.recall_at_k(s, [0, 1], 2)


def test_agreement_by_hand():
    ref = np.array([[4.0, 3.0, 2.0, 1.0], [1.0, 2.0, 3.0, 4.0]])
    got = np.array([[40.0, 30.0, 1.0, 2.0], [4.0, 3.0, 2.0, 1.0]])
    a = v.agreement(got, ref, 2)
    np.testing.assert_allclose(a["spearman"], [0.8, -1.0])
    np.testing.assert_allclose(a["topk"], [1.0, 0.0])
    with pytest.raises(ValueError, match="k must"):
        v.agreement(got, ref, 5)


def test_config_refuses_bad_values():
    with pytest.raises(ValueError, match="n_planted"):
        v.ValidationConfig(n_query=4, n_planted=5)
    with pytest.raises(ValueError, match="tracked parameters"):
        v.ValidationConfig(hidden=64, intermediate=64)
    with pytest.raises(ValueError, match="dampings"):
        v.ValidationConfig(dampings=(0.1, 0.0))
    with pytest.raises(ValueError, match="lds_fraction"):
        v.ValidationConfig(lds_fraction=1.0)
    assert v.config_for_profile("smoke").n_train < v.config_for_profile("tiny").n_train


def test_ensure_validation_caches(tmp_path, monkeypatch):
    cfg = v.ValidationConfig(n_train=10, n_query=3, pretrain_steps=3, dampings=(0.1,), top_k=3, lds_subsets=4,
                             train_steps=3, n_planted=2, recall_k=3, kronfluence=False, n_boot=10)
    first = v.ensure_validation(tmp_path, cfg)
    assert set(first["lds"]["lds"]) == {"identity", "diagonal", "kfac", "ekfac", "exact"}
    assert len(first["planted"]["hits"]["ekfac"]) == 2
    assert {r["method"] for r in first["agreement"]["rows"]} == {"identity", "diagonal", "kfac", "ekfac"}
    for name in ("run_agreement", "run_lds", "run_planted"):
        monkeypatch.setattr(v, name, lambda *a, **k: pytest.fail("recomputed a cached result"))
    again = v.ensure_validation(tmp_path, cfg)
    assert again["lds"] == first["lds"] and again["planted"] == first["planted"]
