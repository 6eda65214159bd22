"""Memory planner: the bytes each stage of :func:`~infra_lib.factors.fit_factors` and
:func:`~infra_lib.scores.compute_scores` holds, worked out before a run from the model's shapes.

A plan works from a ``transformers`` config alone (the model is built on the ``meta`` device, so
no weights are allocated; one forward on meta tensors finds the modules that share an input):
Qwen2.5-7B is planned in about a second on a CPU. It mirrors what the current kernels keep alive,
phase by phase:

- ``covariance``: the A (per input group, ``d_in x d_in``) and S (per module, ``d_out x d_out``)
  accumulators, plus one batch.
- ``eigendecomposition``: the accumulators, the normalised A and S, their eigenvectors QA/QS and
  eigenvalues, and float64 ``eigh`` workspace for the largest block (5 d^2 doubles, measured).
- ``lambda`` (EK-FAC, diagonal): all of the above (``fit_factors`` keeps the covariance
  accumulators alive through this pass), the eigenvalue correction Λ (``d_out x d_in`` per module)
  and one batch with the per-example gradients ``(B, d_out, d_in)`` of the largest module.
- ``scores``: the stored factors (``load_factors`` loads A and S too), the query store
  (``R x d_out x d_in`` per module; compute_scores forms it at full rank even when a rank r is
  asked, then compresses it), the preconditioning workspace, one batch, and the score outputs.

One batch costs the larger of its forward+backward (autograd-saved activations, measured at
``6 H + 3 I`` elements per token per decoder layer for Qwen2 with frozen weights and an O(T)
attention kernel; LM-head logits at the loss positions with the float64 inverse-CDF copies of
the sampled-label Fisher; the tracked inputs and output gradients; three ``(B, T, I)`` backward
buffers) and its step (inputs, output gradients, the pass's own workspace). Batches are planned at
``max_length``.

Stored factor bytes are exact (tests check them against what ``fit_factors`` stores for every
strategy). The peak is an estimate: on two small Qwen2 models it was 0.90-0.96 of the measured
RSS peak (tests/test_planner.py), so :func:`check_plan` keeps 10% in reserve.
"""
from __future__ import annotations

import dataclasses
import os
import re
from dataclasses import dataclass, field
from typing import Any, Sequence

import torch
from torch import nn

__all__ = [
    "PHASES",
    "FIT_PHASES",
    "PlanItem",
    "Plan",
    "PlanError",
    "ModuleLayout",
    "describe_modules",
    "layout_for_names",
    "plan_memory",
    "check_plan",
    "available_memory",
    "format_bytes",
    "parse_bytes",
    "kept_capture_bytes",
    "choose_prefix_cache",
    "choose_shared_pass",
]

PHASES = ("covariance", "eigendecomposition", "lambda", "scores")
FIT_PHASES = PHASES[:3]
_ITEMSIZE = {"float16": 2, "bfloat16": 2, "float32": 4, "float64": 8}
# Autograd-saved activations per token per decoder layer, in elements of the model dtype, for a
# Qwen2/LLaMA block with frozen weights (measured with saved_tensors_hooks: 5.1-6.7 H + 3 I).
_ACT_H, _ACT_I = 6, 3
# Gradient buffers alive at once while backward runs through one MLP (grad of its input, of the
# SiLU product and of both branches), in (B, T, I) units of the model dtype.
_BWD_BUFFERS = 3
# eigh of a d x d block: the float64 block, the eigenvectors LAPACK overwrites, syevd's 2 d^2 workspace,
# and about one more d^2 measured around it (symmetrised copies, MKL buffers).
_EIGH_DOUBLES_PER_D2 = 5


class PlanError(MemoryError):
    """A plan that does not fit the memory available; the message says what to change."""


def format_bytes(n: float) -> str:
    """``1536 -> '1.5 KiB'`` (binary units)."""
    n = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def parse_bytes(text: str | int | float) -> int:
    """``'80GiB'``, ``'64G'``, ``'512 MB'``, ``'1.5e9'`` -> bytes (K/M/G/T are binary, KB/MB/GB decimal)."""
    if isinstance(text, (int, float)):
        return int(text)
    m = re.fullmatch(r"\s*([0-9.]+(?:e[0-9]+)?)\s*([kmgt]?)(i?b?)\s*", str(text).lower())
    if not m:
        raise ValueError(f"cannot read {text!r} as a size (e.g. 80GiB, 64G, 512MB, 1.5e9)")
    num, prefix, suffix = float(m.group(1)), m.group(2), m.group(3)
    if not prefix:
        return int(num)
    power = "kmgt".index(prefix) + 1
    base = 1000 if suffix == "b" else 1024  # "GB" decimal; "G", "GiB" binary
    return int(num * base ** power)


