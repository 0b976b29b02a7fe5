"""Claim 2 for the book: tables and the verdict paragraphs, from the result file only (the claim's
labels, published figures, gates, verdicts and glued values are in ``cross_architecture_stats``).
"""

from __future__ import annotations

from typing import Any

import pandas as pd

from abi.experiments.cross_architecture_stats import (
    ARM_LABELS,
    ARMS,
    CONTROLS,
    SINGLE_ARMS,
    claim_verdict,
    setting_label,
)
from abi.nib import CORE_METRICS
from abi.reports.formatting import METRIC_LABELS, compact_number, count_of, interval
from abi.reports.gate_words import bare_verb, ppl_change
from abi.verdicts import GATE_MIN_PPL_REDUCTION

CLAIM_LABEL = "2. cross-architecture"
_BEATS = {
    "yes": "beats it (pooled interval and every seed's above zero)",
    "mixed": "beats it in the pooled interval, but not for every seed",
    "no": "does not beat it (the interval includes zero)",
    "worse": "is worse than it (the interval lies below zero)",
}


# -- tables ---------------------------------------------------------------------------------------------
def gate_table(result: dict[str, Any]) -> pd.DataFrame:
    """Per setting: the source gate's numbers, whether the setting is testable, and its verdict."""
    rows = []
    for key in result["settings"]:
        gate = result["regime_gates"][key]
        rows.append(
            {
                "setting": setting_label(result, key),
                "source perplexity: bare -> module": f"{gate['source_ppl']['bare']:.2f} -> "
                f"{gate['source_ppl']['module']:.2f}",
                "reduction (weakest seed)": f"{gate['module_ppl_reduction']:.0%}",
                "bare source vs source module (NIB)": gate["bare_backbone_nib"],
                "testable": "yes" if gate["testable"] else "no",
                "verdict": result["row_verdicts"][key],
            }
        )
    return pd.DataFrame(rows).set_index("setting")


def setup_table(result: dict[str, Any]) -> pd.DataFrame:
    """Per setting: models, shared sentences, how much Procrustes explains, the native module's effect
    on T, and the correction sizes of the arms relative to the native module's."""
    rows = {}
    for key, setting in result["settings"].items():
        stats, training = result["setting_stats"][key], setting["training"]
        procrustes, seeds = training["procrustes"], setting["seeds"]
        rows[setting_label(result, key)] = {
            "widths (S -> T)": f"{setting['source']['d_model']} -> {setting['target']['d_model']}",
            "vocabularies": f"{setting['source']['vocab_size']:,} -> {setting['target']['vocab_size']:,}",
            "shared sentences": setting["sentences"]["n"],
            "tokens per sentence (S / T)": f"{setting['sentences']['source']['mean_sentence_tokens']:.1f} / "
            f"{setting['sentences']['target']['mean_sentence_tokens']:.1f}",
            "Procrustes explained, input": round(
                sum(m["explained_fraction"] for m in procrustes["input"]) / len(procrustes["input"]), 3
            ),
            "Procrustes explained, output": round(procrustes["output"]["explained_fraction"], 3),
            "output scale s": round(procrustes["output"]["scale"], 3),
            "T perplexity: bare -> native module": f"{setting['comparisons']['no_module']['summary']['ppl']:.2f} -> "
            f"{stats['reference_ppl']:.2f}",
            **_correction_rows(training["correction_rms"], seeds),
        }
    return pd.DataFrame(rows)


def _correction_rows(rms: dict[str, float], seeds: list[int]) -> dict[str, str]:
    """Correction sizes on T's training windows, relative to the native module's."""
    native = rms["reference"]
    rows = {
        "T final hidden state, RMS length": f"{rms['final']:.1f}",
        "native module's correction, RMS length": f"{native:.2f}",
    }
    for arm in ("procrustes_only", "migrated", "random_module"):
        if f"{arm}/{seeds[0]}" in rms:
            mean = sum(rms[f"{arm}/{s}"] for s in seeds) / len(seeds)
            ratio = f"{mean / native:.2f}" if native > 0 else "undefined (the native module writes no correction)"
            rows[f"{ARM_LABELS[arm].split(' (')[0].split(',')[0]}: correction / native"] = ratio
    return rows


