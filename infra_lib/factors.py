"""Curvature factors for influence: identity, diagonal, K-FAC and EK-FAC (Grosse et al. 2023).

For a tracked linear module with per-token inputs ``a`` (d_in, a bias column appended where the
module has a bias) and output gradients ``g`` (d_out), the per-example gradient is
``G_n = sum_t g_t a_t^T`` (d_out, d_in) and the curvature block is the Fisher
``F = E_n[vec(G_n) vec(G_n)^T]`` (empirical: labels = data; sampled: labels drawn from the model).

- ``kfac``:  ``F ~ A (x) S`` with ``A = mean over loss tokens of a a^T`` and
  ``S = (1/N) sum_n sum_t g_t g_t^T`` (per-sequence scale, so absolute damping means the same for
  K-FAC and EK-FAC). Modules that read the same input tensor share one ``A``.
- ``ekfac``: the eigenbases ``Q_A, Q_S`` of those factors (float64 eigendecomposition), with the
  eigenvalues replaced by ``Lambda = (1/N) sum_n (Q_S^T G_n Q_A)^2`` (elementwise).
- ``diagonal``: ``F ~ diag((1/N) sum_n G_n^2)``.
- ``identity``: no curvature; scores are plain gradient dot products (damping unused).

Damping: ``lambda`` absolute, or ``damping_scale x mean eigenvalue`` per module (default 0.1,
the heuristic of Grosse et al. and kronfluence).

Passes: covariance -> eigendecomposition -> Lambda; each saves chunks under ``out_dir`` and
resumes after an interruption; final artifacts are written atomically as safetensors plus a JSON
with the config and a fingerprint of model weights, tracked modules and data ids.
"""
from __future__ import annotations

import dataclasses
import hashlib
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from torch import nn
from tqdm import tqdm

from . import checks
from . import distributed as dist
from . import planner
from .io import atomic_write_json, config_hash, config_to_dict, read_json, save_tensors_atomic
from .tracking import Capture, ModuleTracker, collate, example_ids, make_batches, select_modules

__all__ = [
    "merge_factors",
    "FactorConfig",
    "Factors",
    "fit_factors",
    "factors_exist",
    "load_factors",
    "save_factors",
    "fingerprint",
]

STRATEGIES = ("identity", "diagonal", "kfac", "ekfac")
_DTYPES = {"float32": torch.float32, "float64": torch.float64}
_FACTORS_FILE, _META_FILE = "factors.safetensors", "factors.json"


@dataclass(frozen=True)
class FactorConfig:
    """How curvature factors are fit. Saved as JSON beside the factors."""

    strategy: str = "ekfac"
    """Curvature approximation: ``identity`` | ``diagonal`` | ``kfac`` | ``ekfac``."""
    modules: str | tuple[str, ...] = "mlp"
    """Tracked modules: ``mlp`` (feed-forward linears), ``all-linear``, or names / regexes."""
    damping: float | None = None
    """Absolute damping added to every eigenvalue; ``None``: relative (see ``damping_scale``)."""
    damping_scale: float = 0.1
    """Relative damping: ``damping_scale x mean eigenvalue`` of each module's curvature block."""
    fisher: str = "sampled"
    """``sampled`` (labels drawn from the model, seeded: the true Fisher) or ``empirical`` (labels = data)."""
    seed: int = 0
    """Seed of the sampled labels (per example id and position: independent of batching)."""
    dtype: str = "float32"
    """Dtype of activations, gradients and accumulators: ``float32`` or ``float64``. Eigendecompositions run in float64."""
    batch_size: int = 16
    """Examples per batch (batches are length-sorted to cut padding)."""
    save_every: int = 8
    """Batches between resume checkpoints when an ``out_dir`` is given."""

    def __post_init__(self) -> None:
        if self.strategy not in STRATEGIES:
            raise ValueError(f"strategy must be one of {STRATEGIES}, got {self.strategy!r}")
        mods = self.modules
        if not isinstance(mods, str):
            mods = tuple(str(m) for m in mods)
            if not mods:
                raise ValueError("modules must not be empty")
            object.__setattr__(self, "modules", mods)
        if self.damping is not None and not (float(self.damping) >= 0.0):
            raise ValueError(f"damping must be None or >= 0, got {self.damping!r}")
        if not self.damping_scale > 0:
            raise ValueError(f"damping_scale must be > 0, got {self.damping_scale!r}")
        if self.fisher not in ("sampled", "empirical"):
            raise ValueError(f"fisher must be 'sampled' or 'empirical', got {self.fisher!r}")
        if self.dtype not in _DTYPES:
            raise ValueError(f"dtype must be one of {tuple(_DTYPES)}, got {self.dtype!r}")
        if self.batch_size < 1 or self.save_every < 1:
            raise ValueError("batch_size and save_every must be >= 1")

    @property
    def torch_dtype(self) -> torch.dtype:
        return _DTYPES[self.dtype]

    def fit_key(self) -> str:
        """Hash of the fields that change the fitted statistics (damping does not)."""
        d = config_to_dict(self)
        for k in ("damping", "damping_scale", "save_every"):
            d.pop(k)
        d["lambda_labels"] = "covariance"  # the Λ pass reuses the covariance pass's sampled labels
        return config_hash(d)


