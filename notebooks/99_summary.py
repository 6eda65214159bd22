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
# collects them. The verdict rule was declared before any result ({ref}`protocol <protocol-verdicts>`): **holds** when our
# effect has the paper's sign and its 95% interval excludes zero; **mixed** when the sign agrees
# but the interval includes zero, or it holds in one domain only; **does not hold** otherwise.

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
