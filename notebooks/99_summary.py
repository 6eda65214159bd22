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
# # Summary: the paper's claims against ours
#
# Every finding chapter writes its verdict rows to `runs/<profile>/findings/NN.json`; this page
# collects them. The verdict rules were declared before any result ({ref}`protocol <protocol-verdicts>`):
# **holds** (the paper's sign, 95% interval excluding zero), **does not hold** (the opposite sign,
# interval excluding zero), **inconclusive** (the interval includes zero; the row says why),
# **mixed** (the parts of a claim disagree), **depends on normalisation** (raw and per-token
# scores disagree).

# %% tags=["parameters"]
profile = "tiny"
overrides = {}

# %%
import pandas as pd

from infra_study import analysis
from infra_study.profiles import get_profile

cfg = get_profile(profile, overrides)
findings = analysis.read_findings(cfg.name)
sorted(findings)

# %% [markdown]
# One row per claim, with the chapter it comes from.

# %%
rows = []
for number, f in findings.items():
    rows += [{"chapter": number, **r} for r in analysis.findings_frame(f["rows"]).to_dict("records")]
summary = pd.DataFrame(rows)
assert summary.empty or set(summary["verdict"]) <= set(analysis.VERDICTS)
summary

# %% [markdown]
# Provenance of each chapter's run.

# %%
pd.DataFrame([{"chapter": n, **{k: f.get(k) for k in ("profile", "seed", "wall_s", "hardware", "finished")}} for n, f in findings.items()])
