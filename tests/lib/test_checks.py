"""Guards of the attribution passes (infra_lib/checks.py): bad examples refused before work, NaN/inf
named by pass, module and example id, ill-conditioned factors recorded, broken or foreign artifacts
refused with how to rebuild them.

Ground truth: faults are injected where we know the answer (a forward hook that poisons exactly one
example, eigenvalues built by hand, bytes cut from a file), and the message must name that place.

Run: ``python -m pytest tests/lib/test_checks.py -q`` (a few seconds).
"""
from __future__ import annotations

import copy
import dataclasses
import json
import math
import warnings

import pytest
import torch

from infra_lib import checks
from infra_lib.checks import ArtifactError, IllConditionedFactorWarning, InputError
from infra_lib.factors import FactorConfig, fit_factors, load_factors, save_factors
from infra_lib.scores import ScoreConfig, compute_scores, load_scores, save_scores

from conftest import VOCAB

F64 = FactorConfig(dtype="float64", batch_size=4)


def _ex(ex, **kw):
    out = {k: (v.clone() if torch.is_tensor(v) else v) for k, v in ex.items()}
    out.update(kw)
    return out


# --------------------------------------------------------------------------- bad examples
def test_bad_examples_are_refused_before_any_pass(micro):
    model, train, _ = micro
    ids = train[1]["input_ids"].clone()
    ids[3] = VOCAB + 5  # a tokenizer with more tokens than the embedding
    cases = [
        ([], "train: no examples"),
        ([train[0], _ex(train[1], id=train[0]["id"])], f"id {train[0]['id']!r}, as example 0 has"),
        ([train[0], _ex(train[1], input_ids=ids)], f"token id {VOCAB + 5} at position 3 is outside the model's {VOCAB}-row"),
        ([_ex(train[0], input_ids=torch.zeros(200, dtype=torch.long), labels=torch.zeros(200, dtype=torch.long))],
         "200 tokens exceed the model's max_position_embeddings=128"),
        ([_ex(train[0], labels=torch.full_like(train[0]["labels"], -100))], "no loss token"),
        ([_ex(train[0], input_ids=torch.zeros(0, dtype=torch.long))], "non-empty 1-D"),
    ]
    for data, msg in cases:
        with pytest.raises(InputError, match=msg.replace("(", r"\(").replace(")", r"\)")):
            fit_factors(model, data, F64, progress=False)
    f = fit_factors(model, train[:4], FactorConfig(strategy="identity", dtype="float64"), progress=False)
    with pytest.raises(InputError, match="queries: example"):
        compute_scores(model, f, [_ex(train[0], input_ids=ids, labels=train[1]["labels"])], train[:4])


# --------------------------------------------------------------------------- non-finite values
def _poison_rows(model, target, what=float("nan")):
    """A hook on the embedding that makes the rows whose first tokens are ``target``'s non-finite:
    exactly one example of a batch goes bad, and the model's weights (its hash) do not change."""
    head = torch.as_tensor(target["input_ids"])[:6]

    def hook(_m, inputs, out):
        rows = (inputs[0][:, :6] == head).all(1)
        if rows.any():
            out = out.clone()
            out[rows] = what
        return out

    return model.get_input_embeddings().register_forward_hook(hook)


@pytest.mark.parametrize("fisher", ["sampled", "empirical"])
def test_nan_in_one_example_is_named_with_pass_and_module(micro, fisher):
    model, train, _ = micro
    model = copy.deepcopy(model)
    bad = train[5]
    h = _poison_rows(model, bad)
    try:
        with pytest.raises(FloatingPointError) as err:
            fit_factors(model, train, FactorConfig(dtype="float64", batch_size=4, fisher=fisher), progress=False)
    finally:
        h.remove()
    msg = str(err.value)
    assert msg.startswith("covariance pass:") and f"for example {bad['id']!r}" in msg
    assert "module 'model.layers.0.mlp.gate_proj'" in msg  # the first tracked module the NaN reaches


def test_nan_output_of_a_module_is_named(micro):
    """A forward hook turns one module's output to inf for every example: the module and all ids are named."""
    model, train, _ = micro
    model = copy.deepcopy(model)
    name = "model.layers.1.mlp.up_proj"
    h = dict(model.named_modules())[name].register_forward_hook(lambda _m, _i, out: out * float("inf"))
    try:
        with pytest.raises(FloatingPointError, match=rf"non-finite output of module '{name}'.*\(4 of a batch of 4\)"):
            fit_factors(model, train, FactorConfig(dtype="float64", batch_size=4, fisher="empirical"), progress=False)
    finally:
        h.remove()


