"""Evaluation: batched greedy decoding equals one-at-a-time, grading hooks, tables, D_correct, gold log-lik.

Run: pytest tests/study/test_evaluation.py (seconds; micro model, stub graders: no sandbox needed).
"""
import json

import pytest
import torch

from infra_lib.data import collate, encode_records
from infra_study.evaluation import (
    EvalConfig,
    accuracy_table,
    correct_generations,
    evaluate_model,
    generate_responses,
    gold_loglik,
    grade_responses,
)
from infra_study.model import ModelConfig
from infra_study.training import TrainConfig, load_checkpoint, response_nll, train_base
from infra_study.tokenizer import train_tokenizer

MICRO = ModelConfig(hidden_size=16, num_layers=1, intermediate_size=32, num_heads=2, num_kv_heads=2,
                    max_position_embeddings=128)


def _records(n=4):
    out = []
    for lvl in (1, 2):
        for i in range(n):
            a, b = 3 * i + lvl, 10 * lvl + i
            out.append({"id": f"math-{lvl}-{i}", "domain": "math", "difficulty": lvl, "prompt": f"What is {a} + {b}?",
                        "response": f"{a} + {b} = {a + b}.\nThe answer is {a + b}.", "answer": str(a + b)})
            out.append({"id": f"code-{lvl}-{i}", "domain": "code", "difficulty": lvl, "prompt": f"Write f(x) = {lvl} x{' ' * i}.",
                        "response": f"```python\ndef f(x):\n    return {lvl} * x\n```", "tests": [f"assert f(1) == {lvl}"]})
    return out


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval")
    tok = train_tokenizer(_records(), 290, root / "tok")
    cfg = TrainConfig(steps=40, batch_size=8, lr=1e-2, threads=1)
    return train_base(_records(), tok, MICRO, cfg, root / "base", progress=False)


def test_batched_generation_equals_one_at_a_time(model_dir):
    model, tok = load_checkpoint(model_dir)
    model = model.double()
    recs = _records()
    cfg = EvalConfig(max_new_tokens_math=12, max_new_tokens_code=12)
    batched = generate_responses(model, tok, recs, EvalConfig(**{**cfg.__dict__, "batch_size": 16}), progress=False)
    single = generate_responses(model, tok, recs, EvalConfig(**{**cfg.__dict__, "batch_size": 1}), progress=False)
    assert batched == single
    assert all(isinstance(t, str) for t in batched)


def test_gold_loglik_is_minus_summed_response_nll(model_dir):
    model, tok = load_checkpoint(model_dir)
    recs = _records()
    ll, nt = gold_loglik(model, tok, recs, EvalConfig(batch_size=3))
    ex = encode_records(recs, tok, 512)
    with torch.no_grad():
        ref = -response_nll(model, collate(ex, tok.pad_token_id), "none")
    assert torch.allclose(ll, ref.double(), atol=1e-3)
    assert nt.tolist() == [int((e["labels"] != -100).sum()) - 0 for e in ex]
    assert (ll < 0).all()


def test_grading_tables_and_d_correct():
    recs = _records(2)
    texts = [("The answer is " + r["answer"] + ".") if r["domain"] == "math" else "no code" for r in recs]
    texts[0] = "The answer is 0."
    correct = grade_responses(recs, texts, math_grader=lambda r, t: t.endswith(f"is {r['answer']}."),
                              code_grader=lambda rs, ts: ["```" in t for t in ts])
    assert correct == [False, False, True, False, True, False, True, False]
    acc = accuracy_table(recs, correct)
    assert acc == {"code": {"1": 0.0, "2": 0.0}, "math": {"1": 0.5, "2": 1.0}}
    d = correct_generations(recs, texts, correct)
    assert [r["id"] for r in d] == ["math-1-1", "math-2-0", "math-2-1"]
    for r in d:
        assert r["response"] == "The answer is " + r["answer"] + "."
        assert r["meta"]["segments"][-1][1] == len(r["response"]) and r["meta"]["source"] == "generation"
        assert r["meta"]["segments"][-1][2] == "answer"


def test_evaluate_model_writes_its_files_and_reuses(model_dir, tmp_path, capsys):
    recs = _records()
    graders = dict(math_grader=lambda r, t: True, code_grader=lambda rs, ts: [False] * len(rs))
    cfg = EvalConfig(max_new_tokens_math=8, max_new_tokens_code=8)
    s = evaluate_model(model_dir, tmp_path, recs, recs, cfg, progress=False, **graders)
    acc = json.loads((tmp_path / "accuracy.json").read_text())
    assert acc == {"code": {"1": 0.0, "2": 0.0}, "math": {"1": 1.0, "2": 1.0}} == s["accuracy"]
    gll = json.loads((tmp_path / "gold_loglik.json").read_text())
    assert set(gll) == {"math", "code"} and all(v < 0 for d in gll.values() for v in d.values())
    qm = [json.loads(l) for l in (tmp_path / "queries_math.jsonl").read_text().splitlines()]
    qc = (tmp_path / "queries_code.jsonl").read_text()
    qg = [json.loads(l) for l in (tmp_path / "query_generations.jsonl").read_text().splitlines()]
    # sampled D_correct: every math sample is graded correct here; identical texts of a problem kept once
    want = [f"{g['id']}#s{k}" for g in qg if g["domain"] == "math"
            for k, t in enumerate(g["samples"]) if t and t not in g["samples"][:k]]
    assert [r["id"] for r in qm] == want and all(r["meta"]["source"] == "sample" for r in qm)
    assert all(len(g["samples"]) == cfg.samples for g in qg)
    greedy = [json.loads(l) for l in (tmp_path / "queries_greedy_math.jsonl").read_text().splitlines()]
    assert [r["id"] for r in greedy] == [g["id"] for g in qg if g["domain"] == "math" and g["generation"]]
    assert qc == ""
    assert s["n_queries"] == {"math": len(qm), "code": 0} and s["n_queries_greedy"]["math"] == len(greedy)
    assert s["accuracy_sampled"]["math"] == {"1": 1.0, "2": 1.0}  # every sample graded correct
    rows = [json.loads(l) for l in (tmp_path / "test_generations.jsonl").read_text().splitlines()]
    assert len(rows) == len(recs) and {"generation", "correct", "gold_loglik"} <= set(rows[0])
    capsys.readouterr()
    evaluate_model(model_dir, tmp_path, recs, recs, cfg, progress=False, **graders)
    assert "reusing" in capsys.readouterr().err


