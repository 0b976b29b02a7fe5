# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Summary: every published figure beside ours
#
# One row per published figure. *Published* is quoted from the release's FAQ. *Ours* is read from the
# claim's result file at build time, on this book's profile. The verdict is the one the claim's chapter
# states, computed once when the result is written and re-derived by `make verify`: **reproduced**, **not
# reproduced**, **passes but not discriminative**, **not testable in this regime** (the module does not matter
# enough, or the bare backbone already passes) or **mixed**, with the reason. A row of a claim that stores row
# verdicts (claim 1, one row per setting) shows its own. Each claim's chapter shows the full evidence:
# intervals, floors, ceilings and figures. A claim whose notebook has not been run yet is listed as **not
# testable here**.

# %% tags=["parameters"]
# Parameters (papermill). None means the default.
profile = "cpu"
results_dir = None

# %%
from pathlib import Path

import pandas as pd
from IPython.display import HTML, Markdown, display
from markdown_it import MarkdownIt
from myst_nb import glue

from abi.paths import REPO_ROOT
from abi.reports.summary import at_a_glance, findings, glue_name, scale_comparison, summary_table, verdict_counts

out_dir = Path(results_dir) if results_dir else REPO_ROOT / "results"
table = summary_table(out_dir)
counts = verdict_counts(table)
for verdict, count in counts.items():
    glue(glue_name(verdict), count, display=False)
glue("summary_at_a_glance", at_a_glance(table).style.hide(axis="index"), display=False)
# As HTML: a page that pastes another notebook's glued value renders its HTML, not its Markdown.
glue("summary_findings", HTML(MarkdownIt().render(findings(table, out_dir))), display=False)
display(Markdown("; ".join(f"**{count}** {verdict}" for verdict, count in counts.items()) + " (claims)."))

# %%
pd.set_option("display.max_colwidth", None)
table[["claim", "figure", "published", "ours", "verdict"]].style.hide(axis="index")

# %% [markdown]
# ## Why, claim by claim

# %%
for claim, group in table.groupby("claim", sort=False):
    first = group.iloc[0]
    reasons = " ".join(dict.fromkeys(why[0].upper() + why[1:] + "." for why in group["why"]))
    display(Markdown(f"**{claim}: {first['claim verdict']}.** {reasons}"))

# %% [markdown]
# ## The release's scale beside this run's
#
# Every parameter in which this book's result files differ from the `paper` profile, which names the
# release's models and sizes (each claim's module under `abi/experiments/`). **No result in this book comes
# from the `paper` profile**: it needs a GPU and the model hub, and has not been run.

# %%
scale_comparison(out_dir).style.hide(axis="index")
