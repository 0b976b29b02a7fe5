"""Claim 2 for the book: tables, the verdict paragraph and glue values, from the result file only;
plus the facts about the t5-mini zoo model (its training log, and a measured CPU training speed).
"""

from __future__ import annotations

import json
import time
from typing import Any

import pandas as pd
import torch

from abi.experiments.cross_architecture_stats import ARMS, SEEDED_ARMS, pair_comparisons
from abi.nib import CORE_METRICS
from abi.zoo import CHECKPOINT_DIR

ARM_LABELS = {
    "migrated": "migrated module (Procrustes + KD, domain frozen): the claim",
    "random_module": "random module, same Procrustes + KD (floor)",
    "procrustes_only": "Procrustes only, 0 KD steps",
    "random_init_kd": "random interface + KD, no Procrustes",
    "also_trained": "Procrustes + KD of every weight (original code)",
    "no_module": "no module: bare target (floor)",
    "ceiling": "second native module, other seed (ceiling)",
}
_COLUMNS = {"top5": "top-5", "top1": "top-1", "js": "JS", "entropy_diff": "entropy diff", "ppl": "perplexity"}


# -- t5-mini facts -------------------------------------------------------------------------------------
def t5_mini_cpu_probe(steps: int = 3, batch_windows: int = 16, seed: int = 0) -> dict[str, Any]:
    """Time a few steps of the t5-mini recipe's training step (fp32, as the recipe runs on a CPU) on
    random tokens, after one warm-up step: the processed-token rate that extrapolates the recipe."""
    from abi.zoo.t5_mini import Recipe, build_model

    recipe = Recipe()
    torch.manual_seed(seed)
    model = build_model(recipe)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=recipe.lr, weight_decay=recipe.weight_decay)
    generator = torch.Generator().manual_seed(seed)

    def step() -> None:
        prefix = torch.randint(4, recipe.vocab_size, (batch_windows, recipe.prefix_len), generator=generator)
        labels = torch.randint(4, recipe.vocab_size, (batch_windows, recipe.cont_len), generator=generator)
        loss = model(input_ids=prefix, labels=labels).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), recipe.grad_clip)
        optimizer.step()

    step()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    seconds = time.perf_counter() - start
    tokens_per_s = steps * batch_windows * recipe.span / seconds
    recipe_tokens = recipe.steps * recipe.batch_windows * recipe.span
    return {"steps": steps, "batch_windows": batch_windows, "threads": torch.get_num_threads(),
            "seconds": round(seconds, 2), "tokens_per_s": round(tokens_per_s, 1),
            "recipe_hours_at_this_rate": round(recipe_tokens / tokens_per_s / 3600, 2)}


def zoo_facts(params: dict[str, Any]) -> dict[str, Any]:
    """The t5-mini training log's facts (device, time, held-out perplexity) when a pair uses it,
    and, if ``zoo_probe_steps`` > 0, the measured CPU rate of the same recipe."""
    if not any("t5-mini" in pair for pair in params["pairs"]):
        return {}
    log = json.loads((CHECKPOINT_DIR / "t5-mini" / "training_log.json").read_text())
    recipe = log["recipe"]
    tokens = recipe["steps"] * recipe["batch_windows"] * (recipe["prefix_len"] + recipe["cont_len"])
    facts = {
        "model": "t5-mini", "device": log["device"], "torch": log["torch"], "train_wall_s": log["train_wall_s"],
        "steps": recipe["steps"], "batch_windows": recipe["batch_windows"], "tokens_processed": tokens,
        "device_tokens_per_s": round(tokens / log["train_wall_s"], 1), "n_parameters": log["n_parameters"],
        "best_step": log["best_step"], "test_perplexity": log["test_perplexity"], "test_windows": log["test_windows"],
    }
    if params["zoo_probe_steps"] > 0:
        facts["cpu_probe"] = t5_mini_cpu_probe(params["zoo_probe_steps"])
    return facts


# -- tables ---------------------------------------------------------------------------------------------
def _interval(ci: dict[str, Any], digits: int = 4) -> str:
    return f"{ci['estimate']:.{digits}f} [{ci['low']:.{digits}f}, {ci['high']:.{digits}f}]"


