"""Run untrusted generated Python in a bubblewrap sandbox, and grade it against hidden asserts.

Threat model. Code problems are graded by running what the model wrote, so that code is
untrusted: by mistake or by reward hacking it may loop forever, allocate without bound, fork
without bound, flood its output, ignore SIGTERM, read the project's files (hidden tests, other
answers), write into the project, or open network connections. Resource limits (``setrlimit``)
bound time, memory, file size and open files, but they cannot stop a read of a file the process
may open, a write where it may write, or a socket; and these machines run everything as root, so
file permissions stop nothing and Linux does not apply ``RLIMIT_NPROC`` to root's processes.

So every run goes through ``bwrap`` (Debian package ``bubblewrap``) with fresh namespaces of
every kind (``--unshare-all``: no network but its own loopback, its own pid space, so that no
process of it can outlive the run), read-only binds of only what the interpreter needs (the base
interpreter's prefix, ``/usr/lib`` and ``/lib*``, never the project or the virtual environment),
the root and ``/dev`` remounted read-only, a private size-capped tmpfs as the empty working
directory and ``/tmp``, an unprivileged uid/gid (65534) inside its user namespace with every
capability dropped, no new user namespaces, and a seccomp filter that refuses new processes
(fork, vfork, clone without ``CLONE_THREAD``, clone3), ptrace, keyrings, bpf, perf events,
userfaultfd and io_uring. A small launcher run as ``python -I -S`` then sets ``RLIMIT_AS``,
``RLIMIT_CPU``, ``RLIMIT_FSIZE``, ``RLIMIT_NOFILE``, ``RLIMIT_CORE=0`` (and ``RLIMIT_NPROC``
where more than one process is allowed) before it runs the code. The parent starts bwrap in its
own session, reads output up to a cap, enforces a wall-clock timeout, and always ends with
SIGKILL to the whole group and a reap; bwrap's ``--die-with-parent`` and the pid namespace take
every process of the sandbox down with it.

Where no sandbox can be made, :func:`run_python` raises :class:`SandboxUnavailable` with the
reason; generated code is never run bare.

Known limits: threads are allowed (bounded only through ``memory_mb``: about a thousand at 256 MiB);
grading runs the asserts in the same process as the code, so code that deliberately inspects the
harness (frames, ``gc``) can forge its report, and an object whose ``__eq__`` always returns True
passes ``==`` asserts.
"""
from __future__ import annotations

import math
import os
import platform
import secrets
import selectors
import shutil
import signal
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass

__all__ = [
    "SandboxConfig",
    "SandboxUnavailable",
    "RunResult",
    "GradeResult",
    "sandbox_status",
    "run_python",
    "grade_code",
    "grade_many",
]

INSTALL_HINT = "install Debian's bubblewrap: apt-get install -y bubblewrap"

_MEMORY_RC = 213  # launcher exit status for a MemoryError that reached the top level
_REPORT_CAP = 1 << 20  # bytes of harness report read before the run counts as flooding
_SANDBOX_DIR = "/sandbox"  # read-only folder inside the sandbox holding the program
_WORK_DIR = "/tmp"  # the private tmpfs: working directory and /tmp at once


class SandboxUnavailable(RuntimeError):
    """No sandbox can be made here (the message says why and what to install or change)."""