def arm_table(result: dict[str, Any], key: str) -> pd.DataFrame:
    """Held-out NIB and perplexity of every arm of one setting. Seeded arms: mean over seeds with the
    95 % seed interval; single arms: the window-bootstrap interval. The published row beside."""
    setting, stats = result["settings"][key], result["setting_stats"][key]
    comparisons, seeds = setting["comparisons"], setting["seeds"]
    rows = []
    for arm in (a for a in ARMS if a in SINGLE_ARMS or a in stats["groups"]):
        row: dict[str, Any] = {"arm": ARM_LABELS[arm]}
        if arm in SINGLE_ARMS:
            for metric in CORE_METRICS:
                row[METRIC_LABELS[metric]] = interval(comparisons[arm]["ci"][metric])
            row[METRIC_LABELS["ppl"]] = f"{comparisons[arm]['summary']['ppl']:.2f}"
            row["NIB"] = comparisons[arm]["verdict"]
        else:
            for metric in (*CORE_METRICS, "ppl"):
                row[METRIC_LABELS[metric]] = interval(stats["groups"][arm][metric], 2 if metric == "ppl" else 4)
            row["NIB"] = f"{count_of(comparisons[f'{arm}/{s}']['verdict'] == 'PASS' for s in seeds)} seeds pass"
        rows.append(row)
    rows.append(
        {"arm": "native target module itself (the reference)", METRIC_LABELS["ppl"]: f"{stats['reference_ppl']:.2f}"}
    )
    published = result["published"]["official"]
    rows.append(
        {
            "arm": "published: T5-large -> GPT-2-medium (official protocol)",
            **{METRIC_LABELS[m]: f"{published[m]:.4f}" for m in CORE_METRICS},
            "NIB": "PASS",
        }
    )
    return pd.DataFrame(rows).set_index("arm").fillna("")


def contrast_table(result: dict[str, Any], key: str) -> pd.DataFrame:
    """Paired top-5 differences (migrated minus each control), per seed and pooled over seeds."""
    contrasts = result["setting_stats"][key]["contrasts"]
    rows = []
    for control in CONTROLS:
        name = f"migrated_minus_{control}"
        if name not in contrasts["pooled"]:
            continue
        row = {"top-5 difference": f"migrated minus {ARM_LABELS[control].split(' (')[0].split(',')[0]}"}
        for seed, record in contrasts["per_seed"].items():
            row[f"seed {seed}"] = interval(record[name])
        row["pooled over seeds"] = interval(contrasts["pooled"][name])
        rows.append(row)
    return pd.DataFrame(rows).set_index("top-5 difference")


def kd_table(result: dict[str, Any], key: str) -> pd.DataFrame:
    """Every KD run: validation KD loss (and its KL part) at step 0 and at the step kept, training KD loss
    at step 0, and how many steps the plateau rule let it run."""
    starts = result["setting_stats"][key]["kd_starts"]
    rows = []
    for name, record in starts.items():
        arm, _, seed = name.partition("/")
        rows.append(
            {
                "KD run": f"{ARM_LABELS[arm].split(' (')[0].split(',')[0]}, seed {seed}",
                "validation KD loss, step 0": f"{record['val_loss_step0']:.4f}",
                "validation KL, step 0": compact_number(record["val_kl_step0"]),
                "training KD loss, step 0": f"{record['train_loss_step0']:.4f}",
                "validation KD loss, kept": f"{record['val_loss_best']:.4f}",
                "validation KL, kept": compact_number(record["val_kl_best"]),
                "step kept / steps run": f"{record['best_step']} / {record['steps_run']}",
            }
        )
    return pd.DataFrame(rows).set_index("KD run")


def official_table(result: dict[str, Any]) -> pd.DataFrame:
    """The release's official protocol (5 windows of 512, seed 7777) per scored arm, published row beside."""
    rows = []
    for key, setting in result["settings"].items():
        for name, comparison in setting["official"].items():
            arm, _, seed = name.partition("/")
            rows.append(
                {
                    "run": f"{setting_label(result, key)}: {ARM_LABELS[arm]}" + (f", seed {seed}" if seed else ""),
                    **{METRIC_LABELS[m]: round(comparison["summary"][m], 4) for m in CORE_METRICS},
                    "verdict": comparison["verdict"],
                }
            )
    published = result["published"]["official"]
    rows.append(
        {
            "run": "published: T5-large -> GPT-2-medium",
            **{METRIC_LABELS[m]: published[m] for m in CORE_METRICS},
            "verdict": "PASS",
        }
    )
    return pd.DataFrame(rows).set_index("run")


