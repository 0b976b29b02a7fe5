"""Tables and glued numbers of the cost appendix, from the benchmark result files only."""

from __future__ import annotations

from typing import Any

import pandas as pd


def _range(record: dict[str, float]) -> str:
    return f"{record['median']:.1f}x ({record['min']:.1f}-{record['max']:.1f})"


def feature_cache_table(benchmarks: dict[str, Any]) -> pd.DataFrame:
    fc = benchmarks["sections"]["feature_cache"]
    break_even = f"{fc['break_even_steps']:.0f}" if fc["break_even_steps"] else "-"
    rows = {
        "calibration step on cached features (s, median)": f"{fc['cached_step']['median_s']:.3f}",
        "same step recomputing the backbone (s, median)": f"{fc['recompute_step']['median_s']:.3f}",
        "speed-up (median, min-max)": _range(fc["speedup"]),
        f"cache build for {fc['cache']['n_windows']} windows (s)": f"{fc['cache']['build_s']:.1f}",
        "break-even (steps)": break_even,
        f"target: at least {fc['target_speedup']:.0f}x": "met" if fc["meets_target"] else "NOT met",
    }
    return pd.DataFrame({"value": rows}).rename_axis("measure")


def nib_table(benchmarks: dict[str, Any]) -> pd.DataFrame:
    section = benchmarks["sections"]["nib_evaluator"]
    rows = [{"vocabulary": f"{r['vocab']:,}", "positions": r["positions"],
             "per-position reference (s)": round(r["reference"]["median_s"], 3),
             "vectorised (s)": round(r["vectorised"]["median_s"], 3), "speed-up": _range(r["speedup"]),
             "max |difference|": f"{r['max_abs_difference']:.1e}"} for r in section["records"]]
    return pd.DataFrame(rows).set_index("vocabulary")


def growth_table(benchmarks: dict[str, Any]) -> pd.DataFrame:
    growth = benchmarks["sections"]["scaling"]["growth"]

    def shape(k: float) -> str:
        return "sub-linear" if k < 0.8 else "about linear" if k < 1.3 else "about quadratic" if k < 2.3 else "steeper"

    rows = [{"curve": name.replace("_", " "), "exponent k": round(fit["exponent"], 2),
             "std. error": round(fit["stderr"], 2), "r²": round(fit["r2"], 3), "growth": shape(fit["exponent"])}
            for name, fit in growth.items()]
    return pd.DataFrame(rows).set_index("curve")


def end_to_end_table(benchmarks: dict[str, Any]) -> pd.DataFrame:
    rows = []
    for run in benchmarks["sections"].get("end_to_end", {}).get("runs", []):
        wall = run.get("wall_s")
        rows.append({"what": run["notebook"], "profile": run["profile"],
                     "wall (min)": round(wall / 60, 1) if wall is not None else None,
                     "peak memory (MiB)": run.get("peak_rss_mib"),
                     "target (min)": round(run["target_s"] / 60) if run.get("target_s") else None,
                     "meets target": run.get("meets_target"),
                     "source": run.get("source", "") + ("" if run.get("current", True) else " (stale)")})
    return pd.DataFrame(rows)


def glue_values(benchmarks: dict[str, Any]) -> dict[str, Any]:
    fc = benchmarks["sections"]["feature_cache"]
    nib = benchmarks["sections"]["nib_evaluator"]["records"]
    return {
        "bench_cache_speedup": round(fc["speedup"]["median"], 1),
        "bench_cache_break_even": round(fc["break_even_steps"]) if fc["break_even_steps"] else None,
        "bench_nib_speedup_262k": round(nib[-1]["speedup"]["median"], 1),
        "bench_nib_speedup_32k": round(nib[0]["speedup"]["median"], 1),
        "bench_device": benchmarks["device"],
    }
