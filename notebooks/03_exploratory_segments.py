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
# # Exploratory segments: does going on after the first answer help?
#
# **Question.** The paper finds that exploratory behaviour inside a CoT (verifying an answer
# already reached, or trying another approach: "Wait, let me check", "Alternatively, ...") has
# positive influence on both math and code reasoning. Our corpus marks these segments as ground
# truth (`meta.segments`, kind `exploratory`), so we can ask two questions: do exploratory
# segments carry more influence per token than the ordinary steps of the same CoT, and does
# removing them from the SFT data change what the model learns?
#
# Declared metrics ({ref}`protocol <protocol-metrics>`): per query domain, the mean over exploring
# CoTs of (per-token influence of its exploratory segments - of its ordinary steps), positional
# decomposition, with a bootstrap over CoTs and a permutation test (primary); its median and the
# same contrast with the training loss restricted to each segment (secondary). The causal check:
# kept - removed in test sampled pass@1 at equal tokens (primary) and at equal problems.

# %% tags=["parameters"]
profile = "tiny"
overrides = {}

# %% [markdown]
# ## Setup
#
# The training split, the attribution scores of Findings I (two domain-mean queries, with
# per-segment scores), and how many CoTs explore.

# %%
import time

import matplotlib.pyplot as plt
import pandas as pd
from IPython.display import HTML, display

from infra_study import analysis, arms, attribution, html, pipeline, plots, setting, verdicts
from infra_study.profiles import get_profile

t_start = time.perf_counter()
cfg = get_profile(profile, overrides)
display(HTML(setting.chapter_note_html(cfg, "03")))
train = pipeline.load_split(cfg, "train")
scores = pipeline.ensure_scores(cfg)
explore = [i for i, r in enumerate(train) if any(k == "exploratory" for _, _, k in r["meta"]["segments"])]
pd.Series({"training CoTs": len(train), "with exploratory segments": len(explore)})

# %% [markdown]
# ## Computation
#
# Per-segment scores normalised per token (the mean of the segment's token scores, so a long
# segment does not win by length), with each segment's kind, for each domain-mean query.

# %%
segs = {d: pipeline.segment_scores_by_kind(cfg, scores, train, d) for d in ("math", "code")}
kinds = pd.concat([
    analysis.category_table(*segs[d], categories=("step", "exploratory", "answer"), seed=cfg.seed)
    .rename(columns={"category": "kind"}).assign(query_domain=d) for d in ("math", "code")
])
kinds

# %% [markdown]
# The contrast within each exploring CoT: its exploratory segments' mean minus its ordinary
# steps' mean, averaged over those CoTs; the permutation test shuffles the two labels among each
# CoT's own segments.

# %%
contrast = {d: analysis.within_example_contrast(*segs[d], "exploratory", "step", seed=cfg.seed) for d in ("math", "code")}
median = {d: analysis.within_example_contrast(*segs[d], "exploratory", "step", seed=cfg.seed, stat="median")
          for d in ("math", "code")}
pd.DataFrame([{"query domain": d, "mean": str(e), "median": str(median[d][0]), "permutation p (mean)": p, "CoTs": n}
              for d, (e, p, n) in contrast.items()])

# %% [markdown]
# The same contrast with the training loss restricted to each segment: one gradient per segment
# of a subsample of exploring CoTs (half per domain), rather than the positional split of one
# gradient.

