"""Intervals, trends and verdicts for the findings (book/protocol.md, "Verdict rules").

- Attribution claims resample **training examples** (token and segment metrics are first averaged
  within each example); difficulty trends use Spearman over examples, under the raw (summed) and
  the per-token score.
- Retraining claims use a **two-level bootstrap**: seeds (runs) first, then test problems within
  each resampled seed, stratified by level (:func:`two_level_bootstrap`).
- Outcomes: **holds** (the paper's sign, 95% interval excluding zero), **does not hold** (the
  interval excludes zero with the opposite sign), **inconclusive** (the interval includes zero;
  :func:`judge` says why), **mixed** (the parts of a multi-part claim disagree), **depends on
  normalisation** (the raw and per-token scores disagree).
"""
from __future__ import annotations

import bisect
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
    "Estimate", "bootstrap_mean", "bootstrap_median", "bootstrap_mean_diff", "bootstrap_spearman", "paired_bootstrap",
    "verdict", "judge", "bounded_levels", "combine_verdicts", "normalisation_verdict", "trend_row", "effect_row",
    "two_level_bootstrap", "FINDING_KEYS", "VERDICTS", "write_findings", "read_findings", "record_findings",
    "word_spans", "word_categories", "CONNECTORS", "SYNTAX_WORDS", "TOKEN_CATEGORIES", "findings_frame", "bucket_influence", "difficulty_trend",
    "per_example_group_means", "group_contrast", "category_interaction", "within_example_contrast", "token_table", "category_table",
]

VERDICTS = ("holds", "does not hold", "inconclusive", "mixed", "depends on normalisation")
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


def bootstrap_median(values: Sequence[float], *, n_boot: int = 2000, seed: int = 0, level: float = 0.95) -> Estimate:
    """Median of ``values`` [n] with a percentile bootstrap interval, resampling values."""
    x = np.asarray(values, dtype=float)
    if x.size == 0:
        raise ValueError("bootstrap_median: no values")
    rng = np.random.default_rng(seed)
    boot = np.median(x[rng.integers(0, x.size, (n_boot, x.size))], axis=1)
    lo, hi = _ci(boot, level)
    return Estimate(float(np.median(x)), lo, hi, n_boot, level)


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
    """The protocol's outcome for one effect: ``holds`` (paper's sign, interval excludes zero),
    ``does not hold`` (interval excludes zero with the opposite sign), ``inconclusive`` (interval
    includes zero, or no finite estimate). :func:`judge` adds the reason."""
    return judge(est, expected_sign)[0]


def judge(est: Estimate, expected_sign: int, *, paper_effect: float | None = None,
          bounded: str | None = None, null: float = 0.0) -> tuple[str, str | None]:
    """``(outcome, reason)`` for one effect; ``reason`` is None unless the outcome is inconclusive.

    Args:
        est: the effect with its 95% interval, in the caller's metric.
        expected_sign: the paper's sign of the effect in that metric, +1 or -1.
        paper_effect: the paper's own effect size in the same unit, when it gives one; an interval
            whose half-width exceeds it cannot resolve an effect that large.
        bounded: a note when the outcome sits at a ceiling or floor on the levels concerned
            (from :func:`bounded_levels`), added to the reason.
        null: the value the interval is judged against (zero for an effect; a declared
            threshold for a check, e.g. recall >= 0.9): ``holds`` when the interval lies beyond it
            on the expected side, ``does not hold`` when on the other side; the reason names it.
    """
    if expected_sign not in (-1, 1):
        raise ValueError(f"expected_sign must be +1 or -1, got {expected_sign}")
    if not (math.isfinite(est.value) and math.isfinite(est.lo) and math.isfinite(est.hi)):
        return "inconclusive", "no finite estimate or interval"
    if est.lo > null or est.hi < null:
        return ("holds" if np.sign(est.value - null) == expected_sign else "does not hold"), None
    width = est.hi - est.lo
    what = "zero" if null == 0 else f"the threshold {null:+.3g}"
    parts = [f"the 95% interval [{est.lo:+.3g}, {est.hi:+.3g}] includes {what}"]
    if paper_effect is not None and math.isfinite(paper_effect) and paper_effect != 0:
        if width / 2 > abs(paper_effect):
            parts.append(f"its half-width {width / 2:.3g} exceeds the paper's effect {abs(paper_effect):.3g}, "
                         "so an effect of the paper's size could not be resolved")
        else:
            parts.append(f"narrow enough (half-width {width / 2:.3g}) to resolve the paper's effect "
                         f"{abs(paper_effect):.3g}: no effect of that size here")
    if bounded:
        parts.append(bounded)
    return "inconclusive", "; ".join(parts)


