"""The step explorer (infra_study/html.py), checked without a browser (heat-maps: tests/lib/test_report.py).

The HTML is read back with the standard library's HTMLParser and a regex for the embedded JSON,
not with anything from infra_lib; top-k lists are checked against numpy's argsort; colours against
the linear white-to-hue ramp the docstring promises. Run: `.venv/bin/python -m pytest tests/study/test_html.py`.
The same pages in headless Chromium: tests/study/test_html_browser.py.
"""
from __future__ import annotations

import json
import re

import numpy as np
import pytest

from infra_study import html as ih

from conftest import HOSTILE, sig3



# --------------------------------------------------------------------------- explorer
def expected_top(step_scores: np.ndarray, k: int) -> np.ndarray:
    """Independent top-k: numpy's argsort ascending, reversed (scores are continuous: no ties)."""
    return np.argsort(step_scores, axis=1)[:, ::-1][:, :k]


def test_select_top_examples_matches_argsort():
    rng = np.random.default_rng(1)
    s = rng.normal(size=(6, 40))
    for k in (1, 5, 40, 100):
        np.testing.assert_array_equal(ih.select_top_examples(s, k), expected_top(s, k))
    ties = np.array([[1.0, 3.0, 3.0, -1.0, 3.0]])
    assert ih.select_top_examples(ties, 4).tolist() == [[1, 2, 4, 0]]  # ties: lower index first
    with pytest.raises(ValueError, match="2-D"):
        ih.select_top_examples(np.zeros(3), 2)


def make_explorer_inputs(seed=0, n_train=15):
    rng = np.random.default_rng(seed)
    queries = [
        ih.ExplorerQuery("math-1-00003", "math", "What is 7 + 9? " + HOSTILE,
                         (("First add the ones: 7 + 9 = 16.\n", "step"), ("So the answer is 16.\n", "answer"),
                          ("Check: 16 - 9 = 7 <ok>.", "exploratory"))),
        {"id": "code-2-00001", "domain": "code", "prompt": "Write f(x) = 2x + 1.",
         "segments": [["Plan: double, add one.\n", "step"], ["def f(x):\n", "step"],
                      ["    return 2 * x + 1\n", "answer"], ["Try f(2) == 5.", "exploratory"]]},
    ]
    train = []
    for i in range(n_train):
        toks = ["Add", " the", " ones", ":", " ", str(i % 10), "\n", "<script>" if i == 3 else "So",
                HOSTILE if i == 5 else "."]
        train.append(ih.ExplorerExample(f"tr-{i:02d}", "math" if i % 2 else "code", 1 + i % 5, toks,
                                        rng.normal(size=len(toks)) * 0.01 * 10.0 ** -(i % 3)))
    steps = {"math-1-00003": rng.normal(size=(3, n_train)), "code-2-00001": rng.normal(size=(4, n_train))}
    return queries, train, steps


def embedded_json(html: str, ns: str | None = None) -> dict:
    m = re.findall(r'<script type="application/json" class="ix-data">(.*?)</script>', html, flags=re.S)
    assert len(m) == 1
    return json.loads(m[0])


def test_explorer_json_round_trips_and_top_k_is_right():
    queries, train, steps = make_explorer_inputs()
    k = 4
    out = ih.render_step_explorer(queries, train, steps, top_k=k, title="Explorer <1>")
    data = embedded_json(out)
    assert data["top_k"] == k and len(data["queries"]) == 2
    q0 = data["queries"][0]
    assert q0["id"] == "math-1-00003" and q0["prompt"] == queries[0].prompt  # hostile text, verbatim
    assert [tuple(s) for s in q0["segments"]] == list(queries[0].segments)
    assert data["queries"][1]["segments"] == queries[1]["segments"]
    by_index = {t["index"]: t for t in data["train"]}
    for q in data["queries"]:
        s = steps[q["id"]]
        want = expected_top(s, k)
        assert len(q["top"]) == s.shape[0]
        for si, lst in enumerate(q["top"]):
            got = [data["train"][j]["index"] for j, _ in lst]
            assert got == want[si].tolist(), (q["id"], si)
            assert [v for _, v in lst] == [sig3(s[si, j]) for j in want[si]]  # ranked exactly, shown rounded
    # every embedded example round-trips; only examples of some top-k list are embedded
    used = {int(j) for s in steps.values() for j in expected_top(s, k).ravel()}
    assert set(by_index) == used
    for j, t in by_index.items():
        assert t["id"] == train[j].id and t["tokens"] == list(train[j].tokens)
        assert t["scores"] == [sig3(v) for v in train[j].scores] and t["difficulty"] == train[j].difficulty
    # nothing in the data closes the script or opens a comment: exactly our two scripts
    assert out.count("</script>") == 2 and out.count("<script") == 2 and "<!--" not in out
    assert "\u2028" not in out
    assert "Explorer &lt;1&gt;" in out


