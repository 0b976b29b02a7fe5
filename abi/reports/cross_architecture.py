"""Claim 2 for the book: tables and the verdict paragraph, from the result file only (the claim's
labels, published figures, verdict and glued values are in ``cross_architecture_stats``).
"""

from __future__ import annotations

from typing import Any

import pandas as pd

from abi.experiments.cross_architecture_stats import (
    ARM_LABELS,
    ARMS,
    CONTROLS,
    SEEDED_ARMS,
    claim_verdict,
    pair_comparisons,
)
from abi.nib import CORE_METRICS
from abi.reports.formatting import METRIC_LABELS, count_of, interval


# -- tables ---------------------------------------------------------------------------------------------
def arm_table(result: dict[str, Any], key: str) -> pd.DataFrame:
    """Held-out NIB and perplexity of every arm of one pair. Seeded arms: mean over seeds with the
    95 % seed interval; single arms: the window-bootstrap interval. The published row beside."""
    comparisons = pair_comparisons(result["comparisons"], key)
    groups = result["groups"][key]
    seeds = result["parameters"]["seeds"]
    rows = []
    for arm in ARMS:
        row: dict[str, Any] = {"arm": ARM_LABELS[arm]}
        if arm in SEEDED_ARMS:
            for metric in (*CORE_METRICS, "ppl"):
                row[METRIC_LABELS[metric]] = interval(groups[arm][metric], 2 if metric == "ppl" else 4)
            row["NIB"] = f"{count_of(comparisons[f'{arm}/{s}']['verdict'] == 'PASS' for s in seeds)} seeds pass"
        else:
            for metric in CORE_METRICS:
                row[METRIC_LABELS[metric]] = interval(comparisons[arm]["ci"][metric])
            row[METRIC_LABELS["ppl"]] = f"{comparisons[arm]['summary']['ppl']:.2f}"
            row["NIB"] = comparisons[arm]["verdict"]
        rows.append(row)
    rows.append(
        {
            "arm": "native target module itself (the reference)",
            METRIC_LABELS["ppl"]: f"{result['perplexities'][key]['reference']:.2f}",
        }
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
    contrasts = result["contrasts"][key]
    names = {f"migrated_minus_{c}": f"migrated - {c.replace('_', ' ')}" for c in CONTROLS}
    rows = []
    for name, label in names.items():
        row = {"top-5 difference": label}
        for seed, record in contrasts["per_seed"].items():
            row[f"seed {seed}"] = interval(record[name])
        row["pooled over seeds"] = interval(contrasts["pooled"][name])
        rows.append(row)
    row = {"top-5 difference": "also trained - migrated"}
    row.update({f"seed {s}": interval(r["also_trained_minus_migrated"]) for s, r in contrasts["per_seed"].items()})
    rows.append(row)
    return pd.DataFrame(rows).set_index("top-5 difference").fillna("")


def official_table(result: dict[str, Any]) -> pd.DataFrame:
    """The release's official protocol (5 windows of 512, seed 7777) per scored arm, published row beside."""
    rows = []
    for name, comparison in result["official"].items():
        key, _, arm = name.partition("/")
        rows.append(
            {
                "run": f"{key}: {arm}",
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


def setup_table(result: dict[str, Any]) -> pd.DataFrame:
    """Per pair: models, shared sentences, how much Procrustes explains, and the perplexities that
    show whether the modules learned the domain at all (source module on S; native module on T)."""
    rows = []
    for key in result["pair_keys"]:
        block, ppl = result["pairs"][key], result["perplexities"][key]
        procrustes = block["training"]["procrustes"]
        seeds = result["parameters"]["seeds"]
        source_module = sum(ppl["source"][f"module/{s}"] for s in seeds) / len(seeds)
        no_module = pair_comparisons(result["comparisons"], key)["no_module"]["summary"]["ppl"]
        rows.append(
            {
                "pair": key,
                "widths (S -> T)": f"{block['source']['d_model']} -> {block['target']['d_model']}",
                "vocabularies": f"{block['source']['vocab_size']:,} -> {block['target']['vocab_size']:,}",
                "shared sentences": block["sentences"]["n"],
                "tokens per sentence (S / T)": f"{block['sentences']['source']['mean_sentence_tokens']:.1f} / "
                f"{block['sentences']['target']['mean_sentence_tokens']:.1f}",
                "Procrustes explained, input": round(
                    sum(m["explained_fraction"] for m in procrustes["input"]) / len(procrustes["input"]), 3
                ),
                "Procrustes explained, output": round(procrustes["output"]["explained_fraction"], 3),
                "output scale s": round(procrustes["output"]["scale"], 3),
                "S perplexity: bare -> module": f"{ppl['source']['bare']:.2f} -> {source_module:.2f}",
                "T perplexity: bare -> native module": f"{no_module:.2f} -> {ppl['reference']:.2f}",
                **_correction_rows(block["training"].get("correction_rms", {}), seeds),
            }
        )
    return pd.DataFrame(rows).set_index("pair").T


def _correction_rows(rms: dict[str, float], seeds: list[int]) -> dict[str, str]:
    """Correction sizes on T's training windows, relative to the native module's."""
    if not rms:
        return {}
    native = rms["reference"]
    rows = {
        "T final hidden state RMS length": f"{rms['final']:.1f}",
        "native module's correction RMS length": f"{native:.2f}",
    }
    for arm in ("procrustes_only", "migrated", "random_module"):
        mean = sum(rms[f"{arm}/{s}"] for s in seeds) / len(seeds)
        rows[f"{arm.replace('_', ' ')} correction / native"] = f"{mean / native:.2f}"
    return rows


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
def verdict_sentence(result: dict[str, Any], key: str) -> str:
    """One paragraph per pair with the numbers and intervals, whichever way they came out."""
    groups, contrasts, verdict = result["groups"][key], result["contrasts"][key], result["verdicts"][key]
    comparisons = pair_comparisons(result["comparisons"], key)
    seeds = [str(s) for s in result["parameters"]["seeds"]]
    migrated, random = groups["migrated"]["top5"], groups["random_module"]["top5"]
    pooled = contrasts["pooled"]["migrated_minus_random_module"]
    held_out = verdict["held_out_nib_migrated"]
    beats_text = {
        "yes": "beats it, with the pooled interval and every seed's above zero",
        "mixed": "beats it in the pooled interval, but not for every seed",
        "no": "does not beat it: the interval includes zero",
        "worse": "is worse than it: the interval lies below zero",
    }[verdict["migrated_beats_random_module"]]
    return (
        f"**{key}: {verdict['claim']}.** Held-out top-5 overlap with the native target module: migrated "
        f"{interval(migrated)} (mean over {len(seeds)} seeds, 95 % seed interval; NIB passes for "
        f"{count_of(held_out[s] == 'PASS' for s in seeds)} seeds). The random module put through the same "
        f"Procrustes + KD reaches {interval(random)}; the migrated module {beats_text} (top-5 difference "
        f"{interval(pooled)}, window bootstrap, seeds pooled). Bare target: "
        f"{comparisons['no_module']['summary']['top5']:.4f}; Procrustes only: "
        f"{groups['procrustes_only']['top5']['estimate']:.4f}; "
        f"random interface + KD: {groups['random_init_kd']['top5']['estimate']:.4f}; every weight trained: "
        f"{groups['also_trained']['top5']['estimate']:.4f}; a second native module: "
        f"{comparisons['ceiling']['summary']['top5']:.4f}. Perplexity on the held-out windows: migrated "
        f"{groups['migrated']['ppl']['estimate']:.2f}, random module {groups['random_module']['ppl']['estimate']:.2f}, "
        f"bare target {comparisons['no_module']['summary']['ppl']:.2f}, native module "
        f"{result['perplexities'][key]['reference']:.2f}."
    )


def summary_rows(result: dict[str, Any]) -> list[dict[str, Any]]:
    """Rows of the book's summary table: the published cross-architecture row beside each pair, and
    one verdict for the claim (:func:`claim_verdict`)."""
    published = result["published"]["official"]
    rows, reasons = [], []
    for key in result["pair_keys"]:
        verdicts = result["verdicts"][key]
        migrated = result["groups"][key]["migrated"]
        random = result["groups"][key]["random_module"]
        contrast = result["contrasts"][key]["pooled"]["migrated_minus_random_module"]
        no_module = verdicts["held_out_nib_by_arm"]["no_module"]
        reasons.append(
            f"{key}: {verdicts['claim']}; the migrated module minus a random module put through the same "
            f"Procrustes + KD, held-out top-5: {contrast['estimate']:+.4f} [{contrast['low']:+.4f}, "
            f"{contrast['high']:+.4f}] (random module alone: {random['top5']['estimate']:.4f}); the bare "
            f"target backbone's NIB verdict: {no_module}"
        )
        for metric in CORE_METRICS:
            seed_ci = migrated[metric]
            rows.append(
                {
                    "claim": "2. cross-architecture",
                    "figure": f"{key}: {metric} (held-out, seed CI)",
                    "published": f"{published[metric]:.4g}",
                    "ours": f"{seed_ci['estimate']:.4g} [{seed_ci['low']:.4g}, {seed_ci['high']:.4g}]",
                }
            )
    verdict, why = claim_verdict(result), "; ".join(dict.fromkeys(reasons))
    return [{**row, "verdict": verdict, "why": why} for row in rows]