def arm_table(result: dict[str, Any], key: str) -> pd.DataFrame:
    """Held-out NIB and perplexity of every arm of one pair. Seeded arms: mean over seeds with the
    95 % seed interval; single arms: the window-bootstrap interval. The published row beside."""
    cmp = pair_comparisons(result["comparisons"], key)
    groups = result["groups"][key]
    seeds = result["parameters"]["seeds"]
    rows = []
    for arm in ARMS:
        row: dict[str, Any] = {"arm": ARM_LABELS[arm]}
        if arm in SEEDED_ARMS:
            for metric in (*CORE_METRICS, "ppl"):
                row[_COLUMNS[metric]] = _interval(groups[arm][metric], 2 if metric == "ppl" else 4)
            row["NIB"] = f"{sum(cmp[f'{arm}/{s}']['verdict'] == 'PASS' for s in seeds)} of {len(seeds)} seeds pass"
        else:
            for metric in CORE_METRICS:
                row[_COLUMNS[metric]] = _interval(cmp[arm]["ci"][metric])
            row[_COLUMNS["ppl"]] = f"{cmp[arm]['summary']['ppl']:.2f}"
            row["NIB"] = cmp[arm]["verdict"]
        rows.append(row)
    rows.append({"arm": "native target module itself (the reference)",
                 _COLUMNS["ppl"]: f"{result['perplexities'][key]['reference']:.2f}"})
    published = result["published"]["official"]
    rows.append({"arm": "published: T5-large -> GPT-2-medium (official protocol)",
                 **{_COLUMNS[m]: f"{published[m]:.4f}" for m in CORE_METRICS}, "NIB": "PASS"})
    return pd.DataFrame(rows).set_index("arm").fillna("")


def contrast_table(result: dict[str, Any], key: str) -> pd.DataFrame:
    """Paired top-5 differences (migrated minus each control), per seed and pooled over seeds."""
    contrasts = result["contrasts"][key]
    names = {f"migrated_minus_{c}": f"migrated - {c.replace('_', ' ')}" for c in
             ("random_module", "no_module", "procrustes_only", "random_init_kd")}
    rows = []
    for name, label in names.items():
        row = {"top-5 difference": label}
        for seed, record in contrasts["per_seed"].items():
            row[f"seed {seed}"] = _interval(record[name])
        row["pooled over seeds"] = _interval(contrasts["pooled"][name])
        rows.append(row)
    row = {"top-5 difference": "also trained - migrated"}
    row.update({f"seed {s}": _interval(r["also_trained_minus_migrated"]) for s, r in contrasts["per_seed"].items()})
    rows.append(row)
    return pd.DataFrame(rows).set_index("top-5 difference").fillna("")


def official_table(result: dict[str, Any]) -> pd.DataFrame:
    """The seed's official protocol (5 windows of 512, seed 7777) per scored arm, published row beside."""
    rows = []
    for name, comparison in result["official"].items():
        key, _, arm = name.partition("/")
        rows.append({"run": f"{key}: {arm}", **{_COLUMNS[m]: round(comparison["summary"][m], 4)
                                                for m in CORE_METRICS}, "verdict": comparison["verdict"]})
    published = result["published"]["official"]
    rows.append({"run": "published: T5-large -> GPT-2-medium", **{_COLUMNS[m]: published[m] for m in CORE_METRICS},
                 "verdict": "PASS"})
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
        rows.append({
            "pair": key,
            "widths (S -> T)": f"{block['source']['d_model']} -> {block['target']['d_model']}",
            "vocabularies": f"{block['source']['vocab_size']:,} -> {block['target']['vocab_size']:,}",
            "shared sentences": block["sentences"]["n"],
            "tokens per sentence (S / T)": f"{block['sentences']['source']['mean_sentence_tokens']:.1f} / "
                                           f"{block['sentences']['target']['mean_sentence_tokens']:.1f}",
            "Procrustes explained, input": round(sum(m["explained_fraction"] for m in procrustes["input"])
                                                 / len(procrustes["input"]), 3),
            "Procrustes explained, output": round(procrustes["output"]["explained_fraction"], 3),
            "output scale s": round(procrustes["output"]["scale"], 3),
            "S perplexity: bare -> module": f"{ppl['source']['bare']:.2f} -> {source_module:.2f}",
            "T perplexity: bare -> native module": f"{no_module:.2f} -> {ppl['reference']:.2f}",
            **_correction_rows(block["training"].get("correction_rms", {}), seeds),
        })
    return pd.DataFrame(rows).set_index("pair").T


