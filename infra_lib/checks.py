"""Guards at the entry points and in the passes: inputs checked before work, faults named where they happen.

Every guard here turns a promise into a checked condition with one message that says what and
where:

- :func:`check_records`: records handed to the encoder directly (not through ``load_records``)
  have a unique string id and string prompt and response, named by index and field.
- :func:`check_examples`: before a pass, every example's token ids lie inside the model's
  embedding, its length within the model's positions, its id unique, and it has a loss token.
- :func:`blame_non_finite`: when a pass meets NaN/inf, the batch is re-run one example at a time
  to name the example(s) and the module at fault.
- :func:`eigen_report`: the spread and the negative part of a factor's eigenvalues, recorded in
  the factors' metadata (``diagnostics.conditioning``) and warned about, never silently clamped.
- :func:`load_tensors`: a safetensors artifact that is truncated, corrupt or holds NaN/inf is
  refused with how to rebuild it.
- :func:`check_scores_match`: scores computed with other factors (or for another model) are
  refused.
- :func:`check_value_type`: a parameter override (notebook ``overrides``, ``--set``) of the
  wrong type is refused naming the parameter, instead of failing later or not at all.
- :func:`pause_point`: a fault-injection point for the interruption tests: with
  ``INFRA_PAUSE_AT=<pass>:<batch>`` a pass announces itself in ``INFRA_PAUSE_FILE`` after that
  batch (and its checkpoint) and then waits to be killed, so a test kills it at a known place.
"""
from __future__ import annotations

import math
import os
import time
import types
import typing
import warnings
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

__all__ = [
    "InputError",
    "check_records",
    "ArtifactError",
    "IllConditionedFactorWarning",
    "check_examples",
    "blame_non_finite",
    "eigen_report",
    "warn_conditioning",
    "load_tensors",
    "check_scores_match",
    "pause_point",
    "check_value_type",
    "COND_LIMIT",
]

COND_LIMIT = 1e12
"""Eigenvalue spread (largest / smallest non-null) above which a factor is reported ill-conditioned."""


class InputError(ValueError):
    """Examples that a pass cannot use (ids out of the embedding, too long, no loss token, duplicates)."""


class ArtifactError(ValueError):
    """A stored artifact that is truncated, corrupt, or made from other inputs; says how to rebuild it."""


class IllConditionedFactorWarning(UserWarning):
    """A curvature factor whose eigenvalues span more than :data:`COND_LIMIT` or go negative beyond round-off."""


def _get(ex: Any, key: str) -> Any:
    return ex.get(key) if isinstance(ex, dict) else getattr(ex, key, None)


def check_records(records: Sequence[Any]) -> None:
    """Refuse records the encoder cannot take, naming the record (index and id) and the field.

    Checks only what encoding needs (``load_records`` checks the whole schema): each record is a
    mapping with a non-empty string ``id`` that cannot be mistaken for another (see
    :func:`~infra_lib.io.id_problem`), unique among the records, and string ``prompt`` and
    ``response`` that are valid Unicode (no lone surrogate); ``meta`` (if present) a mapping.

    Raises:
        InputError: ``record <i> (id ...): field '<name>': <problem>``.
    """
    from collections.abc import Mapping

    from .io import id_problem, text_problem

    seen: dict[str, int] = {}
    for i, r in enumerate(records):
        if not isinstance(r, Mapping):
            raise InputError(f"record {i}: must be a dict, got {type(r).__name__}")
        rid = r.get("id")
        where = f"record {i} (id {rid!r})"
        if not isinstance(rid, str) or not rid.strip():
            raise InputError(f"{where}: field 'id': must be a non-empty string, got {rid!r} ({type(rid).__name__})")
        problem = id_problem(rid)
        if problem:
            raise InputError(f"{where}: field 'id': {problem}")
        if rid in seen:
            raise InputError(f"{where}: field 'id': duplicate id, also record {seen[rid]}")
        seen[rid] = i
        for name in ("prompt", "response"):
            if not isinstance(r.get(name), str):
                got = "missing" if name not in r else f"must be a string, got {type(r[name]).__name__}"
                raise InputError(f"{where}: field '{name}': {got}")
            if text_problem(r[name]):
                raise InputError(f"{where}: field '{name}': {text_problem(r[name])}")
        if "meta" in r and r["meta"] is not None and not isinstance(r["meta"], Mapping):
            raise InputError(f"{where}: field 'meta': must be a dict, got {type(r['meta']).__name__}")


