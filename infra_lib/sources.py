"""Where records come from: JSONL files, ``datasets`` folders and files, hub ids, through one call.

:func:`load_source` reads one *source* into validated records (the schema of
:mod:`infra_lib.records`), with an optional field mapping (``data/mappings/*.json``)::

    train.jsonl                      our JSONL reader (errors name file:line and field)
    data/my_set        data/my_set@test
                                     a folder written by ``Dataset.save_to_disk`` or
                                     ``DatasetDict.save_to_disk`` (then the split, default train),
                                     or any folder of data files ``datasets.load_dataset`` reads
    rows.parquet       rows.json     a parquet file; a JSON file holding an array of rows
    hf:NAME[:CONFIG][@SPLIT]         ``datasets.load_dataset(NAME, CONFIG, split=SPLIT)``: a hub id
                                     (from the local cache under ``HF_HUB_OFFLINE=1``) or a local path

Everything but JSONL goes through the ``datasets`` package (``pip install 'infra_lib[data]'``); local
sources never touch the network. Every row of a dataset goes through the same mapping and validation
as a JSONL line, and errors name it as ``SOURCE row N`` (N counts from 0). Arrow stores a missing
field as null, so a null column of a row counts as absent (a math row's ``tests``, a code row's
``answer``); and since Arrow cannot hold ``meta.segments``' mixed ``[start, end, kind]`` lists, a
``meta`` column may be a JSON string, which is decoded.
"""
from __future__ import annotations

import importlib.util
import json
import os
import re
import tempfile
from pathlib import Path
from typing import Any, Iterable, Mapping

from .records import RecordError, load_mapping, load_records

__all__ = ["SourceError", "DATA_EXTRA", "datasets_available", "parse_hf", "load_source", "records_from_rows"]

DATA_EXTRA = "pip install 'infra_lib[data]'"
"""How to get the ``datasets`` package at the version this project pins."""

_FILE_BUILDERS = {".parquet": "parquet"}  # suffix -> datasets' packaged builder (.json: see _json_builder)


class SourceError(ValueError):
    """A source that cannot be read at all (missing, unknown kind, ``datasets`` absent or failing);
    bad records raise :class:`~infra_lib.records.RecordError` instead."""


def datasets_available() -> bool:
    """Whether the ``datasets`` package can be imported (without importing it: it is slow)."""
    return importlib.util.find_spec("datasets") is not None


def parse_hf(src: str) -> tuple[str, str | None, str | None]:
    """``hf:NAME[:CONFIG][@SPLIT]`` -> ``(name, config, split)``; config and split None when not given."""
    spec = src[3:] if src.startswith("hf:") else src
    spec, _, split = spec.partition("@")
    name, _, config = spec.partition(":")
    if not name:
        raise SourceError(f"{src!r}: expected hf:NAME[:CONFIG][@SPLIT], e.g. hf:HuggingFaceH4/MATH-500@test")
    return name, config or None, split or None


def load_source(src: str | os.PathLike, mapping: Mapping | str | os.PathLike | None = None) -> list[dict]:
    """Validated records from one source (see the module docstring for the kinds).

    Args:
        src: a JSONL file, a parquet or JSON-array file, a ``datasets`` folder (``PATH[@SPLIT]``),
            or ``hf:NAME[:CONFIG][@SPLIT]``.
        mapping: optional field mapping (a dict or a JSON file, see
            :func:`~infra_lib.records.load_mapping`), applied to every row alike.
    Returns:
        The records, in source order; ids made by a mapping's ``id_prefix`` count rows from 1,
        as JSONL lines do, so the same rows give the same records from every kind of source.
    Raises:
        SourceError: the source or the mapping file is missing or unreadable, or needs ``datasets``.
        RecordError: the first bad record, naming ``file:line`` or ``SOURCE row N`` and the field.
    """
    src = str(src)
    if isinstance(mapping, (str, os.PathLike)) and not Path(mapping).is_file():
        raise SourceError(f"mapping file {mapping} not found (see data/mappings/ for examples)")
    if src.startswith("hf:"):
        name, config, split = parse_hf(src)
        if Path(name).exists():
            return records_from_rows(_local_rows(src, Path(name), config, split), mapping, src)
        return records_from_rows(_hub_rows(src, name, config, split or "train"), mapping, src)
    path, split = Path(src), None
    if not path.exists() and "@" in src and Path(src.rpartition("@")[0]).is_dir():
        head, _, split = src.rpartition("@")
        path = Path(head)
    if path.is_dir():
        return records_from_rows(_local_rows(src, path, None, split), mapping, src)
    if not path.is_file():
        hint = " (a hub id? write it as hf:NAME[:CONFIG][@SPLIT])" if "/" in src and not src.startswith((".", "/")) else ""
        raise SourceError(f"{src}: no such file or folder{hint}")
    builder = _FILE_BUILDERS.get(path.suffix.lower()) or _json_builder(path)
    if builder is None:
        try:
            return load_records(path, mapping)
        except RecordError:
            raise
        except ValueError as exc:  # a malformed mapping
            raise SourceError(str(exc)) from None
    return records_from_rows(_file_rows(src, builder, path), mapping, src)


