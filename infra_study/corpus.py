"""The generated math + code chain-of-thought corpus (data/DATASHEET.md), its splits and grading.

Two domains, five difficulty levels each, four problem splits:

- ``base``: CoT responses without exploration (``base_style="cot"``, default) or answer-only
  (``"answer"``), all levels; the base stage stands in for the instruct model that already reasons;
- ``train`` (SFT), ``query`` (D_correct is drawn from here) and ``test`` (accuracy, gold
  log-likelihood): step-by-step CoTs with ground-truth ``meta.segments``; a controlled share
  (``exploratory_share``) goes on after the first answer to verify or to try another way.

Math CoTs reason in words with logic connectors and do arithmetic column by column (what let a
1M-parameter model learn two-digit sums at all, see data/DATASHEET.md); code CoTs plan
in words and then write ``f`` in a fenced block, graded by hidden asserts. The generator is our
own rather than reasoning-gym's: those generators write neither column-wise CoTs nor segment
ground truth (``data/DATASHEET.md``).

Splits are disjoint by problem: a problem's split is a function of the hash of its canonical
statement (the expression for math, the function spec for code), independent of the seed, so two
wordings of one problem never land in two splits. Everything is seeded: the same config gives
byte-identical files.
"""
from __future__ import annotations

import copy
import hashlib
import logging
import random
import re
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Callable, Iterable, Sequence

from infra_lib.io import config_hash, read_json, write_config
from infra_lib.records import DOMAINS, LEVELS, load_records, validate_record, write_records
from infra_lib.segments import answer_in_line, join_segments, last_boxed

__all__ = [
    "SPLITS",
    "GENERATOR_VERSION",
    "CorpusConfig",
    "generate_corpus",
    "build_corpus",
    "load_corpus",
    "corpus_exists",
    "corpus_paths",
    "strip_exploratory",
    "normalise_problem",
    "split_of",
    "extract_math_answer",
    "extract_code",
    "grade_math",
    "corpus_stats",
]

log = logging.getLogger(__name__)

SPLITS: tuple[str, ...] = ("base", "train", "query", "test")
# Bump when the generated text changes, so a cached corpus with the same config is rebuilt.
GENERATOR_VERSION = "2"
_COT_SPLITS = ("train", "query", "test")


