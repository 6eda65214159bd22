"""Tracked modules, batching, and per-token activations / output gradients of a causal LM.

Every attribution pass (covariances, eigenvalue correction, scores) needs, for each tracked
``nn.Linear``, the input of the module at every token, ``a`` (B, T, d_in), and the gradient of the
summed response NLL with respect to its output, ``g`` (B, T, d_out). The per-example gradient of
the module's weight is then ``sum_t g_t a_t^T`` (d_out, d_in), and nothing else is needed: no
parameter gradient is ever formed by autograd. Parameters are frozen during a pass, gradient is
enabled from the embedding output, and ``torch.autograd.grad`` is asked for the module outputs
only, so backward skips every weight-gradient matmul (and everything below the first tracked
module).

Conventions (HF shift): the logits at position t predict ``labels[t + 1]``; position t is a *loss
position* when ``labels[t + 1] != -100``. The loss of an example is the SUMMED next-token NLL over
its loss positions. Output gradients are non-zero at loss positions and, through attention, at
every earlier position (the prompt included), so per-example gradients run over the *window*
``t <= last loss position``; padding (right padding, causal attention) never contributes.
"""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import re
import warnings
import weakref
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Sequence

import torch
from torch import nn

__all__ = [
    "select_modules",
    "linear_module_names",
    "Batch",
    "Capture",
    "ModuleTracker",
    "collate",
    "make_batches",
    "example_ids",
    "per_example_gradients",
    "PrefixCache",
    "find_decoder_layers",
    "prefix_cache_for",
]

# Substrings that mark a feed-forward block in HF decoder models (LLaMA / Qwen / Mistral use
# ``.mlp.``; others ``.feed_forward.`` or ``.ffn.``).
_MLP_MARKERS = (".mlp.", ".feed_forward.", ".ffn.")


# --------------------------------------------------------------------------- module selection
def _never_tracked(model: nn.Module) -> set[int]:
    """ids of the input and output embedding modules (the LM head), which are never tracked."""
    out = set()
    for getter in ("get_input_embeddings", "get_output_embeddings"):
        fn = getattr(model, getter, None)
        mod = fn() if callable(fn) else None
        if mod is not None:
            out.add(id(mod))
    return out


def linear_module_names(model: nn.Module) -> list[str]:
    """Names of every ``nn.Linear`` of ``model`` except the embeddings and the LM head, in order."""
    skip = _never_tracked(model)
    return [n for n, m in model.named_modules() if isinstance(m, nn.Linear) and id(m) not in skip]


def select_modules(model: nn.Module, modules: str | Sequence[str] = "mlp") -> list[str]:
    """Resolve a module selection to the names of tracked ``nn.Linear`` modules, in model order.

    Args:
        model: a ``transformers`` causal LM (or any ``nn.Module``).
        modules: ``"mlp"`` (default: the feed-forward linears, ``gate_proj``/``up_proj``/``down_proj``
            in Qwen2), ``"all-linear"``, or a sequence of exact module names and/or regular
            expressions (``re.search``). Embeddings and the LM head are never tracked.

    Returns:
        The selected module names. Raises ``ValueError`` naming the model's linear modules when
        nothing matches, or when an embedding / LM head is named explicitly.
    """
    linears = linear_module_names(model)
    if isinstance(modules, str) and modules == "mlp":
        chosen = [n for n in linears if any(mk in f".{n}." for mk in _MLP_MARKERS)]
    elif isinstance(modules, str) and modules == "all-linear":
        chosen = list(linears)
    else:
        pats = [modules] if isinstance(modules, str) else list(modules)
        all_names = {n for n, _ in model.named_modules()}
        banned = {n for n, m in model.named_modules() if id(m) in _never_tracked(model)}
        for p in pats:
            if p in banned:
                raise ValueError(f"module {p!r} is an embedding or the LM head; those are never tracked")
            if p in all_names and p not in linears:
                raise ValueError(f"module {p!r} is not an nn.Linear; only nn.Linear modules can be tracked")
        chosen = [n for n in linears if any(n == p or re.search(p, n) for p in pats)]
    if not chosen:
        shown = ", ".join(linears[:40]) + (" ..." if len(linears) > 40 else "")
        raise ValueError(f"module selection {modules!r} matches no nn.Linear of {type(model).__name__}; "
                         f"its linear modules are: {shown or '(none)'}")
    return chosen


