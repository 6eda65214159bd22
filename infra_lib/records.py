"""The record schema: validation, JSONL loading with field mappings, atomic writes.

One JSONL line per example::

    {"id": "math-3-train-00042", "domain": "math" | "code", "difficulty": 1..5,
     "prompt": "...", "response": "<CoT> ... final answer",
     "answer": "42"                  (math only)
     "tests": ["assert f(2) == 5"]   (code only),
     "meta": {"segments": [[start, end, "step" | "exploratory" | "answer"], ...], ...}}

``meta.segments`` are half-open character offsets into ``response`` (see
:mod:`infra_lib.segments`). Every bad record stops loading with a :class:`RecordError` that names
the file, the line and the field, so a user can fix their data rather than debug a training run.
"""
from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any, Iterable, Mapping

from .io import atomic_write_text, file_kind, id_problem, read_json, text_problem
from .segments import answer_in_line, check_segments, last_boxed, segment_response

__all__ = [
    "DOMAINS",
    "LEVELS",
    "RECORD_FIELDS",
    "RecordError",
    "validate_record",
    "load_records",
    "write_records",
    "load_mapping",
    "apply_mapping",
    "id_problem",
    "text_problem",
]

DOMAINS: tuple[str, ...] = ("math", "code")
LEVELS: tuple[int, ...] = (1, 2, 3, 4, 5)
RECORD_FIELDS: tuple[str, ...] = ("id", "domain", "difficulty", "prompt", "response", "answer", "tests", "meta")
_REQUIRED = ("id", "domain", "difficulty", "prompt", "response")
_MAPPING_KEYS = ("fields", "defaults", "values", "keep", "derive", "id_prefix", "dataset", "description")
_DERIVERS = ("boxed", "answer_line")
_MAX_DIGITS = 4300  # Python's own limit on int <-> decimal text (sys.get_int_max_str_digits)


class RecordError(ValueError):
    """A malformed record: ``where`` (``file:line``), the ``field`` at fault (or None), ``problem``."""

    def __init__(self, where: str, field: str | None, problem: str):
        self.where, self.field, self.problem = where, field, problem
        super().__init__(f"{where}: field '{field}': {problem}" if field else f"{where}: {problem}")


def _typename(v: Any) -> str:
    return "null" if v is None else type(v).__name__


def _short(v: Any, n: int = 60) -> str:
    """``repr(v)`` cut to about ``n`` characters (a 4,000-digit number is not a message)."""
    text = repr(v) if not isinstance(v, int) or abs(v) < 10**n else f"a {len(str(abs(v)))}-digit integer"
    return text if len(text) <= n else text[: n - 3] + "..."


