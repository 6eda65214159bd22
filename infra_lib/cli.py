"""Command line: ``infra fit-factors``, ``infra score``, ``infra report`` (also ``python -m infra_lib``).

A user with a causal LM (a local folder or a hub id, loaded with ``from_pretrained``) and JSONL
data (or a ``datasets`` id) never needs a notebook::

    infra fit-factors --model Qwen/Qwen2.5-7B-Instruct --train sft.jsonl --mapping map.json --out runs/f
    infra score --model Qwen/Qwen2.5-7B-Instruct --factors runs/f --queries q_math.jsonl q_code.jsonl \\
                --train sft.jsonl --mapping map.json --aggregation mean --groups domain --out runs/s
    infra report --scores runs/s --top-k 10 --heatmap runs/s/heatmap.html

Every field of :class:`~infra_lib.factors.FactorConfig` (``fit-factors``) and
:class:`~infra_lib.scores.ScoreConfig` (``score``) is an option, generated from the dataclass with
its attribute docstring as help. Inputs are checked before anything expensive runs: missing files,
bad records (``file:line: field``), a tokenizer that does not fit the model, factors fitted for
another model, and a memory plan (:mod:`infra_lib.planner`) that does not fit.

Output folders are checked before anything is loaded (a folder that cannot be made is named),
and a folder holding results of another run (its fingerprint of command, model, data and config
differs, or it has none) is refused unless ``--overwrite`` is given; the same run resumes.
``score`` never writes into a factors folder.

Exit status: 0 done, 1 an input or plan error (one line on stderr says what and where),
2 a command-line error (argparse), 130 interrupted (Ctrl-C; one line says how to resume).
"""
from __future__ import annotations

import argparse
import ast
import dataclasses
import inspect
import os
import shutil
import sys
import textwrap
import time
import warnings
from pathlib import Path
from typing import Any, Sequence

__all__ = ["main", "build_parser", "field_docs", "CLIError", "load_source", "check_tokenizer"]

PROG = "infra"
_MODEL_DTYPES = ("float32", "bfloat16", "float16", "float64")
_CHOICES = {  # fields whose values are a closed set (the dataclass validates them too)
    "strategy": ("identity", "diagonal", "kfac", "ekfac"),
    "fisher": ("sampled", "empirical"),
    "dtype": ("float32", "float64"),
    "aggregation": ("per-query", "mean"),
    "autocast": ("none", "bfloat16", "float16"),
    "shard": ("strided", "contiguous"),
}
_RUN_FILE = "cli.json"  # beside factors and scores: how they were made (report reads it)
_TRAIN_INDEX = "train_index.json"  # beside scores: id, domain, difficulty, prompt head of each column
# What the commands write into an output folder; another run's copies are never replaced silently.
_RESULTS = ("factors.safetensors", "factors.json", "scores.safetensors", "scores.json", _RUN_FILE, _TRAIN_INDEX)
_STAGE: list[Any] = ["checking the inputs", None]  # what the command is doing, and where it resumes from


class CLIError(Exception):
    """An input problem found before (or instead of) the expensive work; printed as one message."""


# --------------------------------------------------------------------------- config options
def field_docs(cls: type) -> dict[str, str]:
    """Attribute docstrings of a dataclass (the string literal after each field), whitespace collapsed."""
    src = textwrap.dedent(inspect.getsource(cls))
    body = ast.parse(src).body[0].body
    out = {}
    for a, b in zip(body, body[1:]):
        if (isinstance(a, ast.AnnAssign) and isinstance(a.target, ast.Name) and isinstance(b, ast.Expr)
                and isinstance(b.value, ast.Constant) and isinstance(b.value.value, str)):
            out[a.target.id] = " ".join(b.value.value.split())
    return out


def _opt(name: str) -> str:
    return "--" + name.replace("_", "-")


def _none_or(kind):
    def parse(text: str):
        return None if text.lower() in ("none", "null") else kind(text)

    parse.__name__ = kind.__name__ + "|none"
    return parse


_TUPLE_METAVAR = {"individual": "QUERY_ID"}  # tuple options that take exact names, not regexes


def add_config_options(parser: argparse.ArgumentParser, cls: type, *, skip: Sequence[str] = (),
                       title: str | None = None, note: str = "") -> argparse._ArgumentGroup:
    """One option per field of the dataclass ``cls`` (``--batch-size`` for ``batch_size``), help = its
    docstring and default. Options left out keep the dataclass default (see :func:`config_from_args`)."""
    docs = field_docs(cls)
    grp = parser.add_argument_group(title or f"{cls.__name__} ({cls.__module__})",
                                    f"every field of {cls.__name__}; saved as JSON beside the result.{note}")
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        ann = str(f.type)
        default = f.default if f.default is not dataclasses.MISSING else None
        help_ = docs.get(f.name, "").replace("``", "").replace("%", "%%") + f" (default: {default})"
        kw: dict[str, Any] = dict(default=argparse.SUPPRESS, help=help_, dest=f"cfg_{f.name}")
        if ann == "bool":
            kw["action"] = argparse.BooleanOptionalAction
        elif "tuple" in ann:
            kw.update(nargs="+", metavar=_TUPLE_METAVAR.get(f.name, "NAME_OR_REGEX"))
        else:
            kind = int if ann.startswith("int") else float if ann.startswith("float") else str
            kw["type"] = _none_or(kind) if "None" in ann else kind
            if f.name in _CHOICES:
                kw["choices"] = _CHOICES[f.name]
                kw.pop("type")
            else:
                kw["metavar"] = kind.__name__.upper() + ("|none" if "None" in ann else "")
        grp.add_argument(_opt(f.name), **kw)
    return grp


def config_from_args(cls: type, ns: argparse.Namespace, base: Any = None, **fixed: Any) -> Any:
    """``cls`` from ``base`` (or the defaults) with the options given on the command line applied."""
    given = {f.name: getattr(ns, f"cfg_{f.name}") for f in dataclasses.fields(cls) if hasattr(ns, f"cfg_{f.name}")}
    if "modules" in given:
        mods = list(given["modules"])
        given["modules"] = mods[0] if len(mods) == 1 else tuple(mods)
    given.update(fixed)
    try:
        return dataclasses.replace(base, **given) if base is not None else cls(**given)
    except (TypeError, ValueError) as exc:
        raise CLIError(f"{cls.__name__}: {exc}") from None


# --------------------------------------------------------------------------- inputs
def _datasets_available() -> bool:
    from .sources import datasets_available

    return datasets_available()