@dataclass(frozen=True)
class SandboxConfig:
    """Limits of one sandboxed run (the defaults suit one generated solution and its asserts)."""

    timeout_s: float = 5.0
    """Wall-clock seconds before the whole sandbox is killed (status ``"timeout"``)."""
    cpu_s: int = 5
    """CPU seconds (``RLIMIT_CPU``): SIGXCPU at this many, SIGKILL one second later."""
    memory_mb: int = 256
    """Address space in MiB (``RLIMIT_AS``); beyond it allocations fail with MemoryError."""
    max_output_bytes: int = 65536
    """Bytes kept of stdout and of stderr each; one more byte kills the run (``"output_limit"``)."""
    max_file_mb: int = 16
    """Largest file the code may write, in MiB (``RLIMIT_FSIZE``)."""
    tmpfs_mb: int = 32
    """Size of the private tmpfs that is the working directory and ``/tmp``, in MiB."""
    max_open_files: int = 64
    """Open file descriptors (``RLIMIT_NOFILE``)."""
    max_processes: int = 1
    """Processes the code may have at once, itself included. At 1 a seccomp filter refuses every
    new process (threads stay allowed, bounded by ``memory_mb``). Above 1 only ``RLIMIT_NPROC``
    holds them (threads count too), and Linux does not apply it to root's processes, so
    :func:`run_python` refuses values above 1 when run as root."""
    uid: int = 65534
    """Unprivileged uid the code runs as inside its user namespace."""
    gid: int = 65534
    """Unprivileged gid the code runs as inside its user namespace."""

    def __post_init__(self) -> None:
        t = self.timeout_s
        if isinstance(t, bool) or not isinstance(t, (int, float)) or not math.isfinite(t) or t <= 0:
            raise ValueError(f"timeout_s must be a positive finite number, got {self.timeout_s!r}")
        ints = {
            "cpu_s": 1,
            "memory_mb": 32,
            "max_output_bytes": 1,
            "max_file_mb": 1,
            "tmpfs_mb": 1,
            "max_open_files": 16,
            "max_processes": 1,
            "uid": 1,
            "gid": 1,
        }
        for name, lowest in ints.items():
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < lowest:
                raise ValueError(f"{name} must be an integer >= {lowest}, got {value!r}")
        if self.uid > 2**32 - 2 or self.gid > 2**32 - 2:
            raise ValueError(f"uid/gid must fit a 32-bit id, got {self.uid}/{self.gid}")


@dataclass(frozen=True)
class RunResult:
    """What one sandboxed run did."""

    status: str
    """``"ok"`` (exit 0), ``"error"`` (non-zero exit), ``"timeout"`` (wall clock), ``"cpu_limit"``,
    ``"memory"``, ``"output_limit"``, ``"file_limit"`` or ``"killed"`` (another signal)."""
    returncode: int | None
    """Exit status (128 + n when signal n ended it); None when the parent killed the run."""
    stdout: str
    """Standard output, at most ``max_output_bytes`` of it (UTF-8, bad bytes replaced)."""
    stderr: str
    """Standard error, at most ``max_output_bytes`` of it."""
    wall_s: float
    """Seconds from the start of bwrap to its reaping."""
    truncated: bool = False
    """True when stdout or stderr was cut at the cap."""


@dataclass(frozen=True)
class GradeResult:
    """The verdict on one solution: how many of its hidden asserts passed, and why not all."""

    passed: bool
    """True only when every assert passed and the process exited cleanly."""
    n_passed: int
    """Asserts that passed."""
    n_tests: int
    """Asserts run or meant to run."""
    status: str
    """``"passed"``, ``"failed"`` (some assert failed or raised), ``"error"`` (the code did not
    load or ended the process itself), a limit named as in :class:`RunResult`, or
    ``"sandbox_error"`` (the grader itself failed; not the code's fault)."""
    detail: str
    """One line per failure for a reader, e.g. ``"test 1: AssertionError"``."""
    cases: tuple[str, ...] = ()
    """Per assert: ``"pass"``, ``"fail"`` (AssertionError), ``"error"`` (another exception),
    ``"memory"``, the run's status if it died during that assert, or ``"not_run"``."""
    wall_s: float = 0.0
    """Wall seconds of the sandboxed run."""


# --------------------------------------------------------------------------- availability


def _find_bwrap() -> str | None:
    return shutil.which("bwrap")


def _interpreter() -> tuple[str, str]:
    """The base interpreter (not the venv's) and its prefix, both with links resolved."""
    exe = os.path.realpath(getattr(sys, "_base_executable", None) or sys.executable)
    return exe, os.path.realpath(sys.base_prefix)