# --------------------------------------------------------------------------- fingerprint
def _tensor_bytes(t: torch.Tensor) -> memoryview:
    t = t.detach().cpu().contiguous()
    return memoryview(t.view(torch.uint8).reshape(-1).numpy())


def model_hash(model: nn.Module) -> str:
    """blake2b of every parameter's name, dtype, shape and bytes."""
    h = hashlib.blake2b(digest_size=16)
    for name, p in model.named_parameters():
        h.update(f"{name}|{p.dtype}|{tuple(p.shape)}".encode())
        h.update(_tensor_bytes(p))
    return h.hexdigest()


def data_hash(dataset: Sequence[Any]) -> str:
    """blake2b of the examples' ids, tokens and loss masks, in order."""
    h = hashlib.blake2b(digest_size=16)
    for ex in dataset:
        get = (lambda k: ex.get(k)) if isinstance(ex, dict) else (lambda k: getattr(ex, k, None))
        h.update(str(get("id")).encode() + b"\0")
        h.update(_tensor_bytes(torch.as_tensor(get("input_ids")).long()))
        h.update(_tensor_bytes((torch.as_tensor(get("labels")) != -100).to(torch.uint8)))
    return h.hexdigest()


def fingerprint(model: nn.Module, module_names: Sequence[str], dataset: Sequence[Any] | None = None) -> dict:
    """What factors depend on: model weights hash, tracked modules with shapes, data ids and hash."""
    named = dict(model.named_modules())
    fp = {
        "model": model_hash(model),
        "modules": {n: [named[n].out_features, named[n].in_features + (named[n].bias is not None)]
                    for n in module_names},
    }
    if dataset is not None:
        ids = example_ids(dataset)
        fp["data"] = data_hash(dataset)
        fp["n_examples"] = len(ids)
        fp["ids_hash"] = hashlib.blake2b("\n".join(ids).encode(), digest_size=16).hexdigest()
    return fp


