"""Curvature factors against dense oracles built from autograd, storage, resume and validation.

Run: ``pytest tests/lib/test_factors.py -q`` (float64 micro model, under a minute).
The oracles never call infra_lib's hooks: per-token tensors and per-example gradients come from
autograd (conftest), the curvature is a dense (d_out*d_in)^2 matrix, and scores are exact solves.
"""
import copy
from pathlib import Path

import pytest
import torch

import infra_lib.factors as factors_mod
from infra_lib.factors import FactorConfig, factors_exist, fit_factors, load_factors
from infra_lib.scores import ScoreConfig, compute_scores
from infra_lib.tracking import select_modules

from conftest import autograd_example_grads, autograd_token_tensors


def _oracle_factors(model, train, names):
    """Dense K-FAC pieces from autograd: A over loss positions, S summed over positions / N."""
    A, S, n_tok = {}, {}, 0
    for ex in train:
        a, g = autograd_token_tensors(model, ex, names)
        lab = torch.as_tensor(ex["labels"])
        loss_pos = torch.zeros(len(lab), dtype=torch.bool)
        loss_pos[:-1] = lab[1:] != -100
        n_tok += int(loss_pos.sum())
        for n in names:
            A[n] = A.get(n, 0) + a[n][loss_pos].T @ a[n][loss_pos]
            S[n] = S.get(n, 0) + g[n].T @ g[n]
    N = len(train)
    return {n: A[n] / n_tok for n in names}, {n: S[n] / N for n in names}


def _oracle_scores(model, train, queries, names, strategy, damping=None, scale=0.1):
    gi = autograd_example_grads(model, train, names)
    gq = autograd_example_grads(model, queries, names)
    A, S = _oracle_factors(model, train, names)
    total = torch.zeros(len(queries), len(train), dtype=torch.float64)
    for n in names:
        P = gi[n][0].numel()
        vi, vq = gi[n].reshape(len(train), P), gq[n].reshape(len(queries), P)  # row-major vec: kron(g, a)
        if strategy == "kfac":
            F = torch.kron(S[n], A[n])
            lam = damping if damping is not None else scale * torch.linalg.eigvalsh(F).mean()
        elif strategy == "ekfac":
            qs, qa = torch.linalg.eigh(S[n])[1], torch.linalg.eigh(A[n])[1]
            Q = torch.kron(qs, qa)
            lam_diag = ((vi @ Q) ** 2).mean(0)
            F = Q @ torch.diag(lam_diag) @ Q.T
            lam = damping if damping is not None else scale * lam_diag.mean()
        else:  # diagonal
            d = (vi ** 2).mean(0)
            F = torch.diag(d)
            lam = damping if damping is not None else scale * d.mean()
        total += vq @ torch.linalg.solve(F + lam * torch.eye(P, dtype=F.dtype), vi.T)
    return total


@pytest.mark.parametrize("strategy", ["kfac", "ekfac", "diagonal"])
@pytest.mark.parametrize("modules", ["mlp", "all-linear"])
def test_scores_equal_dense_oracle(micro, strategy, modules):
    """K-FAC / EK-FAC / diagonal example scores equal the dense oracle (empirical Fisher, relative damping)."""
    model, train, queries = micro
    train = train[:12]
    names = select_modules(model, modules)
    cfg = FactorConfig(strategy=strategy, modules=modules, fisher="empirical", dtype="float64", batch_size=5)
    f = fit_factors(model, train, cfg, progress=False)
    ours = compute_scores(model, f, queries, train, ScoreConfig(dtype="float64", batch_size=4), progress=False)
    ref = _oracle_scores(model, train, queries, names, strategy)
    torch.testing.assert_close(ours.example, ref, rtol=1e-7, atol=1e-9 * float(ref.abs().max()))


@pytest.mark.parametrize("strategy", ["kfac", "ekfac", "diagonal"])
def test_large_damping_gives_gradient_dot_product(micro, strategy):
    """lambda * score -> g_q . g_i as lambda grows (relative error ~ eigenvalue / lambda)."""
    model, train, queries = micro
    names = select_modules(model)
    gi = autograd_example_grads(model, train[:8], names)
    gq = autograd_example_grads(model, queries, names)
    dot = sum(gq[n].flatten(1) @ gi[n].flatten(1).T for n in names)
    lam = 1e7
    cfg = FactorConfig(strategy=strategy, fisher="empirical", dtype="float64", damping=lam, batch_size=4)
    f = fit_factors(model, train[:8], cfg, progress=False)
    s = compute_scores(model, f, queries, train[:8], ScoreConfig(dtype="float64"), progress=False)
    torch.testing.assert_close(lam * s.example, dot, rtol=1e-4, atol=1e-4 * float(dot.abs().max()))


