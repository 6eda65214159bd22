"""Attribution summaries the findings share: score variants, restricted-loss segment scores, the
trend on other models of the study, and token categories by whole word.

Every score follows the library's convention: ``score = g_q^T (F + λI)^{-1} g_i``, **positive =
helpful**. Two decompositions appear, and each number says which it uses:

- **positional** (the library's token and segment scores): the example gradient split by the
  position of the activation and output gradient, ``g_t^T P a_t``; a position's score mixes in
  later tokens' losses through attention, and the score at position ``t`` carries the loss of
  predicting token ``t + 1``.
- **restricted loss** (:func:`restricted_segment_scores`): the influence of the training example
  with its loss restricted to one segment's tokens, a separate gradient per segment.

Score variants of a training example (:func:`example_variants`): ``raw`` (summed response loss),
``per_token`` (raw over the number of labelled response tokens), and both without the two
positions where the template makes its choices: the one predicting the token after the first
answer (stop, or go on to explore) and the one predicting the end-of-turn token.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Mapping, Sequence

import numpy as np
import torch

from infra_lib.data import IGNORE_INDEX
from infra_lib.io import config_hash

from .paths import profile_dir
from .pipeline import (
    DOMAINS, _log, _model_and_tokenizer, _scores_cached, _stamp, encode, ensure_factors, ensure_tokenizer,
    load_queries, load_split,
)

if TYPE_CHECKING:  # a type only
    from .profiles import Profile

__all__ = [
    "label_counts", "choice_positions", "example_variants", "bucket_means_per_token", "restricted_segment_scores",
    "ensure_greedy_query_scores", "ensure_model_scores", "trend_models", "TREND_PAIRS", "difficulty_trends",
    "other_model_trends", "model_mixes", "model_trend_rows", "mix_trend", "trend_shift_table",
    "domains_without_greedy_queries", "copy_ranks", "planted_copies",
]

# ----------------------------------------------------------------------------- score variants
def label_counts(encoded: Sequence[Mapping]) -> np.ndarray:
    """Labelled response tokens (end of turn included) per encoded example, [n] int."""
    return np.array([int((e["labels"] != IGNORE_INDEX).sum()) for e in encoded])


def choice_positions(e: Mapping) -> list[int]:
    """Positions of an encoded example whose next-token loss is a template choice: the last token
    of the first ``answer`` segment (it predicts what follows the first answer: more reasoning or
    the end of turn) and the last response token (it predicts the end-of-turn token)."""
    seg, kinds = e["segment_ids"], e["segment_kinds"]
    T = int(e["input_ids"].shape[0])
    out = {T - 2}
    if "answer" in kinds:
        k = kinds.index("answer")
        pos = (seg[: T - 1] == k).nonzero().flatten()
        if pos.numel():
            out.add(int(pos[-1]))
    return sorted(p for p in out if p >= 0)


def example_variants(scores, encoded: Sequence[Mapping], row: str) -> dict[str, np.ndarray]:
    """Per training example, its score on query row ``row`` under four variants, each [n] float64:
    ``raw``, ``per_token``, ``raw_no_choice``, ``per_token_no_choice`` (see the module docstring).
    The no-choice variants need token scores."""
    r = scores.row_ids.index(row)
    raw = scores.example[r].double().numpy()
    n = label_counts(encoded)
    out = {"raw": raw, "per_token": raw / n}
    if scores.token is not None:
        drop = np.array([float(scores.tokens_of(i)[r, choice_positions(e)].double().sum())
                         for i, e in enumerate(encoded)])
        out["raw_no_choice"] = raw - drop
        out["per_token_no_choice"] = (raw - drop) / np.maximum(n - 2, 1)
    return out


def bucket_means_per_token(profile: "Profile") -> dict[tuple[str, int], float]:
    """Mean per-token influence of each training bucket ``(domain, level)`` on the two domain-mean
    targets summed (positive = helpful); the influence-guided arm weights levels by these (the arms
    fix a token budget, so a token's worth is what a reweighting moves)."""
    from .pipeline import ensure_scores

    scores = ensure_scores(profile)
    train = load_split(profile, "train")
    enc = encode(profile, train, ensure_tokenizer(profile))
    total = sum(example_variants(scores, enc, d)["per_token"] for d in DOMAINS)
    acc: dict[tuple[str, int], list[float]] = {}
    for rec, v in zip(train, total):
        acc.setdefault((rec["domain"], int(rec["difficulty"])), []).append(float(v))
    return {k: float(np.mean(v)) for k, v in sorted(acc.items())}


# ------------------------------------------------------------------- restricted-loss segments
def _segment_examples(encoded: Sequence[Mapping]) -> tuple[list[dict], list[tuple[int, int, str, int]]]:
    """One pseudo-example per (example, segment) with the loss masked to that segment's tokens,
    and ``(example index, segment index, kind, n tokens)`` for each."""
    pseudo, index = [], []
    for i, e in enumerate(encoded):
        lab = e["labels"]
        for k, kind in enumerate(e["segment_kinds"]):
            keep = (e["segment_ids"] == k) & (lab != IGNORE_INDEX)
            n = int(keep.sum())
            if n == 0:
                continue
            labels = torch.full_like(lab, IGNORE_INDEX)
            labels[keep] = lab[keep]
            pseudo.append({**e, "id": f"{e['id']}/seg{k}", "labels": labels})
            index.append((i, k, kind, n))
    return pseudo, index


def restricted_segment_scores(profile: "Profile", records: Sequence[Mapping]) -> dict[str, tuple[list, list]]:
    """Per query domain, per training example of ``records``: the per-token influence of each
    segment with the training loss restricted to it (score of the masked example over its token
    count), and the segments' kinds; ``{domain: (values [K_i] arrays, kinds lists)}``.

    Cached in ``runs/<profile>/scores/restricted/``; one scoring pass over the pseudo-examples.
    """
    from infra_lib.scores import ScoreConfig, compute_scores

    tok = ensure_tokenizer(profile)
    enc = encode(profile, records, tok)
    pseudo, index = _segment_examples(enc)
    factors = ensure_factors(profile)
    queries = load_queries(profile)
    cfg = ScoreConfig(aggregation="mean", groups={d: [q["id"] for q in queries[d]] for d in DOMAINS})
    out = profile_dir(profile.name) / "scores" / "restricted"
    key = config_hash(cfg, factors.config, factors.fingerprint, [p["id"] for p in pseudo])
    s = _scores_cached(out, key)
    if s is None:
        model, _ = _model_and_tokenizer(profile)
        torch.set_num_threads(profile.threads)
        q = encode(profile, queries["math"] + queries["code"], tok)
        _log(f"restricted-loss segment scores: {len(pseudo)} segments of {len(enc)} examples")
        s = compute_scores(model, factors, q, pseudo, cfg, out_dir=out)
        _stamp(out, key)
    result = {}
    for d in DOMAINS:
        vals = s.example[s.row_ids.index(d)].double().numpy()
        values: list[list[float]] = [[] for _ in enc]
        kinds: list[list[str]] = [[] for _ in enc]
        for (i, _k, kind, n), v in zip(index, vals):
            values[i].append(v / n)
            kinds[i].append(kind)
        result[d] = ([np.asarray(v) for v in values], kinds)
    return result


# ---------------------------------------------------------------- other queries, other models
def domains_without_greedy_queries(profile: "Profile") -> list[str]:
    """The domains whose greedy D_correct is empty (the canonical model solved none of their
    query-split problems greedily): :func:`ensure_greedy_query_scores` has no target there."""
    from .pipeline import ensure_eval

    ev = ensure_eval(profile)
    return [d for d in DOMAINS if not (ev / f"queries_greedy_{d}.jsonl").read_text().strip()]


def ensure_greedy_query_scores(profile: "Profile"):
    """Example scores of the canonical model with the **greedy** D_correct as the two targets
    (``runs/<profile>/scores/greedy/``): the robustness row beside the sampled queries."""
    from infra_lib.records import load_records
    from infra_lib.scores import ScoreConfig, compute_scores

    from .pipeline import ensure_eval

    ev = ensure_eval(profile)
    queries = {d: load_records(ev / f"queries_greedy_{d}.jsonl") for d in DOMAINS}
    empty = [d for d in DOMAINS if not queries[d]]
    if empty:
        raise RuntimeError(f"no correct greedy {', '.join(empty)} generations on the query split ({ev})")
    factors = ensure_factors(profile)
    cfg = ScoreConfig(aggregation="mean", groups={d: [q["id"] for q in queries[d]] for d in DOMAINS})
    out = profile_dir(profile.name) / "scores" / "greedy"
    key = config_hash(cfg, factors.config, factors.fingerprint, profile.max_length)
    s = _scores_cached(out, key)
    if s is None:
        model, tok = _model_and_tokenizer(profile)
        torch.set_num_threads(profile.threads)
        s = compute_scores(model, factors, encode(profile, queries["math"] + queries["code"], tok),
                           encode(profile, load_split(profile, "train"), tok), cfg, out_dir=out)
        _stamp(out, key)
    return s


def trend_models(profile: "Profile") -> list[tuple[str, int]]:
    """The other models the main trend is repeated on: ``(arm, seed)`` pairs of ``profile.trend_models``."""
    out = []
    for spec in profile.trend_models:
        arm, _, seed = spec.partition("@")
        out.append((arm, int(seed)))
    return out


def ensure_model_scores(profile: "Profile", model_dir: str | Path, out_dir: str | Path):
    """Factors and example scores of another model of the study (an arm run) on the training
    split, with the canonical model's D_correct as the two targets (the same queries for every
    model, so only the model changes). Cached in ``out_dir/{factors,scores}``."""
    from infra_lib.factors import factors_exist, fit_factors, load_factors
    from infra_lib.loading import load_model
    from infra_lib.scores import ScoreConfig, compute_scores

    out_dir = Path(out_dir)
    tok = ensure_tokenizer(profile)
    queries = load_queries(profile)
    cfg = ScoreConfig(aggregation="mean", groups={d: [q["id"] for q in queries[d]] for d in DOMAINS})
    model = load_model(model_dir)
    torch.set_num_threads(profile.threads)
    train = encode(profile, load_split(profile, "train"), tok)
    fdir = out_dir / "factors"
    factors = None
    if factors_exist(fdir):
        try:
            factors = load_factors(fdir, model=model)
            if factors.config != profile.factors:
                factors = None
        except ValueError:
            factors = None
    if factors is None:
        _log(f"factors of {model_dir}")
        factors = fit_factors(model, train, profile.factors, out_dir=fdir)
    sdir = out_dir / "scores"
    key = config_hash(cfg, factors.config, factors.fingerprint, profile.max_length)
    s = _scores_cached(sdir, key)
    if s is None:
        s = compute_scores(model, factors, encode(profile, queries["math"] + queries["code"], tok), train, cfg,
                           out_dir=sdir)
        _stamp(sdir, key)
    return s


# ------------------------------------------------------------------------------------ trends
TREND_PAIRS = (
    # (train domain, query domain, paper's sign, claim, primary)
    ("math", "math", +1, "harder math examples help math reasoning more", True),
    ("math", "code", +1, "harder math examples help code reasoning more", True),
    ("code", "code", -1, "easier code examples help code reasoning more", True),
    ("code", "math", -1, "easier code examples help math reasoning more (no claim in the paper)", False),
)
"""The cross-domain trends: Spearman(level, influence) within the training domain on the query
domain's target, with the paper's sign."""


def difficulty_trends(variants: Mapping[str, Mapping[str, np.ndarray]], records: Sequence[Mapping], *,
                      seed: int = 0, n_boot: int = 2000):
    """Spearman's rho of difficulty vs influence for every pair of :data:`TREND_PAIRS` and every
    score variant. ``variants[query domain][variant]``: [n_train] scores (:func:`example_variants`).
    Returns a DataFrame ``train, query, variant, value, lo, hi, estimate``."""
    import pandas as pd

    from .analysis import difficulty_trend

    rows = []
    for tr, q, *_ in TREND_PAIRS:
        for var, x in variants[q].items():
            e = difficulty_trend(x, records, tr, seed=seed, n_boot=n_boot)
            rows.append({"train": tr, "query": q, "variant": var, "value": e.value, "lo": e.lo, "hi": e.hi, "estimate": e})
    return pd.DataFrame(rows)


def other_model_trends(profile: "Profile", *, n_boot: int = 1000):
    """The main trends (raw and per-token) on the canonical model and on each model of
    ``profile.trend_models`` (trained and evaluated by the arms' cache if needed), all with the
    canonical model's queries. Returns a DataFrame ``model, train, query, variant, value, lo, hi``
    with ``model`` like ``baseline@0``."""
    import pandas as pd

    from . import arms
    from .pipeline import ensure_scores

    train = load_split(profile, "train")
    enc = encode(profile, train, ensure_tokenizer(profile))
    specs = [arms.arm_at(profile, s) for s in profile.trend_models]
    runs = arms.ensure_run_list(profile, specs, profile.arms.workers)
    models = [("baseline@0", ensure_scores(profile))]
    for row in runs.itertuples():
        out = Path(row.model_dir).parent / "attribution"
        if Path(row.model_dir) == profile_dir(profile.name) / "model":
            continue
        models.append((f"{row.arm}@{row.seed}", ensure_model_scores(profile, row.model_dir, out)))
    frames = []
    for name, s in models:
        v = {d: {k: x for k, x in example_variants(s, enc, d).items() if k in ("raw", "per_token")} for d in DOMAINS}
        frames.append(difficulty_trends(v, train, seed=profile.seed, n_boot=n_boot).assign(model=name))
    return pd.concat(frames, ignore_index=True).drop(columns="estimate")


def model_mixes(profile: "Profile") -> dict[str, dict[str, tuple[float, ...]]]:
    """The SFT level weights (levels 1-5) each model of the trend comparison was trained on:
    ``{"baseline@0": {"math": (...), "code": (...)}, "flipped@0": ...}``, the canonical model first."""
    from . import arms

    out = {}
    for spec in ("baseline@0", *profile.trend_models):
        sft = arms.arm_at(profile, spec).sft
        out[spec] = {"math": tuple(sft.math_level_weights), "code": tuple(sft.code_level_weights)}
    return out


def model_trend_rows(frame, *, n_boot: int = 1000, skip: Sequence[str] = ("baseline@0",)) -> list[dict]:
    """Secondary findings rows of the trends on other models: one per model of ``frame`` (the
    frame of :func:`other_model_trends`) and pair of :data:`TREND_PAIRS`, judged like the primary
    rows (raw and per token); each row names its ``model``. ``skip``: models whose rows are
    elsewhere (the canonical model's are the chapter's primary rows)."""
    from .analysis import Estimate, trend_row

    rows = []
    for model in dict.fromkeys(frame["model"]):
        if model in skip:
            continue
        for tr, q, sign, claim, _ in TREND_PAIRS:
            t = frame[(frame["model"] == model) & (frame["train"] == tr) & (frame["query"] == q)].set_index("variant")
            est = {v: Estimate(float(t.at[v, "value"]), float(t.at[v, "lo"]), float(t.at[v, "hi"]), n_boot)
                   for v in ("raw", "per_token")}
            paper = ("negative" if sign < 0 else "positive") + (" (no claim; read against it)" if "no claim" in claim else "")
            rows.append(trend_row(claim, f"... on the {model} model (its own factors, the canonical queries), "
                                         f"{tr} train, {q} queries", est["raw"], est["per_token"], sign,
                                  paper=paper, primary=False, model=model))
    return rows


def mix_trend(weights: Sequence[float]) -> float:
    """Spearman of level (1, 2, ...) vs a mix's level weights: -1 = the easiest level weighted
    most, +1 = the hardest."""
    from scipy import stats

    return float(stats.spearmanr(np.arange(1, len(weights) + 1), np.asarray(weights, dtype=float)).statistic)


def trend_shift_table(frame, mixes: Mapping[str, Mapping[str, Sequence[float]]]):
    """Does a trend follow the training mix? Per pair of :data:`TREND_PAIRS` and score variant:
    the trend of every model, the spread of the baseline seeds (max - min), and for each other
    arm its trend minus the mean of the baseline seeds beside its training domain's
    :func:`mix_trend` (the baseline's first).

    ``frame``: :func:`other_model_trends`; ``mixes``: :func:`model_mixes`. Returns a DataFrame
    indexed by ``train, query, variant``."""
    import pandas as pd

    rows = []
    for tr, q, *_ in TREND_PAIRS:
        for var in ("raw", "per_token"):
            t = frame[(frame["train"] == tr) & (frame["query"] == q) & (frame["variant"] == var)]
            val = dict(zip(t["model"], t["value"]))
            base = [v for m, v in val.items() if m.startswith("baseline@")]
            row = {"train": tr, "query": q, "variant": var, "baseline mix trend": mix_trend(mixes["baseline@0"][tr]),
                   **val, "baseline spread": max(base) - min(base)}
            for m, v in val.items():
                if not m.startswith("baseline@"):
                    row[f"{m} mix trend"] = mix_trend(mixes[m][tr])
                    row[f"{m} - baseline mean"] = v - float(np.mean(base))
            rows.append(row)
    return pd.DataFrame(rows).set_index(["train", "query", "variant"])
# ------------------------------------------------------------------ planted copies, real model
def copy_ranks(train_scores: np.ndarray, copy_scores: np.ndarray) -> np.ndarray:
    """Rank (1 = top) of each query's own copy among the training examples and all the copies.

    ``train_scores``: [R, N] query r's score on each training example; ``copy_scores``: [R, R]
    query r's score on the copy of query c (its own copy on the diagonal). Ties count against the
    copy (an example scoring as high as the copy ranks above it)."""
    train_scores, copy_scores = np.asarray(train_scores, dtype=float), np.asarray(copy_scores, dtype=float)
    R = copy_scores.shape[0]
    if copy_scores.shape != (R, R) or train_scores.shape[0] != R:
        raise ValueError(f"need train scores [R, N] and copy scores [R, R], got {train_scores.shape} and {copy_scores.shape}")
    own = np.diag(copy_scores)
    others = np.where(np.eye(R, dtype=bool), -np.inf, copy_scores)
    return 1 + (train_scores >= own[:, None]).sum(1) + (others >= own[:, None]).sum(1)


def planted_copies(profile: "Profile", k: int = 10) -> dict:
    """Planted copies on the canonical model, without retraining: a copy of each individually
    scored query (:func:`pipeline.ensure_query_scores`) joins the scored pool beside the training
    split, and each query's own copy should rank in its top ``k``. The model never trained on the
    copies, so this checks that the scores single out an identical example, not that they predict
    retraining (the micro-model check of chapter 05 retrains). Scores of the copies are cached in
    ``runs/<profile>/scores/planted/``. Returns ``{"k", "ids", "ranks", "hits", "pool"}``."""
    from infra_lib.scores import ScoreConfig, compute_scores

    from .pipeline import ensure_query_scores

    single = ensure_query_scores(profile)
    queries = load_queries(profile)
    chosen = [q for d in DOMAINS for q in queries[d][: profile.spread_queries]]
    copies = [{**q, "id": f"planted-{q['id']}"} for q in chosen]
    factors = ensure_factors(profile)
    cfg = ScoreConfig(aggregation="per-query")
    out = profile_dir(profile.name) / "scores" / "planted"
    key = config_hash(cfg, factors.config, factors.fingerprint, profile.max_length, [q["id"] for q in chosen])
    s = _scores_cached(out, key)
    if s is None:
        model, tok = _model_and_tokenizer(profile)
        torch.set_num_threads(profile.threads)
        s = compute_scores(model, factors, encode(profile, chosen, tok), encode(profile, copies, tok), cfg, out_dir=out)
        _stamp(out, key)
    ids = [q["id"] for q in chosen]
    train_scores = np.stack([single.example[single.row_ids.index(i)].double().numpy() for i in ids])
    cols = [s.train_ids.index(f"planted-{i}") for i in ids]
    copy_scores = np.stack([s.example[s.row_ids.index(i)].double().numpy()[cols] for i in ids])
    ranks = copy_ranks(train_scores, copy_scores)
    return {"k": k, "ids": ids, "ranks": ranks.tolist(), "hits": [bool(r <= k) for r in ranks],
            "pool": train_scores.shape[1] + len(ids)}
