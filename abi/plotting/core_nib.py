"""Figures of claim 1 (core NIB), drawn from its result file only."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import seaborn as sns

from abi.plotting import METRIC_LABELS, THRESHOLDS, save_figure
from abi.plotting.curves import rolling_curve

# The figures this module draws, file stem -> what it shows: the verifier expects each one.
FIGURES: dict[str, str] = {
    "core_nib_calibration": "calibration curves: training and validation corrMSE, validation top-5, per seed",
    "core_nib_arms": "held-out NIB metrics of each arm with 95% CIs, thresholds and the published values",
}

ARM_LABELS = {
    "no_module": "no module\n(floor)",
    "random_calibrated": "random module\n+ calibration (floor)",
    "uncalibrated": "candidate,\nuncalibrated (floor)",
    "candidate": "candidate\n(the claim)",
    "ceiling": "second anchor\n(seed ceiling)",
}


def plot_calibration_curve(result: dict[str, Any], path: Path) -> Path:
    """Training corrMSE (rolling mean) and held-out validation agreement against calibration step."""
    sns.set_theme(style="whitegrid", context="notebook")
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    palette = sns.color_palette("deep")
    window = result["parameters"].get("rolling_window", 50)
    for color, (kind, label) in zip(palette, (("calibration", "candidate"), ("random_calibration", "random module"))):
        for i, log in enumerate(result["training"][kind].values()):
            steps, curve = rolling_curve(log["losses"], window)
            kwargs = {"color": color, "alpha": 0.85, "label": label if i == 0 else None}
            axes[0].plot(steps, curve, **kwargs)
            evals = log["evaluations"]
            axes[1].plot([e["step"] for e in evals], [e["val_corr_mse"] for e in evals], marker="o", ms=3, **kwargs)
            axes[2].plot([e["step"] for e in evals], [e["val_top5"] for e in evals], marker="o", ms=3, **kwargs)
    axes[0].set(title=f"training corrMSE ({window}-step rolling mean)", xlabel="step", yscale="log")
    axes[1].set(title="validation corrMSE", xlabel="step", yscale="log")
    axes[2].set(title="validation top-5 overlap with the anchor", xlabel="step")
    axes[2].axhline(THRESHOLDS["top5"], color="k", ls="--", lw=1, label="NIB threshold")
    for ax in axes:
        ax.legend(fontsize=8)
    fig.suptitle("Calibration of the candidate to the anchor's corrections (one line per training seed)")
    return save_figure(fig, path, result)


def _arm_points(result: dict[str, Any], metric: str) -> list[tuple[str, str, float, float, float]]:
    points = []
    for name, comparison in result["comparisons"].items():
        group, _, seed = name.partition("/")
        interval = comparison["ci"][metric]
        points.append((group, seed or "-", interval["estimate"], interval["low"], interval["high"]))
    return points


def plot_nib_arms(result: dict[str, Any], path: Path, order: tuple[str, ...] = tuple(ARM_LABELS)) -> Path:
    """Each arm's held-out NIB metrics with window-bootstrap 95% CIs, thresholds and the published value."""
    sns.set_theme(style="whitegrid", context="notebook")
    fig, axes = plt.subplots(1, 4, figsize=(18, 4.8), sharey=False)
    palette = dict(zip(order, sns.color_palette("deep", len(order))))
    published = result.get("published", {}).get("official", {})
    for ax, metric in zip(axes, METRIC_LABELS):
        points = [p for p in _arm_points(result, metric) if p[0] in order]
        for group, seed, estimate, low, high in points:
            x = order.index(group)
            members = [p for p in points if p[0] == group]
            offset = (members.index((group, seed, estimate, low, high)) - (len(members) - 1) / 2) * 0.12
            ax.errorbar(x + offset, estimate, yerr=[[estimate - low], [high - estimate]], fmt="o",
                        color=palette[group], capsize=3, ms=5)
        ax.axhline(THRESHOLDS[metric], color="k", ls="--", lw=1, label="NIB threshold")
        if metric in published:
            ax.axhline(published[metric], color="crimson", ls=":", lw=1.5, label="published (T5-large)")
        ax.set_xticks(range(len(order)), [ARM_LABELS[g] for g in order], fontsize=7, rotation=30, ha="right")
        ax.set_title(METRIC_LABELS[metric])
    axes[0].legend(fontsize=8, loc="lower left")
    fig.suptitle("NIB against the anchor on held-out windows (points: training seeds; bars: 95% window-bootstrap CI)")
    return save_figure(fig, path, result)