_PROBED: dict[tuple[str, str], bool] = {}
_PROBE_LOCK = threading.Lock()


def sandbox_status() -> tuple[bool, str]:
    """Whether a sandbox can be made here, and if not, why and what to do about it.

    Returns ``(True, "bwrap <path> works")`` after a real sandboxed run of ``print(6*7)`` has
    printed 42 (cached per bwrap path), else ``(False, reason)``.
    """
    bwrap = _find_bwrap()
    if bwrap is None:
        return False, f"bubblewrap (bwrap) is not on PATH: {INSTALL_HINT}"
    if _seccomp_arch() is None:
        return False, (
            f"no seccomp filter for machine {platform.machine()!r} (only x86_64 and aarch64), "
            "so new processes could not be refused"
        )
    key = (bwrap, _interpreter()[0])
    with _PROBE_LOCK:
        if _PROBED.get(key):
            return True, f"bwrap {bwrap} works"
        try:
            res, _ = _run_sandboxed("print(6 * 7)\n", SandboxConfig(timeout_s=30.0), bwrap)
        except SandboxUnavailable as exc:
            return False, (
                f"bwrap is installed ({bwrap}) but cannot make a sandbox here: {exc}. Unprivileged "
                "user namespaces may be off (sysctl user.max_user_namespaces, "
                "kernel.apparmor_restrict_unprivileged_userns) or a container runtime forbids them"
            )
        if res.status != "ok" or res.stdout.strip() != "42":
            said = res.stderr.strip()[-300:]
            return False, f"bwrap {bwrap} ran but the probe misbehaved: {res.status}, {said!r}"
        _PROBED[key] = True
    return True, f"bwrap {bwrap} works"


# --------------------------------------------------------------------------- seccomp filter

# Syscall numbers per architecture (from the kernel's unistd headers).
_SYSCALLS = {
    "x86_64": dict(audit=0xC000003E, clone=56, fork=57, vfork=58, clone3=435, ptrace=101, keyctl=250,
                   add_key=248, request_key=249, perf_event_open=298, bpf=321, userfaultfd=323,
                   io_uring_setup=425),
    "aarch64": dict(audit=0xC00000B7, clone=220, fork=None, vfork=None, clone3=435, ptrace=117,
                    keyctl=219, add_key=217, request_key=218, perf_event_open=241, bpf=280,
                    userfaultfd=282, io_uring_setup=425),
}
_DENIED = ("ptrace", "keyctl", "add_key", "request_key", "perf_event_open", "bpf", "userfaultfd",
           "io_uring_setup")
_CLONE_THREAD = 0x00010000
_EPERM, _EAGAIN, _ENOSYS = 1, 11, 38
_RET_ALLOW, _RET_KILL = 0x7FFF0000, 0x80000000


def _seccomp_arch() -> str | None:
    machine = platform.machine().lower()
    machine = {"amd64": "x86_64", "arm64": "aarch64"}.get(machine, machine)
    return machine if machine in _SYSCALLS else None


