"""Where artifacts live: ``runs/<profile>/...`` (README.md, map of the folders).

The runs folder is ``$INFRA_RUNS`` if set, else ``runs/`` beside the project's
``pyproject.toml`` when the package runs from a checkout, else ``./runs``.
"""
from __future__ import annotations

import os
from pathlib import Path

__all__ = ["project_root", "runs_dir", "profile_dir"]


def project_root() -> Path | None:
    """The checkout holding this package (the folder with ``pyproject.toml``), or None."""
    here = Path(__file__).resolve().parent.parent
    return here if (here / "pyproject.toml").is_file() and (here / "notebooks").is_dir() else None


def runs_dir() -> Path:
    """The root of all artifacts."""
    env = os.environ.get("INFRA_RUNS")
    if env:
        return Path(env).resolve()
    root = project_root()
    return (root / "runs") if root is not None else Path.cwd() / "runs"


def profile_dir(profile: str) -> Path:
    """``runs/<profile>/``: corpus/, tokenizer/, base/, model/, eval/, factors/, scores/, findings/, arms/."""
    return runs_dir() / profile
