"""Distributed and large-model mechanics: torchrun shards (2 gloo processes) equal one process,
module partitions merge to the whole, bf16 autocast agrees with float32, gradient checkpointing
changes nothing.

Run: ``pytest tests/lib/test_distributed.py -q`` (float64 micro model; the torchrun test starts two
processes, about 15 s on 2 cores).
"""
import copy
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from infra_lib import distributed as dist
from infra_lib.factors import FactorConfig, fit_factors, load_factors, merge_factors
from infra_lib.scores import ScoreConfig, compute_scores, load_scores
from infra_lib.tracking import ModuleTracker, _checkpointing_on, collate, select_modules

from conftest import make_examples, make_model, pearson, train_briefly

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("how", ["strided", "contiguous"])
@pytest.mark.parametrize("n,world", [(10, 2), (7, 3), (5, 5)])
def test_shards_cover_the_data_once(how, n, world):
    shards = [dist.shard_indices(n, how, r, world) for r in range(world)]
    assert sorted(i for s in shards for i in s) == list(range(n))
    assert max(map(len, shards)) - min(map(len, shards)) <= 1
    assert shards == [dist.shard_indices(n, how, r, world) for r in range(world)]  # deterministic
    if how == "contiguous":
        assert all(s == list(range(s[0], s[0] + len(s))) for s in shards if s)


def test_one_process_is_world_one():
    assert dist.world_size() == 1 and dist.rank() == 0 and dist.is_main()
    x = {"a": torch.ones(2)}
    assert dist.all_reduce_sum_(x)["a"].tolist() == [1.0, 1.0]
    assert dist.shard_indices(4) == [0, 1, 2, 3]


def test_exec_config_is_validated():
    for bad in (dict(device="gpu"), dict(autocast="bf16"), dict(shard="random")):
        with pytest.raises(ValueError):
            dist.ExecConfig(**bad)


def test_two_gloo_processes_equal_one_process(micro, tmp_path):
    """torchrun --nproc_per_node 2 (gloo): sampled-Fisher EK-FAC factors, counts, example, token,
    segment and query-segment scores equal the single-process run (float64, allclose); only rank 0
    writes; every rank returns the full scores in dataset order."""
    model, train, queries = micro
    fcfg = dict(dtype="float64", batch_size=4, save_every=1)  # resume checkpoints in per-rank folders, then removed
    scfg = dict(dtype="float64", batch_size=3, token_scores=True, segment_scores=True, query_segment_scores=True,
                save_every=1)
    model.save_pretrained(tmp_path / "model")
    torch.save({"train": train[:13], "queries": queries[:3], "factor_config": fcfg, "score_config": scfg},
               tmp_path / "data.pt")
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           str(ROOT / "tests" / "distributed_worker.py"), str(tmp_path)],
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]

    ref_f = fit_factors(model, train[:13], FactorConfig(**fcfg), progress=False)
    ref = compute_scores(model, ref_f, queries[:3], train[:13], ScoreConfig(**scfg), progress=False)
    got_f = load_factors(tmp_path / "factors", model=model)
    assert got_f.counts == ref_f.counts
    assert set(got_f.tensors) == set(ref_f.tensors)
    for k, v in ref_f.tensors.items():
        if k.startswith("Q"):  # eigenvectors are defined up to sign: compare the projector-free L instead
            continue
        torch.testing.assert_close(got_f.tensors[k], v, rtol=1e-9, atol=1e-12, msg=k)
    got = load_scores(tmp_path / "scores")
    for name in ("example", "token", "segment", "query_segment"):
        torch.testing.assert_close(getattr(got, name), getattr(ref, name), rtol=1e-7, atol=1e-10, msg=name)
    for r in (0, 1):
        per_rank = torch.load(tmp_path / f"rank{r}.pt")
        assert per_rank["world"] == 2
        torch.testing.assert_close(per_rank["example"], ref.example, rtol=1e-7, atol=1e-10)
    assert not list((tmp_path / "factors").glob(".rank*")) and not list((tmp_path / "scores").glob(".rank*"))