def _seccomp_program(arch: str, refuse_processes: bool) -> bytes:
    """A classic BPF seccomp program (``struct sock_filter[]``) for bwrap's ``--seccomp``."""
    nr = _SYSCALLS[arch]
    ld, jeq, jge, jset, ret = 0x20, 0x15, 0x35, 0x45, 0x06
    errno = lambda e: 0x00050000 | e  # noqa: E731  SECCOMP_RET_ERRNO
    prog: list[tuple[int, int, int, int]] = [
        (ld, 0, 0, 4),  # seccomp_data.arch
        (jeq, 1, 0, nr["audit"]),
        (ret, 0, 0, _RET_KILL),  # a foreign ABI (i386 on x86_64) is not allowed at all
        (ld, 0, 0, 0),  # seccomp_data.nr
    ]
    if arch == "x86_64":  # x32 syscalls carry bit 30
        prog += [(jge, 0, 1, 0x40000000), (ret, 0, 0, errno(_EPERM))]
    rules = [(nr[name], errno(_EPERM)) for name in _DENIED]
    if refuse_processes:
        # glibc falls back from clone3 to clone on ENOSYS, where the flags can be inspected.
        rules.append((nr["clone3"], errno(_ENOSYS)))
        rules += [(nr[name], errno(_EAGAIN)) for name in ("fork", "vfork") if nr[name] is not None]
    for number, action in rules:
        prog += [(jeq, 0, 1, number), (ret, 0, 0, action)]
    if refuse_processes:
        prog += [
            (jeq, 0, 4, nr["clone"]),  # not clone: on to the final allow
            (ld, 0, 0, 16),  # low 32 bits of args[0], the clone flags
            (jset, 0, 1, _CLONE_THREAD),
            (ret, 0, 0, _RET_ALLOW),
            (ret, 0, 0, errno(_EAGAIN)),
        ]
    prog.append((ret, 0, 0, _RET_ALLOW))
    return b"".join(struct.pack("=HBBI", *ins) for ins in prog)


# --------------------------------------------------------------------------- one run

# Runs inside the sandbox as `python -I -S -B -X utf8 -c _LAUNCHER mem cpu fsize nofile nproc report path`.
_LAUNCHER = r"""
import os, sys, resource as R
mem, cpu, fsize, nofile, nproc, report = (int(x) for x in sys.argv[1:7])
path = sys.argv[7]
if report != 3:
    os.dup2(report, 3)
os.closerange(4, 1 << 20)
os.write(3, b"S\n")
R.setrlimit(R.RLIMIT_CORE, (0, 0))
R.setrlimit(R.RLIMIT_NOFILE, (nofile, nofile))
R.setrlimit(R.RLIMIT_FSIZE, (fsize, fsize))
R.setrlimit(R.RLIMIT_CPU, (cpu, cpu + 1))
if nproc > 1:
    R.setrlimit(R.RLIMIT_NPROC, (nproc, nproc))
R.setrlimit(R.RLIMIT_AS, (mem, mem))
with open(path, "rb") as fh:
    src = fh.read()
sys.argv = [path]
del mem, cpu, fsize, nofile, nproc, report, fh, R
try:
    exec(compile(src, path, "exec"), {"__name__": "__main__", "__file__": path, "__builtins__": __builtins__})
except MemoryError:
    try:
        os.write(2, b"MemoryError: the sandbox memory limit was reached\n")
        sys.stdout.flush()
    finally:
        os._exit(%d)
except SystemExit:
    raise
except BaseException as exc:
    import traceback
    traceback.print_exception(type(exc), exc, exc.__traceback__.tb_next)
    sys.exit(1)
""" % _MEMORY_RC


