"""Retrained arms: SFT variants from the cached base checkpoint, judged on the test split.

An *arm* is one SFT recipe (level weights of each domain, optionally exploratory segments
stripped from the training CoTs); a *run* is an arm at one seed. Every run starts from the same
base checkpoint, spends the same response-token budget with the same per-domain token share, and
the seed fixes the data order, shared across arms (paired). Runs are cached under
``runs/<profile>/arms/<key>/{model,eval}/``, where ``<key>`` is the SFT cache key (config, base
checkpoint, training records): a second ``make book`` reuses them, and the run whose key equals
the canonical model's (the baseline arm at the profile's SFT seed) reuses ``runs/<profile>/model``
and its evaluation instead of training twice.

The arms (book/protocol.md, "What is not public"):

- ``baseline``: the profile's SFT mix (math skews easy, code skews hard);
- ``flipped``: both domains' level weights reversed (math hard-heavy, code easy-heavy);
- ``control``: a seeded random permutation of the flipped weights within each domain (one
  permutation per profile, different from both the flipped and the baseline order);
- ``influence``: level weights proportional to each bucket's positive mean influence on the
  query split (the two domain-mean targets summed), from the attribution stage;
- ``no-exploration``: the baseline mix on training CoTs with their exploratory segments removed
  (``corpus.strip_exploratory``) at the same token budget (so it sees more problems);
- ``no-exploration (equal problems)``: the same problems in the same order as the baseline run of
  its seed, each with its exploratory segments removed (so it trains on fewer tokens).

Seeds: baseline and flipped run at every seed of ``ArmsConfig.seeds``; control, influence-guided
and the ablation arms at the first ``ArmsConfig.secondary_seeds`` of them (paired).

Judging (``outcomes``, ``paired_difference``): per seed, the paired difference of an arm and its
reference over the test problems (sampled pass@1 ``pass1``, greedy ``correct``, gold-solution
log-likelihood ``gold_loglik``); the interval is a two-level bootstrap, seeds first, then test
problems within each resampled seed, stratified by level (``analysis.two_level_bootstrap``).
"""
from __future__ import annotations

import dataclasses
import sys
import functools
import itertools
import json
import random
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from infra_lib.io import atomic_write_json, config_hash, config_to_dict, read_json

from .paths import profile_dir
from .training import LEVELS, TrainConfig

__all__ = [
    "ArmsConfig", "Arm", "ARM_NAMES", "flip_arms", "ablation_arms", "weights_table", "flipped_config", "control_config", "influence_weights",
    "influence_config", "run_key", "run_dir", "ensure_runs", "ensure_run_list", "arm_at", "outcomes", "paired_difference",
    "accuracy_by_level", "ablation_effects", "flip_effects",
]

ARM_NAMES = ("baseline", "flipped", "control", "influence", "no-exploration", "no-exploration (equal problems)")
STRIP_MODES = ("none", "equal-tokens", "equal-problems")
DOMAINS = ("math", "code")


def _log(msg: str) -> None:
    print(f"[arms] {msg}", file=sys.stderr, flush=True)


@dataclass(frozen=True)
class ArmsConfig:
    """How the retraining experiments run. Saved beside every run."""

    seeds: tuple[int, ...] = (0, 1, 2, 3, 4, 5)
    """SFT data-order seeds of the baseline and flipped arms (paired: the same seeds in every arm)."""
    secondary_seeds: int = 3
    """How many of ``seeds`` (the first ones) the control, influence-guided and ablation arms use."""
    workers: int = 2
    """Runs trained side by side, one process and one torch thread each (2 on 2 cores)."""
    control_seed: int = 0
    """Seed of the control arm's random permutation of the flipped level weights."""
    n_boot: int = 2000
    """Bootstrap replicates of the two-level (seeds, then test problems) intervals."""

    def seeds_of(self, arm: "Arm") -> tuple[int, ...]:
        """The seeds ``arm`` runs at: all for baseline and flipped, the first ``secondary_seeds`` otherwise."""
        return self.seeds if arm.name in ("baseline", "flipped") else self.seeds[: self.secondary_seeds]

    def __post_init__(self) -> None:
        seeds = tuple(int(s) for s in self.seeds)
        if not seeds or len(set(seeds)) != len(seeds) or min(seeds) < 0:
            raise ValueError(f"ArmsConfig.seeds must be distinct non-negative ints, got {self.seeds!r}")
        object.__setattr__(self, "seeds", seeds)
        if not 1 <= int(self.secondary_seeds) <= len(seeds):
            raise ValueError(f"ArmsConfig.secondary_seeds must be in 1..{len(seeds)}, got {self.secondary_seeds!r}")
        if int(self.workers) < 1:
            raise ValueError(f"ArmsConfig.workers must be >= 1, got {self.workers!r}")
        if int(self.n_boot) < 100:
            raise ValueError(f"ArmsConfig.n_boot must be >= 100, got {self.n_boot!r}")


