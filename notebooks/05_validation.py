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
# # How far to trust the scores
#
# **Question.** Every finding of this book rests on EK-FAC influence scores. How close are they to
# the exact damped inverse they approximate, to kronfluence (the reference implementation), and
# to what retraining actually does? And which training data supports each *step* of a query's
# reasoning?
#
# Declared before the results ({ref}`protocol <protocol-metrics>`): EK-FAC's linear datamodeling score
# (LDS) exceeds identity's with an interval excluding zero; EK-FAC agrees with the exact inverse
# at least as well as kronfluence does; planted copies are found (recall@10 >= 0.9).
#
# The exactness, LDS and planted checks run on a micro Qwen2 (one block, hidden 16, MLP 32:
# 1,536 tracked MLP weights, float64) on a toy topic-Markov language, where dense curvature
# matrices are exact and a fine-tuning run takes about a second. Parity and timings come from the
# kronfluence bench run on the profile's model; the step explorer uses the real setting. Under
# `pretrained` the micro-model checks and the bench are left out (they do not depend on the setting,
# and exact inverses do not fit 10M tracked parameters); planted copies are checked on the
# fine-tuned model itself, added to the scored pool without retraining.

# %% tags=["parameters"]
profile = "tiny"
overrides = {}

# %% [markdown]
# ## Setup
#
# The validation setting is chosen by the profile (`smoke`: seconds, meaningless numbers); its
# results are cached under `runs/<profile>/validation/` with their config.

# %%
import time

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from IPython.display import HTML, display

from infra_study import analysis, attribution, html, pipeline, plots, setting, validation, verdicts
from infra_study.paths import profile_dir
from infra_study.profiles import get_profile

t_start = time.perf_counter()
cfg = get_profile(profile, overrides)
vcfg = validation.config_for_profile(cfg.name)
micro = setting.micro_checks(cfg)  # False under `pretrained`: the cells of the micro checks and the bench skip
display(HTML(setting.chapter_note_html(cfg, "05")))
display(HTML(verdicts.render_facts_html(vcfg, caption="validation settings")))

# %% [markdown]
# ## Computation
#
# Three checks on the micro model (agreement with exact inverses, LDS, planted copies), one call.

# %%
if micro:
    res = validation.ensure_validation(profile_dir(cfg.name) / "validation", vcfg)
    agree = pd.DataFrame(res["agreement"]["rows"])
    agree["spearman_mean"] = agree["spearman"].map(np.nanmean)
    agree["topk_mean"] = agree["topk"].map(np.mean)
    display(agree.pivot_table(index=["curvature", "method"], columns="damping_scale", values="spearman_mean", sort=False).round(3))

# %% [markdown]
# Top-k overlap with the exact ranking (share of the exact top k that a method also puts in its top k).

# %%
if micro:
    display(agree.pivot_table(index=["curvature", "method"], columns="damping_scale", values="topk_mean", sort=False).round(3))

# %% [markdown]
# LDS per method: per query, Spearman over the retrained subsets between the predicted and the
# measured gain; the interval resamples **queries** (the subsets stay fixed). `exact` is the exact
# damped Gauss-Newton inverse, a reference for what any approximation could reach here.

# %%
if micro:
    lds = {m: np.asarray(v, dtype=float) for m, v in res["lds"]["lds"].items()}
    lds_est = {m: analysis.bootstrap_mean(v[np.isfinite(v)], n_boot=vcfg.n_boot, seed=vcfg.seed) for m, v in lds.items()}
    lds_gain = analysis.paired_bootstrap(lds["ekfac"] - lds["identity"], n_boot=vcfg.n_boot, seed=vcfg.seed)
    display(HTML(verdicts.render_facts_html({**{m: str(e) for m, e in lds_est.items()}, "ekfac - identity": str(lds_gain)}, caption="LDS, mean over queries [95% interval]")))

# %% [markdown]
# Planted copies: recall@k per method, and the rank of each query's own copy. On the micro model
# the copies are trained on; under `pretrained` a copy of each individually scored query joins the
# scored pool of the fine-tuned model (EK-FAC only, no retraining).