def test_explorer_ids_are_namespaced():
    queries, train, steps = make_explorer_inputs()
    a = ih.render_step_explorer(queries, train, steps)
    b = ih.render_step_explorer(queries, train, steps)
    ida, idb = (re.match(r'<div id="([^"]+)"', x).group(1) for x in (a, b))
    assert ida != idb
    for out, ns in ((a, ida), (b, idb)):
        css = re.search(r"<style>(.*?)</style>", out, flags=re.S).group(1)
        rules = [r.strip() for r in css.split("}") if r.strip()]
        assert rules and all(r.startswith(f"#{ns}") for r in rules)  # no rule leaks onto the page
        assert f'getElementById("{ns}")' in out
        assert re.findall(r'id="([^"]+)"', out) == [ns, f"{ns}-query"]
    c = ih.render_step_explorer(queries, train, steps, element_id="my-explorer")
    assert c.startswith('<div id="my-explorer"')
    with pytest.raises(ValueError, match="element_id"):
        ih.render_step_explorer(queries, train, steps, element_id='x" onclick="alert(1)')


def test_explorer_accepts_a_sequence_and_tensors():
    torch = pytest.importorskip("torch")
    queries, train, steps = make_explorer_inputs()
    seq = [torch.tensor(steps["math-1-00003"]), steps["code-2-00001"]]
    a = embedded_json(ih.render_step_explorer(queries, train, seq, top_k=3, element_id="a"))
    b = embedded_json(ih.render_step_explorer(queries, train, steps, top_k=3, element_id="a"))
    assert a == b


def test_explorer_rejects_bad_scores():
    queries, train, steps = make_explorer_inputs()
    bad = dict(steps, **{"code-2-00001": np.zeros((3, len(train)))})
    with pytest.raises(ValueError, match=r"code-2-00001.*\(3, 15\).*\(4, 15\)"):
        ih.render_step_explorer(queries, train, bad)
    nan = {k: v.copy() for k, v in steps.items()}
    nan["math-1-00003"][2, 7] = np.inf
    with pytest.raises(ValueError, match=r"math-1-00003'\]\[2, 7\] is inf"):
        ih.render_step_explorer(queries, train, nan)
    with pytest.raises(ValueError, match="no entry for query 'code-2-00001'"):
        ih.render_step_explorer(queries, train, {"math-1-00003": steps["math-1-00003"]})
    with pytest.raises(ValueError, match="top_k"):
        ih.render_step_explorer(queries, train, steps, top_k=0)
    with pytest.raises(ValueError, match="missing field"):
        ih.render_step_explorer([{"id": "q"}], train, steps)


def test_query_from_record_splits_by_segments():
    rec = {"id": "math-1-00001", "domain": "math", "prompt": "1 + 2?",
           "response": "First 1 + 2 = 3.\nAnswer: 3", "meta": {"segments": [[0, 17, "step"], [17, 26, "answer"]]}}
    q = ih.ExplorerQuery.from_record(rec)
    assert q.segments == (("First 1 + 2 = 3.\n", "step"), ("Answer: 3", "answer"))
    assert "".join(t for t, _ in q.segments) == rec["response"]
    rec["meta"]["segments"] = [[0, 10, "step"]]
    with pytest.raises(ValueError, match="math-1-00001.*do not cover"):
        ih.ExplorerQuery.from_record(rec)


def test_views_opt_out_of_mathjax():
    """A CoT with \\( \\) or $$ must stay tokens: MathJax skips elements of these classes."""
    queries, train, steps = make_explorer_inputs()
    for out in (ih.render_token_heatmap(["$$x$$"], [1.0]), ih.render_heatmaps([("a", ["\\(y\\)"], [1.0])]),
                ih.render_step_explorer(queries, train, steps)):
        classes = re.match(r'<div (?:id="[^"]+" )?class="([^"]+)"', out).group(1).split()
        assert {"tex2jax_ignore", "mathjax_ignore"} <= set(classes)




