"""Memory planner: exact factor bytes, layouts from a config alone, refusals, and the estimate
against the measured peak.

Run: ``pytest tests/lib/test_planner.py -q`` (about 30 s; the peak test runs fit_factors on two small
Qwen2 models in a child process with glibc's mmap threshold lowered, so freed tensors leave RSS).
"""
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from infra_lib.factors import FactorConfig, fit_factors
from infra_lib.planner import PlanError, check_plan, describe_modules, format_bytes, parse_bytes, plan_memory

from conftest import make_examples, make_model

ROOT = Path(__file__).resolve().parents[2]


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("modules", ["mlp", "all-linear"])
@pytest.mark.parametrize("strategy", ["identity", "diagonal", "kfac", "ekfac"])
def test_factor_bytes_equal_what_fit_factors_stores(strategy, modules):
    """plan.factor_bytes == the bytes of every tensor fit_factors stores (q/k/v carry a bias column and share A)."""
    model = make_model(0)
    data = make_examples(6, seed=5, prefix="p")
    for dtype in ("float32", "float64"):
        cfg = FactorConfig(strategy=strategy, modules=modules, dtype=dtype, batch_size=4)
        f = fit_factors(model, data, cfg, progress=False)
        stored = sum(t.numel() * t.element_size() for t in f.tensors.values())
        plan = plan_memory(model, modules, strategy, 2, None, dtype, 4, 20)
        assert plan.factor_bytes == stored
        assert plan.layout.group_of == f.group_of and plan.layout.shapes == f.shapes


def test_layout_from_config_alone_equals_the_model():
    model = make_model(0)
    a, b = describe_modules(model, "all-linear"), describe_modules(model.config, "all-linear")
    assert a == b
    assert len(set(a.group_of.values())) == 8  # per layer: q/k/v share one input, gate/up another; o and down alone


def test_qwen25_7b_plan_from_its_config():
    """7B is planned from its dimensions alone (meta device): stored EK-FAC bytes by hand, and a refusal
    on an 80 GiB device that names what to change."""
    from transformers import Qwen2Config

    cfg = Qwen2Config(hidden_size=3584, intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28,
                      num_key_value_heads=4, vocab_size=152064)
    plan = plan_memory(cfg, "mlp", "ekfac", n_query_rows=2, dtype="float32", batch_size=1, max_length=4096,
                       model_dtype="bfloat16", n_train=100_000)
    H, I, L = 3584, 18944, 28
    a = L * (H * H + I * I)  # gate/up share A (H x H); down has A (I x I)
    s = L * (2 * I * I + H * H)
    e = L * (H + I + 2 * I + H)
    lam = L * 3 * H * I
    assert plan.factor_bytes == 4 * (2 * a + 2 * s + e + lam)
    assert plan.layout.n_params == 7_615_616_512
    assert len(plan.layout.shapes) == 84 and len(set(plan.layout.group_of.values())) == 56
    assert plan.item("query store").bytes == 2 * 3 * H * I * L * 4
    with pytest.raises(PlanError) as err:
        check_plan(plan, parse_bytes("80GiB"), model=cfg)
    msg = str(err.value)
    assert "lambda phase needs" in msg and "--modules" in msg and "layers" in msg


def test_check_plan_refuses_and_suggests_what_fits():
    model = make_model(0)
    plan = plan_memory(model, "all-linear", "ekfac", n_query_rows=64, dtype="float64", batch_size=64, max_length=128)
    peak = plan.peak_bytes
    check_plan(plan, int(peak / 0.9) + 1)  # fits with the 10% reserve: no error
    assert plan.fits(peak) and not plan.fits(peak - 1)
    with pytest.raises(PlanError, match="does not fit") as err:
        check_plan(plan, peak // 2, model=model)
    assert "--batch-size" in str(err.value)
    text = plan.format(available_bytes=peak)
    for name in ("activation covariances A", "gradient covariances S", "eigenvectors QA, QS",
                 "eigendecomposition workspace", "eigenvalue correction Λ", "query store", "one batch (scores)"):
        assert name in text


def test_parse_and_format_bytes():
    assert parse_bytes("80GiB") == 80 * 2**30 == parse_bytes("80G")
    assert parse_bytes("1.5e9") == 1_500_000_000 and parse_bytes("512MB") == 512_000_000
    assert format_bytes(1536) == "1.5 KiB"
    with pytest.raises(ValueError):
        parse_bytes("lots")


_PEAK_SCRIPT = textwrap.dedent(r"""
    import json, sys
    import torch
    torch.set_num_threads(1)
    from transformers import Qwen2Config, Qwen2ForCausalLM
    from infra_lib.factors import FactorConfig, fit_factors
    from infra_lib.planner import FIT_PHASES, plan_memory

    def status(key):
        for line in open("/proc/self/status"):
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024

    def run(H, I, L, B, N, T):
        torch.manual_seed(0)
        model = Qwen2ForCausalLM(Qwen2Config(vocab_size=256, hidden_size=H, intermediate_size=I, num_hidden_layers=L,
                                             num_attention_heads=4, num_key_value_heads=2)).eval()
        g = torch.Generator().manual_seed(1)
        data = []
        for i in range(N):
            ids = torch.randint(0, 256, (T,), generator=g)
            lab = ids.clone()
            lab[: T // 4] = -100
            data.append({"id": f"x{i}", "input_ids": ids, "labels": lab})
        cfg = FactorConfig(batch_size=B)
        plan = plan_memory(model, cfg.modules, cfg.strategy, 0, None, cfg.dtype, B, T, fisher=cfg.fisher)
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")  # reset VmHWM: the peak from here on
        base = status("VmRSS")
        f = fit_factors(model, data, cfg, progress=False)
        peak = status("VmHWM") - base
        stored = sum(t.numel() * t.element_size() for t in f.tensors.values())
        phase, planned = plan.peak(FIT_PHASES)
        planned -= plan.item("model weights").bytes  # loaded before the baseline
        return dict(size=f"H{H} I{I} L{L} B{B} T{T}", stored=stored, planned_stored=plan.factor_bytes,
                    measured_peak=peak, planned_peak=planned, phase=phase, ratio=peak / planned)

    run(48, 96, 1, 4, 8, 32)  # warm-up: pages in the libraries' code once
    print(json.dumps([run(*s) for s in json.loads(sys.argv[1])]))
""")


def test_peak_estimate_against_measured_rss():
    """Two sizes: stored factor bytes exact; planned fit peak within [0.7, 1.5] of the measured RSS peak
    (glibc's mmap threshold is lowered so that freed tensors leave RSS; libraries are paged in first)."""
    sizes = [[96, 384, 2, 8, 16, 64], [160, 640, 2, 8, 16, 64]]
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536", MALLOC_TRIM_THRESHOLD_="0",
               PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    if not os.access("/proc/self/clear_refs", os.W_OK):
        pytest.skip("/proc/self/clear_refs is not writable here: cannot reset the peak RSS")
    out = subprocess.run([sys.executable, "-c", _PEAK_SCRIPT, json.dumps(sizes)], capture_output=True, text=True,
                         env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    rows = json.loads(out.stdout.strip().splitlines()[-1])
    for r in rows:
        print(f"\n{r['size']}: stored {r['stored']:,} B (planned {r['planned_stored']:,}); peak measured "
              f"{format_bytes(r['measured_peak'])}, planned {format_bytes(r['planned_peak'])} ({r['phase']}), "
              f"measured/planned = {r['ratio']:.2f}")
        assert r["stored"] == r["planned_stored"]
        assert 0.7 <= r["ratio"] <= 1.5, r
