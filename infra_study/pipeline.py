"""The canonical pipeline of a profile, one cached stage per function.

Each ``ensure_*`` returns the artifact of its stage under ``runs/<profile>/``, computing it only
when no valid one exists (each artifact is written with the hash of the config that produced
it); each logs whether it reuses or computes. Notebooks call these, so any notebook can run
first and a second ``make book`` reuses everything still valid.

Stages: corpus -> tokenizer -> base -> model (SFT, the canonical seed) -> eval (accuracy, D_correct)
-> factors (EK-FAC on the SFT training split) -> scores (two domain-mean queries, token and
segment scores) and per-query scores for a few queries.
"""
from __future__ import annotations

import platform
import sys
import random
import re
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import numpy as np
import torch

from infra_lib.io import config_hash, read_json
from infra_lib.records import load_records

from .corpus import build_corpus
from .paths import profile_dir

if TYPE_CHECKING:  # a type only: profiles compose the configs of every stage, pipeline included
    from .profiles import Profile

__all__ = [
    "ensure_corpus", "load_split", "ensure_tokenizer", "ensure_base", "ensure_model", "ensure_eval",
    "load_queries", "encode", "ensure_factors", "ensure_scores", "ensure_query_scores",
    "per_query_bucket_means", "influence_bucket_means", "segment_scores_by_kind", "response_tokens",
    "response_token_scores", "top_heatmap_items", "pick_examples", "provenance", "provenance_line",
    "generation_examples", "ensure_bench", "bench_facts", "spread_over_levels", "answer_token", "ensure_step_scores",
    "spread_query_ids", "step_explorer_inputs",
]

DOMAINS = ("math", "code")


def _log(msg: str) -> None:
    print(f"[pipeline] {msg}", file=sys.stderr, flush=True)


def ensure_corpus(profile: Profile) -> dict[str, Path]:
    """``runs/<profile>/corpus/{base,train,query,test}.jsonl``, generated once per config."""
    if profile.pretrained is not None:  # GSM8K-derived math, generated code, HumanEval
        from .pretrained_stages import ensure_pretrained_corpus

        return ensure_pretrained_corpus(profile)
    return build_corpus(profile.corpus, profile_dir(profile.name) / "corpus")


def load_split(profile: Profile, split: str) -> list[dict]:
    """The validated records of one corpus split (``base``, ``train``, ``query``, ``test``)."""
    paths = ensure_corpus(profile)
    if split not in paths:
        raise KeyError(f"unknown split {split!r}; have {sorted(paths)}")
    return load_records(paths[split])


def ensure_tokenizer(profile: Profile):
    """The BPE tokenizer trained on the corpus (``runs/<profile>/tokenizer/``)."""
    from .tokenizer import load_tokenizer, tokenizer_exists, train_tokenizer

    if profile.pretrained is not None:  # the pretrained model's own tokenizer
        return load_tokenizer(ensure_base(profile))
    out = profile_dir(profile.name) / "tokenizer"
    from .corpus import generator_version

    key = config_hash(profile.corpus, {"vocab_size": profile.vocab_size, "generator": generator_version(profile.corpus)})
    stamp = out / "pipeline_config.json"
    if tokenizer_exists(out) and stamp.is_file() and read_json(stamp).get("config_hash") == key:
        _log(f"tokenizer: reusing {out}")
        return load_tokenizer(out)
    _log(f"tokenizer: training a {profile.vocab_size}-token BPE into {out}")
    recs = load_split(profile, "base") + load_split(profile, "train")
    train_tokenizer(recs, profile.vocab_size, out)
    from infra_lib.io import atomic_write_json, config_to_dict

    atomic_write_json(stamp, {"config_hash": key, "vocab_size": profile.vocab_size, "corpus": config_to_dict(profile.corpus)})
    return load_tokenizer(out)


def ensure_base(profile: Profile) -> Path:
    """The base checkpoint (``runs/<profile>/base/``): answer-only mix, trained once per profile."""
    from .training import train_base

    if profile.pretrained is not None:  # no base stage: the converted pretrained checkpoint
        from .pretrained_stages import ensure_pretrained_base

        return ensure_pretrained_base(profile)
    tok = ensure_tokenizer(profile)
    return train_base(load_split(profile, "base"), tok, profile.model, profile.base,
                      profile_dir(profile.name) / "base")


