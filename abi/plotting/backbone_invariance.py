"""Figures of claim 4 (backbone-update invariance), drawn from its result file only: one panel per setting,
colour-blind palette."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import seaborn as sns

from abi.experiments.backbone_invariance_stats import ARM_LABELS, FORMULAS, ORACLE_LABELS, ORACLES
from abi.plotting import save_figure

# The figures this module draws, file stem -> what it shows: the verifier expects each one.
FIGURES: dict[str, str] = {
    "backbone_invariance_perplexity": "held-out domain perplexity before and after the update, one panel per setting",
    "backbone_invariance_efficacy": "transfer efficacy (both formulas, both oracles) with 95% intervals, per setting",
}

_KINDS = (("raw", "raw B'"), ("zero_shot", "B' + old module"), ("oracle", "B' + fresh module"))


def _finite(value: float | None) -> bool:
    """A number that can be drawn (the result file stores an undefined value as null)."""
    return value is not None and bool(np.isfinite(value))


def plot_perplexities(result: dict[str, Any], path: Path) -> Path:
    """Per setting: raw B and B + module (mean over module seeds), then per arm raw B', B' + old module and
    B' + fresh module, each cell of the seed grid a dot and the mean a bar."""
    sns.set_theme(style="whitegrid", context="notebook")
    palette = sns.color_palette("colorblind")
    names = list(result["setting_stats"])
    fig, axes = plt.subplots(1, len(names), figsize=(7.0 * len(names), 5.0), squeeze=False)
    for ax, name in zip(axes[0], names):
        stats = result["setting_stats"][name]
        ppl = stats["ppl"]
        labels = ["raw B", "B + module"]
        groups = [[ppl["B/raw"]["estimate"]], [v["estimate"] for k, v in ppl.items() if k.startswith("B/module/")]]
        colors = [palette[0], palette[0]]
        for i, (arm, cells) in enumerate(stats["cell_ppl"].items()):
            for kind, label in _KINDS:
                labels.append(f"{label}\n({arm})")
                groups.append([cell[kind] for cell in cells.values()])
                colors.append(palette[1 + i])
        x = np.arange(len(groups))
        ax.bar(x, [np.mean(g) for g in groups], color=colors, alpha=0.75, edgecolor="k", lw=0.5)
        for xi, values in zip(x, groups):
            ax.plot(np.full(len(values), xi), values, "o", color="k", ms=3)
        ax.set_xticks(x, labels, fontsize=8, rotation=45, ha="right")
        ax.set_ylabel("held-out domain perplexity (lower is better)")
        ax.set_title(f"{name} (dots: seeds / cells; bars: mean)", fontsize=10)
    fig.suptitle("Domain perplexity before and after the prose update of the backbone", fontsize=11)
    fig.tight_layout()
    return save_figure(fig, path, result)


def plot_efficacy(result: dict[str, Any], path: Path, clip: tuple[float, float] = (-1.0, 4.0)) -> Path:
    """Efficacy per arm, oracle and formula with its hierarchical 95 % interval, the 50 % pass line and
    the published values. Hollow markers: ill-conditioned; ends beyond ``clip`` are cut (triangles)."""
    sns.set_theme(style="whitegrid", context="notebook")
    palette = dict(zip([(o, f) for o in ORACLES for f in FORMULAS], sns.color_palette("colorblind", 4)))
    markers = {"faq": "o", "release_code": "s"}
    names = list(result["setting_stats"])
    fig, axes = plt.subplots(1, len(names), figsize=(6.5 * len(names), 4.8), squeeze=False, sharey=True)
    low_clip, high_clip = clip
    line = result["parameters"]["pass_efficacy"]
    for ax, name in zip(axes[0], names):
        efficacy = result["setting_stats"][name]["efficacy"]
        arms = list(efficacy)
        for x, arm in enumerate(arms):
            for k, (oracle, formula) in enumerate(palette):
                record = efficacy[arm][oracle][formula]
                if not _finite(record["estimate"]):
                    continue  # undefined ratio (0/0): nothing to draw, the table says so
                offset = (k - 1.5) * 0.12
                estimate = float(np.clip(record["estimate"], low_clip, high_clip))
                low = float(np.clip(record["low"], low_clip, high_clip)) if _finite(record["low"]) else low_clip
                high = float(np.clip(record["high"], low_clip, high_clip)) if _finite(record["high"]) else high_clip
                ill = efficacy[arm][oracle]["ill_conditioned"]
                ax.errorbar(
                    x + offset,
                    estimate,
                    yerr=[[estimate - low], [high - estimate]],
                    fmt=markers[formula],
                    color=palette[(oracle, formula)],
                    mfc="white" if ill else palette[(oracle, formula)],
                    ms=7,
                    capsize=3,
                    label=f"{ORACLE_LABELS[oracle]}, {formula.replace('_', ' ')} formula" if x == 0 else None,
                )
                for bound, marker in ((low, "v"), (high, "^")):
                    if bound in clip:
                        ax.plot(x + offset, bound, marker, color=palette[(oracle, formula)], ms=5)
        ax.axhline(line, color="k", ls="--", lw=1, label=f"pass line ({line:.0%})")
        ax.axhline(0.0, color="grey", lw=0.8)
        ax.set_xticks(range(len(arms)), [ARM_LABELS[a].replace(" (", "\n(") for a in arms], fontsize=8)
        ax.set_ylim(low_clip - 0.1, high_clip + 0.1)
        ax.yaxis.set_major_formatter(plt.FuncFormatter(lambda v, _: f"{v:.0%}"))
        ax.set_title(f"{name}: {result['row_verdicts'][name]}", fontsize=10)
    axes[0][0].set_ylabel("transfer efficacy (hollow: ill-conditioned)")
    published = result["published"]
    axes[0][-1].plot(
        [],
        [],
        "*",
        color="crimson",
        ms=10,
        label=(
            f"published: T5-large {published['t5-large']['efficacy']:.0%}, "
            f"GPT-2-medium {published['gpt2-medium']['efficacy']:.0%}"
        ),
    )
    axes[0][-1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.suptitle(
        "Zero-shot transfer efficacy of the old module on the updated backbone (95% hierarchical bootstrap)",
        fontsize=10,
    )
    fig.tight_layout()
    return save_figure(fig, path, result)
