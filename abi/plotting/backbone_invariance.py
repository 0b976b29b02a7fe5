"""Figures of claim 4 (backbone-update invariance), drawn from its result file only."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import seaborn as sns

from abi.experiments.backbone_invariance_stats import condition_label
from abi.plotting import save_figure

# The figures this module draws, file stem -> what it shows: the verifier expects each one.
FIGURES: dict[str, str] = {
    "backbone_invariance_perplexity": "held-out domain perplexity per condition with 95% CIs, per backbone",
    "backbone_invariance_efficacy": "transfer efficacy under both oracles, the pass line and the published values",
}

_ORACLE_LABELS = {"ours": "oracle: fresh module on B' (ours)", "original": "oracle: fresh module on B (original's)"}


def plot_perplexities(result: dict[str, Any], path: Path) -> Path:
    """Held-out domain perplexity per condition with 95 % window-bootstrap intervals, one panel per backbone."""
    sns.set_theme(style="whitegrid", context="notebook")
    names = list(result["summary"])
    fig, axes = plt.subplots(1, len(names), figsize=(7.5 * len(names), 0.45 * 9 + 1.6), squeeze=False)
    palette = sns.color_palette("deep")
    for ax, name in zip(axes[0], names):
        ppl = result["summary"][name]["ppl"]
        conditions = list(ppl)
        y = np.arange(len(conditions))[::-1]
        estimates = np.array([ppl[c]["estimate"] for c in conditions])
        errors = np.array(
            [[ppl[c]["estimate"] - ppl[c]["low"], ppl[c]["high"] - ppl[c]["estimate"]] for c in conditions]
        ).T
        colors = [
            palette[0] if c.startswith("B/") else palette[1] if c.startswith("plain/") else palette[2]
            for c in conditions
        ]
        hatches = ["//" if c.endswith(("fresh", "oracle")) else "" for c in conditions]
        bars = ax.barh(y, estimates, xerr=errors, color=colors, alpha=0.85, capsize=3, edgecolor="k", lw=0.5)
        for bar, hatch in zip(bars, hatches):
            bar.set_hatch(hatch)
        for yi, value, high in zip(y, estimates, [ppl[c]["high"] for c in conditions]):
            ax.text(high, yi, f"  {value:.2f}", va="center", ha="left", fontsize=8)
        ax.set_yticks(y, [condition_label(c) for c in conditions], fontsize=8)
        ax.set_xlabel("held-out code perplexity (lower is better)")
        ax.set_xlim(0, float(np.max([ppl[c]["high"] for c in conditions])) * 1.2)
        ax.set_title(name)
    fig.suptitle(
        "Domain perplexity before and after the backbone update (bars: 95% window-bootstrap CI; hatched: oracles)",
        fontsize=11,
    )
    fig.tight_layout()
    return save_figure(fig, path, result)


def plot_efficacy(result: dict[str, Any], path: Path, clip: tuple[float, float] = (-1.0, 4.0)) -> Path:
    """Transfer efficacy under both oracle definitions with intervals, against the 50 % pass line.

    Hollow markers are ill-conditioned (denominator interval near zero); interval ends beyond
    ``clip`` are cut and marked with a triangle.
    """
    sns.set_theme(style="whitegrid", context="notebook")
    groups = [(name, update) for name, summary in result["summary"].items() for update in summary["efficacy"]]
    fig, ax = plt.subplots(figsize=(max(6.0, 2.2 * (len(groups) + 2)), 4.8))
    palette = dict(zip(_ORACLE_LABELS, sns.color_palette("deep", 2)))
    low_clip, high_clip = clip
    for x, (name, update) in enumerate(groups):
        for offset, oracle in zip((-0.12, 0.12), _ORACLE_LABELS):
            efficacy = result["summary"][name]["efficacy"][update][oracle]
            if efficacy["estimate"] is None or not np.isfinite(efficacy["estimate"]):
                continue  # undefined ratio (0/0): nothing to draw, the table says so
            estimate = float(np.clip(efficacy["estimate"], low_clip, high_clip))
            low = low_clip if efficacy["low"] is None else float(np.clip(efficacy["low"], low_clip, high_clip))
            high = high_clip if efficacy["high"] is None else float(np.clip(efficacy["high"], low_clip, high_clip))
            face = "white" if efficacy["ill_conditioned"] else palette[oracle]
            ax.errorbar(
                x + offset,
                estimate,
                yerr=[[estimate - low], [high - estimate]],
                fmt="o",
                ms=7,
                color=palette[oracle],
                mfc=face,
                capsize=4,
                label=_ORACLE_LABELS[oracle] if x == 0 else None,
            )
            for bound, marker in ((low, "v"), (high, "^")):
                if bound in clip:
                    ax.plot(x + offset, bound, marker, color=palette[oracle], ms=6)
    published = result["published"]
    t5 = published["t5-large"]
    ill_conditioned_below = result["parameters"]["ill_conditioned_fraction"] * t5["raw_ppl"]
    t5_ill_conditioned = t5["raw_ppl"] - t5["oracle_ppl"] < ill_conditioned_below
    extra = [
        ("published\nT5-large", t5["efficacy"], t5_ill_conditioned),
        ("published\nGPT-2-medium", published["gpt2-medium"]["efficacy"], False),
    ]
    for i, (_, value, ill) in enumerate(extra):
        ax.plot(
            len(groups) + i,
            value,
            "*",
            color="crimson",
            mfc="white" if ill else "crimson",
            ms=14,
            label="published (original's oracle; hollow: ill-conditioned by our rule)" if i == 0 else None,
        )
    line = result["parameters"]["pass_efficacy"]
    ax.axhline(line, color="k", ls="--", lw=1, label=f"pass line ({line:.0%})")
    ax.axhline(1.0, color="grey", ls=":", lw=1, label="100%: as good as the oracle")
    ax.axhline(0.0, color="grey", lw=0.8)
    ax.plot([], [], "o", mfc="white", color="grey", label="ill-conditioned (denominator CI near 0)")
    labels = [f"{name}\n{update} update" for name, update in groups] + [label for label, _, _ in extra]
    ax.set_xticks(range(len(labels)), labels, fontsize=8)
    ax.set_ylim(low_clip - 0.1, high_clip + 0.1)
    ax.yaxis.set_major_formatter(plt.FuncFormatter(lambda v, _: f"{v:.0%}"))
    ax.set_ylabel("transfer efficacy")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    ax.set_title(
        "Zero-shot transfer efficacy of the old module on the updated backbone (95% paired window bootstrap)",
        fontsize=10,
    )
    return save_figure(fig, path, result)