# --------------------------------------------------------------------------- factors object
@dataclass
class Factors:
    """Fitted curvature factors of the tracked modules.

    Attributes:
        config: the :class:`FactorConfig` used.
        modules: tracked module names, in model order.
        shapes: module -> (d_out, d_in [+1 bias column]).
        group_of: module -> name of its input group (modules that share an input share ``A``).
        tensors: ``A.<group>`` (d_in, d_in), ``QA.<group>``/``eA.<group>`` eigenvectors/values,
            ``S.<module>`` (d_out, d_out), ``QS.<module>``/``eS.<module>``, ``L.<module>``
            (d_out, d_in) eigenvalue correction (EK-FAC) or Fisher diagonal (diagonal).
        fingerprint: model hash, tracked modules and data of the fit.
        counts: ``n_examples`` (sequences with a loss) and ``n_tokens`` (loss positions).
        diagnostics: ``conditioning``: factor name -> :func:`~infra_lib.checks.eigen_report`.
    """

    config: FactorConfig
    modules: list[str]
    shapes: dict[str, tuple[int, int]]
    group_of: dict[str, str]
    tensors: dict[str, torch.Tensor]
    fingerprint: dict
    counts: dict[str, int]
    diagnostics: dict = dataclasses.field(default_factory=dict)

    def check_compatible(self, model: nn.Module, module_names: Sequence[str] | None = None) -> None:
        """Raise ``ValueError`` when these factors were fit for another model or module set."""
        names = list(module_names) if module_names is not None else select_modules(model, self.config.modules)
        if names != self.modules:
            raise ValueError(f"factors were fit for modules {self.modules}, not {names}; refit them for this module set")
        fp = fingerprint(model, names)
        if fp["modules"] != {k: list(v) for k, v in self.fingerprint["modules"].items()}:
            raise ValueError("factors were fit for modules of other shapes; refit them for this model")
        if fp["model"] != self.fingerprint["model"]:
            raise ValueError(f"factors were fit for another model (weights hash {self.fingerprint['model']}, "
                             f"this model {fp['model']}); refit them for this model")

    def eigenvalues(self, name: str) -> torch.Tensor | None:
        """(d_out, d_in) float64 eigenvalues of the module's curvature in its eigenbasis (None for identity)."""
        s = self.config.strategy
        if s in ("ekfac", "diagonal"):
            return self.tensors[f"L.{name}"].double()
        if s == "kfac":
            g = self.group_of[name]
            return torch.outer(self.tensors[f"eS.{name}"].double(), self.tensors[f"eA.{g}"].double())
        return None

    def damping(self, name: str) -> float:
        """The damping of a module: absolute, or ``damping_scale x mean eigenvalue``."""
        if self.config.damping is not None:
            return float(self.config.damping)
        ev = self.eigenvalues(name)
        return 0.0 if ev is None else float(self.config.damping_scale * ev.mean())

    @torch.no_grad()
    def precondition(self, name: str, grads: torch.Tensor) -> torch.Tensor:
        """``(F + lambda I)^{-1} vec(G)`` for a stack of gradients of one module.

        Args:
            name: tracked module name.
            grads: (R, d_out, d_in) gradients (any float dtype).

        Returns:
            (R, d_out, d_in) preconditioned gradients, same dtype as ``grads``. Identity returns
            ``grads`` unchanged.
        """
        s = self.config.strategy
        if s == "identity":
            return grads
        dt, dev = grads.dtype, grads.device
        lam = self.damping(name)
        if s == "diagonal":
            return (grads / (self.tensors[f"L.{name}"].to(dev, dt) + lam)).to(dt)
        qa = self.tensors[f"QA.{self.group_of[name]}"].to(dev, dt)
        qs = self.tensors[f"QS.{name}"].to(dev, dt)
        ev = self.eigenvalues(name)
        inv = (1.0 / (ev + lam)).to(dev, dt)  # (d_out, d_in)
        rot = qs.T @ grads @ qa  # (R, d_out, d_in) in the eigenbasis
        return qs @ (rot * inv) @ qa.T


# --------------------------------------------------------------------------- storage
def factors_exist(out_dir: str | Path) -> bool:
    """True when ``out_dir`` holds complete factors (tensors and JSON)."""
    p = Path(out_dir)
    return (p / _FACTORS_FILE).is_file() and (p / _META_FILE).is_file()


def save_factors(factors: Factors, out_dir: str | Path) -> Path:
    """Write factors atomically: ``factors.safetensors`` then ``factors.json`` (written last)."""
    p = Path(out_dir)
    p.mkdir(parents=True, exist_ok=True)
    save_tensors_atomic(p / _FACTORS_FILE, factors.tensors or {"_empty": torch.zeros(0)})
    atomic_write_json(p / _META_FILE, {
        "config": config_to_dict(factors.config), "config_hash": config_hash(factors.config),
        "modules": factors.modules, "shapes": factors.shapes, "group_of": factors.group_of,
        "fingerprint": factors.fingerprint, "counts": factors.counts, "format": 1,
        "fit_key": factors.config.fit_key(), "diagnostics": factors.diagnostics,
    })
    return p


