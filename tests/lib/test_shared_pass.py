"""The shared covariance + Λ pass: the covariance pass keeps its per-token inputs and output
gradients (sampled labels with them) and the Λ pass reads them instead of running the model again.
The factors must be identical to the two-pass fit with the same labels (float64), and the planner
must say what it chose and how many bytes the kept captures take.

Run: ``OMP_NUM_THREADS=1 pytest tests/lib/test_shared_pass.py -q`` (seconds).
"""
import pytest
import torch

import infra_lib.factors as fm
from infra_lib.factors import FactorConfig, fit_factors
from infra_lib.planner import choose_shared_pass, kept_capture_bytes


@pytest.mark.parametrize("fisher", ["sampled", "empirical"])
def test_shared_pass_equals_two_passes(micro, fisher, monkeypatch):
    model, train, _ = micro
    cfg = FactorConfig(fisher=fisher, dtype="float64", batch_size=5)
    two = fit_factors(model, train, cfg, progress=False, shared_pass="off")
    passes = []
    real = fm.run_pass
    monkeypatch.setattr(fm, "run_pass", lambda *a, **k: passes.append(k["desc"]) or real(*a, **k))
    one = fit_factors(model, train, cfg, progress=False, shared_pass="on")
    assert passes == ["covariance"]  # one forward+backward over the data
    plan = one.diagnostics["plan"]["shared_pass"]
    assert plan["used"] and not two.diagnostics["plan"]["shared_pass"]["used"]
    assert set(one.tensors) == set(two.tensors)
    for k in two.tensors:
        torch.testing.assert_close(one.tensors[k], two.tensors[k], rtol=1e-12, atol=0)
    assert one.counts == two.counts


def test_kept_bytes_are_what_the_pass_keeps(micro, monkeypatch):
    """The planner's byte count equals the bytes of the captures the shared pass holds."""
    model, train, _ = micro
    cfg = FactorConfig(dtype="float64", batch_size=5)
    held = []
    real = fm._keep
    monkeypatch.setattr(fm, "_keep", lambda cap: held.append(real(cap)) or held[-1])
    f = fit_factors(model, train, cfg, progress=False, shared_pass="on")
    got = sum(t.numel() * t.element_size() for c in held for d in (c.a, c.g) for t in d.values())
    assert f.diagnostics["plan"]["shared_pass"]["bytes"] == got
    assert kept_capture_bytes(train, 5, f.shapes, f.group_of, 8) == got


def test_auto_follows_the_budget():
    assert choose_shared_pass("auto", 10, available_bytes=100)[0]
    use, rep = choose_shared_pass("auto", 80, available_bytes=100)
    assert not use and "does not fit" in rep["reason"]
    assert choose_shared_pass("on", 80, available_bytes=100)[0]
    with pytest.raises(ValueError):
        choose_shared_pass("sometimes", 1)