def bounded_levels(accuracy_by_level: dict[int, float], *, ceiling: float = 0.95, floor: float = 0.05) -> str | None:
    """A note naming the levels whose accuracy sits at a ceiling (>= ``ceiling``) or floor
    (<= ``floor``), where an arm difference has little room to show; None when none does.
    ``accuracy_by_level``: ``{level: accuracy}`` of the reference arm."""
    hi = sorted(l for l, a in accuracy_by_level.items() if a >= ceiling)
    lo = sorted(l for l, a in accuracy_by_level.items() if a <= floor)
    notes = []
    if hi:
        notes.append(f"accuracy at the ceiling (>= {ceiling}) on level{'s' if len(hi) > 1 else ''} {_levels(hi)}")
    if lo:
        notes.append(f"at the floor (<= {floor}) on level{'s' if len(lo) > 1 else ''} {_levels(lo)}")
    return " and ".join(notes) if notes else None


def _levels(ls: Sequence[int]) -> str:
    return ", ".join(str(l) for l in ls)


def combine_verdicts(parts: Iterable[str]) -> str:
    """A claim with several parts (domains, query targets): the common outcome when all parts
    agree, ``mixed`` when they disagree."""
    vs = list(parts)
    if not vs or any(v not in VERDICTS for v in vs):
        raise ValueError(f"verdicts must be among {VERDICTS}, got {vs}")
    return vs[0] if all(v == vs[0] for v in vs) else "mixed"


def normalisation_verdict(raw: str, per_token: str) -> str:
    """One verdict for an attribution trend judged under the raw and the per-token score: the
    common outcome when they agree, ``depends on normalisation`` when they do not."""
    for v in (raw, per_token):
        if v not in VERDICTS:
            raise ValueError(f"verdict {v!r} not in {VERDICTS}")
    return raw if raw == per_token else "depends on normalisation"


def trend_row(claim: str, metric: str, raw: Estimate, per_token: Estimate, expected_sign: int, *,
              paper: str, primary: bool = True, **extra: Any) -> dict:
    """A findings row for an attribution trend judged under both scores (``ours`` is the raw value;
    ``ours_raw``/``ours_per_token`` with their intervals; one verdict by :func:`normalisation_verdict`)."""
    vr, rr = judge(raw, expected_sign)
    vt, rt = judge(per_token, expected_sign)
    v = normalisation_verdict(vr, vt)
    row = {"claim": claim, "metric": metric, "ours": raw.value, "interval": raw.interval,
           "ours_raw": raw.value, "interval_raw": raw.interval, "verdict_raw": vr,
           "ours_per_token": per_token.value, "interval_per_token": per_token.interval, "verdict_per_token": vt,
           "paper": paper, "verdict": v, "primary": primary, **extra}
    if v == "inconclusive":
        row["reason"] = f"raw: {rr}; per token: {rt}"
    elif v == "depends on normalisation":
        row["reason"] = f"raw score: {vr}; per-token score: {vt}"
    return row


def effect_row(claim: str, metric: str, est: Estimate, expected_sign: int, *, paper: str,
               paper_effect: float | None = None, bounded: str | None = None, primary: bool = True,
               null: float = 0.0, **extra: Any) -> dict:
    """A findings row for one effect (``reason`` when inconclusive); ``null``: the value judged
    against (see :func:`judge`), zero for an effect, a declared threshold for a check."""
    v, reason = judge(est, expected_sign, paper_effect=paper_effect, bounded=bounded, null=null)
    row = {"claim": claim, "metric": metric, "ours": est.value, "interval": est.interval, "paper": paper,
           "verdict": v, "primary": primary, **extra}
    if reason:
        row["reason"] = reason
    return row