@dataclass(frozen=True)
class Arm:
    """One SFT recipe: its name, the SFT config (seed set per run) and whether CoTs lose their
    exploration (``strip``: ``none``, ``equal-tokens``, ``equal-problems``, see the module docstring)."""

    name: str
    sft: TrainConfig
    strip: str = "none"

    def __post_init__(self) -> None:
        if self.strip not in STRIP_MODES:
            raise ValueError(f"Arm.strip must be one of {STRIP_MODES}, got {self.strip!r}")

    def at_seed(self, seed: int) -> "Arm":
        return dataclasses.replace(self, sft=dataclasses.replace(self.sft, seed=int(seed)))


# ------------------------------------------------------------------------------ the recipes
def flipped_config(sft: TrainConfig) -> TrainConfig:
    """``sft`` with both domains' level weights reversed (level 1's weight goes to level 5, ...)."""
    return dataclasses.replace(sft, math_level_weights=tuple(reversed(sft.math_level_weights)),
                               code_level_weights=tuple(reversed(sft.code_level_weights)))


def control_config(sft: TrainConfig, seed: int) -> TrainConfig:
    """The flipped weights permuted at random within each domain (seeded), never equal to the
    flipped or the baseline order, so the control moves weight between levels as much as a flip
    does but without the paper's direction."""
    flipped = flipped_config(sft)
    rng = random.Random(f"control-{seed}")
    out = {}
    for d in DOMAINS:
        w = list(flipped.level_weights(d))
        forbidden = {tuple(w), tuple(sft.level_weights(d))}
        if set(itertools.permutations(w)) <= forbidden:
            raise ValueError(f"control_config: the {d} weights {w} have no order other than baseline and flipped")
        while True:
            p = w[:]
            rng.shuffle(p)
            if tuple(p) not in forbidden:
                break
        out[f"{d}_level_weights"] = tuple(p)
    return dataclasses.replace(flipped, **out)


def influence_weights(bucket_means: Mapping[tuple[str, int], float]) -> dict[str, tuple[float, ...]]:
    """Level weights per domain proportional to each bucket's positive mean per-token influence.

    The arms fix a token budget, so what a reweighting moves is tokens: the per-token influence
    (each example's score over its response tokens, averaged over the bucket) is the quantity
    that predicts what a token of that bucket is worth.

    Args:
        bucket_means: ``{(domain, level): mean per-token influence}`` of that training bucket on
            the target (positive = helpful); levels absent or with mean <= 0 get weight 0.

    Returns:
        ``{"math": (w1..w5), "code": (w1..w5)}``, each summing to 1. A domain whose buckets are
        all unhelpful keeps uniform weights (its token share is fixed, so it must draw something);
        this is logged.
    """
    out = {}
    for d in DOMAINS:
        raw = [max(float(bucket_means.get((d, lvl), 0.0)), 0.0) for lvl in LEVELS]
        raw = [x if np.isfinite(x) else 0.0 for x in raw]
        if sum(raw) <= 0:
            _log(f"influence weights: no {d} bucket has positive mean influence; keeping uniform weights")
            raw = [1.0] * len(LEVELS)
        s = sum(raw)
        out[d] = tuple(x / s for x in raw)
    return out


def influence_config(sft: TrainConfig, bucket_means: Mapping[tuple[str, int], float]) -> TrainConfig:
    """``sft`` with level weights from :func:`influence_weights` (token budget and shares unchanged)."""
    w = influence_weights(bucket_means)
    return dataclasses.replace(sft, math_level_weights=w["math"], code_level_weights=w["code"])


def flip_arms(sft: TrainConfig, control_seed: int, bucket_means: Mapping[tuple[str, int], float]) -> list[Arm]:
    """The difficulty-flip experiment's four arms: baseline, flipped, control, influence-guided."""
    return [Arm("baseline", sft), Arm("flipped", flipped_config(sft)),
            Arm("control", control_config(sft, control_seed)), Arm("influence", influence_config(sft, bucket_means))]


def ablation_arms(sft: TrainConfig) -> list[Arm]:
    """The exploratory ablation: the baseline (CoTs kept, the same runs as the flip's baseline) and
    the baseline mix on CoTs stripped of their exploratory segments, at equal tokens and at equal
    problems."""
    return [Arm("baseline", sft), Arm("no-exploration", sft, strip="equal-tokens"),
            Arm("no-exploration (equal problems)", sft, strip="equal-problems")]


