"""Tests of the version-2 corpus (``CorpusConfig(version=2)``) and of version 1 staying as it was.

Ground truth comes from outside the generator's text: math values are recomputed with Python
arithmetic from ``meta.params``; every equation a CoT writes is evaluated; code blocks (our own
reference code) are executed against the record's asserts. Version 1 is pinned by SHA-256s of its
files computed before version 2 existed.
Run: ``OMP_NUM_THREADS=1 pytest tests/study/test_corpus_v2.py``.
"""
import dataclasses
import hashlib
import re

import pytest

from infra_lib.records import validate_record
from infra_lib.segments import ANSWER_LINE, is_exploratory_start, segment_response
from infra_study.corpus import (
    SPLITS,
    CorpusConfig,
    build_corpus,
    extract_code,
    extract_math_answer,
    generate_corpus,
    strip_exploratory,
)
from infra_study.corpus import v2
from infra_study.corpus.pools import POOLS
from infra_study.corpus.stats import answer_change_share, connector_counts, exploration_shares

CFG = CorpusConfig(seed=1, n_base=20, n_train=80, n_query=20, n_test=20, version=2)

# sha256 over base, train, query, test .jsonl (in that order) written by build_corpus, computed from
# the round-1 generator before version 2 was added.
V1_PINS = {
    (3, 10, 40, 10, 10): "cb6f191ad12e27ec2a5d013f76bbbbb8989428374f90596059e9c1fd8bb4fad2",
    (0, 600, 400, 50, 50): "67effd36e46ee2b07d6fccbd979282e4e8f8bac33ba5a4978bad7459a0603cc5",
}


@pytest.fixture(scope="module")
def corpus():
    return generate_corpus(CFG)


def records(corpus, splits=SPLITS):
    return [r for s in splits for r in corpus[s]]


def _ops_value(operands, ops):
    ops_py = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b}
    v = operands[0]
    for op, y in zip(ops, operands[1:]):
        v = ops_py[op](v, y)
    return v


def _run(code, tests):
    """True when our own reference code passes every assert (exec is fine: generator output)."""
    env = {}
    try:
        exec(code, env)
        for t in tests:
            exec(t, env)
    except AssertionError:
        return False
    return True


def _blocks(text):
    return re.findall(r"```python\n(.*?)```", text, re.S)


@pytest.mark.parametrize("key", sorted(V1_PINS))
def test_version_1_files_are_byte_identical_to_round_1(tmp_path, key):
    seed, nb, nt, nq, ne = key
    cfg = CorpusConfig(seed=seed, n_base=nb, n_train=nt, n_query=nq, n_test=ne, version=1)
    paths = build_corpus(cfg, tmp_path)
    h = hashlib.sha256()
    for s in SPLITS:
        h.update(paths[s].read_bytes())
    assert h.hexdigest() == V1_PINS[key]


def test_version_is_validated():
    with pytest.raises(ValueError, match="version"):
        CorpusConfig(version=3)
    with pytest.raises(ValueError, match="slip_share"):
        CorpusConfig(slip_share=1.5)
    with pytest.raises(ValueError, match="varied.*version=2"):
        CorpusConfig(base_style="varied")  # version 1 has one wording per slot


def test_records_valid_segments_and_roles(corpus):
    ids = set()
    for r in records(corpus):
        validate_record(r, r["id"])  # offsets in order, non-overlapping, covering the response
        assert r["id"] not in ids
        ids.add(r["id"])
        segs, roles = r["meta"]["segments"], r["meta"]["segment_roles"]
        assert len(roles) == len(segs) and set(roles) <= set(v2.ROLES)
        assert segment_response(r["response"]) == segs, r["id"]  # the heuristic recovers them
        for (s, e, kind), role in zip(segs, roles):
            assert (kind == "exploratory") == (role in ("check", "correction", "confirm", "alternative")), r["id"]
            assert (kind == "answer") == (role == "answer"), r["id"]
            if role in ("check", "alternative") and segs[roles.index(role)][0] == s:
                assert is_exploratory_start(r["response"][s:e]), r["id"]