def ensure_model(profile: Profile) -> Path:
    """The canonical fine-tuned model (``runs/<profile>/model/``): SFT from the base on the train split."""
    from .training import train_sft

    base = ensure_base(profile)
    return train_sft(base, load_split(profile, "train"), profile.sft, profile_dir(profile.name) / "model")


def ensure_eval(profile: Profile) -> Path:
    """``runs/<profile>/eval/``: test accuracy, gold log-likelihood, and D_correct per domain."""
    from .evaluation import evaluate_model

    model_dir = ensure_model(profile)
    out = profile_dir(profile.name) / "eval"
    evaluate_model(model_dir, out, load_split(profile, "test"), load_split(profile, "query"), profile.eval,
                   across_levels=profile.pretrained is not None)
    return out


def load_queries(profile: Profile) -> dict[str, list[dict]]:
    """D_correct: the canonical model's own correct generations on the query split, per domain."""
    out = ensure_eval(profile)
    qs = {d: load_records(out / f"queries_{d}.jsonl") for d in DOMAINS}
    for d, q in qs.items():
        if not q:
            raise RuntimeError(f"no correct {d} generations on the query split ({out}); attribution needs at least one")
    return qs


_LOADED: dict = {}


def _model_and_tokenizer(profile: Profile, dtype=torch.float32):
    """The canonical model (eval mode) and its tokenizer. The last one loaded is kept for the
    process, so that the attribution passes of one notebook share one model object and with it the
    library's prefix cache (the frozen lower layers' outputs, kept per model); a new checkpoint in
    the folder (another training) is loaded afresh."""
    from .model import load_model
    from .tokenizer import load_tokenizer

    d = ensure_model(profile)
    stamp = d / "train_config.json"
    key = (str(d.resolve()), stamp.stat().st_mtime_ns if stamp.is_file() else None, str(dtype))
    if _LOADED.get("key") != key:
        _LOADED.clear()
        model = load_model(d, dtype=dtype)
        model.eval()
        _LOADED.update(key=key, model=model, tokenizer=load_tokenizer(d))
    return _LOADED["model"], _LOADED["tokenizer"]


def encode(profile: Profile, records: Sequence[Mapping], tokenizer) -> list[dict]:
    """Records as the kernels' examples (``input_ids``, ``labels``, ``segment_ids``), never truncated."""
    from infra_lib.data import encode_records

    return encode_records(records, tokenizer, profile.max_length, on_too_long="error")


def ensure_factors(profile: Profile):
    """EK-FAC (by default) factors of the canonical model on the SFT training split."""
    from infra_lib.factors import factors_exist, fit_factors, load_factors

    from .pretrained_stages import factor_config

    model, tok = _model_and_tokenizer(profile)
    out = profile_dir(profile.name) / "factors"
    cfg = factor_config(profile)
    if factors_exist(out):
        try:
            f = load_factors(out, model=model)
            if f.config == cfg:
                _log(f"factors: reusing {out}")
                return f
            _log("factors: config changed, refitting")
        except ValueError as exc:
            _log(f"factors: refitting ({exc})")
    torch.set_num_threads(profile.threads)
    train = encode(profile, load_split(profile, "train"), tok)
    return fit_factors(model, train, cfg, out_dir=out)


def _scores_cached(out: Path, key: str):
    from infra_lib.scores import load_scores, scores_exist

    stamp = out / "pipeline_key.json"
    if scores_exist(out) and stamp.is_file() and read_json(stamp).get("key") == key:
        _log(f"scores: reusing {out}")
        return load_scores(out)
    return None


def _stamp(out: Path, key: str) -> None:
    from infra_lib.io import atomic_write_json

    atomic_write_json(out / "pipeline_key.json", {"key": key})


