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
# # Cross-domain effects: which training examples help math and code reasoning?
#
# **Question.** The paper finds that *high-difficulty math* examples improve both math and code
# reasoning, while *low-difficulty code* examples benefit code reasoning most. We measure the
# influence of every SFT training example on the two domain-mean targets (the mean
# log-likelihood of the model's own correct answers on held-out math or code problems) with
# EK-FAC over the MLP layers, and ask how influence moves with difficulty.
#
# Declared metrics ({ref}`protocol <protocol-metrics>`): Spearman of difficulty vs example
# influence within each training domain, under the raw (summed-loss) and the per-token score,
# with bootstrap intervals over training examples; code -> math as its own row; robustness rows
# without the two template-choice positions and with greedy queries; the main trend repeated on
# other models of the study.

# %% tags=["parameters"]
profile = "tiny"
overrides = {}

# %% [markdown]
# ## Setup
#
# The fine-tuned model, its training split and its correct generations on the query split
# (D_correct) come from the cached pipeline; the scores are computed once per profile.

# %%
import time

import matplotlib.pyplot as plt
import numpy as np

from IPython.display import HTML, display

from infra_study import analysis, attribution, pipeline, plots, setting, verdicts
from infra_study.profiles import get_profile

t_start = time.perf_counter()
cfg = get_profile(profile, overrides)
display(HTML(setting.chapter_note_html(cfg, "01")))
train = pipeline.load_split(cfg, "train")
queries = pipeline.load_queries(cfg)
display(HTML(verdicts.render_facts_html({"train examples": len(train), **{f"{d} queries": len(q) for d, q in queries.items()}})))

# %% [markdown]
# ## Computation
#
# One pass over the training set gives every example's influence on the two domain-mean queries
# (rows `math`, `code`) and on a few individual queries, to show how much the mean hides.

# %%
scores = pipeline.ensure_scores(cfg)
enc = pipeline.encode(cfg, train, pipeline.ensure_tokenizer(cfg))
variants = {d: attribution.example_variants(scores, enc, d) for d in ("math", "code")}
tables = {d: analysis.bucket_influence(variants[d]["raw"], train, seed=cfg.seed) for d in ("math", "code")}
tables_per_token = {d: analysis.bucket_influence(variants[d]["per_token"], train, seed=cfg.seed) for d in ("math", "code")}
tables["math"]

# %% [markdown]
# The scores obey the convention and sum as they must: token scores of each example add up to
# its example score.

# %%
example = {d: variants[d]["raw"] for d in ("math", "code")}
for d in ("math", "code"):
    assert np.isfinite(example[d]).all()
r = scores.row_ids.index("math")
tok_sums = np.array([scores.tokens_of(i)[r].sum().item() for i in range(len(train))])
assert np.allclose(tok_sums, example["math"], rtol=1e-3, atol=1e-6 * np.abs(example["math"]).max())

# %% [markdown]
# Difficulty trends: Spearman's rho between level and influence, within each training domain,
# for every score variant; and the same with the greedy queries as targets (when each domain
# has some: a model that solves no problem of a domain greedily has no greedy target there).

# %%
trends = attribution.difficulty_trends(variants, train, seed=cfg.seed)
missing = attribution.domains_without_greedy_queries(cfg)
greedy_trends = None if missing else attribution.difficulty_trends(
    {d: attribution.example_variants(attribution.ensure_greedy_query_scores(cfg), enc, d) for d in ("math", "code")}, train, seed=cfg.seed)
if missing:
    display(HTML(f"<p>No correct greedy generation on the query split in {', '.join(missing)}: the greedy robustness rows are left out.</p>"))
trends.pivot_table(index=["train", "query"], columns="variant", values="value", sort=False).round(3)

# %% [markdown]
# Does a trend follow the training mix? The main trends on the canonical model and on other
# models of the study (flipped and control at seed 0, baseline at seeds 1 and 2), each with its
# own EK-FAC factors and the canonical model's queries (models that need retraining: not under
# `pretrained`). Beside each arm's trend: its training domain's mix trend (Spearman of level vs SFT
# weight: -1 = easy levels weighted most), its difference from the mean of the baseline seeds, and
# the baseline seeds' spread (max - min) as the yardstick for a model-to-model difference.