def test_exploring_share_is_the_same_at_every_level(corpus):
    for split in ("train", "query", "test"):
        shares = exploration_shares(corpus[split])
        for (domain, level), s in shares.items():
            explore = 1 - s.get("none", 0)
            assert explore == pytest.approx(CFG.exploratory_share, abs=0.5 / CFG.count(split)), (split, domain, level)
            # about half of the exploring CoTs slip (code level 1 has fewer problems that can)
            assert s.get("slip", 0) / explore >= (0.3 if (domain, level) == ("code", 1) else 0.45), (split, domain, level)
    assert all(s == {"none": 1.0} for s in exploration_shares(corpus["base"]).values())


def test_math_slip_is_wrong_and_correction_right(corpus):
    n = 0
    for r in records(corpus, ("train", "query", "test")):
        if r["domain"] != "math":
            continue
        truth = _ops_value(r["meta"]["params"]["operands"], r["meta"]["params"]["ops"])
        assert int(r["answer"]) == truth
        first, last = int(extract_math_answer(r["response"], "first")), int(extract_math_answer(r["response"], "last"))
        assert last == truth, r["id"]
        if r["meta"]["exploration"] == "slip":
            assert first != truth, r["id"]
            assert abs(first - truth) in (10, 100, 1000, 10000), r["id"]  # one carry or borrow lost
            assert r["meta"]["segment_roles"].count("slip") == 1
            assert f"not {first}" in r["response"]  # the correction names the wrong value
            n += 1
        else:
            assert first == truth, r["id"]
    assert n > 50


_EQ_MATH = re.compile(r"[\d +\-*]+(?:=[\d +\-*]+)+")
_EQ_CODE = re.compile(r"-?\d+(?: [-+*] -?\d+)+ = -?\d+")


def _eq_holds(expr):
    sides = [s.strip() for s in expr.split("=")]
    return len({eval(s, {"__builtins__": {}}) for s in sides}) == 1  # digits and + - * only


def test_every_equation_holds_except_the_slips_consequences(corpus):
    """Every equation in every CoT holds, except, in a slip CoT, the result lines between the
    slip and the first answer (the slip itself drops a carry; its arithmetic is right)."""
    checked = 0
    for r in records(corpus):
        text, segs, roles = r["response"], r["meta"]["segments"], r["meta"]["segment_roles"]
        first_answer = roles.index("answer")
        pattern = _EQ_MATH if r["domain"] == "math" else _EQ_CODE
        for j, (s, e, _) in enumerate(segs):
            chunk = text[s:e]
            if r["domain"] == "code" and chunk.startswith("```"):
                continue
            for m in pattern.finditer(chunk):
                ok = _eq_holds(m.group())
                checked += 1
                if not ok:
                    assert r["meta"]["exploration"] == "slip" and roles.index("slip") <= j < first_answer, (r["id"], m.group())
    assert checked > 3000


def test_code_slip_fails_and_correction_passes(corpus):
    n = {"slip": 0, "verify": 0, "alternative": 0, None: 0}
    for r in records(corpus, ("train", "query", "test")):
        if r["domain"] != "code":
            continue
        blocks = _blocks(r["response"])
        assert _run(blocks[-1], r["tests"]), r["id"]
        kind = r["meta"]["exploration"]
        n[kind] += 1
        if kind == "slip":
            assert len(blocks) == 2 and not _run(blocks[0], r["tests"]), r["id"]
        else:
            assert all(_run(b, r["tests"]) for b in blocks), r["id"]
        if kind == "alternative":
            assert blocks[0] != blocks[1] and "v = v" in blocks[1]  # a different program, same values
    assert min(n.values()) > 10


