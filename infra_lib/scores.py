"""Influence scores per training example, per training token, per segment, and per query segment.

Convention: ``score[q, i] = g_q^T (F + lambda I)^{-1} g_i``, with ``g`` the gradient of the SUMMED
response NLL and ``F`` the layer-block-diagonal curvature of :mod:`infra_lib.factors`.
**Positive = helpful**: up-weighting training example i lowers the query's loss (raises the
log-likelihood of the query response). A group row (e.g. a domain) uses the mean of its queries'
gradients, so its score is the mean of its queries' scores.

How: query gradients are formed per module, ``G_q = sum_t g_t a_t^T`` (d_out, d_in), preconditioned
once (``P_q``), kept in memory (or compressed to rank r), then ONE pass over the training data gives

- example scores: ``sum_m <P_q, G_i>`` with ``G_i = sum_t g_t a_t^T`` (one bmm per module);
- token scores (position decomposition): position t contributes ``sum_m g_t^T P_q a_t``; these sum
  exactly to the example score. They are stored aligned with ``input_ids``: entry t holds the
  contribution of position t-1, the position whose output predicts token t (HF shift), and entry 0
  is 0. Prompt entries are not zero in general (earlier positions feed later ones by attention);
- segment scores: sums (and per-token means) of token scores over each response segment
  (``segment_ids``);
- query-segment scores: the query loss masked to one segment of the query response; a query's
  segment rows sum to its whole-query row when every response token has a segment.

Nothing materialises an ``[n_train, n_params]`` matrix: per batch, per module, a (B, d_out, d_in)
tensor at most.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
from torch import nn
from tqdm import tqdm

from . import checks
from . import distributed as dist
from . import planner
from .factors import Factors, _Checkpoint, _say, run_pass
from .io import atomic_write_json, config_hash, config_to_dict, read_json, save_tensors_atomic
from .tracking import Capture, ModuleTracker, _field, collate, example_ids, make_batches

__all__ = ["ScoreConfig", "Scores", "compute_scores", "scores_exist", "load_scores", "save_scores"]

_DTYPES = {"float32": torch.float32, "float64": torch.float64}
_SCORES_FILE, _META_FILE = "scores.safetensors", "scores.json"


@dataclass(frozen=True)
class ScoreConfig:
    """What to score and how. Saved as JSON beside the scores."""

    aggregation: str = "per-query"
    """``per-query`` (one row per query) or ``mean`` (one row per named group of queries)."""
    groups: Any = None
    """For ``mean``: mapping group name -> query ids (stored as a tuple of (name, ids) pairs)."""
    rank: int | None = None
    """Rank-r query store: each row's preconditioned gradient is truncated to rank r per module (SVD)."""
    token_scores: bool = False
    """Per-token scores of every training example (aligned with its ``input_ids``)."""
    segment_scores: bool = False
    """Per-segment scores (sum and per-token mean) of every training example, from ``segment_ids``."""
    query_segment_scores: bool = False
    """Extra example-level rows, one per segment of each query response (query loss masked to it);
    with ``individual``, of those queries only."""
    individual: tuple[str, ...] = ()
    """With ``mean``: query ids that also get their own example-level row (``Scores.individual``)
    in the same pass, beside the group means: the training gradients, the costly side, are
    computed once for both."""
    batch_size: int = 16
    """Training examples per batch (length-sorted)."""
    query_batch_size: int = 16
    """Query examples per batch when forming query gradients."""
    dtype: str = "float32"
    """Dtype of gradients, the query store and scores: ``float32`` or ``float64``."""
    save_every: int = 8
    """Batches between resume checkpoints when an ``out_dir`` is given."""

    def __post_init__(self) -> None:
        if self.aggregation not in ("per-query", "mean"):
            raise ValueError(f"aggregation must be 'per-query' or 'mean', got {self.aggregation!r}")
        if self.groups is not None:
            items = self.groups.items() if isinstance(self.groups, Mapping) else self.groups
            groups = tuple((str(k), tuple(str(i) for i in v)) for k, v in items)
            for k, v in groups:
                if not v:
                    raise ValueError(f"query group {k!r} is empty")
            object.__setattr__(self, "groups", groups)
        if self.aggregation == "mean" and not self.groups:
            raise ValueError("aggregation 'mean' needs groups, e.g. {'math': [ids...], 'code': [ids...]}")
        object.__setattr__(self, "individual", tuple(str(i) for i in self.individual))
        if self.individual and self.aggregation != "mean":
            raise ValueError("individual rows go beside group means (aggregation 'mean'); 'per-query' has a row per query")
        if len(set(self.individual)) != len(self.individual):
            raise ValueError("individual query ids must be unique")
        if self.rank is not None and int(self.rank) < 1:
            raise ValueError(f"rank must be None or >= 1, got {self.rank!r}")
        if self.dtype not in _DTYPES:
            raise ValueError(f"dtype must be one of {tuple(_DTYPES)}, got {self.dtype!r}")
        if min(self.batch_size, self.query_batch_size, self.save_every) < 1:
            raise ValueError("batch sizes and save_every must be >= 1")