# %%
model_trends = attribution.other_model_trends(cfg) if setting.retrains(cfg) else None
if model_trends is not None:
    shift = attribution.trend_shift_table(model_trends, attribution.model_mixes(cfg))
    display(shift.round(3))

# %% [markdown]
# ## Figure
#
# Mean influence of each training bucket on each domain's target, with 95% intervals over
# training examples (positive = helpful): raw scores, then per-token scores.

# %%
fig, axes = plt.subplots(1, 2, figsize=(8, 6.5))
plots.plot_bucket_heatmap(tables, ax=axes[0])
plots.plot_bucket_heatmap(tables_per_token, ax=axes[1])
axes[0].set_title("raw (summed loss)", fontsize=9)
axes[1].set_title("per token", fontsize=9)
fig.tight_layout()

# %% [markdown]
# The trends across models: if a trend flips with the training mix (flipped vs baseline), it
# reflects the mix the model saw more than a property of the data.

# %%
if model_trends is not None:
    fig, axes = plt.subplots(2, 2, figsize=(8, 6.4), sharey=True)
    for ax, (tr, q, *_) in zip(axes.ravel(), attribution.TREND_PAIRS):
        plots.plot_trend_models(model_trends, tr, q, ax=ax)
    axes[0, 0].legend(fontsize=8, frameon=False)
    fig.tight_layout()

# %% [markdown]
# Under corpus v2 (`tiny`) the flipped points sit where its mix predicts (lower for math training,
# higher for code), further from the baseline seeds than those seeds spread among themselves. Under
# round 1's corpus (`tiny-v1`, recorded) they moved the same way, but the three baseline seeds
# spread about as far.

# %% [markdown]
# The same bucket means for individual queries (thin lines) against the domain mean (thick):
# single queries disagree much more than the means suggest.

# %%
spread = pipeline.per_query_bucket_means(cfg, scores, train)
fig, ax = plt.subplots(figsize=(8, 3.5))
plots.plot_query_spread(spread, ax=ax)
fig.tight_layout()

# %% [markdown]
# ## Takeaway
#
# The verdicts follow the {ref}`protocol's rule <protocol-verdicts>`: a trend holds only if it
# holds under both the raw and the per-token score; where the two disagree the row says
# "depends on normalisation".
#
# What the `tiny` run on corpus v2 showed (`book/log.md`, 2026-12-02; the round-1 setting's
# verdicts sit beside it in the summary as `tiny-v1`). **Harder math -> math still depends on
# normalisation**: raw +0.03 [-0.01, +0.08], per token -0.19 [-0.24, -0.14]. Without the two
# template-choice positions it **holds** under both scores (+0.14, +0.05 [+0.00, +0.09]), and on
# the greedy queries too (+0.07, +0.06): on v2 the negative per-token trend comes from the
# end-of-turn and after-the-first-answer positions, where a short easy CoT spends a larger share of
# its tokens. **Harder math -> code holds**, weakly: +0.06 [+0.01, +0.11] raw, +0.05 [+0.00, +0.09]
# per token (greedy queries: +0.07, +0.13). **Easier code -> code holds**: -0.07 [-0.11, -0.02]
# raw, -0.26 [-0.30, -0.21] per token, where round 1's corpus gave "does not hold"; on the greedy
# queries it is inconclusive (-0.01, -0.03). Code -> math (no claim) is inconclusive.
#
# **The trends on the other models say what these verdicts mean.** The two other baseline seeds
# agree on easier code -> code (holds on both) and on harder math -> math (depends on normalisation
# on both); harder math -> code is "depends on normalisation" on both, so its "holds" above is one
# seed's. The flipped model, trained with every level weight reversed, reverses all three claimed
# trends (math -> math -0.21 / -0.41, math -> code -0.37 / -0.32, code -> code +0.20 / +0.07: does
# not hold), and its distance from the baseline seeds' mean (-0.31 / -0.31, -0.39 / -0.35, +0.28 /
# +0.30) is larger than the spread of those three seeds (0.10 / 0.13, 0.12 / 0.06, 0.05 / 0.18) in
# every pair and under both scores. On v2, then, the cross-domain trends follow the SFT mix: the
# levels a model saw less of in SFT carry more influence on its correct answers. The baseline mix
# under-weights easy code and hard math, so under it the paper's code trend appears; under the
# flipped mix the opposite one does. One flipped and one control model against three baseline
# seeds: the comparison was declared before the numbers, but a second flipped seed would make it
# firmer.
#
# What the recorded round-1 setting (`tiny-v1`: corpus v1, round-2 rules, sampled queries;
# `book/log.md`, 2026-12-02) showed. **Harder math -> math depends on normalisation**: the raw Spearman is
# slightly positive (+0.07) but the per-token one clearly negative (-0.26): longer, harder CoTs
# win by length, and a token of an easy CoT is worth more. **Harder math -> code** also depends on
# normalisation (raw +0.08, per token -0.01, interval across zero), while on the greedy queries it
# holds under both (+0.35, +0.28). **Easier code -> code does not
# hold**: both scores rank *harder* code higher (+0.20 raw, +0.17 per token). Why the round-1
# verdict flipped: with greedy queries (the robustness rows) it holds (-0.05 raw, -0.33 per
# token), as in round 1. The sampled target differs from the greedy one: easy problems yield
# several distinct correct samples, so they weigh more (code: 84 level-1 and 4 level-5 queries
# sampled, against 50 and 10 greedy; 291 queries from 198 problems). Code ->
# math, for which the paper states no claim, is flat. Dropping the two template-choice positions
# turns the raw math -> math trend to zero but leaves the per-token one negative, so the length
# effect is not an artifact of those tokens. On this setting the paper's cross-domain claims do not
# reproduce under fair normalisation; the reason we believe is that the generated CoTs' length
# grows with the level, which the raw score rewards.
#
# **The trends on other models under `tiny-v1`** (added to the same record): the
# flipped model moves the way its mix predicts, levels a model saw less of gaining influence
# (flipped - mean of the baseline seeds: math -> math -0.29 raw / -0.09 per token, math -> code
# -0.17 / -0.08, code -> code +0.26 / +0.36); control, whose math mix is nearer uniform and whose
# code mix is close to flipped's, moves little in math and about as far in code (+0.24 / +0.29).
# But the three baseline seeds, trained on the same mix, spread about as widely (max - min 0.24 /
# 0.24, 0.40 / 0.35, 0.34 / 0.42): baseline seed 2 alone gives
# harder math -> code and easier code -> code **holds** where seeds 0 and 1 give does not hold or
# depend on normalisation. So whether a trend follows the mix cannot be told from one model per
# arm, and each verdict above is one model's: its interval resamples training examples, not the
# training run.

