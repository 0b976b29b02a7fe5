"""Tables and glued numbers of the cost appendix, from the benchmark result files only."""

from __future__ import annotations

from typing import Any

import pandas as pd


def _speedup(record: dict[str, float]) -> str:
    """A speed-up over repeats: the median, then the range."""
    return f"{record['median']:.1f}x ({record['min']:.1f}-{record['max']:.1f})"


def feature_cache_table(benchmarks: dict[str, Any]) -> pd.DataFrame:
    """A calibration step on cached features against the same step recomputing the backbone."""
    feature_cache = benchmarks["sections"]["feature_cache"]
    cache = feature_cache["cache"]
    break_even = f"{feature_cache['break_even_steps']:.0f}" if feature_cache["break_even_steps"] else "-"
    rows = {
        "calibration step on cached features (s, median)": f"{feature_cache['cached_step']['median_s']:.3f}",
        "same step recomputing the backbone (s, median)": f"{feature_cache['recompute_step']['median_s']:.3f}",
        "speed-up (median, min-max)": _speedup(feature_cache["speedup"]),
        f"cache build for {cache['n_windows']} windows (s)": f"{cache['build_s']:.1f}",
        "break-even (steps)": break_even,
        f"target: at least {feature_cache['target_speedup']:.0f}x": "met"
        if feature_cache["meets_target"]
        else "NOT met",
    }
    return pd.DataFrame({"value": rows}).rename_axis("measure")


def nib_table(benchmarks: dict[str, Any]) -> pd.DataFrame:
    """The NIB evaluator against the release's algorithm (where measured) and the per-position float64
    reference, per vocabulary size, with the largest difference from float64."""
    section = benchmarks["sections"]["nib_evaluator"]
    rows = []
    for record in section["records"]:
        row = {"vocabulary": f"{record['vocab']:,}", "positions": record["positions"]}
        if "release" in record:
            row["release algorithm (s)"] = round(record["release"]["median_s"], 3)
        row["per-position reference (s)"] = round(record["reference"]["median_s"], 3)
        row["evaluator (s)"] = round(record["vectorised"]["median_s"], 3)
        if "speedup_vs_release" in record:
            row["speed-up vs release (median, range)"] = _speedup(record["speedup_vs_release"])
        row["speed-up vs reference (median, range)"] = _speedup(record["speedup"])
        row["max |difference| from float64"] = f"{record['max_abs_difference']:.1e}"
        rows.append(row)
    return pd.DataFrame(rows).set_index("vocabulary")


def nib_target(benchmarks: dict[str, Any]) -> str:
    """The speed target of the NIB evaluator and whether it was met, in words."""
    section = benchmarks["sections"]["nib_evaluator"]
    if "target_speedup_vs_release" not in section:
        return f"target: {section['target_speedup_262k']:.0f}x over the per-position reference at 262,144: " + (
            "met" if section["meets_target"] else "NOT met"
        )
    vocabularies = " and ".join(f"{v:,}" for v in section["target_vocabs"])
    return (
        f"target: at least {section['target_speedup_vs_release']:.0f}x faster than the release's algorithm at "
        f"{vocabularies}: " + ("met" if section["meets_target"] else "NOT met")
    )


def growth_table(benchmarks: dict[str, Any]) -> pd.DataFrame:
    """The fitted power-law exponent of each scaling curve, and what growth it means."""
    growth = benchmarks["sections"]["scaling"]["growth"]

    def shape(exponent: float) -> str:
        return (
            "sub-linear"
            if exponent < 0.8
            else "about linear"
            if exponent < 1.3
            else "about quadratic"
            if exponent < 2.3
            else "steeper"
        )

    rows = [
        {
            "curve": name.replace("_", " "),
            "exponent k": round(fit["exponent"], 2),
            "std. error": round(fit["stderr"], 2),
            "r²": round(fit["r2"], 3),
            "growth": shape(fit["exponent"]),
        }
        for name, fit in growth.items()
    ]
    return pd.DataFrame(rows).set_index("curve")


