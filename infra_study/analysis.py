"""Intervals, trends and verdicts for the findings (book/protocol.md, "Verdict rules").

- Attribution claims resample **training examples** (token and segment metrics are first averaged
  within each example); difficulty trends use Spearman over examples.
- Retraining claims resample **test problems** (each problem's outcome averaged over seeds first),
  stratified by level.
- A claim **holds** when the effect has the paper's sign and its 95% interval excludes zero;
  **mixed** when the sign agrees but the interval includes zero, or it holds in one domain only;
  **does not hold** otherwise.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
from scipy import stats as _stats

from infra_lib.io import atomic_write_json, read_json

from .paths import profile_dir

__all__ = [
    "Estimate", "bootstrap_mean", "bootstrap_mean_diff", "bootstrap_spearman", "paired_bootstrap",
    "verdict", "combine_verdicts", "FINDING_KEYS", "VERDICTS", "write_findings", "read_findings",
    "token_category", "TOKEN_CATEGORIES", "findings_frame", "bucket_influence", "difficulty_trend",
    "per_example_group_means", "group_contrast", "within_example_contrast", "token_table", "category_table",
]

VERDICTS = ("holds", "mixed", "does not hold")
FINDING_KEYS = ("claim", "metric", "ours", "interval", "paper", "verdict")


@dataclass(frozen=True)
class Estimate:
    """A point estimate with a percentile bootstrap interval (``level`` coverage) and the resample count."""

    value: float
    lo: float
    hi: float
    n: int
    level: float = 0.95

    @property
    def interval(self) -> list[float]:
        return [self.lo, self.hi]

    def excludes_zero(self) -> bool:
        return self.lo > 0 or self.hi < 0

    def __str__(self) -> str:
        return f"{self.value:+.4g} [{self.lo:+.4g}, {self.hi:+.4g}]"


def _ci(boot: np.ndarray, level: float) -> tuple[float, float]:
    alpha = (1 - level) / 2
    boot = boot[np.isfinite(boot)]
    if boot.size == 0:
        return float("nan"), float("nan")
    return float(np.quantile(boot, alpha)), float(np.quantile(boot, 1 - alpha))


def _strata_indices(n: int, strata: Sequence[Any] | None) -> list[np.ndarray]:
    if strata is None:
        return [np.arange(n)]
    strata = np.asarray(strata)
    if len(strata) != n:
        raise ValueError(f"strata has {len(strata)} entries for {n} values")
    return [np.flatnonzero(strata == s) for s in np.unique(strata)]


def _resample(rng: np.random.Generator, groups: list[np.ndarray]) -> np.ndarray:
    return np.concatenate([g[rng.integers(0, len(g), len(g))] for g in groups])


def bootstrap_mean(values: Sequence[float], *, strata: Sequence[Any] | None = None, n_boot: int = 2000,
                   seed: int = 0, level: float = 0.95) -> Estimate:
    """Mean of ``values`` [n] with a percentile bootstrap interval, resampling values (within strata)."""
    x = np.asarray(values, dtype=float)
    if x.size == 0:
        raise ValueError("bootstrap_mean: no values")
    rng = np.random.default_rng(seed)
    groups = _strata_indices(len(x), strata)
    boot = np.array([x[_resample(rng, groups)].mean() for _ in range(n_boot)])
    lo, hi = _ci(boot, level)
    return Estimate(float(x.mean()), lo, hi, n_boot, level)


def bootstrap_mean_diff(a: Sequence[float], b: Sequence[float], *, n_boot: int = 2000, seed: int = 0,
                        level: float = 0.95) -> Estimate:
    """``mean(a) - mean(b)`` for two independent samples, each resampled on its own."""
    xa, xb = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if xa.size == 0 or xb.size == 0:
        raise ValueError(f"bootstrap_mean_diff: empty sample (sizes {xa.size}, {xb.size})")
    rng = np.random.default_rng(seed)
    boot = np.array([
        xa[rng.integers(0, xa.size, xa.size)].mean() - xb[rng.integers(0, xb.size, xb.size)].mean()
        for _ in range(n_boot)
    ])
    lo, hi = _ci(boot, level)
    return Estimate(float(xa.mean() - xb.mean()), lo, hi, n_boot, level)


def paired_bootstrap(diffs: Sequence[float], *, strata: Sequence[Any] | None = None, n_boot: int = 2000,
                     seed: int = 0, level: float = 0.95) -> Estimate:
    """Mean paired difference (e.g. per test problem, flipped - baseline, averaged over seeds first)."""
    return bootstrap_mean(diffs, strata=strata, n_boot=n_boot, seed=seed, level=level)


def bootstrap_spearman(x: Sequence[float], y: Sequence[float], *, n_boot: int = 2000, seed: int = 0,
                       level: float = 0.95) -> Estimate:
    """Spearman's rho of ``x`` vs ``y`` (paired, [n]) with an interval resampling pairs."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if x.shape != y.shape or x.size < 3:
        raise ValueError(f"bootstrap_spearman: need equal-length samples of 3+, got {x.shape} and {y.shape}")
    rho = float(_stats.spearmanr(x, y).statistic)
    rng = np.random.default_rng(seed)
    boot = np.empty(n_boot)
    for k in range(n_boot):
        idx = rng.integers(0, x.size, x.size)
        xs, ys = x[idx], y[idx]
        boot[k] = np.nan if (np.ptp(xs) == 0 or np.ptp(ys) == 0) else _stats.spearmanr(xs, ys).statistic
    lo, hi = _ci(boot, level)
    return Estimate(rho, lo, hi, n_boot, level)


