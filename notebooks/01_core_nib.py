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
# # Claim 1: two independent modules agree on one frozen backbone (core NIB)
#
# **The release's claim.** Two independently initialised ABI modules on a frozen T5-large backbone pass the
# Non-Inferiority Benchmark once the candidate is calibrated to the anchor's correction vectors with
# corrMSE: top-5 overlap 0.8725, top-1 0.8508, JS 0.01391, entropy difference 0.2256 (five chunks of 512
# tokens, seed 7777).
#
# **How we test it.** An *anchor* module (one tap, small bottleneck) and *candidate* modules (several taps
# with per-tap LayerNorm, a wider bottleneck, their own seeds) each learn a domain on the frozen backbone
# (domain stage, until the validation loss plateaus), then each candidate is calibrated to the anchor's
# corrections with the release's four-phase schedule. The correction is added where the release adds it:
# to the state the LM head reads, after the model's final norm. We score the official protocol *and*
# held-out windows (files never seen in training), with window-clustered bootstrap intervals, several
# training seeds, three floors (no module; the candidate before calibration; an untrained module put
# through the identical calibration) and a seed-noise ceiling (a second anchor trained identically with
# another seed).
#
# **Where the test can fail.** A NIB pass means nothing if the bare backbone passes too. Every *setting*
# (a domain and a correction site) therefore has a pre-registered **regime gate**: it is testable only if
# the anchor lowers held-out perplexity by at least 25 % *and* the bare backbone fails the held-out NIB
# against the anchor. Settings: **Python** (the weak regime: the backbone was pre-trained on much Python),
# a seeded **Python dialect** (the strong regime: keywords and the most frequent identifiers renamed to
# nonce words, so the module has something to teach), and the dialect with the correction added **before**
# the final norm (this project's earlier site, kept to show whether the site matters).
#

# %% tags=["parameters"]
# Parameters (papermill). None means "the profile's value"; see abi/profiles.py.
profile = "cpu"
results_dir = None
backbone = None
settings = None
dialect_words = None
anchor_taps = None
anchor_bottleneck = None
candidate_taps = None
candidate_bottleneck = None
n_train_windows = None
window_len = None
domain_steps = None
domain_lr = None
calibration_steps = None
calibration_lr = None
candidate_seeds = None
dose_settings = None
dose_windows = None
protocol = None
stat_windows = None
eval_split = None
ni_margin = None


# %%
from abi.experiments import core_nib
from abi.notebook import start_run

params, out_dir = start_run(core_nib.validate, globals())

import pandas as pd
from IPython.display import Image, Markdown, display
from myst_nb import glue

from abi.experiments import core_nib_stats
from abi.plotting.core_nib import plot_calibration_curve, plot_dose_response, plot_nib_arms, plot_regimes, setting_label
from abi.reports.core_nib import arm_table, dose_table, official_table, regime_table, verdict_sentence
from abi.results import load_result, write_result

result_path = out_dir / "core_nib.json"
pd.Series({k: v for k, v in params.items() if k != "bootstrap"}, dtype=object).to_frame("value")


# %% [markdown]
# ## Running every setting
#
# Per setting: the backbone is loaded from the offline registry and fingerprinted (SHA-256 over every
# weight) before any training; the corpus (or its dialect) is split at file level by a hash of the path;
# training windows come from the train split, the stopping rule's and the curves' windows from validation,
# and every reported number from the held-out split. Tap features are computed once and cached, and so is
# every trained module (the module store: a re-run reads a module trained before with the same inputs). Every
# module learns the domain with cross-entropy through the frozen head (AdamW, weight decay 0.01, `proj_out`
# started at zero so a module starts as the bare backbone), evaluated on validation windows every few
# steps and stopped when the validation loss plateaus, its best state restored. Each candidate is then
# calibrated to the anchor's corrections with corrMSE: four phases with learning rates in the release's
# ratios (1 : 0.1 : 0.01 : 0.001) and step fractions (25/19/19/37 %), a 2.5 % warm-up, gradient clipping at
# 1.0, and the state with the best 50-step rolling-mean loss restored.
#

# %%
runs = {setting: core_nib.run_setting(params, setting) for setting in params["settings"]}
result = core_nib.build_result(params, runs)
write_result(result_path, result)
result = load_result(result_path)  # re-read: everything below comes from the verified file
print(f"wrote {result_path.name}; backbone unchanged: {result['backbone']['fingerprint_before'] == result['backbone']['fingerprint_after']}")


# %% [markdown]
# ## The regime gate
#
# Which settings can test the claim at all: the anchor's held-out perplexity reduction on its own
# backbone, and whether the bare backbone already passes the NIB against the anchor.
#

# %%
figures = out_dir / "figures"
plot_regimes(result, figures / "core_nib_regimes.png")
display(Image(filename=str(figures / "core_nib_regimes.png")))
regime_table(result)


# %% [markdown]
# ## Calibration curves
#

# %%
plot_calibration_curve(result, figures / "core_nib_calibration.png")
display(Image(filename=str(figures / "core_nib_calibration.png")))


# %% [markdown]
# ## The official protocol, per training seed
#
# The release's protocol: five windows drawn with seed 7777 from the held-out stream, the first positions of
# each skipped. One verdict per candidate seed, per setting.
#

# %%
for setting in result["settings"]:
    display(Markdown(f"**{setting_label(result, setting)}**"))
    display(official_table(result, setting))


# %% [markdown]
# ## Held-out windows: every arm, with intervals
#
# Intervals are 95 % window-clustered bootstrap intervals (the window is the unit). Floors and ceiling are
# scored against the same anchor on the same windows. The *effect positions* are those where the anchor's
# top-1 token differs from the bare backbone's: where the module changes the prediction, so where two
# modules can agree or disagree about what the domain teaches.
#

# %%
plot_nib_arms(result, figures / "core_nib_arms.png")
display(Image(filename=str(figures / "core_nib_arms.png")))
for setting in result["settings"]:
    display(Markdown(f"**{setting_label(result, setting)}**"))
    display(arm_table(result, setting))


# %% [markdown]
# ## How much calibration data does agreement need?
#
# If independent modules learn the same domain, a trained candidate should match the anchor with less
# calibration data than an untrained module put through the identical calibration. Both are calibrated on
# the first 8, 32 and 256 training windows (three seeds each) and scored on held-out windows.
#

# %%
plot_dose_response(result, figures / "core_nib_dose.png")
display(Image(filename=str(figures / "core_nib_dose.png")))
dose_table(result)


# %% [markdown]
# ## Verdict
#

# %%
for key, value in core_nib_stats.glue_values(result).items():
    glue(key, value, display=False)
display(Markdown(verdict_sentence(result)))