# --------------------------------------------------------------------------- data and batching
def _field(ex: Any, key: str, default: Any = None) -> Any:
    if isinstance(ex, Mapping):
        return ex.get(key, default)
    return getattr(ex, key, default)


def example_ids(dataset: Sequence[Any]) -> list[str]:
    """The ``id`` of every example, as strings, in dataset order."""
    return [str(_field(ex, "id")) for ex in dataset]


def _as_long(x: Any, name: str, ex_id: Any) -> torch.Tensor:
    if x is None:
        raise ValueError(f"example {ex_id!r}: missing field {name!r}")
    t = torch.as_tensor(x)
    if t.dim() != 1:
        raise ValueError(f"example {ex_id!r}: field {name!r} must be 1-D, got shape {tuple(t.shape)}")
    return t.long()


@dataclass
class Batch:
    """A right-padded batch of examples.

    Attributes:
        index: (B,) positions of the examples in their dataset.
        ids: the examples' ids.
        input_ids, labels: (B, T) long; labels are -100 outside the loss (and on padding).
        segment_ids: (B, T) long or None; -1 outside the response.
        attention_mask: (B, T) long or None (None: no example carries one with zeros).
        lengths: (B,) unpadded lengths.
        loss_mask: (B, T) bool, position t predicts ``labels[t+1]`` and is in the loss.
        targets: (B, T) long, ``labels[t+1]`` at loss positions, -100 elsewhere.
        window: 1 + the largest loss position in the batch; output gradients vanish beyond it.
    """

    index: torch.Tensor
    ids: list[str]
    input_ids: torch.Tensor
    labels: torch.Tensor
    segment_ids: torch.Tensor | None
    attention_mask: torch.Tensor | None
    lengths: torch.Tensor
    loss_mask: torch.Tensor
    targets: torch.Tensor
    window: int

    def to(self, device: torch.device | str) -> "Batch":
        """A copy whose model inputs and masks live on ``device`` (``index`` and ``lengths`` stay on the CPU)."""
        mv = (lambda t: None if t is None else t.to(device, non_blocking=True))
        return dataclasses.replace(self, input_ids=mv(self.input_ids), labels=mv(self.labels),
                                   segment_ids=mv(self.segment_ids), attention_mask=mv(self.attention_mask),
                                   loss_mask=mv(self.loss_mask), targets=mv(self.targets))


def collate(examples: Sequence[Any], index: Sequence[int] | None = None, pad_id: int = 0) -> Batch:
    """Right-pad examples (dicts or objects with ``id``, ``input_ids``, ``labels``, optional
    ``segment_ids`` and ``attention_mask``) into a :class:`Batch`."""
    B = len(examples)
    ids = [str(_field(ex, "id")) for ex in examples]
    toks = [_as_long(_field(ex, "input_ids"), "input_ids", i) for ex, i in zip(examples, ids)]
    labs = [_as_long(_field(ex, "labels"), "labels", i) for ex, i in zip(examples, ids)]
    for t, lab, i in zip(toks, labs, ids):
        if t.shape != lab.shape:
            raise ValueError(f"example {i!r}: labels has {lab.numel()} tokens, input_ids {t.numel()}")
    T = max(t.numel() for t in toks)
    input_ids = torch.full((B, T), pad_id, dtype=torch.long)
    labels = torch.full((B, T), -100, dtype=torch.long)
    segs = [_field(ex, "segment_ids") for ex in examples]
    segment_ids = torch.full((B, T), -1, dtype=torch.long) if any(s is not None for s in segs) else None
    masks = [_field(ex, "attention_mask") for ex in examples]
    use_mask = any(m is not None and not bool(torch.as_tensor(m).bool().all()) for m in masks)
    attention_mask = torch.zeros((B, T), dtype=torch.long) if use_mask else None
    for b, (t, lab) in enumerate(zip(toks, labs)):
        n = t.numel()
        input_ids[b, :n] = t
        labels[b, :n] = lab
        if segment_ids is not None and segs[b] is not None:
            s = _as_long(segs[b], "segment_ids", ids[b])
            if s.numel() != n:
                raise ValueError(f"example {ids[b]!r}: segment_ids has {s.numel()} tokens, input_ids {n}")
            segment_ids[b, :n] = s
        if attention_mask is not None:
            attention_mask[b, :n] = 1 if masks[b] is None else torch.as_tensor(masks[b]).long()
    lengths = torch.tensor([t.numel() for t in toks], dtype=torch.long)
    targets = torch.full_like(labels, -100)
    targets[:, :-1] = labels[:, 1:]
    loss_mask = targets != -100
    pos = torch.arange(T).expand(B, T)
    last = torch.where(loss_mask, pos, torch.full_like(pos, -1)).max(dim=1).values  # (B,)
    window = int(last.max().item()) + 1 if B else 0
    idx = torch.as_tensor(list(index) if index is not None else range(B), dtype=torch.long)
    return Batch(idx, ids, input_ids, labels, segment_ids, attention_mask, lengths, loss_mask, targets, max(window, 1))