def available_memory() -> int:
    """Bytes this process can still allocate on the CPU: ``MemAvailable``, capped by a cgroup limit."""
    avail = None
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    avail = int(line.split()[1]) * 1024
    except OSError:
        pass
    if avail is None:
        try:
            avail = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError, AttributeError):
            avail = 1 << 62
    for limit_f, used_f in (("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
                            ("/sys/fs/cgroup/memory/memory.limit_in_bytes", "/sys/fs/cgroup/memory/memory.usage_in_bytes")):
        try:
            with open(limit_f) as fh:
                raw = fh.read().strip()
            if raw == "max":
                continue
            with open(used_f) as fh:
                used = int(fh.read().strip())
            avail = min(avail, max(int(raw) - used, 0))
        except (OSError, ValueError):
            continue
    return avail


# --------------------------------------------------------------------------- module layout
@dataclass(frozen=True)
class ModuleLayout:
    """Shapes the plan needs, from a model or a config.

    Attributes:
        shapes: tracked module -> (d_out, d_in [+1 bias column]), model order (as ``Factors.shapes``).
        group_of: tracked module -> input group (modules reading the same input share ``A``).
        n_params: distinct parameters of the whole model.
        hidden_size, intermediate_size, num_layers, vocab_size: the decoder's dimensions (0 when unknown).
    """

    shapes: dict[str, tuple[int, int]]
    group_of: dict[str, str]
    n_params: int
    hidden_size: int = 0
    intermediate_size: int = 0
    num_layers: int = 0
    vocab_size: int = 0

    @property
    def groups(self) -> dict[str, int]:
        """Input group -> d_in (bias column included)."""
        return {g: self.shapes[m][1] for m, g in self.group_of.items()}


def _meta_model(config: Any) -> nn.Module:
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(config)


def _meta_groups(meta: nn.Module, names: Sequence[str]) -> dict[str, str] | None:
    """Input groups found by one forward of 2 tokens on the meta device (no memory, no FLOPs)."""
    named = dict(meta.named_modules())
    seen: dict[str, torch.Tensor] = {}
    handles = [named[n].register_forward_hook(lambda _m, i, _o, n=n: seen.__setitem__(n, i[0])) for n in names]
    try:
        with torch.no_grad():
            meta(input_ids=torch.zeros(1, 2, dtype=torch.long, device="meta"))
    except Exception:  # an architecture whose forward does not run on meta: caller falls back
        return None
    finally:
        for h in handles:
            h.remove()
    if len(seen) != len(names):
        return None
    first: dict[tuple, str] = {}
    out = {}
    for n in names:
        key = (id(seen[n]), named[n].bias is not None)
        out[n] = first.setdefault(key, n)
    return out


# Sibling linears that read one input tensor in HF decoders (attention projections; gated MLPs).
_SHARED_INPUT = ({"q_proj", "k_proj", "v_proj"}, {"query", "key", "value"}, {"gate_proj", "up_proj"}, {"w1", "w3"})


def _name_groups(model: nn.Module, names: Sequence[str]) -> dict[str, str]:
    """Input groups guessed from names (the last resort when no forward can run)."""
    named = dict(model.named_modules())
    first: dict[tuple, str] = {}
    out = {}
    for n in names:
        parent, _, leaf = n.rpartition(".")
        kind = next((i for i, s in enumerate(_SHARED_INPUT) if leaf in s), None)
        key = (parent, kind, named[n].bias is not None) if kind is not None else (n,)
        out[n] = first.setdefault(key, n)
    return out


def _twin_groups(model: nn.Module, names: Sequence[str]) -> dict[str, str]:
    """Groups of a real model: from a meta twin built from its config, else one real 2-token forward."""
    cfg = getattr(model, "config", None)
    if cfg is not None:
        try:
            twin = _meta_model(cfg)
            if all(n in dict(twin.named_modules()) for n in names):
                got = _meta_groups(twin, names)
                if got is not None:
                    return got
        except Exception:
            pass
    from .tracking import ModuleTracker, collate

    dev = next(model.parameters()).device
    ex = {"id": "plan", "input_ids": torch.tensor([0, 0]), "labels": torch.tensor([0, 0])}
    if dev.type == "meta":
        return _name_groups(model, names)
    with ModuleTracker(model, names, next(model.parameters()).dtype) as tr:
        return tr.run(collate([ex], [0]), "data").group_of


def _as_model(model_or_config: Any) -> tuple[nn.Module, Any, bool]:
    """(model, its config or None, whether the model was built here on the meta device)."""
    if isinstance(model_or_config, nn.Module):
        return model_or_config, getattr(model_or_config, "config", None), False
    if model_or_config is None:
        raise ValueError("plan_memory needs a model, a transformers config, or a layout")
    return _meta_model(model_or_config), model_or_config, True


def _layout(model: nn.Module, cfg: Any, names: Sequence[str], group_of: dict[str, str]) -> ModuleLayout:
    named = dict(model.named_modules())
    shapes = {n: (named[n].out_features, named[n].in_features + (named[n].bias is not None)) for n in names}
    n_params = sum(p.numel() for p in model.parameters())
    text = cfg.get_text_config() if hasattr(cfg, "get_text_config") else cfg

    def get(key: str) -> int:
        return int(getattr(text, key, 0) or 0)

    return ModuleLayout(shapes, group_of, n_params, get("hidden_size"), get("intermediate_size"),
                        get("num_hidden_layers"), get("vocab_size"))


def _subset(full: ModuleLayout, names: Sequence[str]) -> ModuleLayout:
    """The layout of a sub-selection of ``full``'s modules (group names: first selected member)."""
    first: dict[str, str] = {}
    group_of = {n: first.setdefault(full.group_of[n], n) for n in names}
    return dataclasses.replace(full, shapes={n: full.shapes[n] for n in names}, group_of=group_of)


def describe_modules(model_or_config: Any, modules: str | Sequence[str] = "mlp") -> ModuleLayout:
    """Tracked module shapes and input groups of a model (``nn.Module``) or a ``transformers`` config.

    A config is turned into a model on the ``meta`` device (no weights are allocated), so the same
    module selection as :func:`~infra_lib.tracking.select_modules` applies.
    """
    from .tracking import select_modules

    model, cfg, is_meta = _as_model(model_or_config)
    names = select_modules(model, modules)
    group_of = (_meta_groups(model, names) if is_meta else None) or _twin_groups(model, names)
    return _layout(model, cfg, names, group_of)


def layout_for_names(model_or_config: Any, names: Sequence[str]) -> ModuleLayout:
    """The layout of these exact module names (e.g. those a ``factors.json`` lists).

    Raises:
        KeyError: naming the modules that are not trackable linears of this model.
    """
    full = _Selector(model_or_config).full
    missing = [n for n in names if n not in full.shapes]
    if missing:
        raise KeyError(f"modules {missing[:3]} are not linears of this model")
    return _subset(full, list(names))


class _Selector:
    """Layouts of other module selections of one model, from one meta build."""

    def __init__(self, model_or_config: Any):
        from .tracking import select_modules

        self._select = select_modules
        self.model, cfg, is_meta = _as_model(model_or_config)
        names = select_modules(self.model, "all-linear")
        group_of = (_meta_groups(self.model, names) if is_meta else None) or _twin_groups(self.model, names)
        self.full = _layout(self.model, cfg, names, group_of)

    def layout(self, modules: str | Sequence[str]) -> ModuleLayout:
        return _subset(self.full, self._select(self.model, modules))


# --------------------------------------------------------------------------- plan
@dataclass(frozen=True)
class PlanItem:
    """One memory item: its bytes, the phases it is alive in, and whether it is a stored factor."""

    name: str
    bytes: int
    phases: tuple[str, ...]
    detail: str = ""
    stored: bool = False


@dataclass(frozen=True)
class Plan:
    """Bytes per item and per phase of a factors + scores run (see the module docstring).

    Attributes:
        items: the memory items.
        settings: what was planned (strategy, modules, rows, rank, dtype, batch, length, ...).
        phases: the phases this strategy runs, in order.
        layout: the tracked modules' shapes.
    """

    items: tuple[PlanItem, ...]
    settings: dict
    phases: tuple[str, ...]
    layout: ModuleLayout = field(repr=False, default=None)

    def phase_bytes(self, phase: str) -> int:
        """Bytes alive at the peak of ``phase``."""
        return sum(it.bytes for it in self.items if phase in it.phases)

    def peak(self, phases: Sequence[str] | None = None) -> tuple[str, int]:
        """(phase, bytes) of the largest phase among ``phases`` (default: all of this plan's)."""
        use = [p for p in (phases or self.phases) if p in self.phases]
        if not use:
            return ("none", 0)
        return max(((p, self.phase_bytes(p)) for p in use), key=lambda t: t[1])

    @property
    def peak_bytes(self) -> int:
        return self.peak()[1]

    @property
    def factor_bytes(self) -> int:
        """Bytes of the tensors ``fit_factors`` stores (``factors.safetensors``), exactly."""
        return sum(it.bytes for it in self.items if it.stored)

    def item(self, name: str) -> PlanItem:
        for it in self.items:
            if it.name == name:
                return it
        raise KeyError(name)

    def fits(self, available_bytes: int, phases: Sequence[str] | None = None) -> bool:
        """True when the peak over ``phases`` (default all) is at most ``available_bytes``."""
        return self.peak(phases)[1] <= available_bytes

    def format(self, phases: Sequence[str] | None = None, available_bytes: int | None = None) -> str:
        """A text table: item, bytes, phases, detail; then each phase's total and the peak."""
        use = [p for p in (phases or self.phases) if p in self.phases]
        s = self.settings
        head = (f"memory plan: strategy={s['strategy']} modules={s['modules']} ({len(self.layout.shapes)} tracked, "
                f"{len(set(self.layout.group_of.values()))} input groups) dtype={s['dtype']} model_dtype={s['model_dtype']} "
                f"batch={s['batch_size']} max_length={s['max_length']}")
        if "scores" in use:
            head += f" query_rows={s['n_query_rows']} rank={s['rank']}"
        rows = [it for it in self.items if any(p in use for p in it.phases)]
        w = max([len(it.name) for it in rows] + [4])
        lines = [head, f"  {'item':<{w}}  {'bytes':>10}  phases / detail"]
        short = {"covariance": "cov", "eigendecomposition": "eig", "lambda": "lam", "scores": "scr"}
        for it in rows:
            ph = ",".join(short[p] for p in it.phases if p in use)
            lines.append(f"  {it.name:<{w}}  {format_bytes(it.bytes):>10}  [{ph}] {it.detail}")
        if any(it.stored for it in rows):
            lines.append(f"  stored factors (factors.safetensors): {format_bytes(self.factor_bytes)}")
        for p in use:
            lines.append(f"  phase {p:<18} {format_bytes(self.phase_bytes(p)):>10}")
        ph, pk = self.peak(use)
        tail = f"  peak: {format_bytes(pk)} ({ph})"
        if available_bytes is not None:
            tail += f"; available {format_bytes(available_bytes)}"
        lines.append(tail)
        return "\n".join(lines)


def _mods_detail(shapes: Sequence[tuple[int, int]], what: str, dtype: str) -> str:
    if not shapes:
        return ""
    uniq: dict[tuple[int, int], int] = {}
    for s in shapes:
        uniq[s] = uniq.get(s, 0) + 1
    parts = [f"{k} x ({a} x {b})" for (a, b), k in sorted(uniq.items(), key=lambda t: -t[0][0] * t[0][1])]
    return f"{what}: " + " + ".join(parts[:4]) + (" + ..." if len(parts) > 4 else "") + f" {dtype}"


def plan_memory(model: Any, modules: str | Sequence[str] = "mlp", strategy: str = "ekfac", n_query_rows: int = 2,
                rank: int | None = None, dtype: str = "float32", batch_size: int = 16, max_length: int = 1024, *,
                model_dtype: str = "float32", fisher: str = "sampled", token_scores: bool = False,
                query_batch_size: int | None = None, n_train: int = 0, n_train_tokens: int = 0,
                layout: ModuleLayout | None = None) -> Plan:
    """Plan the memory of fitting factors and scoring, before any weight is loaded.

    Args:
        model: an ``nn.Module``, a ``transformers`` config (e.g. ``Qwen2Config(hidden_size=3584, ...)``),
            or ``None`` with ``layout``.
        modules: the tracked-module selection (as ``FactorConfig.modules``).
        strategy: ``identity`` | ``diagonal`` | ``kfac`` | ``ekfac``.
        n_query_rows: rows of the query store R (queries for per-query, groups for a mean, plus
            query-segment rows).
        rank: rank r of the query store, or None (full).
        dtype: factor and score dtype (``float32`` | ``float64``); ``model_dtype``: the weights'.
        batch_size: examples per batch (the largest of the factor and score batch sizes);
            ``query_batch_size`` defaults to it.
        max_length: longest sequence, tokens; batches are planned at full length.
        fisher: ``sampled`` adds the float64 inverse-CDF copies of the logits.
        token_scores: token (or segment) scores asked: adds the token-kernel copy of the store and
            the ``R x n_train_tokens`` output.
        n_train, n_train_tokens: size of the scored training set (outputs; encoded examples).

    Returns:
        A :class:`Plan`; ``plan.factor_bytes`` equals the bytes of the tensors ``fit_factors`` stores.
    """
    if strategy not in ("identity", "diagonal", "kfac", "ekfac"):
        raise ValueError(f"strategy must be identity, diagonal, kfac or ekfac, got {strategy!r}")
    for name, dt in (("dtype", dtype), ("model_dtype", model_dtype)):
        if dt not in _ITEMSIZE:
            raise ValueError(f"{name} must be one of {tuple(_ITEMSIZE)}, got {dt!r}")
    if min(batch_size, max_length) < 1 or n_query_rows < 0 or (rank is not None and rank < 1):
        raise ValueError("batch_size and max_length must be >= 1, n_query_rows >= 0, rank None or >= 1")
    lay = layout or describe_modules(model, modules)
    f, m = _ITEMSIZE[dtype], _ITEMSIZE[model_dtype]
    B, T, R = int(batch_size), int(max_length), int(n_query_rows)
    QB = int(query_batch_size or batch_size)
    shapes = lay.shapes
    groups = lay.groups  # group -> d_in
    mods = list(shapes)
    kfac_like = strategy in ("kfac", "ekfac")
    has_lambda = strategy in ("diagonal", "ekfac")
    phases = tuple(p for p in PHASES if p == "scores" or (p in ("covariance", "eigendecomposition") and kfac_like)
                   or (p == "lambda" and has_lambda))
    fit_p = tuple(p for p in FIT_PHASES if p in phases)
    after_eig = tuple(p for p in ("eigendecomposition", "lambda", "scores") if p in phases)
    items: list[PlanItem] = []

    def add(name, nbytes, ph, detail="", stored=False):
        ph = tuple(p for p in ph if p in phases)
        if nbytes > 0 and ph:
            items.append(PlanItem(name, int(nbytes), ph, detail, stored))

    add("model weights", lay.n_params * m, phases, f"{lay.n_params:,} parameters {model_dtype}")
    d_in_max = max(groups.values())
    d_out_max = max(s[0] for s in shapes.values())
    big = max(shapes.values(), key=lambda s: s[0] * s[1])
    p_tracked = sum(a * b for a, b in shapes.values())

    # ---- stored factors (exactly what fit_factors writes)
    if kfac_like:
        a_el = sum(d * d for d in groups.values())
        s_el = sum(s[0] * s[0] for s in shapes.values())
        add("activation covariances A", a_el * f, after_eig,
            _mods_detail([(d, d) for d in groups.values()], f"{len(groups)} groups", dtype), True)
        add("gradient covariances S", s_el * f, after_eig,
            _mods_detail([(s[0], s[0]) for s in shapes.values()], f"{len(mods)} modules", dtype), True)
        add("eigenvectors QA, QS", (a_el + s_el) * f, after_eig, f"same shapes as A and S, {dtype}", True)
        add("eigenvalues eA, eS", (sum(groups.values()) + sum(s[0] for s in shapes.values())) * f, after_eig,
            f"vectors, {dtype}", True)
        add("covariance accumulators", (a_el + s_el) * f, ("covariance", "eigendecomposition", "lambda"),
            "running A and S sums (fit_factors keeps them alive until the lambda pass returns)")
        add("eigendecomposition workspace", _EIGH_DOUBLES_PER_D2 * max(d_in_max, d_out_max) ** 2 * 8,
            ("eigendecomposition",), f"float64 eigh of the largest block ({max(d_in_max, d_out_max)})")
    if has_lambda:
        add("eigenvalue correction Λ" if strategy == "ekfac" else "Fisher diagonal",
            p_tracked * f, ("lambda", "scores"), _mods_detail(list(shapes.values()), f"{len(mods)} modules", dtype),
            True)

    # ---- one batch of a pass. At the end of backward the batch holds the saved activations not yet
    # freed, the LM-head logits (kept until autograd.grad returns), the tracked inputs, every tracked
    # output gradient, and a few (B, T, I) gradient buffers of the layer being differentiated; then the
    # graph is freed and the step holds the inputs, the output gradients and its own workspace.
    def batch_item(tag: str, bsz: int, sampled: bool, step_ws: int, step_what: str) -> None:
        toks = bsz * T
        width = lay.intermediate_size or 4 * lay.hidden_size
        if lay.hidden_size and lay.num_layers:
            act = toks * lay.num_layers * (_ACT_H * lay.hidden_size + _ACT_I * width) * m
        else:  # not a decoder we know: inputs and outputs of every tracked linear, twice
            width = max(max(a, b) for a, b in shapes.values())
            act = toks * 2 * sum(a + b for a, b in shapes.values()) * m
        inputs = toks * sum(groups.values()) * f
        grads = toks * sum(s[0] for s in shapes.values()) * f
        logits = toks * lay.vocab_size * (m + 4 + (16 if sampled else 0))
        transient = _BWD_BUFFERS * toks * width * m
        fb, st = act + logits + inputs + grads + transient, inputs + grads + step_ws
        add(f"one batch ({tag})", max(fb, st), (tag,),
            f"{bsz} x {T} tokens; max of forward+backward {format_bytes(fb)} (activations {format_bytes(act)}, "
            f"logits {format_bytes(logits)}{' with sampled-label copies' if sampled else ''}, tracked inputs and "
            f"output gradients {format_bytes(inputs + grads)}, backward buffers {format_bytes(transient)}) and step "
            f"{format_bytes(st)} ({step_what} {format_bytes(step_ws)})")

    sampled = fisher == "sampled"
    if "covariance" in phases:
        batch_item("covariance", B, sampled, B * T * d_in_max * f + max(d_in_max, d_out_max) ** 2 * f,
                   "loss-position inputs + one Gram product")
    if "lambda" in phases:
        batch_item("lambda", B, sampled, B * big[0] * big[1] * f + B * T * (d_in_max + d_out_max) * f,
                   f"per-example gradients {B} x {big} + rotated inputs and gradients")

    # ---- scores
    if R > 0:
        add("query store", R * p_tracked * f, ("scores",),
            f"{R} rows x {p_tracked:,} tracked weights {dtype} (formed at full rank)")
        if strategy != "identity":
            add("preconditioning workspace", 2 * R * big[0] * big[1] * f, ("scores",),
                f"rotations of the largest module's {R} rows")
        if rank is not None:
            lo = sum(R * min(rank, a, b) * (a + b) for a, b in shapes.values()) * f
            svd = R * big[0] * big[1] * 8 + (1 + _EIGH_DOUBLES_PER_D2) * R * min(big) ** 2 * 8
            add("rank-r factors + SVD workspace", lo + svd, ("scores",),
                f"rank {rank}: {format_bytes(lo)} low-rank store + float64 truncated SVD (Gram eigh) of the largest module")
        if token_scores:
            tok_el = sum(R * min(rank, a, b) * (a + b) for a, b in shapes.values()) if rank else R * p_tracked
            add("token-score kernels", tok_el * f, ("scores",), "the store laid out per input group for one GEMM")
        batch_item("scores", max(B, QB), False, B * big[0] * big[1] * f, f"per-example gradients {B} x {big}")
        out = R * max(n_train, 0) * f + (R * max(n_train_tokens, 0) * f if token_scores else 0)
        add("score outputs", out, ("scores",), f"{R} x {n_train} examples" + (f" + {R} x {n_train_tokens} tokens"
                                                                         if token_scores else ""))
    if n_train_tokens:
        add("encoded training examples", n_train_tokens * 3 * 8, phases, f"{n_train_tokens:,} tokens x 3 int64 fields")

    settings = dict(strategy=strategy, modules=modules if isinstance(modules, str) else list(modules),
                    n_query_rows=R, rank=rank, dtype=dtype, model_dtype=model_dtype, batch_size=B,
                    query_batch_size=QB, max_length=T, fisher=fisher, token_scores=token_scores,
                    n_train=n_train, n_train_tokens=n_train_tokens)
    return Plan(tuple(items), settings, phases, lay)


def _suggestions(plan: Plan, budget: int, phases: Sequence[str], model: Any) -> list[str]:
    """Changes that make the plan fit, each checked by re-planning."""
    s = dict(plan.settings)
    out: list[str] = []

    def replan(layout: ModuleLayout | None = None, **kw) -> Plan:
        a = {**s, **kw}
        return plan_memory(None, a["modules"], a["strategy"], a["n_query_rows"], a["rank"], a["dtype"],
                           a["batch_size"], a["max_length"], model_dtype=a["model_dtype"], fisher=a["fisher"],
                           token_scores=a["token_scores"], query_batch_size=a["query_batch_size"], n_train=a["n_train"],
                           n_train_tokens=a["n_train_tokens"], layout=layout or plan.layout)

    def fits(p: Plan) -> bool:
        return p.fits(budget, [q for q in phases if q in p.phases] or p.phases)

    def peak(p: Plan) -> str:
        return format_bytes(p.peak([q for q in phases if q in p.phases] or p.phases)[1])

    b = s["batch_size"]
    while b > 1:
        b //= 2
        p = replan(batch_size=b, query_batch_size=min(s["query_batch_size"], b))
        if fits(p):
            out.append(f"a smaller batch: --batch-size {b} (peak {peak(p)})")
            break
    for T in (s["max_length"] // 2, s["max_length"] // 4):
        if T >= 16:
            p = replan(max_length=T)
            if fits(p):
                out.append(f"shorter sequences: --max-length {T} (peak {peak(p)})")
                break
    if s["dtype"] == "float64":
        p = replan(dtype="float32")
        if fits(p):
            out.append(f"float32 factors and scores: --dtype float32 (peak {peak(p)})")
    if "scores" in phases and s["n_query_rows"] > 2:
        p = replan(n_query_rows=2)
        if fits(p):
            out.append(f"fewer query rows, e.g. the two domain means: --aggregation mean --groups domain (peak {peak(p)})")
    if any(q in phases for q in FIT_PHASES) and s["strategy"] in ("ekfac", "kfac"):
        for strat in ("kfac", "diagonal"):
            if strat != s["strategy"]:
                p = replan(strategy=strat)
                if fits(p):
                    out.append(f"a cheaper curvature: --strategy {strat} (peak {peak(p)})")
                    break
    if model is not None:
        try:
            sel = _Selector(model)
        except Exception:
            sel = None
        if sel is not None:
            found = False
            if s["modules"] != "mlp":
                p = replan(layout=sel.layout("mlp"), modules="mlp")
                if fits(p):
                    out.append(f"fewer modules, the MLP linears: --modules mlp (peak {peak(p)})")
                    found = True
            mlp = sel.layout("mlp").shapes
            layer_of = {n: int(m.group(1)) for n in mlp for m in [re.search(r"\.layers\.(\d+)\.", n)] if m}
            layers = sorted(set(layer_of.values()))
            for k in range(len(layers) - 1, 0, -1) if not found and layers else ():
                keep = layers[-k:]
                regex = r"\.layers\.(" + "|".join(map(str, keep)) + r")\.mlp\."
                p = replan(layout=sel.layout(regex), modules=regex)
                if fits(p):
                    out.append(f"fewer modules, the MLPs of the last {k} of {len(layers)} layers: "
                               f"--modules '{regex}' (peak {peak(p)})")
                    break
    return out


def check_plan(plan: Plan, available_bytes: int, phases: Sequence[str] | None = None, reserve: float = 0.1,
               model: Any = None) -> None:
    """Refuse a plan whose peak exceeds ``available_bytes x (1 - reserve)``.

    Raises:
        PlanError: naming the phase that does not fit, its largest items, and changes that would
            fit (each checked by re-planning; ``model``, the model or config of the plan, lets it
            try other module selections).
    """
    use = [p for p in (phases or plan.phases) if p in plan.phases]
    budget = int(available_bytes * (1 - reserve))
    if plan.fits(budget, use):
        return
    ph, pk = plan.peak(use)
    top = sorted((it for it in plan.items if ph in it.phases), key=lambda it: -it.bytes)[:4]
    sugg = _suggestions(plan, budget, use, model)
    lines = [f"the plan does not fit: the {ph} phase needs {format_bytes(pk)} but {format_bytes(budget)} is usable "
             f"({format_bytes(available_bytes)} available, {reserve:.0%} kept in reserve).",
             "largest items: " + "; ".join(f"{it.name} {format_bytes(it.bytes)}" for it in top) + "."]
    if sugg:
        lines.append("what would fit: " + "; or ".join(sugg) + ".")
    if "scores" in use and any(it.name == "query store" for it in plan.items):
        lines.append(f"(rank-r queries, --rank, shrink the store kept for the pass, but compute_scores forms the "
                     f"full {format_bytes(plan.item('query store').bytes)} store first, so --rank does not lower "
                     f"this peak yet.)")
    else:
        lines.append("no single change tried (smaller batch, float32, fewer modules, fewer query rows, shorter "
                     "sequences) fits: track fewer modules (a regex over layers) or use a machine with more memory.")
    raise PlanError("\n".join(lines))


# --------------------------------------------------------------------------- pass plans
# What a run may spend on work kept between passes, as a share of the memory available when it starts:
# the rest stays for the model, one batch and the factors (the phases planned above).
PREFIX_SHARE, SHARED_SHARE = 0.25, 0.5
_MODES = ("auto", "on", "off")


def _tokens(dataset: Sequence[Any]) -> int:
    from .tracking import _field

    return sum(int(torch.as_tensor(_field(ex, "input_ids")).numel()) for ex in dataset)


def kept_capture_bytes(dataset: Sequence[Any], batch_size: int, shapes: dict[str, tuple[int, int]],
                       group_of: dict[str, str], itemsize: int) -> int:
    """Bytes of every batch's per-token inputs and output gradients, as a shared covariance + Λ
    pass keeps them: per batch ``B x W x (sum of group d_in + sum of module d_out)`` with W the
    batch's gradient window (as :func:`~infra_lib.tracking.collate` cuts it), exactly."""
    from .tracking import _field, make_batches

    width = sum(shapes[g][1] for g in dict.fromkeys(group_of.values())) + sum(s[0] for s in shapes.values())
    lens, last = [], []
    for ex in dataset:
        lab = torch.as_tensor(_field(ex, "labels")).long()
        lens.append(lab.numel())
        pos = torch.nonzero(lab[1:] != -100)
        last.append(int(pos.max()) if pos.numel() else -1)
    total = 0
    for idx in make_batches(dataset, batch_size):
        T = max(lens[i] for i in idx)
        W = max(max(last[i] for i in idx) + 1, 1)
        W = T if 8 * W > 7 * T else W
        total += len(idx) * W * width
    return total * itemsize


def choose_prefix_cache(model: nn.Module, names: Sequence[str], datasets: Sequence[Sequence[Any]],
                        mode: str = "auto", available_bytes: int | None = None):
    """Whether the passes keep the input of the lowest tracked decoder layer per example.

    Args:
        mode: ``on``, ``off`` or ``auto`` (on when the hidden states of every token of ``datasets``
            take at most ``PREFIX_SHARE`` of the memory available).

    Returns:
        (:class:`~infra_lib.tracking.PrefixCache` or None when no decoder layer can be skipped,
        report dict: ``used``, ``start_layer``, ``bytes`` (planned), ``budget_bytes``, ``reason``).
    """
    from .tracking import prefix_cache_for

    if mode not in _MODES:
        raise ValueError(f"prefix_cache must be one of {_MODES}, got {mode!r}")
    probe = prefix_cache_for(model, names, store=False)
    if probe.start == 0:
        return None, {"used": False, "start_layer": 0, "reason": probe.reason}
    hidden = int(model.get_input_embeddings().embedding_dim)
    item = next(model.parameters()).element_size()
    need = sum(_tokens(d) for d in datasets) * hidden * item
    budget = int((available_memory() if available_bytes is None else available_bytes) * PREFIX_SHARE)
    use = mode == "on" or (mode == "auto" and need <= budget)
    why = {"on": "asked for", "off": "switched off"}.get(mode, "fits" if use else "does not fit")
    rep = {"used": use, "start_layer": probe.start, "skipped_layers": probe.start, "bytes": need,
           "budget_bytes": budget, "reason": f"{why}: {format_bytes(need)} of hidden states "
                                             f"(budget {format_bytes(budget)})"}
    return prefix_cache_for(model, names, store=use), rep


def choose_shared_pass(mode: str, kept_bytes: int, available_bytes: int | None = None) -> tuple[bool, dict]:
    """Whether the covariance pass keeps its captures for the Λ pass (one forward+backward per fit).

    ``auto``: when ``kept_bytes`` (:func:`kept_capture_bytes`) is at most ``SHARED_SHARE`` of the
    memory available. Returns (choice, report dict: ``used``, ``bytes``, ``budget_bytes``, ``reason``).
    """
    if mode not in _MODES:
        raise ValueError(f"shared_pass must be one of {_MODES}, got {mode!r}")
    budget = int((available_memory() if available_bytes is None else available_bytes) * SHARED_SHARE)
    use = mode == "on" or (mode == "auto" and kept_bytes <= budget)
    why = {"on": "asked for", "off": "switched off"}.get(mode, "fits" if use else "does not fit")
    return use, {"used": use, "bytes": int(kept_bytes), "budget_bytes": budget,
                 "reason": f"{why}: {format_bytes(kept_bytes)} of kept inputs and output gradients "
                           f"(budget {format_bytes(budget)})"}
