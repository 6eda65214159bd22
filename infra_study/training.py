"""The two training stages: a *base* model trained once per profile, and short *SFT* runs from it.

Both stages run the same loop (``train_model``): AdamW, linear warmup then cosine decay, loss =
mean next-token NLL over the response tokens of the batch (prompt and template masked; see
``data.encode_record``), gradient clipping, a fixed number of threads. What differs is the data:

- ``train_base``: a fresh model on the *base* split (short answer-only responses of both
  domains, all levels), the stand-in for the paper's instruct model. Cached in
  ``runs/<profile>/base/``.
- ``train_sft``: from the base checkpoint on the CoT *train* split, examples drawn by
  per-(domain, level) sampling weights until a fixed token budget is spent, with a fixed share
  of that budget per domain. The experiments (difficulty flip, ablations) redo this stage from
  the same base checkpoint.

The data plan (which examples, in what order) is a pure function of the records, the config and
the seed (``plan_examples``), so the same seed gives the same weights on CPU, and arms that share
a seed share as much of their data order as their weights allow.

A checkpoint folder holds the model (``save_pretrained``), the tokenizer, ``train_config.json``
(the config, its hash and the cache key) and ``loss_curve.json``. A later call with the same
cache key (config + data + starting point) reuses it and says so.
"""
from __future__ import annotations

import hashlib
import json
import sys
import math
import os
import random
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import torch

from infra_lib.data import IGNORE_INDEX, collate, encode_records
from infra_lib.io import atomic_write_json, config_hash, config_to_dict, read_json

from .model import ModelConfig, build_model, load_model, quiet_hf_progress

__all__ = [
    "DOMAINS",
    "LEVELS",
    "TrainConfig",
    "plan_examples",
    "plan_by_ids",
    "records_fingerprint",
    "response_nll",
    "train_model",
    "train_base",
    "train_sft",
    "sft_cache_key",
    "checkpoint_exists",
    "load_checkpoint",
    "has_loss_curve",
    "load_loss_curve",
]

DOMAINS = ("math", "code")
LEVELS = (1, 2, 3, 4, 5)
_CONFIG_FILE = "train_config.json"
_CURVE_FILE = "loss_curve.json"


def _log(msg: str) -> None:
    print(f"[training] {msg}", file=sys.stderr, flush=True)


