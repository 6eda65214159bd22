"""Running the passes on several processes, on a GPU, in bf16, and over module partitions.

Processes come from ``torch.distributed`` / ``torchrun``: under ``torchrun --nproc_per_node N``
each rank fits or scores a deterministic shard of the training data (strided: rank r takes
examples r, r + N, ...; or contiguous blocks), then

- the covariance pass all-reduces (sums) the activation and output-gradient covariances and the
  token / example counts before the eigendecomposition; the eigendecompositions are split
  round-robin over the ranks and broadcast from their owner;
- the Lambda pass all-reduces Lambda and its example count;
- the query gradients are summed over ranks (each rank takes a shard of the queries; rows are sums
  over queries, so the sum of shards is the whole);
- example and token scores are gathered back in dataset order (``all_gather`` of padded shards).

Without a process group (a plain ``python`` run) the world has size 1 and every function here is
the identity, so the same code runs in one process. Only rank 0 writes final artifacts (atomic
writes, then a barrier); resume checkpoints are per rank (``<out>/.rank<r>of<N>/``).

Also here: :class:`ExecConfig` (device, bf16 autocast, gradient checkpointing, shard layout:
how the passes run, not what they compute), and module partitioning (fit the factors of a subset
of modules per run with :func:`partition_modules`, then :func:`infra_lib.factors.merge_factors`).
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import torch
import torch.distributed as dist

__all__ = ["ExecConfig", "resolve_device", "init_distributed", "world_size", "rank", "is_main", "barrier",
           "shard_indices", "rank_dir", "remove_rank_dir", "all_reduce_sum_", "broadcast_round_robin", "gather_columns",
           "gather_tokens", "partition_modules"]

_AUTOCAST = {"none": None, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass(frozen=True)
class ExecConfig:
    """How the passes run (not what they compute). Saved beside the factors and scores."""

    device: str = "auto"
    """``cuda`` | ``cpu`` | ``auto`` (cuda when available) | an explicit ``cuda:K``; under torchrun cuda is ``cuda:LOCAL_RANK``."""
    autocast: str = "none"
    """Forward passes under ``torch.autocast`` in ``bfloat16`` (or ``float16``); ``none``: the model's dtype. Captures and accumulators keep the factor/score dtype (float32 or float64)."""
    gradient_checkpointing: bool = False
    """Recompute each decoder layer in the backward (transformers' gradient_checkpointing_enable, non-reentrant): less activation memory, one more forward."""
    shard: str = "strided"
    """How ranks split the training data: ``strided`` (rank r takes r, r+N, ...) or ``contiguous`` blocks."""

    def __post_init__(self) -> None:
        if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", str(self.device)):
            raise ValueError(f"device must be auto, cpu, cuda or cuda:K, got {self.device!r}")
        if self.autocast not in _AUTOCAST:
            raise ValueError(f"autocast must be one of {tuple(_AUTOCAST)}, got {self.autocast!r}")
        if self.shard not in ("strided", "contiguous"):
            raise ValueError(f"shard must be 'strided' or 'contiguous', got {self.shard!r}")

    @property
    def autocast_dtype(self) -> torch.dtype | None:
        return _AUTOCAST[self.autocast]

    def tracker_kwargs(self) -> dict:
        """Keyword arguments of :class:`~infra_lib.tracking.ModuleTracker`."""
        return {"autocast": self.autocast_dtype, "gradient_checkpointing": self.gradient_checkpointing}


# --------------------------------------------------------------------------- process group
def resolve_device(spec: str = "auto") -> torch.device:
    """``auto`` -> cuda if available else cpu; ``cuda`` under torchrun -> ``cuda:LOCAL_RANK``."""
    if spec == "auto":
        spec = "cuda" if torch.cuda.is_available() else "cpu"
    if spec == "cuda":
        if not torch.cuda.is_available():
            raise ValueError("--device cuda: no CUDA device is visible to torch (use --device cpu or auto)")
        spec = f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}"
    if spec.startswith("cuda:") and int(spec[5:]) >= max(torch.cuda.device_count(), 0) and torch.cuda.is_available():
        raise ValueError(f"--device {spec}: only {torch.cuda.device_count()} CUDA devices are visible")
    return torch.device(spec)


def init_distributed(device: torch.device | None = None) -> bool:
    """Join the process group that ``torchrun`` describes (``WORLD_SIZE`` > 1 in the environment):
    NCCL for CUDA devices, gloo otherwise. Returns True when running with several processes."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size() > 1
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return False
    cuda = device is not None and device.type == "cuda"
    if cuda:
        torch.cuda.set_device(device)
    dist.init_process_group(backend="nccl" if cuda else "gloo")
    return dist.get_world_size() > 1


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def is_main() -> bool:
    return rank() == 0


def barrier() -> None:
    if world_size() > 1:
        dist.barrier()


def _comm_device() -> torch.device:
    """Where collectives run: the current CUDA device under NCCL, else the CPU."""
    if world_size() > 1 and dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


# --------------------------------------------------------------------------- sharding
def shard_indices(n: int, how: str = "strided", r: int | None = None, world: int | None = None) -> list[int]:
    """Dataset indices of rank ``r`` (default: this rank) among ``world`` ranks; deterministic."""
    r = rank() if r is None else r
    world = world_size() if world is None else world
    if how == "strided":
        return list(range(r, n, world))
    if how == "contiguous":
        per, extra = divmod(n, world)
        start = r * per + min(r, extra)
        return list(range(start, start + per + (r < extra)))
    raise ValueError(f"shard must be 'strided' or 'contiguous', got {how!r}")


def rank_dir(out_dir: str | Path | None) -> Path | None:
    """Folder of this rank's resume checkpoints: ``out_dir`` itself in one process."""
    if out_dir is None or world_size() == 1:
        return None if out_dir is None else Path(out_dir)
    return Path(out_dir) / f".rank{rank()}of{world_size()}"


