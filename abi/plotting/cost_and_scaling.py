"""Figures of the cost appendix, drawn from ``results/benchmarks*.json`` only."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import seaborn as sns

from abi.plotting import save_figure

# The figures this module draws, file stem -> what it shows: the verifier expects each one.
FIGURES: dict[str, str] = {
    "benchmarks_scaling": "CPU time per step against width and taps, NIB time against windows",
    "benchmarks_memory": "CPU peak memory against width and taps",
    "benchmarks-gpu_scaling": "GPU time per step against width and taps, NIB time against windows",
}

_STAGES = {"domain": "domain stage (CE through the head)", "calibration": "calibration (corrMSE on the cache)"}


def plot_scaling(benchmarks: dict[str, Any], path: Path) -> Path:
    """Time per step (log-log) against bottleneck width and tap count, and NIB time against windows."""
    sns.set_theme(style="whitegrid", context="notebook")
    scaling = benchmarks["sections"]["scaling"]
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.2))
    for axis, variable in zip(axes[:2], ("bottleneck", "taps")):
        for stage, label in _STAGES.items():
            points = scaling["curves"][f"{stage}_vs_{variable}"]
            x = [p[variable] for p in points]
            y = [p["per_step"]["median_s"] * 1000 for p in points]
            low = [p["per_step"]["min_s"] * 1000 for p in points]
            high = [p["per_step"]["max_s"] * 1000 for p in points]
            growth = scaling["growth"][f"{stage}_vs_{variable}"]["exponent"]
            axis.errorbar(
                x,
                y,
                yerr=[[a - b for a, b in zip(y, low)], [b - a for a, b in zip(y, high)]],
                marker="o",
                capsize=3,
                label=f"{label}: ~x^{growth:.2f}",
            )
        axis.set(
            xscale="log", yscale="log", xlabel=variable, ylabel="ms per step", title=f"time per step against {variable}"
        )
        axis.legend(fontsize=8)
    nib = scaling["nib_vs_windows"]
    axes[2].plot(
        [p["windows"] for p in nib],
        [p["time"]["median_s"] for p in nib],
        marker="o",
        label=f"~x^{scaling['growth']['nib_vs_windows']['exponent']:.2f}",
    )
    axes[2].set(
        xscale="log",
        yscale="log",
        xlabel="windows of 128 positions",
        ylabel="seconds",
        title=f"NIB metric, vocabulary {nib[0]['vocab']:,}",
    )
    axes[2].legend(fontsize=8)
    fig.suptitle(f"Scaling on {benchmarks['device']} (median of repeats; bars: min-max)")
    return save_figure(fig, path, benchmarks)


def plot_memory(benchmarks: dict[str, Any], path: Path) -> Path:
    """Peak memory of one training process against bottleneck width and tap count."""
    sns.set_theme(style="whitegrid", context="notebook")
    scaling = benchmarks["sections"]["scaling"]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for axis, variable in zip(axes, ("bottleneck", "taps")):
        for stage, label in _STAGES.items():
            points = scaling["curves"][f"{stage}_vs_{variable}"]
            axis.plot([p[variable] for p in points], [p["peak_memory_mib"] for p in points], marker="o", label=label)
        axis.set(xscale="log", xlabel=variable, ylabel="peak memory (MiB)", title=f"peak memory against {variable}")
        axis.legend(fontsize=8)
    return save_figure(fig, path, benchmarks)
