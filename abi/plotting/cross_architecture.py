"""Figures of claim 2 (cross-architecture migration), drawn from its result file only; one row or panel
per setting (a pair in a domain), colour-blind palette."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import seaborn as sns

from abi.experiments.cross_architecture_stats import ARMS, SINGLE_ARMS, setting_label
from abi.plotting import METRIC_LABELS, THRESHOLDS, save_figure
from abi.plotting.curves import rolling_curve
from abi.verdicts import GATE_MIN_PPL_REDUCTION

# The figures this module draws, file stem -> what it shows: the verifier expects each one.
FIGURES: dict[str, str] = {
    "cross_architecture_gates": "source gate of every setting: how much the source module lowers its own model's "
    "held-out perplexity, and the bare source model's top-5 against it",
    "cross_architecture_arms": "held-out top-5, JS and perplexity of every arm against the native target module, "
    "one row per setting",
    "cross_architecture_kd": "KD curves per setting: training KD loss (rolling mean) and validation KD loss per arm "
    "and seed, with the step the plateau rule kept",
}

# Short, wrapped arm names for the x axis (the tables' full labels: ``cross_architecture_stats.ARM_LABELS``).
ARM_TICK_LABELS = {
    "migrated": "migrated\n(the claim)",
    "random_module": "random module\n+ Procrustes + KD",
    "procrustes_only": "Procrustes only\n(0 KD steps)",
    "random_init_kd": "random interface\n+ KD",
    "also_trained": "all weights\ntrained (original)",
    "no_module": "no module\n(bare target)",
    "ceiling": "second native\nmodule (ceiling)",
}
_PANELS = {"top5": METRIC_LABELS["top5"], "js": METRIC_LABELS["js"], "ppl": "held-out perplexity"}


def _palette() -> dict[str, tuple]:
    return dict(zip(ARMS, sns.color_palette("colorblind", len(ARMS))))


def _present(comparisons: dict[str, Any]) -> list[str]:
    return [a for a in ARMS if any(k.split("/")[0] == a for k in comparisons)]


def plot_gates(result: dict[str, Any], path: Path) -> Path:
    """Left: the source module's perplexity reduction on its own model (gate: at least 25 %); right:
    the bare source model's held-out top-5 against the source module (gate: it must fail the NIB)."""
    sns.set_theme(style="whitegrid", context="notebook")
    keys = list(result["settings"])
    labels = [setting_label(result, k).replace(", ", "\n", 1) for k in keys]
    fig, axes = plt.subplots(1, 2, figsize=(12, 0.9 * len(keys) + 2.2))
    colours = sns.color_palette("colorblind", 3)
    for i, key in enumerate(keys):
        gate = result["regime_gates"][key]
        colour = colours[2] if gate["testable"] else colours[1]
        axes[0].barh(i, 100 * gate["module_ppl_reduction"], color=colour)
        for seed in gate["per_seed"]:
            top5 = result["settings"][key]["source_gate_raw"][seed]["bare"]["summary"]["top5"]
            axes[1].plot(top5, i, "o", color=colour, ms=6)
    axes[0].axvline(100 * GATE_MIN_PPL_REDUCTION, color="k", ls="--", lw=1, label="gate: 25 %")
    axes[1].axvline(THRESHOLDS["top5"], color="k", ls="--", lw=1, label="NIB threshold (top-5)")
    axes[0].set(xlabel="source module lowers held-out perplexity by (%)", title="does the source module matter?")
    axes[1].set(xlabel="bare source model: top-5 with the source module", title="does the bare model fail the NIB?")
    for ax in axes:
        ax.set_yticks(range(len(keys)), labels if ax is axes[0] else [""] * len(keys), fontsize=8)
        ax.invert_yaxis()
        ax.legend(fontsize=8, loc="lower right")
    fig.suptitle("Source gate per setting (green: testable; orange: not testable in this regime)")
    fig.tight_layout()
    return save_figure(fig, path, result)


