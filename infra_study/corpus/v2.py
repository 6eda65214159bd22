"""Version 2 of the generated corpus (round 2): detours that carry information, paraphrase pools,
code difficulty from reasoning steps (data/DATASHEET.md, "Version 2").

- Exploration: a ``slip`` CoT makes one realistic error in its first answer (math: a carry or a
  borrow dropped in one column; code: a multiplication not carried through to the constant when
  the steps are folded into one formula); its check redoes the work (the columns again; the code
  traced on a shown example) and the correction gives the right answer, which the last answer
  line states. A ``verify`` CoT runs the same check and confirms. An ``alternative`` reaches the
  same answer by a different computation (rounding to a ten, splitting the number; code: the
  steps kept as statements instead of one folded formula).
- Wording: every slot draws from a pool in ``pools.py``; the base split takes the first wording.
- Code: the prompt describes a computation as steps in words ("adds 7 to x, then multiplies the
  result by 3, ..."); the CoT folds them into one formula with computed constants ("3 * x + 21,
  since 3 * 7 = 21"), so most numbers of the code are computed, not copied. Levels add folds and
  branches: two steps, an if/else with a two-step arm, three steps, an if/else with a three-step
  arm, four steps.

Every part of a response carries a role beside its kind (``meta.segment_roles``): ``step``,
``slip`` (the line where the error is made), ``answer``, ``check``, ``correction``,
``confirm``, ``alternative``.
"""
from __future__ import annotations

import random
from typing import Sequence

from infra_lib.segments import join_segments

from .pools import pick
from .v1 import _OPS, _chain_ok, _math_expr, _math_params, _math_value, _mul_digit_lines

__all__ = ["sample_math", "sample_code", "render_math", "render_code", "can_slip", "code_value", "ROLES"]

ROLES = ("step", "slip", "answer", "check", "correction", "confirm", "alternative")
_COLS = ("ones", "tens", "hundreds", "thousands", "ten thousands")
# Multipliers of every product the CoT computes (math level 5, the folds of code): doubling and
# tripling. A 1M-parameter model trained here does not learn the times table (pilot 5: "5 * 9 =
# 40"), and what a level should add is steps, not facts.
_MUL_K = (2, 3)


# ----------------------------------------------------------------------------------- math


def sample_math(rng: random.Random, level: int) -> dict:
    """A math problem of ``level``, ordered by the calibration pilots' accuracy (data/DATASHEET.md):
    a one-digit plus a two-digit sum; a two-digit sum with a carry or difference with a borrow; two
    operations on numbers below 50; a three-digit sum or difference; three operations on numbers
    below 100 or a two-digit number times 2 or 3."""
    if level == 1:
        a, b = rng.randint(1, 9), rng.randint(1, 99)
        return _math_params("add", [a, b] if rng.random() < 0.5 else [b, a], ["+"])
    if level == 2:
        while True:
            a, b = rng.randint(10, 99), rng.randint(10, 99)
            if rng.random() < 0.5:
                if a % 10 + b % 10 >= 10:
                    return _math_params("add", [a, b], ["+"])
            elif a > b and a % 10 < b % 10:
                return _math_params("sub", [a, b], ["-"])
    if level == 4:
        a, b = rng.randint(100, 999), rng.randint(100, 999)
        if rng.random() < 0.5:
            return _math_params("add", [a, b], ["+"])
        a, b = max(a, b), min(a, b)
        return _math_params("sub", [a, b] if a != b else [a, b - 1], ["-"])
    if level == 3:
        while True:
            operands = [rng.randint(10, 49) for _ in range(3)]
            ops = [rng.choice("+-") for _ in range(2)]
            if ops != ["-", "-"] and _chain_ok(operands, ops):
                return _math_params("chain", operands, ops)
    if rng.random() < 0.5:
        while True:
            a, b = rng.choice(_MUL_K), rng.randint(12, 99)
            if b % 10:
                return _math_params("mul", [a, b], ["*"])
    while True:
        operands = [rng.randint(10, 99) for _ in range(4)]
        ops = [rng.choice("+-") for _ in range(3)]
        if ops.count("-") < 3 and _chain_ok(operands, ops):
            return _math_params("chain", operands, ops)