def ensure_scores(profile: Profile):
    """Scores of every training example on the two domain-mean queries (rows ``math``, ``code``),
    with per-token and per-segment scores (``runs/<profile>/scores/mean/``), and in the same pass
    the individually scored queries of :func:`ensure_query_scores` with their steps (the training
    gradients, the costly side, computed once). Positive = helpful."""
    from infra_lib.scores import ScoreConfig, compute_scores

    factors = ensure_factors(profile)
    queries = load_queries(profile)
    groups = {d: [q["id"] for q in queries[d]] for d in DOMAINS}
    cfg = ScoreConfig(aggregation="mean", groups=groups, token_scores=True, segment_scores=True,
                      query_segment_scores=True,
                      individual=tuple(q["id"] for q in _individual_queries(queries, profile.spread_queries)))
    out = profile_dir(profile.name) / "scores" / "mean"
    key = config_hash(cfg, factors.config, factors.fingerprint, profile.max_length)
    cached = _scores_cached(out, key)
    if cached is not None:
        return cached
    model, tok = _model_and_tokenizer(profile)
    torch.set_num_threads(profile.threads)
    q = encode(profile, queries["math"] + queries["code"], tok)
    train = encode(profile, load_split(profile, "train"), tok)
    s = compute_scores(model, factors, q, train, cfg, out_dir=out)
    _stamp(out, key)
    return s


EXPLORER_QUERIES = 3
"""Queries per domain, spread over levels, of the step explorer (chapter 05)."""


def ensure_query_scores(profile: Profile, explorer_per_domain: int = EXPLORER_QUERIES):
    """Individually scored queries: the first ``profile.spread_queries`` queries of each domain and
    the step explorer's ``explorer_per_domain`` per domain (:func:`spread_over_levels`), each with a
    row named by its id and one row per step of its response (``query_segment_scores``). With the
    default explorer size they come from the pass of :func:`ensure_scores`; otherwise from a pass of
    their own (``scores/per_query/``). Select rows with :func:`spread_query_ids` or ``steps_of``."""
    from infra_lib.scores import ScoreConfig

    if explorer_per_domain == EXPLORER_QUERIES:
        return ensure_scores(profile).single_queries()
    chosen = _individual_queries(load_queries(profile), profile.spread_queries, explorer_per_domain)
    return _chosen_query_scores(profile, chosen, ScoreConfig(aggregation="per-query", query_segment_scores=True),
                                "per_query")


def _individual_queries(queries: Mapping[str, list[dict]], spread: int,
                        explorer_per_domain: int = EXPLORER_QUERIES) -> list[dict]:
    """The first ``spread`` queries of each domain, then the step explorer's not among them, each once."""
    chosen = {q["id"]: q for q in _spread_queries(queries, spread)}
    for d in DOMAINS:
        for q in spread_over_levels(queries[d], explorer_per_domain):
            chosen.setdefault(q["id"], q)
    return list(chosen.values())


def _spread_queries(queries: Mapping[str, list[dict]], spread: int) -> list[dict]:
    """The first ``spread`` queries of each domain, domain by domain."""
    return [q for d in DOMAINS for q in queries[d][:spread]]


def spread_query_ids(profile: Profile) -> list[str]:
    """Ids of the first ``profile.spread_queries`` queries of each domain (the per-query spread rows)."""
    return [q["id"] for q in _spread_queries(load_queries(profile), profile.spread_queries)]


def _chosen_query_scores(profile: Profile, chosen: Sequence[Mapping], cfg, subdir: str):
    """Scores of the ``chosen`` query records against the training split, cached in ``scores/<subdir>/``."""
    from infra_lib.scores import compute_scores

    factors = ensure_factors(profile)
    out = profile_dir(profile.name) / "scores" / subdir
    key = config_hash(cfg, factors.config, factors.fingerprint, profile.max_length, [q["id"] for q in chosen])
    cached = _scores_cached(out, key)
    if cached is not None:
        return cached
    model, tok = _model_and_tokenizer(profile)
    torch.set_num_threads(profile.threads)
    s = compute_scores(model, factors, encode(profile, chosen, tok), encode(profile, load_split(profile, "train"), tok),
                       cfg, out_dir=out)
    _stamp(out, key)
    return s


