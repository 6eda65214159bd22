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
# collects them, for every setting that has findings. The verdict rules were declared before any
# result ({ref}`protocol <protocol-verdicts>`): **holds** (the paper's sign, 95% interval excluding
# zero), **does not hold** (the opposite sign, interval excluding zero), **inconclusive** (the
# interval includes zero; the row says why), **mixed** (the parts of a claim disagree),
# **depends on normalisation** (raw and per-token scores disagree).

# %% tags=["parameters"]
profile = "tiny"
overrides = {}
settings = ["tiny", "pretrained"]

# %%
from pathlib import Path

import pandas as pd
from IPython.display import HTML, display

from infra_study import analysis, verdicts
from infra_study.paths import project_root
from infra_study.profiles import get_profile

cfg = get_profile(profile, overrides)
root = project_root() or Path.cwd()
records = sorted((root / "book" / "records").glob("*.json"))
by_setting = verdicts.collect_settings([cfg.name, *settings], records)
for findings in by_setting.values():
    for f in findings.values():
        assert {r["verdict"] for r in f["rows"]} <= set(analysis.VERDICTS)

# %% [markdown]
# ## Where the claims stand
#
# One line per claim of the paper, a verdict per setting (hover a badge for the reason), the
# paper's own number where it gives one, and the chapter that judges it. Primary rows decide a
# claim's verdict; secondary claims go beyond the paper or check robustness.

# %%
display(HTML(verdicts.render_headline_html(by_setting)))

# %% [markdown]
# ## Validation: how far to trust the scores
#
# These rows check the method, not a claim of the paper.

# %%
display(HTML(verdicts.render_headline_html(by_setting, validation=True)))

# %% [markdown]
# The intro page shows the same headline: this notebook writes it beside the executed chapters.

# %%
out = root / "book" / "_generated"
if out.is_dir():
    (out / "status_headline.html").write_text(verdicts.render_headline_html(by_setting, link_prefix="_generated/"))

# %% [markdown]
# ## Every row, by chapter
#
# The full verdict table of each chapter for this profile, secondary metrics included.

# %%
mine = by_setting.get(cfg.name, {})
display(HTML("".join(f"<h3>{verdicts.CHAPTERS.get(n, (n, n))[1]}</h3>" + verdicts.render_findings_html(f["rows"])
                     for n, f in sorted(mine.items()))))

# %% [markdown]
# Provenance of each chapter's run.

# %%
pd.DataFrame([{"setting": s, "chapter": n, **{k: f.get(k) for k in ("profile", "seed", "wall_s", "hardware", "finished")}}
              for s, fs in by_setting.items() for n, f in sorted(fs.items())]).style.hide(axis="index")
