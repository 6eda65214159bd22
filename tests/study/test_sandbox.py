"""Tests of the code sandbox: grading verdicts, and containment of hostile generated code.

Each hostile case (endless loop, memory bomb, fork bomb, writes and reads outside the sandbox,
a network connection, an output flood, a sleeper that ignores SIGTERM; a ctypes segfault, fork,
a double-fork daemon, a subprocess in a new session, killing the parent or everything, filling the
disk, recursion with and without a limit) must end as a failed or contained run with its status
named, the host's environment must not be visible (not even bwrap's, as /proc/1/environ), leave no process behind (the code names its own process
with a unique marker, and /proc is scanned for it), and a correct solution graded right after
must still pass. Needs Debian's bubblewrap (``apt-get install -y bubblewrap``); without it the
sandboxed tests skip and say so, while the refusal tests still run.

Run: ``python -m pytest tests/study/test_sandbox.py -q`` (about 10-20 s).
"""
from __future__ import annotations

import dataclasses
import os
import secrets
import socket
import threading
import time
from pathlib import Path

import pytest

from infra_study import sandbox
from infra_lib.io import config_to_dict
from infra_study.sandbox import (
    SandboxConfig,
    SandboxUnavailable,
    grade_code,
    grade_many,
    run_python,
    sandbox_status,
)

PROJECT = Path(__file__).resolve().parents[2]
OK, REASON = sandbox_status()
needs_sandbox = pytest.mark.skipif(not OK, reason=f"no sandbox can be made here: {REASON}")

CFG = SandboxConfig(timeout_s=1.5, cpu_s=3)
TESTS = ["assert f(2) == 5", "assert f(0) == 1", "assert f(-1) == -1"]
GOOD = "def f(x):\n    return 2 * x + 1\n"


def _marker() -> str:
    return "sbx" + secrets.token_hex(6)  # 15 characters: the most a process name holds


def _tag(marker: str) -> str:
    """Source that renames the sandboxed process to ``marker``, so /proc shows it from outside."""
    return f"import ctypes\nctypes.CDLL(None).prctl(15, {marker.encode()!r}, 0, 0, 0)\n"


def _pids_with(marker: str) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/comm", "rb") as fh:
                comm = fh.read()
            with open(f"/proc/{entry}/cmdline", "rb") as fh:
                cmdline = fh.read()
        except OSError:  # the process ended while we looked
            continue
        if marker.encode() in comm or marker.encode() in cmdline:
            found.append(int(entry))
    return found


