"""Tests of the code sandbox and of grading in it (infra_study/sandbox.py, infra_study/grading.py):
grading verdicts, containment of hostile generated code, and tests the code can neither read nor forge.

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

from infra_study import grading, sandbox
from infra_lib.io import config_to_dict
from infra_study.grading import grade_code, grade_many
from infra_study.sandbox import SandboxConfig, SandboxUnavailable, run_python, sandbox_status

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
    real = grading.grade_code

    def flaky(code, tests, cfg=None):
        if code == "BOOM":
            raise OSError("no more file descriptors")
        return real(code, tests, cfg)

    monkeypatch.setattr(grading, "grade_code", flaky)
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
    "ctypes_segfault": ("import ctypes\ndef f(x):\n    return ctypes.string_at(0)\n", {"crashed"}),
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
                                {"timeout", "memory", "crashed", "failed"}),
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
    assert seg.cases == ("crashed", "not_run", "not_run") and "SIGSEGV" in seg.detail


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


# --------------------------------------------------------------------------- the tests stay hidden
# The tests run in the grader; the code sees only the arguments of its calls. Each attack below
# worked against a harness that ran the asserts inside the sandbox.
SECRET = 7_315_904_262_871  # an expected value no solution can compute (f(x) = x + 1 is asked for 1)
HIDDEN = [f"assert f(1) == {SECRET}"]


@needs_sandbox
def test_code_cannot_find_the_expected_values():
    """A wrong f that hunts for the expected value (in its callers' frames, every object of the
    process, the program file, /proc, /tmp) and returns whatever number an assert compares with."""
    code = (
        "import gc, os, re, sys\n"
        "def f(x):\n"
        "    seen = []\n"
        "    frame = sys._getframe()\n"
        "    while frame is not None:\n"
        "        seen += [repr(frame.f_locals)[:100000], repr(list(frame.f_globals))]\n"
        "        frame = frame.f_back\n"
        "    seen += [repr(o)[:100000] for o in gc.get_objects() if isinstance(o, (list, tuple, dict, str))]\n"
        "    files = ['/proc/self/cmdline', '/proc/self/environ', '/proc/1/cmdline', '/proc/1/environ']\n"
        "    for root in ('/sandbox', '/tmp'):\n"
        "        files += [os.path.join(d, n) for d, _, names in os.walk(root) for n in names]\n"
        "    for path in files:\n"
        "        try:\n"
        "            seen.append(open(path, 'rb').read(100000).decode('latin-1'))\n"
        "        except OSError:\n"
        "            pass\n"
        "    found = re.findall(r'==\\s*(\\d+)', ' '.join(seen))\n"
        "    print(len(found), 'candidates')\n"
        "    return int(found[-1]) if found else -1\n"
    )
    slow = SandboxConfig(timeout_s=10.0, cpu_s=10)  # the hunt takes a while
    g = grade_code(code, HIDDEN, slow)
    assert not g.passed and g.cases == ("fail",), g


@needs_sandbox
def test_code_cannot_forge_the_report():
    """A wrong f that writes, on every descriptor it holds, what a pass report or a reply might be
    (fake results, a fake 'ready', 'pass' lines keyed with any report key found in its program
    file), before and while it is called."""
    forged = [b'{"r": true, "m": []}', b'{"ready": ["f"]}', b"pass 0\npass 1\ndone 1",
              b'{"r": %d, "m": []}' % SECRET]
    frames = b"".join(b"%d\n" % len(x) + x for x in forged)
    code = (
        "import os, re\n"
        f"FRAMES = {frames!r}\n"
        "token = re.findall(rb'[0-9a-f]{32}', open('/sandbox/main.py', 'rb').read())  # a report key, if any\n"
        "LINES = b''.join(t + b' %s %d\\n' % (e, i) for t in token for i in range(4) for e in (b'start', b'pass'))\n"
        "LINES += b''.join(t + b' done %d\\n' % n for t in token for n in range(4))\n"
        "def spray():\n"
        "    for fd in range(3, 12):\n"
        "        try:\n"
        "            os.write(fd, LINES + FRAMES)\n"
        "        except OSError:\n"
        "            pass\n"
        "spray()\n"
        "def f(x):\n"
        "    spray()\n"
        "    return x + 1\n"
    )
    g = grade_code(code, HIDDEN + ["assert f(2) == 3"], CFG)
    assert not g.passed and g.n_passed == 0 and g.status == "error", g
    assert "reply channel" in g.detail


@needs_sandbox
def test_objects_equal_to_everything_do_not_pass():
    """Return values are rebuilt from plain data in the grader, so an ``__eq__`` that always says
    True never reaches the test's ``==``; an int or list subclass arrives as the plain value."""
    always = "class A:\n    def __eq__(self, other):\n        return True\n    __hash__ = None\n"
    for body in ("return A()", "return type('I', (int,), {'__eq__': lambda s, o: True})(0)",
                 "return type('L', (list,), {'__eq__': lambda s, o: True})()"):
        g = grade_code(always + f"def f(x):\n    {body}\n", HIDDEN, CFG)
        assert not g.passed and g.n_passed == 0, (body, g)
    g = grade_code(always + "def f(x):\n    return A()\n", HIDDEN, CFG)
    assert "cannot leave the sandbox" in g.detail and g.cases == ("error",)