def _correction_rows(rms: dict[str, float], seeds: list[int]) -> dict[str, str]:
    """Correction sizes on T's training windows, relative to the native module's."""
    if not rms:
        return {}
    native = rms["reference"]
    rows = {"T final hidden state RMS length": f"{rms['final']:.1f}",
            "native module's correction RMS length": f"{native:.2f}"}
    for arm in ("procrustes_only", "migrated", "random_module"):
        mean = sum(rms[f"{arm}/{s}"] for s in seeds) / len(seeds)
        rows[f"{arm.replace('_', ' ')} correction / native"] = f"{mean / native:.2f}"
    return rows


def zoo_table(result: dict[str, Any]) -> pd.DataFrame:
    zoo = result["zoo"]
    rows = {"trained on": zoo["device"], "training time (s)": zoo["train_wall_s"],
            "steps x windows x tokens": f"{zoo['steps']} x {zoo['batch_windows']} x 128",
            "tokens processed": f"{zoo['tokens_processed']:,}",
            "held-out perplexity, code": round(zoo["test_perplexity"]["code"], 1),
            "held-out perplexity, prose": round(zoo["test_perplexity"]["prose"], 1)}
    if "cpu_probe" in zoo:
        probe = zoo["cpu_probe"]
        rows["measured here: CPU tokens/s"] = f"{probe['tokens_per_s']:,.0f} ({probe['threads']} threads)"
        rows["the recipe at that rate (hours)"] = probe["recipe_hours_at_this_rate"]
    return pd.Series(rows, dtype=object).to_frame("t5-mini")


# -- verdict and glue --------------------------------------------------------------------------------------
def verdict_sentence(result: dict[str, Any], key: str) -> str:
    """One paragraph per pair with the numbers and intervals, whichever way they came out."""
    groups, contrasts, verdict = result["groups"][key], result["contrasts"][key], result["verdicts"][key]
    cmp = pair_comparisons(result["comparisons"], key)
    seeds = [str(s) for s in result["parameters"]["seeds"]]
    migrated, random = groups["migrated"]["top5"], groups["random_module"]["top5"]
    pooled = contrasts["pooled"]["migrated_minus_random_module"]
    held = verdict["held_out_nib_migrated"]
    beats_text = {"yes": "beats it, with the pooled interval and every seed's above zero",
                  "mixed": "beats it in the pooled interval, but not for every seed",
                  "no": "does not beat it: the interval includes zero",
                  "worse": "is worse than it: the interval lies below zero"}[verdict["migrated_beats_random_module"]]
    return (
        f"**{key}: {verdict['claim']}.** Held-out top-5 overlap with the native target module: migrated "
        f"{_interval(migrated)} (mean over {len(seeds)} seeds, 95 % seed interval; NIB passes for "
        f"{sum(held[s] == 'PASS' for s in seeds)} of {len(seeds)} seeds). The random module put through the same "
        f"Procrustes + KD reaches {_interval(random)}; the migrated module {beats_text} (top-5 difference "
        f"{_interval(pooled)}, window bootstrap, seeds pooled). Bare target: "
        f"{cmp['no_module']['summary']['top5']:.4f}; Procrustes only: "
        f"{groups['procrustes_only']['top5']['estimate']:.4f}; "
        f"random interface + KD: {groups['random_init_kd']['top5']['estimate']:.4f}; every weight trained: "
        f"{groups['also_trained']['top5']['estimate']:.4f}; a second native module: "
        f"{cmp['ceiling']['summary']['top5']:.4f}. Perplexity on the held-out windows: migrated "
        f"{groups['migrated']['ppl']['estimate']:.2f}, random module {groups['random_module']['ppl']['estimate']:.2f}, "
        f"bare target {cmp['no_module']['summary']['ppl']:.2f}, native module "
        f"{result['perplexities'][key]['reference']:.2f}."
    )