def load_source(src: str, mapping: str | None, what: str) -> list[dict]:
    """Records from one source (:func:`infra_lib.sources.load_source`: a JSONL file, a ``datasets`` folder,
    a parquet or JSON file, or ``hf:NAME[:CONFIG][@SPLIT]``) with the optional field ``mapping`` (a JSON
    file); any problem becomes a :class:`CLIError` that starts with ``what`` (e.g. ``--train``). A path
    that exists but is a FIFO or a device is named as such (reading it would block)."""
    from .io import file_kind
    from .records import RecordError
    from .sources import load_source as read_source

    kind = None if mapping is None else file_kind(mapping)
    if kind == "missing":
        raise CLIError(f"{what}: mapping file {mapping} not found (see data/mappings/ for examples)")
    if kind is not None:
        raise CLIError(f"{what}: mapping file {mapping} is {kind}, not a regular file")
    if not src.startswith("hf:"):
        base = src.rpartition("@")[0] if "@" in src and not Path(src).exists() else src  # PATH@SPLIT
        kind = file_kind(base)
        if kind == "missing":
            hint = " (a datasets id? write it as hf:NAME[:CONFIG][@SPLIT])" if "/" in src and not Path(src).exists() else ""
            raise CLIError(f"{what}: {src}: no such file{hint}")
        saved = kind == "a folder" and any((Path(base) / f).is_file() for f in ("dataset_info.json", "dataset_dict.json", "state.json"))
        if kind is not None and not saved:  # a folder is a source only when save_to_disk wrote it
            raise CLIError(f"{what}: {src}: is {kind}, not a regular file or a dataset folder")
    try:
        return read_source(src, mapping)
    except RecordError as exc:
        raise CLIError(f"{what}: bad record: {exc}") from None
    except ValueError as exc:  # SourceError, or a malformed mapping file
        raise CLIError(f"{what}: {exc}") from None


def _is_local(model: str) -> bool:
    """A path rather than a hub id (``org/name``)."""
    return Path(model).exists() or model.startswith((".", "/", "~")) or model.count("/") > 1


def _load_config(model: str):
    from transformers import AutoConfig

    if _is_local(model) and not (Path(model) / "config.json").is_file():
        raise CLIError(f"--model {model}: no config.json there (expected a from_pretrained folder or a hub id)")
    try:
        return AutoConfig.from_pretrained(model)
    except Exception as exc:
        raise CLIError(f"--model {model}: cannot read its config ({type(exc).__name__}: {str(exc).splitlines()[0]})") from None


def _load_tokenizer(path: str):
    from .loading import load_tokenizer

    if _is_local(path) and not Path(path).is_dir():
        raise CLIError(f"--tokenizer {path}: no such folder")
    try:
        tok = load_tokenizer(path)
    except Exception as exc:
        raise CLIError(f"tokenizer {path}: cannot load it ({type(exc).__name__}: {str(exc).splitlines()[0]})") from None
    if not getattr(tok, "chat_template", None):
        raise CLIError(f"tokenizer {path}: it has no chat template; records are encoded as chats "
                       f"(use an instruct model's tokenizer, or set tokenizer.chat_template and save it)")
    return tok


def check_tokenizer(tokenizer, config, allow_mismatch: bool = False) -> None:
    """Refuse a tokenizer that was not made for the model: more tokens than embedding rows, or far
    fewer (models pad their embedding, e.g. Qwen2.5-7B: 151,665 tokens, 152,064 rows)."""
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    V, n = int(text.vocab_size), len(tokenizer)
    eos = tokenizer.eos_token_id
    problem = None
    if n > V:
        problem = f"the tokenizer has {n:,} tokens but the model's embedding only {V:,} rows"
    elif V - n > max(1024, V // 50):
        problem = f"the tokenizer has {n:,} tokens, the model's embedding {V:,} rows: too many to be padding"
    elif eos is not None and eos >= V:
        problem = f"the tokenizer's end-of-turn token id {eos} is outside the model's {V:,}-row embedding"
    if problem and not allow_mismatch:
        raise CLIError(f"tokenizer does not match the model: {problem}. Use the model's own tokenizer "
                       f"(--tokenizer defaults to the model folder), or --allow-vocab-mismatch if you are sure")
    if problem:
        print(f"warning: {problem} (--allow-vocab-mismatch given)", file=sys.stderr)


def _encode(records: list[dict], tokenizer, args, what: str) -> list[dict]:
    """Records -> examples; records longer than --max-length are skipped with a counted warning
    (``--on-too-long skip``) or stop the run (``error``). Nothing is truncated."""
    from .data import ResponseTooLongError, encode_records

    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            enc = encode_records(records, tokenizer, args.max_length, system=args.system, on_too_long=args.on_too_long)
    except ResponseTooLongError as exc:
        raise CLIError(f"{what}: {exc} (raise --max-length, or --on-too-long skip)") from None
    except ValueError as exc:
        raise CLIError(f"{what}: {exc}") from None
    for w in caught:
        if not str(w.message).startswith("encode_records: skipped"):
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    skipped = len(records) - len(enc)
    if skipped:
        got = {e["id"] for e in enc}
        first = [r["id"] for r in records if r["id"] not in got][:3]
        _info(f"warning: {what}: skipped {skipped} of {len(records)} records longer than --max-length "
              f"{args.max_length} tokens (first: {', '.join(first)}). Records are never truncated (a cut CoT would "
              f"be attributed as if seen whole); raise --max-length to keep them.", file=sys.stderr)
    if not enc:
        raise CLIError(f"{what}: no record fits in --max-length {args.max_length} tokens")
    return enc


def _info(*a, **k) -> None:
    """print on rank 0 only (under torchrun every rank runs the same command)."""
    from .distributed import is_main

    if is_main():
        print(*a, **k)


def _torch_dtype(name: str):
    import torch

    return getattr(torch, name)


def _load_model(args, device=None):
    from .loading import load_model

    try:
        model = load_model(args.model, dtype=_torch_dtype(args.model_dtype))
    except Exception as exc:
        raise CLIError(f"--model {args.model}: cannot load the weights ({type(exc).__name__}: "
                       f"{str(exc).splitlines()[0] if str(exc) else ''})") from None
    return model if device is None else model.to(device)


def _execution(args):
    """The :class:`~infra_lib.distributed.ExecConfig` of the options, its device, and the process
    group under torchrun (gloo on CPUs, NCCL on GPUs)."""
    from .distributed import ExecConfig, init_distributed, resolve_device

    run = config_from_args(ExecConfig, args)
    try:
        device = resolve_device(run.device)
    except ValueError as exc:
        raise CLIError(str(exc)) from None
    init_distributed(device)
    return run, device


def _budget(args) -> int:
    from .planner import available_memory, parse_bytes

    if args.memory_budget is None:
        return available_memory()
    try:
        return parse_bytes(args.memory_budget)
    except ValueError as exc:
        raise CLIError(f"--memory-budget: {exc}") from None


def _plan_gate(args, plan, phases, model_config) -> bool:
    """Print the plan; refuse it when it does not fit. True when the command should stop (--plan-only)."""
    from .planner import PlanError, check_plan

    budget = _budget(args)
    text = plan.format(phases, budget)
    _info(text, file=sys.stdout if args.plan_only else sys.stderr, flush=True)
    try:
        check_plan(plan, budget, phases, model=model_config)
    except PlanError as exc:
        if args.plan_only or not args.ignore_plan:
            raise CLIError(f"{exc}\n(--memory-budget sets the budget; --ignore-plan runs anyway)") from None
        print(f"warning: {exc} (--ignore-plan given: running anyway)", file=sys.stderr)
    return bool(args.plan_only)


def _write_run(out: Path, args, extra: dict) -> None:
    import resource

    import torch

    from . import distributed as dist
    from .io import atomic_write_json

    if not dist.is_main():
        return
    extra = {"world_size": dist.world_size(), "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
             **extra}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        extra["peak_cuda_bytes"] = torch.cuda.max_memory_allocated()

    from .io import read_json

    claim = read_json(out / _RUN_FILE) if (out / _RUN_FILE).is_file() else {}
    extra = {**{k: claim[k] for k in ("fingerprint", "inputs", "started") if k in claim}, **extra}
    keep = {k: v for k, v in vars(args).items() if k not in ("func",) and not k.startswith("cfg_")}
    atomic_write_json(out / _RUN_FILE, {"command": args.command, "args": keep, "argv": sys.argv,
                                         "torch": torch.__version__, "threads": torch.get_num_threads(),
                                         "finished": time.strftime("%Y-%m-%d %H:%M:%S"), **extra})


def _setup(args) -> None:
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)


