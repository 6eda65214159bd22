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
# # The setting: corpus, model and how well it reasons
#
# **Question.** The paper studies Qwen2.5-7B-Instruct fine-tuned on math and code chains of
# thought (CoTs) of graded difficulty. Our embedded stand-in is a generated corpus of math and
# code problems at five difficulty levels, each with a step-by-step CoT whose segments are known
# (ordinary steps, exploratory continuations after the first answer, the final answer), and a
# 1M-parameter Qwen2 model trained on it on a CPU (profile `tiny`). A second setting,
# `pretrained`, fine-tunes a real pretrained instruct model, SmolLM2-135M-Instruct, on GSM8K-derived
# word problems and the generated code problems; the book runs every chapter under both (the parts
# that retrain the model many times skip under `pretrained`, saying why). This
# chapter shows the data and the model, and how well the model reasons.

# %% tags=["parameters"]
profile = "tiny"
overrides = {}

# %% [markdown]
# ## Setup
#
# The profile fixes the corpus configuration; the corpus is generated once (seeded,
# byte-identical for the same seed) and cached under `runs/<profile>/corpus/`.

# %%
import time

import matplotlib.pyplot as plt
import pandas as pd
from IPython.display import HTML, display

from infra_study import pipeline, plots, setting, verdicts
from infra_study.corpus import corpus_stats
from infra_study.profiles import get_profile
from infra_lib.records import load_records

t_start = time.perf_counter()
cfg = get_profile(profile, overrides)
display(HTML(setting.chapter_note_html(cfg, "00")))
paths = pipeline.ensure_corpus(cfg)
splits = {name: load_records(path) for name, path in paths.items()}
display(HTML(verdicts.render_facts_html({f"{name} split": len(recs) for name, recs in splits.items()}, caption="examples per split")))

# %% [markdown]
# ## Computation
#
# Counts, mean response length and the share of CoTs with an exploratory segment, per domain and
# difficulty level, on the SFT training split.

# %%
stats = corpus_stats(splits["train"])
stats

# %% [markdown]
# Every record passed schema validation on load; the segments cover each response exactly, and
# the splits share no problem.

# %%
for name, recs in splits.items():
    for r in recs:
        spans = r["meta"]["segments"]
        assert spans[0][0] == 0 and spans[-1][1] == len(r["response"]), r["id"]
prompts = {name: {r["prompt"] for r in recs} for name, recs in splits.items()}
names = list(prompts)
for i, a in enumerate(names):
    for b in names[i + 1:]:
        assert not prompts[a] & prompts[b], f"splits {a} and {b} share problems"

# %% [markdown]
# ## Figure
#
# Response length grows with difficulty in both domains; the exploratory share is flat by design.

# %%
fig, axes = plt.subplots(1, 2, figsize=(8, 3.2))
plots.plot_corpus_stats(stats, "mean_chars", ax=axes[0], ylabel="mean response length (characters)")
plots.plot_corpus_stats(stats, "exploratory_share", ax=axes[1], ylabel="share of CoTs with exploration")
fig.tight_layout()

# %% [markdown]
# A few training CoTs with their segments shaded (blue: step, orange: exploratory, green:
# answer); hover a segment to see its kind and character span.

# %%
examples = pipeline.pick_examples(splits["train"], per_domain=2, exploratory=True)
display(HTML("".join(plots.render_segments_html(r) for r in examples)))

# %% [markdown]
# ## The model
#
# A small Qwen2-architecture model (`Qwen2ForCausalLM`, the class of Qwen2.5-7B-Instruct) with a
# BPE tokenizer trained on the corpus, every digit its own token. It is trained in two stages:
# a **base** stage on the base split (CoTs without exploration, easy levels weighted up), once per
# profile, standing in for the instruct model; then a short **SFT** stage on the train split with
# the baseline mix (math skews easy, code skews hard), which the experiments redo from the same
# base checkpoint. Both load with `from_pretrained`, as a real checkpoint would. Under
# `pretrained` the converted SmolLM2 checkpoint takes the base's place and only SFT is trained.

# %%
from infra_study.model import count_parameters, load_model
from infra_study.training import has_loss_curve, load_loss_curve

