"""Statistics of a generated corpus that say whether its detours and wording carry information
(data/DATASHEET.md, "Version 2"): how often a check changes the answer, connector counts by whole
word, how much of the text is template, how varied the wording is.

Everything is measured on the text, not read from the generator's meta, so version 1 and
version 2 are measured alike.
"""
from __future__ import annotations

import re
from collections import Counter
from typing import Iterable, Mapping, Sequence

from .core import extract_code, extract_math_answer
from .pools import POOLS

__all__ = ["CONNECTORS", "pool_sizes", "connector_counts", "answer_change_share", "template_share",
           "distinct_line_forms", "exploration_shares"]

# Connectors and markers counted by whole word (case-insensitive), over character offsets.
CONNECTORS = ("so", "therefore", "thus", "hence", "since", "because", "but", "wait", "alternatively",
              "another", "first", "next", "then", "now", "after", "otherwise", "check", "verify",
              "finally", "however", "means", "gives")
_WORD = re.compile(r"[A-Za-z]+")
_FENCE = re.compile(r"```.*?```", re.S)


def pool_sizes() -> dict[str, int]:
    """Declared wordings per slot of the version-2 pools."""
    return {k: len(v) for k, v in POOLS.items()}


def _prose(text: str) -> str:
    return _FENCE.sub(" ", text)


def connector_counts(records: Iterable[Mapping], words: Sequence[str] = CONNECTORS) -> dict[str, Counter]:
    """``{domain: Counter(word -> count)}``: whole words of ``words`` in the responses' prose
    (code blocks left out), case-insensitive."""
    want = set(words)
    out: dict[str, Counter] = {}
    for r in records:
        c = out.setdefault(r["domain"], Counter())
        for m in _WORD.finditer(_prose(r["response"])):
            w = m.group().lower()
            if w in want:
                c[w] += 1
    return out


def _code_values(code: str, inputs: Sequence[int]) -> tuple | None:
    """Values of our own generated reference code on ``inputs`` (never a model's code)."""
    env: dict = {}
    try:
        exec(code, env)  # noqa: S102 - the generator's own code
        return tuple(env["f"](x) for x in inputs)
    except Exception:  # noqa: BLE001
        return None


def answer_change_share(records: Iterable[Mapping]) -> dict[tuple[str, int], float]:
    """Per (domain, level), among responses with an exploratory segment, the share whose last
    answer differs from the first (math: the stated numbers; code: the first and last code
    blocks' values on the tests' inputs)."""
    acc: dict[tuple[str, int], list[bool]] = {}
    for r in records:
        if not any(k == "exploratory" for _, _, k in r["meta"]["segments"]):
            continue
        text = r["response"]
        if r["domain"] == "math":
            changed = extract_math_answer(text, "first") != extract_math_answer(text, "last")
        else:
            blocks = re.findall(r"```(?:python)?\n(.*?)```", text, re.S)
            xs = [int(re.match(r"assert f\((-?\d+)", t).group(1)) for t in r["tests"]]
            changed = _code_values(blocks[0], xs) != _code_values(blocks[-1], xs)
        acc.setdefault((r["domain"], r["difficulty"]), []).append(changed)
    return {k: sum(v) / len(v) for k, v in sorted(acc.items())}


def template_share(records: Iterable[Mapping]) -> dict[str, float]:
    """``{domain: share}``: of the response characters outside code blocks, the share that are
    words and punctuation rather than numbers and arithmetic (digits, ``+ - * =`` and the spaces
    between them)."""
    tot: dict[str, list[int]] = {}
    for r in records:
        p = _prose(r["response"])
        math_chars = sum(len(m.group()) for m in re.finditer(r"[-+*=\d]+(?:\s+[-+*=\d]+)*", p))
        t = tot.setdefault(r["domain"], [0, 0])
        t[0] += len(p) - math_chars
        t[1] += len(p)
    return {d: a / b for d, (a, b) in tot.items() if b}


def distinct_line_forms(records: Iterable[Mapping]) -> dict[str, tuple[int, int]]:
    """``{domain: (distinct forms, lines)}`` of prose lines with every number masked: how many
    different sentences the corpus writes, numbers aside."""
    out: dict[str, tuple[set, list]] = {}
    for r in records:
        forms, n = out.setdefault(r["domain"], (set(), [0]))
        for line in _prose(r["response"]).splitlines():
            if line.strip():
                forms.add(re.sub(r"\d+", "#", line.strip()))
                n[0] += 1
    return {d: (len(f), n[0]) for d, (f, n) in out.items()}


def exploration_shares(records: Iterable[Mapping]) -> dict[tuple[str, int], dict[str, float]]:
    """Per (domain, level): the share of records by ``meta.exploration`` (None counted as "none")."""
    acc: dict[tuple[str, int], Counter] = {}
    for r in records:
        acc.setdefault((r["domain"], r["difficulty"]), Counter())[r["meta"].get("exploration") or "none"] += 1
    return {k: {kind: n / sum(c.values()) for kind, n in sorted(c.items())} for k, c in sorted(acc.items())}