def influence_bucket_means(profile: Profile) -> dict[tuple[str, int], float]:
    """Mean influence of each training bucket ``(domain, level)`` on the query split's two
    domain-mean targets summed (``math`` + ``code`` rows of :func:`ensure_scores`); positive =
    helpful. The influence-guided arm's level weights come from these (the test split is never seen)."""
    scores = ensure_scores(profile)
    train = load_split(profile, "train")
    total = sum(scores.example[scores.row_ids.index(d)].double() for d in DOMAINS).numpy()
    acc: dict[tuple[str, int], list[float]] = {}
    for r, v in zip(train, total):
        acc.setdefault((r["domain"], int(r["difficulty"])), []).append(float(v))
    return {k: float(np.mean(v)) for k, v in sorted(acc.items())}


def segment_scores_by_kind(profile: Profile, scores, records: Sequence[Mapping], row: str) -> tuple[list[np.ndarray], list[list[str]]]:
    """Per training example, the per-token-normalised score of each response segment on query row
    ``row`` ([K_i] float64, the segment's token scores averaged) and its kind (``step``,
    ``exploratory``, ``answer``). Segments holding no token are left out."""
    tok = ensure_tokenizer(profile)
    enc = encode(profile, records, tok)
    r = scores.row_ids.index(row)
    values, kinds = [], []
    for i, e in enumerate(enc):
        seg = e["segment_ids"]
        means = scores.segments_of(i, mean=True)[r].double().numpy()
        counts = torch.bincount(seg[seg >= 0], minlength=len(means))[: len(means)].numpy()
        keep = counts > 0
        values.append(means[keep])
        kinds.append([k for k, ok in zip(e["segment_kinds"][: len(means)], keep) if ok])
    return values, kinds


def per_query_bucket_means(profile: Profile, scores, train: Sequence[Mapping]):
    """Mean influence per training bucket (``"<domain> L<level>"``) for the two domain-mean rows of
    ``scores`` (``query == "mean"``) and for each individually scored query. Columns ``query,
    query_domain, bucket, mean``."""
    import pandas as pd

    single = ensure_query_scores(profile)
    queries = load_queries(profile)
    dom_of = {q["id"]: d for d in DOMAINS for q in queries[d]}
    spread_ids = spread_query_ids(profile)
    buckets = [f"{r['domain']} L{r['difficulty']}" for r in train]
    rows = []
    for src, ids, label in ((scores, DOMAINS, lambda rid: ("mean", rid)), (single, spread_ids, lambda rid: (rid, dom_of[rid]))):
        for rid in ids:
            vals = src.example[src.row_ids.index(rid)].double().numpy()
            q, qd = label(rid)
            df = pd.DataFrame({"bucket": buckets, "v": vals}).groupby("bucket", sort=False)["v"].mean()
            rows += [{"query": q, "query_domain": qd, "bucket": b, "mean": v} for b, v in df.items()]
    return pd.DataFrame(rows)


_FENCE = re.compile(r"```[^\n]*\n(.*?)```", re.S)


def response_tokens(profile: Profile, records: Sequence[Mapping]) -> list[dict]:
    """Per training record: the decoded response tokens, their positions in ``input_ids``, whether
    each lies inside a fenced code block, its character span in the response, and its category by
    the whole word it falls in (``analysis.word_categories``).

    Token scores are positional (the activation and output gradient at position ``t``); the score
    at position ``t`` is attributed to the input token at ``t``.
    """
    from .analysis import word_categories

    tok = ensure_tokenizer(profile)
    enc = encode(profile, records, tok)
    out = []
    for rec, e in zip(records, enc):
        resp = rec["response"]
        r = tok(resp, add_special_tokens=False, return_offsets_mapping=True)
        ids, offs = r["input_ids"], r["offset_mapping"]
        start = int((e["labels"] != -100).nonzero()[0])
        if e["input_ids"][start:start + len(ids)].tolist() != ids:
            raise RuntimeError(f"{rec['id']}: response tokens do not line up with the encoded example")
        code_spans = [(m.start(1), m.end(1)) for m in _FENCE.finditer(resp)]
        in_code = [any(a <= s < b for a, b in code_spans) for s, _ in offs]
        strings = [tok.decode([i]) for i in ids]
        out.append({
            "id": rec["id"], "tokens": strings, "positions": list(range(start, start + len(ids))),
            "in_code": in_code, "offsets": [tuple(o) for o in offs], "categories": word_categories(resp, offs),
        })
    return out