def load_factors(out_dir: str | Path, model: nn.Module | None = None,
                 modules: str | Sequence[str] | None = None) -> Factors:
    """Load factors; with ``model`` (and optionally a ``modules`` selection) refuse factors that were
    fit for another model or module set, with a message saying so."""
    p = Path(out_dir)
    if not factors_exist(p):
        raise FileNotFoundError(f"no factors in {p} (expected {_FACTORS_FILE} and {_META_FILE})")
    meta = read_json(p / _META_FILE)
    cfg = dict(meta["config"])
    if isinstance(cfg.get("modules"), list):
        cfg["modules"] = tuple(cfg["modules"])
    rebuild = f"re-run fit_factors (infra fit-factors) with out_dir={p}"
    tensors = {k: v for k, v in checks.load_tensors(p / _FACTORS_FILE, rebuild).items() if k != "_empty"}
    f = Factors(FactorConfig(**cfg), list(meta["modules"]), {k: tuple(v) for k, v in meta["shapes"].items()},
                dict(meta["group_of"]), tensors, meta["fingerprint"], meta["counts"], meta.get("diagnostics", {}))
    if model is not None:
        names = select_modules(model, modules if modules is not None else f.config.modules)
        f.check_compatible(model, names)
    return f


class _Checkpoint:
    """Partial state of a pass: saved every few batches, resumed if its key matches."""

    def __init__(self, out_dir: str | Path | None, name: str, key: str):
        self.path = None if out_dir is None else Path(out_dir) / f".partial_{name}.safetensors"
        self.key = key

    def load(self) -> tuple[int, dict[str, torch.Tensor], dict] | None:
        if self.path is None or not self.path.is_file():
            return None
        from safetensors import safe_open

        try:
            with safe_open(str(self.path), framework="pt") as fh:
                meta = fh.metadata() or {}
                if meta.get("key") != self.key:
                    return None
                state = {k: fh.get_tensor(k) for k in fh.keys()}
        except Exception as exc:  # a corrupt checkpoint only costs the work it held: start the pass again
            import warnings

            warnings.warn(f"{self.path}: unreadable checkpoint ({type(exc).__name__}); starting this pass again")
            return None
        import json

        return int(meta["done"]), state, json.loads(meta.get("extra", "{}"))

    def save(self, done: int, state: dict[str, torch.Tensor], extra: dict | None = None) -> None:
        if self.path is not None:
            import json

            save_tensors_atomic(self.path, state, {"key": self.key, "done": str(done), "extra": json.dumps(extra or {})})

    def clear(self) -> None:
        if self.path is not None:
            self.path.unlink(missing_ok=True)


def _say(msg: str, progress: bool) -> None:
    if progress:
        tqdm.write(msg, file=sys.stderr)


def run_pass(model: nn.Module, dataset: Sequence[Any], names: Sequence[str], dtype: torch.dtype,
             batch_size: int, step: Callable[[Capture, dict], None], *, desc: str, targets: str = "data",
             seed: int = 0, tag: str = "", out_dir: str | Path | None = None, key: str = "",
             save_every: int = 8, progress: bool = True, extra: dict | None = None,
             init: Callable[[], dict] | None = None,
             tracker: dict | None = None) -> tuple[dict[str, torch.Tensor], dict]:
    """One pass over ``dataset`` in length-sorted batches, calling ``step(capture, state)``.

    ``state`` (a dict of tensors, filled by ``step``) is checkpointed every ``save_every`` batches
    under ``out_dir``; a pass restarted with the same ``key`` resumes from its last chunk. The
    dict ``extra`` (JSON-able, e.g. module groups) is checkpointed with it; ``init`` builds the
    initial state; ``tracker`` holds extra :class:`ModuleTracker` options (autocast, gradient
    checkpointing). Returns (state, extra).
    """
    batches = make_batches(dataset, batch_size)
    ck = _Checkpoint(out_dir, desc, key)
    state: dict[str, torch.Tensor] = init() if init is not None else {}
    extra = dict(extra or {})
    start = 0
    got = ck.load()
    if got is not None:
        start, state, extra = got
        _say(f"[{desc}] resuming after batch {start}/{len(batches)}", progress)
    with ModuleTracker(model, names, dtype, **(tracker or {})) as tr:
        bar = tqdm(total=len(batches), initial=start, desc=desc, disable=not progress, file=sys.stderr,
                   dynamic_ncols=False, ascii=True)
        for bi in range(start, len(batches)):
            idx = batches[bi]
            try:
                cap = tr.run(collate([dataset[i] for i in idx], idx), targets, seed, tag)
                extra.setdefault("group_of", {}).update(cap.group_of)
                step(cap, state)
            except FloatingPointError as exc:  # name the example(s): re-run each alone, checking its capture
                probe = lambda ex: tr.run(collate(ex, [0]), targets, seed, tag).check_finite()  # noqa: E731
                raise checks.blame_non_finite(exc, desc, [dataset[i] for i in idx], probe) from None
            bar.update(1)
            if out_dir is not None and (bi + 1) % save_every == 0 and bi + 1 < len(batches):
                ck.save(bi + 1, state, extra)
            checks.pause_point(desc, bi + 1)
        bar.close()
    return state, extra