@dataclass(frozen=True)
class TrainConfig:
    """One training run (base or SFT). Saved as JSON beside the checkpoint; its hash keys the cache."""

    seed: int = 0
    """Seed of the data plan (which examples, in what order); the model's init seed is ModelConfig.seed."""
    token_budget: int | None = 200_000
    """Response tokens (labelled tokens, end of turn included) to train on; the run stops drawing
    examples once it is spent."""
    steps: int | None = None
    """Number of optimizer steps (``steps * batch_size`` examples); when set it replaces the token
    budget (``token_budget`` is stored as None)."""
    batch_size: int = 16
    """Examples per optimizer step."""
    micro_batch: int | None = None
    """Examples per forward/backward within a step (None: the whole batch at once). The gradients
    of the micro-batches add up to the gradient of the step's mean NLL over all its response
    tokens, so the step is the same up to float rounding while the activations held at once shrink
    by ``batch_size / micro_batch``. Part of the cache key only when set."""
    lr: float = 2.5e-3
    """Peak learning rate (AdamW), reached after warmup."""
    warmup_frac: float = 0.05
    """Share of the steps spent in linear warmup from 0 to ``lr``."""
    min_lr_frac: float = 0.1
    """The cosine decays from ``lr`` to ``min_lr_frac * lr`` at the last step."""
    weight_decay: float = 0.1
    """AdamW decoupled weight decay on matrices (not on norms or biases)."""
    betas: tuple[float, float] = (0.9, 0.98)
    """AdamW betas."""
    grad_clip: float = 1.0
    """Clip the global gradient norm to this (0 disables)."""
    threads: int = 1
    """torch intra-op threads for this run (two single-thread runs fit side by side on 2 cores)."""
    max_length: int = 768
    """Longest tokenised example; longer records are skipped with a warning (never truncated)."""
    math_token_share: float = 0.5
    """Share of the token budget spent on math (the rest on code). Ignored when only one domain is present."""
    math_level_weights: tuple[float, ...] = (0.2, 0.2, 0.2, 0.2, 0.2)
    """Sampling probability of each math level 1..5 (normalised over the levels present)."""
    code_level_weights: tuple[float, ...] = (0.2, 0.2, 0.2, 0.2, 0.2)
    """Sampling probability of each code level 1..5 (normalised over the levels present)."""
    length_grouping: int = 8
    """Sort each window of ``length_grouping * batch_size`` planned examples by length before
    cutting it into batches (less padding, so faster); 1 disables. Deterministic under the seed."""
    log_every: int = 10
    """Record the loss (mean over the last steps) every this many steps."""

    def __post_init__(self):
        if self.steps is not None:
            object.__setattr__(self, "token_budget", None)
        if self.token_budget is None and self.steps is None:
            raise ValueError("TrainConfig: set token_budget or steps")
        if self.token_budget is not None and self.token_budget < 1:
            raise ValueError(f"TrainConfig.token_budget must be >= 1, got {self.token_budget}")
        if self.steps is not None and self.steps < 1:
            raise ValueError(f"TrainConfig.steps must be >= 1, got {self.steps}")
        if self.micro_batch is not None and not 1 <= int(self.micro_batch) <= self.batch_size:
            raise ValueError(f"TrainConfig.micro_batch must be in 1..batch_size ({self.batch_size}) or None, got {self.micro_batch}")
        for name in ("batch_size", "threads", "max_length", "length_grouping", "log_every"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"TrainConfig.{name} must be >= 1, got {getattr(self, name)}")
        if not self.lr > 0:
            raise ValueError(f"TrainConfig.lr must be > 0, got {self.lr}")
        if not 0 <= self.warmup_frac < 1:
            raise ValueError(f"TrainConfig.warmup_frac must be in [0, 1), got {self.warmup_frac}")
        if not 0 <= self.min_lr_frac <= 1:
            raise ValueError(f"TrainConfig.min_lr_frac must be in [0, 1], got {self.min_lr_frac}")
        if self.weight_decay < 0 or self.grad_clip < 0:
            raise ValueError("TrainConfig.weight_decay and grad_clip must be >= 0")
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise ValueError(f"TrainConfig.betas must be two numbers in [0, 1), got {self.betas}")
        if not 0 <= self.math_token_share <= 1:
            raise ValueError(f"TrainConfig.math_token_share must be in [0, 1], got {self.math_token_share}")
        for name in ("math_level_weights", "code_level_weights"):
            w = getattr(self, name)
            if len(w) != len(LEVELS) or any(x < 0 for x in w) or sum(w) <= 0:
                raise ValueError(f"TrainConfig.{name} must be {len(LEVELS)} non-negative weights, not all 0; got {w}")
            object.__setattr__(self, name, tuple(float(x) for x in w))
        object.__setattr__(self, "betas", tuple(float(b) for b in self.betas))

    def level_weights(self, domain: str) -> tuple[float, ...]:
        """The level weights of ``domain`` (``"math"`` or ``"code"``)."""
        if domain not in DOMAINS:
            raise ValueError(f"unknown domain {domain!r}; expected one of {DOMAINS}")
        return self.math_level_weights if domain == "math" else self.code_level_weights


# --------------------------------------------------------------------------------------- data plan
def records_fingerprint(records: Sequence[Mapping]) -> str:
    """A short hash of the records' content (ids, prompts, responses, domains, levels, segments)."""
    h = hashlib.sha256()
    for r in records:
        key = [r.get("id"), r.get("domain"), r.get("difficulty"), r["prompt"], r["response"],
               (r.get("meta") or {}).get("segments")]
        h.update(json.dumps(key, sort_keys=True).encode("utf-8"))
        h.update(b"\n")
    return h.hexdigest()[:16]


