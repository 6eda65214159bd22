"""Grade generated code on hidden tests that the code can neither read nor forge.

The solution is loaded in a sandbox (:mod:`infra_study.sandbox`) as a module named ``solution``;
the tests never enter it. They run here, in the grader, where each function of the solution is a
proxy (:class:`_Candidate`) that calls it in the sandbox over a pipe, with arguments and result
copied as plain values. So the code sees the arguments of its calls and nothing else of a test:
not its source, not its expected values; it cannot write the verdict (its replies are values,
rebuilt here from plain data before any comparison, so an object whose ``__eq__`` always returns
True never reaches an assert), and cannot shadow a built-in the tests call. HumanEval's
``check(candidate)`` is one such test. The tests are trusted code and run in this process.

Known limits: results other than plain values (objects, generators) cannot leave the sandbox, so
a test that needs one fails; arguments must be plain values too.
"""
from __future__ import annotations

import builtins
import json
import marshal
import os
import re
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass

from .sandbox import (
    _MESSAGE_CAP,
    RunResult,
    SandboxConfig,
    SandboxUnavailable,
    _ready_bwrap,
    _Sandbox,
    sandbox_status,
)

__all__ = ["GradeResult", "SolutionError", "grade_code", "grade_many"]


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


# --------------------------------------------------------------------------- values across the pipe


class SolutionError(Exception):
    """An exception the solution raised whose type has no built-in counterpart here (``name`` keeps its type name)."""

    def __init__(self, name: str, message: str):
        self.name = name
        super().__init__(message)


class _RunEnded(BaseException):
    """The sandboxed process ended (or broke the protocol) during a call: no test after it can run.
    A BaseException, so that a test's own ``except Exception`` does not swallow it."""


_MAX_DEPTH = 100


def _decode(v, depth: int = 0):
    """A value written by the sandbox's ``enc``, rebuilt from plain types only: JSON null, booleans,
    numbers, strings and lists as themselves; one-key objects as tagged values: ``{"t": [...]}``
    tuple, ``{"d": [[k, v], ...]}`` dict, ``{"s": ...}`` set, ``{"f": ...}`` frozenset, ``{"b": hex}``
    bytes, ``{"i": hex}`` a big int, ``{"c": [re, im]}`` complex. Anything else raises ValueError."""
    if depth > _MAX_DEPTH:
        raise ValueError(f"nested more than {_MAX_DEPTH} deep")
    t = type(v)
    if v is None or t in (bool, int, float, str):
        return v
    if t is list:
        return [_decode(x, depth + 1) for x in v]
    if t is dict and len(v) == 1:
        (tag, x), = v.items()
        if tag in ("t", "s", "f") and type(x) is list:
            items = [_decode(e, depth + 1) for e in x]
            return tuple(items) if tag == "t" else set(items) if tag == "s" else frozenset(items)
        if tag == "d" and type(x) is list and all(type(p) is list and len(p) == 2 for p in x):
            return {_decode(k, depth + 1): _decode(e, depth + 1) for k, e in x}
        if tag == "b" and type(x) is str:
            return bytes.fromhex(x)
        if tag == "i" and type(x) is str and len(x) < _MESSAGE_CAP:
            return int(x, 16)
        if tag == "c" and type(x) is list and len(x) == 2 and all(type(e) is float for e in x):
            return complex(*x)
    raise ValueError(f"not a value the harness writes: {str(v)[:60]}")


def _exception(name: str, message: str) -> Exception:
    """The solution's exception as one of ours: the built-in type of that name, else :class:`SolutionError`."""
    cls = getattr(builtins, name, None)
    if isinstance(cls, type) and issubclass(cls, Exception):
        try:
            return cls(message)
        except Exception:  # a type that wants other arguments (UnicodeDecodeError)
            pass
    return SolutionError(name, message)


def _copy_back(target, value) -> None:
    """Give a list/dict/set argument the contents the solution left in its copy."""
    if type(target) is list and type(value) is list:
        target[:] = value
    elif type(target) in (dict, set) and type(value) is type(target):
        target.clear()
        target.update(value)


