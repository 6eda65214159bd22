"""infra_lib against the exact damped empirical-Fisher inverse, side by side with kronfluence, and
parity with kronfluence on matched settings (empirical Fisher both sides, MLP linears, same
damping, loss-position mask as kronfluence's attention mask).

Run: ``pytest tests/lib/test_vs_kronfluence.py -q`` (needs kronfluence 1.0.1; about a minute).
"""
import importlib.util

import pytest
import torch

from infra_lib.factors import FactorConfig, fit_factors
from infra_lib.scores import ScoreConfig, compute_scores
from infra_lib.tracking import select_modules

from conftest import autograd_example_grads, make_examples, pearson, spearman
from infra_lib.testing import kronfluence_scores as run_kronfluence

pytestmark = [
    pytest.mark.skipif(importlib.util.find_spec("kronfluence") is None,
                       reason="kronfluence is not installed (pip install --no-deps kronfluence==1.0.1)"),
    pytest.mark.filterwarnings("ignore::FutureWarning"),  # kronfluence 1.0.1: torch.cuda.amp.GradScaler
]


@pytest.fixture(scope="module")
def setting(micro):
    model, _, queries = micro
    train = make_examples(64, seed=5, prefix="big")
    return model, train, queries


def test_ekfac_vs_exact_inverse_side_by_side(setting, tmp_path):
    """Spearman with the exact damped empirical-Fisher inverse: ours >= kronfluence's - 0.02, and
    our EK-FAC beats identity. Same absolute damping 0.1 x mean eigenvalue of the exact matrix."""
    model, train, queries = setting
    names = select_modules(model)
    gi = autograd_example_grads(model, train, names)
    gq = autograd_example_grads(model, queries, names)
    V = torch.cat([gi[n].flatten(1) for n in names], 1)  # (N, P)
    U = torch.cat([gq[n].flatten(1) for n in names], 1)  # (Q, P)
    N, P = V.shape
    lam = 0.1 * float((V ** 2).sum() / N / P)  # 0.1 x tr(EF) / P
    # (V^T V / N + lam I)^-1 = (I - V^T (N lam I + V V^T)^-1 V) / lam  (Woodbury, float64)
    K = V @ V.T  # (N, N)
    UV = U @ V.T  # (Q, N)
    exact = (UV - UV @ torch.linalg.solve(N * lam * torch.eye(N, dtype=V.dtype) + K, K)) / lam  # (Q, N)
    direct = U @ torch.linalg.solve(V.T @ V / N + lam * torch.eye(P, dtype=V.dtype), V.T)
    torch.testing.assert_close(exact, direct, rtol=1e-6, atol=1e-8 * float(direct.abs().max()))
    ours = compute_scores(model, fit_factors(model, train, FactorConfig(fisher="empirical", damping=lam, dtype="float64"),
                                             progress=False), queries, train, ScoreConfig(dtype="float64"),
                          progress=False).example
    ident = compute_scores(model, fit_factors(model, train, FactorConfig(strategy="identity", dtype="float64"),
                                              progress=False), queries, train, ScoreConfig(dtype="float64"),
                           progress=False).example
    kf = run_kronfluence(model, train, queries, names, tmp_path, damping=lam)
    s_ours, s_kf, s_id = spearman(ours, exact), spearman(kf, exact), spearman(ident, exact)
    print(f"Spearman with exact: infra_lib EK-FAC {s_ours:.4f}, kronfluence EK-FAC {s_kf:.4f}, identity {s_id:.4f}")
    assert s_ours >= s_kf - 0.02
    assert s_ours > s_id


def test_parity_with_kronfluence(setting, tmp_path):
    """EK-FAC, empirical Fisher, heuristic damping 0.1 x mean(Lambda) on both sides: Pearson >= 0.999
    on example scores and on per-token scores (ours entry t = kronfluence position t-1)."""
    model, train, queries = setting
    train = train[:24]
    names = select_modules(model)
    T = max(len(x["input_ids"]) for x in train)
    f = fit_factors(model, train, FactorConfig(fisher="empirical", dtype="float64"), progress=False)
    s = compute_scores(model, f, queries, train, ScoreConfig(token_scores=True, dtype="float64"), progress=False)
    kf_tok = run_kronfluence(model, train, queries, names, tmp_path, per_token=True, pad_to=T)  # (Q, N, T)
    kf_ex = kf_tok.sum(-1)
    ours_tok, theirs_tok = [], []
    for i, ex in enumerate(train):
        L = len(ex["input_ids"])
        ours_tok.append(s.tokens_of(i)[:, 1:])
        theirs_tok.append(kf_tok[:, i, :L - 1])
    p_ex = pearson(s.example, kf_ex)
    p_tok = pearson(torch.cat(ours_tok, 1), torch.cat(theirs_tok, 1))
    print(f"Pearson with kronfluence: example {p_ex:.6f}, token {p_tok:.6f}")
    assert p_ex >= 0.999
    assert p_tok >= 0.999