def plan_examples(examples: Sequence[Mapping], cfg: TrainConfig) -> list[list[int]]:
    """Which encoded examples each optimizer step trains on, fixed by ``cfg.seed``.

    Draws examples one at a time: the domain is the one furthest below its token share (so the
    shares hold along the whole run, not only at its end); the level is drawn with the domain's
    level weights; the example is the next one of that bucket's seeded shuffle (a bucket is
    reshuffled when used up, so each example is seen about equally often). Drawing stops when
    the token budget is spent (the example that crosses it is kept) or after ``steps *
    batch_size`` examples. Then windows of ``length_grouping * batch_size`` examples are sorted
    by length and cut into batches, and the batches of each window shuffled.

    Args:
        examples: encoded examples (``data.encode_record`` output) with ``domain`` and
            ``difficulty``.

    Returns:
        A list of batches, each a list of indices into ``examples``.
    """
    rng = random.Random(f"plan-{cfg.seed}")
    n_tok = [int((e["labels"] != IGNORE_INDEX).sum()) for e in examples]
    buckets: dict[tuple[str, int], list[int]] = {}
    for i, e in enumerate(examples):
        d, lvl = e.get("domain"), e.get("difficulty")
        if d not in DOMAINS or lvl not in LEVELS:
            raise ValueError(f"example {e.get('id')!r}: domain {d!r} / difficulty {lvl!r} outside {DOMAINS} x {LEVELS}")
        buckets.setdefault((d, int(lvl)), []).append(i)

    share = {"math": cfg.math_token_share, "code": 1.0 - cfg.math_token_share}
    levels, probs = {}, {}
    for d in DOMAINS:
        w = cfg.level_weights(d)
        lv = [l for l in LEVELS if (d, l) in buckets and w[l - 1] > 0]
        if lv and share[d] > 0:
            levels[d], probs[d] = lv, [w[l - 1] for l in lv]
    if not levels:
        raise ValueError("plan_examples: no (domain, level) bucket has both examples and a positive weight and share")
    for d in DOMAINS:  # an absent domain gives its share to the other
        if d not in levels:
            share[d] = 0.0
    total_share = sum(share.values())
    share = {d: s / total_share for d, s in share.items()}

    queues: dict[tuple[str, int], list[int]] = {}

    def next_from(bucket):
        q = queues.get(bucket)
        if not q:
            q = list(buckets[bucket])
            rng.shuffle(q)
            queues[bucket] = q
        return q.pop()

    spent = {d: 0 for d in DOMAINS}
    order: list[int] = []
    max_examples = cfg.steps * cfg.batch_size if cfg.steps is not None else None
    while True:
        total = sum(spent.values())
        if cfg.token_budget is not None and total >= cfg.token_budget:
            break
        if max_examples is not None and len(order) >= max_examples:
            break
        d = min((d for d in levels), key=lambda d: (spent[d] - share[d] * total, DOMAINS.index(d)))
        lvl = rng.choices(levels[d], weights=probs[d])[0]
        i = next_from((d, lvl))
        order.append(i)
        spent[d] += n_tok[i]

    B = cfg.batch_size
    window = cfg.length_grouping * B
    batches: list[list[int]] = []
    for w0 in range(0, len(order), window):
        chunk = order[w0 : w0 + window]
        if cfg.length_grouping > 1:
            chunk = sorted(chunk, key=lambda i: (examples[i]["input_ids"].shape[0], i))
        wb = [chunk[k : k + B] for k in range(0, len(chunk), B)]
        rng.shuffle(wb)
        batches.extend(wb)
    return batches


def plan_by_ids(planned: Sequence[Mapping], examples: Sequence[Mapping], cfg: TrainConfig) -> list[list[int]]:
    """The data plan drawn on ``planned`` (encoded examples), mapped by id onto ``examples``: the
    same problems in the same batches and order, with ``examples``' responses (ids missing from
    ``examples`` are dropped). Returns batches of indices into ``examples``."""
    where = {e["id"]: i for i, e in enumerate(examples)}
    plan = [[where[planned[i]["id"]] for i in b if planned[i]["id"] in where] for b in plan_examples(planned, cfg)]
    return [b for b in plan if b]


