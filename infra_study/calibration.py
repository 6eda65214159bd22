"""The corpus calibration pilot: does the SFT mix matter, and where do the levels land?

Trains (or reuses) a profile's base model, then one SFT run per mix (the protocol's baseline and
its flip), and grades each model's greedy generations on the **query** split (never the test
split: the pilot chooses the corpus's levels, so it must not see what judges the arms).
Artifacts go under ``runs/<profile>/calibration/``; the accuracy table is written to
``calibration/pilot.json``.

Run: ``OMP_NUM_THREADS=1 INFRA_RUNS=... python -m infra_study.calibration --profile tiny
--set base.token_budget=1000000``.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Mapping

__all__ = ["run_pilot", "query_accuracy"]


def query_accuracy(model_dir: Path, records: list[dict], eval_cfg) -> dict:
    """Greedy accuracy per (domain, level) on ``records`` (the query split), and the share of
    generations that explore after their first answer."""
    import torch

    from infra_lib.segments import segment_response

    from .evaluation import accuracy_table, generate_responses, grade_responses
    from .model import load_model
    from .tokenizer import load_tokenizer

    torch.set_num_threads(eval_cfg.threads)
    model = load_model(model_dir)
    model.eval()
    tok = load_tokenizer(model_dir)
    texts = generate_responses(model, tok, records, eval_cfg, progress=False)
    correct = grade_responses(records, texts)
    explores = [any(k == "exploratory" for _, _, k in segment_response(t)) for t in texts]
    return {"accuracy": accuracy_table(records, correct), "explore": accuracy_table(records, explores),
            "examples": [{"id": r["id"], "text": t, "correct": c} for r, t, c in list(zip(records, texts, correct))[::25]]}


def run_pilot(profile, mixes: Mapping[str, object] | None = None, base_dir: Path | None = None,
              tag: str = "") -> dict:
    """Base once, then SFT per mix (default: baseline and flipped), graded on the query split.

    ``base_dir``: reuse this base checkpoint instead of the profile's (valid when only levels the
    base stage gives no weight have changed since it was trained); ``tag`` names the runs."""
    from .arms import flipped_config
    from .pipeline import ensure_base, load_split
    from .paths import profile_dir
    from .training import train_sft

    mixes = dict(mixes or {"baseline": profile.sft, "flipped": flipped_config(profile.sft)})
    out = profile_dir(profile.name) / "calibration"
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    base = Path(base_dir) if base_dir else ensure_base(profile)
    report: dict = {"base_s": round(time.perf_counter() - t0, 1), "runs": {}}
    train, query = load_split(profile, "train"), load_split(profile, "query")
    for name, cfg in mixes.items():
        t1 = time.perf_counter()
        model_dir = train_sft(base, train, cfg, out / f"{name}{tag}", progress=False)
        t2 = time.perf_counter()
        res = query_accuracy(model_dir, query, profile.eval)
        res.update(sft_s=round(t2 - t1, 1), eval_s=round(time.perf_counter() - t2, 1))
        report["runs"][name] = res
        print(f"[calibration] {name}: {json.dumps(res['accuracy'])}", flush=True)
    (out / f"pilot_{'-'.join(mixes)}{tag}.json").write_text(json.dumps(report, indent=1))
    return report


def main(argv=None) -> None:
    from .profiles import get_profile, parse_overrides

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profile", default="tiny")
    ap.add_argument("--set", nargs="*", default=[], help="overrides KEY=VALUE, e.g. base.token_budget=1000000")
    ap.add_argument("--only", nargs="*", default=None, help="mixes to run (baseline, flipped)")
    ap.add_argument("--base", default=None, help="reuse this base checkpoint (see run_pilot)")
    ap.add_argument("--tag", default="", help="suffix of the run folders and the report file")
    a = ap.parse_args(argv)
    profile = get_profile(a.profile, parse_overrides(a.set))
    from .arms import flipped_config

    mixes = {"baseline": profile.sft, "flipped": flipped_config(profile.sft)}
    if a.only:
        mixes = {k: v for k, v in mixes.items() if k in a.only}
    run_pilot(profile, mixes, a.base, a.tag)


if __name__ == "__main__":
    main()