@needs_sandbox
def test_code_cannot_replace_builtins_the_tests_use():
    """A solution that defines ``len`` or ``sorted`` does not change what the tests' own calls do."""
    code = "def f(x):\n    return []\ndef len(x):\n    return 3\ndef sorted(x):\n    return [1, 2, 3]\n"
    g = grade_code(code, ["assert len(f(3)) == 3", "assert sorted(f(3)) == [1, 2, 3]"], CFG)
    assert g.cases == ("fail", "fail"), g


@needs_sandbox
def test_humaneval_check_candidate():
    """HumanEval's form: the test defines ``check(candidate)`` and calls it with the solution's
    function; expected exceptions and in-place changes to list/dict/set arguments come through."""
    test = (
        "def check(candidate):\n"
        "    assert candidate([3, 1, 2]) == 6\n"
        "    assert candidate([]) == 0\n"
        "    try:\n"
        "        candidate(None)\n"
        "    except TypeError:\n"
        "        pass\n"
        "    else:\n"
        "        raise AssertionError('expected a TypeError')\n"
        "    xs, seen = [3, 1, 2], {}\n"
        "    candidate(xs, seen=seen)\n"
        "    assert xs == [1, 2, 3] and seen == {'n': 3}\n"
        "check(total)\n"
    )
    good = "def total(xs, seen=None):\n    if xs is None:\n        raise TypeError('no list')\n    xs.sort()\n    if seen is not None:\n        seen['n'] = len(xs)\n    return sum(xs)\n"
    assert grade_code(good, [test], CFG).passed
    no_sort = "def total(xs, seen=None):\n    if seen is not None:\n        seen['n'] = len(xs)\n    return sum(xs)\n"
    g = grade_code(no_sort, [test], CFG)
    assert g.cases == ("fail",), g
    wrong = "def total(xs, seen=None):\n    return 6\n"
    assert grade_code(wrong, [test], CFG).cases == ("fail",)


@needs_sandbox
def test_values_cross_the_pipe_unchanged():
    """An identity function returns every plain value with its exact type and value; an argument
    that cannot cross (a function) and a result that cannot (a generator) are errors of that test."""
    values = ("None", "True", "0", "-7", "10**5000", "-(2**70)", "1.5", "-0.0", "float('inf')", "2-3j",
              "'caf\\u00e9 \\x1b \\ud800'", "b'\\x00\\xff'", "(1, (2,))", "[1, [2, [3]]]", "{(1, 2): {'a': [None]}}",
              "{1, 2}", "frozenset({3})", "bytearray(b'ab')")
    tests = [f"v = {v}\nr = f(v)\nassert r == v and type(r) is type(v) if type(v) is not bytearray else r == bytes(v)"
             for v in values]
    tests += ["r = f(float('nan'))\nassert r != r and type(r) is float", "f(lambda: 1)", "f()"]
    code = "def f(*v):\n    return v[0] if v else (i for i in range(3))\n"
    g = grade_code(code, tests, CFG)
    assert g.cases == ("pass",) * (len(values) + 1) + ("error", "error"), g.detail
    assert "cannot be passed into the sandbox" in g.detail and "cannot leave the sandbox" in g.detail


@needs_sandbox
@pytest.mark.parametrize("reply, status", [
    (b"1" * 30, "error"),  # no length
    (b"99999999999\n", "output_limit"),  # a length past the cap
    (b"5\n[[[[", "error"),  # not JSON
    (b"%d\n" % (2 * 200_000) + b"[" * 200_000 + b"]" * 200_000, "error"),  # nested past any recursion limit
    (b'20\n{"r": {"x": 1}, "m": 0}', "error"),  # JSON, but no reply the harness writes
])
def test_malformed_replies_end_the_run(reply, status):
    """Bytes written into the reply channel in place of a reply end the run, named, never a pass."""
    marker = _marker()
    code = _tag(marker) + f"import os\ndef f(x):\n    os.write(4, {reply!r})\n    return 2 * x + 1\n"
    g = grade_code(code, TESTS, CFG)
    assert not g.passed and g.status == status and g.cases[0] == status and g.n_passed == 0, g
    assert g.wall_s < CFG.timeout_s
    _assert_contained(marker)