def weights_table(arms: Sequence[Arm]) -> "object":
    """The level weights of each arm, normalised per domain (columns ``arm, domain, level, weight``)."""
    import pandas as pd

    rows = []
    for a in arms:
        for d in DOMAINS:
            w = np.asarray(a.sft.level_weights(d), dtype=float)
            rows += [{"arm": a.name, "domain": d, "level": lvl, "weight": x} for lvl, x in zip(LEVELS, w / w.sum())]
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------------- the runs
@functools.lru_cache(maxsize=4)
def _train_records(profile, strip: bool) -> list[dict]:
    from .corpus import strip_exploratory
    from .pipeline import load_split

    train = load_split(profile, "train")
    return [strip_exploratory(r) for r in train] if strip else train


def _records_of(profile, arm: Arm) -> tuple[list[dict], list[dict] | None]:
    """(training records, records the data plan is drawn on) of ``arm``: at equal problems the plan
    is the baseline's (unstripped CoTs), the training the stripped CoTs."""
    if arm.strip == "equal-problems":
        return _train_records(profile, True), _train_records(profile, False)
    return _train_records(profile, arm.strip == "equal-tokens"), None


@functools.lru_cache(maxsize=2)
def _base(profile) -> Path:
    from .pipeline import ensure_base

    return ensure_base(profile)


def run_key(profile, arm: Arm) -> str:
    """The SFT cache key of ``arm`` (at its seed): the name of its folder under ``arms/``."""
    from .training import sft_cache_key

    recs, plan = _records_of(profile, arm)
    return sft_cache_key(_base(profile), recs, arm.sft, plan_records=plan)


def run_dir(profile, arm: Arm) -> Path:
    """``runs/<profile>/arms/<key>/`` for ``arm`` at its seed (the canonical run lives in ``model/``)."""
    return profile_dir(profile.name) / "arms" / run_key(profile, arm)


def _canonical(profile, key: str) -> tuple[Path, Path] | None:
    from .training import checkpoint_exists

    model, ev = profile_dir(profile.name) / "model", profile_dir(profile.name) / "eval"
    if checkpoint_exists(model, key) and (ev / "test_generations.jsonl").is_file():
        return model, ev
    return None


def _eval_current(eval_dir: Path, profile) -> bool:
    """True when ``eval_dir`` holds an evaluation made with the profile's evaluation config."""
    f = eval_dir / "eval_config.json"
    return f.is_file() and read_json(f).get("config_hash") == config_hash(profile.eval)


def _train_and_eval(profile, arm: Arm, progress: bool, key: str | None = None) -> dict:
    """Train (or reuse) one run and evaluate it on the test split; returns its summary row.
    ``key``: the run's :func:`run_key` when the caller has it already."""
    from .evaluation import evaluate_model
    from .pipeline import load_split
    from .training import train_sft

    key = key or run_key(profile, arm)
    canon = _canonical(profile, key)
    if canon is not None:
        model_dir, eval_dir = canon
        _log(f"{arm.name} seed {arm.sft.seed}: the canonical model")
        from .pipeline import ensure_eval

        ensure_eval(profile)  # cached unless the evaluation config changed
    else:
        folder = profile_dir(profile.name) / "arms" / key
        model_dir, eval_dir = folder / "model", folder / "eval"
        if not (folder / "arm.json").is_file():
            recs, plan = _records_of(profile, arm)
            train_sft(_base(profile), recs, arm.sft, model_dir, progress=progress, plan_records=plan)
        # cached when the evaluation config and test split are unchanged; re-evaluated otherwise
        evaluate_model(model_dir, eval_dir, load_split(profile, "test"), None, profile.eval, progress=progress)
        atomic_write_json(folder / "arm.json", {"arm": arm.name, "seed": arm.sft.seed, "key": key,
                                                "strip": arm.strip,
                                                "sft": config_to_dict(arm.sft), "profile": profile.name})
    wall = read_json(model_dir / "train_config.json").get("wall_s")
    return {"arm": arm.name, "seed": arm.sft.seed, "key": key, "model_dir": str(model_dir),
            "eval_dir": str(eval_dir), "train_s": wall,
            "eval_s": sum(read_json(eval_dir / "eval_config.json")["summary"]["wall_s"].values())}


def _worker(profile, arm: Arm) -> dict:
    import os

    import torch

    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    torch.set_num_threads(1)  # training and evaluation set their own counts; this covers the rest
    return _train_and_eval(profile, arm, progress=False)