def plot_arms(result: dict[str, Any], path: Path) -> Path:
    """Every arm's held-out top-5, JS and perplexity against the native target module, one row per
    setting: points are training seeds with 95 % window-bootstrap intervals, bars the mean over seeds;
    dashed: the NIB thresholds; dotted: the published cross-architecture figures."""
    sns.set_theme(style="whitegrid", context="notebook")
    keys = list(result["settings"])
    fig, axes = plt.subplots(len(keys), len(_PANELS), figsize=(5.0 * len(_PANELS), 3.9 * len(keys)), squeeze=False)
    palette, published = _palette(), result["published"]["official"]
    for row, key in zip(axes, keys):
        comparisons, stats = result["settings"][key]["comparisons"], result["setting_stats"][key]
        arms = _present(comparisons)
        for ax, metric in zip(row, _PANELS):
            for x, arm in enumerate(arms):
                members = sorted(k for k in comparisons if k.split("/")[0] == arm)
                for i, name in enumerate(members):
                    offset = (i - (len(members) - 1) / 2) * 0.14
                    if metric == "ppl":
                        ax.plot(x + offset, comparisons[name]["summary"]["ppl"], "o", color=palette[arm], ms=5)
                        continue
                    ci = comparisons[name]["ci"][metric]
                    ax.errorbar(
                        x + offset,
                        ci["estimate"],
                        yerr=[[ci["estimate"] - ci["low"]], [ci["high"] - ci["estimate"]]],
                        fmt="o",
                        color=palette[arm],
                        capsize=2,
                        ms=4,
                    )
                if arm not in SINGLE_ARMS:
                    ax.hlines(stats["groups"][arm][metric]["estimate"], x - 0.3, x + 0.3, color=palette[arm], lw=2)
            if metric == "ppl":
                ax.axhline(stats["reference_ppl"], color="0.4", ls="-.", lw=1.2, label="native module (reference)")
            else:
                ax.axhline(THRESHOLDS[metric], color="k", ls="--", lw=1, label="NIB threshold")
                ax.axhline(published[metric], color="0.5", ls=":", lw=1.5, label="published (T5-large -> GPT-2-m)")
            ax.set_xticks(range(len(arms)), [ARM_TICK_LABELS[a] for a in arms], fontsize=7, rotation=30, ha="right")
            ax.set_title(f"{setting_label(result, key)}\n{_PANELS[metric]}", fontsize=9)
    handles = {}
    for ax in (axes[0][0], axes[0][-1]):
        for handle, label in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(label, handle)
    fig.suptitle(
        "Against the native target module on held-out windows (points: seeds, 95% window-bootstrap CI; "
        "bars: mean over seeds)",
        y=1.0,
    )
    fig.tight_layout()
    fig.legend(handles.values(), handles.keys(), loc="upper center", bbox_to_anchor=(0.5, 0.0), ncol=3, fontsize=9)
    return save_figure(fig, path, result)


def plot_kd_curves(result: dict[str, Any], path: Path, window: int = 10) -> Path:
    """Per setting: the training KD loss (rolling mean, thin) and the validation KD loss (markers) of
    every KD run, coloured by arm; a cross marks the step the plateau rule kept."""
    sns.set_theme(style="whitegrid", context="notebook")
    keys = list(result["settings"])
    n_cols = min(2, len(keys))
    n_rows = -(-len(keys) // n_cols)
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(7.0 * n_cols, 4.2 * n_rows), squeeze=False)
    palette = _palette()
    for ax, key in zip(axes.flat, keys):
        logs = result["settings"][key]["training"]["kd"]
        seen = set()
        for name in sorted(logs):
            arm, log = name.split("/")[0], logs[name]
            steps, curve = rolling_curve(log["losses"], window)
            ax.plot(steps, curve, color=palette[arm], alpha=0.35, lw=1)
            val_steps = [e["step"] for e in log["evaluations"]]
            val = [e["val_loss"] for e in log["evaluations"]]
            label = ARM_TICK_LABELS[arm].replace("\n", " ") if arm not in seen else None
            ax.plot(val_steps, val, "o-", color=palette[arm], ms=3, lw=1.2, label=label)
            ax.plot(log["best_step"], val[val_steps.index(log["best_step"])], "x", color="k", ms=6)
            seen.add(arm)
        ax.set(title=setting_label(result, key), xlabel="KD step", ylabel="KD loss")
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(keys) :]:
        ax.set_visible(False)
    fig.suptitle("KD calibration: training loss (thin, rolling mean) and validation loss (markers); x: step kept")
    fig.tight_layout()
    return save_figure(fig, path, result)