def response_token_scores(scores, tokens: Sequence[Mapping], row: str) -> list[np.ndarray]:
    """Per training example, the scores [n_response_tokens] of its response tokens on query row ``row``."""
    r = scores.row_ids.index(row)
    return [scores.tokens_of(i)[r, t["positions"]].double().numpy() for i, t in enumerate(tokens)]


def top_heatmap_items(scores, tokens: Sequence[Mapping], records: Sequence[Mapping], row: str, k: int = 3,
                      among: Sequence[int] | None = None) -> list[dict]:
    """The ``k`` training examples with the highest example score on ``row`` (only those whose
    index is in ``among``, if given), as heat-map items."""
    r = scores.row_ids.index(row)
    ex = scores.example[r].clone()
    if among is not None:
        keep = torch.zeros(ex.shape[0], dtype=torch.bool)
        keep[list(among)] = True
        ex[~keep] = -torch.inf
        k = min(k, int(keep.sum()))
    order = torch.argsort(ex, descending=True)[:k].tolist()
    items = []
    for i in order:
        ts = scores.tokens_of(i)[r, tokens[i]["positions"]].double().numpy()
        rec = records[i]
        items.append({"title": f"{rec['id']} ({rec['domain']} L{rec['difficulty']}), score {float(scores.example[r, i]):+.3g}",
                      "tokens": tokens[i]["tokens"], "scores": ts})
    return items


def pick_examples(records: Sequence[Mapping], per_domain: int = 2, exploratory: bool | None = None,
                  seed: int = 0) -> list[Mapping]:
    """A reproducible handful of records per domain for display (``exploratory=True``: only CoTs
    with an exploratory segment; ``False``: only without; ``None``: any)."""
    rng = random.Random(seed)
    out = []
    for domain in DOMAINS:
        pool = [r for r in records if r["domain"] == domain and (
            exploratory is None or any(k == "exploratory" for _, _, k in r["meta"]["segments"]) == exploratory)]
        pool.sort(key=lambda r: (r["difficulty"], r["id"]))
        out += rng.sample(pool, min(per_domain, len(pool)))
    return out


def provenance(profile: Profile, wall_s: float) -> dict:
    """Seed, profile, hardware and wall time, written beside every findings file."""
    return {"seed": profile.seed, "profile": profile.name, "wall_s": round(wall_s, 1),
            "hardware": f"{platform.machine()}, {torch.get_num_threads()} torch threads, {platform.platform()}",
            "torch": torch.__version__, "finished": time.strftime("%Y-%m-%d %H:%M:%S")}


def provenance_line(profile: Profile, wall_s: float) -> str:
    """One line of provenance for the end of a notebook."""
    p = provenance(profile, wall_s)
    return f"profile={p['profile']} seed={p['seed']} wall={p['wall_s']}s hardware: {p['hardware']} torch {p['torch']}"


def generation_examples(profile: Profile, per_domain: int = 1) -> list[dict]:
    """From the canonical model's test generations: ``per_domain`` correct and wrong ones per
    domain (lowest level first), each with its prompt."""
    import json

    out_dir = ensure_eval(profile)
    rows = [json.loads(l) for l in (out_dir / "test_generations.jsonl").read_text().splitlines() if l.strip()]
    prompts = {r["id"]: r["prompt"] for r in load_split(profile, "test")}
    picked = []
    for d in DOMAINS:
        for ok in (True, False):
            cand = sorted((r for r in rows if r["domain"] == d and r["correct"] == ok), key=lambda r: (r["difficulty"], r["id"]))
            picked += [{**r, "prompt": prompts[r["id"]]} for r in cand[:per_domain]]
    return picked


