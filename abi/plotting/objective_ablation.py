"""Figures of claim 3 (objective ablation), drawn from its result file only."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import seaborn as sns
from matplotlib.ticker import NullFormatter

from abi.experiments.objective_ablation_stats import objective_label
from abi.plotting import THRESHOLDS, save_figure

# The figures this module draws, file stem -> what it shows: the verifier expects each one.
FIGURES: dict[str, str] = {
    "objective_ablation_lr_sweep": "validation top-5 of every swept learning rate per objective",
    "objective_ablation_top5": "held-out top-5 per objective: seeds, seed means and the floors",
    "objective_ablation_loss_vs_agreement": "top-5 against training and held-out losses, per objective and seed",
}


def _objectives(result: dict[str, Any]) -> list[str]:
    return list(result["parameters"]["objectives"])


def _palette(names: list[str]) -> dict[str, Any]:
    return dict(zip(names, sns.color_palette("tab10", len(names))))


_MARKERS = ("o", "s", "^", "v", "P", "X", "*", "D", "<", ">")


def plot_objective_top5(result: dict[str, Any], path: Path) -> Path:
    """Held-out top-5 per objective: each seed with its window-bootstrap CI, the seed mean with its t-interval,
    and the floors (uncalibrated candidates, bare backbone) as bands."""
    sns.set_theme(style="whitegrid", context="notebook")
    names = _objectives(result)
    seeds = [str(s) for s in result["parameters"]["candidate_seeds"]]
    palette = _palette(names)
    fig, ax = plt.subplots(figsize=(max(8, 1.4 * len(names)), 5))
    for x, name in enumerate(names):
        for i, seed in enumerate(seeds):
            window_ci = result["comparisons"][f"{name}/{seed}"]["ci"]["top5"]
            estimate = window_ci["estimate"]
            offset = (i - (len(seeds) - 1) / 2) * 0.1 - 0.12
            ax.errorbar(
                x + offset,
                estimate,
                yerr=[[estimate - window_ci["low"]], [window_ci["high"] - estimate]],
                fmt="o",
                ms=4,
                color=palette[name],
                alpha=0.6,
                capsize=2,
            )
        group = result["groups"][name]["top5"]
        low = group["low"] if group["low"] is not None else group["estimate"]
        high = group["high"] if group["high"] is not None else group["estimate"]
        ax.errorbar(
            x + 0.25,
            group["estimate"],
            yerr=[[group["estimate"] - low], [high - group["estimate"]]],
            fmt="D",
            ms=8,
            color=palette[name],
            capsize=5,
            lw=2,
        )
    uncal = result["groups"]["uncalibrated"]["top5"]
    ax.axhspan(
        min(uncal["per_seed"]),
        max(uncal["per_seed"]) + 1e-4,
        color="grey",
        alpha=0.25,
        label="uncalibrated candidates (floor)",
    )
    ax.axhline(result["comparisons"]["no_module"]["summary"]["top5"], color="grey", ls=":", label="bare backbone")
    ax.axhline(THRESHOLDS["top5"], color="k", ls="--", lw=1, label="NIB threshold")
    ax.set_xticks(range(len(names)), [objective_label(n) for n in names], rotation=25, ha="right")
    ax.set_ylabel("held-out top-5 overlap with the anchor")
    ax.legend(fontsize=8, loc="lower left")
    ax.set_title(
        "Calibration objectives at their own best LR: small dots = one seed (95% window-bootstrap CI), "
        "diamonds = mean over seeds (95% t-interval)",
        fontsize=10,
    )
    return save_figure(fig, path, result)


def plot_loss_vs_agreement(result: dict[str, Any], path: Path) -> Path:
    """Does lower loss mean higher agreement? Top-5 against each run's own final training loss, and against two
    held-out losses in common units (KL to the anchor, corrMSE to the anchor)."""
    sns.set_theme(style="whitegrid", context="notebook")
    names = _objectives(result)
    seeds = [str(s) for s in result["parameters"]["candidate_seeds"]]
    palette = _palette(names)
    fig, axes = plt.subplots(1, 3, figsize=(17, 4.8), sharey=True)
    panels = (
        ("final training loss (each objective's own units)", None),
        ("held-out KL(anchor || candidate), nats", "kl_ac"),
        ("held-out corrMSE to the anchor", "corr_mse"),
    )
    for ax, (xlabel, metric) in zip(axes, panels):
        for index, name in enumerate(names):
            ys = [result["comparisons"][f"{name}/{s}"]["summary"]["top5"] for s in seeds]
            if metric is None:
                xs = result["groups"][name]["final_loss"]["per_seed"]
            else:
                xs = [result["comparisons"][f"{name}/{s}"]["summary"][metric] for s in seeds]
            ax.scatter(
                xs,
                ys,
                s=70 if index == 0 else 40,
                marker=_MARKERS[index % len(_MARKERS)],
                label=objective_label(name),
                alpha=0.8,
                edgecolors=palette[name],
                facecolors="none" if index == 0 else palette[name],
            )
        ax.set_xscale("log")
        ax.xaxis.set_minor_formatter(NullFormatter())  # minor log labels collide on narrow ranges
        ax.set_xlabel(xlabel)
    axes[0].set_ylabel("held-out top-5 overlap")
    axes[0].legend(fontsize=7, loc="best")
    fig.suptitle("Loss against agreement (one point per objective and training seed)")
    return save_figure(fig, path, result)


def plot_lr_sweep(result: dict[str, Any], path: Path) -> Path:
    """Validation top-5 of every swept peak LR per objective (chosen LR ringed): all of it, and zoomed in
    on the range of the objectives' best values (a catastrophic LR would otherwise flatten the rest)."""
    sns.set_theme(style="whitegrid", context="notebook")
    names = _objectives(result)
    palette = _palette(names)
    fig, axes = plt.subplots(1, 2, figsize=(14, 4.8))
    bests = []
    for ax in axes:
        for name in names:
            selection = result["sweep_selection"][name]
            lrs = np.array([g["lr"] for g in selection["grid"]])
            top5 = np.array([g["validation_top5"] for g in selection["grid"]])
            dashed = bool(result["objectives"][name]["equivalent_to"])  # drawn over the objective it equals
            ax.plot(lrs, top5, marker="o", color=palette[name], ls="--" if dashed else "-", label=objective_label(name))
            best = lrs == selection["best_lr"]
            ax.scatter(lrs[best], top5[best], s=160, facecolors="none", edgecolors=palette[name], lw=2)
            bests.append(float(top5[best][0]))
        ax.set_xscale("log")
        ax.set(xlabel="peak learning rate of the four-phase schedule", ylabel="validation top-5 overlap")
    low, high = min(bests), max(bests)
    pad = max(0.01, 0.1 * (high - low))
    axes[1].set_ylim(low - pad, high + pad)
    axes[0].set_title("LR sweep on validation windows (never the held-out test windows)")
    axes[1].set_title("zoomed on the objectives' best values")
    axes[0].legend(fontsize=7)
    return save_figure(fig, path, result)