def records_from_rows(rows: Iterable[Mapping[str, Any]], mapping: Mapping | str | os.PathLike | None = None,
                      source: str = "rows") -> list[dict]:
    """Validated records from rows (dicts, e.g. a ``datasets.Dataset``), as if each were a JSONL line.

    Null values count as absent; a ``meta`` column (or the column the mapping reads ``meta`` from)
    holding a string is decoded as JSON. Errors name ``{source} row N`` (N from 0).
    """
    try:
        spec = load_mapping(mapping)
    except ValueError as exc:
        raise SourceError(str(exc)) from None
    meta_col = spec["fields"].get("meta", "meta") if spec else "meta"
    with tempfile.TemporaryDirectory(prefix="infra-rows-") as tmp:
        path = Path(tmp) / "rows.jsonl"
        with open(path, "w", encoding="utf-8") as fh:
            for i, row in enumerate(rows):
                fh.write(json.dumps(_plain_row(row, meta_col, f"{source} row {i}"), ensure_ascii=False,
                                    default=str) + "\n")
        try:
            return load_records(path, spec)
        except RecordError as exc:
            raise _as_row_error(exc, path, source) from None


def _plain_row(row: Mapping[str, Any], meta_col: str, where: str) -> dict:
    out = {k: v for k, v in dict(row).items() if v is not None}
    if isinstance(out.get(meta_col), str):
        try:
            out[meta_col] = json.loads(out[meta_col])
        except json.JSONDecodeError as exc:
            raise RecordError(where, "meta", f"a string meta must be JSON: {exc.msg} (column {exc.colno})") from None
    return out


def _as_row_error(exc: RecordError, path: Path, source: str) -> RecordError:
    """The temporary file's ``line`` (from 1) becomes the source's ``row`` (from 0)."""
    line = exc.where.rpartition(":")[2] if exc.where.startswith(str(path)) else ""
    if not line.isdigit():
        return RecordError(source, exc.field, "no rows" if "no records" in exc.problem else exc.problem)
    problem = re.sub(r"also on line (\d+)", lambda m: f"also in row {int(m.group(1)) - 1}", exc.problem)
    return RecordError(f"{source} row {int(line) - 1}", exc.field, problem)


def _json_builder(path: Path) -> str | None:
    """``json`` for a .json file holding an array of rows; None for JSON lines (our reader, which
    names file:line)."""
    if path.suffix.lower() != ".json":
        return None
    with open(path, "rb") as fh:
        head = fh.read(4096).lstrip(b"\xef\xbb\xbf \t\r\n")
    return "json" if head.startswith(b"[") else None


def _datasets(src: str):
    if not datasets_available():
        raise SourceError(f"{src}: reading it needs the 'datasets' package: {DATA_EXTRA} "
                          f"(or export the rows to JSONL and pass that file)")
    import datasets

    return datasets


def _failed(src: str, call: str, exc: Exception) -> SourceError:
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return SourceError(f"{src}: {call} failed: {type(exc).__name__}: {first}")


def _hub_rows(src: str, name: str, config: str | None, split: str):
    ds = _datasets(src)
    try:
        return ds.load_dataset(name, config, split=split)
    except Exception as exc:  # the hub, the cache or offline mode said no: say which source
        hint = " (offline? HF_HUB_OFFLINE=1 reads the local cache)" if "connect" in str(exc).lower() else ""
        raise SourceError(str(_failed(src, "datasets.load_dataset", exc)) + hint) from None


def _file_rows(src: str, builder: str, path: Path):
    ds = _datasets(src)
    try:
        return ds.load_dataset(builder, data_files=str(path), split="train")
    except Exception as exc:
        raise _failed(src, f"datasets.load_dataset({builder!r})", exc) from None


def _local_rows(src: str, path: Path, config: str | None, split: str | None):
    """Rows of a local folder: ``save_to_disk`` output (a Dataset, or a DatasetDict and a split), or a
    folder of data files; a file given after ``hf:`` goes to its builder."""
    ds = _datasets(src)
    if path.is_file():
        builder = _FILE_BUILDERS.get(path.suffix.lower()) or ("json" if path.suffix.lower() in (".json", ".jsonl") else None)
        if builder is None:
            raise SourceError(f"{src}: unknown kind of file {path.suffix!r}; expected .jsonl, .json or .parquet")
        return _file_rows(src, builder, path)
    if (path / "dataset_dict.json").is_file() or (path / "state.json").is_file():
        try:
            data = ds.load_from_disk(str(path))
        except Exception as exc:
            raise _failed(src, "datasets.load_from_disk", exc) from None
        if isinstance(data, ds.DatasetDict):
            names = list(data)
            pick = split or ("train" if "train" in names else names[0] if len(names) == 1 else None)
            if pick not in names:
                raise SourceError(f"{src}: split {pick!r} not in this DatasetDict; it has {names} "
                                  f"(write PATH@SPLIT or hf:PATH@SPLIT)" if pick else
                                  f"{src}: this DatasetDict has splits {names}; name one: PATH@SPLIT")
            return data[pick]
        if split is not None:
            raise SourceError(f"{src}: this folder holds one Dataset, not a DatasetDict with splits; drop '@{split}'")
        return data
    try:
        return ds.load_dataset(str(path), config, split=split or "train")
    except Exception as exc:
        raise _failed(src, "datasets.load_dataset", exc) from None