class _Session:
    """The grader's side of a serving sandbox: proxies for the solution's functions."""

    def __init__(self, box: _Sandbox):
        self.box = box
        self.ended = False

    def reply(self) -> dict:
        """The next reply as a dict; raises :class:`_RunEnded` when none can come."""
        frame = None if self.ended else self.box.receive()
        if frame is not None:
            try:
                msg = json.loads(frame)
            except (ValueError, RecursionError):
                msg = None
            if type(msg) is dict and len(msg) >= 1:
                return msg
            self.box.reason = "error"
            self.box.problem = "the code wrote into the harness's reply channel (not a reply)"
        self.ended = True
        raise _RunEnded()

    def call(self, name: str, args: tuple, kwargs: dict):
        if self.ended:
            raise _RunEnded()
        watched = [i for i, a in enumerate(args) if type(a) in (list, dict, set)]
        watched += [k for k, a in kwargs.items() if type(a) in (list, dict, set)]
        try:
            payload = marshal.dumps((name, args, kwargs, watched))
        except ValueError:
            raise TypeError(f"{name}(): an argument cannot be passed into the sandbox (only None, bool, int, "
                            f"float, complex, str, bytes, and tuples, lists, dicts and sets of them)") from None
        if not self.box.send(payload):
            self.ended = True
            raise _RunEnded()
        msg = self.reply()
        try:
            outcome = _outcome(msg, name, args, kwargs, watched)
        except (KeyError, IndexError, ValueError, TypeError, RecursionError, OverflowError):
            self.box.reason = "error"
            self.box.problem = "the code wrote into the harness's reply channel (a malformed reply)"
            self.ended = True
            raise _RunEnded() from None
        if isinstance(outcome, Exception):
            raise outcome
        return outcome


def _outcome(msg: dict, name: str, args: tuple, kwargs: dict, watched: list):
    """The value a reply returns (list/dict/set arguments updated), or the exception it raises."""
    if "e" in msg:
        kind, message = msg["e"]
        return _exception(str(kind), str(message))
    if "u" in msg:
        return TypeError(f"{name}() returned {str(msg['u'])[:200]}, which cannot leave the sandbox "
                         f"(only None, bool, int, float, complex, str, bytes, and containers of them)")
    value = _decode(msg["r"])
    for key, new in msg["m"]:
        if key in watched:
            _copy_back(args[key] if type(key) is int else kwargs[key], _decode(new))
    return value


class _Candidate:
    """Stands for one function of the solution in the tests: calling it calls it in the sandbox,
    with arguments and result copied as plain values (so a test compares values it built itself)."""

    def __init__(self, session: _Session, name: str):
        self._session, self.__name__ = session, name

    def __call__(self, *args, **kwargs):
        return self._session.call(self.__name__, args, kwargs)

    def __repr__(self) -> str:
        return f"<solution function {self.__name__} (runs in the sandbox)>"


# --------------------------------------------------------------------------- grading

_ANSI = re.compile(r"\x1b(?:\[[0-?]*[ -/]*[@-~]|\][^\x07\x1b]*(?:\x07|\x1b\\)?|[PX^_][^\x1b]*(?:\x1b\\)?|[@-Z\\-_])")


def _printable(text: str, limit: int = 200) -> str:
    """``text`` safe to show in a terminal: escape sequences removed, other control, format (bidi,
    zero-width) and separator characters but the space replaced by ``?``, newlines by spaces, cut
    at ``limit`` characters."""
    text = _ANSI.sub("", str(text)).replace("\r\n", " ").replace("\n", " ").replace("\t", " ")
    return "".join(ch if ch.isprintable() else "?" for ch in text[: limit + 1])[:limit]


@dataclass
class _Graded:
    """What the tests saw: one outcome per test run, and where the run stopped."""

    outcomes: list[tuple[str, str]]  # (case, "Name: message") per test that ran to an end
    load_error: str | None = None  # "Name: message" when the solution did not load
    ended_in: int | None = None  # the test during which the sandboxed process ended