def verdict(est: Estimate, expected_sign: int) -> str:
    """The protocol's rule for one effect: ``holds`` (paper's sign, interval excludes zero), ``mixed``
    (sign agrees, interval includes zero), ``does not hold`` (otherwise)."""
    if expected_sign not in (-1, 1):
        raise ValueError(f"expected_sign must be +1 or -1, got {expected_sign}")
    if not math.isfinite(est.value):
        return "does not hold"
    agrees = np.sign(est.value) == expected_sign
    if agrees and est.excludes_zero():
        return "holds"
    if agrees:
        return "mixed"
    return "does not hold"


def combine_verdicts(per_domain: Iterable[str]) -> str:
    """A claim made for several domains: ``holds`` if it holds in all, ``mixed`` if it holds or is
    mixed in at least one, ``does not hold`` otherwise."""
    vs = list(per_domain)
    if not vs or any(v not in VERDICTS for v in vs):
        raise ValueError(f"verdicts must be among {VERDICTS}, got {vs}")
    if all(v == "holds" for v in vs):
        return "holds"
    if any(v in ("holds", "mixed") for v in vs):
        return "mixed"
    return "does not hold"


def _check_row(row: dict, k: int) -> None:
    missing = [key for key in FINDING_KEYS if key not in row]
    if missing:
        raise ValueError(f"findings row {k}: missing {missing}")
    if row["verdict"] not in VERDICTS:
        raise ValueError(f"findings row {k}: verdict {row['verdict']!r} not in {VERDICTS}")
    iv = row["interval"]
    if iv is not None and not (isinstance(iv, (list, tuple)) and len(iv) == 2):
        raise ValueError(f"findings row {k}: interval must be [lo, hi] or null, got {iv!r}")


def write_findings(profile: str, number: str, rows: list[dict], /, **provenance: Any) -> Path:
    """Write ``runs/<profile>/findings/<number>.json``: the verdict rows plus provenance
    (seed, profile, hardware, wall time). Each row has ``claim, metric, ours, interval, paper, verdict``."""
    for k, row in enumerate(rows):
        _check_row(row, k)
    path = profile_dir(profile) / "findings" / f"{number}.json"
    return atomic_write_json(path, {**provenance, "profile": profile, "rows": rows})


def read_findings(profile: str) -> dict[str, dict]:
    """All findings files of a profile, by number."""
    folder = profile_dir(profile) / "findings"
    return {p.stem: read_json(p) for p in sorted(folder.glob("*.json"))}


# --- token categories (the token-level finding) -------------------------------------------

LOGIC_CONNECTORS = frozenset({
    "so", "therefore", "since", "because", "thus", "hence", "then", "first", "next", "finally",
    "wait", "but", "however", "alternatively", "check", "verify", "now", "means", "gives", "if",
})
CODE_SYNTAX = frozenset({
    "def", "return", "if", "elif", "else", "for", "while", "in", "range", "and", "or", "not",
    ":", "(", ")", "[", "]", "{", "}", ",", "=", "==", "+=", "-=", "```", "python", "<", ">",
    "<=", ">=", "!=", "%", "//", "lambda",
})
TOKEN_CATEGORIES = ("connector", "code syntax", "number", "other")


def token_category(token: str, in_code: bool = False) -> str:
    """The category of one decoded token string.

    ``connector``: a natural-language logic connector ("so", "therefore", "wait", ...) outside code;
    ``code syntax``: a Python keyword, bracket, colon, operator, fence or indentation, inside a code
    block (``in_code=True``); ``number``: digits; ``other``: everything else (names, words, prose
    punctuation). The same string can change category with its context ("if" in prose is a
    connector, in code it is syntax).
    """
    t = token.strip()
    if t.startswith("```"):
        return "code syntax"
    if not t:
        return "code syntax" if in_code and (token.startswith(" ") or "\n" in token) else "other"
    if re.fullmatch(r"[0-9]+", t):
        return "number"
    if in_code:
        if t in CODE_SYNTAX or re.fullmatch(r"[()\[\]{}:,=<>+\-*/%!]+", t):
            return "code syntax"
        return "other"
    if t.lower().strip(".,;!?") in LOGIC_CONNECTORS:
        return "connector"
    return "other"