def test_inf_logits_and_nan_in_scores_are_named(micro):
    model, train, queries = micro
    model = copy.deepcopy(model)
    f = fit_factors(model, train, F64, progress=False)
    cfg = ScoreConfig(dtype="float64", batch_size=4, query_batch_size=2)
    h = _poison_rows(model, queries[1])  # a bad query
    try:
        with pytest.raises(FloatingPointError, match=rf"query gradients pass: .* for example {queries[1]['id']!r}"):
            compute_scores(model, f, queries, train, cfg, progress=False)
    finally:
        h.remove()
    h = _poison_rows(model, train[7], float("inf"))  # a bad training example
    try:
        with pytest.raises(FloatingPointError, match=rf"scores pass: .* for example {train[7]['id']!r}"):
            compute_scores(model, f, queries, train, cfg, progress=False)
    finally:
        h.remove()
    head = model.get_output_embeddings()
    h = head.register_forward_hook(lambda _m, _i, out: out * float("nan"))
    try:
        with pytest.raises(FloatingPointError, match="non-finite logits at the LM head"):
            compute_scores(model, f, queries, train, cfg, progress=False)
    finally:
        h.remove()


# --------------------------------------------------------------------------- conditioning
def _spd(ev, seed=0):
    q, _ = torch.linalg.qr(torch.randn(len(ev), len(ev), generator=torch.Generator().manual_seed(seed), dtype=torch.float64))
    return q @ torch.diag(torch.tensor(ev, dtype=torch.float64)) @ q.T


