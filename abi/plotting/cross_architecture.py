"""Figures of claim 2 (cross-architecture migration), drawn from its result file only."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import seaborn as sns

from abi.experiments.cross_architecture_stats import ARMS, SEEDED_ARMS, pair_comparisons
from abi.plotting import METRIC_LABELS, THRESHOLDS, save_figure
from abi.plotting.curves import rolling_curve

# The figures this module draws, file stem -> what it shows: the verifier expects each one.
FIGURES: dict[str, str] = {
    "cross_architecture_arms": "held-out NIB metrics and perplexity of every arm against the native module, per pair",
    "cross_architecture_kd": "KL part of the KD loss against step, per KD arm and seed, per pair",
}

# Short, wrapped arm names for the x axis (the tables' full labels: ``cross_architecture_stats.ARM_LABELS``).
ARM_TICK_LABELS = {
    "migrated": "migrated\n(the claim)",
    "random_module": "random module\n+ Procrustes + KD",
    "procrustes_only": "Procrustes only\n(0 KD steps)",
    "random_init_kd": "random interface\n+ KD",
    "also_trained": "all weights\ntrained (original)",
    "no_module": "no module",
    "ceiling": "second native\nmodule (ceiling)",
}
_PANELS = {**METRIC_LABELS, "ppl": "held-out perplexity"}
_KD_ARMS = ("migrated", "random_module", "random_init_kd", "also_trained")


def plot_arms(result: dict[str, Any], path: Path) -> Path:
    """Every arm's held-out NIB metrics (and perplexity) against the native target module, one row
    per pair: points are training seeds with 95 % window-bootstrap intervals, the bar the mean over
    seeds; dashed: the NIB thresholds; dotted: the published cross-architecture figures."""
    sns.set_theme(style="whitegrid", context="notebook")
    keys = result["pair_keys"]
    fig, axes = plt.subplots(len(keys), len(_PANELS), figsize=(4.2 * len(_PANELS), 4.4 * len(keys)), squeeze=False)
    palette = dict(zip(ARMS, sns.color_palette("deep", len(ARMS))))
    published = result["published"]["official"]
    for row, key in zip(axes, keys):
        comparisons = pair_comparisons(result["comparisons"], key)
        for ax, metric in zip(row, _PANELS):
            for x, arm in enumerate(ARMS):
                members = sorted(k for k in comparisons if k.split("/")[0] == arm)
                for i, name in enumerate(members):
                    offset = (i - (len(members) - 1) / 2) * 0.14
                    if metric == "ppl":
                        ax.plot(x + offset, comparisons[name]["summary"]["ppl"], "o", color=palette[arm], ms=5)
                        continue
                    window_ci = comparisons[name]["ci"][metric]
                    ax.errorbar(
                        x + offset,
                        window_ci["estimate"],
                        yerr=[[window_ci["estimate"] - window_ci["low"]], [window_ci["high"] - window_ci["estimate"]]],
                        fmt="o",
                        color=palette[arm],
                        capsize=2,
                        ms=4,
                    )
                if arm in SEEDED_ARMS:
                    mean = result["groups"][key][arm][metric]["estimate"]
                    ax.hlines(mean, x - 0.3, x + 0.3, color=palette[arm], lw=2)
            if metric == "ppl":
                ax.axhline(
                    result["perplexities"][key]["reference"],
                    color="0.4",
                    ls="-.",
                    lw=1.2,
                    label="native module (reference)",
                )
            else:
                ax.axhline(THRESHOLDS[metric], color="k", ls="--", lw=1, label="NIB threshold")
                ax.axhline(published[metric], color="crimson", ls=":", lw=1.5, label="published (T5-large -> GPT-2-m)")
            ax.set_xticks(range(len(ARMS)), [ARM_TICK_LABELS[a] for a in ARMS], fontsize=7, rotation=35, ha="right")
            ax.set_title(f"{key}\n{_PANELS[metric]}", fontsize=9)
    handles = {}
    for ax in (axes[0][0], axes[0][-1]):
        for handle, label in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(label, handle)
    fig.suptitle(
        "NIB against the native target module on held-out windows "
        "(points: training seeds, 95% window-bootstrap CI; bars: mean over seeds)",
        y=1.0,
    )
    fig.tight_layout()
    fig.legend(handles.values(), handles.keys(), loc="upper center", bbox_to_anchor=(0.5, 0.0), ncol=3, fontsize=9)
    return save_figure(fig, path, result)


def plot_kd_curves(result: dict[str, Any], path: Path, window: int = 5) -> Path:
    """KL part of the KD loss (rolling mean) against step, per KD arm and seed, one panel per pair."""
    sns.set_theme(style="whitegrid", context="notebook")
    keys = result["pair_keys"]
    fig, axes = plt.subplots(1, len(keys), figsize=(6.5 * len(keys), 4.2), squeeze=False)
    palette = dict(zip(ARMS, sns.color_palette("deep", len(ARMS))))
    for ax, key in zip(axes[0], keys):
        logs = result["pairs"][key]["training"]["kd"]
        for arm in _KD_ARMS:
            members = [logs[k] for k in sorted(logs) if k.split("/")[0] == arm]
            for i, log in enumerate(members):
                steps, curve = rolling_curve(log["kl"], window)
                ax.plot(steps, curve, color=palette[arm], alpha=0.85, label=arm.replace("_", " ") if i == 0 else None)
        ax.set(title=f"{key}: KD, KL(teacher || student) at T", xlabel="KD step", yscale="log")
        ax.legend(fontsize=8)
    return save_figure(fig, path, result)