@dataclass
class Scores:
    """Influence scores with the ids of their rows (queries or groups) and columns (training examples).

    Attributes:
        row_ids: R query ids (per-query) or group names (mean).
        train_ids: N training ids, in dataset order.
        example: (R, N) example scores; positive = helpful.
        token: (R, sum_i T_i) token scores, flat; example i's (R, T_i) block starts at
            ``token_offsets[i]`` and is aligned with its ``input_ids`` (entry 0 is 0). ``None`` unless asked.
        token_offsets: (N + 1,) long.
        segment: (R, sum_i K_i) segment sums, flat; ``segment_mean`` the per-token means;
            ``segment_offsets`` (N + 1,) long; segment k of example i is column ``segment_offsets[i] + k``.
        query_segment: (S, N) example scores of query-segment rows; ``query_segment_ids`` are
            ``"<query id>/seg<k>"`` and ``query_segment_parent`` their query ids.
        individual: (I, N) example scores of single queries scored beside group means
            (``ScoreConfig.individual``), rows in the order of ``individual_ids``.
        config: the :class:`ScoreConfig`; ``meta``: factors config and fingerprint.
    """

    row_ids: list[str]
    train_ids: list[str]
    example: torch.Tensor
    token: torch.Tensor | None = None
    token_offsets: torch.Tensor | None = None
    segment: torch.Tensor | None = None
    segment_mean: torch.Tensor | None = None
    segment_offsets: torch.Tensor | None = None
    query_segment: torch.Tensor | None = None
    query_segment_ids: list[str] = field(default_factory=list)
    query_segment_parent: list[str] = field(default_factory=list)
    config: ScoreConfig | None = None
    meta: dict = field(default_factory=dict)
    individual: torch.Tensor | None = None
    individual_ids: list[str] = field(default_factory=list)

    def tokens_of(self, i: int | str) -> torch.Tensor:
        """(R, T_i) token scores of training example ``i`` (index or id), aligned with its input_ids."""
        if self.token is None:
            raise ValueError("token scores were not computed (ScoreConfig(token_scores=True))")
        i = self.train_ids.index(i) if isinstance(i, str) else i
        return self.token[:, self.token_offsets[i]:self.token_offsets[i + 1]]

    def steps_of(self, query_id: str, n_steps: int | None = None) -> torch.Tensor:
        """(n_steps, N) example scores of each response segment (step) of query ``query_id``, from the
        query-segment rows; a segment without loss tokens has no row and scores 0. ``n_steps``
        defaults to one past the highest segment index with a row."""
        if self.query_segment is None:
            raise ValueError("query-segment scores were not computed (ScoreConfig(query_segment_scores=True))")
        rows = {int(rid.rsplit("/seg", 1)[1]): r for r, (rid, parent)
                in enumerate(zip(self.query_segment_ids, self.query_segment_parent)) if parent == query_id}
        if not rows:
            raise KeyError(f"no query-segment rows for query {query_id!r}")
        n = max(rows) + 1 if n_steps is None else int(n_steps)
        if max(rows) >= n:
            raise ValueError(f"query {query_id!r} has a segment {max(rows)} >= n_steps={n}")
        out = self.query_segment.new_zeros(n, self.query_segment.shape[1])
        for k, r in rows.items():
            out[k] = self.query_segment[r]
        return out

    def single_queries(self) -> "Scores":
        """The individual query rows (``ScoreConfig.individual``) with their query-segment rows, as
        per-query scores: ``row_ids`` are those query ids (no token or segment scores)."""
        if self.individual is None:
            raise ValueError("no individual query rows were computed (ScoreConfig(individual=...))")
        return Scores(list(self.individual_ids), self.train_ids, self.individual, query_segment=self.query_segment,
                      query_segment_ids=self.query_segment_ids, query_segment_parent=self.query_segment_parent,
                      config=self.config, meta=self.meta)

    def segments_of(self, i: int | str, mean: bool = False) -> torch.Tensor:
        """(R, K_i) segment scores (sums, or per-token means) of training example ``i``."""
        if self.segment is None:
            raise ValueError("segment scores were not computed (ScoreConfig(segment_scores=True))")
        i = self.train_ids.index(i) if isinstance(i, str) else i
        src = self.segment_mean if mean else self.segment
        return src[:, self.segment_offsets[i]:self.segment_offsets[i + 1]]