def zoo_table(result: dict[str, Any]) -> pd.DataFrame:
    """The t5-mini source model: where and how long it trained, its held-out perplexity, the CPU rate here."""
    zoo = result["zoo"]
    rows = {
        "trained on": zoo["device"],
        "training time (s)": zoo["train_wall_s"],
        "steps x windows x tokens": f"{zoo['steps']} x {zoo['batch_windows']} x 128",
        "tokens processed": f"{zoo['tokens_processed']:,}",
        "held-out perplexity, code": round(zoo["test_perplexity"]["code"], 1),
        "held-out perplexity, prose": round(zoo["test_perplexity"]["prose"], 1),
    }
    if "cpu_probe" in zoo:
        probe = zoo["cpu_probe"]
        rows["measured here: CPU tokens/s"] = f"{probe['tokens_per_s']:,.0f} ({probe['threads']} threads)"
        rows["the recipe at that rate (hours)"] = probe["recipe_hours_at_this_rate"]
    return pd.Series(rows, dtype=object).to_frame("t5-mini")


# -- verdict ---------------------------------------------------------------------------------------------
def setting_sentence(result: dict[str, Any], key: str) -> str:
    """One paragraph per setting: the gate, then (testable or not) the numbers and intervals."""
    gate, stats, verdict = result["regime_gates"][key], result["setting_stats"][key], result["row_verdicts"][key]
    comparisons, seeds = result["settings"][key]["comparisons"], [str(s) for s in result["settings"][key]["seeds"]]
    groups, pooled, verdicts = stats["groups"], stats["contrasts"]["pooled"], stats["verdicts"]
    gate_text = (
        f"the source module {ppl_change(gate['module_ppl_reduction'])} on its own model "
        f"(weakest seed; the gate asks at least {GATE_MIN_PPL_REDUCTION:.0%}) and the bare source model "
        f"{bare_verb(gate['bare_backbone_nib'])} the NIB against it"
    )
    numbers = (
        f"Held-out top-5 with the native target module: migrated {interval(groups['migrated']['top5'])}, the mean "
        f"over {len(seeds)} seeds (NIB passes for "
        f"{count_of(verdicts['held_out_nib_migrated'][s] == 'PASS' for s in seeds)} seeds); the random module "
        f"through the same Procrustes + KD {interval(groups['random_module']['top5'])}; "
        f"migrated minus random {interval(pooled['migrated_minus_random_module'])}, so the migrated module "
        f"{_BEATS[verdicts['migrated_beats_random_module']]}; the bare target "
        f"{comparisons['no_module']['summary']['top5']:.4f}, migrated minus bare "
        f"{interval(pooled['migrated_minus_no_module'])}, so the migrated module "
        f"{_BEATS[verdicts['migrated_beats_no_module']]}."
    )
    if "ceiling" in comparisons:
        numbers += f" A second native module reaches {comparisons['ceiling']['summary']['top5']:.4f}."
    return f"**{setting_label(result, key)}: {verdict}.** In this setting {gate_text}. {numbers}"


def verdict_paragraph(result: dict[str, Any]) -> str:
    """The claim's verdict (the stored one) and one paragraph per setting."""
    testable = [k for k in result["settings"] if result["regime_gates"][k]["testable"]]
    head = (
        f"**Claim verdict: {claim_verdict(result)}** ({len(testable)} of {len(result['settings'])} settings "
        "testable; the verdict combines the testable settings' verdicts)."
    )
    return "\n\n".join([head, *(setting_sentence(result, key) for key in result["settings"])])


def summary_rows(result: dict[str, Any]) -> list[dict[str, Any]]:
    """Rows of the book's summary table: per setting, the migrated module's held-out top-5 beside the
    published figure, with the setting's own verdict and its gate and contrast as the reason."""
    published = result["published"]["official"]
    rows = []
    for key in result["settings"]:
        gate, stats = result["regime_gates"][key], result["setting_stats"][key]
        contrast = stats["contrasts"]["pooled"]["migrated_minus_random_module"]
        rows.append(
            {
                "claim": CLAIM_LABEL,
                "figure": f"top-5 with the native target module, {setting_label(result, key)}: migrated, held-out "
                "mean over seeds",
                "published": compact_number(published["top5"]),
                "ours": compact_number(stats["groups"]["migrated"]["top5"]["estimate"]),
                "verdict": result["row_verdicts"][key],
                "why": (
                    f"source module {ppl_change(gate['module_ppl_reduction'])}, bare source "
                    f"{bare_verb(gate['bare_backbone_nib'])} the NIB "
                    f"({'testable' if gate['testable'] else 'not testable'}); migrated minus random module "
                    f"{interval(contrast)}"
                ),
            }
        )
    return rows