# --- attribution summaries (findings 01, 03, 04) --------------------------------------------

def bucket_influence(scores: Sequence[float], records: Sequence[dict], *, n_boot: int = 2000,
                     seed: int = 0):
    """Mean influence per (train domain, level) with a bootstrap interval over training examples.

    ``scores``: [n_train] example scores on one query (e.g. a domain-mean query), aligned with
    ``records``. Returns a DataFrame with columns ``domain, level, n, mean, lo, hi``.
    """
    import pandas as pd

    x = np.asarray(scores, dtype=float)
    if x.shape != (len(records),):
        raise ValueError(f"scores has shape {x.shape}, expected ({len(records)},) to match the records")
    rows = []
    keys = sorted({(r["domain"], int(r["difficulty"])) for r in records})
    for k, (dom, lvl) in enumerate(keys):
        idx = [i for i, r in enumerate(records) if r["domain"] == dom and int(r["difficulty"]) == lvl]
        est = bootstrap_mean(x[idx], n_boot=n_boot, seed=seed + k)
        rows.append({"domain": dom, "level": lvl, "n": len(idx), "mean": est.value, "lo": est.lo, "hi": est.hi})
    return pd.DataFrame(rows)


def difficulty_trend(scores: Sequence[float], records: Sequence[dict], domain: str, *, n_boot: int = 2000,
                     seed: int = 0) -> Estimate:
    """Spearman's rho of difficulty vs example influence among ``domain``'s training examples,
    with an interval resampling examples."""
    x = np.asarray(scores, dtype=float)
    idx = [i for i, r in enumerate(records) if r["domain"] == domain]
    if len(idx) < 3:
        raise ValueError(f"difficulty_trend: only {len(idx)} training examples of domain {domain!r}")
    return bootstrap_spearman([records[i]["difficulty"] for i in idx], x[idx], n_boot=n_boot, seed=seed)


def per_example_group_means(values: Sequence[Sequence[float]], labels: Sequence[Sequence[Any]], group: Any) -> np.ndarray:
    """For each example, the mean of its ``values`` whose label equals ``group`` (NaN where it has none).

    ``values[i]``: [n_i] per-token (or per-segment) scores of example ``i``; ``labels[i]``: [n_i]
    labels. Averaging within an example first keeps correlated tokens of one CoT from counting as
    independent observations.
    """
    out = np.full(len(values), np.nan)
    for i, (v, lab) in enumerate(zip(values, labels)):
        v = np.asarray(v, dtype=float)
        m = np.asarray([l == group for l in lab], dtype=bool)
        if m.any():
            out[i] = v[m].mean()
    return out


def group_contrast(values: Sequence[Sequence[float]], labels: Sequence[Sequence[Any]], a: Any, b: Any, *,
                   n_boot: int = 2000, seed: int = 0) -> Estimate:
    """Mean per-token (per-segment) score of group ``a`` minus group ``b``, each first averaged within
    example; interval from a bootstrap over examples (examples having both groups are paired,
    the others enter their own group's mean)."""
    ma = per_example_group_means(values, labels, a)
    mb = per_example_group_means(values, labels, b)
    ia, ib = np.flatnonzero(np.isfinite(ma)), np.flatnonzero(np.isfinite(mb))
    if ia.size == 0 or ib.size == 0:
        missing = a if ia.size == 0 else b
        raise ValueError(f"group_contrast: no example has group {missing!r}")
    rng = np.random.default_rng(seed)
    n = len(values)
    boot = np.empty(n_boot)
    for k in range(n_boot):
        idx = rng.integers(0, n, n)
        sa, sb = ma[idx], mb[idx]
        boot[k] = np.nanmean(sa) - np.nanmean(sb) if np.isfinite(sa).any() and np.isfinite(sb).any() else np.nan
    lo, hi = _ci(boot, 0.95)
    return Estimate(float(np.nanmean(ma) - np.nanmean(mb)), lo, hi, n_boot)


def _both_groups(values, labels, a, b) -> list[tuple[np.ndarray, int]]:
    """Per example having both groups: its ``a`` values then its ``b`` values, and how many are ``a``."""
    out = []
    for v, lab in zip(values, labels):
        v = np.asarray(v, dtype=float)
        ma = np.asarray([l == a for l in lab], dtype=bool)
        mb = np.asarray([l == b for l in lab], dtype=bool)
        if ma.any() and mb.any():
            out.append((np.concatenate([v[ma], v[mb]]), int(ma.sum())))
    return out