def validate_record(rec: Any, where: str) -> None:
    """Check one record against the schema; raise :class:`RecordError` at the first problem.

    ``where`` says where the record comes from (e.g. ``"train.jsonl:12"``) and starts the message.
    Checks, in order: object, required fields and their types, domain, difficulty an integer in
    1..5 (``True`` and ``3.0`` are rejected), non-empty prompt and response, ``answer`` (math) or
    ``tests`` (code) and not the other, ``meta`` an object, ``meta.segments`` in order,
    non-empty, non-overlapping, covering the response, with known kinds; no unknown fields.
    """
    if not isinstance(rec, dict):
        raise RecordError(where, None, f"a record must be a JSON object, got {_typename(rec)}")
    for name in _REQUIRED:
        if name not in rec:
            raise RecordError(where, name, "missing")
    rid = rec["id"]
    if not isinstance(rid, str) or not rid.strip():
        raise RecordError(where, "id", f"must be a non-empty string, got {_short(rid)}")
    problem = id_problem(rid)
    if problem:
        raise RecordError(where, "id", problem)
    domain = rec["domain"]
    if domain not in DOMAINS:
        raise RecordError(where, "domain", f"unknown domain {_short(domain)}; expected one of {list(DOMAINS)}")
    level = rec["difficulty"]
    if isinstance(level, bool) or not isinstance(level, int):
        raise RecordError(where, "difficulty", f"must be an integer 1..5, got {_short(level)} ({_typename(level)})")
    if level not in LEVELS:
        raise RecordError(where, "difficulty", f"out of range: got {_short(level)}, expected 1..5")
    for name in ("prompt", "response"):
        v = rec[name]
        if not isinstance(v, str):
            raise RecordError(where, name, f"must be a string, got {_typename(v)}")
        if not v.strip():
            raise RecordError(where, name, "is empty")
        if text_problem(v):
            raise RecordError(where, name, text_problem(v))
    if domain == "math":
        if "tests" in rec:
            raise RecordError(where, "tests", "only code records have tests (math records have 'answer')")
        if "answer" not in rec:
            raise RecordError(where, "answer", "missing (math records need a checkable answer)")
        ans = rec["answer"]
        if not isinstance(ans, str) or not ans.strip():
            raise RecordError(where, "answer", f"must be a non-empty string, got {_short(ans)}")
        if text_problem(ans):
            raise RecordError(where, "answer", text_problem(ans))
    else:
        if "answer" in rec:
            raise RecordError(where, "answer", "only math records have an answer (code records have 'tests')")
        if "tests" not in rec:
            raise RecordError(where, "tests", "missing (code records need a list of assert statements)")
        tests = rec["tests"]
        if not isinstance(tests, list) or not tests:
            raise RecordError(where, "tests", f"must be a non-empty list of strings, got {tests!r}"[:200])
        for i, t in enumerate(tests):
            if not isinstance(t, str) or not t.strip():
                raise RecordError(where, "tests", f"item {i} must be a non-empty string, got {_short(t)}")
            if text_problem(t):
                raise RecordError(where, "tests", f"item {i} {text_problem(t)}")
    if "meta" not in rec:
        raise RecordError(where, "meta", "missing (it holds meta.segments)")
    meta = rec["meta"]
    if not isinstance(meta, dict):
        raise RecordError(where, "meta", f"must be an object, got {_typename(meta)}")
    if "segments" not in meta:
        raise RecordError(where, "meta.segments", "missing")
    problem = check_segments(meta["segments"], len(rec["response"]))
    if problem:
        raise RecordError(where, "meta.segments", problem)
    unknown = [k for k in rec if k not in RECORD_FIELDS]
    if unknown:
        raise RecordError(
            where, unknown[0], f"unknown field; a record has only {list(RECORD_FIELDS)} (a mapping's 'keep' moves extra fields into meta)"
        )


# ----------------------------------------------------------------------------------- mappings


def load_mapping(mapping: Mapping | str | os.PathLike | None) -> dict | None:
    """Normalise a field mapping: a dict, or the path of a JSON file (see ``data/mappings/``).

    Full form (every key optional)::

        {"fields":   {"prompt": "problem", "response": "solution", "difficulty": "level"},
         "defaults": {"domain": "math"},
         "values":   {"difficulty": {"Level 1": 1, "Level 2": 2}},
         "keep":     ["subject"],
         "derive":   {"answer": "boxed"},
         "id_prefix": "math500-"}

    ``fields`` maps our field to the user's; ``defaults`` fills fields the data lacks;
    ``values`` translates a field's values (looked up by their string form); ``keep`` copies
    user fields into ``meta``; ``derive`` computes a missing ``answer`` from the response
    (``"boxed"``: the last ``\\boxed{...}``; ``"answer_line"``: the last "The answer is ..." line);
    ``id_prefix`` makes ids ``<prefix><line>`` for data without ids. A flat dict of strings
    (``{"prompt": "question"}``) is short for ``{"fields": ...}``.
    """
    if mapping is None:
        return None
    if isinstance(mapping, (str, os.PathLike)):
        source = str(mapping)
        mapping = read_json(mapping)
    else:
        source = "mapping"
    if not isinstance(mapping, Mapping):
        raise ValueError(f"{source}: a mapping must be a JSON object")
    if mapping and not any(k in _MAPPING_KEYS for k in mapping) and all(isinstance(v, str) for v in mapping.values()):
        mapping = {"fields": dict(mapping)}
    bad = [k for k in mapping if k not in _MAPPING_KEYS]
    if bad:
        raise ValueError(f"{source}: unknown key {bad[0]!r}; expected some of {list(_MAPPING_KEYS)}")
    out = {
        "fields": dict(mapping.get("fields", {})),
        "defaults": dict(mapping.get("defaults", {})),
        "values": {k: dict(v) for k, v in mapping.get("values", {}).items()},
        "keep": list(mapping.get("keep", [])),
        "derive": dict(mapping.get("derive", {})),
        "id_prefix": mapping.get("id_prefix"),
    }
    for key in ("fields", "defaults", "values"):
        for name in out[key]:
            if name not in RECORD_FIELDS:
                raise ValueError(f"{source}: {key}: {name!r} is not a record field {list(RECORD_FIELDS)}")
    for name, how in out["derive"].items():
        if name != "answer" or how not in _DERIVERS:
            raise ValueError(f"{source}: derive supports only 'answer' from one of {list(_DERIVERS)}, got {name!r}: {how!r}")
    return out


