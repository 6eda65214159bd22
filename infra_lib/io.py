"""Atomic artifact writes, config hashing, config JSON beside every artifact, and checks of what is read.

Every artifact of the pipeline is written to a temporary file in the destination folder and
moved into place with ``os.replace``, so a reader never sees a half-written file, and an
interrupted stage leaves either the old artifact or none.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import stat
import tempfile
import unicodedata
from pathlib import Path
from typing import Any, Mapping

__all__ = [
    "atomic_write_bytes",
    "atomic_write_text",
    "atomic_write_json",
    "save_tensors_atomic",
    "config_to_dict",
    "config_hash",
    "write_config",
    "read_json",
    "file_kind",
    "text_problem",
    "id_problem",
]


def _tmp_path(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    return Path(tmp)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (temp file in the same folder, fsync, rename)."""
    path = Path(path)
    tmp = _tmp_path(path)
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write UTF-8 ``text`` to ``path`` atomically."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> Path:
    """Write ``obj`` as pretty, key-sorted JSON to ``path`` atomically."""
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=_jsonable) + "\n")


def save_tensors_atomic(path: str | os.PathLike, tensors: Mapping[str, Any], metadata: Mapping[str, str] | None = None) -> Path:
    """Save a dict of tensors as safetensors atomically (contiguous copies are made as needed)."""
    from safetensors.torch import save_file

    path = Path(path)
    tmp = _tmp_path(path)
    try:
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp), metadata=dict(metadata or {}))
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def _jsonable(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return config_to_dict(obj)
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, (set, frozenset)):
        return sorted(obj)
    if hasattr(obj, "tolist"):
        return obj.tolist()
    raise TypeError(f"cannot write {type(obj).__name__} as JSON")


def config_to_dict(cfg: Any) -> dict:
    """A dataclass (nested dataclasses, tuples, paths included) as a plain JSON-able dict."""
    if not (dataclasses.is_dataclass(cfg) and not isinstance(cfg, type)):
        raise TypeError(f"expected a dataclass instance, got {type(cfg).__name__}")
    out = {}
    for f in dataclasses.fields(cfg):
        v = getattr(cfg, f.name)
        if dataclasses.is_dataclass(v) and not isinstance(v, type):
            v = config_to_dict(v)
        elif isinstance(v, tuple):
            v = [config_to_dict(x) if dataclasses.is_dataclass(x) else x for x in v]
        elif isinstance(v, Path):
            v = str(v)
        out[f.name] = v
    return out


def config_hash(*parts: Any, length: int = 12) -> str:
    """A short stable hash of configs (dataclasses or JSON-able values), for cache keys."""
    blob = json.dumps(
        [config_to_dict(p) if dataclasses.is_dataclass(p) and not isinstance(p, type) else p for p in parts],
        sort_keys=True,
        default=_jsonable,
    )
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:length]


def write_config(folder: str | os.PathLike, cfg: Any, name: str = "config.json", **extra: Any) -> Path:
    """Write ``cfg`` (a dataclass) as JSON beside an artifact, with its hash and any extra fields."""
    payload = {"config": config_to_dict(cfg), "config_hash": config_hash(cfg), **extra}
    return atomic_write_json(Path(folder) / name, payload)


def read_json(path: str | os.PathLike) -> Any:
    """Read a JSON file, naming the file in the error if it is malformed."""
    path = Path(path)
    kind = file_kind(path)
    if kind is not None and kind != "missing":  # missing: FileNotFoundError below, as open() says
        raise ValueError(f"{path}: is {kind}, not a regular file")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: malformed JSON at line {exc.lineno}: {exc.msg}") from exc
    except UnicodeDecodeError as exc:
        raise ValueError(f"{path}: not valid UTF-8 (byte 0x{exc.object[exc.start]:02x} at offset {exc.start})") from None
    except RecursionError:
        raise ValueError(f"{path}: JSON nested too deeply to read (about a thousand levels or more)") from None
    except ValueError as exc:  # e.g. an integer past Python's digit limit
        raise ValueError(f"{path}: {exc}") from None


_KINDS = ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISCHR, "a character device"),
          (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))


def file_kind(path: str | os.PathLike) -> str | None:
    """None when ``path`` is a regular file (links followed); else what it is, for a message:
    ``"missing"``, ``"a folder"``, ``"a FIFO (named pipe)"``, ``"a character device"``, ``"a block
    device"``, ``"a socket"``, ``"a broken link"`` or ``"unreadable (<reason>)"``. Reading a FIFO or
    a device would block or never end, so readers ask first."""
    try:
        mode = os.stat(path).st_mode
    except (FileNotFoundError, NotADirectoryError):
        return "a broken link" if os.path.islink(path) else "missing"
    except OSError as exc:
        return f"unreadable ({exc.strerror or type(exc).__name__})"
    if stat.S_ISREG(mode):
        return None
    return next((name for test, name in _KINDS if test(mode)), "not a regular file")


# Characters that draw nothing (or look like a space) but make a different string: format
# characters (zero-width space and joiners, bidi controls), fillers and variation selectors.
_INVISIBLE = set("\u034f\u115f\u1160\u17b4\u17b5\u3164\uffa0") | {chr(c) for c in range(0xFE00, 0xFE10)}


def text_problem(text: str) -> str | None:
    """Why ``text`` is not valid Unicode (a lone surrogate, e.g. from a JSON ``"\\ud800"``), or None."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        return (f"holds a lone surrogate U+{ord(text[exc.start]):04X} at character {exc.start + 1}, "
                f"which is not valid Unicode (a broken escape or a split character?)")
    return None


def id_problem(rid: str) -> str | None:
    """Why ``rid`` could be mistaken for another id, or None: it changes under NFC normalisation
    (``"e\\u0301"`` vs ``"\\u00e9"``) or under stripping, or holds an invisible character
    (zero-width, bidi, control, a space other than U+0020). Messages show the id with ``ascii()``,
    so that the difference is visible."""
    bad = text_problem(rid)
    if bad:
        return bad
    if rid != rid.strip():
        return f"{ascii(rid)} has leading or trailing whitespace; ids must look like what they are"
    if unicodedata.normalize("NFC", rid) != rid:
        return (f"{ascii(rid)} is not in Unicode NFC form ({ascii(unicodedata.normalize('NFC', rid))} looks the same); "
                f"normalise ids with unicodedata.normalize('NFC', id)")
    for k, ch in enumerate(rid):
        if ch in _INVISIBLE or (unicodedata.category(ch)[0] in "CZ" and ch != " "):
            return (f"{ascii(rid)} holds the invisible or look-alike character U+{ord(ch):04X} "
                    f"({unicodedata.name(ch, 'unnamed')}) at character {k + 1}")
    return None
