"""Training: config validation, the data plan (shares, weights, seed), determinism, caching.

Run: pytest tests/study/test_training.py (seconds; micro Qwen2 with ~10k parameters).
"""
import dataclasses
import json

import pytest
import torch

from infra_lib.data import encode_records
from infra_study.model import ModelConfig
from infra_study.training import (
    TrainConfig,
    checkpoint_exists,
    load_checkpoint,
    load_loss_curve,
    plan_by_ids,
    plan_examples,
    train_base,
    train_sft,
)
from infra_study.tokenizer import train_tokenizer

MICRO = ModelConfig(hidden_size=16, num_layers=1, intermediate_size=32, num_heads=2, num_kv_heads=2,
                    max_position_embeddings=128)


def _records(split, n=6):
    out = []
    for lvl in range(1, 6):
        for i in range(n):
            a, b = 3 * i + lvl, 7 * lvl
            resp = f"The answer is {a + b}." if split == "base" else f"First, {a} + {b} = {a + b}.\nThe answer is {a + b}."
            out.append({"id": f"math-{lvl}-{split}-{i}", "domain": "math", "difficulty": lvl,
                        "prompt": f"What is {a} + {b}?", "response": resp, "answer": str(a + b)})
            code = f"```python\ndef f(x):\n    return {lvl} * x + {i}\n```"
            resp = code if split == "base" else f"Multiply by {lvl}, add {i}.\n" + code
            out.append({"id": f"code-{lvl}-{split}-{i}", "domain": "code", "difficulty": lvl,
                        "prompt": f"Write f(x) = {lvl} x + {i}.", "response": resp, "tests": [f"assert f(0) == {i}"]})
    return out


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    return train_tokenizer(_records("base") + _records("train"), 300, tmp_path_factory.mktemp("tok"))


SMOKE = TrainConfig(steps=6, batch_size=4, lr=5e-3, log_every=2, threads=1)


def test_config_validation():
    assert TrainConfig(steps=5).token_budget is None  # steps replaces the budget
    for bad in [dict(token_budget=None), dict(batch_size=0), dict(lr=0.0), dict(warmup_frac=1.0),
                dict(math_token_share=1.5), dict(math_level_weights=(1, 0, 0)), dict(code_level_weights=(0,) * 5),
                dict(math_level_weights=(-1, 1, 1, 1, 1))]:
        with pytest.raises(ValueError):
            TrainConfig(**bad)


def test_plan_follows_shares_weights_and_seed(tok):
    ex = encode_records(_records("train", 10), tok, 256)
    cfg = TrainConfig(token_budget=6000, batch_size=4, math_token_share=0.7,
                      math_level_weights=(0, 0, 0, 0, 1), code_level_weights=(1, 1, 0, 0, 0), seed=3)
    plan = plan_examples(ex, cfg)
    flat = [i for b in plan for i in b]
    assert all(len(b) <= 4 for b in plan)
    n_tok = lambda i: int((ex[i]["labels"] != -100).sum())
    spent = {"math": 0, "code": 0}
    for i in flat:
        spent[ex[i]["domain"]] += n_tok(i)
    total = sum(spent.values())
    assert 6000 <= total < 6000 + 100
    assert abs(spent["math"] / total - 0.7) < 0.02
    assert {ex[i]["difficulty"] for i in flat if ex[i]["domain"] == "math"} == {5}
    assert {ex[i]["difficulty"] for i in flat if ex[i]["domain"] == "code"} == {1, 2}
    assert plan == plan_examples(ex, cfg)
    assert plan != plan_examples(ex, dataclasses.replace(cfg, seed=4))
    steps = plan_examples(ex, TrainConfig(steps=7, batch_size=4))
    assert len(steps) == 7 and sum(map(len, steps)) == 28


def test_plan_at_equal_problems_keeps_ids_and_order(tok):
    """The ablation at equal problems: the plan drawn on the full CoTs, applied to shorter ones."""
    full = encode_records(_records("train", 10), tok, 256)
    short = [dict(r, response=r["response"].split("\n")[-1]) for r in _records("train", 10)]
    short_ex = encode_records(short[::-1], tok, 256)  # another order: the mapping goes by id
    cfg = TrainConfig(token_budget=3000, batch_size=4, seed=1)
    ref = [[full[i]["id"] for i in b] for b in plan_examples(full, cfg)]
    got = [[short_ex[i]["id"] for i in b] for b in plan_by_ids(full, short_ex, cfg)]
    assert got == ref
    n_short = sum(int((short_ex[i]["labels"] != -100).sum()) for b in plan_by_ids(full, short_ex, cfg) for i in b)
    assert n_short < 3000  # fewer tokens: the same problems with shorter responses