def apply_mapping(src: dict, mapping: dict, line: int) -> dict:
    """Rename, default, translate, derive and keep the fields of one user record (see load_mapping)."""
    fields, values = mapping["fields"], mapping["values"]
    rec: dict[str, Any] = {}
    for name in RECORD_FIELDS:
        theirs = fields.get(name, name)
        if theirs in src:
            v = src[theirs]
            if name in values and str(v) in values[name]:
                v = values[name][str(v)]
            rec[name] = v
    for name, v in mapping["defaults"].items():
        rec.setdefault(name, v)
    if "id" not in rec and mapping["id_prefix"] is not None:
        rec["id"] = f"{mapping['id_prefix']}{line}"
    how = mapping["derive"].get("answer")
    if how and "answer" not in rec and rec.get("domain") == "math" and isinstance(rec.get("response"), str):
        found = last_boxed(rec["response"]) if how == "boxed" else _last_answer_line(rec["response"])
        if found is not None:
            rec["answer"] = found
    # User data often has integer ids or numeric answers; the schema stores strings.
    if isinstance(rec.get("id"), int) and not isinstance(rec["id"], bool):
        rec["id"] = str(rec["id"])
    if isinstance(rec.get("answer"), (int, float)) and not isinstance(rec["answer"], bool):
        rec["answer"] = str(rec["answer"])
    if mapping["keep"]:
        meta = rec.setdefault("meta", {})
        if isinstance(meta, dict):
            for k in mapping["keep"]:
                if k in src:
                    meta.setdefault(k, src[k])
    return rec


def _last_answer_line(text: str) -> str | None:
    found = None
    for line in text.splitlines():
        found = answer_in_line(line) or found
    return found


# ----------------------------------------------------------------------------------- load / write


class _DuplicateKey(Exception):
    def __init__(self, key: str):
        self.key = key


class _HugeNumber(Exception):
    def __init__(self, digits: str):
        self.digits = digits


def _parse_int(text: str) -> int:
    """``json.loads`` hook: an integer, or :class:`_HugeNumber` past Python's digit limit (whose
    own ValueError would name neither file, line nor field)."""
    if len(text) > _MAX_DIGITS:
        raise _HugeNumber(text)
    return int(text)


def _huge_number_error(where: str, line: str, digits: str) -> RecordError:
    """The field (when the number is a field's value) and column of a number too long to read."""
    hit = re.search(r'"((?:[^"\\]|\\.)*)"\s*:\s*' + re.escape(digits), line)
    column = (hit.end() - len(digits) if hit else line.find(digits)) + 1
    field = None
    if hit:
        try:
            field = json.loads(f'"{hit.group(1)}"')
        except ValueError:
            pass
    return RecordError(where, field, f"a number of {len(digits.lstrip('-'))} digits (column {column}); "
                                     f"no field holds more than {_MAX_DIGITS}")


def _unique_keys(pairs: list) -> dict:
    """``json.loads`` hook: an object, refusing a key given twice (plain JSON keeps the last one)."""
    out: dict = {}
    for k, v in pairs:
        if k in out:
            raise _DuplicateKey(k)
        out[k] = v
    return out


def _fill_segments(rec: Any) -> None:
    """Give a record without ``meta.segments`` the heuristic ones (marked ``segments_derived``)."""
    if not isinstance(rec, dict) or not isinstance(rec.get("response"), str) or not rec["response"].strip():
        return
    meta = rec.setdefault("meta", {})
    if isinstance(meta, dict) and "segments" not in meta:
        meta["segments"] = segment_response(rec["response"])
        meta["segments_derived"] = True