def check_examples(model: Any, dataset: Sequence[Any], what: str = "dataset") -> None:
    """Refuse examples the model cannot score, before any forward pass.

    Args:
        model: a ``transformers`` causal LM, or only its config (so a command line can check
            before loading the weights): ``vocab_size`` rows of embedding (the embedding's own
            row count when a model is given) and ``max_position_embeddings`` positions are the
            limits.
        dataset: examples with ``id``, ``input_ids`` (T,) and ``labels`` (T,).
        what: how the message names the dataset (``"train"``, ``"queries"``).

    Raises:
        InputError: naming the dataset, the example id and position, and the limit: an empty
            dataset, a duplicate id, a token id outside ``[0, vocab)`` (a tokenizer that does not
            match the model), a sequence longer than the model's positions, no loss token.
    """
    if len(dataset) == 0:
        raise InputError(f"{what}: no examples")
    is_model = isinstance(model, torch.nn.Module)
    cfg = getattr(model, "config", None) if is_model else model
    text = cfg.get_text_config() if hasattr(cfg, "get_text_config") else cfg
    emb = model.get_input_embeddings() if is_model and hasattr(model, "get_input_embeddings") else None
    vocab = getattr(emb, "num_embeddings", None) or getattr(text, "vocab_size", None)
    max_pos = getattr(text, "max_position_embeddings", None)
    seen: dict[str, int] = {}
    for i, ex in enumerate(dataset):
        rid = str(_get(ex, "id"))
        if rid in seen:
            raise InputError(f"{what}: example {i} has id {rid!r}, as example {seen[rid]} has; ids must be unique")
        seen[rid] = i
        ids = torch.as_tensor(_get(ex, "input_ids"))
        labels = _get(ex, "labels")
        if ids.dim() != 1 or ids.numel() == 0:
            raise InputError(f"{what}: example {rid!r}: input_ids must be a non-empty 1-D sequence, got shape {tuple(ids.shape)}")
        if vocab is not None:
            bad = ((ids < 0) | (ids >= vocab)).nonzero()
            if bad.numel():
                p = int(bad[0, 0])
                raise InputError(f"{what}: example {rid!r}: token id {int(ids[p])} at position {p} is outside the "
                                 f"model's {vocab}-row embedding (a tokenizer that does not match the model?)")
        if max_pos is not None and ids.numel() > int(max_pos):
            raise InputError(f"{what}: example {rid!r}: {ids.numel()} tokens exceed the model's "
                             f"max_position_embeddings={max_pos}; encode with a smaller max_length")
        if labels is None or not bool((torch.as_tensor(labels)[1:] != -100).any()):
            raise InputError(f"{what}: example {rid!r}: no loss token (labels are -100 after the first position)")


def blame_non_finite(exc: FloatingPointError, stage: str, examples: Sequence[Any],
                     probe: Callable[[list[Any]], None]) -> FloatingPointError:
    """The error to raise when a batch of a pass met NaN/inf: ``exc`` plus the example(s) at fault.

    ``probe([ex])`` re-runs the pass's capture on one example and raises ``FloatingPointError``
    when it is non-finite (naming the module); each example of the failed batch is probed, so the
    message names which ones fail and, for the first, the module. A batch whose examples all pass
    alone is reported as a whole.
    """
    bad: list[str] = []
    first = ""
    for ex in examples:
        try:
            probe([ex])
        except FloatingPointError as one:
            bad.append(str(_get(ex, "id")))
            first = first or str(one)
    ids = [str(_get(ex, "id")) for ex in examples]
    if bad:
        shown = ", ".join(repr(b) for b in bad[:5]) + (f" and {len(bad) - 5} more" if len(bad) > 5 else "")
        where = f"example {shown}" if len(bad) == 1 else f"examples {shown} ({len(bad)} of a batch of {len(ids)})"
        return FloatingPointError(f"{stage} pass: {first} for {where}")
    return FloatingPointError(f"{stage} pass: {exc} in the batch of examples {ids[:5]} (each example alone is finite)")