def test_factors_do_not_depend_on_batching(micro):
    """Sampled-label EK-FAC statistics are the same for batch sizes 2 and 7 (labels seeded per example)."""
    model, train, _ = micro
    f1 = fit_factors(model, train, FactorConfig(dtype="float64", batch_size=2), progress=False)
    f2 = fit_factors(model, train, FactorConfig(dtype="float64", batch_size=7), progress=False)
    for k, v in f1.tensors.items():
        if k.startswith(("A.", "S.", "L.", "eA.", "eS.")):
            torch.testing.assert_close(v, f2.tensors[k], rtol=1e-9, atol=1e-12)
    f3 = fit_factors(model, train, FactorConfig(dtype="float64", batch_size=7, seed=1), progress=False)
    name = f1.modules[0]
    assert not torch.allclose(f1.tensors[f"L.{name}"], f3.tensors[f"L.{name}"])  # the seed matters


def test_save_load_and_refusal(micro, tmp_path):
    model, train, _ = micro
    cfg = FactorConfig(dtype="float64", batch_size=6)
    f = fit_factors(model, train, cfg, out_dir=tmp_path, progress=False)
    assert factors_exist(tmp_path)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no partial or temp files left
    g = load_factors(tmp_path, model)
    assert g.modules == f.modules and g.group_of == f.group_of
    for k in f.tensors:
        torch.testing.assert_close(g.tensors[k], f.tensors[k], rtol=0, atol=0)
    other = copy.deepcopy(model)
    with torch.no_grad():
        other.model.layers[0].mlp.up_proj.weight.add_(1e-3)
    with pytest.raises(ValueError, match="another model"):
        load_factors(tmp_path, other)
    with pytest.raises(ValueError, match="modules"):
        load_factors(tmp_path, model, modules="all-linear")
    with pytest.raises(ValueError, match="another model"):
        compute_scores(other, g, train[:2], train[:3], progress=False)


def test_resume_after_interruption(micro, tmp_path, monkeypatch):
    """A lambda pass killed mid-way resumes from its last chunk and gives the uninterrupted result
    (a separate Λ pass: the shared pass has no Λ chunks to resume)."""
    model, train, _ = micro
    cfg = FactorConfig(dtype="float64", batch_size=2, save_every=2)
    ref = fit_factors(model, train, cfg, progress=False)
    calls = {"n": 0}
    real = factors_mod._make_lambda_step

    def flaky(*a, **k):
        step = real(*a, **k)

        def wrapped(cap, st):
            calls["n"] += 1
            if calls["n"] == 7:
                raise KeyboardInterrupt
            step(cap, st)
        return wrapped

    monkeypatch.setattr(factors_mod, "_make_lambda_step", flaky)
    with pytest.raises(KeyboardInterrupt):
        fit_factors(model, train, cfg, out_dir=tmp_path, progress=False, shared_pass="off")
    assert (tmp_path / ".partial_lambda.safetensors").is_file() and (tmp_path / ".partial_eigen.safetensors").is_file()
    monkeypatch.setattr(factors_mod, "_make_lambda_step", real)
    seen = {"n": 0}

    def counting(*a, **k):
        step = real(*a, **k)

        def wrapped(cap, st):
            seen["n"] += 1
            step(cap, st)
        return wrapped

    monkeypatch.setattr(factors_mod, "_make_lambda_step", counting)
    got = fit_factors(model, train, cfg, out_dir=tmp_path, progress=False, shared_pass="off")
    assert seen["n"] == 12 - 6  # 12 batches, 6 done before the interruption
    for k, v in ref.tensors.items():
        if k.startswith(("A.", "S.", "L.")):
            torch.testing.assert_close(got.tensors[k], v, rtol=1e-10, atol=1e-13)
    assert not list(Path(tmp_path).glob(".partial_*"))


def test_config_validation():
    with pytest.raises(ValueError, match="strategy"):
        FactorConfig(strategy="kfca")
    with pytest.raises(ValueError, match="fisher"):
        FactorConfig(fisher="true")
    with pytest.raises(ValueError, match="damping"):
        FactorConfig(damping=-1.0)
    assert FactorConfig(modules=["a", "b"]).modules == ("a", "b")


def test_blocked_gram_matches_full():
    """Wide covariances accumulate only the upper block-triangle; mirroring restores x^T x."""
    x = torch.randn(70, 300, dtype=torch.float64)
    c = factors_mod._gram_upper(x) + factors_mod._gram_upper(x[:10])
    full = x.T @ x + x[:10].T @ x[:10]
    torch.testing.assert_close(factors_mod._symmetrize(c), full, rtol=1e-12, atol=1e-10)