def bench_facts(bench: dict) -> dict[str, Any]:
    """The bench JSON of :func:`ensure_bench` as a small table for the page: Pearson, our pipeline's
    ratio to kronfluence and each peer's (or why a peer was not timed), multiples of the floor, the
    token-score ratio when it was timed, and the repeats the minima are over."""
    facts = {"Pearson (example scores)": round(bench["pearson_example"], 6),
             "pipeline ratio ours / kronfluence": round(bench["pipeline_ratio_vs_kronfluence"], 3),
             "ours / floor": round(bench["pipeline_floor_multiple"], 2),
             "kronfluence / floor": round(bench["kronfluence_pipeline_floor_multiple"], 2),
             "repeats (minimum over)": bench.get("repeats")}
    if bench.get("token_ratio_vs_kronfluence") is not None:
        facts["token scores ratio ours / kronfluence"] = round(bench["token_ratio_vs_kronfluence"], 3)
    for peer in ("dattri", "bergson"):
        ratio = bench.get(f"pipeline_ratio_vs_{peer}")
        facts[f"pipeline ratio ours / {peer}"] = (round(ratio, 3) if ratio is not None else
                                                  bench.get("skipped", {}).get(peer, "not timed (quick bench)"))
        if bench.get(f"pearson_example_vs_{peer}") is not None:
            facts[f"Pearson ours vs {peer} (example)"] = round(bench[f"pearson_example_vs_{peer}"], 4)
    return facts


def ensure_bench(profile: Profile, timeout_s: int = 900) -> dict:
    """``runs/<profile>/bench/vs_kronfluence.json``: the quick kronfluence bench
    (``bench/vs_kronfluence.py --quick``) on the profile's canonical model, run once per profile
    when the JSON is missing (each library in its own child process; needs kronfluence and a checkout
    with ``bench/``). The validation chapter reads it rather than timing anything itself."""
    import importlib.util
    import json
    import os
    import subprocess
    import sys

    from .paths import project_root

    out = profile_dir(profile.name) / "bench"
    path = out / "vs_kronfluence.json"
    if path.is_file():
        _log(f"bench: reusing {path}")
        return read_json(path)
    root = project_root()
    script = None if root is None else root / "bench" / "vs_kronfluence.py"
    if script is None or not script.is_file():
        raise RuntimeError(f"no bench/vs_kronfluence.py beside the package, and no {path}: run the bench from a checkout")
    if importlib.util.find_spec("kronfluence") is None:
        raise RuntimeError(f"no {path}, and kronfluence is not installed to make it "
                           "(pip install --no-deps kronfluence==1.0.1; see the Makefile)")
    model_dir = ensure_model(profile)
    cmd = [sys.executable, str(script), "--quick", "--model", str(model_dir), "--work", str(out / "work"),
           "--json", str(path), "--threads", str(profile.threads)]
    if profile.name == "smoke":  # seconds: a handful of short sequences, both libraries in this process
        import importlib.util as iu

        cmd += ["--n-train", "16", "--n-query", "4", "--seq", "32", "--in-process"]
        _log(f"bench: running {' '.join(cmd[1:])} (in this process)")
        spec = iu.spec_from_file_location("vs_kronfluence_bench", script)
        mod = iu.module_from_spec(spec)
        spec.loader.exec_module(mod)
        mod.main(cmd[2:])
        return json.loads(path.read_text())
    _log(f"bench: running {' '.join(cmd[1:])}")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")])}
    r = subprocess.run(cmd, cwd=str(root), env=env, capture_output=True, text=True, timeout=timeout_s)
    if r.returncode != 0 or not path.is_file():
        raise RuntimeError(f"bench failed (exit {r.returncode}):\n{r.stdout[-2000:]}\n{r.stderr[-3000:]}")
    return json.loads(path.read_text())


def answer_token(record: Mapping, offsets: Sequence[tuple[int, int]]) -> int | None:
    """Index of the first response token of the record's last ``answer`` segment (``meta.segments``
    character spans; ``offsets``: each token's span in the response), or ``None`` without one."""
    starts = [int(a) for a, _, kind in record.get("meta", {}).get("segments", []) if kind == "answer"]
    if not starts:
        return None
    return next((i for i, (_, b) in enumerate(offsets) if b > starts[-1]), None)


