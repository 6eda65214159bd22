"""Micro-model fixtures for the attribution-kernel tests (float64, CPU, seconds).

A 2-layer Qwen2 (hidden 16, MLP 32, vocab 48) trained for a few dozen steps on a seeded
"topic Markov chain" language, so gradients and curvature have structure. Examples have a prompt
(masked out of the loss), a response split into segments, and varied lengths (padding in batches).

Independent ground truth lives here too: per-token module inputs and output gradients from
autograd with additive probes (no hooks of ``infra_lib``), per-example weight gradients from
autograd on the plain model, and dense-matrix oracles of the curvature.
"""
from __future__ import annotations

import copy

import pytest
import torch

from infra_lib.testing import (N_TOPICS, VOCAB, kronfluence_scores, make_examples, make_float64_exact,  # noqa: F401
                             make_model, train_briefly)

torch.set_num_threads(2)


@pytest.fixture(scope="session")
def micro():
    """(model, train, queries): float64 micro Qwen2, 24 training and 6 query examples."""
    pool = make_examples(64, seed=1, prefix="pool")
    model = train_briefly(make_model(0), pool)
    train = make_examples(24, seed=2, prefix="tr")
    queries = make_examples(6, seed=3, prefix="q")
    return model, train, queries


# --------------------------------------------------------------------------- ground truth
def summed_nll(model, ex):
    logits = model(input_ids=torch.as_tensor(ex["input_ids"])[None]).logits[0]
    return torch.nn.functional.cross_entropy(logits[:-1], torch.as_tensor(ex["labels"])[1:], ignore_index=-100,
                                             reduction="sum")


def autograd_example_grads(model, data, names):
    """name -> (N, d_out, d_in [+1]) per-example weight gradients by autograd, one example at a time."""
    model = copy.deepcopy(model)
    mods = dict(model.named_modules())
    out = {n: [] for n in names}
    for ex in data:
        params = []
        for n in names:
            params.append(mods[n].weight)
            if mods[n].bias is not None:
                params.append(mods[n].bias)
        grads = torch.autograd.grad(summed_nll(model, ex), params)
        k = 0
        for n in names:
            w = grads[k]
            k += 1
            if mods[n].bias is not None:
                w = torch.cat([w, grads[k][:, None]], 1)
                k += 1
            out[n].append(w)
    return {n: torch.stack(v) for n, v in out.items()}


def autograd_token_tensors(model, ex, names):
    """Per-position module inputs a (T, d_in [+1]) and output gradients g (T, d_out) of one example,
    by additive zero probes on the module outputs (independent of infra_lib's hooks)."""
    model = copy.deepcopy(model)
    mods = dict(model.named_modules())
    T = len(ex["input_ids"])
    probes, inputs, handles = {}, {}, []
    for n in names:
        probes[n] = torch.zeros(1, T, mods[n].out_features, dtype=torch.float64, requires_grad=True)

        def hook(m, inp, out, n=n):
            inputs[n] = inp[0].detach()[0]
            return out + probes[n]

        handles.append(mods[n].register_forward_hook(hook))
    loss = summed_nll(model, ex)
    gs = torch.autograd.grad(loss, [probes[n] for n in names])
    for h in handles:
        h.remove()
    a = {}
    for n in names:
        x = inputs[n]
        if mods[n].bias is not None:
            x = torch.cat([x, torch.ones(T, 1, dtype=x.dtype)], 1)
        a[n] = x
    return a, {n: g[0] for n, g in zip(names, gs)}


def spearman(x, y):
    rx = x.flatten().argsort().argsort().double()
    ry = y.flatten().argsort().argsort().double()
    return float(torch.corrcoef(torch.stack([rx, ry]))[0, 1])


def pearson(x, y):
    return float(torch.corrcoef(torch.stack([x.flatten().double(), y.flatten().double()]))[0, 1])


@pytest.fixture
def one_thread():
    """One torch thread (opt in with ``pytestmark = pytest.mark.usefixtures("one_thread")``): on 2
    shared cores two threads spin against other jobs and run 3-4x slower."""
    was = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(was)


import re  # noqa: E402
from html.parser import HTMLParser  # noqa: E402

import numpy as np  # noqa: E402

# --- reading HTML views back with the standard library (tests/lib/test_report.py, tests/study/test_html.py)
HOSTILE = '</script><script>window.__pwned=1</script><!-- <img src=x onerror="alert(1)"> & \u2028'


class Spans(HTMLParser):
    """Collects every element with a data-i attribute: its attributes and its text."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.spans, self.text_in, self.tags, self._open = [], [], [], None

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        a = dict(attrs)
        if "data-i" in a:
            self._open = {"attrs": a, "text": ""}

    def handle_endtag(self, tag):
        if tag == "span" and self._open is not None:
            self.spans.append(self._open)
            self._open = None

    def handle_data(self, data):
        if self._open is not None:
            self._open["text"] += data
        self.text_in.append(data)


def parse_spans(html: str) -> Spans:
    p = Spans()
    p.feed(html)
    p.close()
    return p


def style_of(attrs: dict) -> dict:
    return dict(kv.split(":", 1) for kv in attrs["style"].split(";") if kv)


def hex_rgb(c: str) -> np.ndarray:
    assert re.fullmatch(r"#[0-9a-f]{6}", c), c
    return np.array([int(c[k:k + 2], 16) for k in (1, 3, 5)], dtype=float)


def title_value(title: str) -> float:
    m = re.fullmatch(r"score ([+-]?[0-9.e+-]+) \(token (\d+)\)", title)
    assert m, title
    return float(m.group(1))


def sig3(x: float) -> float:
    """``x`` to 3 significant digits, by numpy's scientific formatting (not by infra_lib): what the
    book's views show."""
    return float(np.format_float_scientific(float(x), precision=2, unique=False))