# --------------------------------------------------------------------------- reports a reader can trust


@needs_sandbox
def test_twenty_thousand_tests_pass_a_correct_solution():
    """The report grows with the tests (one reply per call), so no count of tests hits a cap (a
    harness that wrote every result into one capped report failed correct code at about 12,000).
    The time limit is generous: this is about the cap, not about speed on a loaded machine."""
    tests = [f"assert f({i}) == {2 * i + 1}" for i in range(20_000)]
    roomy = SandboxConfig(timeout_s=60.0, cpu_s=60)
    g = grade_code(GOOD, tests, roomy)
    assert g.passed and g.n_passed == 20_000, g.detail[:300]
    wrong = grade_code("def f(x):\n    return 2 * x + 1 if x < 19_999 else 0\n", tests, roomy)
    assert wrong.n_passed == 19_999 and wrong.cases[-1] == "fail"


@needs_sandbox
def test_escape_codes_from_the_code_are_stripped():
    """Exception names, messages and stderr from graded code reach the detail with no terminal
    escape sequence, C0/C1 control, bidi override or zero-width character left in it."""
    nasty = "\\x1b[2J\\x1b]0;owned\\x07\\x9b31m\\u202e\\u200b\\r\\x07"
    code = (f"import sys\nsys.stderr.write('{nasty}\\n')\n"
            f"E = type('E{nasty}', (Exception,), {{}})\n"
            f"def f(x):\n    raise E('{nasty}visible')\n")
    g = grade_code(code, TESTS[:1], CFG)
    assert g.cases == ("error",) and "visible" in g.detail, g
    assert all(ch.isprintable() for ch in g.detail), repr(g.detail)
    load = grade_code(f"import sys\nsys.stderr.write('{nasty}')\nraise ValueError('{nasty}at load')\n", TESTS, CFG)
    assert "at load" in load.detail and all(ch.isprintable() for ch in load.detail), repr(load.detail)


@needs_sandbox
def test_signals_are_named():
    """A crash names its signal (segfault, abort), a limit names the limit, another signal its name."""
    seg = grade_code("import ctypes\ndef f(x):\n    return ctypes.string_at(0)\n", TESTS, CFG)
    assert seg.status == "crashed" and "SIGSEGV (Segmentation fault)" in seg.detail, seg
    abort = run_python("import os\nos.abort()\n", CFG)
    assert (abort.status, abort.signal) == ("crashed", "SIGABRT (Aborted)")
    usr = run_python("import os, signal\nos.kill(os.getpid(), signal.SIGUSR1)\n", CFG)
    assert (usr.status, usr.signal) == ("killed", "SIGUSR1 (User defined signal 1)")
    cpu = run_python("while True:\n    pass\n", SandboxConfig(timeout_s=20.0, cpu_s=1))
    assert cpu.status == "cpu_limit" and cpu.signal.startswith("SIGXCPU")
    big = run_python("import signal\nsignal.signal(signal.SIGXFSZ, signal.SIG_DFL)\n"
                     "open('/tmp/big', 'wb').write(b'x' * (2 << 20))\n", SandboxConfig(max_file_mb=1))
    assert big.status == "file_limit" and big.signal.startswith("SIGXFSZ"), big


@needs_sandbox
@pytest.mark.parametrize("code", [
    # loading never ends: threads started and joined one after another
    "import threading\nwhile True:\n    t = threading.Thread(target=lambda: None)\n    t.start()\n    t.join()\n",
    # threads that sleep, then a main thread that waits for them
    "import threading, time\nts = [threading.Thread(target=time.sleep, args=(60,)) for _ in range(3)]\n"
    "[t.start() for t in ts]\n[t.join() for t in ts]\n",
    # the function itself spawns threads until the clock runs out
    "import threading, time\ndef f(x):\n    while True:\n        t = threading.Thread(target=time.sleep, args=(0.01,))\n"
    "        t.start()\n        time.sleep(0.001)\n        t.join()\n",
])
def test_timeout_is_labelled_timeout_whatever_the_code_does(code):
    g = grade_code(code, TESTS, CFG)
    assert g.status == "timeout" and "timeout" in g.detail, g
    assert CFG.timeout_s <= g.wall_s < CFG.timeout_s + 2.0


@needs_sandbox
def test_a_load_error_with_threads_left_does_not_wait_for_them():
    """Code that raises while defining, with threads still asleep, is an error at once (its
    threads are not waited for), named by its exception."""
    code = "import threading, time\nthreading.Thread(target=time.sleep, args=(60,)).start()\nraise KeyError('x')\n"
    g = grade_code(code, TESTS, CFG)
    assert g.status == "error" and "KeyError" in g.detail and g.wall_s < 1.0, g