@dataclass(frozen=True)
class CorpusConfig:
    """What the generated corpus contains; saved as ``config.json`` beside the split files."""

    seed: int = 0
    """Seed of every random choice (problems, wording, which CoTs explore); same seed, same bytes."""
    n_base: int = 600
    """Problems per (domain, level) in the base split (see ``base_style``)."""
    n_train: int = 400
    """Problems per (domain, level) in the SFT train split (CoT responses)."""
    n_query: int = 50
    """Problems per (domain, level) in the query split (D_correct comes from here)."""
    n_test: int = 50
    """Problems per (domain, level) in the test split (accuracy; never used to choose weights)."""
    domains: tuple[str, ...] = ("math", "code")
    """Domains to generate, a subset of ``("math", "code")``."""
    levels: tuple[int, ...] = (1, 2, 3, 4, 5)
    """Difficulty levels to generate, a subset of 1..5."""
    exploratory_share: float = 0.3
    """Share of train/query/test CoTs, per (domain, level, split), that explore after the first
    answer (rounded to whole records, so the share is exact up to 1/n)."""
    alternative_share: float = 0.5
    """Of the exploratory CoTs, the share that try another way ("Alternatively, ..."); the rest
    verify ("Wait, let me check ...")."""
    split_shares: tuple[float, float, float, float] = (0.5, 0.34, 0.08, 0.08)
    """Shares of hash space owned by base, train, query, test. A problem's split is a function of
    its hash and these shares; each split's count must fit its region of a level's problem space
    (math level 1 has 1701 problems, so at most ~850 base and ~570 train problems there)."""
    base_style: str = "cot"
    """Responses of the base split: ``"cot"`` (the step-by-step CoT without exploration) or
    ``"answer"`` (answer only). A 1M-parameter base trained on answer-only responses could not
    learn the CoT in a short SFT stage (0-6% accuracy, measured), so the base reasons step by step
    like an instruct model and SFT changes the mix and adds exploration."""
    n_tests: int = 5
    """Asserts per code problem (hidden tests; the first few are shown in the prompt)."""
    n_examples: tuple[int, int, int, int, int] = (2, 2, 3, 3, 3)
    """Asserts shown as examples in the code prompt, per level 1..5 (each < ``n_tests``)."""

    def __post_init__(self) -> None:
        # Lists arrive from JSON; store tuples so the config stays hashable and compares equal.
        for name in ("domains", "levels", "split_shares", "n_examples"):
            v = getattr(self, name)
            if isinstance(v, list):
                object.__setattr__(self, name, tuple(v))
        if not _is_int(self.seed):
            raise ValueError(f"seed must be an integer, got {self.seed!r}")
        for split in SPLITS:
            n = self.count(split)
            if not _is_int(n) or n < 1:
                raise ValueError(f"n_{split} must be an integer >= 1, got {n!r}")
        if not self.domains or len(set(self.domains)) != len(self.domains) or not set(self.domains) <= set(DOMAINS):
            raise ValueError(f"domains must be distinct values of {DOMAINS}, got {self.domains!r}")
        if not self.levels or len(set(self.levels)) != len(self.levels) or not all(_is_int(l) and l in LEVELS for l in self.levels):
            raise ValueError(f"levels must be distinct integers in 1..5, got {self.levels!r}")
        for name in ("exploratory_share", "alternative_share"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0.0 <= v <= 1.0:
                raise ValueError(f"{name} must be a number in [0, 1], got {v!r}")
        s = self.split_shares
        if len(s) != 4 or any(isinstance(x, bool) or not isinstance(x, (int, float)) or x <= 0 for x in s):
            raise ValueError(f"split_shares must be 4 positive numbers (base, train, query, test), got {s!r}")
        if abs(sum(s) - 1.0) > 1e-9:
            raise ValueError(f"split_shares must sum to 1, got {sum(s)}")
        if self.base_style not in ("cot", "answer"):
            raise ValueError(f"base_style must be 'cot' or 'answer', got {self.base_style!r}")
        if not _is_int(self.n_tests) or not 2 <= self.n_tests <= 10:
            raise ValueError(f"n_tests must be an integer in 2..10, got {self.n_tests!r}")
        if len(self.n_examples) != 5 or not all(_is_int(k) and 1 <= k < self.n_tests for k in self.n_examples):
            raise ValueError(f"n_examples must be 5 integers in 1..n_tests-1 (one per level), got {self.n_examples!r}")

    def count(self, split: str) -> int:
        """Problems per (domain, level) in ``split``."""
        return getattr(self, f"n_{split}")


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


# ----------------------------------------------------------------------------------- splits


def normalise_problem(text: str) -> str:
    """A problem statement reduced to what identifies it: lower case, single spaces, no end dot."""
    return " ".join(text.lower().split()).rstrip(" .?")


def _problem_unit(text: str) -> float:
    digest = hashlib.sha256(("infra-split-v1:" + normalise_problem(text)).encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def split_of(problem: str, shares: Sequence[float] = CorpusConfig.split_shares) -> str:
    """The split (base, train, query or test) that owns a problem, from the hash of its statement.

    A function of the normalised statement and ``shares`` only (no seed), so a problem keeps its
    split across seeds and profiles. Also usable for a user's data: pass the prompt.
    """
    u = _problem_unit(problem)
    edge = 0.0
    for split, share in zip(SPLITS, shares):
        edge += share
        if u < edge:
            return split
    return SPLITS[-1]


# ----------------------------------------------------------------------------------- math

_COLUMNS = ("ones", "tens", "hundreds", "thousands", "ten thousands", "hundred thousands")
_OPS: dict[str, Callable[[int, int], int]] = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b}


def _digits(n: int) -> list[int]:
    """Digits of ``n`` >= 0, ones first."""
    return [int(c) for c in reversed(str(n))]


def _add_lines(a: int, b: int, style: int) -> list[str]:
    """Column-by-column addition of a + b, one line per column, ones first."""
    da, db = _digits(a), _digits(b)
    lines, carry = [], 0
    for i in range(max(len(da), len(db))):
        terms = [d[i] for d in (da, db) if i < len(d)] + ([carry] if carry else [])
        col = _COLUMNS[i]
        head = "Add the ones" if i == 0 else f"Then the {col}"
        if len(terms) == 1:
            lines.append(f"{head}: bring down {terms[0]}.")
            carry = 0
            continue
        s = sum(terms)
        expr = " + ".join(map(str, terms))
        carry_txt = f", carry {s // 10}" if s >= 10 else ""
        if style == 0:
            lines.append(f"{head}: {expr} = {s}, write {s % 10}{carry_txt}.")
        else:
            carry_txt = f" and carry {s // 10}" if s >= 10 else ""
            lines.append(f"{head}: since {expr} = {s}, we write {s % 10}{carry_txt}.")
        carry = s // 10
    if carry:
        lines.append(f"Then the {_COLUMNS[max(len(da), len(db))]}: write the carry {carry}.")
    return lines


def _sub_lines(a: int, b: int, style: int) -> list[str]:
    """Column-by-column subtraction a - b (a >= b >= 0) with borrows, ones first."""
    da, db = _digits(a), _digits(b)
    lines, borrow = [], 0
    for i in range(len(da)):
        head = "Subtract the ones" if i == 0 else f"Then the {_COLUMNS[i]}"
        parts = [da[i]] + ([db[i]] if i < len(db) else []) + ([1] if borrow else [])
        if len(parts) == 1:
            lines.append(f"{head}: bring down {da[i]}.")
            continue
        expr = " - ".join(map(str, parts[1:]))
        diff = da[i] - sum(parts[1:])
        if diff >= 0:
            if style == 0:
                lines.append(f"{head}: {da[i]} - {expr} = {diff}, write {diff}.")
            else:
                lines.append(f"{head}: since {da[i]} - {expr} = {diff}, we write {diff}.")
            borrow = 0
        else:
            lines.append(
                f"{head}: {da[i]} - {expr} is below zero, so borrow 10: "
                f"{da[i] + 10} - {expr} = {diff + 10}, write {diff + 10}, borrow 1."
            )
            borrow = 1
    return lines


def _mul_digit_lines(a: int, d: int, first: str) -> list[str]:
    """Column-by-column a * d for one digit d; the last column writes its whole value."""
    da = _digits(a)
    lines, carry = [], 0
    for i, x in enumerate(da):
        p = x * d + carry
        expr = f"{x} * {d}" + (f" + {carry}" if carry else "")
        head = first if i == 0 else f"Then the {_COLUMNS[i]}"
        if i == len(da) - 1:
            lines.append(f"{head}: {expr} = {p}, write {p}.")
        else:
            carry_txt = f", carry {p // 10}" if p >= 10 else ""
            lines.append(f"{head}: {expr} = {p}, write {p % 10}{carry_txt}.")
            carry = p // 10
    return lines


def _math_expr(operands: Sequence[int], ops: Sequence[str]) -> str:
    out = str(operands[0])
    for op, y in zip(ops, operands[1:]):
        out += f" {op} {y}"
    return out


def _math_value(operands: Sequence[int], ops: Sequence[str]) -> int:
    """Left-to-right value (our families never mix * with + or -, so this is the usual value)."""
    v = operands[0]
    for op, y in zip(ops, operands[1:]):
        v = _OPS[op](v, y)
    return v


def _math_params(family: str, operands: list[int], ops: list[str]) -> dict:
    return {"family": family, "operands": operands, "ops": ops, "problem": _math_expr(operands, ops)}


def _chain_ok(operands: Sequence[int], ops: Sequence[str]) -> bool:
    v = operands[0]
    for op, y in zip(ops, operands[1:]):
        v = _OPS[op](v, y)
        if v < 0:
            return False
    return True


def _sample_math(rng: random.Random, level: int) -> dict:
    if level == 1:  # a one-digit plus a one- or two-digit number (1701 problems)
        a, b = rng.randint(1, 9), rng.randint(1, 99)
        return _math_params("add", [a, b] if rng.random() < 0.5 else [b, a], ["+"])
    if level == 2:  # two-digit sums that always carry from the ones
        while True:
            a, b = rng.randint(10, 99), rng.randint(10, 99)
            if a % 10 + b % 10 >= 10:
                return _math_params("add", [a, b], ["+"])
    if level == 3:  # three-digit sums or differences
        a, b = rng.randint(100, 999), rng.randint(100, 999)
        if rng.random() < 0.5:
            return _math_params("add", [a, b], ["+"])
        a, b = max(a, b), min(a, b)
        return _math_params("sub", [a, b] if a != b else [a, b - 1], ["-"])
    if level == 4:  # two operations on two-digit numbers
        while True:
            operands = [rng.randint(10, 99) for _ in range(3)]
            ops = [rng.choice("+-") for _ in range(2)]
            if ops != ["-", "-"] and _chain_ok(operands, ops):
                return _math_params("chain", operands, ops)
    if rng.random() < 0.5:  # level 5: two-digit times two-digit (neither ends in 0) ...
        while True:
            a, b = rng.randint(12, 99), rng.randint(12, 99)
            if a % 10 and b % 10:
                return _math_params("mul", [a, b], ["*"])
    while True:  # ... or three operations on two- and three-digit numbers
        operands = [rng.randint(10, 499) for _ in range(4)]
        ops = [rng.choice("+-") for _ in range(3)]
        if ops.count("-") < 3 and _chain_ok(operands, ops):
            return _math_params("chain", operands, ops)


_MATH_PROMPTS = ("What is {e}?", "Compute {e}.", "Work out {e}.")


def _op_lines(x: int, op: str, y: int, style: int) -> list[str]:
    if op == "+":
        return _add_lines(x, y, style)
    return _sub_lines(x, y, style)


def _math_cot(p: dict, style: int) -> tuple[list[tuple[str, str]], int]:
    """Step parts of a math CoT and its answer; the caller adds the answer line."""
    operands, ops = p["operands"], p["ops"]
    parts: list[tuple[str, str]] = []
    if p["family"] == "mul":
        a, b = operands
        r = a * b
        bt, bo = b // 10, b % 10
        p1, p2 = a * bo, a * bt * 10
        parts.append((f"First, split {b} into {bt * 10} + {bo}.", "step"))
        parts += [(l, "step") for l in _mul_digit_lines(a, bo, f"Multiply {a} by {bo}, the ones")]
        parts.append((f"So {a} * {bo} = {p1}.", "step"))
        parts += [(l, "step") for l in _mul_digit_lines(a, bt, f"Next, multiply {a} by {bt}, the ones")]
        parts.append((f"So {a} * {bt} = {a * bt}, and {a} * {bt * 10} = {p2}.", "step"))
        parts.append((f"Now add {p1} + {p2}.", "step"))
        parts += [(l, "step") for l in _add_lines(p1, p2, style)]
        parts.append((f"So {p1} + {p2} = {p1 + p2}.", "step"))
        parts.append((f"Therefore {a} * {b} = {r}.", "step"))
        return parts, r
    v = operands[0]
    for k, (op, y) in enumerate(zip(ops, operands[1:])):
        lead = "First" if k == 0 else "Next"
        parts.append((f"{lead}, work out {v} {op} {y}.", "step"))
        parts += [(l, "step") for l in _op_lines(v, op, y, style)]
        w = _OPS[op](v, y)
        parts.append((f"So {v} {op} {y} = {w}.", "step"))
        v = w
    if len(ops) > 1:
        parts.append((f"Therefore {p['problem']} = {v}.", "step"))
    return parts, v


def _math_exploration(p: dict, r: int, kind: str, rng: random.Random) -> list[str]:
    """Exploratory lines after the first answer: verify it, or reach it another way."""
    operands, ops, family = p["operands"], p["ops"], p["family"]
    if family == "mul":
        a, b = operands
        if kind == "verify":
            at, ao = a - a % 10, a % 10
            head, body = "Wait, let me check by splitting the other number.", (
                f"{b} * {a} = {b} * {at} + {b} * {ao} = {b * at} + {b * ao} = {r}, the same.")
        else:
            at, ao = a - a % 10, a % 10
            head, body = "Alternatively, split the first number instead.", (
                f"{a} * {b} = {at} * {b} + {ao} * {b} = {at * b} + {ao * b} = {r}.")
    elif kind == "verify":
        steps, v = [], r
        vals = [operands[0]]
        for op, y in zip(ops, operands[1:]):
            vals.append(_OPS[op](vals[-1], y))
        for i in range(len(ops) - 1, -1, -1):  # undo the operations from the last one
            inv = "-" if ops[i] == "+" else "+"
            steps.append(f"{vals[i + 1]} {inv} {operands[i + 1]} = {vals[i]}")
        how = "subtracting back" if ops == ["+"] else "adding back" if ops == ["-"] else "working backwards"
        head, body = f"Wait, let me check by {how}.", ", ".join(steps) + ", which is the first number."
    elif ops == ["+"]:
        a, b = operands
        if rng.random() < 0.5 or a % 10 == a or b % 10 == b:
            head, body = "Alternatively, add in the other order.", f"{b} + {a} = {r}."
        else:
            at, bt, ao, bo = a - a % 10, b - b % 10, a % 10, b % 10
            head, body = "Alternatively, add the tens and the ones apart.", (
                f"{at} + {bt} = {at + bt} and {ao} + {bo} = {ao + bo}, so {at + bt} + {ao + bo} = {r}.")
    elif ops == ["-"]:
        a, b = operands
        bh, bl = b - b % 10, b % 10
        if bh and bl:
            head, body = "Alternatively, subtract in two parts.", f"{a} - {bh} = {a - bh}, then {a - bh} - {bl} = {r}."
        else:
            head, body = f"Alternatively, count up from {b}.", f"{b} + {r} = {a}, so the difference is {r}."
    else:
        plus = [operands[0]] + [y for op, y in zip(ops, operands[1:]) if op == "+"]
        minus = [y for op, y in zip(ops, operands[1:]) if op == "-"]
        if not minus:
            rev = list(reversed(plus))
            head, body = "Alternatively, add in the other order.", f"{' + '.join(map(str, rev))} = {r}."
        else:
            P, N = sum(plus), sum(minus)
            take = f"{' + '.join(map(str, minus))} = {N}, " if len(minus) > 1 else ""
            add = f"{' + '.join(map(str, plus))} = {P}, " if len(plus) > 1 else ""
            head, body = "Alternatively, add up what is added and what is taken away separately.", (
                f"{add}{take}and {P} - {N} = {r}.")
    # One line or two: the heuristic must follow a detour over its continuation lines too.
    if rng.random() < 0.5:
        return [f"{head[:-1]}: {body}"]
    return [head, body]


def _render_math(p: dict, answer_only: bool, explore: str | None, rng: random.Random) -> dict:
    expr = p["problem"]
    prompt = rng.choice(_MATH_PROMPTS).format(e=expr)
    answer = _math_value(p["operands"], p["ops"])
    if answer_only:
        response, segments = join_segments([(f"The answer is {answer}.", "answer")])
    else:
        parts, r = _math_cot(p, style=rng.randrange(2))
        assert r == answer
        parts.append((f"The answer is {answer}.", "answer"))
        if explore:
            parts += [(l, "exploratory") for l in _math_exploration(p, answer, explore, rng)]
            parts.append((f"So the answer is {answer}.", "answer"))
        response, segments = join_segments(parts)
    return {
        "prompt": prompt,
        "response": response,
        "answer": str(answer),
        "meta": {"segments": segments, "params": {"operands": p["operands"], "ops": p["ops"]}, "family": p["family"]},
    }


# ----------------------------------------------------------------------------------- code

# Formula templates: (code expression, how the plan says it in words, an equivalent form,
# the value as a Python function of the constants and arguments). The value function is written
# independently of the expression text, so the tests catch a template that says one thing and
# computes another.
_L1 = (
    ("{a} * x + {b}", "multiply x by {a}, then add {b}", "{b} + {a} * x", lambda c, x: c["a"] * x + c["b"]),
    ("{a} * x - {b}", "multiply x by {a}, then subtract {b}", "x * {a} - {b}", lambda c, x: c["a"] * x - c["b"]),
    ("{a} * (x + {b})", "add {b} to x, then multiply by {a}", "{a} * x + {ab}", lambda c, x: c["a"] * (x + c["b"])),
    ("{a} * (x - {b})", "subtract {b} from x, then multiply by {a}", "{a} * x - {ab}", lambda c, x: c["a"] * (x - c["b"])),
)
_L2 = (
    ("{a} * x * x + {b} * x + {c}", "square x and multiply it by {a}, add {b} times x, then add {c}",
     "x * ({a} * x + {b}) + {c}", lambda c, x: c["a"] * x * x + c["b"] * x + c["c"]),
    ("({a} * x + {b}) * {c}", "multiply x by {a} and add {b}, then multiply the result by {c}",
     "{ac} * x + {bc}", lambda c, x: (c["a"] * x + c["b"]) * c["c"]),
    ("{a} * x + {b} * y + {c}", "multiply x by {a} and y by {b}, then add both and {c}",
     "{c} + {b} * y + {a} * x", lambda c, x, y: c["a"] * x + c["b"] * y + c["c"]),
)
# Branch expressions for levels 3-4: (text, value).
_BRANCH = (
    ("{p} * x + {q}", lambda c, x: c["p"] * x + c["q"]),
    ("{p} * x - {q}", lambda c, x: c["p"] * x - c["q"]),
    ("x + {q}", lambda c, x: x + c["q"]),
    ("{p} * x", lambda c, x: c["p"] * x),
    ("{q} - x", lambda c, x: c["q"] - x),
)
_NEG = {">": "<=", "<": ">="}
_CMP = {">": lambda x, t: x > t, "<": lambda x, t: x < t}


def _branch_expr(rng: random.Random) -> dict:
    i = rng.randrange(len(_BRANCH))
    return {"form": i, "p": rng.randint(2, 9), "q": rng.randint(1, 30)}


def _bx(br: dict) -> str:
    return _BRANCH[br["form"]][0].format(p=br["p"], q=br["q"])


def _bv(br: dict, x: int) -> int:
    return _BRANCH[br["form"]][1](br, x)


def _code_value(p: dict, args: Sequence[int]) -> int:
    """Reference value of f(*args), computed from the parameters (not from the code text)."""
    fam, c = p["family"], p["consts"]
    if fam == "formula":
        table = _L1 if p["level"] == 1 else _L2
        return table[p["template"]][3](c, *args)
    x = args[0]
    if fam == "branch":
        return _bv(c["then"], x) if _CMP[c["cmp"]](x, c["t"]) else _bv(c["else"], x)
    if fam == "cases":
        for t, br in zip(c["thresholds"], c["branches"]):
            if x < t:
                return _bv(br, x)
        return _bv(c["branches"][-1], x)
    total = c["start"]  # loop
    for i in range(1, x + 1):
        for k, add in zip(c["divisors"], c["adds"]):
            if i % k == 0:
                total += add
                break
        else:
            total += c["adds"][-1]
    return total


def _sample_code(rng: random.Random, level: int, n_tests: int) -> dict:
    if level in (1, 2):
        table = _L1 if level == 1 else _L2
        t = rng.randrange(len(table))
        if level == 1:
            c = {"a": rng.randint(2, 19), "b": rng.randint(1, 40)}
        else:
            c = {"a": rng.randint(2, 9), "b": rng.randint(2, 19), "c": rng.randint(2, 9) if t == 1 else rng.randint(1, 30)}
        p = {"family": "formula", "level": level, "template": t, "consts": c}
        two = "y" in table[t][0]
        p["args"] = ["x", "y"] if two else ["x"]
        pool = [(x, y) for x in range(0, 13) for y in range(0, 13)] if two else [(x,) for x in range(0, 16)]
        inputs = rng.sample(pool, n_tests)
    elif level == 3:
        cmp = rng.choice("><")
        then, other = _branch_expr(rng), _branch_expr(rng)
        c = {"cmp": cmp, "t": rng.randint(3, 15), "then": then, "else": other}
        p = {"family": "branch", "level": level, "consts": c, "args": ["x"]}
        yes = [x for x in range(0, 21) if _CMP[cmp](x, c["t"])]
        no = [x for x in range(0, 21) if not _CMP[cmp](x, c["t"])]
        first = [rng.choice(yes), rng.choice(no)]
        rest = rng.sample([x for x in range(0, 21) if x not in first], n_tests - 2)
        inputs = [(x,) for x in first + rest]
    elif level == 5:  # several branches: 5-11 literals to copy (harder than the loop, measured)
        nb = rng.choice((3, 4))
        cuts = sorted(rng.sample(range(2, 21), nb - 1))
        while any(b - a < 2 for a, b in zip(cuts, cuts[1:])):
            cuts = sorted(rng.sample(range(2, 21), nb - 1))
        c = {"thresholds": cuts, "branches": [_branch_expr(rng) for _ in range(nb)]}
        p = {"family": "cases", "level": level, "consts": c, "args": ["x"]}
        edges = [0] + cuts + [25]
        first = [rng.randrange(lo, hi) for lo, hi in zip(edges, edges[1:])]  # one input per branch
        rng.shuffle(first)
        rest = rng.sample([x for x in range(0, 25) if x not in first], max(0, n_tests - nb))
        inputs = [(x,) for x in (first + rest)[:n_tests]]
    else:  # level 4: a loop with 1-2 conditions, 4-6 literals
        ncond = rng.choice((1, 2))
        divisors = rng.sample(range(2, 6), ncond)
        adds = rng.sample(range(1, 21), ncond + 1)
        c = {"start": rng.randint(0, 20), "divisors": divisors, "adds": adds}
        p = {"family": "loop", "level": level, "consts": c, "args": ["n"]}
        first = rng.randint(1, 4)
        inputs = [(first,)] + [(x,) for x in rng.sample([x for x in range(0, 13) if x != first], n_tests - 1)]
    p["inputs"] = [list(a) for a in inputs]
    p["expected"] = [_code_value(p, a) for a in inputs]
    p["problem"] = f"{_code_sig(p)} {_code_spec(p)}"
    return p


def _code_sig(p: dict) -> str:
    return f"f({', '.join(p['args'])})"


def _fmt(template: str, c: dict) -> str:
    extra = {"ab": c.get("a", 0) * c.get("b", 0), "ac": c.get("a", 0) * c.get("c", 0), "bc": c.get("b", 0) * c.get("c", 0)}
    return template.format(**c, **extra)


def _code_spec(p: dict) -> str:
    c = p["consts"]
    if p["family"] == "formula":
        table = _L1 if p["level"] == 1 else _L2
        return f"returns {_fmt(table[p['template']][0], c)}"
    if p["family"] == "branch":
        return f"returns {_bx(c['then'])} if x {c['cmp']} {c['t']}, and {_bx(c['else'])} otherwise"
    if p["family"] == "cases":
        parts = [f"{_bx(b)} if x < {t}" for t, b in zip(c["thresholds"], c["branches"])]
        return "returns " + ", else ".join(parts) + f", else {_bx(c['branches'][-1])}"
    ds, adds = c["divisors"], c["adds"]
    if len(ds) == 1:
        rule = f"adds {adds[0]} if i is divisible by {ds[0]} and {adds[1]} otherwise"
    else:
        rule = f"adds {adds[0]} if i is divisible by {ds[0]}, else {adds[1]} if i is divisible by {ds[1]}, else {adds[2]}"
    return f"starts a total at {c['start']}, then for each i from 1 to n {rule}, and returns the total"


def _code_block(p: dict) -> str:
    c = p["consts"]
    lines = [f"def {_code_sig(p)}:"]
    if p["family"] == "formula":
        table = _L1 if p["level"] == 1 else _L2
        lines.append(f"    return {_fmt(table[p['template']][0], c)}")
    elif p["family"] == "branch":
        lines += [f"    if x {c['cmp']} {c['t']}:", f"        return {_bx(c['then'])}", "    else:", f"        return {_bx(c['else'])}"]
    elif p["family"] == "cases":
        for i, (t, b) in enumerate(zip(c["thresholds"], c["branches"])):
            lines += [f"    {'if' if i == 0 else 'elif'} x < {t}:", f"        return {_bx(b)}"]
        lines += ["    else:", f"        return {_bx(c['branches'][-1])}"]
    else:
        lines += [f"    total = {c['start']}", "    for i in range(1, n + 1):"]
        for i, (k, add) in enumerate(zip(c["divisors"], c["adds"])):
            lines += [f"        {'if' if i == 0 else 'elif'} i % {k} == 0:", f"            total += {add}"]
        lines += ["        else:", f"            total += {c['adds'][-1]}", "    return total"]
    return "```python\n" + "\n".join(lines) + "\n```"


def _code_plan(p: dict) -> list[str]:
    c = p["consts"]
    fam = p["family"]
    if fam == "formula":
        table = _L1 if p["level"] == 1 else _L2
        t = table[p["template"]]
        takes = "First, f takes two numbers x and y." if len(p["args"]) == 2 else "First, f takes one number x."
        return [takes, f"It must {_fmt(t[1], c)}.", f"So f returns {_fmt(t[0], c)}."]
    if fam == "branch":
        return [
            "First, f takes one number x.",
            "Since the result depends on x, we need an if/else branch.",
            f"If x {c['cmp']} {c['t']}, f returns {_bx(c['then'])}.",
            f"Otherwise, f returns {_bx(c['else'])}.",
        ]
    if fam == "cases":
        nb = len(c["branches"])
        lines = ["First, f takes one number x.", f"There are {nb} cases, so we need if, elif and else."]
        for i, (t, b) in enumerate(zip(c["thresholds"], c["branches"])):
            lines.append(f"{'If' if i == 0 else 'Else, if'} x < {t}, f returns {_bx(b)}.")
        lines.append(f"Otherwise, f returns {_bx(c['branches'][-1])}.")
        return lines
    ds, adds = c["divisors"], c["adds"]
    if len(ds) == 1:
        rule = f"If i is divisible by {ds[0]}, we add {adds[0]}; otherwise we add {adds[1]}."
    else:
        rule = f"If i is divisible by {ds[0]}, we add {adds[0]}; else if it is divisible by {ds[1]}, we add {adds[1]}; otherwise we add {adds[2]}."
    return [
        "First, f takes a whole number n.",
        f"We start with a total of {c['start']}.",
        "Then we loop over i from 1 to n.",
        rule,
        "Finally, we return the total.",
    ]


def _subst(expr: str, names: Sequence[str], values: Sequence[int]) -> str:
    for name, v in zip(names, values):
        expr = re.sub(rf"\b{name}\b", str(v), expr)
    return expr


def _code_check(p: dict, args: Sequence[int]) -> str:
    """One worked example in words: f(args) and how it comes out (used by the exploration)."""
    c, fam = p["consts"], p["family"]
    call = f"f({', '.join(map(str, args))})"
    v = _code_value(p, args)
    if fam == "formula":
        table = _L1 if p["level"] == 1 else _L2
        e = _subst(_fmt(table[p["template"]][0], c), p["args"], args)
        return f"{call} = {e} = {v}"
    x = args[0]
    if fam == "branch":
        taken = _CMP[c["cmp"]](x, c["t"])
        br = c["then"] if taken else c["else"]
        why = f"{x} {c['cmp']} {c['t']}" + ("" if taken else " is false")
        return f"{call}: since {why}, it returns {_subst(_bx(br), ['x'], [x])} = {v}"
    if fam == "cases":
        why = []
        for t, br in zip(c["thresholds"], c["branches"]):
            if x < t:
                why.append(f"{x} < {t}")
                break
            why.append(f"{x} < {t} is false")
        else:
            br = c["branches"][-1]
        return f"{call}: since {' and '.join(why)}, it returns {_subst(_bx(br), ['x'], [x])} = {v}"
    totals = [c["start"]] + [_code_value(p, [i]) for i in range(1, x + 1)]
    return f"{call}: the total goes {', '.join(map(str, totals))}, so {call} = {v}"


def _code_exploration(p: dict, kind: str, shown: int) -> list[str]:
    c, fam = p["consts"], p["family"]
    examples = p["inputs"][:shown]
    if kind == "verify":
        picks = examples[:1] if fam == "loop" else examples[:2]  # a loop trace is long enough alone
        checks = " and ".join(_code_check(p, a) for a in picks)
        return [f"Wait, let me check the examples: {checks}, as expected.", "So the final code is:"]
    if fam == "formula":
        table = _L1 if p["level"] == 1 else _L2
        alt = _fmt(table[p["template"]][2], c)
        a = examples[0]
        line = f"Alternatively, the formula can be written as {alt}, which gives the same values: {_code_check(p, a)}."
    elif fam == "branch":
        neg = _NEG[c["cmp"]]
        line = (f"Alternatively, test the other case first: if x {neg} {c['t']}, return {_bx(c['else'])}, "
                f"else return {_bx(c['then'])}; the results are the same.")
    elif fam == "cases":
        ts, bs = c["thresholds"], c["branches"]
        steps = [f"if x >= {ts[-1]}, return {_bx(bs[-1])}"]
        for i in range(len(ts) - 1, 0, -1):
            steps.append(f"else if x >= {ts[i - 1]}, return {_bx(bs[i])}")
        steps.append(f"else return {_bx(bs[0])}")
        line = f"Alternatively, check the cases from the top: {', '.join(steps)}; the results are the same."
    else:
        n = examples[0][0]
        ds, adds, s = c["divisors"], c["adds"], c["start"]
        if len(ds) == 1:
            k = ds[0]
            line = (f"Alternatively, count the multiples of {k} up to n: there are n // {k} of them, so "
                    f"f(n) = {s} + {adds[0]} * (n // {k}) + {adds[1]} * (n - n // {k}); for n = {n} that is "
                    f"{s} + {adds[0]} * {n // k} + {adds[1]} * {n - n // k} = {_code_value(p, [n])}.")
        else:
            added = []
            for i in range(1, n + 1):
                add = next((a for k, a in zip(ds, adds) if i % k == 0), adds[-1])
                added.append(f"i = {i} adds {add}")
            line = f"Alternatively, trace f({n}) step by step from {s}: {', '.join(added)}, so f({n}) = {_code_value(p, [n])}."
    return [line, "So the final code is:"]


def _render_code(p: dict, answer_only: bool, explore: str | None, shown: int) -> dict:
    sig = _code_sig(p)
    tests = [f"assert f({', '.join(map(str, a))}) == {v}" for a, v in zip(p["inputs"], p["expected"])]
    examples = ", ".join(t.removeprefix("assert ") for t in tests[:shown])
    prompt = f"Write a Python function {sig} that {_code_spec(p)}. Examples: {examples}."
    block = _code_block(p)
    if answer_only:
        response, segments = join_segments([(block, "answer")])
    else:
        parts = [(l, "step") for l in _code_plan(p)] + [(block, "answer")]
        if explore:
            parts += [(l, "exploratory") for l in _code_exploration(p, explore, shown)]
            parts.append((block, "answer"))
        response, segments = join_segments(parts)
    params = {k: v for k, v in p.items() if k not in ("problem", "level", "family")}
    return {"prompt": prompt, "response": response, "tests": tests, "meta": {"segments": segments, "params": params, "family": p["family"]}}


# ----------------------------------------------------------------------------------- generation


def _sample_cell(cfg: CorpusConfig, domain: str, level: int) -> dict[str, list[dict]]:
    """Distinct problems of one (domain, level), each in the split its hash owns."""
    rng = random.Random(f"infra-corpus:{cfg.seed}:{domain}:{level}")
    need = {s: cfg.count(s) for s in SPLITS}
    got: dict[str, list[dict]] = {s: [] for s in SPLITS}
    seen: set[str] = set()
    misses = 0
    while any(len(got[s]) < need[s] for s in SPLITS):
        p = _sample_math(rng, level) if domain == "math" else _sample_code(rng, level, cfg.n_tests)
        key = normalise_problem(p["problem"])
        split = None if key in seen else split_of(key, cfg.split_shares)
        seen.add(key)
        if split is None or len(got[split]) >= need[split]:
            misses += 1
            if misses > 20000:  # the level's problem space has no more problems for some split
                short = {s: f"{len(got[s])}/{need[s]}" for s in SPLITS if len(got[s]) < need[s]}
                raise ValueError(
                    f"{domain} level {level}: ran out of distinct problems for {short} after {len(seen)} "
                    f"distinct ones; lower those counts or give those splits more of split_shares"
                )
            continue
        misses = 0
        got[split].append(p)
    return got


def generate_corpus(cfg: CorpusConfig) -> dict[str, list[dict]]:
    """Generate every split in memory: ``{split: [record, ...]}`` in order base, train, query, test.

    Within a split, records run domain by domain, level by level; ids are
    ``<domain>-<level>-<split>-<index>``. Each (domain, level) draws from its own seeded stream,
    so changing one domain's settings leaves the other's records as they were.
    """
    out: dict[str, list[dict]] = {s: [] for s in SPLITS}
    for domain in cfg.domains:
        for level in cfg.levels:
            cell = _sample_cell(cfg, domain, level)
            for split in SPLITS:
                probs = cell[split]
                kinds: list[str | None] = [None] * len(probs)
                if split in _COT_SPLITS:
                    erng = random.Random(f"infra-explore:{cfg.seed}:{domain}:{level}:{split}")
                    chosen = sorted(erng.sample(range(len(probs)), round(cfg.exploratory_share * len(probs))))
                    for i in chosen:
                        kinds[i] = "alternative" if erng.random() < cfg.alternative_share else "verify"
                answer_only = split == "base" and cfg.base_style == "answer"
                for i, (p, explore) in enumerate(zip(probs, kinds)):
                    trng = random.Random(f"infra-text:{cfg.seed}:{split}:{p['problem']}")
                    if domain == "math":
                        body = _render_math(p, answer_only, explore, trng)
                    else:
                        body = _render_code(p, answer_only, explore, cfg.n_examples[level - 1])
                    meta = body.pop("meta")
                    meta.update(split=split, problem=p["problem"], exploratory=explore is not None, exploration=explore)
                    rec = {"id": f"{domain}-{level}-{split}-{i:05d}", "domain": domain, "difficulty": level}
                    rec.update(body)
                    rec["meta"] = meta
                    out[split].append(rec)
    return out


def corpus_paths(out_dir: str | Path) -> dict[str, Path]:
    """``{split: out_dir/<split>.jsonl}``."""
    return {s: Path(out_dir) / f"{s}.jsonl" for s in SPLITS}


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def corpus_exists(cfg: CorpusConfig, out_dir: str | Path) -> bool:
    """Whether ``out_dir`` holds a complete corpus made by ``cfg`` and this generator version.

    Complete means: ``config.json`` with the same config hash and generator version, and every
    split file present with the recorded SHA-256 (so a truncated or edited file is rebuilt).
    """
    out = Path(out_dir)
    cfg_file = out / "config.json"
    if not cfg_file.exists():
        return False
    try:
        saved = read_json(cfg_file)
    except ValueError:
        return False
    if saved.get("config_hash") != config_hash(cfg) or saved.get("generator_version") != GENERATOR_VERSION:
        return False
    files = saved.get("files", {})
    for split, path in corpus_paths(out).items():
        if not path.exists() or files.get(split, {}).get("sha256") != _sha256(path):
            return False
    return True


def build_corpus(cfg: CorpusConfig, out_dir: str | Path) -> dict[str, Path]:
    """Write ``out_dir/{base,train,query,test}.jsonl`` and ``config.json``; reuse a valid one.

    Logs "reusing" when :func:`corpus_exists`, else "generating". Each file is written
    atomically and ``config.json`` last (removed first), so an interrupted build is never
    mistaken for a complete one. Returns ``{split: path}``.
    """
    out = Path(out_dir)
    paths = corpus_paths(out)
    h = config_hash(cfg)
    if corpus_exists(cfg, out):
        log.info("reusing corpus in %s (config %s)", out, h)
        return paths
    log.info("generating corpus in %s (config %s, seed %d)", out, h, cfg.seed)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").unlink(missing_ok=True)
    corpus = generate_corpus(cfg)
    files = {}
    for split, path in paths.items():
        write_records(path, corpus[split])
        files[split] = {"records": len(corpus[split]), "sha256": _sha256(path)}
    write_config(out, cfg, generator_version=GENERATOR_VERSION, files=files)
    return paths


def load_corpus(out_dir: str | Path) -> dict[str, list[dict]]:
    """Load (and validate) every split written by :func:`build_corpus`."""
    return {s: load_records(p) for s, p in corpus_paths(out_dir).items()}


# ----------------------------------------------------------------------------------- ablation


def strip_exploratory(record: dict) -> dict:
    """A copy of ``record`` without its exploratory segments (the exploratory ablation).

    Removes every ``"exploratory"`` segment and, where an answer was given before the detour,
    the ``"answer"`` segment right after it (the restated answer exists only because of the
    detour), then shifts the offsets. The result is the response a non-exploring CoT of the same
    problem has, ending as the original did (no dangling newline). ``meta.exploratory`` becomes
    False and ``meta.stripped_exploration`` keeps what was removed. A record without exploratory
    segments comes back as an unchanged copy.
    """
    rec = copy.deepcopy(record)
    segs = rec["meta"]["segments"]
    if not any(k == "exploratory" for _, _, k in segs):
        return rec
    text = rec["response"]
    keep: list[tuple[str, str]] = []
    seen_answer = dropping = False
    for start, end, kind in segs:
        if kind == "exploratory":
            dropping = seen_answer or dropping
            continue
        if kind == "answer" and dropping:
            dropping = False
            continue
        dropping = False
        seen_answer = seen_answer or kind == "answer"
        keep.append((text[start:end], kind))
    if text and not text.endswith("\n") and keep:
        last, kind = keep[-1]
        keep[-1] = (last.rstrip("\n") or last, kind)
    response = "".join(t for t, _ in keep)
    new_segs, pos = [], 0
    for t, kind in keep:
        new_segs.append([pos, pos + len(t), kind])
        pos += len(t)
    rec["response"] = response
    rec["meta"]["segments"] = new_segs
    rec["meta"]["stripped_exploration"] = rec["meta"].get("exploration") or True
    rec["meta"]["exploratory"] = False
    rec["meta"]["exploration"] = None
    validate_record(rec, f"strip_exploratory({rec['id']})")
    return rec


# ----------------------------------------------------------------------------------- grading


def extract_math_answer(text: str, which: str = "last") -> str | None:
    """The answer stated in a math response, or None if it states none.

    Answer lines are "The answer is X." (with an optional "So"/"Therefore"/...) or a
    ``\\boxed{X}``. ``which="last"`` (what :func:`grade_math` grades) takes the last one, the
    answer a CoT ends on after any exploration; ``which="first"`` the first answer reached.
    """
    if which not in ("first", "last"):
        raise ValueError(f"which must be 'first' or 'last', got {which!r}")
    found: list[str] = []
    for line in text.splitlines():
        ans = answer_in_line(line)
        if ans is not None:
            found.append(ans)
        elif "\\boxed{" in line:
            b = last_boxed(line)
            if b is not None:
                found.append(b)
    if not found:
        return None
    return found[-1] if which == "last" else found[0]


_FENCED = re.compile(r"```(?:python|py)?[ \t]*\n(.*?)```", re.DOTALL)


def extract_code(text: str) -> str | None:
    """The body of the last closed fenced code block (```python, ```py or bare ```), or None."""
    blocks = _FENCED.findall(text)
    return blocks[-1] if blocks else None


def _normalise_answer(s: str) -> str:
    s = s.strip().strip("$").strip()
    inner = last_boxed(s)
    if inner is not None:
        s = inner
    s = re.sub(r"(?<=\d),(?=\d{3}(?!\d))", "", s)  # 1,692 -> 1692
    return s.rstrip(".").replace(" ", "")


def _as_number(s: str) -> Fraction | None:
    try:
        return Fraction(s)
    except (ValueError, ZeroDivisionError):
        return None


def grade_math(record: dict, text: str) -> bool:
    """Whether ``text`` (a model's response) ends on ``record["answer"]``.

    Grades the *last* answer line (:func:`extract_math_answer`); numbers compare by value
    (``"85"``, ``"85.0"``, ``"1,692"`` and ``"170/2"`` match ``"85"`` etc.), anything else
    as strings without spaces.
    """
    got = extract_math_answer(text, which="last")
    if got is None:
        return False
    a, b = _normalise_answer(got), _normalise_answer(str(record["answer"]))
    na, nb = _as_number(a), _as_number(b)
    if na is not None and nb is not None:
        return na == nb
    return a == b


# ----------------------------------------------------------------------------------- statistics


def corpus_stats(records: Iterable[dict]):
    """Per (domain, level): count, mean response characters, mean whitespace tokens, exploratory share.

    Returns a ``pandas.DataFrame`` indexed by ``(domain, level)`` with columns ``count``,
    ``mean_chars``, ``mean_tokens`` and ``exploratory_share`` (the share of records with
    at least one exploratory segment).
    """
    import pandas as pd

    rows = [
        {
            "domain": r["domain"],
            "level": r["difficulty"],
            "mean_chars": len(r["response"]),
            "mean_tokens": len(r["response"].split()),
            "exploratory": any(k == "exploratory" for _, _, k in r["meta"]["segments"]),
        }
        for r in records
    ]
    cols = ["count", "mean_chars", "mean_tokens", "exploratory_share"]
    if not rows:
        return pd.DataFrame(columns=cols, index=pd.MultiIndex.from_tuples([], names=["domain", "level"]))
    df = pd.DataFrame(rows)
    g = df.groupby(["domain", "level"], sort=True)
    out = pd.DataFrame(
        {
            "count": g.size(),
            "mean_chars": g["mean_chars"].mean(),
            "mean_tokens": g["mean_tokens"].mean(),
            "exploratory_share": g["exploratory"].mean(),
        }
    )
    order = {d: i for i, d in enumerate(DOMAINS)}
    return out.sort_index(key=lambda idx: idx.map(order) if idx.name == "domain" else idx)[cols]