def _memfd(name: str, data: bytes) -> int:
    fd = os.memfd_create(name)  # close-on-exec; passed to bwrap on purpose via pass_fds
    try:
        _write_all(fd, data)
        os.lseek(fd, 0, os.SEEK_SET)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _bwrap_argv(bwrap: str, cfg: SandboxConfig, code_fd: int, seccomp_fd: int, report_fd: int) -> list[str]:
    exe, prefix = _interpreter()
    argv = [bwrap, "--unshare-all", "--unshare-user", "--disable-userns", "--die-with-parent",
            "--new-session", "--uid", str(cfg.uid), "--gid", str(cfg.gid), "--hostname", "sandbox"]
    bound: list[str] = []

    def ro_bind(path: str) -> None:
        if not any(path == b or path.startswith(b.rstrip("/") + "/") for b in bound):
            argv.extend(["--ro-bind", path, path])
            bound.append(path)

    # The loader and shared libraries; symlinked /lib* (merged /usr) stay symlinks.
    for d in ("/usr/lib", "/usr/lib64", "/usr/lib32", "/usr/libx32", "/lib", "/lib64", "/lib32", "/libx32"):
        if os.path.islink(d):
            argv.extend(["--symlink", os.readlink(d), d])
        elif os.path.isdir(d):
            ro_bind(d)
    if prefix == "/usr":  # a system interpreter: its stdlib is under /usr/lib already
        ro_bind(exe)
    else:
        ro_bind(prefix)
        ro_bind(exe)
    # Only the stdlib is needed (-S); hide the base interpreter's installed packages.
    site = os.path.join(prefix, "lib", f"python{sys.version_info[0]}.{sys.version_info[1]}", "site-packages")
    if prefix != "/usr" and os.path.isdir(site):
        argv.extend(["--size", "4096", "--tmpfs", site, "--remount-ro", site])
    argv += [
        "--proc", "/proc",
        "--dev", "/dev",
        "--size", str(cfg.tmpfs_mb * 2**20), "--tmpfs", _WORK_DIR,
        "--ro-bind-data", str(code_fd), f"{_SANDBOX_DIR}/main.py",
        "--remount-ro", "/dev",
        "--remount-ro", "/",
        "--seccomp", str(seccomp_fd),
        "--chdir", _WORK_DIR,
        "--clearenv",
        "--setenv", "HOME", _WORK_DIR,
        "--setenv", "TMPDIR", _WORK_DIR,
        "--setenv", "LANG", "C.UTF-8",
        "--",
        exe, "-I", "-S", "-B", "-X", "utf8", "-c", _LAUNCHER,
        str(cfg.memory_mb * 2**20), str(cfg.cpu_s), str(cfg.max_file_mb * 2**20),
        str(cfg.max_open_files), str(cfg.max_processes), str(report_fd), f"{_SANDBOX_DIR}/main.py",
    ]
    return argv


def _classify(returncode: int) -> str:
    if returncode == 0:
        return "ok"
    if returncode == _MEMORY_RC:
        return "memory"
    if returncode > 128:
        sig = returncode - 128
        return {signal.SIGXCPU: "cpu_limit", signal.SIGXFSZ: "file_limit"}.get(sig, "killed")
    return "error"


