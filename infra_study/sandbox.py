"""Run untrusted generated Python in a bubblewrap sandbox (grading on hidden tests: :mod:`infra_study.grading`).

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

A run talks to the parent over two pipes (requests in, replies out): :func:`run_python` runs a
program as ``__main__``; grading (:mod:`infra_study.grading`) loads a solution as a module and
calls its functions from tests that never enter the sandbox.

Known limits: threads are allowed (bounded only through ``memory_mb``: each reserves a stack and
often a malloc arena, a handful at 256 MiB); code that ignores SIGXCPU is ended by the hard CPU
limit with SIGKILL (status ``killed``).
"""
from __future__ import annotations

import math
import os
import platform
import selectors
import shutil
import signal
import struct
import subprocess
import sys
import threading
import time
from dataclasses import dataclass

__all__ = [
    "SandboxConfig",
    "SandboxUnavailable",
    "RunResult",
    "sandbox_status",
    "run_python",
]

INSTALL_HINT = "install Debian's bubblewrap: apt-get install -y bubblewrap"

_MEMORY_RC = 213  # launcher exit status for a MemoryError that reached the top level
_MESSAGE_CAP = 4 << 20  # bytes of one reply of the solution (a return value) before it counts as flooding
_SANDBOX_DIR = "/sandbox"  # read-only folder inside the sandbox holding the program
_WORK_DIR = "/tmp"  # the private tmpfs: working directory and /tmp at once


class SandboxUnavailable(RuntimeError):
    """No sandbox can be made here (the message says why and what to install or change)."""


@dataclass(frozen=True)
class SandboxConfig:
    """Limits of one sandboxed run (the defaults suit one generated solution and its asserts)."""

    timeout_s: float = 5.0
    """Wall-clock seconds the sandboxed code may take before it is killed (status ``"timeout"``):
    the time the grader waits on it; time the tests spend in the grader itself does not count."""
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
    ``"memory"``, ``"output_limit"``, ``"file_limit"``, ``"crashed"`` (SIGSEGV, SIGBUS, SIGILL,
    SIGFPE, SIGABRT, SIGSYS) or ``"killed"`` (another signal); ``signal`` names the signal."""
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
    signal: str | None = None
    """The signal that ended the code, e.g. ``"SIGSEGV (Segmentation fault)"``; None otherwise."""


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
            res = _run_sandboxed("print(6 * 7)\n", SandboxConfig(timeout_s=30.0), bwrap)
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

# Runs inside the sandbox as the module ``solution``; answers calls from the tests outside. A
# request is marshal data (name, args, kwargs, watched) from the trusted grader; a reply is JSON
# written here by hand (``_json`` is a C module: no import cost) with values tagged by type (see
# ``grading._decode``): {"ready": [names]}, {"r": value, "m": [[arg, value], ...]} (a return value and
# the new contents of the list/dict/set arguments named in ``watched``), {"e": [type, message]}
# (an exception) or {"u": type} (a return value that cannot leave the sandbox).
_SERVE = r'''
def _serve(src, send):
    import marshal, builtins
    from _json import encode_basestring_ascii as q
    rf = os.fdopen(3, "rb")
    def recv():
        head = rf.readline(32)
        return marshal.loads(rf.read(int(head))) if head else None
    def enc(v, depth=0):
        if depth > 100:
            raise ValueError("nested more than 100 deep")
        if v is None:
            return "null"
        if v is True or v is False:
            return "true" if v else "false"
        if isinstance(v, int):
            v = int.__index__(v)
            return repr(v) if -2**53 < v < 2**53 else '{"i":"%x"}' % v
        if isinstance(v, float):
            v = float.__float__(v)
            return repr(v) if v - v == 0 else "NaN" if v != v else "Infinity" if v > 0 else "-Infinity"
        if isinstance(v, complex):
            return '{"c":[%s,%s]}' % (enc(float(v.real)), enc(float(v.imag)))
        if isinstance(v, str):
            return q(v)
        if isinstance(v, (bytes, bytearray)):
            return '{"b":"%s"}' % bytes(v).hex()
        if isinstance(v, list):
            return "[" + ",".join([enc(x, depth + 1) for x in v]) + "]"
        if isinstance(v, dict):
            return '{"d":[%s]}' % ",".join(["[%s,%s]" % (enc(k, depth + 1), enc(x, depth + 1)) for k, x in v.items()])
        for kind, tag in ((tuple, "t"), (frozenset, "f"), (set, "s")):
            if isinstance(v, kind):
                return '{"%s":[%s]}' % (tag, ",".join([enc(x, depth + 1) for x in v]))
        raise TypeError(type(v).__name__)
    def text(exc):
        try:
            return q(str(exc)[:1000])
        except BaseException:
            return '"?"'
    def error(exc):
        return ('{"e":[%s,%s]}' % (q(str(type(exc).__name__)[:200]), text(exc))).encode()
    out_of_memory = b'{"e":["MemoryError","the sandbox memory limit was reached"]}'
    ns = {"__name__": "solution", "__builtins__": builtins}  # no `if __name__ == "__main__"` block
    try:
        exec(compile(src, "solution.py", "exec"), ns)
    except BaseException as exc:
        import traceback
        traceback.print_exception(type(exc), exc, exc.__traceback__.tb_next)
        send(out_of_memory if isinstance(exc, MemoryError) else error(exc))
        sys.stdout.flush()
        os._exit(MEMORY_RC if isinstance(exc, MemoryError) else 1)
    names = [k for k, v in list(ns.items()) if isinstance(k, str) and not k.startswith("__") and callable(v)]
    send(('{"ready":[%s]}' % ",".join(q(k) for k in names)).encode())
    while True:
        req = recv()
        if req is None:
            break
        name, args, kwargs, watched = req
        try:
            result = ns[name](*args, **kwargs)
        except MemoryError:
            reply = out_of_memory
        except BaseException as exc:
            reply = error(exc)
        else:
            try:
                moved = ",".join(["[%s,%s]" % (enc(k), enc(args[k] if type(k) is int else kwargs[k])) for k in watched])
                reply = ('{"r":%s,"m":[%s]}' % (enc(result), moved)).encode()
            except MemoryError:
                reply = out_of_memory
            except BaseException as exc:
                reply = ('{"u":%s}' % q("%s (%s)" % (type(result).__name__, type(exc).__name__))).encode()
            del result
        send(reply)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
'''

_LAUNCHER = r"""
import os, sys, resource as R
mem, cpu, fsize, nofile, nproc, rq, rp = (int(x) for x in sys.argv[1:8])
path, mode = sys.argv[8:10]
MEMORY_RC = %(memory_rc)d
a, b = os.dup(rq), os.dup(rp)
os.dup2(a, 3)
os.dup2(b, 4)
os.closerange(5, 1 << 20)