def test_checks_change_the_answer_in_about_half_of_exploring_cots(corpus):
    shares = answer_change_share(corpus["train"])
    assert all(0.3 <= v <= 0.6 for v in shares.values()), shares


def test_strip_exploratory_gives_a_right_plain_cot(corpus):
    plain = generate_corpus(dataclasses.replace(CFG, exploratory_share=0.0))
    by_id = {r["id"]: r for s in ("train",) for r in plain[s]}
    for r in corpus["train"]:
        s = strip_exploratory(r)
        assert "exploratory" not in [k for _, _, k in s["meta"]["segments"]]
        assert len(s["meta"]["segment_roles"]) == len(s["meta"]["segments"])
        assert "slip" not in s["meta"]["segment_roles"]
        if r["domain"] == "math":
            assert extract_math_answer(s["response"]) == r["answer"]
        else:
            assert _run(extract_code(s["response"]), r["tests"])
        if r["meta"]["exploration"] != "slip":  # the same text a non-exploring draw writes
            assert s["response"] == by_id[r["id"]]["response"], r["id"]


def test_pools_have_5_to_10_distinct_wordings():
    for slot, pool in POOLS.items():
        assert 5 <= len(pool) <= 10 and len(set(pool)) == len(pool), slot


def test_markers_and_answer_lines_are_recognised():
    fill = dict(e="47 + 34", x="3", how="split it", r="81", k="3", c="7", w="71", why="3 * 7 = 21", F="3 * x + 21")
    for slot in ("math_check", "alt_open", "code_check", "code_alt"):
        for t in POOLS[slot]:
            assert is_exploratory_start(t.format(**fill)), t
    for t in POOLS["answer"]:
        assert ANSWER_LINE.match(t.format(r="81")), t
    for slot, pool in POOLS.items():  # no other slot may look like an answer line
        if slot != "answer":
            assert not any(ANSWER_LINE.match(t) for t in pool), slot


def test_base_split_uses_the_plain_wording(corpus):
    first = {slot: pool[0].split("{")[0] for slot, pool in POOLS.items()}
    for r in corpus["base"]:
        assert not r["meta"]["exploratory"]
        line0 = r["response"].splitlines()[0]
        if r["domain"] == "math" and r["meta"]["family"] != "mul":
            assert line0.startswith(first["math_open"]), line0
        if r["domain"] == "code" and r["meta"]["family"] == "steps":
            assert line0 == POOLS["code_open"][0]


def test_varied_base_draws_the_pools_and_stays_plain_cot():
    """base_style='varied': the base split takes its wordings from the pools (more than one opener
    per domain), never explores, and its problems and answers are those of the plain base."""
    cfg = dataclasses.replace(CFG, base_style="varied", n_train=4, n_query=4, n_test=4)
    varied = generate_corpus(cfg)["base"]
    plain = generate_corpus(dataclasses.replace(cfg, base_style="cot"))["base"]
    same = lambda rs: [(r["id"], r["meta"]["problem"], r.get("answer")) for r in rs]  # noqa: E731
    assert same(varied) == same(plain)
    for domain in ("math", "code"):
        openers = {r["response"].splitlines()[0].split(" ")[0] for r in varied if r["domain"] == domain}
        assert len(openers) > 1, (domain, openers)
    assert all(not r["meta"]["exploratory"] and "exploratory" not in {k for *_, k in r["meta"]["segments"]}
               for r in varied)
    assert sum(a["response"] != b["response"] for a, b in zip(varied, plain)) > len(plain) // 2


def test_informative_connectors(corpus):
    """"but" comes before a borrow, "since" justifies a carry or a folded constant."""
    for r in records(corpus):
        for line in r["response"].splitlines():
            if r["domain"] == "math" and "borrow 10" in line and "after borrowing" not in line:
                assert " but " in line or "too small" in line or "below zero" in line or "is smaller" in line
    counts = connector_counts(corpus["train"])
    assert counts["math"]["but"] > 50 and counts["math"]["since"] > 50 and counts["code"]["since"] > 50


