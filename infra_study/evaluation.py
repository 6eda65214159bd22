"""Evaluation: greedy and sampled generation, grading, accuracy tables, the query sets (D_correct), gold log-likelihood.

``evaluate_model`` is the stage the pipeline calls after each SFT run. It writes into ``out_dir``
(``runs/<profile>/eval/`` for the canonical model):

- ``accuracy.json``: test-split greedy accuracy, ``{"math": {"1": 0.93, ...}, "code": {...}}`` (fractions);
- ``accuracy_sampled.json``: test-split sampled pass@1 (``EvalConfig.test_samples`` samples per
  problem at ``EvalConfig.temperature``, the mean correctness of a problem's samples), same layout;
- ``gold_loglik.json``: the mean over test problems of the summed log-likelihood (nats) of the
  gold response given the prompt, same layout (higher = the model finds the gold solution more
  likely; the paper's f on gold solutions);
- ``test_generations.jsonl`` (and ``query_generations.jsonl``): one row per problem with the
  generation, whether it is correct, and (test) its gold log-likelihood and token count, for
  paired comparisons between arms;
- ``queries_math.jsonl`` / ``queries_code.jsonl`` (when a query split is given): the model's
  *own correct* generations on the query split, sampled (``EvalConfig.samples`` per problem,
  identical texts of a problem kept once), as records in the corpus schema (D_correct);
  ``queries_greedy_<domain>.jsonl``: the correct greedy generations, a robustness target;
- ``eval_config.json``: the config, its hash, the cache key, counts and wall times.

Greedy decoding is batched with a KV cache, one (domain, level) bucket per batch with that
bucket's token cap, stopping at the end-of-turn token. Math is graded by
``corpus.grade_math(record, text)``; code by running the extracted function against the hidden
asserts in the sandbox (``grading.grade_many``); both graders can be replaced by arguments.
"""
from __future__ import annotations

import json
import sys
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping, Sequence

import torch

from infra_lib.data import IGNORE_INDEX, collate, encode_record
from infra_lib.io import atomic_write_json, atomic_write_text, config_hash, config_to_dict, read_json

__all__ = [
    "EvalConfig",
    "generate_responses",
    "next_tokens",
    "dedupe_correct",
    "grade_responses",
    "gold_loglik",
    "accuracy_table",
    "correct_generations",
    "evaluate_model",
    "eval_exists",
    "load_accuracy",
]

DOMAINS = ("math", "code")


def _log(msg: str) -> None:
    print(f"[evaluation] {msg}", file=sys.stderr, flush=True)