def ensure_runs(profile, arms: Sequence[Arm], cfg: ArmsConfig) -> "object":
    """Every arm at its seeds (``cfg.seeds_of``), trained and evaluated once (cached), ``cfg.workers`` at a time.

    Returns:
        A DataFrame with one row per run: ``arm, seed, key, model_dir, eval_dir, train_s, eval_s``.
    """
    names = [a.name for a in arms]
    if len(set(names)) != len(names):
        raise ValueError(f"ensure_runs: arm names must be distinct, got {names}")
    return ensure_run_list(profile, [a.at_seed(s) for a in arms for s in cfg.seeds_of(a)], cfg.workers)


def ensure_run_list(profile, runs: Sequence[Arm], workers: int = 1) -> "object":
    """The given runs (arms at their seeds), trained and evaluated once (cached), ``workers`` at a
    time; rows in the order given (see :func:`ensure_runs`)."""
    import pandas as pd
    from tqdm import tqdm

    todo, rows = [], []
    for r in runs:  # cached runs first, in this process, so the log says what is reused
        key = run_key(profile, r)
        folder = profile_dir(profile.name) / "arms" / key
        canon = _canonical(profile, key)
        done = canon is not None or (folder / "arm.json").is_file()
        if done and _eval_current(canon[1] if canon else folder / "eval", profile):
            rows.append(_train_and_eval(profile, r, progress=False, key=key))
        else:  # to train, or trained but evaluated under another evaluation config
            todo.append(r)
    _log(f"{len(runs)} runs: {len(rows)} cached, {len(todo)} to train ({workers} at a time)")
    bar = tqdm(total=len(todo), desc="arms", ascii=True, ncols=100, disable=not todo)
    if workers == 1 or len(todo) <= 1:
        for r in todo:
            rows.append(_train_and_eval(profile, r, progress=False))
            bar.update()
    else:
        import multiprocessing as mp

        with ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context("spawn")) as ex:
            futs = {ex.submit(_worker, profile, r): r for r in todo}
            for f in as_completed(futs):
                rows.append(f.result())
                bar.update()
    bar.close()
    order = {(r.name, r.sft.seed): k for k, r in enumerate(runs)}
    rows.sort(key=lambda row: order[(row["arm"], row["seed"])])
    return pd.DataFrame(rows)


def arm_at(profile, spec: str, bucket_means: Mapping[tuple[str, int], float] | None = None) -> Arm:
    """The arm named by ``"name@seed"`` (``baseline``, ``flipped``, ``control``, ``influence``
    with ``bucket_means``, ``no-exploration``) at that seed, from the profile's SFT recipe."""
    name, _, seed = spec.partition("@")
    sft = profile.sft
    recipes = {"baseline": lambda: Arm("baseline", sft), "flipped": lambda: Arm("flipped", flipped_config(sft)),
               "control": lambda: Arm("control", control_config(sft, profile.arms.control_seed)),
               "no-exploration": lambda: ablation_arms(sft)[1]}
    if name == "influence" and bucket_means is not None:
        return Arm("influence", influence_config(sft, bucket_means)).at_seed(int(seed))
    if name not in recipes or not seed.isdigit():
        raise ValueError(f"arm spec {spec!r}: expected one of {sorted(recipes)} (or influence with bucket means) @ a seed")
    return recipes[name]().at_seed(int(seed))


# -------------------------------------------------------------------------------- judging
def outcomes(runs) -> "object":
    """Per (arm, seed, test problem): ``domain, level, correct`` (greedy, 0/1), ``pass1`` (sampled
    pass@1, NaN when not sampled), ``gold_loglik`` from each run's
    ``test_generations.jsonl``. ``runs``: the frame of :func:`ensure_runs`."""
    import pandas as pd

    frames = []
    for row in runs.itertuples():
        path = Path(row.eval_dir) / "test_generations.jsonl"
        recs = [json.loads(l) for l in path.read_text().splitlines() if l.strip()]
        df = pd.DataFrame(recs)
        if "pass1" not in df:
            df["pass1"] = np.nan
        df = df[["id", "domain", "difficulty", "correct", "pass1", "gold_loglik"]]
        df = df.rename(columns={"difficulty": "level"}).assign(arm=row.arm, seed=row.seed)
        df["correct"] = df["correct"].astype(float)
        df["pass1"] = df["pass1"].astype(float)
        frames.append(df)
    return pd.concat(frames, ignore_index=True)


