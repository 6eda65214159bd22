"""Run the pretrained setting's stages from a shell and measure each:
``python -m infra_study.pretrained_run [--profile pretrained] STAGE ...`` (one JSON line per
stage: wall time, peak memory, accuracies where there are any).
"""
from __future__ import annotations

import json
import time

from infra_lib.io import read_json

from .pretrained_stages import STAGES, ensure_before_eval, ensure_humaneval, ensure_pretrained_base, ensure_pretrained_corpus
from .profiles import Profile


def run_stage(profile: Profile, stage: str) -> dict:
    """Run one stage of the setting (cached like every stage) and return its wall time and the
    process's peak resident memory: ``{"stage", "wall_s", "peak_rss_gb", ...}``. Run each stage
    in its own process (``python -m infra_study.pretrained_run STAGE``) for per-stage peaks."""
    import resource

    from . import pipeline

    t0 = time.perf_counter()
    info: dict = {}
    if stage == "convert":
        ensure_pretrained_base(profile)
    elif stage == "corpus":
        ensure_pretrained_corpus(profile)
    elif stage == "eval_before":
        out = ensure_before_eval(profile)
        info["accuracy"] = read_json(out / "accuracy.json")
        if profile.pretrained.before_humaneval:
            info["humaneval"] = ensure_humaneval(profile, ensure_pretrained_base(profile), out)["accuracy"]
    elif stage == "sft":
        pipeline.ensure_model(profile)
    elif stage == "eval":
        out = pipeline.ensure_eval(profile)
        info["accuracy"] = read_json(out / "accuracy.json")
        info["summary"] = read_json(out / "eval_config.json")["summary"]
        info["humaneval"] = ensure_humaneval(profile, pipeline.ensure_model(profile), out)["accuracy"]
    elif stage == "factors":
        pipeline.ensure_factors(profile)
    elif stage == "scores":
        pipeline.ensure_scores(profile)
    else:
        raise KeyError(f"unknown stage {stage!r}; stages: {', '.join(STAGES)}")
    info.update(stage=stage, wall_s=round(time.perf_counter() - t0, 1),
                peak_rss_gb=round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6, 2))
    return info


def main(argv: list[str] | None = None) -> None:
    """``python -m infra_study.pretrained_run [--profile pretrained] STAGE ...``: run stages in
    order, print one JSON line per stage (wall time, peak memory, accuracies where there are any)."""
    import argparse

    from .profiles import get_profile, parse_overrides

    ap = argparse.ArgumentParser(description=main.__doc__)
    ap.add_argument("stages", nargs="+", choices=STAGES)
    ap.add_argument("--profile", default="pretrained")
    ap.add_argument("--set", nargs="*", default=[], help="overrides KEY=VALUE")
    a = ap.parse_args(argv)
    profile = get_profile(a.profile, parse_overrides(a.set))
    for s in a.stages:
        print(json.dumps(run_stage(profile, s)), flush=True)


if __name__ == "__main__":
    main()