# --------------------------------------------------------------------------- output folders
def _stage(what: str, resumes_from: Path | None = None) -> None:
    """Say what the command does now (and which folder holds its checkpoints), for the Ctrl-C line."""
    _STAGE[:] = [what, resumes_from]


def _check_out_path(out: Path, flag: str = "--out") -> None:
    """Refuse, before anything is loaded, an output folder that is something else or cannot be
    made: the nearest existing folder above it must be writable. Nothing is created here."""
    from .io import file_kind

    kind = file_kind(out)
    if kind in ("missing", "a folder"):
        pass
    elif kind == "a broken link":
        raise CLIError(f"{flag} {out}: is a broken link; remove it or point it at a folder")
    else:
        raise CLIError(f"{flag} {out}: exists and is not a folder ({kind or 'a regular file'})")
    if kind == "a folder":
        if not os.access(out, os.W_OK | os.X_OK):
            raise CLIError(f"{flag} {out}: the folder is not writable")
        return
    up = out.absolute().parent
    while not up.exists() and up != up.parent:
        up = up.parent
    if not up.is_dir():
        raise CLIError(f"{flag} {out}: cannot be created: {up} is not a folder")
    if not os.access(up, os.W_OK | os.X_OK):
        raise CLIError(f"{flag} {out}: cannot be created: {up} is not writable")


def _results_in(out: Path) -> list[str]:
    """Names of results and checkpoints of these commands in ``out`` (sorted); a cli.json alone (a
    run that stopped before writing anything) does not count."""
    if not out.is_dir():
        return []
    found = sorted(p.name for p in out.iterdir() if p.name in _RESULTS or p.name.startswith((".partial_", ".rank")))
    return found if set(found) - {_RUN_FILE} else []


def _digest(*parts: Any) -> str:
    from .io import config_hash

    return config_hash(*parts, length=16)


def _model_identity(name: str) -> Any:
    """A local model as its resolved folder and the sizes of its files; a hub id as itself."""
    if not _is_local(name):
        return name
    p = Path(name).expanduser().resolve()
    files = sorted((f.name, f.stat().st_size) for f in p.iterdir() if f.is_file()) if p.is_dir() else []
    return [str(p), files]


def _records_digest(records: list[dict], args) -> str:
    """The records as they will be encoded (the mapping already applied) and how they are encoded."""
    return _digest(records, args.max_length, args.system, args.on_too_long)


def _run_inputs(args, records: dict[str, list[dict]], **config: Any) -> dict[str, str]:
    """What a run's results depend on, one digest per part (named when a folder is refused)."""
    inputs = {"model": _digest(_model_identity(args.model), args.model_dtype),
              "tokenizer": _digest(_model_identity(args.tokenizer or args.model))}
    inputs.update({name: _records_digest(recs, args) for name, recs in records.items()})
    inputs.update({name: _digest(value) for name, value in config.items()})
    return inputs


def _check_out_run(out: Path, command: str, inputs: dict[str, str], overwrite: bool) -> tuple[str, list[str]]:
    """(fingerprint, results to remove before the run). Refuses a folder holding results of a
    different run (another fingerprint, or none) unless ``overwrite``; the same run resumes."""
    from .io import read_json

    fp = _digest(command, inputs)
    found = _results_in(out)
    if not found:
        return fp, []
    try:
        prev = read_json(out / _RUN_FILE) if (out / _RUN_FILE).is_file() else {}
    except (OSError, ValueError):
        prev = {}
    prev = prev if isinstance(prev, dict) else {}
    if prev.get("fingerprint") == fp:
        return fp, []
    if overwrite:
        return fp, found
    theirs = prev.get("inputs") if isinstance(prev.get("inputs"), dict) else None
    if prev.get("command") != command and prev.get("command"):
        why = f"results of infra {prev['command']}, not {command}"
    elif theirs:
        differ = [k for k in sorted(set(inputs) | set(theirs)) if inputs.get(k) != theirs.get(k)]
        why = f"results of another {command} run (its {', '.join(differ)} differ)"
    else:
        why = "results without a fingerprint of how they were made"
    when = f", from {prev['started']}" if isinstance(prev.get("started"), str) else ""
    shown = ", ".join(found[:4]) + (f" and {len(found) - 4} more" if len(found) > 4 else "")
    raise CLIError(f"--out {out} holds {why}{when} ({shown}); refusing to overwrite them. Choose another --out, "
                   f"or pass --overwrite to replace them (the same command with the same inputs resumes)")