# ------------------------------------------------------------------------------------ the loop
def _lr_at(step: int, n_steps: int, cfg: TrainConfig) -> float:
    """Linear warmup over ``warmup_frac * n_steps`` steps, then cosine to ``min_lr_frac * lr``."""
    warm = int(round(cfg.warmup_frac * n_steps))
    if step < warm:
        return cfg.lr * (step + 1) / warm
    t = (step - warm) / max(1, n_steps - warm - 1)
    return cfg.lr * (cfg.min_lr_frac + (1 - cfg.min_lr_frac) * 0.5 * (1 + math.cos(math.pi * min(t, 1.0))))


def _optimizer(model: torch.nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.dim() >= 2 else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas, foreach=False)


def response_nll(model, batch: Mapping, reduction: str = "mean") -> torch.Tensor:
    """Next-token NLL of ``batch['labels']`` (response tokens) under ``model``.

    Args:
        batch: ``input_ids``, ``attention_mask``, ``labels`` LongTensor [B, T] (``data.collate``).
        reduction: ``"mean"`` over all labelled tokens of the batch, ``"sum"`` over them, or
            ``"none"`` for a FloatTensor [B] of per-example sums.

    Returns:
        A float32 scalar (``"mean"``/``"sum"``) or [B] tensor; lower is better.
    """
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False).logits
    logits = logits[:, :-1].float()  # (B, T-1, V): position t predicts token t+1
    target = batch["labels"][:, 1:]  # (B, T-1)
    nll = torch.nn.functional.cross_entropy(
        logits.reshape(-1, logits.shape[-1]), target.reshape(-1), ignore_index=IGNORE_INDEX, reduction="none"
    ).view(target.shape)
    if reduction == "none":
        return nll.sum(1)
    if reduction == "sum":
        return nll.sum()
    if reduction == "mean":
        return nll.sum() / (target != IGNORE_INDEX).sum().clamp_min(1)
    raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")


def _accumulate_step(model, batch_examples: Sequence[Mapping], pad_token_id: int,
                     micro_batch: int | None) -> tuple[torch.Tensor, int]:
    """Backward of one step's mean response NLL, over micro-batches of ``micro_batch`` examples
    (None: one). Each micro-batch contributes its summed NLL divided by the whole step's labelled
    token count, so the accumulated ``.grad`` is that of the step's mean. Returns the mean (a
    detached scalar) and the labelled token count. A non-finite micro-batch loss stops before its
    backward."""
    chunks = [batch_examples] if micro_batch is None else [
        batch_examples[i:i + micro_batch] for i in range(0, len(batch_examples), micro_batch)]
    batches = [collate(list(c), pad_token_id) for c in chunks]
    n_tok = sum(int((b["labels"][:, 1:] != IGNORE_INDEX).sum()) for b in batches)
    total = torch.zeros((), dtype=torch.float32)
    for b in batches:
        part = response_nll(model, b, "sum") / max(n_tok, 1)
        if not torch.isfinite(part):
            return part.detach(), n_tok
        part.backward()
        total += part.detach()
    return total, n_tok


def train_model(model, examples: Sequence[Mapping], cfg: TrainConfig, pad_token_id: int,
                desc: str = "train", progress: bool = True, plan: list[list[int]] | None = None) -> list[dict]:
    """Train ``model`` in place on ``examples`` following ``plan_examples(examples, cfg)`` (or the
    given ``plan``: batches of indices into ``examples``).

    Sets ``torch`` to ``cfg.threads`` threads for the run (restored after). The loss is the mean
    NLL over the batch's response tokens. Raises ``FloatingPointError`` on a non-finite loss.

    Returns:
        The loss curve: a list of ``{"step", "loss", "lr", "tokens", "seconds"}`` rows, one every
        ``cfg.log_every`` steps and at the last step (``loss`` is the mean over those steps,
        ``tokens`` the response tokens trained on so far).
    """
    from tqdm import tqdm

    plan = plan_examples(examples, cfg) if plan is None else plan
    n_steps = len(plan)
    old_threads = torch.get_num_threads()
    torch.set_num_threads(cfg.threads)
    try:
        model.train()
        opt = _optimizer(model, cfg)
        curve, run_loss, run_n, tokens = [], 0.0, 0, 0
        t0 = time.perf_counter()
        bar = tqdm(plan, desc=desc, disable=not progress, mininterval=2.0, ascii=True, dynamic_ncols=False, ncols=100)
        for step, idx in enumerate(bar):
            lr = _lr_at(step, n_steps, cfg)
            for g in opt.param_groups:
                g["lr"] = lr
            opt.zero_grad(set_to_none=True)
            loss, n_tok = _accumulate_step(model, [examples[i] for i in idx], pad_token_id, cfg.micro_batch)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"{desc}: non-finite loss {loss.item()} at step {step}")
            if cfg.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            opt.step()
            run_loss += loss.item()
            run_n += 1
            tokens += n_tok
            if (step + 1) % cfg.log_every == 0 or step + 1 == n_steps:
                row = {"step": step + 1, "loss": run_loss / run_n, "lr": lr, "tokens": tokens,
                       "seconds": round(time.perf_counter() - t0, 3)}
                curve.append(row)
                bar.set_postfix(loss=f"{row['loss']:.3f}", refresh=False)
                run_loss, run_n = 0.0, 0
        bar.close()
    finally:
        torch.set_num_threads(old_threads)
        model.eval()
    return curve