def eigen_report(name: str, ev: torch.Tensor, eps: float | None = None) -> dict:
    """Conditioning of one symmetric PSD factor from its eigenvalues ``ev`` (n,), float64.

    ``eps``: machine epsilon of the dtype the matrix was accumulated in (default float64's; a
    float32 accumulation is only PSD to float32 round-off). Round-off is
    ``tol = n * eps * max|ev|``; eigenvalues in
    ``[-tol, tol]`` count as null (rank deficiency is normal: fewer tokens than dimensions),
    below ``-tol`` as negative (a non-PSD accumulation: a bug or corrupt data). Returns
    ``{"min", "max", "tol", "n", "n_null", "n_negative", "cond", "problem"}`` where ``cond`` is
    largest / smallest non-null eigenvalue (``inf`` when none is non-null) and ``problem`` says
    what is wrong (``None`` when nothing): ``n_negative > 0`` or ``cond > COND_LIMIT``. The
    eigenvalues used downstream are clamped at 0; this record says by how much.
    """
    ev = ev.double()
    n = ev.numel()
    top = float(ev.abs().max()) if n else 0.0
    tol = n * (eps if eps is not None else torch.finfo(torch.float64).eps) * top
    neg = int((ev < -tol).sum())
    pos = ev[ev > tol]
    cond = float(pos.max() / pos.min()) if pos.numel() else math.inf
    rep = {"min": float(ev.min()) if n else 0.0, "max": float(ev.max()) if n else 0.0, "tol": tol, "n": n,
           "n_null": int(((ev >= -tol) & (ev <= tol)).sum()), "n_negative": neg, "cond": cond}
    problems = []
    if neg:
        problems.append(f"{neg} eigenvalue(s) below -{tol:.3g} (smallest {rep['min']:.3g}): not PSD beyond round-off")
    if pos.numel() and cond > COND_LIMIT:
        problems.append(f"eigenvalues span {cond:.3g} > {COND_LIMIT:.0e}")
    rep["problem"] = "; ".join(problems) or None
    return rep


def warn_conditioning(report: dict) -> None:
    """One :class:`IllConditionedFactorWarning` for the factors of ``report`` (name -> eigen_report)
    that have a problem, naming up to three of them; nothing when none has."""
    bad = [(k, r["problem"]) for k, r in report.items() if r.get("problem")]
    if bad:
        shown = "; ".join(f"factor {k}: {p}" for k, p in bad[:3]) + (f"; and {len(bad) - 3} more" if len(bad) > 3 else "")
        warnings.warn(f"{len(bad)} of {len(report)} curvature factors are ill-conditioned: {shown} "
                      f"(clamped at 0 for use; see Factors.diagnostics['conditioning'])",
                      IllConditionedFactorWarning, stacklevel=3)


def load_tensors(path: str | os.PathLike, rebuild: str) -> dict[str, torch.Tensor]:
    """Load a safetensors file; a truncated or corrupt one, or one holding NaN/inf (no artifact is
    ever saved with them), raises :class:`ArtifactError` naming the file, the tensor and
    ``rebuild`` (what to run to make it again)."""
    from safetensors.torch import load_file

    try:
        tensors = load_file(str(path))
    except Exception as exc:  # safetensors raises its own error types for a cut or garbled file
        raise ArtifactError(f"{path}: unreadable ({type(exc).__name__}: {exc}); it is truncated or corrupt. "
                            f"Delete it and {rebuild}") from None
    for k, t in tensors.items():
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise ArtifactError(f"{path}: tensor {k!r} holds NaN or inf; the file is corrupt. Delete it and {rebuild}")
    return tensors


