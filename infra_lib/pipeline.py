"""The canonical pipeline of a profile, one cached stage per function.

Each ``ensure_*`` returns the artifact of its stage under ``runs/<profile>/``, computing it only
when no valid one exists (each artifact is written with the hash of the config that produced
it); each logs whether it reuses or computes. Notebooks call these, so any notebook can run first.
"""
from __future__ import annotations

import random
from pathlib import Path
from typing import Mapping, Sequence

from .corpus import build_corpus
from .paths import profile_dir
from .profiles import Profile

__all__ = ["ensure_corpus", "pick_examples"]


def ensure_corpus(profile: Profile) -> dict[str, Path]:
    """``runs/<profile>/corpus/{base,train,query,test}.jsonl``, generated once per config."""
    return build_corpus(profile.corpus, profile_dir(profile.name) / "corpus")


def pick_examples(records: Sequence[Mapping], per_domain: int = 2, exploratory: bool | None = None,
                  seed: int = 0) -> list[Mapping]:
    """A reproducible handful of records per domain for display (``exploratory=True``: only CoTs
    with an exploratory segment; ``False``: only without; ``None``: any)."""
    rng = random.Random(seed)
    out = []
    for domain in ("math", "code"):
        pool = [r for r in records if r["domain"] == domain and (
            exploratory is None or any(k == "exploratory" for _, _, k in r["meta"]["segments"]) == exploratory)]
        pool.sort(key=lambda r: (r["difficulty"], r["id"]))
        out += rng.sample(pool, min(per_domain, len(pool)))
    return out