def accuracy_by_level(out, metric: str = "correct") -> "object":
    """Mean test accuracy (``metric``: ``correct`` greedy, ``pass1`` sampled) per (arm, domain,
    level), averaged over seeds, with the per-seed spread (columns ``arm, domain, level, accuracy,
    seed_min, seed_max``)."""
    per_seed = out.groupby(["arm", "domain", "level", "seed"], sort=False)[metric].mean().reset_index()
    g = per_seed.groupby(["arm", "domain", "level"], sort=False)[metric]
    return g.agg(accuracy="mean", seed_min="min", seed_max="max").reset_index()


def paired_difference(out, arm: str, reference: str, domain: str, metric: str = "pass1", *,
                      n_boot: int = 2000, seed: int = 0):
    """Mean over seeds and ``domain``'s test problems of (``arm`` - ``reference``) in ``metric``
    (``pass1``: sampled pass@1; ``correct``: greedy accuracy; ``gold_loglik``: summed
    log-likelihood of the gold solution, nats), paired by seed and problem.

    Interval: two-level bootstrap, seeds first, then problems within each resampled seed,
    stratified by level (``analysis.two_level_bootstrap``); only seeds both arms ran at count.

    Returns:
        ``(analysis.Estimate, per_seed)``: positive = ``arm`` better; ``per_seed`` maps each seed
        to its mean difference.
    """
    from .analysis import two_level_bootstrap

    d = out[(out["domain"] == domain) & out["arm"].isin([arm, reference])]
    if d.empty:
        raise ValueError(f"paired_difference: no {domain} outcomes for arms {arm!r} and {reference!r}")
    per = d.pivot_table(index=["seed", "id", "level"], columns="arm", values=metric, aggfunc="mean")
    missing = [a for a in (arm, reference) if a not in per.columns]
    if missing:
        raise ValueError(f"paired_difference: no outcomes for arm(s) {missing}")
    per = per.dropna(subset=[arm, reference])
    if per.empty:
        raise ValueError(f"paired_difference: {arm!r} and {reference!r} share no seed with {metric} outcomes")
    seeds = sorted(per.index.get_level_values("seed").unique())
    diffs, strata = [], []
    for s_ in seeds:
        block = per.xs(s_, level="seed")
        diffs.append((block[arm] - block[reference]).to_numpy())
        strata.append(block.index.get_level_values("level").to_numpy())
    est, per_seed = two_level_bootstrap(diffs, strata, n_boot=n_boot, seed=seed)
    return est, dict(zip((int(x) for x in seeds), per_seed))


def ablation_effects(out, *, n_boot: int = 2000, seed: int = 0):
    """The exploratory ablation's paired differences, kept (the baseline arm) - removed, at equal
    tokens and at equal problems, per domain and metric (``pass1``, ``correct``, ``gold_loglik``).
    ``out``: :func:`outcomes` of the baseline and the two no-exploration arms. Returns a DataFrame
    ``comparison, domain, metric, value, lo, hi, estimate, per_seed``."""
    import pandas as pd

    rows = []
    for removed, label in (("no-exploration", "equal tokens"), ("no-exploration (equal problems)", "equal problems")):
        for d in DOMAINS:
            for m in ("pass1", "correct", "gold_loglik"):
                e, per_seed = paired_difference(out, "baseline", removed, d, m, n_boot=n_boot, seed=seed)
                rows.append({"comparison": f"kept - removed, {label}", "domain": d, "metric": m, "value": e.value,
                             "lo": e.lo, "hi": e.hi, "estimate": e, "per_seed": per_seed})
    return pd.DataFrame(rows)


def flip_effects(out, *, n_boot: int = 2000, seed: int = 0):
    """The difficulty flip's paired differences (flipped - baseline, flipped - control, control -
    baseline, influence - baseline) per domain and metric (``pass1``, ``correct``, ``gold_loglik``).
    ``out``: :func:`outcomes` of the four arms. Returns a DataFrame ``comparison, domain, metric,
    value, lo, hi, estimate, per_seed``."""
    import pandas as pd

    rows = []
    for arm, ref in (("flipped", "baseline"), ("flipped", "control"), ("control", "baseline"), ("influence", "baseline")):
        for d in DOMAINS:
            for metric in ("pass1", "correct", "gold_loglik"):
                e, per_seed = paired_difference(out, arm, ref, d, metric, n_boot=n_boot, seed=seed)
                rows.append({"comparison": f"{arm} - {ref}", "domain": d, "metric": metric,
                             "value": e.value, "lo": e.lo, "hi": e.hi, "estimate": e, "per_seed": per_seed})
    return pd.DataFrame(rows)