def two_level_bootstrap(diffs: Sequence[Sequence[float]], strata: Sequence[Sequence[Any]] | None = None, *,
                        n_boot: int = 2000, seed: int = 0, level: float = 0.95) -> tuple[Estimate, list[float]]:
    """Mean paired difference over seeds and test problems, with a two-level bootstrap.

    Args:
        diffs: per seed ``s``, the paired differences [n_s] of its test problems (arm - reference,
            both trained with seed ``s``).
        strata: per seed, the level of each problem [n_s]; problems are resampled within level.

    Returns:
        ``(estimate, per_seed)``: the mean of the per-seed mean differences with a percentile
        interval from resampling seeds with replacement, then problems within each resampled
        seed (independently for each draw of a seed), and the per-seed means. With one seed the
        interval is the problem-level one (and says nothing about seed variance).
    """
    xs = [np.asarray(d, dtype=float) for d in diffs]
    if not xs or any(x.size == 0 for x in xs):
        raise ValueError("two_level_bootstrap: need at least one seed, each with at least one problem")
    groups = [_strata_indices(len(x), None if strata is None else strata[k]) for k, x in enumerate(xs)]
    S = len(xs)
    rng = np.random.default_rng(seed)
    # problem-level resampled means: S independent draws per seed and replicate
    draws = np.empty((S, n_boot * S))
    for s, (x, g) in enumerate(zip(xs, groups)):
        for c0 in range(0, n_boot * S, 1000):
            c = min(1000, n_boot * S - c0)
            idx = np.concatenate([gg[rng.integers(0, len(gg), (c, len(gg)))] for gg in g], axis=1)
            draws[s, c0:c0 + c] = x[idx].mean(1)
    pick = rng.integers(0, S, (n_boot, S))  # which seed fills each slot of each replicate
    slot = np.arange(n_boot)[:, None] * S + np.arange(S)[None, :]
    boot = draws[pick, slot].mean(1)
    per_seed = [float(x.mean()) for x in xs]
    lo, hi = _ci(boot, level)
    return Estimate(float(np.mean(per_seed)), lo, hi, n_boot, level), per_seed


def _check_row(row: dict, k: int) -> None:
    missing = [key for key in FINDING_KEYS if key not in row]
    if missing:
        raise ValueError(f"findings row {k}: missing {missing}")
    if row["verdict"] not in VERDICTS:
        raise ValueError(f"findings row {k}: verdict {row['verdict']!r} not in {VERDICTS}")
    if row["verdict"] in ("inconclusive", "depends on normalisation") and not row.get("reason"):
        raise ValueError(f"findings row {k}: verdict {row['verdict']!r} needs a 'reason'")
    for key in ("interval", "interval_raw", "interval_per_token"):
        iv = row.get(key)
        if iv is not None and not (isinstance(iv, (list, tuple)) and len(iv) == 2):
            raise ValueError(f"findings row {k}: {key} must be [lo, hi] or null, got {iv!r}")
    if ("ours_raw" in row) != ("ours_per_token" in row):
        raise ValueError(f"findings row {k}: a trend row carries both ours_raw and ours_per_token")
    if "per_seed" in row and not (isinstance(row["per_seed"], list) and row["per_seed"]):
        raise ValueError(f"findings row {k}: per_seed must be a non-empty list")


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


def record_findings(profile, path: str | Path, *, setting: str, note: str = "") -> Path:
    """Freeze a profile's findings into a small committed record (``book/records/*.json``): every
    findings file's rows and provenance, the profile's configuration, the git commit of the
    checkout that ran them, and ``setting`` (how the book labels them, e.g. ``"tiny, corpus v1"``).
    ``profile``: a ``profiles.Profile``. Shown beside later runs without re-running them."""
    import subprocess

    from infra_lib.io import config_to_dict

    from .paths import project_root

    root = project_root()
    commit = None
    if root is not None:
        r = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True)
        commit = r.stdout.strip() or None
    findings = read_findings(profile.name)
    if not findings:
        raise ValueError(f"no findings under profile {profile.name!r} to record")
    return atomic_write_json(Path(path), {"setting": setting, "profile": profile.name, "commit": commit, "note": note,
                                          "config": config_to_dict(profile), "findings": findings})