def end_to_end_table(benchmarks: dict[str, Any]) -> pd.DataFrame:
    """Each notebook's wall time and peak memory against its target (stale rows marked). For a committed
    cpu run, also the stage times its result file records: a run that resumed finished settings has a short
    wall time, and the stages say what computing them cost; the target is judged on the longer of the two.
    A run that read trained modules from the module store also shows its cost with that store empty."""
    rows = []
    for run in benchmarks["sections"].get("end_to_end", {}).get("runs", []):
        wall = run.get("wall_s")
        rows.append(
            {
                "what": run["notebook"],
                "profile": run["profile"],
                "wall (min)": round(wall / 60, 1) if wall is not None else None,
                "stages recorded in the result (min)": round(run["stages_s"] / 60, 1) if run.get("stages_s") else None,
                "with an empty module store (min)": (
                    round((run.get("stages_s", 0.0) + run["stored_modules_s"]) / 60, 1)
                    if run.get("stored_modules_s")
                    else None
                ),
                "peak memory (MiB)": run.get("peak_rss_mib"),
                "target (min)": round(run["target_s"] / 60) if run.get("target_s") else None,
                "meets target": _yes_no(run.get("meets_target")),
                "source": run.get("source", "") + ("" if run.get("current", True) else " (stale)"),
            }
        )
    return _dashes(pd.DataFrame(rows))


def claim_times_table(benchmarks: dict[str, Any]) -> pd.DataFrame:
    """The claim notebooks' cpu rows of :func:`end_to_end_table`, for the reproduce chapter: the committed
    run's wall time with warm caches and its cost with an empty module store, against the warm target."""
    table = end_to_end_table(benchmarks)
    claims = table[(table["profile"] == "cpu") & (table["target (min)"] != "-")]
    columns = {
        "what": "notebook",
        "wall (min)": "warm caches (min)",
        "with an empty module store (min)": "with an empty module store (min)",
        "target (min)": "warm target (min)",
        "meets target": "meets target",
    }
    return claims[list(columns)].rename(columns=columns).reset_index(drop=True)


def cold_build_table(benchmarks: dict[str, Any]) -> pd.DataFrame | None:
    """The timed cold ``make book`` (``benchmarks/cold_build.py``), one row per notebook: its wall time in
    that run and whether the result file it wrote equals the committed one (and, once the committed results
    were regenerated, the ones committed now); None when it was not timed. Claim notebooks ran side by
    side, so their times can add up to more than the build's."""
    cold = benchmarks["sections"].get("cold_build")
    if cold is None:
        return None
    matches = cold["results_match_committed"]
    recheck = cold.get("results_match_checkout")
    rows = []
    for name, wall in cold["notebook_wall_s"].items():
        result_file = f"{name.split('_', 1)[1]}.json"  # 01_core_nib -> core_nib.json
        row = {
            "notebook": name,
            "cold wall (min)": round(wall / 60, 1) if wall is not None else None,
            "results equal the committed ones": _match_words(matches.get(result_file)),
        }
        if recheck:
            row[f"equal the ones committed at {recheck['commit'][:10]}"] = _match_words(
                recheck["files"].get(result_file)
            )
        rows.append(row)
    return _dashes(pd.DataFrame(rows))


def cold_build_summary(benchmarks: dict[str, Any]) -> str:
    """A few sentences on the timed cold ``make book``: its wall time against the target, how it ran,
    whether it reproduced the committed results, and every verdict that came out otherwise."""
    cold = benchmarks["sections"].get("cold_build")
    if cold is None:
        return "A cold `make book` has not been timed (`make cold-build` times one)."
    minutes, target = cold["wall_s"] / 60, cold["target_s"] / 60
    outcome = "failed" if cold["exit_code"] else f"took {minutes:.1f} min"
    verdict = "within" if cold["meets_target"] else "over"
    matches = cold["results_match_committed"]
    same = sum(match["identical"] for match in matches.values())
    text = (
        f"A cold `make book` (commit `{cold['commit'][:10]}`; every cache empty but the ones `make setup` fills: "
        f"{', '.join(cold['setup_caches_kept'])}; {cold['jobs']} claim notebooks at a time, "
        f"{cold['threads_per_notebook']} torch thread each) {outcome}, "
        f"{verdict} the {target:.0f}-min target. {same} of its {len(matches)} claim result files equal the "
        "committed ones value for value (timings and cache flags aside)."
    )
    changed = [
        f"{diff} in `{name}`" for name, match in matches.items() for diff in match.get("verdict_differences", [])
    ]
    if changed:
        text += f" Verdicts that came out otherwise (committed vs cold): {'; '.join(changed)}."
    if recheck := cold.get("results_match_checkout"):
        again = sum(match["identical"] for match in recheck["files"].values())
        text += (
            f" Against the results committed at `{recheck['commit'][:10]}`, after they were regenerated: "
            f"{again} of {len(recheck['files'])} equal."
        )
    return text