def _kill_group(proc: subprocess.Popen) -> None:
    # proc is not reaped yet, so its pid (and so its group id) cannot have been reused.
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _run_sandboxed(program: str, cfg: SandboxConfig, bwrap: str) -> tuple[RunResult, bytes]:
    """Run ``program`` in a sandbox; return the result and what the program wrote to fd 3."""
    arch = _seccomp_arch()
    assert arch is not None
    fds: list[int] = []
    try:
        code_fd = _memfd("sandbox-code", program.encode("utf-8", "surrogatepass"))
        fds.append(code_fd)
        bpf = _seccomp_program(arch, refuse_processes=cfg.max_processes == 1)
        seccomp_fd = _memfd("sandbox-seccomp", bpf)
        fds.append(seccomp_fd)
        report_r, report_w = os.pipe()
        fds += [report_r, report_w]
        argv = _bwrap_argv(bwrap, cfg, code_fd, seccomp_fd, report_w)
        start = time.monotonic()
        proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            pass_fds=(code_fd, seccomp_fd, report_w), start_new_session=True,
            env={},  # bwrap is the sandbox's pid 1 and its environment is readable there (/proc/1/environ)
        )
    except BaseException:
        for fd in fds:
            os.close(fd)
        raise
    os.close(report_w)
    fds.remove(report_w)
    out_fd, err_fd = proc.stdout.fileno(), proc.stderr.fileno()
    caps = {out_fd: cfg.max_output_bytes, err_fd: cfg.max_output_bytes, report_r: _REPORT_CAP}
    bufs: dict[int, bytearray] = {fd: bytearray() for fd in caps}
    reason: str | None = None
    truncated = False
    deadline = start + cfg.timeout_s
    sel = selectors.DefaultSelector()
    try:
        for fd in caps:
            sel.register(fd, selectors.EVENT_READ)
        while sel.get_map() and reason is None:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                reason = "timeout"
                break
            for key, _ in sel.select(remaining):
                chunk = os.read(key.fd, 65536)
                if not chunk:
                    sel.unregister(key.fd)
                    continue
                buf, cap = bufs[key.fd], caps[key.fd]
                buf += chunk[: cap + 1 - len(buf)]
                if len(buf) > cap:  # one byte past the cap: stop reading and kill
                    del buf[cap:]
                    truncated = truncated or key.fd != report_r
                    reason = "output_limit"
                    break
        if reason is None:  # every pipe is closed, but the code may run on with them closed
            try:
                proc.wait(max(deadline - time.monotonic(), 0.0))
            except subprocess.TimeoutExpired:
                reason = "timeout"
    finally:
        _kill_group(proc)
        proc.wait()
        wall = time.monotonic() - start
        # bwrap is gone and its pid namespace with it; the pipes close once the last process of
        # the sandbox has exited, so waiting for that (briefly) leaves nothing behind.
        drain_until = time.monotonic() + 2.0
        while sel.get_map() and time.monotonic() < drain_until:
            for key, _ in sel.select(max(drain_until - time.monotonic(), 0.0)):
                if not os.read(key.fd, 65536):
                    sel.unregister(key.fd)
        sel.close()
        proc.stdout.close()
        proc.stderr.close()
        for fd in fds:
            os.close(fd)
    report = bytes(bufs[report_r])
    stderr = bufs[err_fd].decode("utf-8", "replace")
    if not report.startswith(b"S\n") and reason is None:
        # The launcher never started: bwrap could not build the sandbox or start Python.
        said = stderr.strip()[-500:] or "no message"
        raise SandboxUnavailable(f"the sandbox did not start (exit {proc.returncode}): {said}")
    status = reason or _classify(proc.returncode)
    result = RunResult(
        status=status,
        returncode=None if reason else proc.returncode,
        stdout=bufs[out_fd].decode("utf-8", "replace"),
        stderr=stderr,
        wall_s=wall,
        truncated=truncated,
    )
    return result, report[2:] if report.startswith(b"S\n") else b""


def run_python(code: str, cfg: SandboxConfig | None = None) -> RunResult:
    """Run the Python source ``code`` as ``__main__`` in a fresh sandbox and report what it did.

    Output beyond ``cfg.max_output_bytes`` per stream kills the run (``"output_limit"``); so do
    the wall-clock timeout (``"timeout"``) and the resource limits (see :class:`RunResult`).
    Raises :class:`SandboxUnavailable` when no sandbox can be made here; the code is then not run.
    """
    cfg = cfg or SandboxConfig()
    if not isinstance(code, str):
        raise TypeError(f"code must be str, got {type(code).__name__}")
    ok, reason = sandbox_status()
    if not ok:
        raise SandboxUnavailable(reason)
    if cfg.max_processes > 1 and os.geteuid() == 0:
        raise SandboxUnavailable(
            f"max_processes={cfg.max_processes} cannot be enforced as root: Linux does not apply "
            "RLIMIT_NPROC to root's processes; use max_processes=1 (new processes refused) or run "
            "as an unprivileged user"
        )
    bwrap = _find_bwrap()
    if bwrap is None:  # removed since the status check
        raise SandboxUnavailable(f"bubblewrap (bwrap) is not on PATH: {INSTALL_HINT}")
    return _run_sandboxed(code, cfg, bwrap)[0]


# --------------------------------------------------------------------------- grading