def _acc(state: dict, key: str, inc: torch.Tensor, what: str) -> None:
    if not torch.isfinite(inc).all():
        raise FloatingPointError(f"non-finite {what}")
    if key in state:
        state[key].add_(inc.to(state[key].device))  # a resumed state is loaded on the CPU
    else:
        state[key] = inc.clone()


def _count(state: dict, key: str, n: int) -> None:
    state[key] = state.get(key, torch.zeros((), dtype=torch.float64)) + n


# --------------------------------------------------------------------------- pass steps
def _gram_upper(x: torch.Tensor) -> torch.Tensor:
    """x^T x (d, d) with its lower-left block left at zero when d > 256: the Gram matrix is
    symmetric, so the upper block-triangle (3/4 of the FLOPs) is enough; see _symmetrize."""
    d = x.shape[1]
    if d <= 256:
        return x.T @ x
    h = d // 2
    out = x.new_zeros(d, d)
    out[:h] = x[:, :h].T @ x
    out[h:, h:] = x[:, h:].T @ x[:, h:]
    return out


def _symmetrize(c: torch.Tensor) -> torch.Tensor:
    """Undo _gram_upper: mirror the upper block-triangle (exact for full matrices too)."""
    d = c.shape[0]
    if d <= 256:
        return 0.5 * (c + c.T)
    h = d // 2
    c = c.clone()
    c[h:, :h] = c[:h, h:].T
    return 0.5 * (c + c.T)


def _covariance_step(cap: Capture, st: dict) -> None:
    lm = cap.batch.loss_mask[:, : next(iter(cap.a.values())).shape[1]]  # (B, W) loss positions
    for grp, a in cap.a.items():
        a_sel = a[lm]  # (N_loss, d_in): A runs over loss positions only
        _acc(st, f"A.{grp}", _gram_upper(a_sel), f"activations entering module {grp!r} (covariance pass)")
    for name, g in cap.g.items():
        gf = g.reshape(-1, g.shape[-1])  # (B*W, d_out): zero rows at padding
        _acc(st, f"S.{name}", _gram_upper(gf), f"output gradients at module {name!r} (covariance pass)")
    _count(st, "n_tokens", int(lm.sum()))
    _count(st, "n_examples", int(lm.any(1).sum()))


def _keep(cap: Capture) -> Capture:
    """A capture as the shared pass keeps it: contiguous (a sliced view would pin its unsliced base)."""
    return Capture({k: v.contiguous() for k, v in cap.a.items()}, {k: v.contiguous() for k, v in cap.g.items()},
                   cap.group_of, cap.batch, cap.groups)


def _make_lambda_step(eig: dict[str, torch.Tensor], strategy: str, dtype: torch.dtype, device: torch.device):
    cache = {k: v.to(device, dtype) for k, v in eig.items() if k.startswith(("QA.", "QS."))}

    def step(cap: Capture, st: dict) -> None:
        for grp, a in cap.a.items():
            at = a @ cache[f"QA.{grp}"] if strategy == "ekfac" else a  # (B, W, d_in), rotated once per group
            for name in cap.groups[grp]:
                g = cap.g[name]
                if strategy == "ekfac":
                    g = g @ cache[f"QS.{name}"]  # (B, W, d_out)
                gn = torch.bmm(g.transpose(1, 2), at)  # (B, d_out, d_in) per-example (rotated) gradient
                _acc(st, f"L.{name}", gn.square_().sum(0), f"per-example gradients at module {name!r} (lambda pass)")
        _count(st, "n_examples", int(cap.batch.loss_mask.any(1).sum()))

    return step