def _digits(n: int) -> list[int]:
    return [int(c) for c in reversed(str(n))]


def _columns(x: int, op: str, y: int, slip_at: int | None = None) -> tuple[list[dict], int]:
    """Column-by-column ``x op y`` (op ``+`` or ``-``, x >= y for ``-``), ones first.

    ``slip_at``: the column whose incoming carry (``+``) or borrow (``-``) is dropped, as a
    hurried hand does; later columns go on honestly from there. Returns the columns and the
    number the written digits make (the right value without a slip).
    """
    dx, dy = _digits(x), _digits(y)
    cols, k = [], 0
    n = max(len(dx), len(dy)) if op == "+" else len(dx)
    for i in range(n):
        kin = 0 if i == slip_at else k
        if op == "+":
            terms = [d[i] for d in (dx, dy) if i < len(d)]
            s = sum(terms) + kin
            cols.append({"i": i, "op": "+", "terms": terms, "kin": kin, "s": s, "d": s % 10, "kout": s // 10})
            k = s // 10
        else:
            subs = ([dy[i]] if i < len(dy) else []) + ([kin] if kin else [])
            need = sum(subs)
            borrow = dx[i] < need
            d = dx[i] + 10 * borrow - need
            cols.append({"i": i, "op": "-", "x": dx[i], "subs": subs, "need": need, "borrow": borrow, "d": d, "kout": int(borrow)})
            k = int(borrow)
    if op == "+" and k and slip_at != n:
        cols.append({"i": n, "op": "+", "final": k, "d": k})
    value = sum(c["d"] * 10 ** c["i"] for c in cols)
    return cols, value


def slip_columns(x: int, op: str, y: int) -> list[int]:
    """Columns where a carry or borrow comes in, i.e. where a slip can drop it."""
    cols, _ = _columns(x, op, y)
    out = [c["i"] + 1 for c in cols if c.get("kout")]
    return out


def _column_line(c: dict, rng, plain: bool, header: int) -> str:
    name = _COLS[c["i"]]
    from .pools import POOLS

    h = POOLS["column_header"][header].format(c=name, C=name.capitalize())
    if "final" in c:
        return f"{h} {pick(rng, 'final_carry', plain, k=c['final'])}"
    if c["op"] == "+":
        terms = c["terms"] + ([c["kin"]] if c["kin"] else [])
        if len(terms) == 1:
            return f"{h} {pick(rng, 'bring_down', plain, d=terms[0])}"
        e = " + ".join(map(str, terms))
        if c["kout"]:
            return f"{h} {pick(rng, 'add_carry', plain, e=e, s=c['s'], d=c['d'], k=c['kout'])}"
        return f"{h} {pick(rng, 'add_plain', plain, e=e, s=c['s'])}"
    if not c["subs"]:
        return f"{h} {pick(rng, 'bring_down', plain, d=c['x'])}"
    e = " - ".join(map(str, c["subs"]))
    if c["borrow"]:
        return f"{h} {pick(rng, 'sub_borrow', plain, x=c['x'], e=e, n=c['need'], x10=c['x'] + 10, d=c['d'])}"
    return f"{h} {pick(rng, 'sub_plain', plain, x=c['x'], e=e, d=c['d'])}"


def _compact(cols: list[dict]) -> str:
    """The columns again on one line, as a check redoes them."""
    out = []
    for c in cols:
        name = _COLS[c["i"]]
        if "final" in c:
            out.append(f"{name} the carry {c['final']}")
        elif c["op"] == "+":
            terms = c["terms"] + ([c["kin"]] if c["kin"] else [])
            t = f"{name} {' + '.join(map(str, terms))} = {c['s']}"
            out.append(t + (f", carry {c['kout']}" if c["kout"] else ""))
        elif not c["subs"]:
            out.append(f"{name} {c['x']}")
        elif c["borrow"]:
            out.append(f"{name} {c['x'] + 10} - {' - '.join(map(str, c['subs']))} = {c['d']} after borrowing")
        else:
            out.append(f"{name} {c['x']} - {' - '.join(map(str, c['subs']))} = {c['d']}")
    return "; ".join(out).capitalize() + "."


def _checked_op(p: dict) -> tuple[int, str, int]:
    """The operation a check redoes (and a slip hits): the last one; for a product, the sum of
    its partial products."""
    operands, ops = p["operands"], p["ops"]
    if p["family"] == "mul":
        a, b = operands
        return a * (b % 10), "+", a * (b // 10) * 10
    v = operands[0]
    for op, y in zip(ops[:-1], operands[1:-1]):
        v = _OPS[op](v, y)
    return v, ops[-1], operands[-1]


def can_slip(p: dict) -> bool:
    """Whether a math problem's checked operation has a carry or borrow that a slip could drop."""
    return bool(slip_columns(*_checked_op(p)))


def _op_parts(x, op, y, rng, plain, header, slip_at=None) -> tuple[list[tuple[str, str, str]], int]:
    cols, value = _columns(x, op, y, slip_at)
    parts = [(_column_line(c, rng, plain, header), "step", "slip" if c["i"] == slip_at else "step") for c in cols]
    return parts, value


def _result_role(sub: list, slip_at: int | None) -> str:
    """A dropped final carry leaves no column line to mark: the result line that omits it is the slip."""
    return "slip" if slip_at is not None and not any(r == "slip" for _, _, r in sub) else "step"


def _math_steps(p: dict, rng, plain: bool, slip_at: int | None) -> tuple[list[tuple[str, str, str]], int]:
    """The CoT up to its first answer; ``slip_at`` drops a carry/borrow in the checked operation."""
    operands, ops = p["operands"], p["ops"]
    header = 0 if plain else rng.randrange(5)
    parts: list[tuple[str, str, str]] = []
    if p["family"] == "mul":
        a, b = operands
        bt, bo = b // 10, b % 10
        p1, p2 = a * bo, a * bt * 10
        parts.append((f"First, split {b} into {bt * 10} + {bo}.", "step", "step"))
        parts += [(l, "step", "step") for l in _mul_digit_lines(a, bo, f"Multiply {a} by {bo}, the ones")]
        parts.append((f"So {a} * {bo} = {p1}.", "step", "step"))
        parts += [(l, "step", "step") for l in _mul_digit_lines(a, bt, f"Next, multiply {a} by {bt}, the ones")]
        parts.append((f"So {a} * {bt} = {a * bt}, and {a} * {bt * 10} = {p2}.", "step", "step"))
        parts.append((pick(rng, "math_next", plain, e=f"{p1} + {p2}"), "step", "step"))
        sub, v = _op_parts(p1, "+", p2, rng, plain, header, slip_at)
        parts += sub
        parts.append((pick(rng, "op_result", plain, e=f"{p1} + {p2}", r=v), "step", _result_role(sub, slip_at)))
        parts.append((pick(rng, "chain_result", plain, e=p["problem"], r=v), "step", "step"))
        return parts, v
    v = operands[0]
    for k, (op, y) in enumerate(zip(ops, operands[1:])):
        e = f"{v} {op} {y}"
        parts.append((pick(rng, "math_open" if k == 0 else "math_next", plain, e=e), "step", "step"))
        last = k == len(ops) - 1
        sub, w = _op_parts(v, op, y, rng, plain, header, slip_at if last else None)
        parts += sub
        parts.append((pick(rng, "op_result", plain, e=e, r=w), "step", _result_role(sub, slip_at if last else None)))
        v = w
    if len(ops) > 1:
        parts.append((pick(rng, "chain_result", plain, e=p["problem"], r=v), "step", "step"))
    return parts, v


def _math_alternative(p: dict, r: int, rng) -> list[str]:
    """Another computation of the same value: round to a ten, split a number, or regroup."""
    operands, ops, family = p["operands"], p["ops"], p["family"]
    if family == "mul":
        a, b = operands
        if a < 10:  # one digit: round the two-digit number up to a ten and take the rest away
            B = b - b % 10 + 10
            how = f"round {b} up to {B}"
            body = f"{a} * {b} = {a} * {B} - {a} * {B - b} = {a * B} - {a * (B - b)} = {r}."
        else:
            at, ao = a - a % 10, a % 10
            how = "split the first number instead"
            body = f"{a} * {b} = {at} * {b} + {ao} * {b} = {at * b} + {ao * b} = {r}."
    elif ops == ["+"] or ops == ["-"]:
        x, y = operands
        op = ops[0]
        if y % 10:
            Y = y - y % 10 + 10
            if op == "+":
                how = f"round {y} up to {Y}"
                body = f"{x} + {Y} = {x + Y}, then take away {Y - y}: {x + Y} - {Y - y} = {r}."
            elif x >= Y:
                how = f"round {y} up to {Y}"
                body = f"{x} - {Y} = {x - Y}, then add back {Y - y}: {x - Y} + {Y - y} = {r}."
            else:
                how = f"count up from {y}"
                body = f"{y} + {r} = {x}, so the difference is {r}."
        else:
            how = "split the second number"
            yh, yl = y - y % 100, y % 100
            if yh and yl:
                body = f"{x} {op} {yh} = {_OPS[op](x, yh)}, then {_OPS[op](x, yh)} {op} {yl} = {r}."
            else:
                how = "count in tens"
                body = f"{x} {op} {y} moves {x} by {y // 10} tens, which gives {r}."
    else:
        plus = [operands[0]] + [y for op, y in zip(ops, operands[1:]) if op == "+"]
        minus = [y for op, y in zip(ops, operands[1:]) if op == "-"]
        if not minus:
            how = "add from the last number back"
            rev = list(reversed(plus))
            acc, steps = rev[0], []
            for y in rev[1:]:
                steps.append(f"{acc} + {y} = {acc + y}")
                acc += y
            body = ", ".join(steps) + "."
        elif len(ops) == 2:  # a + b - c or a - b + c: take the two steps in the other order
            a, b, c = operands
            if ops == ["-", "+"]:
                how = f"add {c} before taking away {b}"
                body = f"{a} + {c} = {a + c}, then {a + c} - {b} = {r}."
            elif a >= c:
                how = f"take away {c} before adding {b}"
                body = f"{a} - {c} = {a - c}, then {a - c} + {b} = {r}."
            else:
                how = f"take {c} from {b} first"
                body = f"{b} - {c} = {b - c}, then {a} + {b - c} = {r}."
        else:
            P, N = sum(plus), sum(minus)
            how = "add up what is added and what is taken away separately"
            take = f"{' + '.join(map(str, minus))} = {N}, " if len(minus) > 1 else ""
            add = f"{' + '.join(map(str, plus))} = {P}, " if len(plus) > 1 else ""
            body = f"{add}{take}and {P} - {N} = {r}."
    return [pick(rng, "alt_open", False, how=how), body]


def render_math(p: dict, explore: str | None, rng: random.Random, plain: bool = False,
                slip_at: int | None = None) -> dict:
    """A math record's prompt, response, answer and meta (version 2).

    ``explore``: None, ``"slip"``, ``"verify"`` or ``"alternative"``; ``plain`` takes the first
    wording of every slot (the base split); ``slip_at`` is the column a slip drops its carry or
    borrow in (required for ``"slip"``).
    """
    expr = p["problem"]
    prompt = ("What is {e}?", "Compute {e}.", "Work out {e}.", "Find {e}.", "Calculate {e}.")[rng.randrange(5)].format(e=expr)
    answer = _math_value(p["operands"], p["ops"])
    parts, first = _math_steps(p, rng, plain, slip_at if explore == "slip" else None)
    if explore != "slip":
        assert first == answer
    parts.append((pick(rng, "answer", plain, r=first), "answer", "answer"))
    meta_extra: dict = {}
    if explore in ("slip", "verify"):
        x, op, y = _checked_op(p)
        e = f"{x} {op} {y}"
        cols, v = _columns(x, op, y)
        parts.append((pick(rng, "math_check", False, e=e), "exploratory", "check"))
        parts.append((_compact(cols), "exploratory", "check"))
        if explore == "slip":
            slot = "fix_carry" if op == "+" else "fix_borrow"
            parts.append((pick(rng, slot, False, c=_COLS[slip_at], e=e, r=v, w=first),
                          "exploratory", "correction"))
            if e != expr:
                parts.append((pick(rng, "chain_result", False, e=expr, r=answer), "exploratory", "correction"))
            meta_extra = {"slip": {"column": _COLS[slip_at], "kind": "carry" if op == "+" else "borrow",
                                   "first_answer": str(first)}}
        else:
            parts.append((pick(rng, "confirm", False, e=e, r=v), "exploratory", "confirm"))
        parts.append((pick(rng, "answer", False, r=answer), "answer", "answer"))
    elif explore == "alternative":
        parts += [(l, "exploratory", "alternative") for l in _math_alternative(p, answer, rng)]
        parts.append((pick(rng, "answer", False, r=answer), "answer", "answer"))
    response, segments = join_segments([(t, k) for t, k, _ in parts])
    meta = {"segments": segments, "segment_roles": [r for _, _, r in parts],
            "params": {"operands": p["operands"], "ops": p["ops"]}, "family": p["family"], **meta_extra}
    return {"prompt": prompt, "response": response, "answer": str(answer), "meta": meta}


def _slipped(p: dict, slip_at: int) -> int:
    """The value the checked operation takes with the slip."""
    x, op, y = _checked_op(p)
    return _columns(x, op, y, slip_at)[1]


# ----------------------------------------------------------------------------------- code
# A computation is a list of steps applied to a running value v (v starts at x): ("add", k),
# ("sub", k) or ("mul", k). Folded, it is a linear form m * x + c; constants stay >= 0.


def _fold(steps: Sequence[Sequence], m: int = 1, c: int = 0, slip: int | None = None) -> list[tuple[int, int]]:
    """The linear form after each step; ``slip``: the index of a "mul" step that forgets to
    multiply the constant (the slip)."""
    out = []
    for i, (op, k) in enumerate(steps):
        if op == "add":
            c += k
        elif op == "sub":
            c -= k
        else:
            m, c = m * k, c if i == slip else c * k
        out.append((m, c))
    return out


def _form(m: int, c: int) -> str:
    head = "x" if m == 1 else f"{m} * x"
    if c > 0:
        return f"{head} + {c}"
    if c < 0:
        return f"{head} - {-c}"
    return head


def _apply(steps, x: int) -> int:
    for op, k in steps:
        x = x + k if op == "add" else x - k if op == "sub" else x * k
    return x


def code_value(p: dict, args: Sequence[int]) -> int:
    """Reference value of f(*args), by applying the steps one by one (not the folded formula)."""
    c, x = p["consts"], args[0]
    if p["family"] == "steps":
        return _apply(c["steps"], x)
    taken = x > c["t"] if c["cmp"] == ">" else x < c["t"]
    return _apply(c["then"] if taken else c["else"], x)


# Constants an add step may use: one digit, or whole tens, so that folding them through a
# multiplication stays within the times table ("3 * 40 = 120"); what grows with the level is the
# number of folds, not the size of the numbers.
_ADD_K = tuple(range(1, 10)) + tuple(range(10, 100, 10))


def _chain(rng: random.Random, n: int, first: str | None = None) -> list[list]:
    """``n`` steps alternating between add/subtract and multiply, starting with ``first``
    (``"add"`` or ``"mul"``, random if None). An add or subtract after a non-zero constant uses one
    digit (a fold the CoT computes); one that starts the constant may use up to 99 (copied)."""
    first = first or rng.choice(("add", "mul"))
    # a first multiplication folds nothing ("7 * x"): any one digit; later ones double or triple
    steps = [["add", rng.choice(_ADD_K)]] if first == "add" else [["mul", rng.randint(2, 9)]]
    c = steps[0][1] if first == "add" else 0
    while len(steps) < n:
        if steps[-1][0] == "mul":
            if c == 0:
                k = rng.randint(1, 99)
                op = rng.choice(("add", "sub"))
            else:
                k = rng.randint(1, 9)
                op = "sub" if rng.random() < 0.5 and c > k else "add"
            steps.append([op, k])
            c = c + k if op == "add" else c - k
        else:
            k = rng.choice(_MUL_K)
            steps.append(["mul", k])
            c *= k
    return steps


def _one_step(rng: random.Random) -> list[list]:
    return [["add", rng.randint(1, 99)]] if rng.random() < 0.5 else [["mul", rng.randint(2, 9)]]


# Level -> (family, steps in the chain or the branch's arm), ordered by the number of folds the CoT
# computes, which is what decided accuracy in the calibration pilots (data/DATASHEET.md): 0-1 fold;
# one fold in an if/else; two folds; two or three folds in an if/else; three or four folds.
_CODE_LEVELS = {1: ("steps", 2), 2: ("branch", 2), 3: ("steps", 3), 4: ("branch", 3), 5: ("steps", 4)}


def sample_code(rng: random.Random, level: int, n_tests: int) -> dict:
    """A code problem of ``level``: 2 steps to fold, an if/else with a 2-step arm, 3 steps, an
    if/else with a 3-step arm, 4 steps (``_CODE_LEVELS``)."""
    family, n = _CODE_LEVELS[level]
    if family == "steps":
        steps = _chain(rng, n, "add" if n == 4 else None)
        p = {"family": "steps", "level": level, "consts": {"steps": steps}, "args": ["x"]}
        inputs = rng.sample(range(0, 13), n_tests)
        canon = "; ".join(f"{o} {k}" for o, k in steps)
    else:
        cmp, t = rng.choice("><"), rng.randint(3, 10)
        arm = _chain(rng, n, "add")
        c = {"cmp": cmp, "t": t, "then": arm, "else": _one_step(rng)}
        p = {"family": "branch", "level": level, "consts": c, "args": ["x"]}
        yes = [x for x in range(0, 16) if (x > t if cmp == ">" else x < t)]
        no = [x for x in range(0, 16) if x not in yes]
        first = [rng.choice(yes), rng.choice(no)]
        rng.shuffle(first)
        inputs = first + rng.sample([x for x in range(0, 16) if x not in first], n_tests - 2)
        canon = f"if x {cmp} {t}: " + "; ".join(f"{o} {k}" for o, k in arm) + " else " + "; ".join(f"{o} {k}" for o, k in c["else"])
    p["inputs"] = [[x] for x in inputs]
    p["expected"] = [code_value(p, [x]) for x in inputs]
    p["problem"] = f"f(x) v2 {canon}"
    return p


_SPEC_FIRST = {"add": ("adds {k} to x", "increases x by {k}", "takes x plus {k}"),
               "mul": ("multiplies x by {k}", "takes {k} times x", "scales x by {k}")}
_SPEC_NEXT = {"add": ("then adds {k}", "then increases it by {k}", "then adds {k} to the result"),
              "sub": ("then subtracts {k}", "then takes away {k}", "then lowers it by {k}"),
              "mul": ("then multiplies the result by {k}", "then multiplies it by {k}", "then scales it by {k}")}


def _spec(steps, rng) -> str:
    out = [_SPEC_FIRST[steps[0][0]][rng.randrange(3)].format(k=steps[0][1])]
    out += [_SPEC_NEXT[o][rng.randrange(3)].format(k=k) for o, k in steps[1:]]
    return ", ".join(out)


def _spec_bare(steps) -> str:
    """The steps in the imperative, for a branch's arm: "add 7 to x, then multiply by 3"."""
    words = {"add": "add {k}", "sub": "subtract {k}", "mul": "multiply by {k}"}
    first = {"add": "add {k} to x", "mul": "multiply x by {k}"}[steps[0][0]].format(k=steps[0][1])
    return ", then ".join([first] + [words[o].format(k=k) for o, k in steps[1:]])


def _step_lines(steps, rng, plain: bool, slip: int | None) -> list[tuple[str, str]]:
    """(line, role) per step: the form after it, with the arithmetic that folds it."""
    out, m, c = [], 1, 0
    forms = _fold(steps, slip=slip)
    for i, ((op, k), (m2, c2)) in enumerate(zip(steps, forms)):
        F = _form(m2, c2)
        if op == "mul" and i == slip:
            out.append((pick(rng, "step_mul0", plain, k=k, F=F), "slip"))
        elif op == "mul" and c:
            why = " and ".join(([f"{k} * {m} = {m2}"] if m > 1 else []) + [f"{k} * {c} = {c2}"])
            out.append((pick(rng, "step_mul", plain, k=k, F=F, why=why), "step"))
        elif op == "mul":
            out.append((pick(rng, "step_mul0", plain, k=k, F=F), "step"))
        elif c:
            why = f"{c} {'+' if op == 'add' else '-'} {k} = {c2}"
            out.append((pick(rng, "step_add" if op == "add" else "step_sub", plain, k=k, F=F, why=why), "step"))
        else:
            out.append((pick(rng, "step_add0" if op == "add" else "step_sub0", plain, k=k, F=F), "step"))
        m, c = m2, c2
    return out


def _block(p: dict, forms: dict) -> str:
    c = p["consts"]
    if p["family"] == "steps":
        body = [f"    return {forms['then']}"]
    else:
        body = [f"    if x {c['cmp']} {c['t']}:", f"        return {forms['then']}", "    else:", f"        return {forms['else']}"]
    return "```python\ndef f(x):\n" + "\n".join(body) + "\n```"


def _stepwise_block(p: dict) -> str:
    def lines(steps, ind):
        sym = {"add": "+", "sub": "-", "mul": "*"}
        out = [f"{ind}v = x"] + [f"{ind}v = v {sym[o]} {k}" for o, k in steps]
        return out + [f"{ind}return v"]

    c = p["consts"]
    if p["family"] == "steps":
        body = lines(c["steps"], "    ")
    else:
        body = [f"    if x {c['cmp']} {c['t']}:"] + lines(c["then"], "        ") + ["    else:"] + lines(c["else"], "        ")
    return "```python\ndef f(x):\n" + "\n".join(body) + "\n```"


def _trace(steps, x: int) -> str:
    """x through the steps, one equation per step: "2 + 7 = 9, 9 * 3 = 27"."""
    sym = {"add": "+", "sub": "-", "mul": "*"}
    out, v = [], x
    for o, k in steps:
        w = _apply([(o, k)], v)
        out.append(f"{v} {sym[o]} {k} = {w}")
        v = w
    return ", ".join(out)


def _eval_form(m: int, c: int, x: int) -> str:
    """The folded formula at x, one operation at a time: "3 * 2 = 6, 6 + 17 = 23"."""
    if m == 1:
        return f"{x} {'+' if c >= 0 else '-'} {abs(c)} = {x + c}" if c else f"{x}"
    s = f"{m} * {x} = {m * x}"
    if c:
        s += f", {m * x} {'+' if c > 0 else '-'} {abs(c)} = {m * x + c}"
    return s


def render_code(p: dict, explore: str | None, shown: int, rng: random.Random, plain: bool = False,
                slip_step: int | None = None) -> dict:
    """A code record (version 2). ``slip_step``: the index of the "mul" step (in the folded
    chain, the ``then`` arm for a branch) whose multiplication the slip does not carry through
    to the constant; required for ``explore="slip"``."""
    c = p["consts"]
    chain = c["steps"] if p["family"] == "steps" else c["then"]
    tests = [f"assert f({a[0]}) == {v}" for a, v in zip(p["inputs"], p["expected"])]
    examples = ", ".join(t.removeprefix("assert ") for t in tests[:shown])
    if p["family"] == "steps":
        spec = _spec(chain, rng)
    else:
        spec = (f"does this: if x {c['cmp']} {c['t']}, {_spec_bare(chain)}; "
                f"otherwise, {_spec_bare(c['else'])}")
    prompt = f"Write a Python function f(x) that {spec}. Examples: {examples}."
    slip = slip_step if explore == "slip" else None
    right = {"then": _form(*_fold(chain)[-1])}
    first = {"then": _form(*_fold(chain, slip=slip)[-1])}
    parts: list[tuple[str, str, str]] = []
    if p["family"] == "steps":
        parts.append((pick(rng, "code_open", plain), "step", "step"))
        parts += [(l, "step", r) for l, r in _step_lines(chain, rng, plain, slip)]
        parts.append((pick(rng, "returns", plain, F=first["then"]), "step", "step"))
    else:
        right["else"] = first["else"] = _form(*_fold(c["else"])[-1])
        parts.append((pick(rng, "code_branch", plain, t=c["t"]), "step", "step"))
        parts.append((pick(rng, "arm_open", plain, cmp=c["cmp"], t=c["t"]), "step", "step"))
        parts += [(l, "step", r) for l, r in _step_lines(chain, rng, plain, slip)]
        parts.append((pick(rng, "arm_returns", plain, cmp=c["cmp"], t=c["t"], F=first["then"]), "step", "step"))
        parts.append((pick(rng, "else_open", plain), "step", "step"))
        parts += [(l, "step", r) for l, r in _step_lines(c["else"], rng, plain, None)]
        parts.append((pick(rng, "else_returns", plain, F=right["else"]), "step", "step"))
    parts.append((_block(p, first), "answer", "answer"))
    meta_extra: dict = {}
    if explore in ("slip", "verify"):
        # Trace a shown example that goes through the folded chain (for a branch: its first arm).
        xs = [a[0] for a in p["inputs"][:shown]]
        if p["family"] == "branch":
            xs = [x for x in xs if (x > c["t"] if c["cmp"] == ">" else x < c["t"])]
        x0 = xs[0]
        want = _apply(chain, x0)
        parts.append((pick(rng, "code_check", False, x=x0), "exploratory", "check"))
        mw, cw = _fold(chain, slip=slip)[-1]
        got = mw * x0 + cw
        if explore == "slip":
            parts.append((f"The steps give {_trace(chain, x0)}, but the formula gives {_eval_form(mw, cw, x0)}, not {want}.",
                          "exploratory", "check"))
            k = chain[slip][1]
            before = _fold(chain)[slip - 1][1] if slip else 0
            rest = _fold(chain)
            whys = [f"{k} * {before} = {before * k}"]
            for (o, kk), (_, cc), (_, cprev) in zip(chain[slip + 1:], rest[slip + 1:], rest[slip:]):
                whys.append(f"{cprev} {'+' if o == 'add' else '-' if o == 'sub' else '*'} {kk} = {cc}" if o != "mul"
                            else f"{kk} * {cprev} = {cc}")
            parts.append((pick(rng, "code_fix", False, k=k, c=before, why=", ".join(whys), F=right["then"]),
                          "exploratory", "correction"))
            parts.append((pick(rng, "code_fixed", False), "exploratory", "correction"))
            meta_extra = {"slip": {"step": slip, "first_formula": first["then"]}}
        else:
            assert got == want
            parts.append((f"The steps give {_trace(chain, x0)}, and the formula gives {_eval_form(mw, cw, x0)}, as expected.",
                          "exploratory", "check"))
            parts.append((pick(rng, "code_final", False), "exploratory", "confirm"))
        parts.append((_block(p, right), "answer", "answer"))
    elif explore == "alternative":
        parts.append((pick(rng, "code_alt", False), "exploratory", "alternative"))
        parts.append((_stepwise_block(p), "answer", "answer"))
    response, segments = join_segments([(t, k) for t, k, _ in parts])
    params = {k: v for k, v in p.items() if k not in ("problem", "level", "family")}
    meta = {"segments": segments, "segment_roles": [r for _, _, r in parts], "params": params,
            "family": p["family"], **meta_extra}
    return {"prompt": prompt, "response": response, "tests": tests, "meta": meta}


def slip_steps(p: dict) -> list[int]:
    """Indices of the "mul" steps of the folded chain that follow a constant (a slip can drop it)."""
    c = p["consts"]
    chain = c["steps"] if p["family"] == "steps" else c["then"]
    forms = _fold(chain)
    return [i for i, (o, _) in enumerate(chain) if o == "mul" and i > 0 and forms[i - 1][1] != 0]
