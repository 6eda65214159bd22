"""Tests of infra_study.corpus at version 1 (CorpusConfig's default; version 2: test_corpus_v2.py): determinism,
disjoint splits, schema validity, correct answers and
reference code, the exploratory share and its ablation, grading helpers, statistics, caching.

Ground truth is independent of the generator's own text: math answers are recomputed with Python
arithmetic from ``meta.params``, every equation written in a math CoT is evaluated, and every
reference solution is executed against its asserts (our own code, so exec is fine here).
Run: ``pytest tests/study/test_corpus.py``.
"""
import dataclasses
import hashlib
import json
import logging
import operator
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from infra_study.corpus import (
    SPLITS,
    CorpusConfig,
    build_corpus,
    corpus_exists,
    corpus_stats,
    extract_code,
    extract_math_answer,
    generate_corpus,
    grade_math,
    load_corpus,
    normalise_problem,
    split_of,
    strip_exploratory,
)
from infra_lib.records import load_records, validate_record
from infra_lib.segments import is_exploratory_start, segment_response

CFG = CorpusConfig(seed=3, n_base=10, n_train=40, n_query=10, n_test=10)
DATA = Path(__file__).resolve().parents[2] / "data"


@pytest.fixture(scope="module")
def corpus():
    return generate_corpus(CFG)


def all_records(corpus):
    return [r for s in SPLITS for r in corpus[s]]


def test_counts_per_domain_level_split(corpus):
    for split in SPLITS:
        for domain in CFG.domains:
            for level in CFG.levels:
                n = sum(1 for r in corpus[split] if r["domain"] == domain and r["difficulty"] == level)
                assert n == CFG.count(split), (split, domain, level)


def test_every_record_is_valid_with_unique_ids(corpus):
    ids = set()
    for r in all_records(corpus):
        validate_record(r, r["id"])
        assert r["id"] not in ids
        ids.add(r["id"])


def test_splits_are_disjoint_by_problem_hash(corpus):
    owner = {}
    for split in SPLITS:
        for r in corpus[split]:
            key = normalise_problem(r["meta"]["problem"])
            assert key not in owner, f"{key!r} in {owner.get(key)} and {split}"
            owner[key] = split
            # The split is a function of the problem's hash alone.
            assert split_of(r["meta"]["problem"], CFG.split_shares) == split == r["meta"]["split"]
    # Prompts differ in wording only; the problem statement is what the hash sees.
    prompts = [r["prompt"] for s in SPLITS for r in corpus[s]]
    assert len(set(prompts)) == len(prompts)


def test_split_of_ignores_case_spacing_and_seed():
    assert split_of("48 + 37") == split_of("  48  +  37 ") == split_of("48 + 37.")
    a = generate_corpus(CorpusConfig(seed=0, n_base=5, n_train=5, n_query=5, n_test=5, domains=("math",), levels=(1,)))
    b = generate_corpus(CorpusConfig(seed=1, n_base=5, n_train=5, n_query=5, n_test=5, domains=("math",), levels=(1,)))
    owner = {r["meta"]["problem"]: s for s in SPLITS for r in a[s]}
    for s in SPLITS:
        for r in b[s]:
            assert owner.get(r["meta"]["problem"], s) == s


def test_segments_are_ground_truth_the_heuristic_recovers(corpus):
    for r in all_records(corpus):
        segs = r["meta"]["segments"]
        assert segment_response(r["response"]) == segs, r["id"]
        kinds = [k for _, _, k in segs]
        assert kinds[-1] == "answer"
        if r["meta"]["exploratory"]:
            first = kinds.index("exploratory")
            assert "answer" in kinds[:first]  # exploration comes after the first answer
            assert is_exploratory_start(r["response"][segs[first][0] : segs[first][1]])
        else:
            assert "exploratory" not in kinds


def test_base_split_is_cot_without_exploration(corpus):
    """Default base_style="cot": the base split's responses are the same CoT a train record of that
    problem would have without exploration (steps then the answer)."""
    for r in corpus["base"]:
        kinds = [k for _, _, k in r["meta"]["segments"]]
        assert "exploratory" not in kinds and not r["meta"]["exploratory"]
        assert kinds[-1] == "answer" and "step" in kinds, r["id"]
        if r["domain"] == "math":
            assert r["response"].endswith(f"The answer is {r['answer']}.")
        else:
            assert r["response"].endswith("```")


