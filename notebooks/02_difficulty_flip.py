# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Difficulty flipping: does reweighting the SFT mix by level help?
#
# **Question.** The paper's practical claim: flipping task difficulty in the SFT mix (more hard
# math, more easy code) improves reasoning (AIME24 10% -> 20%, LiveCodeBench 33.8% -> 35.3% for
# Qwen2.5-7B-Instruct). We test it by retraining: four arms of SFT from the same base checkpoint,
# each with the same response-token budget and per-domain token share, at three paired seeds
# (a seed fixes the data order in every arm), judged on the held-out test split.
#
# - **baseline**: math skews easy, code skews hard (the {ref}`protocol`'s weights 0.30/0.25/0.20/0.15/0.10);
# - **flipped**: both reversed;
# - **control**: a random permutation of the flipped weights within each domain, to tell a
#   flip's direction from merely moving weight between levels;
# - **influence**: weights proportional to each bucket's positive mean influence on the query
#   split (Findings I's scores; the test split is never seen).
#
# Declared metric ({ref}`protocol <protocol-metrics>`): the paired difference flipped - baseline in
# test sampled pass@1 per domain (primary), greedy accuracy and gold-solution log-likelihood
# (secondary); intervals from a two-level bootstrap (seeds, then test problems within each seed,
# stratified by level), with the per-seed differences beside them. Baseline and flipped run at
# 6 paired seeds, control and influence-guided at 3.

# %% tags=["parameters"]
profile = "tiny"
overrides = {}

# %% [markdown]
# ## Setup
#
# The profile, the SFT recipe of the canonical model (the baseline arm at seed 0), and the mean
# influence of each training bucket on the query split's two targets.

# %%
import time

import matplotlib.pyplot as plt
import pandas as pd

from IPython.display import HTML, display

from infra_study import analysis, arms, attribution, pipeline, plots, setting, verdicts
from infra_study.profiles import get_profile

t_start = time.perf_counter()
cfg = get_profile(profile, overrides)
runs_here = setting.retrains(cfg)  # under `pretrained` every cell below skips: GPU-scale
display(HTML(setting.chapter_note_html(cfg, "02")))
display(HTML(verdicts.render_facts_html({"seeds (baseline, flipped)": cfg.arms.seeds, "seeds (control, influence)": cfg.arms.seeds[: cfg.arms.secondary_seeds],
                                         "token budget": cfg.sft.token_budget, "math token share": cfg.sft.math_token_share})))

# %% [markdown]
# The level weights of the four arms (sampling probabilities within each domain):

# %%
if runs_here:
    flip = arms.flip_arms(cfg.sft, cfg.arms.control_seed, attribution.bucket_means_per_token(cfg))
    display(arms.weights_table(flip).pivot_table(index=["domain", "arm"], columns="level", values="weight", sort=False).round(3))

# %% [markdown]
# ## Computation
#
# Each arm at each of its seeds: SFT from the cached base, then greedy and sampled decoding and
# grading on the test split. Runs are cached under `runs/<profile>/arms/<key>/`; two train side
# by side.

# %%
if runs_here:
    runs = arms.ensure_runs(cfg, flip, cfg.arms)
    display(runs[["arm", "seed", "key", "train_s", "eval_s"]])

# %% [markdown]
# Outcomes per test problem, and the paired differences of each arm against the baseline.

# %%
if runs_here:
    out = arms.outcomes(runs)
    assert out["correct"].between(0, 1).all() and out["pass1"].dropna().between(0, 1).all()  # pass1: sampled problems only
    assert len(out) == len(runs) * out["id"].nunique()
    diffs = arms.flip_effects(out, n_boot=cfg.arms.n_boot, seed=cfg.seed)
    display(diffs.drop(columns=["estimate", "per_seed"]).round(4))

# %% [markdown]
# ## Figure
#
# Accuracy by level per arm (band: the seeds' range), and the paired accuracy differences
# against the baseline with 95% intervals, for each domain.

# %%
for d in ("math", "code") if runs_here else ():
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(8, 3.2), gridspec_kw={"width_ratios": [1, 1]})
    plots.plot_arm_accuracy(arms.accuracy_by_level(out, "pass1"), d, ax=a1)
    a1.set_ylabel("sampled pass@1")
    plots.plot_paired_differences(diffs[(diffs["domain"] == d) & (diffs["metric"] == "pass1")], ax=a2,
                                  xlabel="sampled pass@1 difference (fraction)")
    fig.tight_layout()

# %% [markdown]
# The seeds one by one: each dot is one seed's paired difference over the whole test split.

# %%
if runs_here:
    fig, ax = plt.subplots(figsize=(7, 3.2))
    sel = diffs[diffs["metric"] == "pass1"]
    plots.plot_per_seed({f"{r.comparison} ({r.domain})": r.per_seed for r in sel.itertuples()}, ax=ax,
                        xlabel="sampled pass@1 difference per seed (fraction)")
    fig.tight_layout()

# %% [markdown]
# The secondary metric: gold-solution log-likelihood (nats per test problem, summed over the
# gold response's tokens), which moves even where greedy accuracy sits at 0 or 1.

# %%
if runs_here:
    fig, ax = plt.subplots(figsize=(6, 3.2))
    plots.plot_paired_differences(diffs[diffs["metric"] == "gold_loglik"], ax=ax,
                                  xlabel="gold log-likelihood difference vs baseline (nats)")
    fig.tight_layout()

