"""Figures of claim 1 (core NIB), drawn from its result file only; one row of panels per setting."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import seaborn as sns

from abi.experiments.core_nib_stats import setting_view
from abi.plotting import METRIC_LABELS, THRESHOLDS, save_figure
from abi.plotting.curves import rolling_curve

# The figures this module draws, file stem -> what it shows: the verifier expects each one.
FIGURES: dict[str, str] = {
    "core_nib_regimes": "regime gate of every setting: the anchor's perplexity reduction and the bare backbone's "
    "held-out NIB top-5 against the anchor",
    "core_nib_calibration": "calibration curves per setting: training and validation corrMSE, validation top-5",
    "core_nib_arms": "held-out NIB metrics of each arm per setting, with 95% CIs, thresholds and published values",
    "core_nib_dose": "calibration-data dose-response: trained vs untrained module, top-5 with the anchor",
}

ARM_LABELS = {
    "no_module": "no module\n(floor)",
    "random_calibrated": "random module\n+ calibration (floor)",
    "uncalibrated": "candidate,\nuncalibrated (floor)",
    "candidate": "candidate\n(the claim)",
    "ceiling": "second anchor\n(seed ceiling)",
}


def setting_label(result: dict[str, Any], setting: str) -> str:
    """``python-dialect@before_final_norm`` -> ``python-dialect, correction before the final norm``."""
    site = result["settings"][setting]["correction_site"]
    return f"{result['settings'][setting]['domain']}, correction {site.replace('_', ' ')}"


def plot_regimes(result: dict[str, Any], path: Path) -> Path:
    """Left: how much each setting's anchor lowers held-out perplexity (gate at 25 %). Right: the bare
    backbone's held-out top-5 against the anchor (a setting is testable only if the bare backbone fails)."""
    sns.set_theme(style="whitegrid", context="notebook")
    settings = list(result["settings"])
    labels = [setting_label(result, s).replace(", ", "\n") for s in settings]
    fig, axes = plt.subplots(1, 2, figsize=(12, 0.9 * len(settings) + 2.2))
    reductions = [100 * result["regime_gates"][s]["module_ppl_reduction"] for s in settings]
    colors = ["#0072B2" if result["regime_gates"][s]["testable"] else "#999999" for s in settings]
    axes[0].barh(labels, reductions, color=colors)
    axes[0].axvline(25, color="k", ls="--", lw=1, label="gate: 25 %")
    axes[0].set(xlabel="held-out perplexity reduction by the anchor (%)", title="does the module matter?")
    bare = [setting_view(result, s)["comparisons"]["no_module"]["ci"]["top5"] for s in settings]
    y = np.arange(len(settings))
    axes[1].errorbar(
        [b["estimate"] for b in bare],
        y,
        xerr=[[b["estimate"] - b["low"] for b in bare], [b["high"] - b["estimate"] for b in bare]],
        fmt="o",
        color="#D55E00",
        capsize=3,
    )
    axes[1].set_yticks(y, [""] * len(settings))  # the left panel names the settings; same rows
    axes[1].axvline(THRESHOLDS["top5"], color="k", ls="--", lw=1, label="NIB top-5 threshold")
    axes[1].set(xlabel="bare backbone's top-5 overlap with the anchor", title="does the bare backbone fail?")
    for ax in axes:
        ax.legend(fontsize=8, loc="lower right")
        ax.invert_yaxis()
    fig.suptitle("Regime gate per setting (blue: testable)")
    fig.tight_layout()
    return save_figure(fig, path, result)


def plot_calibration_curve(result: dict[str, Any], path: Path) -> Path:
    """Per setting: training corrMSE (rolling mean), validation corrMSE and validation top-5 against step."""
    sns.set_theme(style="whitegrid", context="notebook")
    settings = list(result["settings"])
    fig, axes = plt.subplots(len(settings), 3, figsize=(15, 3.6 * len(settings)), squeeze=False)
    palette = sns.color_palette("colorblind")
    window = result["parameters"].get("rolling_window", 50)
    for row, setting in zip(axes, settings):
        training = result["settings"][setting]["training"]
        kinds = (("calibration", "candidate"), ("random_calibration", "random module"))
        for color, (kind, label) in zip(palette, kinds):
            for i, log in enumerate(training[kind].values()):
                steps, curve = rolling_curve(log["losses"], window)
                kwargs = {"color": color, "alpha": 0.85, "label": label if i == 0 else None}
                row[0].plot(steps, curve, **kwargs)
                evals = log["evaluations"]
                row[1].plot([e["step"] for e in evals], [e["val_corr_mse"] for e in evals], marker="o", ms=3, **kwargs)
                row[2].plot([e["step"] for e in evals], [e["val_top5"] for e in evals], marker="o", ms=3, **kwargs)
        name = setting_label(result, setting)
        row[0].set(title=f"{name}\ntraining corrMSE ({window}-step rolling mean)", xlabel="step", yscale="log")
        row[1].set(title="validation corrMSE", xlabel="step", yscale="log")
        row[2].set(title="validation top-5 overlap with the anchor", xlabel="step")
        row[2].axhline(THRESHOLDS["top5"], color="k", ls="--", lw=1, label="NIB threshold")
        for ax in row:
            ax.legend(fontsize=8)
    fig.suptitle("Calibration of the candidate to the anchor's corrections (one line per training seed)")
    fig.tight_layout()
    return save_figure(fig, path, result)


