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
# # Claim 4: a module survives an update of its backbone (backbone-update invariance)
#
# **The release's claim.** An ABI module is trained on a backbone; the backbone is then fine-tuned for 1,000
# steps on WikiText-2, and the old module is applied to the updated backbone *zero-shot*. Transfer efficacy was
# 304.3 % on T5-large (raw 35.22, zero-shot 25.61, oracle 32.06) and 65.3 % on GPT-2-medium; the claim passes at 50 %.
#
# **What the original did.** Its update carried a *stability term*: the mean squared difference between the
# module's hidden state (its input projection and norm) on the updated backbone and on the old one, the module
# frozen, so the backbone was not updated freely. Its efficacy comes in two formulas. The FAQ's is
# (raw - zero-shot) / (raw - oracle). The GPT-2-medium code divides the zero-shot *relative* gain by the oracle's
# relative gain, each against its own baseline: on the release's own perplexities that gives 65.3 %, where the
# FAQ's formula gives 56.3 %. The T5 update mostly taught T5 the window format (raw code perplexity 63.7 -> 35.2),
# which left a small denominator (3.16, 9 % of the raw perplexity), so the ratio was very sensitive to noise.
#
# **How we test it.** On one backbone (smollm2-135m, module added after the final norm as in the release) in
# two settings, as in claim 1: `python` (weak regime: the model already knows Python, a module barely helps) and
# `python-dialect` (strong regime: a seeded dialect of the same code, where a module matters). Modules are trained
# on B with several seeds; B is fully fine-tuned on English Wikipedia prose (the offline stand-in for WikiText-2)
# with several seeds, once *without* anything that protects the module (the claim as stated) and once with the
# release's stability term; the old module is applied to each updated backbone B' unchanged. Two gates decide
# beforehand whether a setting can test the claim: the module must matter on B (it lowers held-out domain
# perplexity by at least 25 % and the bare B fails the NIB against it), and the update must *take* (it lowers
# the prose perplexity and changes the bare domain perplexity by at least 10 %). Every number comes from
# held-out text. t5-mini, an extra backbone of earlier editions, is left out of this profile: in those runs its
# prose update raised its own prose perplexity instead of lowering it (the update did not take), so it could not
# test the claim within the budget.

# %% tags=["parameters"]
# Parameters (papermill). None means "the profile's value"; see abi/profiles.py.
profile = "cpu"
results_dir = None
settings = None
module_seeds = None
update_seeds = None
updates = None
domain_steps = None
finetune_steps = None
finetune_lr = None
eval_windows = None

# %%
from abi.experiments import backbone_invariance as claim
from abi.notebook import start_run

params, out_dir = start_run(claim.validate, globals())

import pandas as pd
from IPython.display import Image, Markdown, display
from myst_nb import glue

from abi.experiments.backbone_invariance_stats import glue_values
from abi.plotting.backbone_invariance import plot_efficacy, plot_perplexities
from abi.reports.backbone_invariance import (
    efficacy_table,
    gate_table,
    perplexity_table,
    update_table,
    verdict_sentence,
)
from abi.results import load_result, write_result

result_path = out_dir / "backbone_invariance.json"
pd.Series({k: v for k, v in params.items() if k != "bootstrap"}, dtype=object).to_frame("value")

# %% [markdown]
# ## The shared updates, then one setting at a time
#
# First the backbone B and the prose: B's prose perplexity on held-out articles, and the unprotected updates
# (one per update seed; a finished update is cached on disk and reloaded on a re-run). They do not depend on the
# domain, so both settings share them. Then, per setting: modules on B (one per module seed) and a fresh module
# on B (the original's oracle); for every updated backbone B' its features, a fresh module on B' (our oracle) and
# every condition scored on the same held-out windows; the protected updates are made per setting, since their
# stability term needs the module. A finished setting is kept on disk, so an interrupted run resumes after it.

# %%
shared = claim.prepare_shared(params)
runs = {name: claim.run_setting(shared, name) for name in params["settings"]}
result = claim.build_result(shared, runs)
write_result(result_path, result)
result = load_result(result_path)  # re-read: everything below comes from the verified file
print(f"wrote {result_path}")

# %% [markdown]
# ## Can each setting test the claim?
#
# The regime gate (does the module matter on B?) and the update gate (did each update take?), decided before
# any efficacy is looked at.

# %%
gate_table(result)

# %%
for name in result["settings"]:
    display(Markdown(f"**{name}**"))
    display(update_table(result, name))

# %% [markdown]
# ## Held-out domain perplexity, every condition
#
# B's conditions with 95 % window-bootstrap intervals; the updated backbones' as the mean and range over the
# seed grid (a *cell* is one update seed and one module seed).

# %%
figures = out_dir / "figures"
plot_perplexities(result, figures / "backbone_invariance_perplexity.png")
display(Image(filename=str(figures / "backbone_invariance_perplexity.png")))
for name in result["settings"]:
    display(Markdown(f"**{name}**"))
    display(perplexity_table(result, name))

# %% [markdown]
# ## Transfer efficacy: both formulas, both oracles
#
# Our oracle is a fresh module trained on the *updated* backbone B' with the same budget; the original's is a
# fresh module on the *old* backbone B. With our oracle the two formulas coincide (both gains are measured
# against raw B'); with the original's they differ. Intervals come from a hierarchical bootstrap that
# resamples update seeds, module seeds and held-out windows together. A ratio is *ill-conditioned* when its
# denominator's interval reaches below 10 % of the raw B' perplexity; then it gets no pass or fail.

# %%
plot_efficacy(result, figures / "backbone_invariance_efficacy.png")
display(Image(filename=str(figures / "backbone_invariance_efficacy.png")))
efficacy_table(result)

# %% [markdown]
# ## Verdict
#
# Each setting's row is the unprotected update under our oracle (FAQ formula), gated by both gates; the claim's
# verdict combines the rows. The protected update is reported beside it, as the release ran it.

# %%
for key, value in glue_values(result).items():
    glue(key, value, display=False)
display(Markdown(verdict_sentence(result)))