# ------------------------------------------------------------------------------- checkpoints
def checkpoint_exists(path: str | os.PathLike, key: str | None = None) -> bool:
    """True when ``path`` holds a finished checkpoint (and, if given, with cache key ``key``)."""
    f = Path(path) / _CONFIG_FILE
    if not f.is_file():
        return False
    return key is None or read_json(f).get("cache_key") == key


def load_checkpoint(path: str | os.PathLike):
    """``(model, tokenizer)`` of a checkpoint folder, both via ``from_pretrained``."""
    from .tokenizer import load_tokenizer

    return load_model(path), load_tokenizer(path)


def has_loss_curve(path: str | os.PathLike) -> bool:
    """Whether a loss curve is saved beside the checkpoint in ``path`` (not for a converted one)."""
    return (Path(path) / _CURVE_FILE).is_file()


def load_loss_curve(path: str | os.PathLike) -> list[dict]:
    """The loss curve rows saved beside a checkpoint (see ``train_model``)."""
    return read_json(Path(path) / _CURVE_FILE)["curve"]


def _save_checkpoint(out_dir: Path, model, tokenizer, cfg: TrainConfig, key: str, curve, extra: dict) -> None:
    """Write everything into a temporary sibling folder, then swap it into place."""
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        with quiet_hf_progress():
            model.save_pretrained(str(tmp))
            tokenizer.save_pretrained(str(tmp))
        atomic_write_json(tmp / _CURVE_FILE, {"curve": curve, "config_hash": config_hash(cfg)})
        atomic_write_json(tmp / _CONFIG_FILE, {"config": config_to_dict(cfg), "config_hash": config_hash(cfg),
                                               "cache_key": key, **extra})
        if out_dir.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.old.", dir=out_dir.parent))
            os.replace(out_dir, old / "x")
            os.replace(tmp, out_dir)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _run_stage(stage: str, model_fn, records, tokenizer, cfg: TrainConfig, out_dir, key_parts: list,
               extra: dict, progress: bool, force: bool, plan_records=None):
    out_dir = Path(out_dir)
    key = _stage_key(cfg, key_parts, records, plan_records)
    if not force and checkpoint_exists(out_dir, key):
        _log(f"{stage}: reusing {out_dir} (cache key {key})")
        return out_dir
    _log(f"{stage}: training into {out_dir} (cache key {key})")
    examples = encode_records(records, tokenizer, cfg.max_length, on_too_long="skip")
    plan = None
    if plan_records is not None:
        plan = plan_by_ids(encode_records(plan_records, tokenizer, cfg.max_length, on_too_long="skip"), examples, cfg)
    model = model_fn()
    t0 = time.perf_counter()
    curve = train_model(model, examples, cfg, tokenizer.pad_token_id, desc=stage, progress=progress, plan=plan)
    wall = time.perf_counter() - t0
    n_tokens = curve[-1]["tokens"] if curve else 0
    _log(f"{stage}: {len(curve) and curve[-1]['step']} steps, {n_tokens} response tokens, "
         f"final loss {curve[-1]['loss']:.4f}, {wall:.1f} s")
    extra = {**extra, "wall_s": round(wall, 2), "n_records": len(records), "n_examples": len(examples),
             "records_fingerprint": records_fingerprint(records), "torch": torch.__version__}
    _save_checkpoint(out_dir, model, tokenizer, cfg, key, curve, extra)
    return out_dir