def _arm_points(view: dict[str, Any], metric: str) -> list[tuple[str, str, float, float, float]]:
    points = []
    for name, comparison in view["comparisons"].items():
        group, _, seed = name.partition("/")
        interval = comparison["ci"][metric]
        points.append((group, seed or "-", interval["estimate"], interval["low"], interval["high"]))
    return points


def plot_nib_arms(result: dict[str, Any], path: Path, order: tuple[str, ...] = tuple(ARM_LABELS)) -> Path:
    """Per setting, each arm's held-out NIB metrics with window-bootstrap 95% CIs, thresholds, published values."""
    sns.set_theme(style="whitegrid", context="notebook")
    settings = list(result["settings"])
    fig, axes = plt.subplots(len(settings), 4, figsize=(18, 4.6 * len(settings)), squeeze=False)
    palette = dict(zip(order, sns.color_palette("colorblind", len(order))))
    published = result.get("published", {}).get("official", {})
    for row, setting in zip(axes, settings):
        view = setting_view(result, setting)
        for ax, metric in zip(row, METRIC_LABELS):
            points = [p for p in _arm_points(view, metric) if p[0] in order]
            for group, seed, estimate, low, high in points:
                x = order.index(group)
                members = [p for p in points if p[0] == group]
                offset = (members.index((group, seed, estimate, low, high)) - (len(members) - 1) / 2) * 0.12
                ax.errorbar(
                    x + offset,
                    estimate,
                    yerr=[[estimate - low], [high - estimate]],
                    fmt="o",
                    color=palette[group],
                    capsize=3,
                    ms=5,
                )
            ax.axhline(THRESHOLDS[metric], color="k", ls="--", lw=1, label="NIB threshold")
            if metric in published:
                ax.axhline(published[metric], color="#CC79A7", ls=":", lw=1.5, label="published (T5-large)")
            ax.set_xticks(range(len(order)), [ARM_LABELS[g] for g in order], fontsize=7, rotation=30, ha="right")
            ax.set_title(f"{METRIC_LABELS[metric]}\n{setting_label(result, setting)}", fontsize=10)
        row[0].legend(fontsize=8, loc="best")
    fig.suptitle("NIB against the anchor on held-out windows (points: training seeds; bars: 95% window-bootstrap CI)")
    fig.tight_layout()
    return save_figure(fig, path, result)


def plot_dose_response(result: dict[str, Any], path: Path) -> Path:
    """Top-5 with the anchor against the number of calibration windows, trained vs untrained module
    (mean over seeds, 95% seed interval), the uncalibrated candidate as a line."""
    sns.set_theme(style="whitegrid", context="notebook")
    settings = [s for s in result["settings"] if result["setting_stats"][s]["dose_response"]]
    fig, axes = plt.subplots(1, max(len(settings), 1), figsize=(7.5 * max(len(settings), 1), 5.4), squeeze=False)
    if not settings:
        axes[0, 0].text(
            0.5, 0.5, "no setting of this run has a dose-response (dose_settings is empty)", ha="center", va="center"
        )
        axes[0, 0].set_axis_off()
        return save_figure(fig, path, result)
    colors = {"trained": "#0072B2", "untrained": "#E69F00"}
    labels = {"trained": "trained candidate + calibration", "untrained": "untrained module + identical calibration"}
    for ax, setting in zip(axes[0], settings):
        dose = result["setting_stats"][setting]["dose_response"]
        doses = sorted(int(d) for d in dose["doses"])
        for k, arm in enumerate(("trained", "untrained")):
            stats = [dose["doses"][str(d)][arm] for d in doses]
            x = np.array(doses) * (1.06 if k else 1 / 1.06)
            ax.errorbar(
                x,
                [s["estimate"] for s in stats],
                yerr=[[s["estimate"] - s["low"] for s in stats], [s["high"] - s["estimate"] for s in stats]],
                fmt="o-",
                color=colors[arm],
                capsize=3,
                label=labels[arm],
            )
        ax.axhline(
            dose["uncalibrated_top5"]["estimate"],
            color="#009E73",
            ls="-.",
            lw=1.2,
            label="trained candidate, uncalibrated",
        )
        ax.axhline(THRESHOLDS["top5"], color="k", ls="--", lw=1, label="NIB threshold")
        ax.set_xscale("log")
        ax.set_xticks(doses, [str(d) for d in doses])
        ax.minorticks_off()
        ax.set(
            xlabel="calibration windows",
            ylabel="held-out top-5 overlap with the anchor",
            title=setting_label(result, setting),
        )
        ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=2, frameon=False)
    fig.suptitle("Calibration-data dose-response (mean over seeds, 95% seed interval)")
    fig.tight_layout()
    return save_figure(fig, path, result)