def make_batches(dataset: Sequence[Any], batch_size: int, sort: bool = True) -> list[list[int]]:
    """Dataset indices grouped into batches; with ``sort`` the examples are ordered by length
    (longest first, stable) so that each batch carries little padding."""
    if batch_size < 1:
        raise ValueError("batch_size must be >= 1")
    n = len(dataset)
    order = list(range(n))
    if sort:
        lens = [int(torch.as_tensor(_field(ex, "input_ids")).numel()) for ex in dataset]
        order.sort(key=lambda i: -lens[i])
    return [order[i:i + batch_size] for i in range(0, n, batch_size)]


# --------------------------------------------------------------------------- label sampling
def _example_seed(seed: int, tag: str, ex_id: str) -> int:
    h = hashlib.sha256(f"{seed}/{tag}/{ex_id}".encode()).digest()
    return int.from_bytes(h[:8], "little") & (2**63 - 1)


def _uniforms(batch: Batch, seed: int, tag: str) -> torch.Tensor:
    """(B, T) float64 uniforms, a function of (seed, tag, example id, position) only, so sampled
    labels do not depend on batch composition or padding."""
    B, T = batch.input_ids.shape
    u = torch.empty(B, T, dtype=torch.float64)
    for b, ex_id in enumerate(batch.ids):
        gen = torch.Generator().manual_seed(_example_seed(seed, tag, ex_id))
        u[b] = torch.rand(T, generator=gen, dtype=torch.float64)
    return u