# %% [markdown]
# ## Takeaway
#
# The verdicts follow the {ref}`protocol's rule <protocol-verdicts>`; the flip is claimed for both domains, so it holds only if
# it holds in each (the first row). The control and influence-guided arms go beyond the paper and
# are reported as differences without a verdict of the paper's.
#
# What the `tiny` run on corpus v2 showed (`book/log.md`, 2026-12-02): **the flip is inconclusive
# in both domains**, now leaning the paper's way. Math: flipped - baseline in sampled pass@1 is
# +0.017 [-0.016, +0.050] over 6 paired seeds (per seed +0.040, 0.000, +0.045, -0.030, +0.030,
# +0.015); the interval excludes the paper's +0.10. Code: +0.026 [-0.003, +0.054] (per seed
# -0.010, +0.045, +0.015, +0.045, +0.055, +0.005), an interval that holds the paper's +0.015 and
# just reaches below zero. Greedy accuracy: math -0.013, code +0.017, both intervals across zero.
# The gold-solution log-likelihood moves with the mix, as on round 1's corpus: down in math (-3.4
# nats [-4.2, -2.6], does not hold), up in code (+3.2 [+1.7, +4.4], holds), where the flipped mix
# gives the easy code the baseline under-weights. The flip did no better than the random control
# (math +0.015, code +0.010, 3 seeds), and the influence-guided arm did not help (math -0.022, code
# +0.013). Levels 4-5 sit near zero accuracy under every arm (`data/DATASHEET.md`, calibration), so
# the pooled pass@1 that judges the flip moves only through levels 1-3.
#
# What the recorded round-1 setting (`tiny-v1`: corpus v1, round-2 rules) showed:
# **the flip is inconclusive in both domains**. Math: flipped - baseline in sampled pass@1 is
# -0.013 [-0.053, +0.029] over 6 paired seeds (per seed +0.035, -0.040, -0.035, +0.050, -0.015,
# -0.070); the interval is narrow enough to exclude the paper's +0.10, so there is no effect of
# that size here. Code: -0.011 [-0.055, +0.030], too wide to resolve the paper's +0.015. Greedy
# accuracy agrees (math -0.010, code -0.011, both intervals across zero). The gold-solution
# log-likelihood falls under the flip in math (-2.3 nats [-3.4, -1.4], does not hold): with fewer
# easy examples the model fits the easy gold solutions less closely. The seeds disagree with one
# another by as much as the arms do. Round 1's log reported a math gain (+0.049 greedy over 3
# seeds) from a run whose models differ from this recording's (its baseline averaged 0.505 in
# math, this one's canonical model 0.56; the same seeds here give -0.008, -0.004, +0.020), so
# that gain is not reproduced. Beyond the paper, the influence-guided arm (per-token weights) raised code
# pass@1 by +0.077 [+0.015, +0.132] over 3 seeds, and the flip did no better than the random
# control.

# %%
PAPER_EFFECT = {"math": 0.10, "code": 0.015}  # AIME24 10% -> 20%; LiveCodeBench 33.8% -> 35.3%
METRIC_NAME = {"pass1": "test sampled pass@1", "correct": "test greedy accuracy", "gold_loglik": "gold-solution log-likelihood (nats)"}


def row(arm, ref, d, metric, claim, primary, paper):
    base_acc = arms.accuracy_by_level(out, "pass1")
    r = diffs[(diffs["comparison"] == f"{arm} - {ref}") & (diffs["domain"] == d) & (diffs["metric"] == metric)].iloc[0]
    lv = base_acc[(base_acc["arm"] == ref) & (base_acc["domain"] == d)]
    bounded = analysis.bounded_levels(dict(zip(lv["level"], lv["accuracy"]))) if metric != "gold_loglik" else None
    return analysis.effect_row(claim, f"{arm} - {ref}, {d} {METRIC_NAME[metric]} ({len(r.per_seed)} paired seeds)", r.estimate, +1,
                               paper=paper, paper_effect=PAPER_EFFECT[d] if metric == "pass1" and arm == "flipped" and ref == "baseline" else None,
                               bounded=bounded, primary=primary, per_seed=[round(v, 5) for v in r.per_seed.values()])


if runs_here:
    rows = [row("flipped", "baseline", d, "pass1", f"flipping difficulty improves {d} reasoning", True,
                f"positive ({'AIME24 +0.10' if d == 'math' else 'LiveCodeBench +0.015'})") for d in ("math", "code")]
    rows.insert(0, {"claim": "flipping difficulty improves reasoning (math and code)",
                    "metric": "test sampled pass@1, flipped - baseline, per domain",
                    "ours": ", ".join(f"{d} {r['ours']:+.3f}" for d, r in zip(("math", "code"), rows)), "interval": None,
                    "paper": "positive in both", "verdict": analysis.combine_verdicts(r["verdict"] for r in rows), "primary": True})
    if rows[0]["verdict"] == "inconclusive":
        rows[0]["reason"] = "both domains inconclusive"
    for d in ("math", "code"):
        rows.append(row("flipped", "baseline", d, "correct", f"flipping difficulty improves {d} reasoning", False, "positive"))
        rows.append(row("flipped", "baseline", d, "gold_loglik", f"flipping difficulty improves {d} reasoning", False, "positive"))
        rows.append(row("flipped", "control", d, "pass1", f"the flip's direction matters for {d} (beyond the paper)", False, "positive"))
        rows.append(row("influence", "baseline", d, "pass1", f"influence-guided weights improve {d} reasoning (beyond the paper)", False, "positive"))
    wall = time.perf_counter() - t_start
    analysis.write_findings(cfg.name, "02", rows, **pipeline.provenance(cfg, wall))
    display(HTML(verdicts.render_findings_html(rows)))

# %% [markdown]
# Accuracy per domain and arm, averaged over seeds and levels:

# %%
if runs_here:
    display(out.groupby(["domain", "arm"], sort=False)[["pass1", "correct"]].mean().unstack("arm").round(3))

# %%
display(HTML(verdicts.render_provenance_html(pipeline.provenance(cfg, time.perf_counter() - t_start))))
