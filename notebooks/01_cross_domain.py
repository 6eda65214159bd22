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
# Declared metric ({ref}`protocol <protocol-metrics>`): mean example influence per (train domain, level) on each query
# domain; Spearman of difficulty vs influence within math (both query domains) and within code
# (code queries), with bootstrap intervals over training examples.

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

from infra_study import analysis, pipeline, plots
from infra_study.profiles import get_profile

t_start = time.perf_counter()
cfg = get_profile(profile, overrides)
train = pipeline.load_split(cfg, "train")
queries = pipeline.load_queries(cfg)
{"train examples": len(train), **{f"{d} queries": len(q) for d, q in queries.items()}}

# %% [markdown]
# ## Computation
#
# One pass over the training set gives every example's influence on the two domain-mean queries
# (rows `math`, `code`) and on a few individual queries, to show how much the mean hides.

# %%
scores = pipeline.ensure_scores(cfg)
example = {d: scores.example[scores.row_ids.index(d)].double().numpy() for d in ("math", "code")}
tables = {d: analysis.bucket_influence(example[d], train, seed=cfg.seed) for d in ("math", "code")}
tables["math"]

# %% [markdown]
# The scores obey the convention and sum as they must: token scores of each example add up to
# its example score.

# %%
for d in ("math", "code"):
    assert np.isfinite(example[d]).all()
r = scores.row_ids.index("math")
tok_sums = np.array([scores.tokens_of(i)[r].sum().item() for i in range(len(train))])
assert np.allclose(tok_sums, example["math"], rtol=1e-3, atol=1e-6 * np.abs(example["math"]).max())

# %% [markdown]
# Difficulty trends: Spearman's rho between level and influence, within each training domain.

# %%
trends = {
    ("math", "math"): analysis.difficulty_trend(example["math"], train, "math", seed=cfg.seed),
    ("math", "code"): analysis.difficulty_trend(example["code"], train, "math", seed=cfg.seed),
    ("code", "code"): analysis.difficulty_trend(example["code"], train, "code", seed=cfg.seed),
    ("code", "math"): analysis.difficulty_trend(example["math"], train, "code", seed=cfg.seed),
}
{f"{tr} train -> {q} queries": str(e) for (tr, q), e in trends.items()}

# %% [markdown]
# ## Figure
#
# Mean influence of each training bucket on each domain's target, with 95% intervals over
# training examples (positive = helpful).

# %%
fig, ax = plt.subplots(figsize=(6, 6))
plots.plot_bucket_heatmap(tables, ax=ax)
fig.tight_layout()

# %% [markdown]
# The same bucket means for individual queries (thin lines) against the domain mean (thick):
# single queries disagree much more than the means suggest.

# %%
spread = pipeline.per_query_bucket_means(cfg, scores, train)
fig, ax = plt.subplots(figsize=(9, 3.5))
plots.plot_query_spread(spread, ax=ax)
fig.tight_layout()

# %% [markdown]
# ## Takeaway
#
# The verdicts follow the {ref}`protocol's rule <protocol-verdicts>` (holds: the paper's sign and a 95% interval excluding zero;
# mixed: the sign agrees but the interval includes zero, or it holds in one domain only).

# %%
rows = [
    {"claim": "harder math examples help math reasoning more", "metric": "Spearman(level, influence), math train, math queries",
     "ours": trends[("math", "math")].value, "interval": trends[("math", "math")].interval, "paper": "positive",
     "verdict": analysis.verdict(trends[("math", "math")], +1)},
    {"claim": "harder math examples help code reasoning more", "metric": "Spearman(level, influence), math train, code queries",
     "ours": trends[("math", "code")].value, "interval": trends[("math", "code")].interval, "paper": "positive",
     "verdict": analysis.verdict(trends[("math", "code")], +1)},
    {"claim": "easier code examples help code reasoning more", "metric": "Spearman(level, influence), code train, code queries",
     "ours": trends[("code", "code")].value, "interval": trends[("code", "code")].interval, "paper": "negative",
     "verdict": analysis.verdict(trends[("code", "code")], -1)},
]
wall = time.perf_counter() - t_start
analysis.write_findings(cfg.name, "01", rows, **pipeline.provenance(cfg, wall))
analysis.findings_frame(rows)

# %%
print(pipeline.provenance_line(cfg, wall))