# --------------------------------------------------------------------------- storage
def scores_exist(out_dir: str | Path) -> bool:
    """True when ``out_dir`` holds complete scores."""
    p = Path(out_dir)
    return (p / _SCORES_FILE).is_file() and (p / _META_FILE).is_file()


def save_scores(scores: Scores, out_dir: str | Path) -> Path:
    """Write scores atomically: ``scores.safetensors`` then ``scores.json`` (ids, config) last."""
    p = Path(out_dir)
    t = {k: getattr(scores, k) for k in ("example", "token", "token_offsets", "segment", "segment_mean",
                                         "segment_offsets", "query_segment", "individual") if getattr(scores, k) is not None}
    save_tensors_atomic(p / _SCORES_FILE, t)
    atomic_write_json(p / _META_FILE, {
        "row_ids": scores.row_ids, "train_ids": scores.train_ids,
        "query_segment_ids": scores.query_segment_ids, "query_segment_parent": scores.query_segment_parent,
        "individual_ids": scores.individual_ids, "config": config_to_dict(scores.config) if scores.config is not None else None,
        "config_hash": config_hash(scores.config) if scores.config is not None else None,
        "meta": scores.meta, "convention": "score = g_q^T (F + lambda I)^-1 g_i; positive = helpful", "format": 1,
    })
    return p


def load_scores(out_dir: str | Path) -> Scores:
    """Load scores written by :func:`save_scores`."""
    p = Path(out_dir)
    if not scores_exist(p):
        raise FileNotFoundError(f"no scores in {p} (expected {_SCORES_FILE} and {_META_FILE})")
    meta = read_json(p / _META_FILE)
    t = checks.load_tensors(p / _SCORES_FILE, f"recompute the scores (compute_scores / infra score) with out_dir={p}")
    cfg = meta.get("config")
    if cfg is not None:
        if cfg.get("groups") is not None:
            cfg["groups"] = tuple((k, tuple(v)) for k, v in cfg["groups"])
        cfg["individual"] = tuple(cfg.get("individual", ()))
        cfg = ScoreConfig(**cfg)
    return Scores(meta["row_ids"], meta["train_ids"], t["example"], t.get("token"), t.get("token_offsets"),
                  t.get("segment"), t.get("segment_mean"), t.get("segment_offsets"), t.get("query_segment"),
                  meta.get("query_segment_ids", []), meta.get("query_segment_parent", []), cfg, meta.get("meta", {}),
                  t.get("individual"), meta.get("individual_ids", []))