# Runs inside the sandbox: defines the solution, then runs each assert, reporting on fd 3 lines
# "<nonce> <event> <index> <exception>" that the code cannot see through its own output.
_HARNESS = r"""
def _grade(solution, tests, nonce):
    from os import write
    def text(part):
        try:
            return str(part).replace("\n", " ")[:200]
        except BaseException:
            return "?"
    def emit(*parts):
        write(3, (" ".join([nonce] + [text(p) for p in parts]) + "\n").encode("utf-8", "replace"))
    ns = {"__name__": "solution", "__builtins__": __builtins__}  # no `if __name__ == "__main__"` block
    try:
        exec(compile(solution, "solution.py", "exec"), ns)
    except BaseException as exc:
        emit("load_error", -1, type(exc).__name__)
        raise
    for i, test in enumerate(tests):
        emit("start", i)
        try:
            exec(compile(test, "test_%d" % i, "exec"), ns)
        except BaseException as exc:
            emit("fail", i, type(exc).__name__, exc)
        else:
            emit("pass", i)
    emit("done", len(tests))
"""


def _harness_program(code: str, tests: Sequence[str], nonce: str) -> str:
    return f"{_HARNESS}\n_grade({code!r}, {list(tests)!r}, {nonce!r})\ndel _grade\n"


def _parse_report(
    report: bytes, nonce: str, n_tests: int
) -> tuple[dict[int, tuple[str, str]], int | None, bool, str | None]:
    """(outcome per test index, index of the last test started, done seen, load error name)."""
    outcomes: dict[int, tuple[str, str]] = {}
    started: int | None = None
    done, load_error = False, None
    for line in report.decode("utf-8", "replace").splitlines():
        parts = line.split(" ", 4)
        if len(parts) < 3 or parts[0] != nonce:
            continue
        event, index = parts[1], int(parts[2]) if parts[2].lstrip("-").isdigit() else -2
        if event == "load_error":
            load_error = parts[3] if len(parts) > 3 else "Exception"
        elif event == "done":
            done = index == n_tests
        elif 0 <= index < n_tests and index not in outcomes:
            if event == "start":
                started = index
            elif event == "pass":
                outcomes[index] = ("pass", "")
            elif event == "fail":
                name = parts[3] if len(parts) > 3 else "Exception"
                message = parts[4] if len(parts) > 4 else ""
                kind = "fail" if name == "AssertionError" else "memory" if name == "MemoryError" else "error"
                outcomes[index] = (kind, f"{name}: {message}".rstrip(": ") if message else name)
    return outcomes, started, done, load_error


def grade_code(code: str, tests: Sequence[str], cfg: SandboxConfig | None = None) -> GradeResult:
    """Grade ``code`` (a solution's source) on ``tests`` (assert statements) in one sandboxed run.

    The code is defined first, as a module named ``solution`` (so an ``if __name__ ==
    "__main__"`` block of it does not run); then each test runs in the code's namespace, whatever
    earlier tests did. A test passes when it runs without raising. A timeout or limit hit during a test fails
    that test (named by the status) and every test after it (``"not_run"``). ``cfg.timeout_s``
    covers the whole run. Raises :class:`SandboxUnavailable` when no sandbox can be made here.
    """
    if not isinstance(code, str):
        raise TypeError(f"code must be str, got {type(code).__name__}")
    if isinstance(tests, str) or not all(isinstance(t, str) for t in tests):
        raise TypeError("tests must be a list of str (one assert statement each)")
    if len(tests) == 0:
        raise ValueError("tests is empty: there is nothing to grade the code on")
    nonce = secrets.token_hex(16)
    cfg = cfg or SandboxConfig()
    ok, reason = sandbox_status()
    if not ok:
        raise SandboxUnavailable(reason)
    bwrap = _find_bwrap()
    if bwrap is None:
        raise SandboxUnavailable(f"bubblewrap (bwrap) is not on PATH: {INSTALL_HINT}")
    run, report = _run_sandboxed(_harness_program(code, tests, nonce), cfg, bwrap)
    return _verdict(run, report, nonce, len(tests))