# %%
def est(frame, tr, q, var):
    return frame[(frame["train"] == tr) & (frame["query"] == q) & (frame["variant"] == var)]["estimate"].iloc[0]

rows = []
for tr, q, sign, claim, primary in attribution.TREND_PAIRS:
    paper = "negative" if sign < 0 else "positive"
    if "no claim" in claim:
        paper = "no claim (read against -)"
    rows.append(analysis.trend_row(claim, f"Spearman(level, influence), {tr} train, {q} queries (sampled D_correct)",
                                   est(trends, tr, q, "raw"), est(trends, tr, q, "per_token"), sign, paper=paper, primary=primary))
for tr, q, sign, claim, _ in attribution.TREND_PAIRS[:3]:
    rows.append(analysis.trend_row(claim, f"... without the two template-choice positions, {tr} train, {q} queries",
                                   est(trends, tr, q, "raw_no_choice"), est(trends, tr, q, "per_token_no_choice"), sign,
                                   paper="negative" if sign < 0 else "positive", primary=False))
    if greedy_trends is None:
        continue
    rows.append(analysis.trend_row(claim, f"... on greedy queries, {tr} train, {q} queries",
                                   est(greedy_trends, tr, q, "raw"), est(greedy_trends, tr, q, "per_token"), sign,
                                   paper="negative" if sign < 0 else "positive", primary=False))
model_rows = attribution.model_trend_rows(model_trends) if model_trends is not None else []
wall = time.perf_counter() - t_start
analysis.write_findings(cfg.name, "01", rows + model_rows, **pipeline.provenance(cfg, wall))
display(HTML(verdicts.render_findings_html(rows)))

# %% [markdown]
# The same rows on the other models of the study (secondary; intervals from 1,000 resamples of
# the training examples).

# %%
if model_rows:
    display(HTML(verdicts.render_findings_html(model_rows, caption="the trends on other models of the study")))

# %%
display(HTML(verdicts.render_provenance_html(pipeline.provenance(cfg, wall))))