def test_base_split_answer_only_style():
    base = generate_corpus(dataclasses.replace(CFG, base_style="answer"))["base"]
    for r in base:
        assert r["meta"]["segments"] == [[0, len(r["response"]), "answer"]]
        if r["domain"] == "math":
            assert r["response"] == f"The answer is {r['answer']}."
        else:
            assert r["response"].startswith("```python\n") and r["response"].endswith("```")
        assert not r["meta"]["exploratory"]


def test_exploratory_share_matches_config(corpus):
    for split in ("train", "query", "test"):
        for domain in CFG.domains:
            for level in CFG.levels:
                cell = [r for r in corpus[split] if r["domain"] == domain and r["difficulty"] == level]
                share = sum(r["meta"]["exploratory"] for r in cell) / len(cell)
                assert abs(share - CFG.exploratory_share) <= 0.5 / len(cell) + 1e-12
    kinds = {r["meta"]["exploration"] for r in all_records(corpus) if r["meta"]["exploratory"]}
    assert kinds == {"verify", "alternative"}


def test_exploratory_share_is_configurable():
    cfg = CorpusConfig(n_base=5, n_train=20, n_query=5, n_test=5, exploratory_share=0.0, levels=(1, 2))
    assert not any(r["meta"]["exploratory"] for rs in generate_corpus(cfg).values() for r in rs)
    cfg = CorpusConfig(n_base=5, n_train=20, n_query=5, n_test=5, exploratory_share=1.0, levels=(1, 2))
    assert all(r["meta"]["exploratory"] for s in ("train", "query", "test") for r in generate_corpus(cfg)[s])


OPS = {"+": operator.add, "-": operator.sub, "*": operator.mul}


def test_math_answers_are_correct(corpus):
    for r in all_records(corpus):
        if r["domain"] != "math":
            continue
        p = r["meta"]["params"]
        value = p["operands"][0]
        for op, y in zip(p["ops"], p["operands"][1:]):
            value = OPS[op](value, y)
        assert r["answer"] == str(value), r["id"]
        assert extract_math_answer(r["response"]) == r["answer"]
        assert extract_math_answer(r["response"], which="first") == r["answer"]
        assert grade_math(r, r["response"])
        assert r["meta"]["problem"] in r["prompt"]


_EQUATION = re.compile(r"[\d +\-*]+(?:=[\d +\-*]+)+")


def test_every_equation_in_math_cots_holds(corpus):
    checked = 0
    for r in all_records(corpus):
        if r["domain"] != "math":
            continue
        for m in _EQUATION.finditer(r["response"]):
            sides = [s.strip() for s in m.group().split("=")]
            values = {eval(s, {"__builtins__": {}}) for s in sides}  # digits and + - * only
            assert len(values) == 1, f"{r['id']}: {m.group()!r}"
            checked += 1
    assert checked > 1000


def test_math_difficulty_follows_the_design(corpus):
    for r in all_records(corpus):
        if r["domain"] != "math":
            continue
        ops, xs = r["meta"]["params"]["ops"], r["meta"]["params"]["operands"]
        level = r["difficulty"]
        if level == 1:
            assert ops == ["+"] and min(xs) <= 9 and max(xs) <= 99
        elif level == 2:
            assert ops == ["+"] and all(10 <= x <= 99 for x in xs) and xs[0] % 10 + xs[1] % 10 >= 10
        elif level == 3:
            assert len(ops) == 1 and ops[0] in "+-" and all(100 <= x <= 999 for x in xs)
        elif level == 4:
            assert len(ops) == 2
        else:
            assert ops == ["*"] and all(10 <= x <= 99 for x in xs) or len(ops) == 3
        if level > 1 and r["meta"]["split"] != "base":
            assert "carry" in r["response"] or "borrow" in r["response"] or "write" in r["response"]


def run_tests(code, tests):
    env = {}
    exec(code, env)
    for t in tests:
        exec(t, env)


def test_reference_code_passes_its_tests(corpus):
    n = 0
    for r in all_records(corpus):
        if r["domain"] != "code":
            continue
        code = extract_code(r["response"])
        assert code is not None and code.startswith("def f(")
        run_tests(code, r["tests"])
        assert CFG.n_tests == len(r["tests"])
        shown = CFG.n_examples[r["difficulty"] - 1]
        for t in r["tests"][:shown]:
            assert t.removeprefix("assert ") in r["prompt"]
        for t in r["tests"][shown:]:
            assert t.removeprefix("assert ") not in r["prompt"]  # hidden
        n += 1
    assert n == 5 * sum(CFG.count(s) for s in SPLITS)