def remove_rank_dir(out_dir: str | Path | None) -> None:
    """Remove this rank's checkpoint folder once it is empty (a finished pass)."""
    d = rank_dir(out_dir)
    if d is not None and out_dir is not None and d != Path(out_dir) and d.is_dir() and not any(d.iterdir()):
        d.rmdir()


# --------------------------------------------------------------------------- collectives
def all_reduce_sum_(state: dict[str, torch.Tensor], keys: Sequence[str] | None = None) -> dict[str, torch.Tensor]:
    """Sum ``state[k]`` over ranks in place (sorted keys, so every rank makes the same calls).
    Every rank must hold every key; a no-op in one process."""
    if world_size() == 1:
        return state
    keys = sorted(state if keys is None else keys)
    names = [None] * world_size()
    dist.all_gather_object(names, keys)
    if any(n != keys for n in names):
        raise RuntimeError(f"ranks hold different accumulators (rank {rank()}: {keys[:4]}...); "
                           f"does every rank have training examples?")
    dev = _comm_device()
    for k in keys:
        t = state[k]
        buf = t.to(dev)
        dist.all_reduce(buf, op=dist.ReduceOp.SUM)
        state[k] = buf.to(t.device)
    return state


def broadcast_round_robin(keys: Sequence[str], compute: Callable[[str], dict[str, torch.Tensor]],
                          shapes: Callable[[str], dict[str, tuple[tuple[int, ...], torch.dtype]]]) -> dict[str, torch.Tensor]:
    """Item j of ``keys`` is computed by rank ``j % world`` (``compute(key)`` -> named tensors) and
    broadcast from there; ``shapes(key)`` gives the names, shapes and dtypes the others allocate."""
    out: dict[str, torch.Tensor] = {}
    world, me = world_size(), rank()
    dev = _comm_device()
    for j, k in enumerate(keys):
        owner = j % world
        if world == 1 or owner == me:
            got = compute(k)
        else:
            got = {n: torch.empty(s, dtype=dt, device=dev) for n, (s, dt) in shapes(k).items()}
        if world > 1:
            for n in sorted(got):
                buf = got[n].to(dev).contiguous()
                dist.broadcast(buf, src=owner)
                got[n] = buf
        out.update(got)
    return out


def _all_gather_padded(local: torch.Tensor, width: int) -> list[torch.Tensor]:
    """all_gather of (R, n_r) tensors padded to (R, width)."""
    dev = _comm_device()
    pad = torch.zeros(local.shape[0], width, dtype=local.dtype, device=dev)
    pad[:, :local.shape[1]] = local.to(dev)
    parts = [torch.empty_like(pad) for _ in range(world_size())]
    dist.all_gather(parts, pad)
    return [p.cpu() for p in parts]


def gather_columns(local: torch.Tensor, n_total: int, how: str = "strided") -> torch.Tensor:
    """(R, n_local) columns of this rank's shard -> (R, n_total) in dataset order, on every rank."""
    world = world_size()
    if world == 1:
        return local
    shards = [shard_indices(n_total, how, r, world) for r in range(world)]
    parts = _all_gather_padded(local, max(len(s) for s in shards))
    out = torch.zeros(local.shape[0], n_total, dtype=local.dtype)
    for s, p in zip(shards, parts):
        out[:, s] = p[:, :len(s)]
    return out


def gather_tokens(local: torch.Tensor, tok_off: torch.Tensor, how: str = "strided") -> torch.Tensor:
    """Flat token scores of this rank's shard (R, sum of its T_i, in shard order) -> (R, sum_i T_i) in
    dataset order (``tok_off``: (N + 1,) global token offsets), on every rank."""
    world = world_size()
    if world == 1:
        return local
    n = tok_off.numel() - 1
    pos = []
    for r in range(world):
        idx = shard_indices(n, how, r, world)
        pos.append(torch.cat([torch.arange(int(tok_off[i]), int(tok_off[i + 1])) for i in idx])
                   if idx else torch.zeros(0, dtype=torch.long))
    parts = _all_gather_padded(local, max(p.numel() for p in pos))
    out = torch.zeros(local.shape[0], int(tok_off[-1]), dtype=local.dtype)
    for p, g in zip(pos, parts):
        out[:, p] = g[:, :p.numel()]
    return out


# --------------------------------------------------------------------------- module partitions
_LAYER = re.compile(r"\.(\d+)\.")


def partition_modules(names: Sequence[str], n_parts: int, part: int) -> list[str]:
    """Part ``part`` (0-based) of ``n_parts`` of the tracked modules: contiguous runs of whole layers
    (modules of one layer, which share inputs, stay together), balanced by module count."""
    if not 1 <= n_parts or not 0 <= part < n_parts:
        raise ValueError(f"partition {part}/{n_parts}: need 0 <= part < n_parts")
    layers: dict[str, list[str]] = {}
    for n in names:
        m = _LAYER.search(n)
        layers.setdefault(m.group(1) if m else n, []).append(n)
    blocks = list(layers.values())
    if n_parts > len(blocks):
        raise ValueError(f"{n_parts} partitions but only {len(blocks)} layers of tracked modules")
    total, out, acc = len(names), [], 0
    for b in blocks:  # a block goes to the part whose share of the module count its start falls into
        if acc * n_parts // total == part:
            out.extend(b)
        acc += len(b)
    if not out:
        raise ValueError(f"partition {part}/{n_parts} of {len(blocks)} layers is empty; use fewer partitions")
    return out