def within_example_contrast(values: Sequence[Sequence[float]], labels: Sequence[Sequence[Any]], a: Any, b: Any, *,
                            n_boot: int = 2000, n_perm: int = 2000, seed: int = 0) -> tuple[Estimate, float, int]:
    """Mean over the examples having both groups of (mean of group ``a`` - mean of group ``b``).

    ``values[i]``: [n_i] per-segment (or per-token) scores of example ``i``; ``labels[i]``: [n_i]
    labels. Only examples with both groups count, so each difference compares segments of the
    same CoT (same problem, same length scale).

    Returns:
        ``(estimate, p_value, n_examples)``: a bootstrap interval over examples, and a two-sided
        permutation p-value, where the null shuffles the ``a``/``b`` labels among each example's
        own segments (the number of ``a`` segments kept), ``n_perm`` times.
    """
    pairs = _both_groups(values, labels, a, b)
    if not pairs:
        raise ValueError(f"within_example_contrast: no example has both {a!r} and {b!r}")
    diffs = np.array([v[:k].mean() - v[k:].mean() for v, k in pairs])
    est = bootstrap_mean(diffs, n_boot=n_boot, seed=seed)
    rng = np.random.default_rng(seed)
    null = np.zeros(n_perm)
    for v, k in pairs:  # one vectorised shuffle per example: (n_perm, n_i)
        perm = rng.permuted(np.broadcast_to(v, (n_perm, v.size)), axis=1)
        null += perm[:, :k].mean(1) - perm[:, k:].mean(1)
    null /= len(pairs)
    p = (1 + np.sum(np.abs(null) >= abs(diffs.mean()) - 1e-15)) / (n_perm + 1)
    return est, float(p), len(pairs)


def token_table(tokens: Sequence[Sequence[str]], scores: Sequence[Sequence[float]], *, min_count: int = 20):
    """Per token string: count, number of examples, mean per-token score (tokens pooled), sorted by mean.

    ``tokens[i]``/``scores[i]``: the decoded response tokens of training example ``i`` and their
    scores [n_i]. Strings seen fewer than ``min_count`` times are dropped.
    """
    import pandas as pd

    acc: dict[str, list] = {}
    for i, (toks, sc) in enumerate(zip(tokens, scores)):
        if len(toks) != len(sc):
            raise ValueError(f"example {i}: {len(toks)} tokens but {len(sc)} scores")
        for t, s in zip(toks, sc):
            e = acc.setdefault(t, [0, 0.0, set()])
            e[0] += 1
            e[1] += float(s)
            e[2].add(i)
    rows = [{"token": t, "count": c, "examples": len(ex), "mean": tot / c} for t, (c, tot, ex) in acc.items() if c >= min_count]
    df = pd.DataFrame(rows, columns=["token", "count", "examples", "mean"])
    return df.sort_values("mean", ascending=False, ignore_index=True)


def findings_frame(rows: Sequence[dict]):
    """Verdict rows as a DataFrame for display: claim, metric, ours, 95% interval, paper, verdict."""
    import pandas as pd

    def fmt(x):
        return f"{x:+.3g}" if isinstance(x, (int, float)) and math.isfinite(x) else str(x)

    out = []
    for r in rows:
        iv = r["interval"]
        out.append({"claim": r["claim"], "metric": r["metric"], "ours": fmt(r["ours"]),
                    "95% interval": "n/a" if iv is None else f"[{fmt(iv[0])}, {fmt(iv[1])}]",
                    "paper": r["paper"], "verdict": r["verdict"]})
    return pd.DataFrame(out)


def category_table(values: Sequence[Sequence[float]], labels: Sequence[Sequence[str]], *,
                   categories: Sequence[str] = TOKEN_CATEGORIES, n_boot: int = 2000, seed: int = 0):
    """Mean per-token score per category (first averaged within each example), with a bootstrap
    interval over the examples that have that category. Columns ``category, n_examples, mean, lo, hi``."""
    import pandas as pd

    rows = []
    for k, c in enumerate(categories):
        m = per_example_group_means(values, labels, c)
        m = m[np.isfinite(m)]
        if m.size == 0:
            rows.append({"category": c, "n_examples": 0, "mean": np.nan, "lo": np.nan, "hi": np.nan})
            continue
        est = bootstrap_mean(m, n_boot=n_boot, seed=seed + k)
        rows.append({"category": c, "n_examples": int(m.size), "mean": est.value, "lo": est.lo, "hi": est.hi})
    return pd.DataFrame(rows)