# --------------------------------------------------------------------------- query gradients
def _segment_rows(queries: Sequence[Any]) -> tuple[list[dict], list[str], list[str]]:
    """One masked copy of each query per response segment: labels kept only inside segment k."""
    rows, ids, parent = [], [], []
    for ex in queries:
        seg = _field(ex, "segment_ids")
        if seg is None:
            continue
        seg = torch.as_tensor(seg).long()
        lab = torch.as_tensor(_field(ex, "labels")).long()
        qid = str(_field(ex, "id"))
        for k in sorted(set(seg[(lab != -100) & (seg >= 0)].tolist())):
            rid = f"{qid}/seg{k}"
            rows.append({"id": rid, "input_ids": _field(ex, "input_ids"), "labels": torch.where(seg == k, lab, -100),
                         "attention_mask": _field(ex, "attention_mask")})
            ids.append(rid)
            parent.append(qid)
    return rows, ids, parent


@torch.no_grad()
def _query_gradients(model: nn.Module, factors: Factors, queries: Sequence[Any], weights: torch.Tensor | None,
                     batch_size: int, dtype: torch.dtype, progress: bool, desc: str,
                     run: dist.ExecConfig | None = None, prefix: Any = None) -> dict[str, torch.Tensor]:
    """Per module (R, d_out, d_in) = weights (R, n_q) @ per-query gradients (``None``: one row per
    query), without storing per-query gradients when rows are group means. On the model's device;
    under torchrun each rank takes a shard of the queries and the rows are summed over ranks."""
    run = run or dist.ExecConfig()
    device = next(model.parameters()).device
    R = len(queries) if weights is None else weights.shape[0]
    out = {n: torch.zeros((R,) + tuple(factors.shapes[n]), dtype=dtype, device=device) for n in factors.modules}
    mine = dist.shard_indices(len(queries), run.shard)
    batches = [[mine[j] for j in b] for b in make_batches([queries[i] for i in mine], batch_size)]
    with ModuleTracker(model, factors.modules, dtype, **run.tracker_kwargs(), prefix=prefix) as tr:
        for idx in tqdm(batches, desc=desc, disable=not progress, file=sys.stderr, ascii=True):
            try:
                cap = tr.run(collate([queries[i] for i in idx], idx), "data")
            except FloatingPointError as exc:  # name the query: re-run each alone
                probe = lambda ex: tr.run(collate(ex, [0]), "data").check_finite()  # noqa: E731
                raise checks.blame_non_finite(exc, desc, [queries[i] for i in idx], probe) from None
            w = None if weights is None else weights[:, cap.batch.index].to(device, dtype)  # (R, B)
            for n in factors.modules:
                gq = torch.bmm(cap.g[n].transpose(1, 2), cap.a[cap.group_of[n]])  # (B, d_out, d_in)
                if not torch.isfinite(gq).all():
                    cap.check_finite(" (query gradients)")
                    raise FloatingPointError(f"non-finite query gradient at module {n!r}")
                if w is None:  # one row per query
                    out[n][cap.batch.index] = gq
                else:
                    out[n] += torch.einsum("rb,boi->roi", w, gq)
    return dist.all_reduce_sum_(out)


