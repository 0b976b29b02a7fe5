"""Figures of claim 3 (objective ablation), drawn from its result file only; one panel (or row) per setting,
colour-blind-safe palette."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import seaborn as sns
from matplotlib.ticker import NullFormatter

from abi.experiments.objective_ablation_stats import objective_label, setting_view
from abi.plotting import THRESHOLDS, save_figure

# The figures this module draws, file stem -> what it shows: the verifier expects each one.
FIGURES: dict[str, str] = {
    "objective_ablation_lr_sweep": "validation top-5 of every swept learning rate per objective, one panel per setting",
    "objective_ablation_top5": "held-out top-5 per objective, floors and ceiling: seeds and seed means, per setting",
    "objective_ablation_loss_vs_agreement": "top-5 against held-out corrMSE and KL, per objective, seed and setting",
}
_MARKERS = ("o", "s", "^", "v", "P", "X", "*", "D", "<", ">")
_REFERENCE_ARMS = ("uncalibrated", "random_calibrated", "no_module", "ceiling")


def _objectives(result: dict[str, Any]) -> list[str]:
    return list(result["parameters"]["objectives"])


def _palette(names: list[str]) -> dict[str, Any]:
    return dict(zip(names, sns.color_palette("colorblind", len(names))))


def _panel_title(result: dict[str, Any], setting: str) -> str:
    gate = result["regime_gates"][setting]
    testable = "testable" if gate["testable"] else "not testable"
    return f"{setting} ({testable}: the anchor lowers perplexity by {gate['module_ppl_reduction']:.0%})"


def plot_objective_top5(result: dict[str, Any], path: Path) -> Path:
    """Per setting: held-out top-5 of each objective (seeds with window-bootstrap CIs, the seed mean with its
    t-interval), then the floors and the ceiling in grey."""
    sns.set_theme(style="whitegrid", context="notebook")
    settings, names = list(result["settings"]), _objectives(result)
    palette = _palette(names)
    arms = [*names, *_REFERENCE_ARMS]
    fig, axes = plt.subplots(len(settings), 1, figsize=(max(10, 1.1 * len(arms)), 4.6 * len(settings)), squeeze=False)
    for ax, setting in zip(axes[:, 0], settings):
        view = setting_view(result, setting)
        seeds = [str(s) for s in view["candidate_seeds"]]
        for x, arm in enumerate(arms):
            color = palette.get(arm, "#000000")  # floors and ceiling in black
            members = [f"{arm}/{s}" for s in seeds] if arm not in ("no_module", "ceiling") else [arm]
            for i, member in enumerate(members):
                ci = view["comparisons"][member]["ci"]["top5"]
                offset = (i - (len(members) - 1) / 2) * 0.1 - (0.12 if len(members) > 1 else 0)
                ax.errorbar(
                    x + offset,
                    ci["estimate"],
                    yerr=[[ci["estimate"] - ci["low"]], [ci["high"] - ci["estimate"]]],
                    fmt="o",
                    ms=4,
                    color=color,
                    alpha=0.6,
                    capsize=2,
                )
            if arm in view["groups"]:
                group = view["groups"][arm]["top5"]
                ax.errorbar(
                    x + 0.25,
                    group["estimate"],
                    yerr=[[group["estimate"] - group["low"]], [group["high"] - group["estimate"]]],
                    fmt="D",
                    ms=7,
                    color=color,
                    capsize=5,
                    lw=2,
                )
        ax.axhline(THRESHOLDS["top5"], color="k", ls="--", lw=1, label="NIB threshold")
        ax.axvline(len(names) - 0.5, color="#999999", lw=1)
        ax.set_xticks(range(len(arms)), [objective_label(a) for a in arms], rotation=30, ha="right", fontsize=8)
        ax.set_ylabel("held-out top-5 with the anchor")
        ax.set_title(_panel_title(result, setting), fontsize=10)
        ax.legend(fontsize=8, loc="lower left")
    fig.suptitle(
        "Objectives (left of the line) and floors / ceiling (right): dots = one seed (95% window-bootstrap CI), "
        "diamonds = mean over seeds (95% t-interval)",
        fontsize=10,
    )
    fig.tight_layout()
    return save_figure(fig, path, result)


def plot_loss_vs_agreement(result: dict[str, Any], path: Path) -> Path:
    """Per setting: top-5 against two held-out losses in common units (corrMSE and KL to the anchor)."""
    sns.set_theme(style="whitegrid", context="notebook")
    settings, names = list(result["settings"]), _objectives(result)
    palette = _palette(names)
    fig, axes = plt.subplots(len(settings), 2, figsize=(13, 4.4 * len(settings)), squeeze=False)
    panels = (("held-out corrMSE to the anchor", "corr_mse"), ("held-out KL(anchor || candidate), nats", "kl_ac"))
    for row, setting in zip(axes, settings):
        view = setting_view(result, setting)
        seeds = [str(s) for s in view["candidate_seeds"]]
        for ax, (xlabel, metric) in zip(row, panels):
            for index, name in enumerate(names):
                summaries = [view["comparisons"][f"{name}/{s}"]["summary"] for s in seeds]
                ax.scatter(
                    [s[metric] for s in summaries],
                    [s["top5"] for s in summaries],
                    s=50,
                    marker=_MARKERS[index % len(_MARKERS)],
                    color=palette[name],
                    label=objective_label(name),
                    alpha=0.85,
                )
            ax.set_xscale("log")
            ax.xaxis.set_minor_formatter(NullFormatter())  # minor log labels collide on narrow ranges
            ax.set(xlabel=xlabel, ylabel="held-out top-5", title=_panel_title(result, setting))
        row[0].legend(fontsize=7, loc="best")
    fig.suptitle("Lower loss, higher agreement? (one point per objective and training seed)")
    fig.tight_layout()
    return save_figure(fig, path, result)


def plot_lr_sweep(result: dict[str, Any], path: Path) -> Path:
    """Per setting: validation top-5 of every swept peak LR per objective (chosen LR ringed); objectives whose
    LR is derived (raw KL: corrMSE's / 10) are not swept and marked on the axis."""
    sns.set_theme(style="whitegrid", context="notebook")
    settings, names = list(result["settings"]), _objectives(result)
    palette = _palette(names)
    fig, axes = plt.subplots(1, len(settings), figsize=(7 * len(settings), 4.8), squeeze=False)
    for ax, setting in zip(axes[0], settings):
        selection = setting_view(result, setting)["lr_selection"]
        for name in names:
            chosen = selection[name]
            if "grid" not in chosen:
                ax.axvline(chosen["best_lr"], color=palette[name], ls=":", lw=1.5, label=f"{objective_label(name)}: LR")
                continue
            lrs = np.array([g["lr"] for g in chosen["grid"]])
            top5 = np.array([g["validation_top5"] for g in chosen["grid"]])
            ax.plot(lrs, top5, marker="o", color=palette[name], label=objective_label(name))
            best = lrs == chosen["best_lr"]
            ax.scatter(lrs[best], top5[best], s=150, facecolors="none", edgecolors=palette[name], lw=2)
        ax.set_xscale("log")
        ax.set(
            xlabel="peak LR of the four-phase schedule", ylabel="validation top-5", title=_panel_title(result, setting)
        )
    axes[0, 0].legend(fontsize=7)
    fig.suptitle("LR sweep on validation windows (never the held-out test windows)")
    fig.tight_layout()
    return save_figure(fig, path, result)