def test_code_blocks_hold_computed_numbers(corpus):
    """From level 2 on, nearly every code block holds a number the prompt does not (a folded
    constant; it can equal a prompt number by chance, more often since folds only double or
    triple: 50 of 56 level-2 blocks at seed 0),
    and in the three- and four-step chains (levels 3 and 5) most numbers are computed (round 1: 97%
    copied)."""
    for level in (2, 3, 4, 5):
        copied = total = 0
        fresh = []
        for r in corpus["train"]:
            if r["domain"] != "code" or r["difficulty"] != level or r["meta"]["exploration"]:
                continue
            in_prompt = set(re.findall(r"\d+", r["prompt"].split("Examples:")[0]))
            nums = re.findall(r"\d+", _blocks(r["response"])[-1])
            fresh.append(any(n not in in_prompt for n in nums))
            total += len(nums)
            copied += sum(n in in_prompt for n in nums)
        assert sum(fresh) / len(fresh) >= 0.85, level
        if level in (3, 5):
            assert copied / total < 0.5, (level, copied / total)


def test_same_config_same_bytes(tmp_path):
    small = CorpusConfig(seed=2, n_base=4, n_train=6, n_query=2, n_test=2, version=2)
    a, b = build_corpus(small, tmp_path / "a"), build_corpus(small, tmp_path / "b")
    assert all(a[s].read_bytes() == b[s].read_bytes() for s in SPLITS)


def sample_v2_records():
    """How data/sample_v2.jsonl is made (also in data/DATASHEET.md): per domain x level a plain
    CoT and an exploring one (a slip at odd levels, a check that confirms at level 2, an
    alternative at level 4), plus the base record of levels 1 and 3."""
    full = generate_corpus(CorpusConfig(seed=0, n_base=2, n_train=20, n_query=2, n_test=2, version=2))
    want = {1: "slip", 2: "verify", 3: "slip", 4: "alternative", 5: "slip"}
    picks = []
    for domain in ("math", "code"):
        for level in range(1, 6):
            cell = [r for r in full["train"] if r["domain"] == domain and r["difficulty"] == level]
            plain = next(r for r in cell if not r["meta"]["exploratory"])
            explored = next((r for r in cell if r["meta"]["exploration"] == want[level]),
                            next(r for r in cell if r["meta"]["exploratory"]))
            picks += [plain, explored]
            if level in (1, 3):
                picks.append(next(r for r in full["base"] if r["domain"] == domain and r["difficulty"] == level))
    return picks


def test_committed_v2_sample_is_valid_and_current():
    from pathlib import Path

    from infra_lib.records import load_records

    path = Path(__file__).resolve().parents[2] / "data" / "sample_v2.jsonl"
    assert load_records(path) == sample_v2_records(), "regenerate data/sample_v2.jsonl as data/DATASHEET.md says"


def test_profiles_use_v2_and_give_levels_4_5_more_weight_in_sft_than_in_the_base():
    """`tiny` and `smoke` build corpus v2 and `tiny-v1` keeps round 1's corpus; under both SFT mixes
    levels 4-5 take a larger share of a domain's SFT tokens than of its base tokens, so the mix
    decides how much of them the model sees."""
    from infra_study.arms import flipped_config
    from infra_study.profiles import get_profile

    assert get_profile("tiny-v1").corpus.version == 1
    for name in ("tiny", "smoke"):
        p = get_profile(name)
        assert p.corpus.version == 2 and p.corpus.base_style == "varied"
        for sft in (p.sft, flipped_config(p.sft)):
            for d in ("math", "code"):
                base_w, sft_w = p.base.level_weights(d), sft.level_weights(d)
                assert sum(base_w[3:]) / sum(base_w) < sum(sft_w[3:]) / sum(sft_w), (name, d)
        assert get_profile(name, {"corpus.version": 1, "corpus.base_style": "cot"}).corpus.version == 1