model_dir = pipeline.ensure_model(cfg)
base_dir = pipeline.ensure_base(cfg)
display(HTML(verdicts.render_facts_html({"parameters": f"{count_parameters(load_model(model_dir)):,}"})))

# %% [markdown]
# Training loss per response token, base then SFT (SFT only when the base is a pretrained checkpoint).

# %%
curves = {name: load_loss_curve(d) for name, d in (("base", base_dir), ("sft", model_dir)) if has_loss_curve(d)}
fig, axes = plt.subplots(1, len(curves), figsize=(4 * len(curves), 3), squeeze=False)
plots.plot_loss_curves(curves, ax=axes[0])
fig.tight_layout()

# %% [markdown]
# Generation on the held-out test split, graded by answer match (math) or by the hidden asserts
# run in the sandbox (code): sampled pass@1 at temperature 1 (the primary accuracy, the mean over
# the samples of each problem) and greedy accuracy beside it.

# %%
import json

eval_dir = pipeline.ensure_eval(cfg)
accuracy = json.loads((eval_dir / "accuracy.json").read_text())
sampled = json.loads((eval_dir / "accuracy_sampled.json").read_text())
for table in (accuracy, sampled):
    assert all(0.0 <= v <= 1.0 for dom in table.values() for v in dom.values())
fig, axes = plt.subplots(2, 1, figsize=(7, 4.4))
plots.plot_accuracy_heatmap(sampled, ax=axes[0])
plots.plot_accuracy_heatmap(accuracy, ax=axes[1])
axes[0].set_title(f"sampled pass@1 ({cfg.eval.test_samples} samples, T = {cfg.eval.temperature})", fontsize=9)
axes[1].set_title("greedy", fontsize=9)
fig.tight_layout()

# %% [markdown]
# Under `pretrained`: the converted model before SFT beside the fine-tuned one, per domain and
# level, and HumanEval (greedy, after SFT) as an extra held-out code test. Before SFT only the
# first few test problems of each level are run, greedy: the model then rarely stops before the
# length cap, so each costs several times what it costs after SFT.

# %%
if cfg.pretrained is not None:
    before_after = setting.accuracy_before_after(cfg)
    assert before_after.drop(columns=["problems before", "problems after"]).stack().dropna().between(0, 1).all()
    display(before_after.round(3))

# %% [markdown]
# Where no generation is right (math on a small model), the reference solutions' likelihood is the
# graded signal that still moves: mean log-likelihood per token (nats) of the same test problems
# before and after SFT; positive differences mean SFT made the references more likely.

# %%
if cfg.pretrained is not None:
    gold = setting.gold_loglik_before_after(cfg)
    assert (gold[["before", "after"]] <= 0).all().all() and (gold["problems"] >= 1).all()
    display(gold.round(3))

# %% [markdown]
# The query sets (D_correct): the model's own correct generations on the query split, sampled at
# temperature 1 (k per problem, identical texts kept once), which the attribution chapters use as
# targets; the greedy ones are a robustness target. How many explore after their first answer:

# %%
queries = pipeline.load_queries(cfg)
summary = json.loads((eval_dir / "eval_config.json").read_text())["summary"]
pd.DataFrame({d: {"sampled queries": len(queries[d]), "exploring share": summary["exploring_share"][d],
                  "greedy queries": summary["n_queries_greedy"][d], "exploring share (greedy)": summary["exploring_share"][f"{d}_greedy"]}
              for d in ("math", "code")}).T

# %% [markdown]
# A correct and a wrong generation per domain, from the test split.

# %%
gens = pipeline.generation_examples(cfg, per_domain=1)
display(HTML(plots.render_generations_html(gens)))

# %% [markdown]
# ## Takeaway
#
# The corpus gives both domains five difficulty levels, natural-language CoTs with logic
# connectors for math and planned Python functions for code, and ground-truth segment labels,
# which the sequence-level finding needs. The model trained on it solves easy problems in both
# domains and fails more often as problems grow harder (under `tiny`; under `smoke` it is too
# small to solve anything and the query sets fall back to reference solutions). Greedy
# generations rarely explore after their first answer, so D_correct holds few exploratory
# segments; exploration is studied on the training side.

# %%
display(HTML(verdicts.render_provenance_html(pipeline.provenance(cfg, time.perf_counter() - t_start))))