def test_module_partitions_merge_to_the_whole(micro):
    """Factors fit per layer block (2 partitions) and merged equal factors fit all at once; so do scores."""
    model, train, queries = micro
    cfg = FactorConfig(dtype="float64", batch_size=8, modules="all-linear")
    names = select_modules(model, "all-linear")
    parts = [dist.partition_modules(names, 2, k) for k in range(2)]
    assert parts[0] + parts[1] == names and parts[0] and parts[1]
    assert all(".layers.0." in n for n in parts[0]) and all(".layers.1." in n for n in parts[1])
    fitted = [fit_factors(model, train, FactorConfig(dtype="float64", batch_size=8, modules=tuple(p)), progress=False)
              for p in parts]
    merged = merge_factors(fitted)
    whole = fit_factors(model, train, cfg, progress=False)
    assert merged.modules == whole.modules and merged.group_of == whole.group_of and merged.counts == whole.counts
    for k, v in whole.tensors.items():
        torch.testing.assert_close(merged.tensors[k], v, rtol=1e-10, atol=1e-13, msg=k)
    s_m = compute_scores(model, merged, queries, train, ScoreConfig(dtype="float64"), progress=False)
    s_w = compute_scores(model, whole, queries, train, ScoreConfig(dtype="float64"), progress=False)
    torch.testing.assert_close(s_m.example, s_w.example, rtol=1e-9, atol=1e-12)
    with pytest.raises(ValueError, match="several parts"):
        merge_factors([fitted[0], fitted[0]])


def test_bf16_autocast_agrees_with_float32_and_accumulates_in_float32(micro):
    """bf16 autocast for the passes: captures and accumulators stay float32, and the example scores
    correlate with the float32 run (Pearson > 0.99, an agreement bound, not a fitted value)."""
    model64, train, queries = micro
    model = copy.deepcopy(model64).float()
    with ModuleTracker(model, select_modules(model), torch.float32, autocast=torch.bfloat16) as tr:
        cap = tr.run(collate(train[:4], list(range(4))), "data")
    assert all(a.dtype == torch.float32 for a in cap.a.values()) and all(g.dtype == torch.float32 for g in cap.g.values())
    run = dist.ExecConfig(autocast="bfloat16")
    f_bf = fit_factors(model, train, FactorConfig(fisher="empirical"), progress=False, execution=run)
    f_32 = fit_factors(model, train, FactorConfig(fisher="empirical"), progress=False)
    assert all(t.dtype == torch.float32 for t in f_bf.tensors.values())
    assert f_bf.fingerprint.get("autocast") == "bfloat16" and "autocast" not in f_32.fingerprint
    s_bf = compute_scores(model, f_bf, queries, train, ScoreConfig(), progress=False, execution=run)
    s_32 = compute_scores(model, f_32, queries, train, ScoreConfig(), progress=False)
    assert s_bf.example.dtype == torch.float32
    r = pearson(s_bf.example.flatten().double(), s_32.example.flatten().double())
    print(f"bf16 vs fp32 example scores: Pearson {r:.5f}")
    assert r > 0.99


def test_gradient_checkpointing_changes_nothing(micro):
    """HF gradient checkpointing (non-reentrant) with the hooks: factors and scores equal the plain run;
    the model's checkpointing and train mode are restored."""
    model, train, queries = micro
    calls = []
    h = model.model.layers[-1].input_layernorm.register_forward_hook(lambda *a: calls.append(1))
    with ModuleTracker(model, select_modules(model), torch.float64, gradient_checkpointing=True) as tr:
        tr.run(collate(train[:4], list(range(4))), "data")
    h.remove()
    assert len(calls) == 2  # checkpointing is on: the layer ran again in the backward
    run = dist.ExecConfig(gradient_checkpointing=True)
    cfg = FactorConfig(dtype="float64", batch_size=8)
    f_gc = fit_factors(model, train, cfg, progress=False, execution=run)
    f = fit_factors(model, train, cfg, progress=False)
    torch.testing.assert_close(f_gc.tensors["L." + f.modules[0]], f.tensors["L." + f.modules[0]], rtol=1e-10, atol=1e-13)
    s_gc = compute_scores(model, f_gc, queries, train, ScoreConfig(dtype="float64", token_scores=True), progress=False,
                          execution=run)
    s = compute_scores(model, f, queries, train, ScoreConfig(dtype="float64", token_scores=True), progress=False)
    torch.testing.assert_close(s_gc.example, s.example, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(s_gc.token, s.token, rtol=1e-9, atol=1e-12)
    assert not _checkpointing_on(model) and not model.training


def test_gradient_checkpointing_refuses_active_dropout(micro):
    model = copy.deepcopy(micro[0])
    model.config.attention_dropout = 0.1
    with pytest.raises(ValueError, match="dropout"):
        with ModuleTracker(model, select_modules(model), gradient_checkpointing=True):
            pass