@dataclass(frozen=True)
class EvalConfig:
    """Greedy evaluation of one checkpoint. Saved as JSON beside the results."""

    max_new_tokens_math: int = 512
    """Upper cap on generated tokens for a math problem (a generation cut there is graded as it is)."""
    max_new_tokens_code: int = 512
    """Upper cap on generated tokens for a code problem."""
    gold_cap_factor: float | None = 1.5
    """Tighter cap per (domain, level): ``gold_cap_factor`` x the longest gold response of that
    bucket in the split, plus 16 tokens, if below the domain cap. A tiny model that loops would
    otherwise hold its whole batch to the domain cap; a generation 1.5x longer than the longest
    reference is not a correct answer here. None: domain caps only."""
    batch_size: int = 64
    """Problems decoded together (left-padded prompts, KV cache)."""
    threads: int = 1
    """torch threads for generation and log-likelihood (restored after)."""
    max_length: int = 1024
    """Longest prompt + gold response scored for the gold log-likelihood (longer ones are left out)."""
    system: str | None = None
    """Optional system message before each prompt; must match what the model was trained with."""
    samples: int = 4
    """Samples per query-split problem at ``temperature`` for D_correct (correct ones kept,
    deduplicated per problem), so that queries can contain exploration as the paper's do; the
    greedy generation is kept beside them as a robustness query set. 0: greedy queries only."""
    test_samples: int = 2
    """Samples per test problem at ``temperature`` for sampled pass@1 (the mean correctness of the
    samples), the primary accuracy; greedy accuracy is reported beside it. 0: greedy only."""
    test_sample_problems: int | None = 20
    """Test problems per (domain, level) that get sampled pass@1 (the first ones of each bucket in
    split order; None: all): sampling costs ``test_samples`` times the decoding, and every run of
    the retraining arms pays it. Greedy accuracy always covers the whole test split."""
    temperature: float = 1.0
    """Sampling temperature of the sampled generations (1: the model's own distribution)."""
    sample_seed: int = 0
    """Seed of the sampled generations (a torch Generator; the same seed gives the same samples)."""
    min_queries: int = 0
    """When a domain has fewer correct generations on the query split than this, its query set
    is topped up with the query split's reference solutions (``meta.source = "reference"``), so
    that a ``smoke`` model that solves nothing still has queries to attribute. 0 under ``tiny``."""

    def __post_init__(self):
        if self.min_queries < 0:
            raise ValueError(f"EvalConfig.min_queries must be >= 0, got {self.min_queries}")
        for name in ("samples", "test_samples", "sample_seed"):
            if int(getattr(self, name)) < 0:
                raise ValueError(f"EvalConfig.{name} must be >= 0, got {getattr(self, name)}")
        if self.test_sample_problems is not None and int(self.test_sample_problems) < 1:
            raise ValueError(f"EvalConfig.test_sample_problems must be >= 1 or None, got {self.test_sample_problems}")
        if not self.temperature > 0:
            raise ValueError(f"EvalConfig.temperature must be > 0, got {self.temperature}")
        for name in ("max_new_tokens_math", "max_new_tokens_code", "batch_size", "threads", "max_length"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"EvalConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.gold_cap_factor is not None and not self.gold_cap_factor > 0:
            raise ValueError(f"EvalConfig.gold_cap_factor must be > 0 or None, got {self.gold_cap_factor}")

    def max_new_tokens(self, domain: str) -> int:
        """The generation cap of ``domain``."""
        return self.max_new_tokens_math if domain == "math" else self.max_new_tokens_code


# ----------------------------------------------------------------------------------- generation
@torch.no_grad()
def generate_responses(model, tokenizer, records: Sequence[Mapping], cfg: EvalConfig = EvalConfig(),
                       progress: bool = True, desc: str = "generate", samples: int = 0,
                       across_levels: bool = False) -> list[str] | list[list[str]]:
    """Greedy responses to each record's prompt (``samples=0``), or ``samples`` sampled responses
    per record at ``cfg.temperature`` (a list of lists), in the order of ``records``.

    Prompts are rendered with the chat template (generation prompt), grouped by (domain, level)
    and sorted by length so batches waste little padding, left-padded, and decoded greedily with
    a KV cache (``_decode``: the tokens of ``model.generate(do_sample=False)``, tested, about
    twice as fast here because finished rows leave the batch) until each sequence emits the
    end-of-turn token or reaches its bucket's cap (``EvalConfig.gold_cap_factor``). Returns the
    decoded text of the new tokens without special tokens. Sampling draws each token from
    ``softmax(logits / temperature)`` by the Gumbel-max trick with a generator seeded by
    ``cfg.sample_seed``; a record's samples are decoded as adjacent rows of the same batches.

    ``across_levels=True``: batches are filled within a domain across levels (sorted by prompt
    length), each row still stopping at its own bucket's cap: fuller batches where a bucket holds
    fewer problems than ``cfg.batch_size`` (a batch's step costs about as much for 10 rows as for
    32 on a CPU). Greedy tokens are those of the grouped batches up to rounding in the padded
    matmuls; samples differ (the generator's draws fall on other rows).
    """
    from tqdm import tqdm

    if samples > 0:
        flat = generate_responses(model, tokenizer, [r for r in records for _ in range(samples)], cfg, progress,
                                  desc, samples=-1, across_levels=across_levels)
        return [flat[k * samples:(k + 1) * samples] for k in range(len(records))]
    temperature = cfg.temperature if samples < 0 else 0.0
    gen_rng = torch.Generator().manual_seed(int(cfg.sample_seed)) if temperature else None

    from infra_lib.data import _prompt_renderer

    eot = tokenizer.eos_token_id
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eot
    render = _prompt_renderer(tokenizer, cfg.system)
    prompt_ids = tokenizer([render(r["prompt"]) for r in records], add_special_tokens=False)["input_ids"]
    bucket = lambda r: (str(r.get("domain")), int(r.get("difficulty") or 0))
    caps = {}
    for r in records:
        b = bucket(r)
        caps.setdefault(b, cfg.max_new_tokens(b[0]))
    if cfg.gold_cap_factor is not None and all(r.get("response") for r in records):
        gold = tokenizer([r["response"] for r in records], add_special_tokens=False)["input_ids"]
        longest: dict = {}
        for r, g in zip(records, gold):
            longest[bucket(r)] = max(longest.get(bucket(r), 0), len(g) + 1)
        caps = {b: min(c, int(cfg.gold_cap_factor * longest[b]) + 16) for b, c in caps.items()}
    group = (lambda r: bucket(r)[0]) if across_levels else bucket
    order = sorted(range(len(records)), key=lambda i: (group(records[i]), len(prompt_ids[i]), i))
    batches, cur = [], []
    for i in order:
        if cur and (len(cur) == cfg.batch_size or group(records[cur[0]]) != group(records[i])):
            batches.append(cur)
            cur = []
        cur.append(i)
    if cur:
        batches.append(cur)

    out: list[str | None] = [None] * len(records)
    old_threads = torch.get_num_threads()
    torch.set_num_threads(cfg.threads)
    was_training = model.training
    model.eval()
    try:
        for idx in tqdm(batches, desc=desc, disable=not progress, mininterval=2.0, ascii=True, ncols=100):
            L = max(len(prompt_ids[i]) for i in idx)
            ids = torch.full((len(idx), L), pad, dtype=torch.long)  # (B, L) left-padded
            mask = torch.zeros((len(idx), L), dtype=torch.long)
            for b, i in enumerate(idx):
                n = len(prompt_ids[i])
                ids[b, L - n:] = torch.tensor(prompt_ids[i])
                mask[b, L - n:] = 1
            gen = _decode(model, ids, mask, [caps[bucket(records[i])] for i in idx], stop=(eot, pad),
                          temperature=temperature, generator=gen_rng)
            for b, i in enumerate(idx):
                out[i] = tokenizer.decode(gen[b], skip_special_tokens=True)
    finally:
        torch.set_num_threads(old_threads)
        model.train(was_training)
    return out  # type: ignore[return-value]


def next_tokens(logits: torch.Tensor, temperature: float = 0.0, generator: torch.Generator | None = None) -> torch.Tensor:
    """The next token of each row of ``logits`` [B, V]: the argmax (``temperature=0``) or a draw
    from ``softmax(logits / temperature)`` by the Gumbel-max trick (``argmax(logits / T + G)``
    with ``G`` standard Gumbel noise from ``generator``). Returns LongTensor [B]."""
    if not temperature:
        return logits.argmax(-1)
    u = torch.rand(logits.shape, generator=generator, dtype=torch.float64).clamp_(1e-300, 1.0)
    return (logits.double() / temperature - torch.log(-torch.log(u))).argmax(-1)


@torch.no_grad()
def _decode(model, ids: torch.Tensor, mask: torch.Tensor, max_new: int | Sequence[int], stop: tuple[int, ...],
            temperature: float = 0.0, generator: torch.Generator | None = None) -> list[list[int]]:
    """Greedy (``temperature=0``) or sampled decoding of a left-padded batch with a KV cache;
    finished rows leave the batch.

    ``model.generate`` keeps finished rows in the batch until the longest one ends, and a tiny
    model that loops on one problem holds all the others to the cap; here a row that emits a
    ``stop`` token is dropped from the batch and from the cache, so the cost follows the tokens
    actually generated.

    Args:
        ids, mask: LongTensor [B, L], left-padded prompts and their attention mask.
        max_new: the cap on new tokens, one for the batch or one per row (a row at its cap leaves).
    Returns:
        The new token ids of each row, stop token excluded.
    """
    from transformers import DynamicCache

    B = ids.shape[0]
    cache = DynamicCache()
    pos = (mask.cumsum(-1) - 1).clamp_min(0)  # (B, L): left padding shifts positions
    logits = model(input_ids=ids, attention_mask=mask, position_ids=pos, cache=cache, use_cache=True,
                   logits_to_keep=1).logits[:, -1]  # (B, V)
    alive = torch.arange(B)
    caps = torch.as_tensor(max_new, dtype=torch.long).expand(B).clone()  # (B,)
    last = pos[:, -1]
    stop_t = torch.tensor(stop)
    out: list[list[int]] = [[] for _ in range(B)]
    for step in range(int(caps.max())):
        nxt = next_tokens(logits, temperature, generator)  # (b,)
        done = torch.isin(nxt, stop_t)
        for row, tok, d in zip(alive.tolist(), nxt.tolist(), done.tolist()):
            if not d and step < caps[row]:
                out[row].append(tok)
        done |= caps[alive] <= step + 1  # rows at their cap leave too
        if bool(done.all()):
            break
        if bool(done.any()):
            keep = (~done).nonzero().flatten()
            alive, mask, last, nxt = alive[keep], mask[keep], last[keep], nxt[keep]
            cache.batch_select_indices(keep)
        mask = torch.cat([mask, mask.new_ones(mask.shape[0], 1)], 1)  # (b, L + step + 1)
        last = last + 1
        logits = model(input_ids=nxt[:, None], attention_mask=mask, position_ids=last[:, None], cache=cache,
                       use_cache=True).logits[:, -1]
    return out


# -------------------------------------------------------------------------------------- grading
def _default_math_grader():
    from .corpus import grade_math

    return grade_math


def _grade_code_many(records: Sequence[Mapping], texts: Sequence[str], sandbox_cfg=None, progress: bool = False) -> list[bool]:
    from .corpus import extract_code
    from .grading import grade_many

    items, where = [], []
    verdict = [False] * len(records)
    for k, (r, t) in enumerate(zip(records, texts)):
        code = extract_code(t)
        if code:  # no code block: wrong without running anything
            items.append((code, list(r["tests"])))
            where.append(k)
    if items:
        results = grade_many(items, sandbox_cfg, progress=progress)
        for k, res in zip(where, results):
            verdict[k] = bool(getattr(res, "passed", res))
    return verdict


def grade_responses(records: Sequence[Mapping], texts: Sequence[str], *, sandbox_cfg=None,
                    math_grader: Callable[[Mapping, str], bool] | None = None,
                    code_grader: Callable[[Sequence[Mapping], Sequence[str]], list[bool]] | None = None) -> list[bool]:
    """Whether each generation answers its record correctly.

    Math: ``math_grader(record, text)`` (default ``corpus.grade_math``: the final answer matches).
    Code: ``code_grader(records, texts)`` (default: the extracted function passes every hidden
    assert of ``record["tests"]`` in the sandbox, all code problems in one ``grade_many`` call).
    """
    if len(records) != len(texts):
        raise ValueError(f"grade_responses: {len(records)} records but {len(texts)} texts")
    verdict = [False] * len(records)
    math_idx = [k for k, r in enumerate(records) if r.get("domain") == "math"]
    code_idx = [k for k, r in enumerate(records) if r.get("domain") == "code"]
    other = [r.get("id") for r in records if r.get("domain") not in DOMAINS]
    if other:
        raise ValueError(f"grade_responses: records of unknown domain, e.g. {other[:3]}")
    if math_idx:
        g = math_grader or _default_math_grader()
        for k in math_idx:
            verdict[k] = bool(g(records[k], texts[k]))
    if code_idx:
        recs = [records[k] for k in code_idx]
        txts = [texts[k] for k in code_idx]
        res = code_grader(recs, txts) if code_grader is not None else _grade_code_many(recs, txts, sandbox_cfg)
        for k, v in zip(code_idx, res):
            verdict[k] = bool(v)
    return verdict


def accuracy_table(records: Sequence[Mapping], correct: Sequence[bool]) -> dict:
    """``{"math": {"1": fraction, ...}, "code": {...}}`` over the (domain, level) buckets present."""
    tot: dict = {}
    for r, c in zip(records, correct):
        cell = tot.setdefault(r["domain"], {}).setdefault(str(r["difficulty"]), [0, 0])
        cell[0] += int(bool(c))
        cell[1] += 1
    return {d: {lvl: n / m for lvl, (n, m) in sorted(v.items(), key=lambda kv: int(kv[0]))} for d, v in sorted(tot.items())}


# ------------------------------------------------------------------------------ log-likelihood
LOGITS_BYTES = 512 * 2**20
"""Most float32 logits one forward of :func:`gold_loglik` materialises (rows x tokens x vocabulary):
a 49k-token vocabulary at batch 32 and 500 tokens would take 3 GB, twice over with the log-softmax."""


@torch.no_grad()
def gold_loglik(model, tokenizer, records: Sequence[Mapping], cfg: EvalConfig = EvalConfig()) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed log-likelihood of each record's gold response (end of turn included) given its prompt.

    Returns:
        ``(loglik, n_tokens)``: float64 tensor [N] in nats (<= 0; NaN for a record longer than
        ``cfg.max_length``) and long tensor [N] of scored response tokens.
    """
    examples, keep = [], []
    for k, r in enumerate(records):
        try:
            examples.append(encode_record(r, tokenizer, cfg.max_length, cfg.system))
            keep.append(k)
        except ValueError:
            pass
    ll = torch.full((len(records),), float("nan"), dtype=torch.float64)
    nt = torch.zeros(len(records), dtype=torch.long)
    order = sorted(range(len(examples)), key=lambda j: examples[j]["input_ids"].shape[0])
    old_threads = torch.get_num_threads()
    torch.set_num_threads(cfg.threads)
    was_training = model.training
    model.eval()
    vocab = int(model.get_output_embeddings().weight.shape[0])
    chunks = []  # batches of cfg.batch_size, split so that one batch's logits take at most LOGITS_BYTES
    for s in range(0, len(order), cfg.batch_size):
        js = order[s : s + cfg.batch_size]
        T = max(examples[j]["input_ids"].shape[0] for j in js)
        rows = max(1, LOGITS_BYTES // (T * vocab * 4))
        chunks += [js[k : k + rows] for k in range(0, len(js), rows)]
    try:
        for js in chunks:
            batch = collate([examples[j] for j in js], tokenizer.pad_token_id)
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False).logits
            logp = torch.log_softmax(logits[:, :-1].float(), -1)  # (B, T-1, V)
            target = batch["labels"][:, 1:]  # (B, T-1)
            m = target != IGNORE_INDEX
            tok_ll = logp.gather(-1, target.clamp_min(0).unsqueeze(-1)).squeeze(-1) * m
            for b, j in enumerate(js):
                ll[keep[j]] = float(tok_ll[b].sum())
                nt[keep[j]] = int(m[b].sum())
    finally:
        torch.set_num_threads(old_threads)
        model.train(was_training)
    return ll, nt


def _mean_table(records: Sequence[Mapping], values: Sequence[float]) -> dict:
    tot: dict = {}
    for r, v in zip(records, values):
        if v == v:  # not NaN
            cell = tot.setdefault(r["domain"], {}).setdefault(str(r["difficulty"]), [0.0, 0])
            cell[0] += float(v)
            cell[1] += 1
    return {d: {lvl: s / n for lvl, (s, n) in sorted(v.items(), key=lambda kv: int(kv[0]))} for d, v in sorted(tot.items())}


# ------------------------------------------------------------------------------------ D_correct
def _segments_for(text: str) -> list:
    try:
        from infra_lib.segments import segment_response
    except ImportError:  # pragma: no cover - the module ships with the package
        return [[0, len(text), "answer"]]
    segs = segment_response(text)
    return segs if segs else [[0, len(text), "answer"]]


def correct_generations(records: Sequence[Mapping], texts: Sequence[str], correct: Sequence[bool]) -> list[dict]:
    """The correct generations as corpus records (the paper's D_correct).

    Each keeps the problem's ``id``, ``domain``, ``difficulty``, ``prompt`` and ``answer`` or
    ``tests``; ``response`` is the generation; ``meta.segments`` comes from
    ``segments.segment_response`` (no ground truth exists for a generation), and ``meta.source``
    is ``"generation"``. Generations that are empty are left out (nothing to attribute).
    """
    out = []
    for r, t, c in zip(records, texts, correct):
        if not c or not t:
            continue
        rec = {k: r[k] for k in ("id", "domain", "difficulty", "prompt") if k in r}
        rec["response"] = t
        for k in ("answer", "tests"):
            if k in r:
                rec[k] = r[k]
        rec["meta"] = {"segments": _segments_for(t), "source": "generation"}
        out.append(rec)
    return out


def _first_per_bucket(records: Sequence[Mapping], n: int | None) -> list[int]:
    """Indices of the first ``n`` records of each (domain, level) bucket, in order (all when None)."""
    if n is None:
        return list(range(len(records)))
    seen: dict = {}
    out = []
    for i, r in enumerate(records):
        b = (r.get("domain"), r.get("difficulty"))
        if seen.get(b, 0) < n:
            seen[b] = seen.get(b, 0) + 1
            out.append(i)
    return out


def _grade_samples(records: Sequence[Mapping], samples: Sequence[Sequence[str]], graders: Mapping) -> list[list[bool]]:
    """Grade ``samples[i]`` (k texts) against ``records[i]``, all in one ``grade_responses`` call."""
    flat_r = [r for r, ts in zip(records, samples) for _ in ts]
    flat_c = grade_responses(flat_r, [t for ts in samples for t in ts], **graders)
    out, k = [], 0
    for ts in samples:
        out.append(flat_c[k:k + len(ts)])
        k += len(ts)
    return out


def dedupe_correct(records: Sequence[Mapping], samples: Sequence[Sequence[str]],
                   correct: Sequence[Sequence[bool]]) -> list[dict]:
    """D_correct from sampled generations: each problem's correct samples, identical texts kept
    once, as corpus records (ids ``<problem id>#s<k>`` with ``meta.problem_id`` and
    ``meta.source = "sample"``)."""
    out = []
    for r, ts, cs in zip(records, samples, correct):
        seen: set[str] = set()
        for k, (t, c) in enumerate(zip(ts, cs)):
            if not c or not t or t in seen:
                continue
            seen.add(t)
            rec = correct_generations([r], [t], [True])[0]
            rec["id"] = f"{r['id']}#s{k}"
            rec["meta"].update(source="sample", problem_id=r["id"])
            out.append(rec)
    return out


def _top_up(rows: list[dict], query_records: Sequence[Mapping], domain: str, n: int) -> list[dict]:
    """``rows`` topped up to ``n`` with the query split's reference solutions of ``domain``
    (``meta.source = "reference"``), for a model that solves too few (``EvalConfig.min_queries``)."""
    rows = list(rows)
    have = {r.get("meta", {}).get("problem_id", r["id"]) for r in rows}
    for r in query_records:
        if len(rows) >= n:
            break
        if r["domain"] == domain and r.get("id") not in have:
            ref = json.loads(json.dumps(r))
            ref.setdefault("meta", {})["source"] = "reference"
            rows.append(ref)
    return rows


def _exploring_share(rows: Sequence[Mapping]) -> float | None:
    """Share of query responses with an exploratory segment (None for an empty set)."""
    if not rows:
        return None
    return sum(any(k == "exploratory" for _, _, k in r["meta"]["segments"]) for r in rows) / len(rows)


def _write_jsonl(path: Path, rows: Sequence[Mapping]) -> None:
    atomic_write_text(path, "".join(json.dumps(r, sort_keys=True) + "\n" for r in rows))


# ------------------------------------------------------------------------------------- the stage
def eval_exists(out_dir: str | os.PathLike, key: str | None = None) -> bool:
    """True when ``out_dir`` holds a finished evaluation (with cache key ``key`` if given)."""
    f = Path(out_dir) / "eval_config.json"
    return f.is_file() and (key is None or read_json(f).get("cache_key") == key)


def load_accuracy(out_dir: str | os.PathLike) -> dict:
    """``accuracy.json`` of an evaluation folder."""
    return read_json(Path(out_dir) / "accuracy.json")


def _model_key(model_dir: Path) -> str:
    f = model_dir / "train_config.json"
    if f.is_file():
        return read_json(f).get("cache_key", "")
    return str(model_dir.resolve())


def evaluate_model(model_dir: str | os.PathLike, out_dir: str | os.PathLike, test_records: Sequence[Mapping],
                   query_records: Sequence[Mapping] | None = None, cfg: EvalConfig = EvalConfig(), *,
                   sandbox_cfg=None, math_grader=None, code_grader=None, progress: bool = True,
                   force: bool = False, across_levels: bool = False) -> dict:
    """Evaluate the checkpoint in ``model_dir`` and write the files listed in the module docstring.

    Args:
        test_records: the test split (accuracy, gold log-likelihood).
        query_records: the query split, or None to skip the query sets.
        sandbox_cfg: ``sandbox.SandboxConfig`` for code grading (None: its defaults).
        math_grader, code_grader: replace the default graders (see ``grade_responses``).
        force: recompute even when ``out_dir`` holds an evaluation with the same cache key
            (model's cache key, config, records).
        across_levels: batch generations within a domain across levels (``generate_responses``);
            part of the cache key when set.

    Returns:
        ``{"accuracy", "gold_loglik", "n_queries" (own correct generations per domain),
        "n_reference_queries" (reference solutions added by ``min_queries``), "query_accuracy",
        "wall_s"}``.
    """
    from .model import load_model
    from .tokenizer import load_tokenizer
    from .training import records_fingerprint

    model_dir, out_dir = Path(model_dir), Path(out_dir)
    key = config_hash(cfg, _model_key(model_dir), records_fingerprint(test_records),
                      records_fingerprint(query_records) if query_records is not None else None,
                      *([{"across_levels": True}] if across_levels else []))
    if not force and eval_exists(out_dir, key):
        _log(f"reusing {out_dir} (cache key {key})")
        return read_json(out_dir / "eval_config.json")["summary"]
    _log(f"evaluating {model_dir} into {out_dir} (cache key {key})")
    model, tokenizer = load_model(model_dir), load_tokenizer(model_dir)
    wall: dict = {}
    graders = dict(sandbox_cfg=sandbox_cfg, math_grader=math_grader, code_grader=code_grader)

    t0 = time.perf_counter()
    texts = generate_responses(model, tokenizer, test_records, cfg, progress, desc="test", across_levels=across_levels)
    wall["generate_test"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    correct = grade_responses(test_records, texts, **graders)
    wall["grade_test"] = time.perf_counter() - t0
    pass1: list[float | None] = [None] * len(test_records)
    if cfg.test_samples:
        t0 = time.perf_counter()
        chosen = _first_per_bucket(test_records, cfg.test_sample_problems)
        sub = [test_records[i] for i in chosen]
        sampled = generate_responses(model, tokenizer, sub, cfg, progress, desc="test sampled", samples=cfg.test_samples,
                                     across_levels=across_levels)
        wall["generate_test_sampled"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        for i, c in zip(chosen, _grade_samples(sub, sampled, graders)):
            pass1[i] = sum(c) / len(c)
        wall["grade_test_sampled"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    ll, nt = gold_loglik(model, tokenizer, test_records, cfg)
    wall["gold_loglik"] = time.perf_counter() - t0
    acc = accuracy_table(test_records, correct)
    acc_sampled = _mean_table(test_records, [float("nan") if v is None else v for v in pass1]) if cfg.test_samples else None
    gll = _mean_table(test_records, ll.tolist())
    out_dir.mkdir(parents=True, exist_ok=True)
    _write_jsonl(out_dir / "test_generations.jsonl", [
        {"id": r.get("id"), "domain": r["domain"], "difficulty": r["difficulty"], "generation": t,
         "correct": bool(c), "pass1": p1, "gold_loglik": (None if v != v else v), "gold_tokens": int(n)}
        for r, t, c, p1, v, n in zip(test_records, texts, correct, pass1, ll.tolist(), nt.tolist())
    ])

    n_queries = n_reference = n_greedy = exploring = None
    if query_records is not None:
        t0 = time.perf_counter()
        qtexts = generate_responses(model, tokenizer, query_records, cfg, progress, desc="query", across_levels=across_levels)
        wall["generate_query"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        qcorrect = grade_responses(query_records, qtexts, **graders)
        wall["grade_query"] = time.perf_counter() - t0
        greedy_sets = correct_generations(query_records, qtexts, qcorrect)
        rows_q = [{"id": r.get("id"), "domain": r["domain"], "difficulty": r["difficulty"], "generation": t,
                   "correct": bool(c)} for r, t, c in zip(query_records, qtexts, qcorrect)]
        if cfg.samples:
            t0 = time.perf_counter()
            qsampled = generate_responses(model, tokenizer, query_records, cfg, progress, desc="query sampled",
                                          samples=cfg.samples, across_levels=across_levels)
            wall["generate_query_sampled"] = time.perf_counter() - t0
            t0 = time.perf_counter()
            qsc = _grade_samples(query_records, qsampled, graders)
            wall["grade_query_sampled"] = time.perf_counter() - t0
            for row, txts, cs in zip(rows_q, qsampled, qsc):
                row["samples"], row["samples_correct"] = txts, cs
            d_correct = dedupe_correct(query_records, qsampled, qsc)
        else:
            d_correct = greedy_sets
        _write_jsonl(out_dir / "query_generations.jsonl", rows_q)
        n_queries, n_reference, n_greedy, exploring = {}, {}, {}, {}
        for d in DOMAINS:
            rows = [r for r in d_correct if r["domain"] == d]
            n_queries[d] = len(rows)
            exploring[d] = _exploring_share(rows)
            greedy_d = [r for r in greedy_sets if r["domain"] == d]
            n_greedy[d] = len(greedy_d)
            exploring[f"{d}_greedy"] = _exploring_share(greedy_d)
            _write_jsonl(out_dir / f"queries_greedy_{d}.jsonl", _top_up(greedy_d, query_records, d, cfg.min_queries))
            rows = _top_up(rows, query_records, d, cfg.min_queries)
            n_reference[d] = len(rows) - n_queries[d]
            _write_jsonl(out_dir / f"queries_{d}.jsonl", rows)
        wall["query_accuracy"] = accuracy_table(query_records, qcorrect)  # kept for the record

    query_acc = wall.pop("query_accuracy", None)
    wall = {k: round(v, 2) for k, v in wall.items()}
    atomic_write_json(out_dir / "accuracy.json", acc)
    atomic_write_json(out_dir / "gold_loglik.json", gll)
    if acc_sampled is not None:
        atomic_write_json(out_dir / "accuracy_sampled.json", acc_sampled)
    else:  # an earlier run's sampled accuracy is not this config's
        (out_dir / "accuracy_sampled.json").unlink(missing_ok=True)
    summary = {"accuracy": acc, "accuracy_sampled": acc_sampled, "gold_loglik": gll, "n_queries": n_queries,
               "n_reference_queries": n_reference, "n_queries_greedy": n_greedy, "exploring_share": exploring,
               "query_accuracy": query_acc,
               "wall_s": wall}
    atomic_write_json(out_dir / "eval_config.json", {
        "config": config_to_dict(cfg), "config_hash": config_hash(cfg), "cache_key": key,
        "model_dir": str(model_dir), "n_test": len(test_records),
        "n_query": None if query_records is None else len(query_records), "summary": summary,
    })
    _log(f"done: accuracy {json.dumps(acc)}; wall {wall}")
    return summary