def _verdict(run: RunResult, report: bytes, nonce: str, n_tests: int) -> GradeResult:
    outcomes, started, done, load_error = _parse_report(report, nonce, n_tests)
    cases = []
    for i in range(n_tests):
        if i in outcomes:
            cases.append(outcomes[i][0])
        elif i == started:  # the process ended during this test
            cases.append(run.status if run.status != "ok" else "error")
        else:
            cases.append("not_run")
    n_passed = cases.count("pass")
    lines = [f"test {i}: {outcomes[i][1]}" for i in sorted(outcomes) if outcomes[i][0] != "pass"]
    stderr_tail = run.stderr.strip().splitlines()[-1:] if run.stderr.strip() else []
    if load_error is not None:
        status = "memory" if run.status == "memory" else "error"
        lines.insert(0, f"the code raised {load_error} when defined: {' '.join(stderr_tail)}".rstrip(": "))
    elif run.status != "ok":
        status = run.status
        where = f" during test {started}" if started is not None and started not in outcomes else ""
        code = f" (exit {run.returncode})" if run.returncode is not None else ""
        lines.append(f"{run.status}{where}{code} {' '.join(stderr_tail)}".rstrip())
    elif not done:
        status = "error"
        lines.append("the code ended the process before every test had run")
    else:
        status = "passed" if n_passed == n_tests else "memory" if "memory" in cases else "failed"
    detail = f"{n_passed}/{n_tests} tests passed" + ("; " + "; ".join(lines) if lines else "")
    return GradeResult(
        passed=status == "passed",
        n_passed=n_passed,
        n_tests=n_tests,
        status=status,
        detail=detail,
        cases=tuple(cases),
        wall_s=run.wall_s,
    )


def grade_many(
    items: Sequence[tuple[str, Sequence[str]]],
    cfg: SandboxConfig | None = None,
    workers: int | None = None,
    progress: bool = True,
) -> list[GradeResult]:
    """Grade ``items`` (pairs of code and its asserts), in order, each in its own sandbox.

    ``workers`` sandboxes run at once (default: the CPU count, at most 4). A failing, crashing or
    runaway solution never stops the others; a failure of the grader itself on one item gives
    status ``"sandbox_error"`` there. Raises :class:`SandboxUnavailable` up front when no sandbox
    can be made here. ``progress`` shows a tqdm text bar on stderr.
    """
    from tqdm import tqdm

    items = list(items)
    for k, item in enumerate(items):
        if not (isinstance(item, (tuple, list)) and len(item) == 2 and isinstance(item[0], str)):
            raise TypeError(f"item {k} must be a (code, tests) pair")
        if isinstance(item[1], str) or not item[1] or not all(isinstance(t, str) for t in item[1]):
            raise ValueError(f"item {k}: tests must be a non-empty list of str")
    ok, reason = sandbox_status()
    if not ok:
        raise SandboxUnavailable(reason)
    cfg = cfg or SandboxConfig()
    workers = workers or min(4, os.cpu_count() or 1)
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")

    def one(item: tuple[str, Sequence[str]]) -> GradeResult:
        try:
            return grade_code(item[0], item[1], cfg)
        except Exception as exc:  # the grader's failure, not the code's: keep going, say so
            return GradeResult(False, 0, len(item[1]), "sandbox_error", f"{type(exc).__name__}: {exc}",
                               ("not_run",) * len(item[1]))

    results: list[GradeResult | None] = [None] * len(items)
    with tqdm(total=len(items), desc="grading", unit="item", disable=not progress, ascii=True) as bar:
        if workers == 1:
            for k, item in enumerate(items):
                results[k] = one(item)
                bar.update(1)
        else:
            with ThreadPoolExecutor(max_workers=workers) as pool:
                futures = {pool.submit(one, item): k for k, item in enumerate(items)}
                for fut in as_completed(futures):
                    results[futures[fut]] = fut.result()
                    bar.update(1)
    assert all(r is not None for r in results)
    return results  # type: ignore[return-value]