def train_base(records: Sequence[Mapping], tokenizer, model_cfg: ModelConfig, cfg: TrainConfig,
               out_dir: str | os.PathLike, *, progress: bool = True, force: bool = False) -> Path:
    """The base stage: a fresh ``build_model(model_cfg, tokenizer)`` trained on ``records``.

    ``records`` are the base split (short answer-only responses of both domains). Reuses
    ``out_dir`` when it holds a checkpoint with the same cache key (model config, train config,
    tokenizer vocabulary, records), unless ``force``.

    Returns:
        ``out_dir`` (model, tokenizer, ``train_config.json``, ``loss_curve.json``).
    """
    vocab = hashlib.sha256(json.dumps(tokenizer.get_vocab(), sort_keys=True).encode()).hexdigest()[:16]
    return _run_stage("base", lambda: build_model(model_cfg, tokenizer), records, tokenizer, cfg, out_dir,
                      [model_cfg, vocab], {"stage": "base", "model_config": config_to_dict(model_cfg)},
                      progress, force)


def _base_key(base_dir: Path) -> str:
    if not checkpoint_exists(base_dir) and not (base_dir / "config.json").is_file():
        raise FileNotFoundError(f"train_sft: no checkpoint in {base_dir}")
    return read_json(base_dir / _CONFIG_FILE)["cache_key"] if checkpoint_exists(base_dir) else str(base_dir.resolve())


def _stage_key(cfg: TrainConfig, key_parts: list, records, plan_records=None) -> str:
    parts = [*key_parts, records_fingerprint(records)]
    if plan_records is not None:
        parts.append(("plan", records_fingerprint(plan_records)))
    d = config_to_dict(cfg)
    if d.get("micro_batch") is None:  # unset: the key every run before the field existed had
        d.pop("micro_batch", None)
    return config_hash(d, *parts)


def sft_cache_key(base_dir: str | os.PathLike, records: Sequence[Mapping], cfg: TrainConfig,
                  plan_records: Sequence[Mapping] | None = None) -> str:
    """The cache key ``train_sft(base_dir, records, cfg, ...)`` writes: config, base checkpoint,
    records (and the records the plan is drawn on, when given)."""
    return _stage_key(cfg, [_base_key(Path(base_dir))], records, plan_records)


def train_sft(base_dir: str | os.PathLike, records: Sequence[Mapping], cfg: TrainConfig,
              out_dir: str | os.PathLike, *, progress: bool = True, force: bool = False,
              plan_records: Sequence[Mapping] | None = None) -> Path:
    """The SFT stage: the checkpoint in ``base_dir`` trained on the CoT ``records``.

    Examples are drawn with ``cfg``'s per-(domain, level) weights until ``cfg.token_budget``
    response tokens are spent, ``cfg.math_token_share`` of them on math; ``cfg.seed`` fixes
    which examples and their order. The loss is the mean NLL over response tokens. Reuses
    ``out_dir`` when it holds a checkpoint with the same cache key (config, base checkpoint's
    cache key, records), unless ``force``. ``plan_records``: draw the data plan on these records
    instead (same ids as ``records``), then train on the ``records`` of the planned ids: the same
    problems in the same order with other responses (the ablation at equal problems).

    Returns:
        ``out_dir`` (model, tokenizer, ``train_config.json``, ``loss_curve.json``).
    """
    base_dir = Path(base_dir)
    base_key = _base_key(base_dir)
    from .tokenizer import load_tokenizer

    tokenizer = load_tokenizer(base_dir)
    return _run_stage("sft", lambda: load_model(base_dir), records, tokenizer, cfg, out_dir,
                      [base_key], {"stage": "sft", "base_dir": str(base_dir), "base_cache_key": base_key},
                      progress, force, plan_records=plan_records)