def send(data):
    data = b"%%d\n" %% len(data) + data
    while data:
        data = data[os.write(4, data):]

send(b"S")
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
del mem, cpu, fsize, nofile, nproc, rq, rp, a, b, fh, R
%(serve)s
if mode == "serve":
    _serve(src, send)
del _serve, send
os.close(3)
os.close(4)
try:
    exec(compile(src, path, "exec"), {"__name__": "__main__", "__file__": path, "__builtins__": __builtins__})
except MemoryError:
    try:
        os.write(2, b"MemoryError: the sandbox memory limit was reached\n")
        sys.stdout.flush()
    finally:
        os._exit(MEMORY_RC)
except SystemExit:
    raise
except BaseException as exc:
    import traceback
    traceback.print_exception(type(exc), exc, exc.__traceback__.tb_next)
    sys.exit(1)
""" % {"memory_rc": _MEMORY_RC, "serve": _SERVE}


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


def _bwrap_argv(bwrap: str, cfg: SandboxConfig, code_fd: int, seccomp_fd: int, request_fd: int, reply_fd: int,
                mode: str) -> list[str]:
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
        str(cfg.max_open_files), str(cfg.max_processes), str(request_fd), str(reply_fd),
        f"{_SANDBOX_DIR}/main.py", mode,
    ]
    return argv


_CRASH_SIGNALS = {signal.SIGSEGV, signal.SIGBUS, signal.SIGILL, signal.SIGFPE, signal.SIGABRT, signal.SIGSYS}


def _signal_name(number: int) -> str:
    """``"SIGSEGV (Segmentation fault)"`` for 11; ``"signal 77"`` for a number without a name."""
    try:
        name = signal.Signals(number).name
    except ValueError:
        return f"signal {number}"
    said = signal.strsignal(number)
    return f"{name} ({said})" if said else name


def _classify(returncode: int) -> tuple[str, str | None]:
    """(status, signal name or None) of an exit status (128 + n when bwrap saw signal n end the code)."""
    if returncode == 0:
        return "ok", None
    if returncode == _MEMORY_RC:
        return "memory", None
    if returncode <= 128:
        return "error", None
    sig = returncode - 128
    if sig == signal.SIGXCPU:
        return "cpu_limit", _signal_name(sig)
    if sig == signal.SIGXFSZ:
        return "file_limit", _signal_name(sig)
    return ("crashed" if sig in _CRASH_SIGNALS else "killed"), _signal_name(sig)


_FRAME_HEAD = 24  # most bytes a frame's "<length>\n" may take


class _Protocol(Exception):
    """The reply channel carried something the launcher never writes: the code wrote into it."""


class _Sandbox:
    """One bwrap run: started on construction, talked to with :meth:`send` / :meth:`receive`,
    ended by :meth:`finish` (always called, also on errors), which kills and reaps it."""

    def __init__(self, program: str, cfg: SandboxConfig, bwrap: str, mode: str):
        arch = _seccomp_arch()
        assert arch is not None
        self.cfg = cfg
        fds: list[int] = []
        try:
            fds.append(_memfd("sandbox-code", program.encode("utf-8", "surrogatepass")))
            fds.append(_memfd("sandbox-seccomp", _seccomp_program(arch, refuse_processes=cfg.max_processes == 1)))
            request_r, self.request_w = os.pipe()
            fds += [request_r, self.request_w]
            self.reply_r, reply_w = os.pipe()
            fds += [self.reply_r, reply_w]
            argv = _bwrap_argv(bwrap, cfg, fds[0], fds[1], request_r, reply_w, mode)
            self.start = time.monotonic()
            self.proc = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                pass_fds=(fds[0], fds[1], request_r, reply_w), start_new_session=True,
                env={},  # bwrap is the sandbox's pid 1 and its environment is readable there (/proc/1/environ)
            )
        except BaseException:
            for fd in fds:
                os.close(fd)
            raise
        for fd in (fds[0], fds[1], request_r, reply_w):  # the sandbox holds its own copies
            os.close(fd)
        os.set_blocking(self.request_w, False)
        if mode != "serve":
            os.close(self.request_w)
            self.request_w = -1
        self.out_fd, self.err_fd = self.proc.stdout.fileno(), self.proc.stderr.fileno()
        self.bufs = {self.out_fd: bytearray(), self.err_fd: bytearray()}
        self.inbox = bytearray()  # reply bytes not yet taken as frames
        self.outbox = memoryview(b"")  # request bytes not yet written
        self.waited = 0.0  # seconds spent waiting on the sandbox (the tests' own time here is not the code's)
        self.reason: str | None = None  # why the parent ends the run early: a status of RunResult
        self.problem = ""  # what went wrong with the channel, for a reader
        self.truncated = False
        self.started = False  # the launcher's b"S" arrived
        self.sel = selectors.DefaultSelector()
        for fd in (self.out_fd, self.err_fd, self.reply_r):
            self.sel.register(fd, selectors.EVENT_READ)

    # -- the event loop: one round of reads and writes, bounded by the time left to wait
    def _round(self) -> None:
        if self.waited >= self.cfg.timeout_s:
            self.reason = "timeout"
            return
        t0 = time.monotonic()
        events = self.sel.select(self.cfg.timeout_s - self.waited)
        self.waited += time.monotonic() - t0
        for key, _ in events:
            if key.fd == self.request_w:
                try:
                    self.outbox = self.outbox[os.write(self.request_w, self.outbox):]
                except BlockingIOError:
                    continue
                except BrokenPipeError:  # the code closed or lost its end: it gets no more calls
                    self.outbox = memoryview(b"")
                if not self.outbox:
                    self.sel.unregister(self.request_w)
                continue
            chunk = os.read(key.fd, 65536)
            if not chunk:
                self.sel.unregister(key.fd)
                continue
            if key.fd == self.reply_r:
                self.inbox += chunk
                if len(self.inbox) > _MESSAGE_CAP + _FRAME_HEAD:
                    self.reason, self.problem = "output_limit", f"a reply of more than {_MESSAGE_CAP} bytes"
                    return
                continue
            buf, cap = self.bufs[key.fd], self.cfg.max_output_bytes
            buf += chunk[: cap + 1 - len(buf)]
            if len(buf) > cap:  # one byte past the cap: stop reading and kill
                del buf[cap:]
                self.truncated = True
                self.reason = "output_limit"
                return

    def _frame(self) -> bytes | None:
        """The next whole frame of the reply channel, or None when it has not all arrived."""
        head, sep, _ = bytes(self.inbox[:_FRAME_HEAD]).partition(b"\n")
        if not sep:
            if len(self.inbox) >= _FRAME_HEAD:
                raise _Protocol("a frame without a length")
            return None
        if not head.isdigit():
            raise _Protocol("a frame without a length")
        n = int(head)
        if n > _MESSAGE_CAP:
            self.reason, self.problem = "output_limit", f"a reply of {n} bytes (at most {_MESSAGE_CAP})"
            return None
        if len(self.inbox) < len(head) + 1 + n:
            return None
        frame = bytes(self.inbox[len(head) + 1: len(head) + 1 + n])
        del self.inbox[: len(head) + 1 + n]
        return frame

    def receive(self) -> bytes | None:
        """The next reply frame; None when the run ended (or must end) before one came."""
        while self.reason is None:
            try:
                frame = self._frame()
            except _Protocol as exc:
                self.reason, self.problem = "error", f"the code wrote into the harness's reply channel ({exc})"
                return None
            if self.reason is not None:
                return None
            if frame is not None:
                if not self.started:
                    if frame != b"S":
                        self.reason, self.problem = "error", "the sandbox's first reply was not the launcher's"
                        return None
                    self.started = True
                    continue
                return frame
            if self.reply_r not in self.sel.get_map():
                return None  # the channel closed: the process ended
            self._round()
        return None

    def send(self, payload: bytes) -> bool:
        """Queue a request frame and write it while reading; False when the run ended first."""
        if self.request_w < 0 or self.reason is not None:
            return False
        self.outbox = memoryview(b"%d\n" % len(payload) + payload)
        try:
            self.outbox = self.outbox[os.write(self.request_w, self.outbox):]
        except BlockingIOError:
            pass
        except BrokenPipeError:  # the code closed or lost its end: it gets no more calls
            return False
        if self.outbox:
            self.sel.register(self.request_w, selectors.EVENT_WRITE)
        while self.outbox and self.reason is None:
            self._round()
        return not self.outbox and self.reason is None

    def finish(self) -> RunResult:
        """Close the requests, let the code end (within the time left), kill the group, reap, and
        report. Raises :class:`SandboxUnavailable` when the launcher never started."""
        proc = self.proc
        try:
            if self.request_w >= 0:
                if self.request_w in self.sel.get_map():
                    self.sel.unregister(self.request_w)
                os.close(self.request_w)  # end of requests: a serving launcher exits 0
                self.request_w = -1
            while self.reason is None and self.sel.get_map():
                self._round()
            if self.reason is None:  # every pipe is closed, but the code may run on with them closed
                delay = 0.0005
                while os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is None:
                    if self.waited >= self.cfg.timeout_s:
                        self.reason = "timeout"
                        break
                    time.sleep(delay)
                    self.waited += delay
                    delay = min(2 * delay, 0.01)
        finally:
            # not reaped yet, so its pid (and so its group id) cannot have been reused
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait()
            wall = time.monotonic() - self.start
            # bwrap is gone and its pid namespace with it; the pipes close once the last process of
            # the sandbox has exited, so waiting for that (briefly) leaves nothing behind.
            drain_until = time.monotonic() + 2.0
            while self.sel.get_map() and time.monotonic() < drain_until:
                for key, _ in self.sel.select(max(drain_until - time.monotonic(), 0.0)):
                    if key.fd == self.request_w or not os.read(key.fd, 65536):
                        self.sel.unregister(key.fd)
            self.sel.close()
            proc.stdout.close()
            proc.stderr.close()
            os.close(self.reply_r)
            if self.request_w >= 0:
                os.close(self.request_w)
        if not self.started and self.inbox.startswith(b"1\nS"):
            self.started = True
        stderr = self.bufs[self.err_fd].decode("utf-8", "replace")
        if not self.started and self.reason is None:
            # The launcher never started: bwrap could not build the sandbox or start Python.
            said = stderr.strip()[-500:] or "no message"
            raise SandboxUnavailable(f"the sandbox did not start (exit {proc.returncode}): {said}")
        status, sig = (self.reason, None) if self.reason else _classify(proc.returncode)
        return RunResult(
            status=status,
            returncode=None if self.reason else proc.returncode,
            stdout=self.bufs[self.out_fd].decode("utf-8", "replace"),
            stderr=stderr,
            wall_s=wall,
            truncated=self.truncated,
            signal=sig,
        )


def _run_sandboxed(program: str, cfg: SandboxConfig, bwrap: str) -> RunResult:
    """Run ``program`` as ``__main__`` in a sandbox and report what it did."""
    return _Sandbox(program, cfg, bwrap, "main").finish()


def _ready_bwrap(cfg: SandboxConfig) -> str:
    """bwrap's path once a sandbox is known to work here; raises :class:`SandboxUnavailable`."""
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
    return bwrap


def run_python(code: str, cfg: SandboxConfig | None = None) -> RunResult:
    """Run the Python source ``code`` as ``__main__`` in a fresh sandbox and report what it did.

    Output beyond ``cfg.max_output_bytes`` per stream kills the run (``"output_limit"``); so do
    the wall-clock timeout (``"timeout"``) and the resource limits (see :class:`RunResult`).
    Raises :class:`SandboxUnavailable` when no sandbox can be made here; the code is then not run.
    """
    cfg = cfg or SandboxConfig()
    if not isinstance(code, str):
        raise TypeError(f"code must be str, got {type(code).__name__}")
    return _run_sandboxed(code, cfg, _ready_bwrap(cfg))