# %%
chosen = [train[i] for d in ("math", "code")
          for i in [j for j in explore if train[j]["domain"] == d][: cfg.restricted_examples // 2]]
restricted = attribution.restricted_segment_scores(cfg, chosen)
restricted_contrast = {d: analysis.within_example_contrast(*restricted[d], "exploratory", "step", seed=cfg.seed)
                       for d in ("math", "code")}
pd.DataFrame([{"query domain": d, "restricted-loss mean": str(e), "permutation p": p, "CoTs": n}
              for d, (e, p, n) in restricted_contrast.items()])

# %% [markdown]
# The causal check: the baseline SFT recipe on CoTs with their exploratory segments removed
# (and the restated answer after a detour), at the same token budget and, separately, on the same
# problems in the same order; the kept arm is the difficulty-flip experiment's baseline (the same
# cached runs), seeds paired. It retrains the model: not under `pretrained`.

# %%
ablated = setting.retrains(cfg)
if ablated:
    out = arms.outcomes(arms.ensure_runs(cfg, arms.ablation_arms(cfg.sft), cfg.arms))
    assert out["correct"].between(0, 1).all() and out["pass1"].dropna().between(0, 1).all()  # pass1: sampled problems only
    effects = arms.ablation_effects(out, n_boot=cfg.arms.n_boot, seed=cfg.seed)
    display(effects.drop(columns=["estimate", "per_seed"]).round(4))
else:
    display(HTML(setting.skipped_html(cfg, "03")))

# %% [markdown]
# ## Figure
#
# Mean per-token influence of each segment kind, per query domain (95% intervals over training
# examples; positive = helpful).

# %%
fig, ax = plt.subplots(figsize=(6, 3.5))
plots.plot_segment_kinds(kinds, ax=ax)
fig.tight_layout()

# %% [markdown]
# Test accuracy by level with the exploratory segments kept (baseline) and removed, and the
# paired differences (kept - removed).

# %%
if ablated:
    acc = arms.accuracy_by_level(out, "pass1")
    fig, axes = plt.subplots(1, 2, figsize=(8, 3.2), sharey=True)
    for ax, d in zip(axes, ("math", "code")):
        plots.plot_arm_accuracy(acc, d, ax=ax)
        ax.set_ylabel("sampled pass@1")
    fig.tight_layout()
    fig, ax = plt.subplots(figsize=(7, 2.8))
    plots.plot_paired_differences(effects[effects["metric"] == "pass1"], ax=ax, xlabel="sampled pass@1 difference (fraction)")
    fig.tight_layout()

# %% [markdown]
# The exploring CoTs with the highest influence on each target, token by token (green: helpful,
# magenta: harmful; hover for the score): where inside the CoT the influence sits.

# %%
tokens = pipeline.response_tokens(cfg, train)
for d in ("math", "code"):
    items = pipeline.top_heatmap_items(scores, tokens, train, d, k=2, among=explore)
    display(HTML(f"<h4>{d} queries</h4>" + html.render_heatmaps(items)))

# %% [markdown]
# ## Takeaway
#
# Verdicts by the {ref}`protocol's rule <protocol-verdicts>`: the paper claims a positive effect for both query domains, so each
# domain gets its own row.
#
# What the `tiny` run on corpus v2 showed (`book/log.md`, 2026-12-02), where half of the
# exploring CoTs' checks find and correct a slip: **the claim does not hold, by either test, in
# either domain.** Per token, exploratory segments carry less influence than the steps of the same
# CoT (math -2.81 [-3.07, -2.55], code -1.40 [-1.77, -1.02]); the medians (-2.23, -0.99) and the
# loss restricted to each segment (-3.12, -2.27) agree. Retraining without the detours raised
# sampled pass@1: kept - removed at equal tokens math -0.090 [-0.142, -0.032], code -0.077
# [-0.122, -0.028]; at equal problems -0.078 and -0.087, so it is not that the stripped arm saw
# more problems. Reasons we believe, not tested here: the model's own correct answers, which
# define the targets, almost never explore (5 of 222 sampled math queries, 2 of 193 code); and a
# slip CoT trains the model on its wrong first answer too (the slip line is a training target),
# which a model this small may imitate as readily as the correction.
#
# Round 2 on round 1's setting (`tiny-v1`): for math queries the mean contrast is
# inconclusive (+0.24 [-0.18, +0.62]) while its median (+2.05) and the restricted-loss contrast
# (+5.29) favour exploratory segments; for code queries all three go against them (mean -3.90).
# Removing the detours raised sampled pass@1 by 0.10 (math) and 0.27-0.28 (code) over 3 paired
# seeds, at equal tokens and at equal problems alike: the ablation does not hold in either domain.
#
# What the round-1 run recorded in the log (2026-11-28) showed: the claim does not
# reproduce here, and the two checks agree with each other. Per token, exploratory segments carry
# *less* influence than the ordinary steps of the same CoT, on both targets (far less on code),
# and the permutation test puts this well beyond chance; retraining without them *raised* test
# accuracy in both domains (kept - removed is negative, most in math). Reasons we believe, not
# tested here: (1) the model's own correct answers, which define the targets, almost never
# explore (greedy decoding of a 1M-parameter model), so training on detours moves probability
# toward text the targets do not contain; (2) our detours are templated re-checks and
# alternative formulations with no new information, unlike a strong model's genuine
# self-correction; (3) at an equal token budget the stripped arm sees more distinct problems.
# The gold-solution log-likelihood is far higher with exploration kept, but that metric is
# biased here: 30% of the test split's gold solutions contain exploratory segments, which the
# stripped model never saw, so it judges style, not reasoning; accuracy is the primary metric.

# %%
rows = []
for d in ("math", "code"):
    e, p, n = contrast[d]
    rows.append(analysis.effect_row(f"exploratory segments help {d} reasoning (attribution)",
                                    f"mean over {n} exploring CoTs of per-token influence, exploratory - step segments, {d} queries, positional (permutation p = {p:.3g})",
                                    e, +1, paper="positive", primary=True))
for d in ("math", "code"):
    e, _, n = median[d]
    rows.append(analysis.effect_row(f"exploratory segments help {d} reasoning (attribution)",
                                    f"median over {n} exploring CoTs of the same contrast, {d} queries, positional", e, +1,
                                    paper="positive", primary=False))
    e, p, n = restricted_contrast[d]
    rows.append(analysis.effect_row(f"exploratory segments help {d} reasoning (attribution)",
                                    f"mean over {n} exploring CoTs, training loss restricted to each segment, {d} queries (permutation p = {p:.3g})",
                                    e, +1, paper="positive", primary=False))
for label, primary in (("equal tokens", True), ("equal problems", False)) if ablated else ():
    for d in ("math", "code"):
        r = effects[(effects["comparison"] == f"kept - removed, {label}") & (effects["domain"] == d) & (effects["metric"] == "pass1")].iloc[0]
        lv = acc[(acc["arm"] == "baseline") & (acc["domain"] == d)]
        rows.append(analysis.effect_row(f"exploratory segments help {d} reasoning (ablation)",
                                        f"test sampled pass@1, exploratory segments kept - removed, {label}, {d} ({len(r.per_seed)} paired seeds)",
                                        r.estimate, +1, paper="positive", primary=primary,
                                        bounded=analysis.bounded_levels(dict(zip(lv["level"], lv["accuracy"]))),
                                        per_seed=[round(v, 5) for v in r.per_seed.values()]))
wall = time.perf_counter() - t_start
analysis.write_findings(cfg.name, "03", rows, **pipeline.provenance(cfg, wall))
display(HTML(verdicts.render_findings_html(rows)))

# %%
display(HTML(verdicts.render_provenance_html(pipeline.provenance(cfg, wall))))
