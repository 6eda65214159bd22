"""Grading speed of the code sandbox: the tiny evaluation's code test problems, each graded with its
correct solution and with a wrong one (off by one), all in one ``grade_many`` call.

Run: ``python bench/grading_speed.py [--n 20] [--workers 2] [--grader path/to/module.py]``
(``--grader`` grades with another module that has ``grade_many``, e.g. an older one, for a before/after).
Prints solutions per second and the verdict counts (every correct one must pass, no wrong one).
"""
from __future__ import annotations

import argparse
import importlib.util
import sys
import time

from infra_study.corpus import CorpusConfig, extract_code, generate_corpus


def solutions(n_per_level: int) -> list[tuple[str, list[str], bool]]:
    """(code, tests, is_correct) for the code test split: a correct and a wrong solution each."""
    cfg = CorpusConfig(n_base=1, n_train=1, n_query=1, n_test=n_per_level, domains=("code",))
    out = []
    for r in generate_corpus(cfg)["test"]:
        code = extract_code(r["response"])
        out.append((code, r["tests"], True))
        out.append((code + "\n_right = f\ndef f(*args):\n    return _right(*args) + 1\n", r["tests"], False))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=20, help="code test problems per level (5 levels)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--grader", help="path of a module with grade_many to time (default: infra_study.grading)")
    args = ap.parse_args()
    if args.grader:
        spec = importlib.util.spec_from_file_location("grader_under_test", args.grader)
        grader = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = grader  # dataclasses look their module up there
        spec.loader.exec_module(grader)
    else:
        from infra_study import grading as grader
    items = solutions(args.n)
    grader.sandbox_status()  # the one-off probe is not part of the timing
    for _ in range(args.repeat):
        t0 = time.perf_counter()
        res = grader.grade_many([(c, t) for c, t, _ in items], workers=args.workers, progress=False)
        wall = time.perf_counter() - t0
        right = sum(r.passed == ok for r, (_, _, ok) in zip(res, items))
        print(f"{len(items)} solutions in {wall:.2f} s ({len(items) / wall:.1f}/s, "
              f"{1000 * wall / len(items) * args.workers:.1f} ms each per worker); verdicts right: {right}/{len(items)}")


if __name__ == "__main__":
    main()