def test_each_step_has_its_own_colour_scale():
    """A step's heat-maps share one scale: max |token score| over the examples listed for that step."""
    queries, train, steps = make_explorer_inputs()
    k = 3
    data = embedded_json(ih.render_step_explorer(queries, train, steps, top_k=k))
    scales = []
    for q in data["queries"]:
        assert len(q["scales"]) == len(q["top"]) == steps[q["id"]].shape[0]
        for si, lst in enumerate(q["top"]):
            want = max(abs(v) for j, _ in lst for v in data["train"][j]["scores"])
            assert q["scales"][si] == want, (q["id"], si)
            assert [data["train"][j]["index"] for j, _ in lst] == expected_top(steps[q["id"]], k)[si].tolist()
            scales.append(want)
    assert len(set(scales)) > 1  # the test data's examples differ in magnitude by 100x: so must the scales
    assert "scale" not in data  # no scale over the whole explorer
    fixed = embedded_json(ih.render_step_explorer(queries, train, steps, top_k=k, scale=0.0123456))
    assert {s for q in fixed["queries"] for s in q["scales"]} == {0.0123}


def significant_digits(x: float) -> int:
    mantissa = np.format_float_scientific(abs(x), unique=True).split("e")[0]
    return len(mantissa.replace(".", "").lstrip("0")) or 1


def floats_in(obj):
    if isinstance(obj, float):
        yield obj
    elif isinstance(obj, dict):
        for v in obj.values():
            yield from floats_in(v)
    elif isinstance(obj, list):
        for v in obj:
            yield from floats_in(v)


def test_explorer_numbers_have_three_significant_digits():
    """No 16-digit float anywhere in the data the page shows (scores, step scores, scales)."""
    queries, train, steps = make_explorer_inputs()
    out = ih.render_step_explorer(queries, train, steps, top_k=4)
    vals = list(floats_in(embedded_json(out)))
    assert len(vals) > 100
    assert max(significant_digits(v) for v in vals) <= 3, [v for v in vals if significant_digits(v) > 3][:5]
    # the heat-maps of the chapters round their tooltips too (the library's default stays exact)
    tips = re.findall(r'title="score ([^ ]+) \(token', ih.render_heatmaps([("a", ["x", "y"], [0.123456789, -1 / 3])]))
    assert tips == ["+0.123", "-0.333"]
    legend = re.findall(r'title="([^"]+)" style="display:inline-block', ih.render_heatmaps([("a", ["x"], [0.7])]))
    assert legend and max(len(t.lstrip("+-").replace(".", "").lstrip("0")) for t in legend) <= 3


def test_long_examples_keep_their_end_and_answer():
    """A long training example hides its middle, never its last lines or its answer."""
    lines = [f"Step {i}: add {i} and {i + 1}.\n" for i in range(40)] + ["So the answer is 42."]
    toks = []
    for line in lines:
        words = line.split(" ")
        toks += [w if k == 0 else " " + w for k, w in enumerate(words)]
    assert "".join(toks) == "".join(lines)
    a, b = ih.elided_span(toks)
    assert 0 < a < b < len(toks)
    assert "".join(toks[b:]).endswith("So the answer is 42.") and "".join(toks[:a]).startswith("Step 0")
    assert "".join(toks[b:]).count("\n") == 5  # the last six lines are shown
    ans = len(toks) - 40  # an answer that starts further up is kept whole
    assert ih.elided_span(toks, answer_from=ans)[1] == ans
    assert ih.elided_span(toks[:20]) is None  # a short example shows everything
    wide = ["word "] * 600  # no newline at all: 3,000 characters wrap into 30 lines
    a, b = ih.elided_span(wide)
    assert 0 < a < b < len(wide) and (len(wide) - b) * 5 <= 6 * 100
    queries, train, steps = make_explorer_inputs()
    long_ex = ih.ExplorerExample("tr-long", "math", 3, toks, np.linspace(-1, 1, len(toks)), answer_from=ans)
    train = [long_ex, *train[1:]]
    steps = {q: s.copy() for q, s in steps.items()}
    for s in steps.values():
        s[:, 0] = 100.0  # listed first for every step
    data = embedded_json(ih.render_step_explorer(queries, train, steps, top_k=2))
    emb = next(t for t in data["train"] if t["id"] == "tr-long")
    assert emb["tokens"] == toks and emb["elide"] == [ih.elided_span(toks, ans)[0], ans]
    assert all(t["elide"] is None for t in data["train"] if t["id"] != "tr-long")
    with pytest.raises(ValueError, match="answer_from"):
        ih.ExplorerExample("x", "math", 1, ["a"], [0.0], answer_from=3)