def spread_over_levels(records: Sequence[Mapping], n: int) -> list[dict]:
    """``n`` records spread over the difficulty levels present, the same ones on every call.

    With at least ``n`` levels: ``n`` levels evenly spaced from the lowest to the highest (1, 3, 5
    of five for ``n = 3``); with fewer, every level in turn, round after round. Within a level the
    records go in id order, a problem not yet picked first (``meta.problem_id``: several sampled
    answers to one problem count once), so the picks are different problems where there are enough.
    Returned in level order.
    """
    if n < 1:
        return []
    by_level: dict[int, list[dict]] = {}
    for r in sorted(records, key=lambda r: r["id"]):
        by_level.setdefault(int(r["difficulty"]), []).append(r)
    levels = sorted(by_level)
    if not levels:
        return []
    if n == 1:
        wanted = [levels[(len(levels) - 1) // 2]]
    elif n <= len(levels):
        wanted = [levels[round(i * (len(levels) - 1) / (n - 1))] for i in range(n)]
    else:
        wanted = [levels[i % len(levels)] for i in range(n)]
    picked, problems, ids = [], set(), set()
    for lvl in wanted:
        left = [r for r in by_level[lvl] if r["id"] not in ids]
        if not left:  # this level is used up: the next level round that still has records
            left = [r for l2 in levels for r in by_level[l2] if r["id"] not in ids]
            if not left:
                break
        fresh = [r for r in left if r.get("meta", {}).get("problem_id", r["id"]) not in problems]
        r = (fresh or left)[0]
        picked.append(r)
        ids.add(r["id"])
        problems.add(r.get("meta", {}).get("problem_id", r["id"]))
    return sorted(picked, key=lambda r: (int(r["difficulty"]), r["id"]))


def _explorer_queries(profile: Profile, per_domain: int) -> dict[str, list[dict]]:
    queries = load_queries(profile)
    return {d: spread_over_levels(queries[d], per_domain) for d in DOMAINS}


def ensure_step_scores(profile: Profile, per_domain: int = EXPLORER_QUERIES):
    """Query-side segment scores (one row per step of each query response) of ``per_domain``
    queries of each domain, spread over levels (:func:`spread_over_levels`), against the SFT
    training split, from the pass of :func:`ensure_query_scores`, which scores these queries
    beside the spread queries. Positive = helpful."""
    return ensure_query_scores(profile, per_domain)


def step_explorer_inputs(profile: Profile, domain: str, per_domain: int = 3, top_k: int = 5):
    """(queries, train examples, step scores) for ``html.render_step_explorer``: ``per_domain``
    queries of ``domain`` spread over levels (:func:`spread_over_levels`), each step's influence
    (n_steps, n_cols) over the training examples that enter some step's top ``top_k`` (only those
    are embedded), and their token heat-maps against the domain-mean query (``ensure_scores``),
    each with the token its last answer segment starts at (a long heat-map keeps it in view)."""
    from .html import ExplorerExample, ExplorerQuery, select_top_examples

    steps = ensure_step_scores(profile, per_domain)
    queries = _explorer_queries(profile, per_domain)[domain]
    train = load_split(profile, "train")
    mats = {q["id"]: steps.steps_of(q["id"], len(q["meta"]["segments"])).double().numpy() for q in queries}
    cols = sorted({int(j) for m in mats.values() for j in select_top_examples(m, top_k).ravel()})
    mean = ensure_scores(profile)
    recs = [train[j] for j in cols]
    toks = response_tokens(profile, recs)
    r = mean.row_ids.index(domain)
    examples = [ExplorerExample(rec["id"], rec["domain"], rec["difficulty"], tuple(t["tokens"]),
                                tuple(mean.tokens_of(j)[r, t["positions"]].double().tolist()),
                                answer_from=answer_token(rec, t["offsets"]))
                for j, rec, t in zip(cols, recs, toks)]
    return ([ExplorerQuery.from_record(q) for q in queries], examples,
            {qid: m[:, cols] for qid, m in mats.items()})