def glue_values(result: dict[str, Any]) -> dict[str, Any]:
    """Numbers the book's prose pulls in with myst-nb ``glue`` (prefix ``c2_``; pairs numbered from 1)."""
    values: dict[str, Any] = {"c2_minutes": round(result["resources"]["wall_s"] / 60, 1),
                              "c2_profile": result["profile"]}
    for i, key in enumerate(result["pair_keys"], start=1):
        groups, contrast = result["groups"][key], result["contrasts"][key]["pooled"]["migrated_minus_random_module"]
        cmp = pair_comparisons(result["comparisons"], key)
        prefix = f"c2_p{i}_"
        values.update({
            f"{prefix}pair": key,
            f"{prefix}verdict": result["verdicts"][key]["claim"],
            f"{prefix}beats_random": result["verdicts"][key]["migrated_beats_random_module"],
            f"{prefix}migrated_top5": groups["migrated"]["top5"]["estimate"],
            f"{prefix}migrated_top5_low": groups["migrated"]["top5"]["low"],
            f"{prefix}migrated_top5_high": groups["migrated"]["top5"]["high"],
            f"{prefix}random_top5": groups["random_module"]["top5"]["estimate"],
            f"{prefix}contrast": contrast["estimate"],
            f"{prefix}contrast_low": contrast["low"],
            f"{prefix}contrast_high": contrast["high"],
            f"{prefix}no_module_top5": cmp["no_module"]["summary"]["top5"],
            f"{prefix}ceiling_top5": cmp["ceiling"]["summary"]["top5"],
            f"{prefix}migrated_ppl": groups["migrated"]["ppl"]["estimate"],
            f"{prefix}reference_ppl": result["perplexities"][key]["reference"],
        })
    zoo = result.get("zoo") or {}
    if zoo:
        values.update({"c2_t5_train_s": zoo["train_wall_s"], "c2_t5_device": zoo["device"],
                       "c2_t5_code_ppl": round(zoo["test_perplexity"]["code"], 1),
                       "c2_t5_prose_ppl": round(zoo["test_perplexity"]["prose"], 1)})
        if "cpu_probe" in zoo:
            values["c2_t5_cpu_tokens_per_s"] = zoo["cpu_probe"]["tokens_per_s"]
            values["c2_t5_cpu_hours"] = zoo["cpu_probe"]["recipe_hours_at_this_rate"]
    return values


def summary_rows(result: dict[str, Any]) -> list[dict[str, Any]]:
    """Rows of the book's summary table: the published cross-architecture row beside each pair."""
    published = result["published"]["official"]
    rows = []
    for key in result["pair_keys"]:
        verdicts = result["verdicts"][key]
        migrated = result["groups"][key]["migrated"]
        random = result["groups"][key]["random_module"]
        contrast = result["contrasts"][key]["pooled"]["migrated_minus_random_module"]
        verdict = "reproduced" if verdicts["claim"] == "reproduced" else "not reproduced"
        no_module = verdicts["held_out_nib_by_arm"]["no_module"]
        why = (f"{key}: {verdicts['claim']}; the migrated module minus a random module put through the same "
               f"Procrustes + KD, held-out top-5: {contrast['estimate']:+.4f} [{contrast['low']:+.4f}, "
               f"{contrast['high']:+.4f}] (random module alone: {random['top5']['estimate']:.4f}); the bare "
               f"target backbone's NIB verdict: {no_module}")
        for metric in CORE_METRICS:
            ci = migrated[metric]
            rows.append({"claim": "2. cross-architecture", "figure": f"{key}: {metric} (held-out, seed CI)",
                         "published": f"{published[metric]:.4g}",
                         "ours": f"{ci['estimate']:.4g} [{ci['low']:.4g}, {ci['high']:.4g}]",
                         "verdict": verdict, "why": why})
    # One verdict per claim: reproduced only when every pair reproduces it.
    overall = "reproduced" if all(r["verdict"] == "reproduced" for r in rows) else "not reproduced"
    joined = "; ".join(dict.fromkeys(r["why"] for r in rows))
    return [{**row, "verdict": overall, "why": joined} for row in rows]
