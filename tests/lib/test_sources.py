"""Sources other than JSONL (infra_lib/sources.py): a dataset saved with ``datasets`` (a Dataset, a
DatasetDict and its split), a parquet file and a JSON-array file give exactly the records of the JSONL
path, through the CLI's source too; bad rows are named by row; the network is never touched.

Needs the ``datasets`` package (the ``data`` extra; ``make test`` installs it). About 10 s.
Run: ``pytest tests/lib/test_sources.py -q``.
"""
from __future__ import annotations

import importlib.machinery
import json
import socket
import sys
import types
from pathlib import Path

import pytest

from infra_lib import cli, sources
from infra_lib.records import RecordError, load_records
from infra_lib.sources import SourceError, load_source

datasets = pytest.importorskip("datasets", reason="the 'data' extra (datasets) is not installed")

ROOT = Path(__file__).resolve().parents[2]
SAMPLE = ROOT / "data" / "sample.jsonl"
MAPPINGS = ROOT / "data" / "mappings"
COLUMNS = ("id", "domain", "difficulty", "prompt", "response", "answer", "tests", "meta")


@pytest.fixture(autouse=True)
def offline(monkeypatch, tmp_path):
    """No connection may be opened, and the datasets cache lives in this test's folder."""
    def refuse(self, *a, **k):
        raise AssertionError(f"a local source opened a network connection: {a}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf-cache")


def _as_rows(records: list[dict]) -> list[dict]:
    """Records as a user would store them with datasets: every column in every row (null where absent),
    meta as a JSON string (Arrow cannot hold meta.segments' mixed [start, end, kind] lists)."""
    return [{c: (json.dumps(r[c]) if c == "meta" else r.get(c)) for c in COLUMNS} for r in records]


def test_saved_dataset_gives_the_jsonl_records(tmp_path):
    """The sample (math and code, given segments, nested meta) saved with save_to_disk, as a
    DatasetDict split, as parquet and as a JSON array: the same records as the JSONL file, in order."""
    expected = load_records(SAMPLE)
    assert {r["domain"] for r in expected} == {"math", "code"}
    ds = datasets.Dataset.from_list(_as_rows(expected))
    ds.save_to_disk(str(tmp_path / "one"))
    datasets.DatasetDict({"train": ds.select(range(4)), "test": ds}).save_to_disk(str(tmp_path / "two"))
    ds.to_parquet(str(tmp_path / "rows.parquet"))
    (tmp_path / "rows.json").write_text(json.dumps(_as_rows(expected)))
    for src in (tmp_path / "one", f"{tmp_path / 'two'}@test", f"hf:{tmp_path / 'two'}@test",
                tmp_path / "rows.parquet", tmp_path / "rows.json", f"hf:{tmp_path / 'rows.parquet'}"):
        assert load_source(src) == expected, src
    assert cli.load_source(str(tmp_path / "one"), None, "--train") == expected
    assert load_source(tmp_path / "two") == expected[:4]  # the train split by default