def _weights(path):
    m, _ = load_checkpoint(path)
    return {k: v.clone() for k, v in m.state_dict().items()}


def test_same_seed_same_weights_and_reuse(tok, tmp_path, capsys):
    """Base then SFT twice with the same seed -> identical weights; a third call reuses the folder."""
    base = train_base(_records("base"), tok, MICRO, SMOKE, tmp_path / "base", progress=False)
    assert checkpoint_exists(base)
    sft_cfg = dataclasses.replace(SMOKE, token_budget=400, steps=None, seed=1)
    a = train_sft(base, _records("train"), sft_cfg, tmp_path / "a", progress=False)
    b = train_sft(base, _records("train"), sft_cfg, tmp_path / "b", progress=False)
    wa, wb = _weights(a), _weights(b)
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    wbase = _weights(base)
    assert any(not torch.equal(wa[k], wbase[k]) for k in wa)  # SFT moved the weights
    c = train_sft(base, _records("train"), dataclasses.replace(sft_cfg, seed=2), tmp_path / "c", progress=False)
    assert any(not torch.equal(wa[k], _weights(c)[k]) for k in wa)

    capsys.readouterr()
    again = train_sft(base, _records("train"), sft_cfg, tmp_path / "a", progress=False)
    assert again == a and "reusing" in capsys.readouterr().err
    meta = json.loads((a / "train_config.json").read_text())
    assert meta["config"]["seed"] == 1 and meta["stage"] == "sft" and meta["config_hash"]
    curve = load_loss_curve(a)
    assert curve[-1]["tokens"] >= 400 and all(r["loss"] > 0 for r in curve)


def test_loss_goes_down(tok, tmp_path):
    cfg = TrainConfig(steps=60, batch_size=8, lr=1e-2, log_every=10, warmup_frac=0.1)
    out = train_base(_records("base"), tok, MICRO, cfg, tmp_path / "base", progress=False)
    curve = load_loss_curve(out)
    assert curve[-1]["loss"] < 0.7 * curve[0]["loss"]


def test_non_finite_loss_stops_training_naming_the_step(tok, tmp_path):
    """A base checkpoint with one NaN weight: SFT stops at its first step with the loss named,
    and writes no checkpoint."""
    from safetensors.torch import load_file, save_file

    base = train_base(_records("base"), tok, MICRO, SMOKE, tmp_path / "base", progress=False)
    (weights,) = [p for p in base.glob("*.safetensors")]
    w = load_file(str(weights))
    key = next(k for k in w if "mlp.down_proj.weight" in k)
    w[key][0, 0] = float("nan")
    save_file(w, str(weights), metadata={"format": "pt"})
    with pytest.raises(FloatingPointError, match=r"non-finite loss nan at step 0"):
        train_sft(base, _records("train"), SMOKE, tmp_path / "sft", progress=False)
    assert not checkpoint_exists(tmp_path / "sft")


def test_micro_batches_give_the_gradient_of_the_whole_steps_mean(tok):
    """Accumulated micro-batches (1 and 3 examples of a 5-example step of unequal lengths) give the
    gradient autograd computes for the whole step's mean response NLL, and the same loss."""
    from infra_lib.data import collate
    from infra_study.model import build_model
    from infra_study.training import _accumulate_step, response_nll

    torch.manual_seed(0)
    model = build_model(MICRO, tok)
    ex = encode_records(_records("train")[:5], tok, 128)
    pad = tok.pad_token_id
    full = response_nll(model, collate(ex, pad), "mean")
    want = torch.autograd.grad(full, list(model.parameters()))
    for micro in (1, 3, 5):
        model.zero_grad(set_to_none=True)
        loss, n = _accumulate_step(model, ex, pad, micro)
        assert n == int((collate(ex, pad)["labels"][:, 1:] != -100).sum())
        torch.testing.assert_close(loss, full.detach(), rtol=1e-6, atol=1e-7)
        for p, g in zip(model.parameters(), want):
            torch.testing.assert_close(p.grad, g, rtol=1e-5, atol=1e-7)
    with pytest.raises(ValueError, match="micro_batch"):
        TrainConfig(steps=1, batch_size=4, micro_batch=5)
