"""Tracked-module selection and the hooks' per-token tensors against autograd.

Run: ``pytest tests/lib/test_tracking.py -q`` (float64 micro model, a few seconds).
"""
import copy

import pytest
import torch

from infra_lib.tracking import ModuleTracker, collate, make_batches, per_example_gradients, select_modules

from conftest import autograd_example_grads, autograd_token_tensors


def test_select_modules(micro):
    model, _, _ = micro
    mlp = select_modules(model)
    assert mlp == [f"model.layers.{i}.mlp.{p}" for i in range(2) for p in ("gate_proj", "up_proj", "down_proj")]
    every = select_modules(model, "all-linear")
    assert len(every) == 14 and "lm_head" not in every
    assert select_modules(model, [r"layers\.1\.mlp\.down", "model.layers.0.self_attn.q_proj"]) == [
        "model.layers.0.self_attn.q_proj", "model.layers.1.mlp.down_proj"]
    with pytest.raises(ValueError, match="matches no nn.Linear.*model.layers.0.mlp.gate_proj"):
        select_modules(model, ["nothing_here"])
    with pytest.raises(ValueError, match="never tracked"):
        select_modules(model, ["lm_head"])
    assert "lm_head" not in select_modules(model, [".*"])


def test_per_example_gradients_equal_autograd(micro):
    """Hook gradients (frozen params, grad from the embedding output, padding, prompt mask, q/k/v
    biases) equal autograd's weight gradients of the summed response NLL."""
    model, train, _ = micro
    names = select_modules(model, "all-linear")
    ours = per_example_gradients(model, train[:9], "all-linear", batch_size=4)
    ref = autograd_example_grads(model, train[:9], names)
    for n in names:
        torch.testing.assert_close(ours[n], ref[n], rtol=1e-10, atol=1e-12)
    assert all(p.requires_grad for p in model.parameters())  # restored


def test_per_token_tensors_equal_autograd(micro):
    """Per-position inputs a_t and output gradients g_t in a padded batch equal autograd probes."""
    model, train, _ = micro
    names = select_modules(model, "all-linear")
    batch_ex = [train[0], train[5], train[7]]
    with ModuleTracker(model, names, torch.float64) as tr:
        cap = tr.run(collate(batch_ex), "data")
    for b, ex in enumerate(batch_ex):
        a_ref, g_ref = autograd_token_tensors(model, ex, names)
        T = len(ex["input_ids"])
        W = cap.batch.window
        for n in names:
            g = cap.g[n][b]
            n_cmp = min(T, W)
            torch.testing.assert_close(g[:n_cmp], g_ref[n][:n_cmp], rtol=1e-10, atol=1e-12)
            if T > n_cmp:  # beyond the window (after the last loss position) autograd's gradient is 0 too
                assert float(g_ref[n][n_cmp:].abs().max()) == 0.0
            assert torch.all(g[T:] == 0)  # padding
            torch.testing.assert_close(cap.a[cap.group_of[n]][b][:n_cmp], a_ref[n][:n_cmp], rtol=1e-12, atol=1e-13)


def test_shared_inputs_are_grouped(micro):
    model, train, _ = micro
    with ModuleTracker(model, select_modules(model, "all-linear"), torch.float64) as tr:
        cap = tr.run(collate(train[:2]), "data")
    g = cap.groups
    assert g["model.layers.0.self_attn.q_proj"] == [f"model.layers.0.self_attn.{p}_proj" for p in "qkv"]
    assert g["model.layers.0.mlp.gate_proj"] == ["model.layers.0.mlp.gate_proj", "model.layers.0.mlp.up_proj"]
    assert cap.a["model.layers.0.self_attn.q_proj"].shape[-1] == 17  # bias column


def test_sampled_labels_do_not_depend_on_batching(micro):
    model, train, _ = micro
    names = select_modules(model)
    with ModuleTracker(model, names, torch.float64) as tr:
        big = tr.run(collate(train[:6]), "sampled", seed=3, tag="x")
        small = tr.run(collate(train[2:3]), "sampled", seed=3, tag="x")
        other = tr.run(collate(train[2:3]), "sampled", seed=4, tag="x")
    T = len(train[2]["input_ids"])
    n = names[0]
    w = min(big.g[n].shape[1], small.g[n].shape[1])
    torch.testing.assert_close(big.g[n][2, :w], small.g[n][0, :w], rtol=1e-10, atol=1e-12)
    assert not torch.allclose(other.g[n][0], small.g[n][0])
    assert T > 0


def test_non_finite_named_by_module(micro):
    model, train, _ = micro
    bad = copy.deepcopy(model)
    with torch.no_grad():
        bad.model.layers[1].mlp.up_proj.weight[0, 0] = float("nan")
    with ModuleTracker(bad, select_modules(bad), torch.float64) as tr:
        with pytest.raises(FloatingPointError, match=r"model\.layers\.1\.mlp\.up_proj"):
            tr.run(collate(train[:2]), "data")


def test_make_batches_sorts_by_length(micro):
    _, train, _ = micro
    batches = make_batches(train, 5)
    flat = [i for b in batches for i in b]
    assert sorted(flat) == list(range(len(train)))
    lens = [len(train[i]["input_ids"]) for i in flat]
    assert lens == sorted(lens, reverse=True)