# --- token categories (the token-level finding) -------------------------------------------

# Lexicons of the token finding (book/protocol.md, "Declared metrics"), matched on whole words.
CONNECTORS = frozenset({
    "so", "therefore", "since", "because", "thus", "hence", "then", "first", "next", "finally",
    "wait", "but", "however", "alternatively", "check", "verify", "now", "means", "gives", "if",
})
SYNTAX_WORDS = frozenset({
    "def", "return", "if", "elif", "else", "for", "while", "in", "range", "and", "or", "not", "lambda",
    "python",
})
_WORD = re.compile(r"[A-Za-z_][A-Za-z_0-9]*|[0-9]+|```|[^\sA-Za-z0-9_]")
_SYMBOL = re.compile(r"[()\[\]{}:,=<>+\-*/%!]")
_FENCE = re.compile(r"```[^\n]*\n(.*?)```", re.S)



def word_spans(text: str) -> list[tuple[int, int, str]]:
    """Whole words (letters, digits and underscores), code fences and single symbols of ``text`` as
    ``(start, end, word)`` character spans, in order."""
    return [(m.start(), m.end(), m.group()) for m in _WORD.finditer(text)]


def word_categories(text: str, offsets: Sequence[tuple[int, int]]) -> list[str]:
    """The category of each token of ``text`` by the whole word it falls in.

    ``offsets``: each token's ``(start, end)`` character span. A token takes the category of the
    first word it overlaps (so both fragments of a word the tokenizer splits, "Altern" + "atively",
    are connectors): ``connector`` (a word of :data:`CONNECTORS`, outside code), ``code syntax``
    (inside a fenced code block: a word of :data:`SYNTAX_WORDS`, a bracket, colon, comma or
    operator, a fence, or indentation), ``number``, ``other``.
    """
    spans = word_spans(text)
    starts = [s for s, _, _ in spans]
    code = [(m.start(1), m.end(1)) for m in _FENCE.finditer(text)]
    fences = [(m.start(), m.end()) for m in re.finditer(r"```[^\n]*", text)]
    out = []
    for a, b in offsets:
        in_code = any(s <= a < e for s, e in code)
        if any(s <= a < e for s, e in fences):
            out.append("code syntax")
            continue
        k = bisect.bisect_right(starts, a) - 1
        word = None
        for j in (k, k + 1):  # the word containing a, else the first word starting inside the token
            if 0 <= j < len(spans) and spans[j][0] < max(b, a + 1) and spans[j][1] > a:
                word = spans[j][2]
                break
        if word is None:  # whitespace only
            out.append("code syntax" if in_code and b > a else "other")
        elif word.isdigit():
            out.append("number")
        elif in_code:
            out.append("code syntax" if word in SYNTAX_WORDS or _SYMBOL.fullmatch(word) else "other")
        else:
            out.append("connector" if word.lower() in CONNECTORS else "other")
    return out


TOKEN_CATEGORIES = ("connector", "code syntax", "number", "other")


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
    return _bootstrap_group_difference(ma, mb, n_boot, seed)


def _bootstrap_group_difference(ma: np.ndarray, mb: np.ndarray, n_boot: int, seed: int) -> Estimate:
    """Mean of ``ma`` minus mean of ``mb`` (NaN-skipping, both [n] per-example group means, NaN
    where an example lacks the group), with a 95% interval from resampling examples (the same
    draw for both, so the pairing within an example is kept)."""
    rng = np.random.default_rng(seed)
    n = len(ma)
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
                            n_boot: int = 2000, n_perm: int = 2000, seed: int = 0,
                            stat: str = "mean") -> tuple[Estimate, float, int]:
    """Mean (``stat="median"``: median) over the examples having both groups of (mean of group
    ``a`` - mean of group ``b``).

    ``values[i]``: [n_i] per-segment (or per-token) scores of example ``i``; ``labels[i]``: [n_i]
    labels. Only examples with both groups count, so each difference compares segments of the
    same CoT (same problem, same length scale).

    Returns:
        ``(estimate, p_value, n_examples)``: a bootstrap interval over examples, and a two-sided
        permutation p-value of the mean, where the null shuffles the ``a``/``b`` labels among each
        example's own segments (the number of ``a`` segments kept), ``n_perm`` times.
    """
    if stat not in ("mean", "median"):
        raise ValueError(f"stat must be 'mean' or 'median', got {stat!r}")
    pairs = _both_groups(values, labels, a, b)
    if not pairs:
        raise ValueError(f"within_example_contrast: no example has both {a!r} and {b!r}")
    diffs = np.array([v[:k].mean() - v[k:].mean() for v, k in pairs])
    est = (bootstrap_median if stat == "median" else bootstrap_mean)(diffs, n_boot=n_boot, seed=seed)
    rng = np.random.default_rng(seed)
    null = np.zeros(n_perm)
    for v, k in pairs:  # one vectorised shuffle per example: (n_perm, n_i)
        perm = rng.permuted(np.broadcast_to(v, (n_perm, v.size)), axis=1)
        null += perm[:, :k].mean(1) - perm[:, k:].mean(1)
    null /= len(pairs)
    p = (1 + np.sum(np.abs(null) >= abs(diffs.mean()) - 1e-15)) / (n_perm + 1)
    return est, float(p), len(pairs)