def _sample_inverse_cdf(probs: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Labels drawn from ``probs`` (N, V) with uniforms ``u`` (N,) by inverse CDF."""
    cdf = probs.to(torch.float64).cumsum(-1)
    x = (u * cdf[:, -1]).unsqueeze(-1)
    return torch.searchsorted(cdf, x).squeeze(-1).clamp_(max=probs.shape[-1] - 1)


# --------------------------------------------------------------------------- capture
@dataclass
class Capture:
    """Per-token inputs and output gradients of the tracked modules for one batch.

    Attributes:
        a: group name -> (B, W, d_in [+1]) inputs, in the requested dtype, sliced to W >= the window
            (a bias column of ones is appended for modules with a bias). Modules that read the same
            input tensor (q/k/v, gate/up) with the same bias flag share one group.
        g: module name -> (B, W, d_out) gradient of the summed (response-masked) NLL with respect
            to the module output, zero at padding and beyond each example's last loss position.
        group_of: module name -> group name.
        batch: the :class:`Batch`.
    """

    a: dict[str, torch.Tensor]
    g: dict[str, torch.Tensor]
    group_of: dict[str, str]
    batch: Batch
    groups: dict[str, list[str]] = field(default_factory=dict)

    def check_finite(self, what: str = "") -> None:
        """Raise ``FloatingPointError`` naming the first module with a non-finite input or gradient."""
        for grp, a in self.a.items():
            if not torch.isfinite(a).all():
                raise FloatingPointError(f"non-finite activations entering module {grp!r}{what}")
        for name, g in self.g.items():
            if not torch.isfinite(g).all():
                raise FloatingPointError(f"non-finite output gradients at module {name!r}{what}")


def _checkpointing_on(model: nn.Module) -> bool:
    """Whether any layer of a transformers model has gradient checkpointing switched on."""
    return any(getattr(m, "gradient_checkpointing", False) is True for m in model.modules())


class ModuleTracker:
    """Hooks on the tracked ``nn.Linear`` modules of a causal LM; use as a context manager.

    Inside the context the model is in eval mode with every parameter frozen, and the embedding
    output requires grad, so that :meth:`run` can ask autograd for the module-output gradients
    only. On exit hooks are removed and the parameters' ``requires_grad`` and the training mode
    are restored.
    """

    def __init__(self, model: nn.Module, module_names: Sequence[str], dtype: torch.dtype = torch.float32,
                 autocast: torch.dtype | None = None, gradient_checkpointing: bool = False,
                 prefix: "PrefixCache | None" = None):
        """``dtype``: dtype of the captured inputs and gradients (the accumulators follow it);
        ``autocast``: run the forward under ``torch.autocast`` in this dtype (e.g. ``torch.bfloat16``)
        while captures are still cast to ``dtype``; ``gradient_checkpointing``: recompute each decoder
        layer in the backward (``transformers``' ``gradient_checkpointing_enable``, non-reentrant);
        ``prefix``: a :class:`PrefixCache` for these modules (see there): gradient starts at the input
        of the lowest tracked decoder layer, and the frozen layers below it are skipped for examples
        whose input is cached."""
        self.model = model
        self.prefix = prefix if prefix is not None and prefix.start > 0 else None
        self.names = list(module_names)
        self.dtype = dtype
        self.autocast = autocast
        self.gradient_checkpointing = bool(gradient_checkpointing)
        self._recording = False
        named = dict(model.named_modules())
        missing = [n for n in self.names if n not in named]
        if missing:
            raise ValueError(f"modules not found in the model: {missing}")
        self.modules = {n: named[n] for n in self.names}
        for n, m in self.modules.items():
            if not isinstance(m, nn.Linear):
                raise ValueError(f"module {n!r} is a {type(m).__name__}, not an nn.Linear")
        self._x: dict[str, torch.Tensor] = {}
        self._y: dict[str, torch.Tensor] = {}
        self._handles: list = []

    # shapes (d_out, d_in including the bias column)
    def shapes(self) -> dict[str, tuple[int, int]]:
        return {n: (m.out_features, m.in_features + (m.bias is not None)) for n, m in self.modules.items()}

    def __enter__(self) -> "ModuleTracker":
        self._was_training = self.model.training
        self._req = [(p, p.requires_grad) for p in self.model.parameters()]
        self.model.eval()
        self._gc_was = _checkpointing_on(self.model)
        if self.gradient_checkpointing:
            self._enable_checkpointing()
        for p, _ in self._req:
            p.requires_grad_(False)
        if self.prefix is None:
            emb = self.model.get_input_embeddings()

            def emb_hook(_m, _inp, out):
                return out.requires_grad_(True) if not out.requires_grad else out

            self._handles.append(emb.register_forward_hook(emb_hook))
        else:
            self._handles.append(self.prefix.layers[self.prefix.start].register_forward_pre_hook(
                self._prefix_hook, with_kwargs=True))
            below = self.prefix.layers[self.prefix.start - 1]

            def kind_hook(_m, _inp, out):  # what the skipped layers must return: a tensor or a tuple
                self.prefix._tuple_out = isinstance(out, tuple)

            self._handles.append(below.register_forward_hook(kind_hook))
        self._batch: Batch | None = None
        self._cached: torch.Tensor | None = None
        for n, m in self.modules.items():
            self._handles.append(m.register_forward_hook(self._make_hook(n)))
        return self

    def _enable_checkpointing(self) -> None:
        """HF checkpointing only acts in train mode: allowed when no dropout is active (then train
        mode computes what eval mode does)."""
        if not hasattr(self.model, "gradient_checkpointing_enable"):
            raise ValueError(f"gradient checkpointing needs a transformers model, got {type(self.model).__name__}")
        drop = [n for n, m in self.model.named_modules() if isinstance(m, nn.Dropout) and m.p > 0]
        cfg = getattr(self.model, "config", None)
        for k in ("attention_dropout", "hidden_dropout", "dropout", "resid_pdrop", "attn_pdrop"):
            if float(getattr(cfg, k, 0.0) or 0.0) > 0:
                drop.append(f"config.{k}={getattr(cfg, k)}")
        if drop:
            raise ValueError(f"gradient checkpointing runs the model in train mode, but it has active dropout "
                             f"({', '.join(drop[:3])}); set it to 0 or run without checkpointing")
        with warnings.catch_warnings():  # renamed activation_checkpointing_* in recent transformers
            warnings.simplefilter("ignore", FutureWarning)
            self.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        self.model.train()

    def __exit__(self, *exc) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()
        if self.gradient_checkpointing and not self._gc_was:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)
                self.model.gradient_checkpointing_disable()
        for p, r in self._req:
            p.requires_grad_(r)
        self.model.train(self._was_training)
        self._x.clear()
        self._y.clear()

    def _prefix_hook(self, _m, args, kwargs):
        """Input of the lowest tracked layer: the cached one (lower layers were skipped) or the one
        just computed (stored in the cache); detached, so that gradient starts here and the frozen
        layers below keep no autograd graph."""
        if not self._recording:
            return None
        if args:
            h, args = args[0], args[1:]
        else:
            h = kwargs.pop("hidden_states")
        if self._cached is not None:
            h = self._cached
        else:
            h = h.detach()
            self.prefix.store(self._batch, h)
        return (h.requires_grad_(True),) + tuple(args), kwargs

    def _make_hook(self, name: str):
        def hook(_m, inputs, output):
            if not self._recording:  # a checkpointed layer recomputing in the backward: keep the first capture
                return
            if name in self._y:
                raise RuntimeError(f"module {name!r} ran twice in one forward pass; shared modules are not supported")
            self._x[name] = inputs[0]
            self._y[name] = output
        return hook

    def _name_non_finite(self) -> None:
        """Raise naming the first tracked module (model order) whose input or output is non-finite."""
        for n in self.names:
            if n in self._x and not torch.isfinite(self._x[n]).all():
                raise FloatingPointError(f"non-finite activations entering module {n!r}")
            if n in self._y and not torch.isfinite(self._y[n]).all():
                raise FloatingPointError(f"non-finite output of module {n!r} (its inputs are finite)")

    def _logits(self, batch: Batch) -> torch.Tensor:
        """Logits at the loss positions only, (N_loss, V): the LM head never runs on the prompt."""
        model = self.model
        get_dec = getattr(model, "get_decoder", None)
        head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
        kw = dict(input_ids=batch.input_ids, use_cache=False)
        if batch.attention_mask is not None:
            kw["attention_mask"] = batch.attention_mask
        dec = get_dec() if callable(get_dec) else None
        if dec is not None and head is not None and dec is not model:
            out = dec(**kw)
            hidden = out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]
            logits = head(hidden[batch.loss_mask])
            cap = getattr(getattr(model, "config", None), "final_logit_softcapping", None)
            if cap:
                logits = torch.tanh(logits / cap) * cap
            return logits
        return model(**kw).logits[batch.loss_mask]

    def run(self, batch: Batch, targets: str = "data", seed: int = 0, tag: str = "") -> Capture:
        """Forward and backward one batch; return the tracked inputs and output gradients.

        Args:
            batch: a :class:`Batch` (from :func:`collate`).
            targets: ``"data"`` (the labels: empirical Fisher and scores) or ``"sampled"`` (labels
                drawn from the model's predictive distribution by inverse CDF with uniforms seeded by
                ``(seed, tag, example id, position)``: the true-Fisher estimate).

        Returns:
            A :class:`Capture`; gradients are of the SUMMED NLL over loss positions.
        """
        self._x.clear()
        self._y.clear()
        device = next(self.model.parameters()).device
        batch = batch.to(device)
        cast = (torch.autocast(device.type, dtype=self.autocast) if self.autocast is not None
                else contextlib.nullcontext())
        skip = contextlib.nullcontext()
        if self.prefix is not None:
            self._batch = batch
            self._cached = self.prefix.lookup(batch)  # (B, T, H) or None
            if self._cached is not None:
                skip = self.prefix.skipping_lower_layers()
        try:
            with torch.enable_grad():
                self._recording = True
                with cast, skip:
                    logits = self._logits(batch)  # (N_loss, V)
                self._recording = False
                self._cached = self._batch = None
                y = [self._y[n] for n in self.names if n in self._y]
                if len(y) != len(self.names):
                    missing = [n for n in self.names if n not in self._y]
                    raise RuntimeError(f"tracked modules did not run in the forward pass: {missing}")
                with torch.no_grad():
                    lf = logits.detach()
                    lf = lf if lf.dtype in (torch.float32, torch.float64) else lf.float()
                    probs = torch.softmax(lf, dim=-1)  # (N_loss, V)
                    if not torch.isfinite(probs).all():
                        self._name_non_finite()
                        raise FloatingPointError("non-finite logits at the LM head (tracked modules are finite)")
                    if targets == "data":
                        tgt = batch.targets[batch.loss_mask]
                    elif targets == "sampled":
                        u = _uniforms(batch, seed, tag).to(device)[batch.loss_mask]
                        tgt = _sample_inverse_cdf(probs, u)
                    else:
                        raise ValueError(f"targets must be 'data' or 'sampled', got {targets!r}")
                    # d(sum NLL)/d logits = softmax - onehot: no cross-entropy graph needed
                    grad_logits = probs
                    grad_logits[torch.arange(tgt.numel(), device=tgt.device), tgt] -= 1.0
                    grad_logits = grad_logits.to(logits.dtype)
                if logits.numel():
                    grads = torch.autograd.grad(logits, y, grad_outputs=grad_logits, allow_unused=True)
                else:
                    grads = [None] * len(y)
                del logits, grad_logits, probs, lf
            shapes_y = {n: self._y[n].shape for n in self.names}
            dtype_y = y[0].dtype
            del y
            self._y.clear()  # the module outputs are not needed any more: free them before the steps
            W = batch.window
            if 8 * W > 7 * batch.input_ids.shape[1]:  # keep tensors contiguous unless slicing saves much
                W = batch.input_ids.shape[1]
            groups: dict[tuple, str] = {}
            group_members: dict[str, list[str]] = {}
            a_out: dict[str, torch.Tensor] = {}
            g_out: dict[str, torch.Tensor] = {}
            group_of: dict[str, str] = {}
            for n, gr in zip(self.names, grads):
                x = self._x[n]
                bias = self.modules[n].bias is not None
                key = (x.data_ptr(), tuple(x.shape), tuple(x.stride()), x.storage_offset(), bias)
                grp = groups.get(key)
                if grp is None:
                    grp = groups[key] = n
                    a = x.detach()[:, :W].to(self.dtype)
                    if bias:
                        a = torch.cat([a, a.new_ones(a.shape[:-1] + (1,))], dim=-1)
                    a_out[grp] = a
                    group_members[grp] = []
                group_members[grp].append(n)
                group_of[n] = grp
                if gr is None:
                    gr = torch.zeros(shapes_y[n], dtype=dtype_y, device=device)
                g_out[n] = gr.detach()[:, :W].to(self.dtype)
            return Capture(a_out, g_out, group_of, batch, group_members)
        finally:
            self._recording = False
            self._cached = self._batch = None
            self._x.clear()
            self._y.clear()


# --------------------------------------------------------------------------- prefix cache
def find_decoder_layers(model: nn.Module, module_names: Sequence[str]) -> tuple[nn.ModuleList | None, int, str]:
    """The decoder's layer list and the index of the lowest layer holding a tracked module.

    Returns ``(layers, start, reason)``: ``layers`` is the outermost ``nn.ModuleList`` whose numbered
    children contain every tracked module (``model.layers`` in HF decoders), ``start`` the lowest
    such child index; ``(None, 0, reason)`` when no list holds them all.
    """
    lists = sorted(((n, m) for n, m in model.named_modules() if isinstance(m, nn.ModuleList) and len(m)),
                   key=lambda t: t[0].count("."))
    for lname, ml in lists:
        pre = f"{lname}." if lname else ""
        idx = []
        for n in module_names:
            head = n[len(pre):].split(".", 1)[0] if n.startswith(pre) else ""
            if not head.isdigit():
                break
            idx.append(int(head))
        else:
            return ml, min(idx), ""
    return None, 0, "the tracked modules are not all inside one nn.ModuleList of decoder layers"


def _stamp(model: nn.Module, upper: nn.ModuleList, start: int) -> tuple:
    """Identity and in-place version of every parameter below the tracked layers: an optimizer
    step or ``load_state_dict`` changes it, so cached inputs are never reused for other weights."""
    skip = {id(p) for layer in list(upper)[start:] for p in layer.parameters()}
    return tuple((id(p), p.data_ptr(), p._version) for p in model.parameters() if id(p) not in skip)


def _token_key(ids: torch.Tensor) -> bytes:
    """The prefix cache's key of an example: a digest of its unpadded token ids."""
    return hashlib.blake2b(ids.detach().cpu().to(torch.int64).numpy().tobytes(), digest_size=16).digest()


class PrefixCache:
    """Inputs of the lowest tracked decoder layer, per example, computed once and reused.

    When only upper layers are tracked (the MLPs of the last 4 of 30 layers, say), every pass
    (covariance, Lambda, query gradients, scores) would run the frozen lower layers on the same
    tokens again. With a cache, the first pass that sees an example keeps the hidden state entering
    layer ``start`` (T_i, H); later passes skip layers ``0 .. start-1`` and start from it. In
    every case gradient starts at that input (it is detached and made to require grad), so the
    lower layers keep no autograd graph and the backward stops at the lowest tracked layer.

    An entry is keyed by the example's tokens (a digest of its ``input_ids``; the tokens and the
    attention mask are compared on lookup), not by its id: examples that share their tokens and
    differ only in their labels (one per segment of a CoT, say) share one entry. The whole cache
    is dropped when any parameter below ``start`` changes (see
    :func:`prefix_cache_for`). Right padding never reaches real positions (causal attention), so
    padded positions are filled with zeros. ``store=False``: the same gradient start, no storage.

    Attributes:
        layers: the decoder's layer list; ``start``: index of the lowest tracked layer (0: nothing to
            cache, the tracker then runs as without a cache); ``reason``: why not, when ``start == 0``.
        hits, misses: batches served from the cache / computed (and stored).
    """

    def __init__(self, model: nn.Module, module_names: Sequence[str], store: bool = True):
        self.layers, self.start, self.reason = find_decoder_layers(model, module_names)
        if self.layers is not None and self.start == 0:
            self.reason = "a module of the first decoder layer is tracked"
        self.store_enabled = bool(store) and self.start > 0
        self.stamp = _stamp(model, self.layers, self.start) if self.start > 0 else ()
        self._data: dict[bytes, tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]] = {}
        self._tuple_out = False
        self.hits = self.misses = 0

    @property
    def nbytes(self) -> int:
        """Bytes of the cached hidden states."""
        return sum(h.numel() * h.element_size() for _, _, h in self._data.values())

    def __len__(self) -> int:
        return len(self._data)

    def clear(self) -> None:
        self._data.clear()

    def lookup(self, batch: Batch) -> torch.Tensor | None:
        """(B, T, H) cached inputs of layer ``start`` for every example of ``batch`` (zeros at
        padding), or None when any example is missing or its tokens changed."""
        if not self.store_enabled:
            return None
        B, T = batch.input_ids.shape
        got = []
        for b in range(B):
            n = int(batch.lengths[b])
            e = self._data.get(_token_key(batch.input_ids[b, :n]))
            if e is None or e[0].numel() != n or not torch.equal(e[0], batch.input_ids[b, :n].cpu()):
                self.misses += 1
                return None
            m = None if batch.attention_mask is None else batch.attention_mask[b, :n].cpu()
            if (m is None) != (e[1] is None) or (m is not None and not torch.equal(m, e[1])):
                self.misses += 1
                return None
            got.append(e[2])
        h0 = got[0]
        out = h0.new_zeros((B, T, h0.shape[-1]), device=batch.input_ids.device)
        for b, h in enumerate(got):
            out[b, :h.shape[0]] = h
        self.hits += 1
        return out

    def store(self, batch: Batch | None, hidden: torch.Tensor) -> None:
        """Keep each example's unpadded rows of ``hidden`` (B, T, H), the input of layer ``start``."""
        if not self.store_enabled or batch is None:
            return
        for b in range(len(batch.ids)):
            n = int(batch.lengths[b])
            m = None if batch.attention_mask is None else batch.attention_mask[b, :n].cpu().clone()
            ids = batch.input_ids[b, :n].cpu().clone()
            self._data[_token_key(ids)] = (ids, m, hidden[b, :n].clone())

    @contextlib.contextmanager
    def skipping_lower_layers(self):
        """Layers ``0 .. start-1`` pass their input through unchanged (their output is replaced by
        the cached input of layer ``start`` anyway)."""
        lower = list(self.layers)[:self.start]
        as_tuple = self._tuple_out

        def stub(*args, **kwargs):
            h = args[0] if args else kwargs["hidden_states"]
            return (h,) if as_tuple else h

        own = [layer.__dict__.get("forward") for layer in lower]  # an instance forward (e.g. accelerate's) comes back
        for layer in lower:
            layer.forward = stub
        try:
            yield
        finally:
            for layer, f in zip(lower, own):
                del layer.forward
                if f is not None:
                    layer.forward = f


_CACHES: "weakref.WeakKeyDictionary[nn.Module, PrefixCache]" = weakref.WeakKeyDictionary()


def prefix_cache_for(model: nn.Module, module_names: Sequence[str], store: bool = True) -> PrefixCache:
    """The :class:`PrefixCache` kept for ``model`` (weakly: it goes with the model) when it is still
    valid for these modules' lowest layer and the model's current lower weights; else a new one
    (replacing the old). ``store=False`` returns a cache that stores nothing (and keeps the old one)."""
    new = PrefixCache(model, module_names, store)
    if not new.store_enabled:
        return new
    old = _CACHES.get(model)
    if old is not None and old.layers is new.layers and old.start == new.start and old.stamp == new.stamp:
        return old
    _CACHES[model] = new
    return new


# --------------------------------------------------------------------------- per-example gradients
def per_example_gradients(model: nn.Module, dataset: Sequence[Any], modules: str | Sequence[str] = "mlp",
                          batch_size: int = 8, dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
    """Per-example gradients of the summed response NLL, from the hooks (no parameter gradients).

    Returns:
        module name -> (N, d_out, d_in [+1 bias column]) in dataset order; dtype defaults to the
        model's. Memory is N x tracked parameters: meant for micro models and tests.
    """
    names = select_modules(model, modules)
    dtype = dtype or next(model.parameters()).dtype
    out: dict[str, torch.Tensor] = {}
    with ModuleTracker(model, names, dtype) as tr:
        shapes = tr.shapes()
        for n in names:
            out[n] = torch.zeros((len(dataset),) + shapes[n], dtype=dtype)
        for idx in make_batches(dataset, batch_size):
            cap = tr.run(collate([dataset[i] for i in idx], idx), "data")
            for n in names:
                a = cap.a[cap.group_of[n]]
                out[n][cap.batch.index] = torch.bmm(cap.g[n].transpose(1, 2), a)
    return out