def check_scores_match(scores: Any, factors: Any) -> None:
    """Refuse ``scores`` that were not computed with ``factors`` (same fingerprint, and the same
    config, damping included).

    Raises:
        ArtifactError: naming what differs and how to recompute the scores.
    """
    meta = getattr(scores, "meta", None) or {}
    fp = meta.get("factors_fingerprint")
    how = "recompute them with compute_scores (or infra score) on these factors"
    if fp is None:
        raise ArtifactError(f"these scores do not record the factors they came from; {how}")
    if fp.get("model") != factors.fingerprint.get("model"):
        raise ArtifactError(f"these scores were computed for another model (weights hash {fp.get('model')}, "
                            f"factors' {factors.fingerprint.get('model')}); {how}")
    if fp != factors.fingerprint:
        raise ArtifactError(f"these scores were computed with factors fit on other data or modules; {how}")
    from .io import config_to_dict

    theirs, ours = dict(meta.get("factors_config") or {}), config_to_dict(factors.config)
    theirs.pop("save_every", None)  # damping stays: it changes every score
    ours.pop("save_every", None)
    ours = {k: list(v) if isinstance(v, tuple) else v for k, v in ours.items()}
    diff = sorted(k for k in set(theirs) | set(ours) if theirs.get(k) != ours.get(k))
    if diff:
        raise ArtifactError(f"these scores were computed with factors of another config ({', '.join(diff)} differ); {how}")


def pause_point(stage: str, done: int) -> None:
    """Fault injection for tests: with ``INFRA_PAUSE_AT="<stage>:<done>"`` matching, write
    ``INFRA_PAUSE_FILE`` (if set) and wait forever (until killed). A no-op otherwise."""
    at = os.environ.get("INFRA_PAUSE_AT")
    if not at or at != f"{stage}:{done}":
        return
    flag = os.environ.get("INFRA_PAUSE_FILE")
    if flag:
        Path(flag).write_text(f"{stage}:{done} {os.getpid()}\n")
    while True:  # short sleeps: a signal delivered to another thread (Ctrl-C) is acted on at once
        time.sleep(0.05)


def _fits(v: Any, tp: Any) -> bool:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is Any:
        return True
    if origin in (typing.Union, types.UnionType):
        return any(_fits(v, a) for a in args)
    if tp is type(None):
        return v is None
    if tp is bool:
        return isinstance(v, bool)
    if tp is int:
        return isinstance(v, int) and not isinstance(v, bool)
    if tp is float:
        return isinstance(v, (int, float)) and not isinstance(v, bool)
    if origin in (tuple, list):
        if not isinstance(v, (tuple, list)):
            return False
        if len(args) == 2 and args[1] is Ellipsis:
            return all(_fits(x, args[0]) for x in v)
        return not args or (len(v) == len(args) and all(_fits(x, a) for x, a in zip(v, args)))
    if origin is dict:
        return isinstance(v, dict)
    if origin is typing.Literal:
        return v in args
    if isinstance(tp, type):
        return isinstance(v, tp)
    return True  # other annotation forms are left to the dataclass's own validation


def check_value_type(name: str, value: Any, annotation: Any, where: str = "") -> None:
    """Raise ``TypeError`` naming parameter ``name`` (and ``where`` it belongs) when ``value`` does
    not fit ``annotation`` (``int``, ``float`` (an int is fine), ``bool``, ``str``, ``None``,
    unions, ``tuple[X, ...]`` (a list is fine), ``dict``, ``Literal``)."""
    if not _fits(value, annotation):
        shown = getattr(annotation, "__name__", None) or str(annotation).replace("typing.", "")
        head = f"{where}: " if where else ""
        raise TypeError(f"{head}parameter {name!r} must be {shown}, got {value!r} ({type(value).__name__})")