def _eigendecompose(state: dict, group_of: dict[str, str], modules: Sequence[str], dtype: torch.dtype,
                    progress: bool, report: dict | None = None) -> dict[str, torch.Tensor]:
    n_tok = max(float(state["n_tokens"]), 1.0)
    n_ex = max(float(state["n_examples"]), 1.0)
    keys = [f"A.{g}" for g in dict.fromkeys(group_of[m] for m in modules)] + [f"S.{m}" for m in modules]
    bar = tqdm(total=len(keys), desc="eigendecomposition", disable=not progress, file=sys.stderr, ascii=True)

    def compute(k: str) -> dict[str, torch.Tensor]:
        kind, name = k.split(".", 1)
        c = _symmetrize(state[k].double()) / (n_tok if kind == "A" else n_ex)
        ev, q = torch.linalg.eigh(c)
        if report is not None:  # negative / ill-conditioned spectra are recorded before the clamp
            report[k] = checks.eigen_report(k, ev, torch.finfo(state[k].dtype).eps)
        bar.update(1)
        # contiguous eigenvectors, as a reloaded checkpoint has them: the same BLAS path, the same bits
        return {k: c.to(dtype), f"e{kind}.{name}": ev.clamp_min(0.0).to(dtype), f"Q{kind}.{name}": q.to(dtype).contiguous()}

    def shapes(k: str) -> dict:
        kind, name = k.split(".", 1)
        d = state[k].shape[0]
        return {k: ((d, d), dtype), f"e{kind}.{name}": ((d,), dtype), f"Q{kind}.{name}": ((d, d), dtype)}

    # under torchrun the blocks are split round-robin over the ranks, then broadcast (each rank's
    # conditioning report covers the blocks it computed)
    out = dist.broadcast_round_robin(keys, compute, shapes)
    bar.close()
    if report is not None:
        checks.warn_conditioning(report)
    return {k: v.cpu() for k, v in out.items()}


# --------------------------------------------------------------------------- fit
def _guess_groups(model: nn.Module, names: Sequence[str]) -> dict[str, str]:
    """Input groups for planning (the passes find the real ones): the planner's name rules."""
    try:
        return planner._name_groups(model, names)
    except Exception:
        return {n: n for n in names}


