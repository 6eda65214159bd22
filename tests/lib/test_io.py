"""Atomic artifact writes (infra_lib/io.py): a write that fails or is killed half-way leaves the old
file (or none) and no temporary file a reader could take for an artifact; paths that are not regular
files and hostile JSON are named, never read forever or answered with a traceback.

Run: ``python -m pytest tests/lib/test_io.py -q`` (a few seconds: one killed writer process).
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from infra_lib import io
from infra_lib.io import file_kind, read_json

ROOT = Path(__file__).resolve().parents[2]


def test_failed_write_keeps_the_old_file_and_no_temporary(tmp_path, monkeypatch):
    target = tmp_path / "a.json"
    io.atomic_write_json(target, {"v": 1})

    def boom(*_a, **_k):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError, match="disk full"):
        io.atomic_write_json(target, {"v": 2})
    with pytest.raises(OSError):
        io.save_tensors_atomic(tmp_path / "t.safetensors", {"x": torch.ones(3)})
    monkeypatch.undo()
    assert io.read_json(target) == {"v": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json"]


def test_malformed_json_is_named(tmp_path):
    p = tmp_path / "cut.json"
    p.write_text('{"a": [1, 2')
    with pytest.raises(ValueError, match=rf"{p}: malformed JSON at line 1"):
        io.read_json(p)


_WRITER = """
import sys
from infra_lib.io import atomic_write_bytes
target = sys.argv[1]
atomic_write_bytes(target, b"old" * 10)
print("ready", flush=True)
sys.stdin.readline()
while True:  # rewrite a large file until killed
    atomic_write_bytes(target, b"N" * (64 << 20))
"""


def test_killed_writer_never_leaves_a_half_written_file(tmp_path):
    """SIGKILL while a 64 MiB rewrite is under way (its temporary file seen growing): the target holds
    a whole old or whole new content, never a prefix."""
    target = tmp_path / "big.bin"
    proc = subprocess.Popen([sys.executable, "-c", _WRITER, str(target)], env={**os.environ, "PYTHONPATH": str(ROOT)},
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "ready"
        proc.stdin.write("go\n")
        proc.stdin.flush()
        deadline = time.monotonic() + 60
        while True:  # kill only while a temporary file exists and has some bytes: mid-write
            tmps = list(tmp_path.glob(".big.bin.*.tmp"))
            if tmps and any(t.exists() and 0 < t.stat().st_size < (64 << 20) for t in tmps):
                break
            assert time.monotonic() < deadline, "the writer never started a rewrite"
            time.sleep(0.001)
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    data = target.read_bytes()
    assert data in (b"old" * 10, b"N" * (64 << 20)), f"a half-written file of {len(data)} bytes is visible"
    # the killed write's temporary file may remain, hidden (dot name) and never under the target's name
    assert all(p.name.startswith(".") and p.name.endswith(".tmp") for p in tmp_path.iterdir() if p != target)


def test_file_kind_names_what_is_not_a_regular_file(tmp_path):
    """Ground truth: one path of each kind, made here."""
    import socket

    (tmp_path / "file").write_text("{}")
    (tmp_path / "folder").mkdir()
    os.mkfifo(tmp_path / "fifo")
    (tmp_path / "link").symlink_to(tmp_path / "file")
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(tmp_path / "sock"))
    try:
        got = {name: file_kind(tmp_path / name) for name in ("file", "folder", "fifo", "link", "dangling", "sock", "nope")}
    finally:
        sock.close()
    assert got == {"file": None, "folder": "a folder", "fifo": "a FIFO (named pipe)", "link": None,
                   "dangling": "a broken link", "sock": "a socket", "nope": "missing"}
    assert file_kind("/dev/null") == "a character device"
    assert file_kind(tmp_path / "file" / "below") == "missing"  # a parent that is a file


@pytest.mark.parametrize("content, words", [
    ("[" * 100_000 + "]" * 100_000, "nested too deeply"),
    (b'{"a": "\xff"}', "not valid UTF-8 (byte 0xff"),
    ('{"n": ' + "9" * 5000 + "}", "digits"),
])
def test_read_json_names_the_file_for_hostile_content(tmp_path, content, words):
    path = tmp_path / "x.json"
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(ValueError) as info:
        read_json(path)
    assert str(info.value).startswith(f"{path}: ") and words in str(info.value), info.value


def test_read_json_refuses_a_fifo_without_blocking(tmp_path):
    os.mkfifo(tmp_path / "x.json")
    with pytest.raises(ValueError, match="is a FIFO"):
        read_json(tmp_path / "x.json")