def category_interaction(on_math: Sequence[Sequence[float]], on_code: Sequence[Sequence[float]],
                         labels: Sequence[Sequence[Any]], a: Any = "connector", b: Any = "code syntax", *,
                         n_boot: int = 2000, seed: int = 0) -> tuple[Estimate, int, int] | None:
    """The token finding as an interaction: (``a`` - ``b``) per-token influence on the math target
    minus the same on the code target, over one set of training examples (one training domain).

    Args:
        on_math, on_code: per example ``i``, its token scores [n_i] on each target.
        labels: per example, each token's category [n_i].

    Each target's scores are first divided by their standard deviation over all the tokens given,
    so the targets' scales do not decide the sign. Per example, ``d_a`` = mean ``a`` score on math
    - on code (examples having ``a``), ``d_b`` likewise; the interaction is ``mean(d_a) - mean(d_b)``
    with a bootstrap over examples. Positive = ``a`` leans to math and ``b`` to code (the paper's
    pattern for connectors and syntax).

    Returns:
        ``(estimate, n_a, n_b)`` (examples having each category), or None when no example has
        one of the two categories.
    """
    sm = np.concatenate([np.asarray(v, float) for v in on_math]).std() or 1.0
    sc = np.concatenate([np.asarray(v, float) for v in on_code]).std() or 1.0
    diff = [np.asarray(m, float) / sm - np.asarray(c, float) / sc for m, c in zip(on_math, on_code)]
    da = per_example_group_means(diff, labels, a)
    db = per_example_group_means(diff, labels, b)
    if not np.isfinite(da).any() or not np.isfinite(db).any():
        return None
    return (_bootstrap_group_difference(da, db, n_boot, seed),
            int(np.isfinite(da).sum()), int(np.isfinite(db).sum()))


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
    """Verdict rows as a DataFrame for display: claim, metric, ours (raw and per-token for trends,
    per-seed differences for retraining rows), 95% interval, paper, verdict, why (when inconclusive
    or normalisation-dependent), primary."""
    import pandas as pd

    def fmt(x):
        return f"{x:+.3g}" if isinstance(x, (int, float)) and math.isfinite(x) else str(x)

    def fiv(iv):
        return "n/a" if iv is None else f"[{fmt(iv[0])}, {fmt(iv[1])}]"

    out = []
    for r in rows:
        if "ours_raw" in r:
            ours = f"raw {fmt(r['ours_raw'])}; per token {fmt(r['ours_per_token'])}"
            iv = f"raw {fiv(r['interval_raw'])}; per token {fiv(r['interval_per_token'])}"
        else:
            ours, iv = fmt(r["ours"]), fiv(r["interval"])
        if r.get("per_seed"):
            ours += " (seeds: " + ", ".join(fmt(v) for v in r["per_seed"]) + ")"
        out.append({"claim": r["claim"], "metric": r["metric"], "ours": ours, "95% interval": iv, "paper": r["paper"],
                    "verdict": r["verdict"], "why": r.get("reason", ""),
                    "primary": "primary" if r.get("primary", True) else "secondary"})
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