def test_a_wrong_function_fails_the_tests(corpus):
    r = next(r for r in corpus["test"] if r["domain"] == "code" and r["difficulty"] == 1)
    wrong = extract_code(r["response"]).replace("return ", "return 1 + ")
    with pytest.raises(AssertionError):
        run_tests(wrong, r["tests"])


def test_code_difficulty_grows_with_literals_and_control_flow(corpus):
    def literals(r):
        return len(re.findall(r"\b\d+\b", extract_code(r["response"]).replace("range(1, n + 1)", "")))

    means = []
    for level in CFG.levels:
        cell = [r for r in corpus["train"] if r["domain"] == "code" and r["difficulty"] == level]
        means.append(sum(literals(r) for r in cell) / len(cell))
        code = "\n".join(extract_code(r["response"]) for r in cell)
        assert ("if " in code) == (level >= 3)
        assert ("elif " in code) == (level >= 4)
        assert ("for " in code) == (level == 4)  # level 4: a loop; level 5: several branches
    assert means[0] < means[1] < means[2] < means[3] < means[4], means


def test_code_exploration_claims_hold(corpus):
    """Every worked example, equivalent formula and loop trace in a code detour is right."""
    checked = {"calls": 0, "branches": 0, "forms": 0, "traces": 0, "counts": 0}
    for r in all_records(corpus):
        if r["domain"] != "code" or not r["meta"]["exploratory"]:
            continue
        env = {}
        exec(extract_code(r["response"]), env)
        f = env["f"]
        text = r["response"]
        args, inputs = r["meta"]["params"]["args"], r["meta"]["params"]["inputs"]
        for call, expr, value in re.findall(r"(f\([\d, ]+\)) = ([^=,;\n]+?) = (-?\d+)", text):
            assert eval(call, env) == eval(expr, {}) == int(value), (r["id"], call, expr)
            checked["calls"] += 1
        for call, expr, value in re.findall(r"(f\(\d+\)): since [^,]+, it returns ([^=,;\n]+?) = (-?\d+)", text):
            assert eval(call, env) == eval(expr, {}) == int(value), r["id"]
            checked["branches"] += 1
        m = re.search(r"can be written as (.+?), which", text)
        if m:
            for inp in inputs:
                assert eval(m.group(1), dict(zip(args, inp))) == f(*inp), r["id"]
            checked["forms"] += 1
        m = re.search(r"the total goes ([\d, ]+), so (f\(\d+\)) = (-?\d+)", text)
        if m:
            totals = [int(x) for x in m.group(1).split(", ")]
            assert totals == [f(i) for i in range(len(totals))] and totals[-1] == eval(m.group(2), env)
            checked["traces"] += 1
        m = re.search(r"so f\(n\) = (.+?); for n = (\d+) that is ([\d +*]+) = (\d+)", text)
        if m:
            for (n,) in inputs:
                assert eval(m.group(1), {"n": n}) == f(n), r["id"]
            assert eval(m.group(3), {}) == int(m.group(4)) == f(int(m.group(2)))
            checked["counts"] += 1
        m = re.search(r"trace f\((\d+)\) step by step from (\d+): (.+), so f\(\d+\) = (-?\d+)", text)
        if m:
            adds = [int(x) for x in re.findall(r"adds (\d+)", m.group(3))]
            assert int(m.group(2)) + sum(adds) == int(m.group(4)) == f(int(m.group(1)))
            checked["traces"] += 1
    assert all(v > 0 for v in checked.values()), checked


def test_strip_exploratory_gives_the_plain_cot():
    explored = generate_corpus(CFG)
    plain = generate_corpus(CorpusConfig(**{**CFG.__dict__, "exploratory_share": 0.0}))
    n = 0
    for split in ("train", "query", "test"):
        by_id = {r["id"]: r for r in plain[split]}
        for r in explored[split]:
            s = strip_exploratory(r)
            twin = by_id[r["id"]]
            assert s["response"] == twin["response"], r["id"]
            assert s["meta"]["segments"] == twin["meta"]["segments"]
            assert not s["meta"]["exploratory"]
            if r["meta"]["exploratory"]:
                n += 1
                assert s["meta"]["stripped_exploration"] == r["meta"]["exploration"]
                assert r["meta"]["exploratory"]  # the input is not modified
    assert n > 50