# %%
planted = res["planted"] if micro else attribution.planted_copies(cfg, k=vcfg.recall_k)
hits = planted["hits"] if micro else {"ekfac": planted["hits"]}
recall = {m: float(np.mean(h)) for m, h in hits.items()}
pd.DataFrame({"recall@k": recall, "ranks of the copies": planted["ranks"] if micro else {"ekfac": planted["ranks"]}})

# %% [markdown]
# Checks on the values: correlations and overlaps in range, recall a share, one row per
# (curvature, method, damping).

# %%
assert all(0 <= r <= 1 for r in recall.values())
if micro:
    assert agree["spearman_mean"].between(-1, 1).all() and agree["topk_mean"].between(0, 1).all()
    assert all(np.all(np.abs(v[np.isfinite(v)]) <= 1) for v in lds.values())
    assert not agree.duplicated(["curvature", "method", "damping_scale"]).any()
    assert res["agreement"]["tracked_params"] <= 4096

# %% [markdown]
# Parity with kronfluence: the bench's JSON for this profile (`bench/vs_kronfluence.py --quick`,
# run once per profile, each library in its own process except under `smoke`, on synthetic
# sequences over the profile's model and vocabulary). Parity uses
# the empirical Fisher on both sides; timings are the minimum of 3 interleaved repeats with
# sampled labels drawn by inverse CDF on both sides, against a forward plus an activation-only
# backward over the same tokens (the floor). The quick bench times kronfluence only; the full
# bench (without `--quick`, with `--peer-python`) adds dattri-llm and Bergson, and its ratios
# show here when this profile's JSON comes from it.

# %%
if micro:
    bench = pipeline.ensure_bench(cfg)
    timing = {"infra_lib": bench["pipeline_s_ours"], "kronfluence": bench["pipeline_s_kronfluence"],
              "floor": bench["floor_s_ours"]}
    facts = pipeline.bench_facts(bench)
    display(HTML(verdicts.render_facts_html(facts)))

# %%
if micro:
    assert -1 <= bench["pearson_example"] <= 1
    assert all(v > 0 for v in timing.values())

# %% [markdown]
# ## Figure
#
# Spearman with the exact inverse against damping, for the Gauss-Newton matrix (left; our
# strategies with sampled labels) and the empirical Fisher (right; data labels).

# %%
if micro:
    fig, axes = plt.subplots(1, 2, figsize=(8, 3.4), sharey=True)
    for ax, curv in zip(axes, ("gauss-newton", "empirical")):
        plots.plot_exact_agreement(agree[agree["curvature"] == curv], ax=ax, value="spearman_mean")
        ax.set_title(curv, fontsize=10)
    fig.tight_layout()

# %% [markdown]
# LDS per method with 95% intervals over queries.

# %%
if micro:
    fig, ax = plt.subplots(figsize=(6, 3.2))
    plots.plot_lds(lds_est, ax=ax)
    fig.tight_layout()

# %% [markdown]
# Parity and speed against kronfluence: example scores side by side (a sample of the pairs), and
# the wall time of the EK-FAC pipeline (factors + example scores) against one plain forward and
# backward pass over the same tokens.

# %%
if micro:
    fig, axes = plt.subplots(1, 2, figsize=(8, 3.4))
    pairs = bench["paired_example_scores"]
    plots.plot_parity_scatter(pairs["ours"], pairs["kronfluence"], ax=axes[0])
    plots.plot_timing_bars(timing, ax=axes[1])
    fig.tight_layout()

# %% [markdown]
# ### Step explorer
#
# For three of the model's own correct answers per domain, from low, middle and high levels: click
# a step of the response to list the training examples with the largest influence on that step's
# loss (query-side segment scores), each with its token heat-map against the domain's mean query,
# on a colour scale of that step's own (its legend sits above the list). A long example shows its
# first lines, its last lines and its answer; the button between them shows the rest. The view is
# static HTML (no server, no network).

# %%
for d in ("math", "code"):
    q, tr, steps = pipeline.step_explorer_inputs(cfg, d, per_domain=3, top_k=5)
    assert all(np.isfinite(s).all() and s.shape == (len(x.segments), len(tr)) for x, s in zip(q, steps.values()))
    display(HTML(html.render_step_explorer(q, tr, steps, top_k=5, title=f"{d} queries")))