def _claim_out(out: Path, args, fp: str, inputs: dict[str, str], stale: list[str]) -> None:
    """Make the folder, remove another run's results (``--overwrite``), and record this run's
    fingerprint in cli.json before the expensive work, so that an interrupted run resumes."""
    from . import distributed as dist
    from .io import atomic_write_json

    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CLIError(f"--out {out}: cannot create the folder ({exc.strerror or exc})") from None
    if not dist.is_main():
        return
    for name in stale:
        p = out / name
        shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink(missing_ok=True)
    if stale:
        _info(f"{args.command}: --overwrite: removed {len(stale)} results of another run from {out}", file=sys.stderr)
    keep = {k: v for k, v in vars(args).items() if k not in ("func",) and not k.startswith("cfg_")}
    atomic_write_json(out / _RUN_FILE, {"command": args.command, "fingerprint": fp, "inputs": inputs, "args": keep,
                                        "argv": sys.argv, "started": time.strftime("%Y-%m-%d %H:%M:%S")})


# --------------------------------------------------------------------------- fit-factors
def cmd_fit_factors(args) -> int:
    from .checks import check_examples
    from .factors import FactorConfig, fit_factors
    from .planner import FIT_PHASES, plan_memory

    t0 = time.time()
    cfg = config_from_args(FactorConfig, args)
    run, device = _execution(args)
    out = Path(args.out)
    _check_out_path(out)
    train_recs = load_source(args.train, args.mapping, "--train")
    inputs = _run_inputs(args, {"train": train_recs}, config=cfg.fit_key(), partition=args.partition,
                         autocast=run.autocast)
    fp, stale = _check_out_run(out, args.command, inputs, args.overwrite)
    config = _load_config(args.model)
    tok = _load_tokenizer(args.tokenizer or args.model)
    check_tokenizer(tok, config, args.allow_vocab_mismatch)
    train = _encode(train_recs, tok, args, "--train")
    check_examples(config, train, "--train")  # ids and lengths the model can take, before loading it
    n_tok = sum(int(e["input_ids"].numel()) for e in train)
    _info(f"fit-factors: {len(train)} training examples, {n_tok:,} tokens (max {max(e['input_ids'].numel() for e in train)})",
          file=sys.stderr)
    try:
        if args.partition:  # planned for the part only: the model's linears from its config (meta device)
            from .planner import describe_modules

            cfg = _partition(args.partition, list(describe_modules(config, cfg.modules).shapes), cfg)
        plan = plan_memory(config, cfg.modules, cfg.strategy, 0, None, cfg.dtype, min(cfg.batch_size, len(train)),
                           min(args.max_length, max(int(e["input_ids"].numel()) for e in train)),
                           model_dtype=args.model_dtype, fisher=cfg.fisher, n_train_tokens=n_tok)
    except ValueError as exc:  # the module selection matches nothing: names the model's linears
        raise CLIError(f"--modules: {exc}") from None
    if _plan_gate(args, plan, FIT_PHASES, config):
        return 0
    _claim_out(out, args, fp, inputs, stale)
    _stage("loading the model", out)
    _setup(args)
    model = _load_model(args, device)
    check_tokenizer(tok, model.config, args.allow_vocab_mismatch)
    _stage("fitting factors", out)
    f = fit_factors(model, train, cfg, out_dir=out, progress=_progress(args), execution=run)
    stored = sum(t.numel() * t.element_size() for t in f.tensors.values())
    _write_run(out, args, {"n_examples": len(train), "n_tokens": n_tok, "wall_s": round(time.time() - t0, 2),
                           "stored_bytes": stored, "planned_stored_bytes": plan.factor_bytes,
                           "planned_peak_bytes": plan.peak(FIT_PHASES)[1]})
    _info(f"fit-factors: {cfg.strategy} factors of {len(f.modules)} modules ({stored:,} bytes) -> {out} "
          f"in {time.time() - t0:.1f} s", file=sys.stderr)
    return 0


# --------------------------------------------------------------------------- score
def _groups(spec: str | None, queries: list[dict], aggregation: str) -> Any:
    if aggregation != "mean":
        if spec is not None:
            raise CLIError("--groups is only used with --aggregation mean")
        return None
    spec = spec or "domain"
    if spec in ("domain", "difficulty", "domain-difficulty"):
        groups: dict[str, list[str]] = {}
        for q in queries:
            key = {"domain": str(q.get("domain")), "difficulty": f"L{q.get('difficulty')}",
                   "domain-difficulty": f"{q.get('domain')} L{q.get('difficulty')}"}[spec]
            groups.setdefault(key, []).append(q["id"])
        return groups
    p = Path(spec)
    if not p.is_file():
        raise CLIError(f"--groups {spec}: expected domain, difficulty, domain-difficulty, or a JSON file "
                       f"{{name: [query ids]}}")
    from .io import read_json

    try:
        g = read_json(p)
    except ValueError as exc:
        raise CLIError(f"--groups: {exc}") from None
    ids = {q["id"] for q in queries}
    if not isinstance(g, dict):
        raise CLIError(f"--groups {spec}: must be a JSON object {{name: [query ids]}}")
    for name, members in g.items():
        missing = [m for m in members if m not in ids]
        if missing:
            raise CLIError(f"--groups {spec}: group {name!r} names ids that are not among the (encoded) queries: "
                           f"{missing[:5]}")
    return g


def _factor_layout(factors_dir: Path, config):
    """Check the factors' module shapes against the model's config before loading any weight."""
    from .io import read_json
    from .planner import layout_for_names

    meta = read_json(factors_dir / "factors.json")
    names = list(meta["modules"])
    try:
        lay = layout_for_names(config, names)
    except KeyError as exc:
        raise CLIError(f"--factors {factors_dir}: fit for another model ({exc.args[0]}); refit them for this model") from None
    bad = [n for n in names if tuple(meta["shapes"][n]) != tuple(lay.shapes[n])]
    if bad:
        raise CLIError(f"--factors {factors_dir}: fit for another model (module {bad[0]} has shape "
                       f"{tuple(meta['shapes'][bad[0]])} there, {lay.shapes[bad[0]]} here); refit them for this model")
    return meta, lay


def _progress(args) -> bool:
    from .distributed import is_main

    return not args.no_progress and is_main()


def _partition(spec: str, names: list[str], cfg):
    """``--partition K/N``: the K-th (1-based) of N contiguous layer blocks of the tracked ``names``."""
    from .distributed import partition_modules

    k, sep, n = spec.partition("/")
    if not sep or not k.isdigit() or not n.isdigit():
        raise CLIError(f"--partition {spec}: expected K/N, e.g. 1/4")
    try:
        names = partition_modules(names, int(n), int(k) - 1)
    except ValueError as exc:
        raise CLIError(f"--partition {spec}: {exc}") from None
    return dataclasses.replace(cfg, modules=tuple(names))