def test_strip_exploratory_on_heuristic_segments():
    text = "Step one.\nThe answer is 5.\nHmm, let me redo it.\n2 + 3 = 5.\nSo the answer is 5."
    rec = {"id": "u", "domain": "math", "difficulty": 1, "prompt": "2 + 3?", "response": text, "answer": "5",
           "meta": {"segments": segment_response(text)}}
    out = strip_exploratory(rec)
    assert out["response"] == "Step one.\nThe answer is 5."
    assert grade_math(out, out["response"])


def test_same_seed_same_bytes_other_seed_other_bytes(tmp_path):
    a = build_corpus(CFG, tmp_path / "a")
    b = build_corpus(CFG, tmp_path / "b")
    c = build_corpus(CorpusConfig(**{**CFG.__dict__, "seed": 4}), tmp_path / "c")
    for split in SPLITS:
        assert a[split].read_bytes() == b[split].read_bytes()
        assert a[split].read_bytes() != c[split].read_bytes()
    assert (tmp_path / "a" / "config.json").read_bytes() == (tmp_path / "b" / "config.json").read_bytes()


def test_same_bytes_across_processes(tmp_path):
    """Nothing depends on Python's per-process string hashing (PYTHONHASHSEED)."""
    code = (
        "import hashlib, sys; from infra_study.corpus import *; "
        "p = build_corpus(CorpusConfig(seed=3, n_base=10, n_train=40, n_query=10, n_test=10), sys.argv[1]); "
        "print(hashlib.sha256(b''.join(p[s].read_bytes() for s in SPLITS)).hexdigest())"
    )
    digests = set()
    for i, hs in enumerate(("1", "2")):
        env = {**os.environ, "PYTHONHASHSEED": hs}
        out = subprocess.run([sys.executable, "-c", code, str(tmp_path / str(i))], env=env, capture_output=True, text=True, check=True)
        digests.add(out.stdout.strip())
    assert len(digests) == 1
    here = build_corpus(CFG, tmp_path / "here")
    assert digests == {hashlib.sha256(b"".join(here[s].read_bytes() for s in SPLITS)).hexdigest()}