def fit_factors(model: nn.Module, dataset: Sequence[Any], config: FactorConfig | None = None,
                out_dir: str | Path | None = None, progress: bool = True,
                execution: dist.ExecConfig | None = None, *, prefix_cache: str = "auto",
                shared_pass: str = "auto") -> Factors:
    """Fit curvature factors of ``model`` on ``dataset``.

    Args:
        model: a ``transformers`` causal LM (weights are not changed; parameters are frozen during
            the passes and restored afterwards).
        dataset: sequence of examples with ``id``, ``input_ids`` (T,), ``labels`` (T,; -100 outside
            the loss), optional ``segment_ids``/``attention_mask``.
        config: :class:`FactorConfig` (default: EK-FAC on the MLP linears, sampled-label Fisher).
        out_dir: where to save the factors (and resume partial passes); existing factors for the
            same model, modules, data and config are reused.
        progress: text progress bars on stderr.
        execution: :class:`~infra_lib.distributed.ExecConfig` (autocast, gradient checkpointing, shard
            layout). The passes run on the model's device. Under ``torchrun`` each rank passes over
            its shard of ``dataset`` and the sums are all-reduced; only rank 0 writes ``out_dir``.
        prefix_cache: ``auto`` | ``on`` | ``off``: when only upper decoder layers are tracked, keep
            each example's input of the lowest tracked layer after the first pass, so that later
            passes (and :func:`~infra_lib.scores.compute_scores` on the same model) skip the layers
            below (:class:`~infra_lib.tracking.PrefixCache`; ``auto``: when the planner says it fits).
        shared_pass: ``auto`` | ``on`` | ``off``: EK-FAC only; the covariance pass keeps its per-token
            inputs and output gradients (their sampled labels with them) and the Λ pass reads them
            instead of running the model again (``auto``: when the planner says they fit).
            Neither option changes the result: the Λ pass always uses the covariance pass's labels.
            What was chosen is in ``factors.diagnostics["plan"]``.

    Returns:
        :class:`Factors` (tensors on the CPU). Gradients are of the SUMMED response NLL; scores built on these factors
        are positive when up-weighting a training example lowers the query loss (helpful).
    """
    cfg = config or FactorConfig()
    run = execution or dist.ExecConfig()
    names = select_modules(model, cfg.modules)
    checks.check_examples(model, dataset, "train")
    fp = fingerprint(model, names, dataset)
    if run.autocast != "none":  # low-precision passes give other statistics: never reuse across
        fp["autocast"] = run.autocast
    key = config_hash(cfg.fit_key(), fp)
    if out_dir is not None and factors_exist(out_dir):
        meta = read_json(Path(out_dir) / _META_FILE)
        if meta.get("fingerprint") == fp and meta.get("fit_key") == cfg.fit_key():
            _say(f"[factors] reusing {out_dir}", progress)
            return dataclasses.replace(load_factors(out_dir), config=cfg)
        _say(f"[factors] {out_dir} holds factors for another model, data or config: recomputing", progress)
    dtype = cfg.torch_dtype
    device = next(model.parameters()).device
    world = dist.world_size()
    if world > 1:
        if len(dataset) < world:
            raise ValueError(f"{len(dataset)} training examples cannot be split over {world} ranks")
        key = config_hash(key, "rank", dist.rank(), world, run.shard)
        dataset = [dataset[i] for i in dist.shard_indices(len(dataset), run.shard)]
    ck_dir = dist.rank_dir(out_dir)
    named = dict(model.named_modules())
    shapes = {n: (named[n].out_features, named[n].in_features + (named[n].bias is not None)) for n in names}
    targets = "sampled" if cfg.fisher == "sampled" else "data"
    tensors: dict[str, torch.Tensor] = {}
    group_of: dict[str, str] = {}
    counts = {"n_examples": 0, "n_tokens": 0}
    diagnostics: dict = {}
    prefix, plan = planner.choose_prefix_cache(model, names, [dataset], prefix_cache)
    plan = {"prefix_cache": plan}
    common = dict(targets=targets, seed=cfg.seed, out_dir=ck_dir, save_every=cfg.save_every, progress=progress,
                  tracker={**run.tracker_kwargs(), "prefix": prefix})
    kept: list[Capture] | None = None

    if cfg.strategy in ("kfac", "ekfac"):
        eig_ck = _Checkpoint(ck_dir, "eigen", key + "/eigen")
        got = eig_ck.load()
        if got is not None:  # covariance pass and eigendecomposition done before an interruption
            _, tensors, ex = got
            _say("[factors] reusing the saved eigendecomposition", progress)
        else:
            step = _covariance_step
            if cfg.strategy == "ekfac":
                share, plan["shared_pass"] = planner.choose_shared_pass(shared_pass, planner.kept_capture_bytes(
                    dataset, cfg.batch_size, shapes, _guess_groups(model, names), torch.finfo(dtype).bits // 8))
                if share:
                    kept = []

                    def step(cap: Capture, st: dict) -> None:
                        _covariance_step(cap, st)
                        kept.append(_keep(cap))
            st, ex = run_pass(model, dataset, names, dtype, cfg.batch_size, step, desc="covariance",
                              tag="covariance", key=key + "/covariance", **common)
            if kept is not None and len(kept) != len(make_batches(dataset, cfg.batch_size)):
                kept = None  # the pass resumed from a checkpoint: the kept batches are not all there
                plan["shared_pass"].update(used=False, reason="the covariance pass resumed: a separate Λ pass")
            dist.all_reduce_sum_(st)  # one process: no-op; torchrun: sums of every rank's shard
            ex["counts"] = {"n_examples": int(st["n_examples"]), "n_tokens": int(st["n_tokens"])}
            tensors.update(_eigendecompose(st, ex["group_of"], names, dtype, progress, ex.setdefault("conditioning", {})))
            eig_ck.save(0, tensors, ex)
            _Checkpoint(ck_dir, "covariance", "").clear()
        group_of, counts = ex["group_of"], dict(ex["counts"])
        diagnostics["conditioning"] = ex.get("conditioning", {})
    if cfg.strategy in ("diagonal", "ekfac"):
        step = _make_lambda_step(tensors, cfg.strategy, dtype, device)
        if kept is not None:  # the shared pass: the covariance pass's captures, freed as they are used
            st, ex = {}, {"group_of": group_of}
            for _ in tqdm(range(len(kept)), desc="lambda (shared)", disable=not progress, file=sys.stderr, ascii=True):
                step(kept.pop(0), st)
        else:  # same labels as the covariance pass (tag), so the result equals the shared pass's
            st, ex = run_pass(model, dataset, names, dtype, cfg.batch_size, step, desc="lambda", tag="covariance",
                              key=key + "/lambda", **common)
        dist.all_reduce_sum_(st)
        group_of = group_of or ex["group_of"]
        n_ex = max(float(st["n_examples"]), 1.0)
        counts["n_examples"] = int(st["n_examples"])
        for n in names:
            tensors[f"L.{n}"] = (st[f"L.{n}"].double() / n_ex).to(dtype).cpu()
        _Checkpoint(ck_dir, "lambda", "").clear()
    if not group_of:  # identity: one forward on one example finds the modules that share an input
        with ModuleTracker(model, names, dtype) as tr:
            group_of = tr.run(collate([dataset[0]], [0]), "data").group_of
    if prefix is not None:
        plan["prefix_cache"].update(cached_examples=len(prefix), cached_bytes=prefix.nbytes)
    diagnostics["plan"] = plan
    _say("[factors] plan: " + "; ".join(f"{k} {'on' if v['used'] else 'off'} ({v['reason']})"
                                       for k, v in plan.items()), progress)
    f = Factors(cfg, names, shapes, group_of, tensors, fp, counts, diagnostics)
    if out_dir is not None:
        for p in ("covariance", "eigen", "lambda"):
            _Checkpoint(ck_dir, p, "").clear()
        dist.remove_rank_dir(out_dir)
        if dist.is_main():
            save_factors(f, out_dir)
        dist.barrier()
    return f


def merge_factors(parts: Sequence[Factors]) -> Factors:
    """One :class:`~infra_lib.factors.Factors` from factors fit on disjoint module subsets of the same
    model and data with the same config (modules in model order as given by the parts' order)."""
    if not parts:
        raise ValueError("merge_factors: no parts")
    first = parts[0]
    same = (lambda f: dataclasses.replace(f.config, modules="mlp").fit_key())  # all but the module selection
    for i, p in enumerate(parts[1:], 1):
        if same(p) != same(first):
            raise ValueError(f"merge_factors: part {i} was fit with another config")
        for k in ("model", "data", "ids_hash", "autocast"):
            if p.fingerprint.get(k) != first.fingerprint.get(k):
                raise ValueError(f"merge_factors: part {i} was fit on another {k} than part 0")
        if p.counts != first.counts:
            raise ValueError(f"merge_factors: part {i} counted {p.counts}, part 0 {first.counts}")
    modules = [m for p in parts for m in p.modules]
    if len(set(modules)) != len(modules):
        dup = sorted({m for m in modules if modules.count(m) > 1})
        raise ValueError(f"merge_factors: modules fit in several parts: {dup[:5]}")
    fp = dict(first.fingerprint)
    fp["modules"] = {m: v for p in parts for m, v in p.fingerprint["modules"].items()}
    cfg = dataclasses.replace(first.config, modules=tuple(modules))
    return Factors(cfg, modules, {m: s for p in parts for m, s in p.shapes.items()},
                   {m: g for p in parts for m, g in p.group_of.items()},
                   {k: v for p in parts for k, v in p.tensors.items()}, fp, dict(first.counts))