def thread_summary(benchmarks: dict[str, Any]) -> str:
    """Sentences on ``benchmarks/thread_determinism.py``: claim 2's modules trained with one and two torch
    threads, how far the runs part, and any stopping decision of the plateau rule that went otherwise."""
    record = benchmarks["sections"].get("thread_determinism")
    if record is None:
        return "The effect of torch's thread count has not been measured (`python -m benchmarks.thread_determinism`)."
    sentences = [f"Each run trains from the same seed on the same features (claim 2's setting `{record['setting']}`)."]
    for module in record["modules"]:
        label = f"({module['backbone']}, seed {module['seed']})"
        if module["side"] == "source":
            label = f"Claim 2's source module {label}"
        else:
            label = f"The native target module {label}, the reference every arm of the setting is scored against:"
        sentences.append(_threads_sentence(label, module, record["min_delta"]))
    return " ".join(sentences)


def _threads_sentence(label: str, module: dict[str, Any], min_delta: float) -> str:
    one, other = module["runs"][0], module["runs"][-1]
    same, apart = module["same_threads"], module["other_threads"]
    text = label
    if same is not None:
        text += (
            f" comes out {'identical' if same['identical'] else 'not identical'} when trained twice with one thread;"
        )
    if apart["identical"]:
        return text + f" with {other['threads']} threads it comes out identical as well."
    text += (
        f" with {other['threads']} threads its loss first differs at step {apart['first_differing_step']}, "
        f"its per-step losses differ by up to {apart['max_loss_difference']:.2g} and its weights by up to "
        f"{apart['max_weight_difference']:.2g}."
    )
    turned = [
        (step, a["improvement"], b["improvement"])
        for step, a, b in zip(one["evaluation_steps"][1:], one["decision_margins"], other["decision_margins"])
        if (a["margin"] > 0) != (b["margin"] > 0)
    ]
    if not turned:
        return text + f" Both runs stopped at step {one['steps']} and kept step {one['best_step']}."
    step, with_one, with_other = turned[0]
    return text + (
        f" At step {step} its validation loss improved on the best so far by {with_one:.3%} with one thread and "
        f"by {with_other:.3%} with {other['threads']}, against the {min_delta:.1%} the stopping rule asks: with "
        f"one thread it stopped at step {one['steps']} and kept step {one['best_step']}, with {other['threads']} "
        f"it trained to step {other['steps']} and kept step {other['best_step']}."
    )


def _match_words(match: dict[str, Any] | None) -> str | None:
    """A comparison record in a table cell: the verdicts that changed, else the first changed values."""
    if match is None:
        return None
    if match["identical"]:
        return "yes, value for value"
    verdicts = match.get("verdict_differences", [])
    shown = verdicts or match["first"][:2]
    label = "verdicts" if verdicts else "first"
    return f"no: {match['differences']} difference(s); {label} {'; '.join(shown)}"


def _yes_no(flag: bool | None) -> str | None:
    return None if flag is None else ("yes" if flag else "no")


def _dashes(table: pd.DataFrame) -> pd.DataFrame:
    """Missing cells (no target, memory not measured) as a dash, not ``NaN``/``None``."""
    return table.astype(object).where(table.notna(), "-")


def glue_values(benchmarks: dict[str, Any]) -> dict[str, Any]:
    """Numbers the appendix's prose pulls in with myst-nb ``glue`` (prefix ``bench_``)."""
    feature_cache = benchmarks["sections"]["feature_cache"]
    break_even = feature_cache["break_even_steps"]
    nib = benchmarks["sections"]["nib_evaluator"]["records"]
    return {
        "bench_cache_speedup": round(feature_cache["speedup"]["median"], 1),
        "bench_cache_break_even": round(break_even) if break_even else None,
        "bench_nib_speedup_262k": round(nib[-1]["speedup"]["median"], 1),
        "bench_nib_speedup_32k": round(nib[0]["speedup"]["median"], 1),
        **{
            f"bench_nib_vs_release_{r['vocab']}": round(r["speedup_vs_release"]["median"], 1)
            for r in nib
            if "speedup_vs_release" in r
        },
        "bench_device": benchmarks["device"],
    }