def _low_rank(p: torch.Tensor, r: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Best rank-r factors of each row, (R, d_out, d_in) -> left (R, d_out, r), right (R, r, d_in).

    Truncated SVD through the eigendecomposition of the smaller Gram matrix in float64 (top-r
    singular subspace; a full batched SVD of wide matrices costs far more)."""
    d_out, d_in = p.shape[1:]
    r = min(r, d_out, d_in)
    x = p.double()
    if d_in <= d_out:
        _, v = torch.linalg.eigh(x.mT @ x)  # (R, d_in, d_in), ascending
        v = v[..., -r:]  # (R, d_in, r) right singular vectors
        return (x @ v).to(p.dtype), v.mT.to(p.dtype)
    _, u = torch.linalg.eigh(x @ x.mT)  # (R, d_out, d_out)
    u = u[..., -r:]
    return u.to(p.dtype), (u.mT @ x).to(p.dtype)


# --------------------------------------------------------------------------- score pass
class _Kernels:
    """Per-group matrices laid out once so that each batch costs one GEMM per group (token path)
    or one bmm + one GEMM per module (example path)."""

    def __init__(self, factors: Factors, pre: dict[str, torch.Tensor], low: dict | None, n_tok_rows: int):
        self.f = factors
        self.R = n_tok_rows
        # rows scored through per-example gradients: all rows, or only those after the token rows
        # (cloned, so that the caller can free the full store once the token matrices are laid out)
        self.flat_offset = n_tok_rows
        self.flat = {n: (p[n_tok_rows:].flatten(1).clone() if n_tok_rows else p.flatten(1))
                     for n, p in pre.items()}  # (R', d_out*d_in)
        self.low = low
        self.tok: dict[str, tuple] = {}
        members: dict[str, list[str]] = {}
        for n in factors.modules:
            members.setdefault(factors.group_of[n], []).append(n)
        self.members = members
        if n_tok_rows == 0:
            return
        R = n_tok_rows
        for grp, mods in members.items():
            if low is not None:
                # rank r: (g L_q) . (R_q a) summed over r
                Ls = [low[n][0][:R] for n in mods]
                Rs = [low[n][1][:R] for n in mods]
                r = Ls[0].shape[-1]
                lmat = [L.permute(1, 0, 2).reshape(L.shape[1], R * r) for L in Ls]  # (d_out, R*r)
                rmat = torch.cat([Rm.permute(2, 0, 1).reshape(Rm.shape[2], R * r) for Rm in Rs], 1)  # (d_in, M*R*r)
                self.tok[grp] = ("low", mods, lmat, rmat, r)
                continue
            d_out = [factors.shapes[n][0] for n in mods]
            d_in = factors.shapes[mods[0]][1]
            if d_in <= min(d_out):
                # v = sum_m g_m P_m (N, R, d_in), then v . a: modules sharing the input share one GEMM
                mat = torch.cat([pre[n][:R].permute(1, 0, 2).reshape(pre[n].shape[1], R * d_in) for n in mods], 0)
                self.tok[grp] = ("g", mods, mat, d_in)
            else:
                mats = [pre[n][:R].permute(2, 0, 1).reshape(d_in, R * pre[n].shape[1]) for n in mods]
                self.tok[grp] = ("a", mods, mats, d_out)

    def example_scores(self, cap: Capture, rows: slice) -> torch.Tensor:
        """(B, R') scores for rows ``rows`` via per-example gradients."""
        B = cap.batch.input_ids.shape[0]
        out = None
        for n in self.f.modules:
            gn = torch.bmm(cap.g[n].transpose(1, 2), cap.a[self.f.group_of[n]]).reshape(B, -1)  # (B, d_out*d_in)
            s = gn @ self.flat[n][rows.start - self.flat_offset:rows.stop - self.flat_offset].T
            out = s if out is None else out.add_(s)
        return out

    def token_scores(self, cap: Capture, chunk_elems: int = 1 << 22) -> torch.Tensor:
        """(B, W, R) per-position scores (sum over modules of g_t^T P a_t)."""
        B, W = next(iter(cap.g.values())).shape[:2]
        N, R = B * W, self.R
        g0 = next(iter(cap.g.values()))
        out = torch.zeros(N, R, dtype=g0.dtype, device=g0.device)
        for grp, spec in self.tok.items():
            a = cap.a[grp].reshape(N, -1)
            kind, mods = spec[0], spec[1]
            gs = [cap.g[n].reshape(N, -1) for n in mods]
            if kind == "g":
                mat, d_in = spec[2], spec[3]
                gcat = gs[0] if len(gs) == 1 else torch.cat(gs, 1)  # (N, sum d_out)
                step = max(1, chunk_elems // (R * d_in))
                for s0 in range(0, N, step):
                    v = (gcat[s0:s0 + step] @ mat).view(-1, R, d_in)  # (n, R, d_in)
                    out[s0:s0 + step] += torch.bmm(v, a[s0:s0 + step].unsqueeze(-1)).squeeze(-1)
            elif kind == "a":
                mats = spec[2]
                for g, mat in zip(gs, mats):
                    d_o = g.shape[1]
                    step = max(1, chunk_elems // (R * d_o))
                    for s0 in range(0, N, step):
                        u = (a[s0:s0 + step] @ mat).view(-1, R, d_o)  # (n, R, d_out)
                        out[s0:s0 + step] += torch.bmm(u, g[s0:s0 + step].unsqueeze(-1)).squeeze(-1)
            else:
                lmat, rmat, r = spec[2], spec[3], spec[4]
                y = a @ rmat  # (N, M*R*r)
                for j, (g, L) in enumerate(zip(gs, lmat)):
                    x = g @ L  # (N, R*r)
                    out += (x * y[:, j * R * r:(j + 1) * R * r]).view(N, R, r).sum(-1)
        return out.view(B, W, R)


def _train_layout(train: Sequence[Any]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Token offsets (N+1,), segment offsets (N+1,), tokens per segment (sum K_i,)."""
    lens, nseg, counts = [], [], []
    for ex in train:
        lens.append(int(torch.as_tensor(_field(ex, "input_ids")).numel()))
        seg = _field(ex, "segment_ids")
        if seg is None:
            nseg.append(0)
            continue
        seg = torch.as_tensor(seg).long()
        k = int(seg.max().item()) + 1 if seg.numel() and seg.max() >= 0 else 0
        nseg.append(k)
        counts.append(torch.bincount(seg[seg >= 0], minlength=k)[:k] if k else torch.zeros(0, dtype=torch.long))
    z = torch.zeros(1, dtype=torch.long)
    tok_off = torch.cat([z, torch.tensor(lens, dtype=torch.long).cumsum(0)])
    seg_off = torch.cat([z, torch.tensor(nseg, dtype=torch.long).cumsum(0)])
    cnt = torch.cat(counts) if counts else torch.zeros(0, dtype=torch.long)
    return tok_off, seg_off, cnt


def compute_scores(model: nn.Module, factors: Factors, queries: Sequence[Any], train: Sequence[Any],
                   config: ScoreConfig | None = None, out_dir: str | Path | None = None,
                   progress: bool = True, execution: dist.ExecConfig | None = None, *,
                   prefix_cache: str = "auto") -> Scores:
    """Influence of every training example (and, if asked, token and segment) on each query row.

    Args:
        model: the causal LM the factors were fit for (refused otherwise).
        factors: from :func:`infra_lib.factors.fit_factors` or ``load_factors``.
        queries: query examples (``id``, ``input_ids``, ``labels``, optional ``segment_ids``).
        train: training examples (same fields).
        config: :class:`ScoreConfig`.
        out_dir: where to save the scores (and checkpoint the pass for resuming).
        progress: text progress bars on stderr.
        execution: :class:`~infra_lib.distributed.ExecConfig` (autocast, gradient checkpointing, shard
            layout); the passes run on the model's device. Under ``torchrun`` each rank scores its
            shard of ``train`` and the scores are gathered in dataset order on every rank; only rank
            0 writes ``out_dir``.
        prefix_cache: ``auto`` | ``on`` | ``off``: reuse (or keep) each example's input of the lowest
            tracked decoder layer, as :func:`~infra_lib.factors.fit_factors` does: training examples
            cached by a fit on the same model skip the frozen lower layers here. What was chosen is in
            ``scores.meta["plan"]``.

    Returns:
        :class:`Scores` (CPU tensors) with ``example`` (R, N) in ``config.dtype``; ``score[q, i] = g_q^T (F + lambda I)^{-1} g_i``,
        positive = helpful (up-weighting i lowers the query loss). Token scores of example i sum to
        ``example[:, i]``; a group row is the mean of its queries' rows.
    """
    cfg = config or ScoreConfig()
    run = execution or dist.ExecConfig()
    dtype = _DTYPES[cfg.dtype]
    factors.check_compatible(model, factors.modules)
    checks.check_examples(model, queries, "queries")
    checks.check_examples(model, train, "train")
    q_ids = example_ids(queries)
    if len(set(q_ids)) != len(q_ids):
        raise ValueError("query ids must be unique")
    pos = {q: j for j, q in enumerate(q_ids)}
    indiv = list(cfg.individual)
    if cfg.aggregation == "mean":
        row_ids = [k for k, _ in cfg.groups]
        missing = [m for m in indiv if m not in pos]
        if missing:
            raise ValueError(f"ScoreConfig.individual names ids not among the queries: {missing[:5]}")
        # group means, then one row per individual query: one pass over the queries forms both
        weights = torch.zeros(len(row_ids) + len(indiv), len(queries), dtype=torch.float64)
        for r, (k, members) in enumerate(cfg.groups):
            missing = [m for m in members if m not in pos]
            if missing:
                raise ValueError(f"query group {k!r} names ids not among the queries: {missing[:5]}")
            for m in members:
                weights[r, pos[m]] += 1.0 / len(members)
        for r, m in enumerate(indiv, start=len(row_ids)):
            weights[r, pos[m]] = 1.0
    else:
        row_ids = list(q_ids)
        weights = None
    prefix, plan = planner.choose_prefix_cache(model, factors.modules, [queries, train], prefix_cache)
    pre = _query_gradients(model, factors, queries, weights, cfg.query_batch_size, dtype, progress, "query gradients",
                           run, prefix)
    qs_ids, qs_parent = [], []
    if cfg.query_segment_scores:
        seg_rows, qs_ids, qs_parent = _segment_rows([queries[pos[m]] for m in indiv] if indiv else queries)
        if seg_rows:
            sg = _query_gradients(model, factors, seg_rows, None,
                                  cfg.query_batch_size, dtype, progress, "query segment gradients", run, prefix)
            pre = {n: torch.cat([pre[n], sg[n]]) for n in pre}
    R_main, R_all = len(row_ids), len(row_ids) + len(indiv) + len(qs_ids)
    low = None
    for n in factors.modules:
        pre[n] = factors.precondition(n, pre[n])
        if cfg.rank is not None:
            left, right = _low_rank(pre[n], cfg.rank)
            low = low or {}
            low[n] = (left, right)
            pre[n] = left @ right  # example scores use the same rank-r store
    need_tok = cfg.token_scores or cfg.segment_scores
    kern = _Kernels(factors, pre, low, R_main if need_tok else 0)
    del pre, low  # the kernels hold what the pass needs
    tok_off, seg_off, seg_cnt = _train_layout(train)
    N = len(train)
    world = dist.world_size()
    if world > 1 and N < world:
        raise ValueError(f"{N} training examples cannot be split over {world} ranks")
    # this rank's shard (everything in one process): local token offsets, gathered after the pass
    local = train if world == 1 else [train[i] for i in dist.shard_indices(N, run.shard)]
    loc_off = tok_off if world == 1 else _train_layout(local)[0]

    def init() -> dict:
        st = {"example": torch.zeros(R_all, len(local), dtype=dtype)}
        if need_tok:
            st["token"] = torch.zeros(R_main, int(loc_off[-1]), dtype=dtype)
        return st

    def step(cap: Capture, st: dict) -> None:
        b = cap.batch
        idx = b.index
        if need_tok:
            tok = kern.token_scores(cap).cpu()  # (B, W, R_main)
            ex = tok.sum(1)  # (B, R_main)
            # entry t of example i = position t-1 (the position predicting token t)
            W = tok.shape[1]
            n_keep = (b.lengths - 1).clamp(max=W, min=0)  # (B,)
            keep = torch.arange(W).unsqueeze(0) < n_keep.unsqueeze(1)  # (B, W)
            dest = (loc_off[idx].unsqueeze(1) + 1 + torch.arange(W).unsqueeze(0))[keep]
            st["token"].index_copy_(1, dest, tok[keep].T)
            parts = [ex]
            if R_all > R_main:
                parts.append(kern.example_scores(cap, slice(R_main, R_all)).cpu())
            ex = torch.cat(parts, 1) if len(parts) > 1 else ex
        else:
            ex = kern.example_scores(cap, slice(0, R_all)).cpu()
        if not torch.isfinite(ex).all():
            cap.check_finite(" (score pass)")
            raise FloatingPointError("non-finite scores in the score pass")
        st["example"][:, idx] = ex.T

    key = config_hash(config_to_dict(cfg), factors.fingerprint, factors.config.fit_key(),
                      [factors.damping(n) for n in factors.modules], q_ids, example_ids(train))
    if run.autocast != "none" or world > 1:
        key = config_hash(key, run.autocast, dist.rank(), world, run.shard)
    st, _ = run_pass(model, local, factors.modules, dtype, cfg.batch_size, step, desc="scores", targets="data",
                     out_dir=dist.rank_dir(out_dir), key=key, save_every=cfg.save_every, progress=progress, init=init,
                     tracker={**run.tracker_kwargs(), "prefix": prefix})
    st["example"] = dist.gather_columns(st["example"], N, run.shard)
    if need_tok:
        st["token"] = dist.gather_tokens(st["token"], tok_off, run.shard)
    res = Scores(row_ids, example_ids(train), st["example"][:R_main].clone(), config=cfg,
                 meta={"factors_config": config_to_dict(factors.config), "factors_fingerprint": factors.fingerprint})
    if indiv:
        res.individual, res.individual_ids = st["example"][R_main:R_main + len(indiv)].clone(), indiv
    if qs_ids:
        res.query_segment = st["example"][R_main + len(indiv):].clone()
        res.query_segment_ids, res.query_segment_parent = qs_ids, qs_parent
    if need_tok:
        tokens = st["token"]
        if cfg.token_scores:
            res.token, res.token_offsets = tokens, tok_off
        if cfg.segment_scores:
            res.segment, res.segment_mean, res.segment_offsets = _segment_sums(train, tokens, tok_off, seg_off, seg_cnt)
    if prefix is not None:
        plan.update(cached_examples=len(prefix), cached_bytes=prefix.nbytes, hits=prefix.hits, misses=prefix.misses)
    res.meta["plan"] = {"prefix_cache": plan}
    if run.autocast != "none":
        res.meta["autocast"] = run.autocast
    if out_dir is not None:
        _Checkpoint(dist.rank_dir(out_dir), "scores", "").clear()
        dist.remove_rank_dir(out_dir)
        if dist.is_main():
            save_scores(res, out_dir)
        dist.barrier()
    return res


def _segment_sums(train: Sequence[Any], tokens: torch.Tensor, tok_off: torch.Tensor, seg_off: torch.Tensor,
                  seg_cnt: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Segment sums (R, sum K_i) and per-token means from flat token scores."""
    R = tokens.shape[0]
    total = int(seg_off[-1])
    sums = torch.zeros(R, total, dtype=tokens.dtype)
    for i, ex in enumerate(train):
        seg = _field(ex, "segment_ids")
        if seg is None:
            continue
        seg = torch.as_tensor(seg).long()
        m = seg >= 0
        cols = int(tok_off[i]) + torch.nonzero(m).squeeze(1)
        sums.index_add_(1, int(seg_off[i]) + seg[m], tokens[:, cols])
    mean = sums / seg_cnt.clamp(min=1).to(sums.dtype)
    return sums, mean, seg_off