# %% [markdown]
# ## Takeaway
#
# Verdicts follow the {ref}`protocol's rule <protocol-verdicts>` (holds / does not hold /
# inconclusive with why / mixed), each row judged against its declared value. LDS: EK-FAC minus
# identity, per query, paired, resampling queries, against zero. Agreement: EK-FAC minus kronfluence
# in per-query Spearman with the exact empirical-Fisher inverse at damping 0.1 (both with data
# labels), resampling queries, against -0.02 ("at least as well" counts within 0.02, the unit
# test's tolerance). Planted copies: EK-FAC's recall@k over planted queries against 0.9.

# %%
hits_ekfac = np.asarray(hits["ekfac"], dtype=float)
rec_est = analysis.bootstrap_mean(hits_ekfac, n_boot=vcfg.n_boot, seed=vcfg.seed)
where = "" if micro else f", copies of {len(hits_ekfac)} queries added to the pool of {planted['pool']} without retraining"

# %%
rows = [analysis.effect_row("planted copies are found", f"recall@{planted['k']} (EK-FAC){where}", rec_est, +1,
                            paper=">= 0.9", null=0.9)]
if micro:
    rows[:0] = [analysis.effect_row("EK-FAC predicts retraining better than identity (LDS)",
                                    "LDS(EK-FAC) - LDS(identity), mean over queries", lds_gain, +1, paper="positive"),
                validation.agreement_row(agree, vcfg)]
wall = time.perf_counter() - t_start
path = analysis.write_findings(cfg.name, "05", rows, **pipeline.provenance(cfg, wall))
assert [r["claim"] for r in analysis.read_findings(cfg.name)["05"]["rows"]] == [r["claim"] for r in rows]
display(HTML(verdicts.render_findings_html(rows)))

# %% [markdown]
# What we see under `tiny` (round-2 labels; numbers in the tables above, in `findings/05.json` and
# in the log, 2026-12-02). The micro checks train their own micro model on synthetic sequences, not
# on the profile's corpus, so corpus v2 (`tiny`) and round 1's corpus (`tiny-v1`, recorded in
# `book/records/tiny-v1-round2.json`) give the same numbers:
#
# - **Exact inverses.** K-FAC and EK-FAC rank training examples much more like the exact damped
#   inverse than identity or diagonal do (Spearman about 0.79 against 0.47 for Gauss-Newton at
#   damping 0.1; 0.44 (EK-FAC) and 0.41 (K-FAC) against 0.21 for the empirical Fisher, which is
#   harder to approximate here). Our EK-FAC and kronfluence's agree with the exact inverse equally:
#   identical for the empirical Fisher (**holds**, difference 0), within 0.01 for sampled labels,
#   which differ by design.
# - **LDS.** Small for every method, the exact inverse included (EK-FAC +0.059, K-FAC +0.085,
#   exact +0.080, identity +0.003). EK-FAC - identity is +0.056 [-0.011, +0.122]:
#   **inconclusive**. Round 1 had +0.076 [+0.006, +0.149] (holds, just). Every method's LDS
#   moved a little since (identity +0.001 -> +0.003, exact +0.083 -> +0.080), EK-FAC's most
#   (+0.078 -> +0.059). Its sampled-label agreement with the exact inverse moved a little too
#   (0.79 -> 0.78 at damping 0.01), while the empirical-Fisher numbers did not, which fits the
#   change to the factor passes since round 1 (the Λ pass now reuses the covariance pass's sampled
#   labels); identity's LDS moving is not explained by it. Not investigated further: with 12
#   queries this check cannot tell either way. Since the exact inverse does no better than
#   K-FAC, what limits the prediction here is the first-order, linear picture of fine-tuning on a
#   random half, not the curvature approximation.
# - **Planted copies.** **Holds**, but easy: every method, identity included, ranks each query's
#   own copy first, so the check does not separate methods.
# - **Parity.** Pearson 1.0 with kronfluence on matched settings; our EK-FAC pipeline takes about
#   half of kronfluence's time (the bench's quick mode: 64 sequences, the profile's 2 threads).
#
# Caveats: a micro model on a toy language, 12 queries (wide intervals), and a single fine-tuning
# recipe; the explorer's lists are influence on one step's loss, not causal evidence.

# %%
display(HTML(verdicts.render_provenance_html(pipeline.provenance(cfg, wall))))