def test_greedy_loop_equals_hf_generate(model_dir):
    """Our row-dropping greedy loop gives the tokens of ``model.generate(do_sample=False)``."""
    from infra_study.evaluation import _decode

    model, tok = load_checkpoint(model_dir)
    model = model.double()
    prompts = [tok.apply_chat_template([{"role": "user", "content": r["prompt"]}], tokenize=False,
                                       add_generation_prompt=True) for r in _records()]
    enc = [tok(p, add_special_tokens=False)["input_ids"] for p in prompts]
    L = max(map(len, enc))
    ids = torch.full((len(enc), L), tok.pad_token_id)
    mask = torch.zeros_like(ids)
    for b, e in enumerate(enc):
        ids[b, L - len(e):] = torch.tensor(e)
        mask[b, L - len(e):] = 1
    ours = _decode(model, ids, mask, 10, stop=(tok.eos_token_id, tok.pad_token_id))
    ref = model.generate(input_ids=ids, attention_mask=mask, do_sample=False, max_new_tokens=10,
                         eos_token_id=[tok.eos_token_id, tok.pad_token_id], pad_token_id=tok.pad_token_id)[:, L:]
    for o, r in zip(ours, ref.tolist()):
        r = [t for t in r if t not in (tok.eos_token_id, tok.pad_token_id)]
        assert o == r


def test_sampling_draws_from_the_softmax():
    """Gumbel-max draws follow softmax(logits / T); T -> 0 is the argmax."""
    from infra_study.evaluation import next_tokens

    logits = torch.tensor([[2.0, 1.0, 0.0, -1.0, 0.5]]).repeat(20000, 1)
    g = torch.Generator().manual_seed(0)
    for T in (1.0, 0.5):
        freq = torch.bincount(next_tokens(logits, T, g), minlength=5).double() / logits.shape[0]
        want = torch.softmax(logits[0].double() / T, -1)
        assert torch.allclose(freq, want, atol=0.01), (T, freq, want)
    assert next_tokens(logits[:3], 1e-6, g).tolist() == [0, 0, 0]
    assert next_tokens(logits[:3]).tolist() == [0, 0, 0]
    a = next_tokens(logits[:50], 1.0, torch.Generator().manual_seed(5))
    assert torch.equal(a, next_tokens(logits[:50], 1.0, torch.Generator().manual_seed(5)))


def test_min_queries_tops_up_with_references(model_dir, tmp_path):
    recs = _records()
    s = evaluate_model(model_dir, tmp_path, recs, recs, EvalConfig(max_new_tokens_math=4, max_new_tokens_code=4, min_queries=3),
                       progress=False, math_grader=lambda r, t: False, code_grader=lambda rs, ts: [False] * len(rs))
    assert s["n_queries"] == {"math": 0, "code": 0} and s["n_reference_queries"] == {"math": 3, "code": 3}
    rows = [json.loads(l) for l in (tmp_path / "queries_code.jsonl").read_text().splitlines()]
    assert len(rows) == 3 and all(r["meta"]["source"] == "reference" and r["domain"] == "code" for r in rows)


def test_batching_across_levels_keeps_each_rows_cap_and_greedy_tokens(model_dir):
    """Batches filled across levels give the grouped batches' greedy tokens, each row stopped at its
    own bucket's cap (per-row caps in the decoding loop)."""
    from infra_study.evaluation import _decode

    model, tok = load_checkpoint(model_dir)
    model = model.double()
    recs = _records()
    cfg = EvalConfig(max_new_tokens_math=12, max_new_tokens_code=12, batch_size=16, gold_cap_factor=0.2)
    grouped = generate_responses(model, tok, recs, cfg, progress=False)
    across = generate_responses(model, tok, recs, cfg, progress=False, across_levels=True)
    assert across == grouped
    prompt = tok.apply_chat_template([{"role": "user", "content": recs[0]["prompt"]}], tokenize=False, add_generation_prompt=True)
    ids = torch.tensor([tok(prompt, add_special_tokens=False)["input_ids"]] * 3)
    out = _decode(model, ids, torch.ones_like(ids), [2, 5, 0], stop=(-1,))
    assert [len(o) for o in out] == [2, 5, 0]