def cmd_merge_factors(args) -> int:
    from .factors import factors_exist, load_factors, merge_factors, save_factors

    out = Path(args.out)
    _check_out_path(out)
    for d in args.parts:
        if not factors_exist(d):
            raise CLIError(f"--parts {d}: no factors there (run infra fit-factors --partition K/N)")
        if Path(d).resolve() == out.resolve():
            raise CLIError(f"--out {out}: is one of the --parts; merged factors go to a folder of their own")
    inputs = {"parts": _digest([(Path(d) / "factors.json").read_bytes().hex() for d in args.parts])}
    fp, stale = _check_out_run(out, args.command, inputs, args.overwrite)
    try:
        merged = merge_factors([load_factors(d) for d in args.parts])
    except ValueError as exc:
        raise CLIError(str(exc)) from None
    _claim_out(out, args, fp, inputs, stale)
    save_factors(merged, args.out)
    print(f"merge-factors: {len(merged.modules)} modules from {len(args.parts)} parts -> {args.out}", file=sys.stderr)
    return 0


def cmd_score(args) -> int:
    from .checks import check_examples
    from .factors import FactorConfig, factors_exist, load_factors
    from .planner import plan_memory
    from .scores import ScoreConfig, compute_scores

    t0 = time.time()
    fdir, out = Path(args.factors), Path(args.out)
    if not factors_exist(fdir):
        raise CLIError(f"--factors {fdir}: no factors there (expected factors.safetensors and factors.json; "
                       f"run infra fit-factors first)")
    _check_out_path(out)
    if out.resolve() == fdir.resolve() or factors_exist(out):
        what = "is the --factors folder" if out.resolve() == fdir.resolve() else "holds factors"
        raise CLIError(f"--out {out}: {what}; score never writes into a factors folder (with or without "
                       f"--overwrite): choose another --out")
    config_from_args(ScoreConfig, args, groups=None, aggregation="per-query")  # bad options fail before any loading
    run, device = _execution(args)
    query_recs: list[dict] = []
    seen: dict[str, str] = {}
    for src in args.queries:
        for r in load_source(src, args.query_mapping, f"--queries {src}"):
            if r["id"] in seen:
                raise CLIError(f"--queries: id {r['id']!r} appears in {seen[r['id']]} and {src}; query ids must be unique")
            seen[r["id"]] = src
            query_recs.append(r)
    train_recs = load_source(args.train, args.mapping, "--train")
    options = {k: v for k, v in vars(args).items()
               if k.removeprefix("cfg_") in {f.name for f in dataclasses.fields(ScoreConfig)} | {"damping", "damping_scale"}}
    groups_file = Path(args.groups) if args.groups and Path(args.groups).is_file() else None
    inputs = _run_inputs(args, {"queries": query_recs, "train": train_recs}, factors=(fdir / "factors.json").read_bytes().hex(),
                         options=sorted(options.items()), autocast=run.autocast,
                         groups=[args.groups, groups_file.read_bytes().hex() if groups_file else None])
    fp, stale = _check_out_run(out, args.command, inputs, args.overwrite)
    config = _load_config(args.model)
    tok = _load_tokenizer(args.tokenizer or args.model)
    check_tokenizer(tok, config, args.allow_vocab_mismatch)
    meta, layout = _factor_layout(fdir, config)
    queries = _encode(query_recs, tok, args, "--queries")
    train = _encode(train_recs, tok, args, "--train")
    check_examples(config, queries, "--queries")  # ids and lengths the model can take, before loading it
    check_examples(config, train, "--train")
    aggregation = getattr(args, "cfg_aggregation", "per-query")
    cfg = config_from_args(ScoreConfig, args, groups=_groups(args.groups, queries, aggregation))
    n_rows = len(cfg.groups) + len(cfg.individual) if cfg.aggregation == "mean" else len(queries)
    if cfg.query_segment_scores:  # steps of the individual queries when there are some, else of all
        chosen = set(cfg.individual)
        stepped = [q for q in queries if q["id"] in chosen] if chosen else queries
        n_rows += sum(len(set(int(s) for s in q["segment_ids"].tolist() if s >= 0)) for q in stepped)
    n_tok = sum(int(e["input_ids"].numel()) for e in train)
    longest = max(int(e["input_ids"].numel()) for e in train + queries)
    fcfg = FactorConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in meta["config"].items()})
    plan = plan_memory(None, fcfg.modules, fcfg.strategy, n_rows, cfg.rank, cfg.dtype, min(cfg.batch_size, len(train)),
                       min(args.max_length, longest), model_dtype=args.model_dtype, fisher=fcfg.fisher,
                       token_scores=cfg.token_scores or cfg.segment_scores,
                       query_batch_size=min(cfg.query_batch_size, len(queries)),
                       n_train=len(train), n_train_tokens=n_tok, layout=layout)
    _info(f"score: {len(queries)} queries -> {n_rows} rows ({cfg.aggregation}"
          f"{', rank ' + str(cfg.rank) if cfg.rank else ''}), {len(train)} training examples, {n_tok:,} tokens",
          file=sys.stderr)
    if _plan_gate(args, plan, ("scores",), config):
        return 0
    _claim_out(out, args, fp, inputs, stale)
    _stage("loading the model", out)
    _setup(args)
    model = _load_model(args, device)
    check_tokenizer(tok, model.config, args.allow_vocab_mismatch)
    try:
        factors = load_factors(fdir, model=model)
    except ValueError as exc:
        raise CLIError(f"--factors {fdir}: {exc}") from None
    over = {k: getattr(args, f"cfg_{k}") for k in ("damping", "damping_scale") if hasattr(args, f"cfg_{k}")}
    if over:
        try:
            factors = dataclasses.replace(factors, config=dataclasses.replace(factors.config, **over))
        except ValueError as exc:
            raise CLIError(f"FactorConfig: {exc}") from None
    _stage("computing scores", out)
    s = compute_scores(model, factors, queries, train, cfg, out_dir=out, progress=_progress(args), execution=run)
    from .distributed import is_main
    from .io import atomic_write_json

    if is_main():
        atomic_write_json(out / _TRAIN_INDEX, _train_index(train_recs, train))
    _write_run(out, args, {"n_train": len(train), "n_queries": len(queries), "rows": s.row_ids,
                           "wall_s": round(time.time() - t0, 2), "factors_config": meta["config"],
                           "planned_peak_bytes": plan.peak(("scores",))[1]})
    _info(f"score: {tuple(s.example.shape)} example scores"
          f"{', token scores' if s.token is not None else ''}{', segment scores' if s.segment is not None else ''}"
          f" -> {out} in {time.time() - t0:.1f} s", file=sys.stderr)
    return 0