def test_build_writes_loadable_files_and_config(tmp_path):
    paths = build_corpus(CFG, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["base.jsonl", "config.json", "query.jsonl", "test.jsonl", "train.jsonl"]
    loaded = load_corpus(tmp_path)
    assert loaded == generate_corpus(CFG)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert CorpusConfig(**saved["config"]) == CFG
    assert saved["files"]["train"]["records"] == len(loaded["train"])
    assert set(paths) == set(SPLITS)


def test_build_reuses_a_matching_corpus_and_rebuilds_otherwise(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="infra_study.corpus")
    build_corpus(CFG, tmp_path)
    assert "generating" in caplog.text
    caplog.clear()
    mtime = (tmp_path / "train.jsonl").stat().st_mtime_ns
    build_corpus(CFG, tmp_path)
    assert "reusing" in caplog.text and "generating" not in caplog.text
    assert (tmp_path / "train.jsonl").stat().st_mtime_ns == mtime
    # A damaged file or another config is rebuilt.
    train = tmp_path / "train.jsonl"
    train.write_bytes(train.read_bytes()[:-100])
    assert not corpus_exists(CFG, tmp_path)
    caplog.clear()
    build_corpus(CFG, tmp_path)
    assert "generating" in caplog.text and corpus_exists(CFG, tmp_path)
    other = CorpusConfig(**{**CFG.__dict__, "n_test": 11})
    assert not corpus_exists(other, tmp_path)


def test_config_validation():
    with pytest.raises(ValueError, match="n_train"):
        CorpusConfig(n_train=0)
    with pytest.raises(ValueError, match="exploratory_share"):
        CorpusConfig(exploratory_share=1.5)
    with pytest.raises(ValueError, match="split_shares"):
        CorpusConfig(split_shares=(0.5, 0.3, 0.1, 0.2))
    with pytest.raises(ValueError, match="levels"):
        CorpusConfig(levels=(0, 1))
    with pytest.raises(ValueError, match="domains"):
        CorpusConfig(domains=("math", "physics"))
    with pytest.raises(ValueError, match="n_examples"):
        CorpusConfig(n_tests=3, n_examples=(2, 2, 3, 3, 3))
    with pytest.raises(ValueError, match="seed"):
        CorpusConfig(seed=1.5)
    assert CorpusConfig(levels=[1, 2]) == CorpusConfig(levels=(1, 2))  # lists from JSON


def test_too_many_problems_for_a_level_is_a_clear_error():
    with pytest.raises(ValueError, match=r"math level 1: ran out of distinct problems .*base"):
        generate_corpus(CorpusConfig(n_base=1000, n_train=5, n_query=5, n_test=5, domains=("math",), levels=(1,)))


def test_extract_math_answer_and_grade():
    text = "The answer is 12.\nWait, no.\nSo the answer is 13."
    assert extract_math_answer(text) == "13"
    assert extract_math_answer(text, which="first") == "12"
    assert extract_math_answer("no answer here") is None
    assert extract_math_answer("so $\\boxed{\\frac{1}{2}}$") == "\\frac{1}{2}"
    rec = {"answer": "1692"}
    assert grade_math(rec, "The answer is 1692.")
    assert grade_math(rec, "The answer is 1,692.")
    assert grade_math(rec, "Thus the answer is 1692.0")
    assert not grade_math(rec, "The answer is 1682.")
    assert not grade_math(rec, "1692")  # no answer line: nothing to grade
    assert not grade_math(rec, "The answer is 1692.\nSo the answer is 1693.")  # the last one counts
    assert grade_math({"answer": "\\frac{1}{2}"}, "\\boxed{\\frac{1}{2}}")
    with pytest.raises(ValueError):
        extract_math_answer(text, which="middle")


def test_extract_code_takes_the_last_closed_block():
    text = "```python\ndef f(x):\n    return 1\n```\nthen\n```python\ndef f(x):\n    return 2\n```\n```python\nunclosed"
    assert extract_code(text) == "def f(x):\n    return 2\n"
    assert extract_code("no code") is None
    assert extract_code("```\nprint(1)\n```") == "print(1)\n"


def test_corpus_stats(corpus):
    df = corpus_stats(corpus["train"])
    assert list(df.columns) == ["count", "mean_chars", "mean_tokens", "exploratory_share"]
    assert list(df.index) == [(d, l) for d in CFG.domains for l in CFG.levels]
    assert (df["count"] == CFG.n_train).all()
    assert ((df["exploratory_share"] - CFG.exploratory_share).abs() <= 0.5 / CFG.n_train).all()
    r = corpus["train"][0]
    cell = [x for x in corpus["train"] if x["domain"] == r["domain"] and x["difficulty"] == r["difficulty"]]
    assert df.loc[(r["domain"], r["difficulty"]), "mean_chars"] == pytest.approx(
        sum(len(x["response"]) for x in cell) / len(cell))
    assert corpus_stats([]).empty
    # Longer CoTs at higher math levels.
    math = df.loc["math", "mean_tokens"].tolist()
    assert math == sorted(math)


def test_generation_is_fast_enough_for_tens_of_thousands():
    """Not a timing test: checks the tiny profile's size is generated (the datasheet states times)."""
    out = generate_corpus(CorpusConfig())
    assert sum(len(v) for v in out.values()) == 11000


def sample_records():
    """How data/sample.jsonl is made (also in data/DATASHEET.md): two records per domain x level."""
    full = generate_corpus(CorpusConfig(seed=0, n_base=2, n_train=4, n_query=2, n_test=2))
    picks = []
    for domain in ("math", "code"):
        for level in range(1, 6):
            cell = [r for r in full["train"] if r["domain"] == domain and r["difficulty"] == level]
            plain = next(r for r in cell if not r["meta"]["exploratory"])
            explored = next(r for r in cell if r["meta"]["exploratory"])
            picks += [plain, explored] if level % 2 else [plain, next(r for r in full["base"] if r["domain"] == domain and r["difficulty"] == level)]
    return picks


def test_committed_sample_is_valid_and_current():
    recs = load_records(DATA / "sample.jsonl")
    assert recs == sample_records(), "regenerate data/sample.jsonl as data/DATASHEET.md says"
    assert {(r["domain"], r["difficulty"]) for r in recs} == {(d, l) for d in ("math", "code") for l in range(1, 6)}