def _children() -> list[int]:
    kids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat", "rb") as fh:
                    ppid = int(fh.read().rsplit(b")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            if ppid == os.getpid():
                kids.append(int(entry))
    return kids


def _assert_contained(marker: str) -> None:
    """No process carries ``marker``, none of ours is left, and the sandbox still grades right."""
    deadline = time.monotonic() + 3.0
    while _pids_with(marker) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _pids_with(marker) == [], "a sandboxed process outlived its run"
    assert _children() == [], "bwrap or a child of it was not reaped"
    after = grade_code(GOOD, TESTS, CFG)
    assert after.passed and after.n_passed == 3, after


# --------------------------------------------------------------------------- config and refusal


def test_config_validates_and_serialises():
    """Bad limits are refused by name; a config is frozen and JSON-able for provenance."""
    cfg = SandboxConfig()
    assert cfg.timeout_s == 5.0 and cfg.memory_mb == 256 and cfg.max_processes == 1
    assert config_to_dict(cfg)["memory_mb"] == 256
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.timeout_s = 1.0  # type: ignore[misc]
    for bad in [dict(timeout_s=0), dict(timeout_s=float("inf")), dict(cpu_s=0), dict(memory_mb=8),
                dict(max_output_bytes=0), dict(max_processes=0), dict(uid=0), dict(tmpfs_mb=1.5),
                dict(cpu_s=True)]:
        with pytest.raises(ValueError, match=next(iter(bad))):
            SandboxConfig(**bad)


def test_refuses_without_bwrap(monkeypatch, tmp_path):
    """With no bwrap, status says what to install and nothing runs bare (the host file stays absent)."""
    monkeypatch.setattr(sandbox, "_find_bwrap", lambda: None)
    ok, reason = sandbox_status()
    assert not ok and "apt-get install -y bubblewrap" in reason
    witness = tmp_path / "ran_bare.txt"
    code = f"open({str(witness)!r}, 'w').write('ran')\n"
    with pytest.raises(SandboxUnavailable, match="apt-get install -y bubblewrap"):
        run_python(code)
    with pytest.raises(SandboxUnavailable, match="bubblewrap"):
        grade_code(code + GOOD, TESTS)
    with pytest.raises(SandboxUnavailable, match="bubblewrap"):
        grade_many([(code + GOOD, TESTS)], progress=False)
    assert not witness.exists()


def test_refuses_when_bwrap_cannot_sandbox(monkeypatch, tmp_path):
    """A bwrap that cannot make a sandbox (here: one that always fails) is reported, not bypassed."""
    monkeypatch.setattr(sandbox, "_find_bwrap", lambda: "/bin/false")
    ok, reason = sandbox_status()
    assert not ok and "cannot make a sandbox" in reason
    witness = tmp_path / "ran_bare.txt"
    with pytest.raises(SandboxUnavailable, match="cannot make a sandbox"):
        run_python(f"open({str(witness)!r}, 'w').write('ran')\n")
    assert not witness.exists()


@needs_sandbox
@pytest.mark.skipif(os.geteuid() != 0, reason="RLIMIT_NPROC is only unenforceable for root")
def test_refuses_unenforceable_process_limit_as_root():
    with pytest.raises(SandboxUnavailable, match="RLIMIT_NPROC"):
        run_python("print(1)", SandboxConfig(max_processes=8))


# --------------------------------------------------------------------------- plain runs and grading


@needs_sandbox
def test_run_python_reports_output_and_exit():
    ok = run_python("import sys\nprint('hi')\nprint('warn', file=sys.stderr)\n", CFG)
    assert (ok.status, ok.returncode, ok.stdout, ok.stderr) == ("ok", 0, "hi\n", "warn\n")
    assert not ok.truncated
    bad = run_python("raise SystemExit(3)\n", CFG)
    assert (bad.status, bad.returncode) == ("error", 3)
    crash = run_python("x = 1\n1 / 0\n", CFG)
    assert crash.status == "error" and "ZeroDivisionError" in crash.stderr and "main.py" in crash.stderr


@needs_sandbox
def test_correct_function_passes_and_wrong_one_is_counted():
    good = grade_code(GOOD, TESTS, CFG)
    assert good.passed and good.status == "passed" and (good.n_passed, good.n_tests) == (3, 3)
    assert good.cases == ("pass", "pass", "pass")
    wrong = grade_code("def f(x):\n    return x + 3\n", TESTS, CFG)  # right only at x=2
    assert not wrong.passed and wrong.status == "failed" and (wrong.n_passed, wrong.n_tests) == (1, 3)
    assert wrong.cases == ("pass", "fail", "fail") and "test 1: AssertionError" in wrong.detail
    raising = grade_code("def f(x):\n    return 1 / x\n", TESTS, CFG)  # wrong, raises, right
    assert raising.cases == ("fail", "error", "pass") and raising.n_passed == 1
    assert "ZeroDivisionError" in raising.detail
    broken = grade_code("def f(x) return x\n", TESTS, CFG)
    assert broken.status == "error" and broken.n_passed == 0 and "SyntaxError" in broken.detail


@needs_sandbox
def test_main_block_of_a_solution_does_not_run():
    """A solution that reads stdin under ``if __name__ == "__main__"`` is graded on its function."""
    code = GOOD + "if __name__ == '__main__':\n    print(f(int(input())))\n"
    assert grade_code(code, TESTS, CFG).passed
    assert run_python(code, CFG).status == "error"  # run as a script it does read (empty) stdin


@needs_sandbox
def test_printed_markers_do_not_count_as_passes():
    """Code that prints what a pass report might look like gains nothing."""
    code = "for i in range(3):\n    print('pass', i)\n    print('S')\ndef f(x):\n    return 0\n"
    g = grade_code(code, TESTS, CFG)
    assert g.n_passed == 0 and not g.passed


@needs_sandbox
def test_threads_still_work():
    """The seccomp filter refuses new processes, not threads."""
    code = (
        "import threading\n"
        "def f(x):\n"
        "    out = []\n"
        "    t = threading.Thread(target=lambda: out.append(2 * x + 1))\n"
        "    t.start()\n"
        "    t.join()\n"
        "    return out[0]\n"
    )
    assert grade_code(code, TESTS, CFG).passed


# --------------------------------------------------------------------------- hostile code


@needs_sandbox
def test_infinite_loop_times_out():
    marker = _marker()
    g = grade_code(_tag(marker) + "def f(x):\n    while True:\n        pass\n", TESTS, CFG)
    assert not g.passed and g.status == "timeout" and g.cases == ("timeout", "not_run", "not_run")
    assert CFG.timeout_s <= g.wall_s < CFG.timeout_s + 2.0
    _assert_contained(marker)


@needs_sandbox
def test_cpu_limit_stops_a_busy_loop():
    marker = _marker()
    r = run_python(_tag(marker) + "while True:\n    pass\n", SandboxConfig(timeout_s=20.0, cpu_s=1))
    assert r.status == "cpu_limit" and r.wall_s < 15.0
    _assert_contained(marker)


@needs_sandbox
def test_memory_bomb_hits_the_limit():
    marker = _marker()
    bomb = "def f(x):\n    hog = []\n    while True:\n        hog.append(bytearray(2**24))\n"
    g = grade_code(_tag(marker) + bomb, TESTS, CFG)
    assert not g.passed and g.status == "memory" and g.n_passed == 0
    r = run_python(_tag(marker) + "hog = []\nwhile True:\n    hog.append(bytearray(2**24))\n", CFG)
    assert r.status == "memory" and r.wall_s < CFG.timeout_s
    _assert_contained(marker)


@needs_sandbox
def test_fork_bomb_is_refused():
    marker = _marker()
    bomb = "import os\ndef f(x):\n    while True:\n        os.fork()\n"
    g = grade_code(_tag(marker) + bomb, TESTS, CFG)
    assert not g.passed and g.n_passed == 0 and g.status == "failed" and set(g.cases) == {"error"}
    r = run_python(_tag(marker) + "import subprocess\nsubprocess.run(['/bin/true'])\n", CFG)
    assert r.status == "error" and "BlockingIOError" in r.stderr
    _assert_contained(marker)


@needs_sandbox
def test_writes_outside_do_not_reach_the_host():
    """Writes to the project, /root and /tmp either fail or land in the private tmpfs, never on the host."""
    marker = _marker()
    targets = [PROJECT / f"{marker}.txt", Path("/root") / f"{marker}.txt", Path("/tmp") / f"{marker}.txt",
               Path("/") / f"{marker}.txt"]
    code = _tag(marker) + (
        "def f(x):\n"
        f"    for path in {[str(t) for t in targets]!r}:\n"
        "        try:\n"
        "            with open(path, 'w') as fh:\n"
        "                fh.write('escaped')\n"
        "        except OSError:\n"
        "            pass\n"
        "    return 2 * x + 1\n"
    )
    try:
        g = grade_code(code, TESTS, CFG)
        assert g.passed  # the writes ran (and were swallowed); the answer is still right
        leaked = [str(t) for t in targets if t.exists()]
        assert leaked == []
    finally:
        for t in targets:
            if t.exists() and t.read_text(errors="replace") == "escaped":
                t.unlink()
    _assert_contained(marker)


@needs_sandbox
def test_reads_outside_see_no_host_content(tmp_path):
    """The project, /etc/passwd, a host secret and the venv's packages are all out of sight."""
    marker = _marker()
    secret = tmp_path / "secret.txt"
    secret.write_text("host-secret-" + marker)
    paths = [str(PROJECT / "pyproject.toml"), "/etc/passwd", str(secret)]
    code = _tag(marker) + (
        f"for path in {paths!r}:\n"
        "    try:\n"
        "        print('READ', path, open(path).read())\n"
        "    except OSError as exc:\n"
        "        print('DENIED', path, type(exc).__name__)\n"
        "try:\n"
        "    import tqdm\n"
        "    print('IMPORTED tqdm')\n"
        "except ImportError:\n"
        "    print('NO tqdm')\n"
    )
    r = run_python(code, CFG)
    assert r.status == "ok", r.stderr
    assert r.stdout.count("DENIED") == 3 and "READ" not in r.stdout
    for host_text in ("host-secret-", "[build-system]", "root:x:0:0"):
        assert host_text not in r.stdout
    assert "NO tqdm" in r.stdout  # installed in the venv, which is not bound
    g = grade_code(_tag(marker) + f"def f(x):\n    return len(open({paths[0]!r}).read())\n", TESTS, CFG)
    assert not g.passed and set(g.cases) == {"error"} and "FileNotFoundError" in g.detail
    _assert_contained(marker)


@needs_sandbox
def test_network_connection_does_not_reach_a_host_listener():
    marker = _marker()
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        port = listener.getsockname()[1]
        code = _tag(marker) + (
            "import socket\n"
            "try:\n"
            f"    socket.create_connection(('127.0.0.1', {port}), timeout=1.0)\n"
            "    print('CONNECTED')\n"
            "except OSError as exc:\n"
            "    print('BLOCKED', type(exc).__name__)\n"
        )
        r = run_python(code, CFG)
        listener.settimeout(0.3)
        with pytest.raises(socket.timeout):
            conn, _ = listener.accept()
            conn.close()
    assert r.status == "ok" and "BLOCKED" in r.stdout and "CONNECTED" not in r.stdout
    _assert_contained(marker)


@needs_sandbox
def test_output_flood_is_capped():
    marker = _marker()
    cfg = dataclasses.replace(CFG, max_output_bytes=10_000)
    r = run_python(_tag(marker) + "while True:\n    print('x' * 4096, flush=True)\n", cfg)
    assert r.status == "output_limit" and r.truncated and len(r.stdout.encode()) == 10_000
    r = run_python(_tag(marker) + "import sys\nwhile True:\n    sys.stderr.write('e' * 4096)\n", cfg)
    assert r.status == "output_limit" and len(r.stderr.encode()) == 10_000
    g = grade_code(_tag(marker) + "def f(x):\n    while True:\n        print('x' * 4096)\n", TESTS, cfg)
    assert not g.passed and g.status == "output_limit" and g.cases[0] == "output_limit"
    _assert_contained(marker)


@needs_sandbox
def test_sigterm_ignoring_sleeper_is_killed_at_timeout():
    """The scan sees the sleeper while it lives (so it can fail), and nothing once the timeout struck."""
    marker = _marker()
    code = _tag(marker) + (
        "import signal, time\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\ndef f(x):\n    time.sleep(60)\n"
    )
    box: dict = {}
    worker = threading.Thread(target=lambda: box.setdefault("g", grade_code(code, TESTS, CFG)))
    worker.start()
    seen = False
    while worker.is_alive() and not seen:
        seen = bool(_pids_with(marker))
        time.sleep(0.02)
    worker.join()
    assert seen, "the sandboxed sleeper was never visible in /proc"
    g = box["g"]
    assert g.status == "timeout" and not g.passed and g.wall_s < CFG.timeout_s + 2.0
    _assert_contained(marker)


@needs_sandbox
def test_file_and_tmpfs_limits():
    cfg = dataclasses.replace(CFG, max_file_mb=1, tmpfs_mb=4)
    big = run_python("open('big.bin', 'wb').write(b'x' * (2 << 20))\n", cfg)
    assert big.status == "error" and "File too large" in big.stderr
    many = run_python("for i in range(8):\n    open(f'part{i}.bin', 'wb').write(b'x' * (1 << 20))\n", cfg)
    assert many.status == "error" and "No space left" in many.stderr


# --------------------------------------------------------------------------- many


@needs_sandbox
def test_grade_many_keeps_order_and_goes_on(monkeypatch):
    items = [
        (GOOD, TESTS),
        ("import os\nos._exit(7)\n", TESTS),  # ends the process while loading
        ("BOOM", TESTS),  # the grader itself fails on this one
        ("def f(x):\n    return x + 3\n", TESTS),
        (GOOD, TESTS[:1]),
    ]
    real = sandbox.grade_code

    def flaky(code, tests, cfg=None):
        if code == "BOOM":
            raise OSError("no more file descriptors")
        return real(code, tests, cfg)

    monkeypatch.setattr(sandbox, "grade_code", flaky)
    results = grade_many(items, CFG, workers=2, progress=False)
    assert [r.status for r in results] == ["passed", "error", "sandbox_error", "failed", "passed"]
    assert [r.n_passed for r in results] == [3, 0, 0, 1, 1]
    assert [r.n_tests for r in results] == [3, 3, 3, 3, 1]
    assert "no more file descriptors" in results[2].detail
    with pytest.raises(ValueError, match="item 0"):
        grade_many([(GOOD, [])], CFG, progress=False)


# --------------------------------------------------------------------------- more hostile code
# Each case: code that defines f (the tests call it), and the statuses that count as contained. A
# case must fail (never pass), leave no process, and not stop the cases graded after it.
HOSTILE = {
    "ctypes_segfault": ("import ctypes\ndef f(x):\n    return ctypes.string_at(0)\n", {"killed"}),
    "fork": ("import os\ndef f(x):\n    os.fork()\n    return 2 * x + 1\n", {"failed"}),
    "double_fork_daemon": (
        "import os, time\ndef f(x):\n    if os.fork() == 0:\n        os.setsid()\n        if os.fork():\n"
        "            os._exit(0)\n        time.sleep(60)\n    return 2 * x + 1\n", {"failed"}),
    "new_session_subprocess": (
        "import subprocess, sys\ndef f(x):\n    subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'],"
        " start_new_session=True)\n    return 2 * x + 1\n", {"failed"}),
    "kill_the_parent": ("import os\nos.kill(os.getppid(), 9)\nos.kill(1, 9)\ndef f(x):\n    return 2 * x\n", {"failed"}),
    "kill_everything": ("import os\ndef f(x):\n    os.kill(-1, 9)\n    return 2 * x + 1\n", {"failed"}),
    "fill_the_disk": ("def f(x):\n    for i in range(64):\n        with open(f'/tmp/fill{i}.bin', 'wb') as fh:\n"
                      "            fh.write(b'x' * (8 << 20))\n", {"failed"}),
    "recursion": ("def f(x):\n    return f(x) + 1\n", {"failed"}),
    "deep_recursion_no_limit": ("import sys\nsys.setrecursionlimit(10**8)\ndef f(x):\n    return f(x) + 1\n",
                                {"timeout", "memory", "killed", "failed"}),
}


@needs_sandbox
@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_hostile_code_is_contained(name):
    marker = _marker()
    code, allowed = HOSTILE[name]
    g = grade_code(_tag(marker) + code, TESTS, CFG)
    assert not g.passed and g.n_passed == 0 and g.status in allowed, g
    _assert_contained(marker)


@needs_sandbox
def test_disk_and_recursion_failures_name_their_cause():
    disk = grade_code(HOSTILE["fill_the_disk"][0], TESTS, CFG)
    assert set(disk.cases) == {"error"} and "No space left on device" in disk.detail
    rec = grade_code(HOSTILE["recursion"][0], TESTS, CFG)
    assert set(rec.cases) == {"error"} and "RecursionError" in rec.detail
    seg = grade_code(HOSTILE["ctypes_segfault"][0], TESTS, CFG)
    assert seg.cases == ("killed", "not_run", "not_run") and "exit 139" in seg.detail  # 128 + SIGSEGV


@needs_sandbox
def test_host_environment_is_not_visible(monkeypatch):
    """A secret in the host's environment is in none of the sandbox's environments, /proc/1 (bwrap) included."""
    secret = "tok" + secrets.token_hex(12)
    monkeypatch.setenv("INFRA_TEST_SECRET", secret)
    code = ("import os\nprint(dict(os.environ))\n"
            "for pid in os.listdir('/proc'):\n"
            "    if pid.isdigit():\n"
            "        for part in ('environ', 'cmdline'):\n"
            "            try:\n"
            "                print(pid, part, open(f'/proc/{pid}/{part}', 'rb').read())\n"
            "            except OSError as exc:\n"
            "                print(pid, part, type(exc).__name__)\n")
    r = run_python(code, CFG)
    assert r.status == "ok" and "'HOME': '/tmp'" in r.stdout and "1 environ" in r.stdout, r
    assert secret not in r.stdout and secret not in r.stderr
    assert "INFRA_TEST_SECRET" not in r.stdout


@needs_sandbox
def test_grade_many_goes_on_after_every_hostile_case():
    markers = {name: _marker() for name in HOSTILE}
    items = []
    for name in sorted(HOSTILE):
        items += [(_tag(markers[name]) + HOSTILE[name][0], TESTS), (GOOD, TESTS)]
    results = grade_many(items, CFG, workers=2, progress=False)
    assert [r.passed for r in results] == [False, True] * len(HOSTILE)
    for name, r in zip(sorted(HOSTILE), results[::2]):
        assert r.status in HOSTILE[name][1], (name, r)
    for m in markers.values():
        _assert_contained(m)
