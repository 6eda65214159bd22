"""Version 1 of the generated corpus (round 1): math and code problem families and their CoTs.

Frozen: the text these functions write is pinned by a SHA-256 in ``tests/study/test_corpus_v2.py``
and by ``data/sample.jsonl``, so round 1 stays reproducible. Version 2 lives in ``v2.py``.
"""
from __future__ import annotations

import random
import re
from typing import Callable, Sequence

from infra_lib.segments import join_segments

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