def load_records(path: str | os.PathLike, mapping: Mapping | str | os.PathLike | None = None) -> list[dict]:
    """Read a JSONL file of records, validating every one; stop at the first bad one.

    Args:
        path: a JSONL file, UTF-8, one JSON object per line (blank lines are skipped).
        mapping: optional field mapping for a user's data (a dict or a JSON file, see
            :func:`load_mapping`); without one, records must use our field names exactly.
    Returns:
        The records, in file order. A record without ``meta.segments`` gets
        :func:`~infra_lib.segments.segment_response`'s and ``meta.segments_derived = True``.
    Raises:
        RecordError: naming ``file:line`` and the field: bad JSON, JSON nested too deeply, a
            number too long to read, non-UTF-8 bytes, a lone surrogate in a text field, an empty
            file, a key given twice in one object, a missing field, a wrong type, an unknown
            domain, a difficulty out of range or not an integer, an empty response, an id that
            could be mistaken for another (see :func:`id_problem`), a duplicate id (naming both
            lines), bad segments; a path that is not a regular file (a folder, a FIFO, a device).
    """
    path = Path(path)
    kind = file_kind(path)
    if kind is not None and kind != "missing":  # missing: read_bytes raises FileNotFoundError
        raise RecordError(str(path), None, f"is {kind}, not a regular file: records are read from a JSONL file")
    spec = load_mapping(mapping)
    data = path.read_bytes()
    records: list[dict] = []
    first_line: dict[str, int] = {}
    for lineno, raw in enumerate(data.split(b"\n"), start=1):
        where = f"{path}:{lineno}"
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            bad = raw[exc.start]
            raise RecordError(where, None, f"not valid UTF-8 (byte 0x{bad:02x} at column {exc.start + 1})") from None
        if lineno == 1:
            text = text.removeprefix("\ufeff")
        if not text.strip():
            continue
        try:
            src = json.loads(text, object_pairs_hook=_unique_keys, parse_int=_parse_int)
        except json.JSONDecodeError as exc:
            raise RecordError(where, None, f"bad JSON: {exc.msg} (column {exc.colno})") from None
        except RecursionError:
            raise RecordError(where, None, "JSON nested too deeply to read (about a thousand levels or more); "
                                           "a record is an object of plain fields") from None
        except _HugeNumber as exc:
            raise _huge_number_error(where, text, exc.digits) from None
        except _DuplicateKey as exc:
            raise RecordError(where, exc.key, "appears twice in one object (JSON would silently keep the last)") from None
        rec = apply_mapping(src, spec, lineno) if spec is not None and isinstance(src, dict) else src
        _fill_segments(rec)
        try:
            validate_record(rec, where)
        except RecordError as exc:
            if spec is not None and exc.field in spec["fields"]:
                raise RecordError(where, exc.field, f"{exc.problem} (mapped from '{spec['fields'][exc.field]}')") from None
            raise
        rid = rec["id"]
        if rid in first_line:
            raise RecordError(where, "id", f"duplicate id {rid!r}: also on line {first_line[rid]}")
        first_line[rid] = lineno
        records.append(rec)
    if not records:
        raise RecordError(str(path), None, "empty file: no records")
    return records


def write_records(path: str | os.PathLike, records: Iterable[dict]) -> Path:
    """Validate ``records`` and write them as JSONL atomically; return the path.

    Nothing is written if any record is bad (the :class:`RecordError` names ``file:line`` as the
    line the record would have had). Output is UTF-8, one compact JSON object per line, keys in
    the records' own order, so the same records always give the same bytes.
    """
    path = Path(path)
    lines: list[str] = []
    first_line: dict[str, int] = {}
    for lineno, rec in enumerate(records, start=1):
        where = f"{path}:{lineno}"
        validate_record(rec, where)
        if rec["id"] in first_line:
            raise RecordError(where, "id", f"duplicate id {rec['id']!r}: also on line {first_line[rec['id']]}")
        first_line[rec["id"]] = lineno
        lines.append(json.dumps(rec, ensure_ascii=False, allow_nan=False))
    if not lines:
        raise RecordError(str(path), None, "no records to write (an empty file would not load)")
    return atomic_write_text(path, "\n".join(lines) + "\n")