def _train_index(records: list[dict], encoded: list[dict]) -> list[dict]:
    kept = {e["id"] for e in encoded}
    return [{"id": r["id"], "domain": r.get("domain"), "difficulty": r.get("difficulty"), "prompt": r["prompt"][:160]}
            for r in records if r["id"] in kept]


# --------------------------------------------------------------------------- report
def _short(text: str, n: int = 70) -> str:
    t = " ".join(str(text).split())
    return t if len(t) <= n else t[: n - 1] + "…"


def build_report(scores, index: list[dict], top_k: int) -> dict:
    """Top-k helpful and harmful training examples per row, and each row's mean by domain x difficulty."""
    import numpy as np

    by_id = {r["id"]: r for r in index}
    ex = scores.example.double().numpy()  # (R, N)
    rows = []
    for r, rid in enumerate(scores.row_ids):
        order = np.argsort(-ex[r], kind="stable")
        k = min(top_k, ex.shape[1])

        def entry(i):
            info = by_id.get(scores.train_ids[i], {})
            return {"id": scores.train_ids[i], "score": float(ex[r, i]), "domain": info.get("domain"),
                    "difficulty": info.get("difficulty"), "prompt": info.get("prompt", "")}

        rows.append({"row": rid, "helpful": [entry(i) for i in order[:k]],
                     "harmful": [entry(i) for i in order[::-1][:k]]})
    buckets = sorted({(by_id.get(t, {}).get("domain"), by_id.get(t, {}).get("difficulty")) for t in scores.train_ids},
                     key=lambda b: (str(b[0]), b[1] if isinstance(b[1], int) else -1))
    means = []
    for r, rid in enumerate(scores.row_ids):
        cells = {}
        for dom, lvl in buckets:
            idx = [i for i, t in enumerate(scores.train_ids)
                   if by_id.get(t, {}).get("domain") == dom and by_id.get(t, {}).get("difficulty") == lvl]
            cells[f"{dom} L{lvl}"] = {"n": len(idx), "mean": float(ex[r, idx].mean())}
        means.append({"row": rid, "buckets": cells})
    return {"rows": rows, "mean_by_domain_difficulty": means, "n_train": ex.shape[1],
            "convention": "score = g_q^T (F + lambda I)^-1 g_i; positive = helpful"}


def format_report(rep: dict, source: str, markdown: bool = False) -> str:
    lines = []
    h = (lambda t: f"## {t}") if markdown else (lambda t: f"== {t} ==")
    lines.append(("# " if markdown else "") + f"influence report: {source} ({len(rep['rows'])} rows x "
                 f"{rep['n_train']} training examples; positive = helpful)")
    for row in rep["rows"]:
        lines.append("")
        lines.append(h(f"row {row['row']}"))
        for kind in ("helpful", "harmful"):
            lines.append(f"top {len(row[kind])} {kind}" + (" (lowest scores):" if kind == "harmful" else " (highest scores):"))
            if markdown:
                lines += ["", "| score | id | domain | level | prompt |", "|---:|---|---|---:|---|"]
            for e in row[kind]:
                if markdown:
                    lines.append(f"| {e['score']:+.4g} | {e['id']} | {e['domain']} | {e['difficulty']} | "
                                 f"{_short(e['prompt']).replace('|', '/')} |")
                else:
                    lines.append(f"  {e['score']:+.4e}  {e['id']:<24} {str(e['domain']):<5} L{e['difficulty']}  "
                                 f"{_short(e['prompt'])}")
            if markdown:
                lines.append("")
    lines.append("")
    lines.append(h("mean score by training domain x difficulty"))
    cols = list(rep["mean_by_domain_difficulty"][0]["buckets"]) if rep["mean_by_domain_difficulty"] else []
    if markdown:
        lines += ["", "| row | " + " | ".join(cols) + " |", "|---|" + "---:|" * len(cols)]
        for m in rep["mean_by_domain_difficulty"]:
            lines.append(f"| {m['row']} | " + " | ".join(f"{m['buckets'][c]['mean']:+.3g}" for c in cols) + " |")
        lines.append("")
        lines.append("n per bucket: " + ", ".join(
            f"{c}: {rep['mean_by_domain_difficulty'][0]['buckets'][c]['n']}" for c in cols))
    else:
        w = max([len(str(m["row"])) for m in rep["mean_by_domain_difficulty"]] + [4])
        lines.append(f"{'row':<{w}}  " + "  ".join(f"{c:>11}" for c in cols))
        lines.append(f"{'n':<{w}}  " + "  ".join(
            f"{rep['mean_by_domain_difficulty'][0]['buckets'][c]['n']:>11}" for c in cols))
        for m in rep["mean_by_domain_difficulty"]:
            lines.append(f"{str(m['row']):<{w}}  " + "  ".join(f"{m['buckets'][c]['mean']:>+11.3e}" for c in cols))
    return "\n".join(lines) + "\n"


