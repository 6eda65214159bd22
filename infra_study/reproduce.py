"""Run every notebook of the book under a profile: ``python -m infra_study.reproduce --profile tiny``.

Each ``notebooks/NN_*.py`` (jupytext percent format) is paired to an ``.ipynb`` and executed
with papermill, in order, with the profile name (and any overrides) injected into its
``parameters`` cell. Executed notebooks land in ``book/_generated/``, which the book renders.
Artifacts are cached under ``runs/<profile>/`` by the library itself, so a second run reuses
what is still valid.

``--prepare-only`` writes parameterised copies without executing them (``make test`` runs those
copies with ``pytest --nbval-lax``, because nbval cannot pass parameters).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

from infra_lib.io import atomic_write_json

from .paths import profile_dir, project_root
from .profiles import PROFILES, get_profile, parse_overrides

__all__ = ["list_notebooks", "run_notebooks", "main"]


def list_notebooks(notebooks_dir: Path, only: list[str] | None = None) -> list[Path]:
    """The ``NN_*.py`` notebooks in order, optionally only those whose name starts with an entry of ``only``."""
    paths = sorted(p for p in notebooks_dir.glob("[0-9][0-9]_*.py"))
    if only:
        unknown = [o for o in only if not any(p.name.startswith(o) for p in paths)]
        if unknown:
            raise SystemExit(f"--only: no notebook starts with {unknown}; have {[p.stem for p in paths]}")
        paths = [p for p in paths if any(p.name.startswith(o) for o in only)]
    if not paths:
        raise SystemExit(f"no notebooks NN_*.py found in {notebooks_dir}")
    return paths


def _hide_default_parameters(path: Path) -> None:
    """Tag the notebook's own ``parameters`` cell ``remove-cell`` so the book shows only the
    values papermill injected (the ``injected-parameters`` cell right after it)."""
    import nbformat

    nb = nbformat.read(path, as_version=4)
    for cell in nb.cells:
        tags = cell.get("metadata", {}).get("tags", [])
        if "parameters" in tags and "remove-cell" not in tags:
            cell["metadata"]["tags"] = [*tags, "remove-cell"]
    nbformat.write(nb, str(path))


def run_notebooks(profile: str, out_dir: Path, *, only: list[str] | None = None,
                  prepare_only: bool = False, overrides: dict | None = None) -> list[dict]:
    """Pair, parameterise and (unless ``prepare_only``) execute each notebook; returns timing rows."""
    import jupytext
    import papermill as pm

    get_profile(profile, overrides or {})  # fail fast on an unknown profile or parameter name
    # Idle OpenMP threads sleep instead of spinning: measured, spinning barriers made the passes
    # 3-16x slower whenever anything else ran on the 2 cores (kernels inherit this environment).
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    root = project_root() or Path.cwd()
    out_dir.mkdir(parents=True, exist_ok=True)
    # papermill writes parameters as Python literals of JSON types: tuples travel as lists
    params = {"profile": profile, "overrides": {k: list(v) if isinstance(v, tuple) else v for k, v in (overrides or {}).items()}}
    rows = []
    for src in list_notebooks(root / "notebooks", only):
        nb = jupytext.read(src)
        paired = out_dir / f".{src.stem}.source.ipynb"
        jupytext.write(nb, paired)
        target = out_dir / f"{src.stem}.ipynb"
        t0 = time.perf_counter()
        verb = "preparing" if prepare_only else "executing"
        print(f"[reproduce] {verb} {src.name} (profile={profile})", flush=True)
        try:
            pm.execute_notebook(
                str(paired), str(target), parameters=params, prepare_only=prepare_only,
                kernel_name="python3", cwd=str(root), progress_bar=False, log_output=False,
                request_save_on_cell_execute=False,
            )
        except pm.PapermillExecutionError as exc:
            raise SystemExit(
                f"[reproduce] {src.name} failed in cell {exc.exec_count}: {exc.ename}: {exc.evalue}\n"
                f"  the executed copy with the traceback is {target}"
            ) from None
        finally:
            paired.unlink(missing_ok=True)
        _hide_default_parameters(target)
        wall = time.perf_counter() - t0
        rows.append({"notebook": src.name, "wall_s": round(wall, 1)})
        if not prepare_only:
            print(f"[reproduce] {src.name} done in {wall:.1f} s", flush=True)
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m infra_study.reproduce", description=__doc__.split("\n\n")[0])
    ap.add_argument("--profile", default="tiny", choices=sorted(PROFILES), help="which profile to run under")
    ap.add_argument("--only", nargs="*", help="run only notebooks whose file name starts with these prefixes (e.g. 00 01)")
    ap.add_argument("--prepare-only", action="store_true", help="write parameterised notebooks without executing them")
    ap.add_argument("--out", type=Path, default=None, help="output folder (default: book/_generated)")
    ap.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                    help="override a profile field, e.g. --set sft.seed=1 (repeatable)")
    args = ap.parse_args(argv)
    try:  # a bad --set stops here, named, before any notebook runs
        overrides = parse_overrides(args.sets)
        profile = get_profile(args.profile, overrides)
    except (KeyError, TypeError, ValueError) as exc:
        ap.error(f"--set: {exc.args[0] if exc.args else exc}")
    if profile.scale is not None:  # a real model and data for the library's command line, not the notebooks
        ap.error(f"profile {args.profile!r} is for the command line (`infra fit-factors --profile {args.profile}`, "
                 f"`infra score --profile {args.profile}`; book/scale.md): the notebooks run under "
                 f"{', '.join(n for n in sorted(PROFILES) if PROFILES[n].scale is None)}")
    root = project_root() or Path.cwd()
    out = args.out or (root / "book" / "_generated")
    t0 = time.perf_counter()
    rows = run_notebooks(args.profile, out, only=args.only, prepare_only=args.prepare_only, overrides=overrides)
    total = time.perf_counter() - t0
    if not args.prepare_only:
        atomic_write_json(profile_dir(args.profile) / "reproduce.json", {
            "profile": args.profile, "overrides": overrides, "notebooks": rows, "total_s": round(total, 1),
            "python": sys.version.split()[0], "machine": platform.platform(), "finished": time.strftime("%Y-%m-%d %H:%M:%S"),
        })
        print(f"[reproduce] all notebooks done in {total:.1f} s", flush=True)
    else:
        print(f"[reproduce] {len(rows)} notebooks prepared in {out}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