def test_eigen_report_counts_null_negative_and_spread():
    # rank deficiency (fewer samples than dimensions) is normal: null eigenvalues, no problem
    x = torch.randn(3, 6, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    rep = checks.eigen_report("A.x", torch.linalg.eigvalsh(x.T @ x))
    assert rep["n_null"] == 3 and rep["n_negative"] == 0 and rep["n"] == 6 and rep["problem"] is None
    # a matrix that is not PSD beyond round-off
    neg = checks.eigen_report("S.y", torch.linalg.eigvalsh(_spd([-1e-3, 1.0, 2.0])))
    assert neg["n_negative"] == 1 and neg["min"] == pytest.approx(-1e-3, rel=1e-9) and "not PSD" in neg["problem"]
    # eigenvalues spanning 1e14; the smallest is only known to within the round-off tol (absolute)
    wide = checks.eigen_report("A.z", torch.linalg.eigvalsh(_spd([1e-8, 1.0, 1e6])))
    assert wide["cond"] == pytest.approx(1e14, rel=wide["tol"] / 1e-8) and "span" in wide["problem"]
    # the same -1e-7 eigenvalue is round-off for a float32 accumulation, not for a float64 one
    tiny_neg = torch.linalg.eigvalsh(_spd([-1e-7, 0.5, 1.0]))
    assert checks.eigen_report("S.w", tiny_neg)["n_negative"] == 1
    assert checks.eigen_report("S.w", tiny_neg, torch.finfo(torch.float32).eps)["n_negative"] == 0
    with pytest.warns(IllConditionedFactorWarning, match=r"2 of 3 curvature factors .*factor S\.y: .*factor A\.z"):
        checks.warn_conditioning({"A.x": rep, "S.y": neg, "A.z": wide})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        checks.warn_conditioning({"A.x": rep})


def test_ill_conditioned_factor_is_recorded_in_the_metadata(micro, tmp_path):
    model, train, _ = micro
    name = "A.model.layers.0.mlp.gate_proj"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the healthy micro model: no warning
        healthy = fit_factors(model, train, F64, progress=False).diagnostics["conditioning"]
    assert healthy[name]["cond"] < checks.COND_LIMIT
    model = copy.deepcopy(model)
    with torch.no_grad():  # one input direction of layer 0's MLP scaled by 1e5: A's spread grows ~1e10-fold
        model.model.layers[0].post_attention_layernorm.weight[0] *= 1e5
    with pytest.warns(IllConditionedFactorWarning, match=rf"factor {name.replace('.', '[.]')}: eigenvalues span"):
        f = fit_factors(model, train, F64, out_dir=tmp_path, progress=False)
    cond = f.diagnostics["conditioning"]
    assert set(cond) == {k for k in f.tensors if k.startswith(("A.", "S."))}
    assert cond[name]["cond"] > checks.COND_LIMIT and cond[name]["problem"]
    assert load_factors(tmp_path).diagnostics == json.loads(json.dumps(f.diagnostics))


# --------------------------------------------------------------------------- broken and foreign artifacts
def test_truncated_artifacts_are_refused_with_how_to_rebuild(micro, tmp_path):
    model, train, queries = micro
    f = fit_factors(model, train, F64, out_dir=tmp_path / "f", progress=False)
    s = compute_scores(model, f, queries, train, ScoreConfig(dtype="float64"), out_dir=tmp_path / "s", progress=False)
    for path, loader, how in [(tmp_path / "f" / "factors.safetensors", lambda: load_factors(tmp_path / "f"), "fit_factors"),
                              (tmp_path / "s" / "scores.safetensors", lambda: load_scores(tmp_path / "s"), "compute_scores")]:
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
        with pytest.raises(ArtifactError, match=rf"truncated or corrupt\. Delete it and .*{how}"):
            loader()
    from safetensors.torch import save_file

    bad = dict(f.tensors)
    key = next(k for k in bad if k.startswith("L."))
    bad[key] = bad[key].clone()
    bad[key][0, 0] = float("nan")  # a parsable file with a NaN factor
    save_file(bad, str(tmp_path / "f" / "factors.safetensors"))
    with pytest.raises(ArtifactError, match=rf"tensor '{key}' holds NaN or inf.*fit_factors"):
        load_factors(tmp_path / "f")
    with pytest.raises(ArtifactError):  # a re-run does not silently trust the broken file
        fit_factors(model, train, F64, out_dir=tmp_path / "f", progress=False)
    assert s.example.shape == (len(queries), len(train))


def test_corrupt_checkpoint_restarts_the_pass(micro, tmp_path):
    model, train, _ = micro
    cfg = FactorConfig(dtype="float64", batch_size=2, save_every=2)
    ref = fit_factors(model, train, cfg, progress=False)
    (tmp_path / ".partial_covariance.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    with pytest.warns(UserWarning, match="unreadable checkpoint"):
        got = fit_factors(model, train, cfg, out_dir=tmp_path, progress=False)
    assert all(torch.equal(got.tensors[k], v) for k, v in ref.tensors.items())


def test_scores_of_other_factors_are_refused(micro):
    model, train, queries = micro
    f = fit_factors(model, train, F64, progress=False)
    s = compute_scores(model, f, queries, train, ScoreConfig(dtype="float64"), progress=False)
    checks.check_scores_match(s, f)  # the scores' own factors pass
    other_data = fit_factors(model, train[:12], F64, progress=False)
    with pytest.raises(ArtifactError, match="factors fit on other data.*recompute"):
        checks.check_scores_match(s, other_data)
    kfac = fit_factors(model, train, FactorConfig(strategy="kfac", dtype="float64", batch_size=4), progress=False)
    with pytest.raises(ArtifactError, match="another config \\(strategy differ"):
        checks.check_scores_match(s, kfac)
    damped = dataclasses.replace(f, config=dataclasses.replace(f.config, damping_scale=1.0))
    with pytest.raises(ArtifactError, match="another config \\(damping_scale differ"):
        checks.check_scores_match(s, damped)
    other_model = copy.deepcopy(model)
    with torch.no_grad():
        other_model.model.layers[0].mlp.up_proj.weight.mul_(1.01)
    with pytest.raises(ArtifactError, match="another model"):
        checks.check_scores_match(s, fit_factors(other_model, train, F64, progress=False))
    with pytest.raises(ArtifactError, match="do not record the factors"):
        checks.check_scores_match(type(s)(s.row_ids, s.train_ids, s.example), f)


def test_scores_checked_after_a_round_trip(micro, tmp_path):
    model, train, queries = micro
    f = fit_factors(model, train, F64, out_dir=tmp_path / "f", progress=False)
    s = compute_scores(model, f, queries, train, ScoreConfig(dtype="float64"), progress=False)
    save_scores(s, tmp_path / "s")
    save_factors(f, tmp_path / "f")
    checks.check_scores_match(load_scores(tmp_path / "s"), load_factors(tmp_path / "f"))


def test_pause_point_is_a_no_op_unless_asked(monkeypatch, tmp_path):
    flag = tmp_path / "paused"
    monkeypatch.setenv("INFRA_PAUSE_FILE", str(flag))
    monkeypatch.delenv("INFRA_PAUSE_AT", raising=False)
    checks.pause_point("covariance", 2)
    monkeypatch.setenv("INFRA_PAUSE_AT", "covariance:3")
    checks.pause_point("covariance", 2)  # another batch: returns at once
    checks.pause_point("lambda", 3)
    assert not flag.exists()


# --------------------------------------------------------------------------- records handed in directly
def _recs(**over):
    recs = [{"id": "a", "prompt": "p", "response": "r"}, {"id": "b", "prompt": "p", "response": "r"}]
    recs[1].update(over)
    return recs


@pytest.mark.parametrize("over, words", [
    ({"prompt": "x\ud800y"}, "record 1 (id 'b'): field 'prompt': holds a lone surrogate U+D800 at character 2"),
    ({"response": "\udc00"}, "record 1 (id 'b'): field 'response': holds a lone surrogate U+DC00 at character 1"),
    ({"id": "a\u200b"}, "field 'id': 'a\\u200b' holds the invisible or look-alike character U+200B"),
    ({"id": "a "}, "field 'id': 'a ' has leading or trailing whitespace"),
    ({"id": "a\u0308"}, "field 'id': 'a\\u0308' is not in Unicode NFC form ('\\xe4' looks the same)"),
])
def test_records_the_tokenizer_cannot_take_or_that_look_alike_are_refused(over, words):
    """A lone surrogate would pass on to a TypeError inside the tokenizer; look-alike ids would be
    taken as distinct examples. Both are refused naming the record and the field."""
    with pytest.raises(InputError) as info:
        checks.check_records(_recs(**over))
    assert words in str(info.value), str(info.value)
    checks.check_records(_recs())  # the same records without the fault pass