def _run_tests(session: _Session, tests: Sequence[str]) -> _Graded:
    """Load the solution, then run each test here, in one namespace that holds a
    :class:`_Candidate` per function of the solution (built-in names are never shadowed)."""
    got = _Graded([])
    try:
        ready = session.reply()
    except _RunEnded:
        got.load_error = ""
        return got
    if "e" in ready:
        try:
            kind, message = ready["e"]
            got.load_error = f"{_printable(kind, 60)}: {_printable(message)}".rstrip(": ")
        except (TypeError, ValueError):
            got.load_error = "?"
        return got
    names = ready.get("ready")
    if type(names) is not list:  # only the code itself writes anything else first
        session.box.reason = "error"
        session.box.problem = "the code wrote into the harness's reply channel (not a reply)"
        got.load_error = ""
        return got
    ns: dict = {"__builtins__": builtins, "__name__": "tests"}
    for name in names:
        if type(name) is str and name.isidentifier() and not hasattr(builtins, name):
            ns[name] = _Candidate(session, name)
    for i, test in enumerate(tests):
        try:
            exec(compile(test, f"test_{i}", "exec"), ns)
        except _RunEnded:
            got.ended_in = i
            break
        except Exception as exc:
            kind = exc.name if isinstance(exc, SolutionError) else type(exc).__name__
            case = "fail" if kind == "AssertionError" else "memory" if kind == "MemoryError" else "error"
            said = f"{_printable(kind, 60)}: {_printable(exc)}".rstrip(": ")
            got.outcomes.append((case, said))
        else:
            got.outcomes.append(("pass", ""))
    return got


def grade_code(code: str, tests: Sequence[str], cfg: SandboxConfig | None = None) -> GradeResult:
    """Grade ``code`` (a solution's source) on ``tests`` (Python statements, e.g. asserts).

    The code is defined in a sandbox as a module named ``solution`` (so an ``if __name__ ==
    "__main__"`` block of it does not run). The tests never enter the sandbox: they run here, one
    after the other in one namespace, where each function of the solution is a proxy that calls it
    in the sandbox over a pipe, its arguments and result copied as plain values (None, bool,
    numbers, str, bytes and tuples, lists, dicts and sets of them; list, dict and set arguments
    get back what the function left in them). So the code sees the arguments of its calls, never
    a test's source or expected values, and what a test compares is a value the grader rebuilt,
    not an object of the code's. HumanEval's ``check(candidate)`` works as a test:
    ``"def check(candidate): ...\\ncheck(f)"``. A test passes when it runs without raising. A
    timeout or limit hit during a test fails that test (named by the status) and every test after
    it (``"not_run"``). ``cfg.timeout_s`` covers the whole run. The tests are trusted code: they
    run in this process. Raises :class:`SandboxUnavailable` when no sandbox can be made here.
    """
    if not isinstance(code, str):
        raise TypeError(f"code must be str, got {type(code).__name__}")
    if isinstance(tests, str) or not all(isinstance(t, str) for t in tests):
        raise TypeError("tests must be a list of str (one assert statement each)")
    if len(tests) == 0:
        raise ValueError("tests is empty: there is nothing to grade the code on")
    cfg = cfg or SandboxConfig()
    box = _Sandbox(code, cfg, _ready_bwrap(cfg), "serve")
    try:
        graded = _run_tests(_Session(box), tests)
    finally:
        run = box.finish()
    return _verdict(run, graded, len(tests), box.problem)


_LIMITS = ("timeout", "cpu_limit", "memory", "output_limit", "file_limit", "crashed", "killed")


def _verdict(run: RunResult, got: _Graded, n_tests: int, problem: str) -> GradeResult:
    cases = [case for case, _ in got.outcomes]
    stopped = None if len(cases) == n_tests else len(cases)  # the first test that did not run to an end
    if stopped is not None and got.load_error is None:
        cases.append(run.status if run.status not in ("ok", "error") else "error")
    cases += ["not_run"] * (n_tests - len(cases))
    n_passed = cases.count("pass")
    lines = [f"test {i}: {said}" for i, (case, said) in enumerate(got.outcomes) if case != "pass"]
    stderr_tail = _printable(run.stderr.strip().splitlines()[-1]) if run.stderr.strip() else ""
    how = run.status + (f" by {run.signal}" if run.signal else "")
    if run.returncode is not None and run.status not in ("ok", "memory"):
        how += f" (exit {run.returncode})"
    if problem:
        how += f": {problem}"
    if got.load_error is not None:
        status = run.status if run.status in _LIMITS else "error"
        said = got.load_error or stderr_tail or "no message"
        lines.insert(0, f"the code did not load ({how}): {said}" if run.status != "error" or not got.load_error
                     else f"the code raised {said} when defined")
    elif run.status != "ok" and (stopped is not None or run.status != "error"):
        status = run.status
        where = f" during test {stopped}" if stopped is not None else " after the tests"
        lines.append(f"{how}{where}" + (f": {stderr_tail}" if stderr_tail and not problem else ""))
    elif stopped is not None:
        status = "error"
        lines.append(f"the code ended the process during test {stopped}")
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
