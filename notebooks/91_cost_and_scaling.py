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
# # Appendix: cost and scaling
#
# What does this reproduction cost, and how does the cost grow? The original reports wall times on one
# laptop GPU (path 2C: 237 minutes; cross-architecture: 7.4 minutes) and recomputes the frozen backbone at
# every training step. Everything below comes from `results/benchmarks.json`, written by `make benchmarks`
# (scripts under `benchmarks/`). Each timing is the median of repeated runs with the min-max range, and
# each headline figure is a ratio against a baseline measured in the same run. Absolute seconds are
# context only: they depend on the machine, which is named below. Measurements on a GPU, where one was
# lent, are in a separate file and a separate section, never mixed with the CPU figures.

# %% tags=["parameters"]
# Parameters (papermill). None means the default.
profile = "cpu"
results_dir = None
benchmarks_dir = None

# %%
from pathlib import Path

from IPython.display import HTML, Image, Markdown, display
from markdown_it import MarkdownIt
from myst_nb import glue

from abi.paths import REPO_ROOT
from abi.plotting.cost_and_scaling import plot_memory, plot_scaling
from abi.reports.cost_and_scaling import (
    claim_times_table,
    cold_build_summary,
    cold_build_table,
    end_to_end_table,
    feature_cache_table,
    glue_values,
    growth_table,
    nib_table,
    nib_target,
    thread_summary,
)
from abi.reports.loading import load_benchmarks

source = Path(benchmarks_dir) if benchmarks_dir else REPO_ROOT / "results"
out_dir = Path(results_dir) if results_dir else REPO_ROOT / "results"
cpu = load_benchmarks(source / "benchmarks.json", copy_to=out_dir)
gpu = load_benchmarks(source / "benchmarks-gpu.json", copy_to=out_dir, required=False)
for key, value in glue_values(cpu).items():
    glue(key, value, display=False)
# Shown in the reproduce chapter; as HTML, since a page that pastes another notebook's glued Markdown
# shows it as text.
glue("bench_claim_times", claim_times_table(cpu), display=False)
glue("bench_cold_build", HTML(MarkdownIt().render(cold_build_summary(cpu))), display=False)
glue("bench_threads", HTML(MarkdownIt().render(thread_summary(cpu))), display=False)
display(Markdown(f"CPU measurements on **{cpu['device']}**."))

# %% [markdown]
# ## The feature cache
#
# The backbone is frozen, so we compute its tap features once and train on the cache. The original
# recomputed the backbone at every step. Both steps below do the same optimisation work on the same batch
# (SmolLM2-135M, six taps, the claim-1 candidate); only where the features come from differs. The
# break-even point is the number of steps after which building the cache has paid for itself.

# %%
feature_cache_table(cpu)

# %% [markdown]
# ## The NIB evaluator
#
# Our metric computes all positions of a chunk at once in torch: float32 softmax, every sum and product in float64, top-1 and top-5 on the logits themselves (softmax keeps their order, ties go to the lower token index). It is timed on the same logits against two references: the release's NIB algorithm (float32 softmax over the whole vocabulary per chunk, JS with probabilities clipped at 1e-12, `argpartition` top-5 and a Python set intersection per position) and a float64 per-position implementation of the same metrics. The largest difference of its means from float64 is shown beside the times.

# %%
display(nib_table(cpu))
display(Markdown(nib_target(cpu)))

# %% [markdown]
# ## Scaling
#
# Time per step of the domain stage (cross-entropy through the frozen 49,152-wide head) and of calibration
# (corrMSE on cached features) against the bottleneck width (six taps) and the number of taps (bottleneck
# 512), each point measured in a fresh process so that its peak memory is its own. The growth exponent k
# is the slope of log(time) against log(x): 1 is linear, 2 quadratic.

# %%
figures = out_dir / "figures"
plot_scaling(cpu, figures / "benchmarks_scaling.png")
display(Image(filename=str(figures / "benchmarks_scaling.png")))
growth_table(cpu)

# %%
plot_memory(cpu, figures / "benchmarks_memory.png")
display(Image(filename=str(figures / "benchmarks_memory.png")))