def _heatmap_items(scores, args, run: dict, rep: dict) -> list[tuple[str, str]]:
    """(row, HTML) per row: the top helpful training CoTs' response tokens coloured by token score."""
    from .report import render_heatmaps

    if scores.token is None:
        raise CLIError(f"--heatmap: {args.scores} has no token scores (run infra score with --token-scores)")
    ra = run.get("args", {})
    train_src = args.train or ra.get("train")
    mapping = args.mapping if args.train else ra.get("mapping")
    tok_path = args.tokenizer or ra.get("tokenizer") or ra.get("model")
    if not train_src or not tok_path:
        raise CLIError("--heatmap needs the training data and the tokenizer (--train, --tokenizer), "
                       f"and {args.scores}/{_RUN_FILE} does not name them")
    ns = argparse.Namespace(max_length=ra.get("max_length", args.max_length), system=ra.get("system"),
                            on_too_long="skip")
    tok = _load_tokenizer(tok_path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from .data import encode_records

        recs = {r["id"]: r for r in load_source(train_src, mapping, "--train")}
        want = {e["id"] for row in rep["rows"] for e in row["helpful"][: args.heatmap_k]}
        enc = {e["id"]: e for e in encode_records([recs[i] for i in want if i in recs], tok, ns.max_length,
                                                  system=ns.system, on_too_long="skip")}
    out = []
    for r, row in enumerate(rep["rows"]):
        items = []
        for e in row["helpful"][: args.heatmap_k]:
            i = scores.train_ids.index(e["id"])
            ex = enc.get(e["id"])
            block = scores.tokens_of(i)[r]
            if ex is None or ex["input_ids"].numel() != block.numel():
                raise CLIError(f"--heatmap: training example {e['id']} does not encode to the {block.numel()} tokens "
                               f"it was scored with: pass the --train, --tokenizer and --max-length of the score run")
            pos = (ex["labels"] != -100).nonzero().squeeze(1)
            toks = [tok.decode([int(t)]) for t in ex["input_ids"][pos]]
            items.append({"title": f"{e['id']} ({e['domain']} L{e['difficulty']}), score {e['score']:+.3g}",
                          "tokens": toks, "scores": block[pos].double().numpy()})
        out.append((str(row["row"]), render_heatmaps(items, title=f"query row {row['row']}: top helpful training CoTs")))
    return out


def cmd_report(args) -> int:
    from .io import atomic_write_json, atomic_write_text, read_json
    from .scores import load_scores, scores_exist

    sdir = Path(args.scores)
    if not scores_exist(sdir):
        raise CLIError(f"--scores {sdir}: no scores there (expected scores.safetensors and scores.json; run infra score)")
    run = read_json(sdir / _RUN_FILE) if (sdir / _RUN_FILE).is_file() else {}
    scores = load_scores(sdir)
    if args.train:
        index = _train_index(load_source(args.train, args.mapping, "--train"), [{"id": t} for t in scores.train_ids])
    elif (sdir / _TRAIN_INDEX).is_file():
        index = read_json(sdir / _TRAIN_INDEX)
    else:
        index = [{"id": t} for t in scores.train_ids]
        print(f"warning: no {_TRAIN_INDEX} in {sdir} and no --train: domains and levels unknown", file=sys.stderr)
    if args.rows:
        missing = [r for r in args.rows if r not in scores.row_ids]
        if missing:
            raise CLIError(f"--rows: {missing} not among the score rows {scores.row_ids[:10]}")
        keep = [scores.row_ids.index(r) for r in args.rows]
        scores.example = scores.example[keep]
        if scores.token is not None:
            scores.token = scores.token[keep]
        scores.row_ids = list(args.rows)
    rep = build_report(scores, index, args.top_k)
    sys.stdout.write(format_report(rep, str(sdir)))
    if args.out:
        atomic_write_text(args.out, format_report(rep, str(sdir), markdown=True))
    if args.json:
        atomic_write_json(args.json, rep)
    if args.heatmap:
        from .report import save_html

        parts = _heatmap_items(scores, args, run, rep)
        save_html(args.heatmap, "\n".join(h for _, h in parts), title=f"token heat-maps: {sdir}")
        print(f"report: heat-maps of {len(parts)} rows -> {args.heatmap}", file=sys.stderr)
    return 0


# --------------------------------------------------------------------------- parser
class _Formatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    def _get_help_string(self, action):  # defaults are written into the config options' help already
        if (action.default in (None, False, argparse.SUPPRESS) or action.required
                or "(default:" in (action.help or "")):
            return action.help
        return super()._get_help_string(action)


def _add_common(p: argparse.ArgumentParser) -> None:
    from .presets import PRESETS
    from .sources import DATA_EXTRA

    ds = "" if _datasets_available() else f" (datasets sources need the 'datasets' package, not installed here: {DATA_EXTRA})"
    g = p.add_argument_group("model and data")
    # read before argparse (_with_profile), listed here so that the command's --help shows it
    g.add_argument("--profile", metavar="NAME",
                   help=f"a preset's model, data and precision options ({', '.join(sorted(PRESETS))}), "
                        "set first, so that options given on the command line override them")
    g.add_argument("--model", required=True, help="a from_pretrained folder or a hub id (e.g. Qwen/Qwen2.5-7B-Instruct)")
    g.add_argument("--tokenizer", help="tokenizer folder or hub id (default: the model's)")
    g.add_argument("--model-dtype", choices=_MODEL_DTYPES, default="float32", help="dtype the weights are loaded in")
    g.add_argument("--train", required=True, metavar="SOURCE",
                   help="training records: a JSONL file, a datasets folder (save_to_disk; PATH@SPLIT), a .parquet "
                        "or JSON-array file, or hf:NAME[:CONFIG][@SPLIT] (a hub id or local path)" + ds)
    g.add_argument("--mapping", metavar="JSON", help="field mapping of --train (see data/mappings/*.json)")
    g.add_argument("--max-length", type=int, default=1024,
                   help="longest sequence (chat-templated prompt + response) in tokens")
    g.add_argument("--on-too-long", choices=("skip", "error"), default="skip",
                   help="records longer than --max-length: skip them with a counted warning, or stop (never truncated)")
    g.add_argument("--system", help="system message put before every prompt in the chat template")
    g.add_argument("--allow-vocab-mismatch", action="store_true",
                   help="run even when the tokenizer's size does not fit the model's embedding")
    r = p.add_argument_group("run")
    r.add_argument("--out", required=True, help="output folder (re-running the same command resumes or reuses what is "
                                                 "there; results of another run there are refused)")
    r.add_argument("--overwrite", action="store_true",
                   help="replace results of another run (other model, data or config) found in --out")
    r.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    r.add_argument("--plan-only", action="store_true", help="print the memory plan and exit")
    r.add_argument("--memory-budget", metavar="BYTES",
                   help="memory to plan against, e.g. 80GiB (default: the CPU memory available now)")
    r.add_argument("--ignore-plan", action="store_true", help="run even when the plan does not fit the budget")
    r.add_argument("--no-progress", action="store_true", help="no progress bars (ranks other than 0 never show them)")
    from .distributed import ExecConfig

    add_config_options(p, ExecConfig, title="execution (ExecConfig: device, bf16, checkpointing, torchrun shards)",
                       note=" Under torchrun --nproc_per_node N each rank takes a shard; only rank 0 writes.")


def build_parser() -> argparse.ArgumentParser:
    from .factors import FactorConfig
    from .scores import ScoreConfig
    from .sources import DATA_EXTRA

    ds = "installed" if _datasets_available() else f"not installed: JSONL only ({DATA_EXTRA})"
    parser = argparse.ArgumentParser(
        prog=PROG, formatter_class=_Formatter,
        description="Influence of training examples, CoT segments and tokens on a causal LM's reasoning "
                    "(EK-FAC). Score convention: score = g_q^T (F + lambda I)^-1 g_i, positive = helpful.",
        epilog="example:\n"
               "  infra fit-factors --model MODEL --train train.jsonl --out runs/factors\n"
               "  infra score --model MODEL --factors runs/factors --queries q.jsonl --train train.jsonl \\\n"
               "              --aggregation mean --groups domain --token-scores --out runs/scores\n"
               "  infra report --scores runs/scores --heatmap runs/scores/heatmap.html\n"
               "  infra fit-factors --profile paper --train sft.jsonl --mapping map.json --out runs/paper/factors\n"
               "  torchrun --nproc_per_node 8 -m infra_lib fit-factors --profile paper ...   (one rank per GPU)\n"
               "--profile paper (after the command) sets the paper's defaults: Qwen/Qwen2.5-7B-Instruct, bfloat16 "
               "weights and autocast, gradient checkpointing, --max-length 4096; later options override them.\n"
               f"datasets package: {ds}. Each command's --help lists its options.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("fit-factors", formatter_class=_Formatter, help="fit curvature factors on training data",
                       description="Fit curvature factors (EK-FAC by default) of a model on training records; "
                                   "prints the memory plan first.")
    _add_common(p)
    add_config_options(p, FactorConfig)
    p.add_argument("--partition", metavar="K/N",
                   help="fit only the K-th of N contiguous layer blocks of the tracked modules (then merge-factors)")
    p.set_defaults(func=cmd_fit_factors)

    p = sub.add_parser("merge-factors", formatter_class=_Formatter, help="merge factors fit with --partition",
                       description="Merge factors fit on disjoint module partitions of the same model, data and "
                                   "config (fit-factors --partition K/N) into one factors folder.")
    p.add_argument("--parts", required=True, nargs="+", help="factors folders of the partitions, in layer order")
    p.add_argument("--out", required=True, help="folder of the merged factors")
    p.add_argument("--overwrite", action="store_true", help="replace results of another run found in --out")
    p.set_defaults(func=cmd_merge_factors)

    p = sub.add_parser("score", formatter_class=_Formatter, help="score training examples (and tokens) against queries",
                       description="Influence of every training example (and, if asked, token and segment) on each "
                                   "query row: per query, the mean of a group (--aggregation mean --groups domain), "
                                   "optionally through a rank-r query store (--rank).")
    _add_common(p)
    g = p.add_argument_group("queries and factors")
    g.add_argument("--factors", required=True, help="folder written by infra fit-factors")
    g.add_argument("--queries", required=True, nargs="+", metavar="SOURCE",
                   help="query records: JSONL files, datasets folders or files, and/or hf:NAME[:CONFIG][@SPLIT]")
    g.add_argument("--query-mapping", metavar="JSON", help="field mapping of --queries")
    g.add_argument("--groups", metavar="SPEC",
                   help="with --aggregation mean: domain (default), difficulty, domain-difficulty, or a JSON file "
                        "{name: [query ids]}")
    add_config_options(p, ScoreConfig, skip=("groups",),
                       note=" --aggregation per-query | mean (rows = --groups); rank-r: --rank R.")
    docs = field_docs(FactorConfig)
    g = p.add_argument_group("damping (overrides the factors' own)")
    g.add_argument("--damping", dest="cfg_damping", type=_none_or(float), default=argparse.SUPPRESS, metavar="FLOAT|none",
                   help=docs["damping"].replace("``", ""))
    g.add_argument("--damping-scale", dest="cfg_damping_scale", type=float, default=argparse.SUPPRESS, metavar="FLOAT",
                   help=docs["damping_scale"].replace("``", ""))
    p.set_defaults(func=cmd_score)

    p = sub.add_parser("report", formatter_class=_Formatter, help="top-k helpful/harmful examples and heat-maps",
                       description="Print (and write) the top-k helpful and harmful training examples of each query "
                                   "row, each row's mean score by training domain x difficulty, and optionally token "
                                   "heat-maps of the top helpful CoTs.")
    p.add_argument("--scores", required=True, help="folder written by infra score")
    p.add_argument("--top-k", type=int, default=5, help="examples listed per row and direction")
    p.add_argument("--rows", nargs="+", help="only these rows (query ids or group names)")
    p.add_argument("--out", help="also write the report as Markdown to this file")
    p.add_argument("--json", help="also write the report as JSON to this file")
    p.add_argument("--heatmap", metavar="HTML", help="write token heat-maps (needs --token-scores in the score run)")
    p.add_argument("--heatmap-k", type=int, default=3, help="top helpful examples drawn per row in the heat-map")
    p.add_argument("--train", metavar="SOURCE", help="training records (default: those of the score run)")
    p.add_argument("--mapping", metavar="JSON", help="field mapping of --train")
    p.add_argument("--tokenizer", help="tokenizer for the heat-map (default: the score run's)")
    p.add_argument("--max-length", type=int, default=1024, help="only used when the score run's is unknown")
    p.set_defaults(func=cmd_report)
    return parser


def _with_profile(argv: list[str], parser: argparse.ArgumentParser) -> list[str]:
    """``--profile NAME`` anywhere after the command: put the profile's options right after the
    command, so that options given on the command line (later) override them."""
    from .presets import scale_argv

    for i, a in enumerate(argv):
        if a == "--profile" or a.startswith("--profile="):
            name = a.partition("=")[2] if "=" in a else (argv[i + 1] if i + 1 < len(argv) else "")
            rest = argv[:i] + argv[i + (1 if "=" in a else 2):]
            if not rest or not name:
                parser.error("--profile needs a command before it and a name after it")
            try:
                return rest[:1] + scale_argv(rest[0], name) + rest[1:]
            except KeyError as exc:
                parser.error(str(exc.args[0]))
    return argv


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status (0 done, 1 input or plan error, 2 usage error,
    130 interrupted by Ctrl-C: one line on stderr, no traceback)."""
    from .checks import ArtifactError, InputError

    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    argv = _with_profile(argv, parser)
    args = parser.parse_args(argv)
    if args.command == "report" and args.top_k < 1:
        parser.error("--top-k must be >= 1")
    _stage("checking the inputs")
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        what, out = _STAGE
        after = (f"what was done is checkpointed in {out}: run the same command again to resume" if out is not None
                 else "nothing was written")
        print(f"{PROG} {args.command}: interrupted (Ctrl-C) while {what}; {after}", file=sys.stderr)
        return 130
    except CLIError as exc:
        print(f"{PROG} {args.command}: error: {exc}", file=sys.stderr)
        return 1
    except (FloatingPointError, MemoryError, InputError, ArtifactError) as exc:
        print(f"{PROG} {args.command}: error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