def test_mapped_dataset_matches_mapped_jsonl(tmp_path):
    """A user's MATH-style rows (string levels, no ids, answers in \\boxed{}) with the hendrycks_math
    mapping: the same records from a DatasetDict folder through hf:PATH@SPLIT as from JSONL, ids alike."""
    rows = [{"problem": f"Compute {i} + {i}.", "level": f"Level {1 + i % 5}", "type": "Algebra",
             "solution": f"Add them: $\\boxed{{{2 * i}}}$."} for i in range(6)]
    (tmp_path / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    datasets.DatasetDict({"test": datasets.Dataset.from_list(rows)}).save_to_disk(str(tmp_path / "math"))
    mapping = MAPPINGS / "hendrycks_math.json"
    expected = load_records(tmp_path / "rows.jsonl", mapping)
    got = cli.load_source(f"hf:{tmp_path / 'math'}@test", str(mapping), "--train")
    assert got == expected
    assert [r["id"] for r in got] == [f"math-{i}" for i in range(1, 7)] and got[3]["answer"] == "6"
    assert got[2]["difficulty"] == 3 and got[0]["meta"]["type"] == "Algebra"


def test_bad_rows_are_named_by_row(tmp_path):
    """A bad value, a duplicate id and a meta that is not JSON stop loading, naming the row (from 0)."""
    rows = _as_rows(load_records(SAMPLE)[:3])
    rows[1]["difficulty"] = 7
    datasets.Dataset.from_list(rows).save_to_disk(str(tmp_path / "bad"))
    with pytest.raises(RecordError, match=r"bad row 1: field 'difficulty': out of range"):
        load_source(tmp_path / "bad")
    rows[1]["difficulty"], rows[2]["id"] = 1, rows[0]["id"]
    datasets.Dataset.from_list(rows).to_parquet(str(tmp_path / "dup.parquet"))
    with pytest.raises(RecordError, match=r"dup.parquet row 2: field 'id': duplicate id .* also in row 0"):
        load_source(tmp_path / "dup.parquet")
    rows[2]["id"], rows[0]["meta"] = "fresh", "{not json"
    datasets.Dataset.from_list(rows).to_parquet(str(tmp_path / "meta.parquet"))
    with pytest.raises(cli.CLIError, match=r"--train: bad record: .*meta.parquet row 0: field 'meta': .*JSON"):
        cli.load_source(str(tmp_path / "meta.parquet"), None, "--train")


def test_source_errors(tmp_path):
    """Missing paths, a split the folder lacks or cannot have, an unnamed split of several, a missing
    mapping file: one clear line each."""
    ds = datasets.Dataset.from_list(_as_rows(load_records(SAMPLE)[:2]))
    ds.save_to_disk(str(tmp_path / "one"))
    datasets.DatasetDict({"a": ds, "b": ds}).save_to_disk(str(tmp_path / "two"))
    cases = [
        (tmp_path / "nope", "no such file or folder"),
        ("org/name", r"a hub id\? write it as hf:NAME"),
        (f"{tmp_path / 'one'}@test", "one Dataset, not a DatasetDict"),
        (tmp_path / "two", r"splits \['a', 'b'\]; name one"),
        (f"hf:{tmp_path / 'two'}@c", r"split 'c' not in this DatasetDict; it has \['a', 'b'\]"),
        ("hf:", "expected hf:NAME"),
    ]
    for src, message in cases:
        with pytest.raises(SourceError, match=message):
            load_source(src)
    with pytest.raises(SourceError, match="mapping file .* not found"):
        load_source(SAMPLE, tmp_path / "map.json")


def test_hub_id_goes_to_load_dataset(monkeypatch):
    """hf:NAME[:CONFIG][@SPLIT] that is no local path calls datasets.load_dataset(NAME, CONFIG, split=SPLIT)
    (a stand-in module: the hub is unreachable here); without datasets the error names the extra."""
    rows = [{"unique_id": f"u{i}", "problem": f"What is {i} + 1?", "solution": f"So it is {i + 1}.",
             "answer": str(i + 1), "level": 1 + i % 5, "subject": "Algebra"} for i in range(3)]
    calls = []
    fake = types.ModuleType("datasets")
    fake.__spec__ = importlib.machinery.ModuleSpec("datasets", None)
    fake.load_dataset = lambda name, config=None, split=None: calls.append((name, config, split)) or list(rows)
    monkeypatch.setitem(sys.modules, "datasets", fake)
    mapping = str(MAPPINGS / "math500.json")
    recs = cli.load_source("hf:HuggingFaceH4/MATH-500@test", mapping, "--train")
    assert [r["id"] for r in recs] == ["u0", "u1", "u2"] and recs[1]["difficulty"] == 2
    cli.load_source("hf:org/set:main", mapping, "--train")
    assert calls == [("HuggingFaceH4/MATH-500", None, "test"), ("org/set", "main", "train")]
    rows[1]["level"] = 7
    with pytest.raises(cli.CLIError, match=r"hf:x:main@train row 1: field 'difficulty'"):
        cli.load_source("hf:x:main@train", mapping, "--train")
    monkeypatch.setattr(sources, "datasets_available", lambda: False)
    with pytest.raises(cli.CLIError, match=r"needs the 'datasets' package: pip install 'infra_lib\[data\]'"):
        cli.load_source("hf:x", None, "--train")
    assert "pip install 'infra_lib[data]'" in cli.build_parser().format_help()