# %% [markdown]
# ## End to end
#
# Each notebook's wall time and peak memory. The `smoke` rows are measured by the benchmark run itself;
# the `cpu` rows are those recorded by the committed `make book` run (a run that is no longer current
# for today's code is marked stale). A claim's run keeps each finished setting, so a re-run after a
# change to its notebook only resumes them and is short: the column of stage times, summed from what
# the result file records, says what computing the results cost, with the caches (features, fine-tuned
# backbones, trained modules) as that run found them. The target is judged on the longer of the two.
# The claims read their trained modules from the module store (`.cache/modules/`) when the same stage
# ran before; each module keeps the seconds its training took, so the next column adds those
# back: what the run costs with an empty module store (features and fine-tuned backbones still warm).
# Claim 2's source and native domain modules are kept as module files that record no training time,
# so its column leaves them out (its result records their stage times only in a run that trained them).
# The test suite is timed as `make test` runs it after the first install.

# %%
end_to_end_table(cpu)

# %% [markdown]
# ## A cold build
#
# One `make book` on a fresh clone with every computed cache empty (tap features, fine-tuned backbones,
# trained modules, pooled sentences, token streams, kept settings), timed end to end by
# `make cold-build` (`benchmarks/cold_build.py`): every notebook re-runs, every module is trained again, and the book
# and its PDF are built. The claim notebooks run side by side, one per core (a claim that reads another
# claim's trained modules waits for it: claim 3 runs after claim 1), so their times can add up to more than
# the build's. The benchmark then compares each result file the cold run wrote with the committed one:
# a cold run must land on the same numbers as the warm runs that wrote the committed results.

# %%
display(Markdown(cold_build_summary(cpu)))
cold_build_table(cpu)

# %% [markdown]
# ### The thread count is part of the recipe
#
# Where the cold build did not land on the committed numbers, the cause was the number of torch threads,
# not the code. The cold build trains with one thread per notebook, as `make book` runs them; claim 2's
# Python-setting modules in the committed results had been trained earlier in a kernel with torch's default,
# two threads on this machine (retrained with two threads, they come out as committed: the same losses at
# every step). The benchmark `benchmarks/thread_determinism.py` measures the effect on two of them:

# %%
display(Markdown(thread_summary(cpu)))

# %% [markdown]
# Rounding alone moves a module only in its third or fourth digit. A threshold amplifies it: the plateau
# rule's stopping decision. Where a module's improvement at an evaluation lies close to the rule's threshold,
# rounding can decide whether training goes on, and the two runs keep different states. That happened to the
# native target module, and every score of the setting is taken against it: the contrast between the
# migrated module and a random module put through the same calibration, which sits near zero, changed sign,
# and with it the sub-verdict named above. Two lessons. The window bootstrap behind a contrast's interval
# resamples evaluation windows, not training runs, so it covers neither this noise nor the choice of a
# stopping step; only the spread over training seeds shows how firm a contrast is, and one near zero is
# firm in neither direction. And the thread count is now part of the recipe: every claim notebook pins it
# (`abi.notebook.pin_torch_threads`: one thread unless `ABI_TORCH_THREADS` says otherwise, also in
# JupyterLab), and claim 2's committed results were regenerated from the one-thread modules. That setting
# fails its regime gate, so the claim's verdict did not depend on it.

# %% [markdown]
# ## On a GPU
#
# Where the project was lent a GPU, the same suite ran there (`python -m benchmarks.run --device cuda
# --shape-only`: random-weight models of the real shapes, since that machine cannot install the offline
# model packages; timings do not depend on weight values).

# %%
if gpu is None:
    display(Markdown("No GPU measurements are stored (`results/benchmarks-gpu.json` is absent)."))
else:
    display(Markdown(f"GPU measurements on **{gpu['device']}**."))
    display(feature_cache_table(gpu))
    display(nib_table(gpu))
    plot_scaling(gpu, figures / "benchmarks-gpu_scaling.png")
    display(Image(filename=str(figures / "benchmarks-gpu_scaling.png")))
    display(growth_table(gpu))
