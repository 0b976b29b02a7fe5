"""Benchmark: wall time and peak memory of every claim notebook, per profile.

* ``smoke``: each notebook runs here, through papermill, in a fresh process, into a scratch
  directory (committed results are not touched); peak memory is the largest resident set of the
  notebook's kernel.
* ``cpu``: an hour of computation does not belong in a benchmark run, so the figures are read
  from the committed ``cpu`` run itself: the wall time ``make book`` recorded for each notebook
  (``book/executed/.NAME.inputs.json``) and the kernel's peak memory that each result file
  records under ``resources``. They are only reported when that run is current (its inputs
  hash matches today's code), and the record says so.

Run: ``make benchmarks`` or ``python -m benchmarks.end_to_end --profiles smoke cpu``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from abi.paths import REPO_ROOT
from abi.pipeline import BuildLayout, claim_of, is_current, notebook_names, stamp_path
from benchmarks.common import results_path, write_section

TARGET_MINUTES = {
    "smoke": {"01_core_nib": 2, "02_cross_architecture": 3, "03_objective_ablation": 3, "04_backbone_invariance": 3},
    # Issues 11 and 12: every claim notebook, all its regimes, within 30 minutes with warm caches on 2 cores.
    "cpu": {"01_core_nib": 30, "02_cross_architecture": 30, "03_objective_ablation": 30, "04_backbone_invariance": 30},
}

_CHILD = """
import resource, sys, papermill
papermill.execute_notebook(sys.argv[1], sys.argv[2], parameters={"profile": sys.argv[3], "results_dir": sys.argv[4]},
                           progress_bar=False, kernel_name="python3", cwd=sys.argv[5])
print("PEAK_KIB", resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
"""


def time_notebook(name: str, profile: str, scratch: Path) -> dict:
    """Run one notebook in a fresh process; its kernel is that process's child."""
    command = [
        sys.executable,
        "-c",
        _CHILD,
        str(REPO_ROOT / "notebooks" / f"{name}.ipynb"),
        str(scratch / f"{name}.ipynb"),
        profile,
        str(scratch / "results"),
        str(REPO_ROOT),
    ]
    start = time.perf_counter()
    out = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    wall = time.perf_counter() - start
    peak = next((int(line.split()[1]) for line in out.stdout.splitlines() if line.startswith("PEAK_KIB")), None)
    record = {
        "notebook": name,
        "profile": profile,
        "wall_s": round(wall, 1),
        "exit_code": out.returncode,
        "peak_rss_mib": round(peak / 1024, 1) if peak else None,
        "source": "measured in this run",
    }
    if out.returncode != 0:
        record["error"] = out.stderr[-1500:]
    return record


def committed_cpu_run(name: str) -> dict:
    """The cost of the committed ``cpu`` run of a notebook, as that run recorded it."""
    layout = BuildLayout.for_profile("cpu")
    record = {"notebook": name, "profile": "cpu", "source": "recorded by the committed `make book` run"}
    stamp = stamp_path(layout, name)
    if not stamp.is_file():
        return {**record, "wall_s": None, "note": "no committed cpu run; run `make book` first"}
    record["wall_s"] = json.loads(stamp.read_text()).get("wall_s")
    result = REPO_ROOT / "results" / f"{claim_of(name)}.json"
    if result.is_file():
        document = json.loads(result.read_text())
        record["peak_rss_mib"] = _peak_memory(document.get("resources", {}))
        if "timings" in document:
            record["stages_s"] = round(recorded_stage_seconds(document["timings"]), 1)
        stored = stored_module_seconds(document)
        if stored:
            record["stored_modules_s"] = round(stored, 1)
    record["current"] = is_current(layout, name)
    return record


def recorded_stage_seconds(timings: dict | float) -> float:
    """The sum of every stage time a result file records (``timings``, nested per setting). A run that
    resumes finished settings from their kept copies is short; these are the seconds of the runs that
    computed them, so they are what a cold-but-for-caches run costs."""
    if isinstance(timings, dict):
        return sum(recorded_stage_seconds(value) for value in timings.values())
    return float(timings) if isinstance(timings, (int, float)) else 0.0


def stored_module_seconds(document: Any) -> float:
    """Seconds the modules a run read from the module store took when they were trained (each stage log
    read from :mod:`abi.module_store` keeps ``stage_s`` beside ``from_cache``). Added to the recorded stage
    times, this is what the run costs with an empty ``.cache/modules``."""
    if isinstance(document, dict):
        if document.get("from_cache") is True and isinstance(document.get("stage_s"), (int, float)):
            return float(document["stage_s"])
        return sum(stored_module_seconds(value) for value in document.values())
    if isinstance(document, list):
        return sum(stored_module_seconds(value) for value in document)
    return 0.0


def _peak_memory(resources: dict) -> float | None:
    """Peak resident memory from a result's ``resources`` (flat, or one record per setting)."""
    if "peak_rss_mib" in resources:
        return resources["peak_rss_mib"]
    peaks = [r["peak_rss_mib"] for r in resources.values() if isinstance(r, dict) and "peak_rss_mib" in r]
    return max(peaks) if peaks else None


def _with_target(record: dict) -> dict:
    minutes = TARGET_MINUTES.get(record["profile"], {}).get(record["notebook"])
    # A committed run judged by what it cost to compute: the longer of its wall time and its stages.
    times = [t for t in (record.get("wall_s"), record.get("stages_s")) if t is not None]
    wall = max(times) if times else None
    record["target_s"] = minutes * 60 if minutes else None
    # Report notebooks have no target: None (not False), so the table does not show a miss.
    record["meets_target"] = (
        None if not minutes else bool(wall is not None and record.get("exit_code", 0) == 0 and wall <= minutes * 60)
    )
    return record


def time_test_suite() -> dict:
    """``pytest`` as ``make test`` runs it after the first install (target: under 10 minutes)."""
    start = time.perf_counter()
    out = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"], cwd=REPO_ROOT, capture_output=True, text=True
    )
    wall = round(time.perf_counter() - start, 1)
    lines = out.stdout.strip().splitlines()
    summary = lines[-1] if lines else ""
    failures = [line for line in lines if line.startswith(("FAILED ", "ERROR "))]
    return {
        "notebook": "test suite",
        "profile": "-",
        "wall_s": wall,
        "exit_code": out.returncode,
        "summary": summary,
        "failures": failures,
        "target_s": 600,
        "meets_target": out.returncode == 0 and wall <= 600,
        "source": "measured in this run",
    }


def run(profiles: list[str], tests: bool = False) -> dict:
    records = [time_test_suite()] if tests else []
    with tempfile.TemporaryDirectory(prefix="abi-e2e-") as tmp:
        for profile in profiles:
            (Path(tmp) / profile).mkdir()
            for name in notebook_names():
                if profile == "cpu":
                    record = committed_cpu_run(name)
                else:
                    print(f"timing {name} on {profile} ...", flush=True)
                    record = time_notebook(name, profile, Path(tmp) / profile)
                records.append(_with_target(record))
                print(json.dumps({k: v for k, v in record.items() if k != "error"}), flush=True)
    return {"runs": records}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--profiles", nargs="*", default=["smoke", "cpu"])
    parser.add_argument("--tests", action="store_true", help="also time the test suite")
    args = parser.parse_args(argv)
    record = run(args.profiles, args.tests)
    record["runs"] = merged_runs(previous_runs(), record["runs"])
    write_section("cpu", "end_to_end", record)
    return record


def previous_runs(path: Path | None = None) -> list[dict]:
    """The end-to-end rows already in the benchmark file (``[]`` when there is none)."""
    path = path or results_path("cpu")
    if not path.is_file():
        return []
    try:
        return json.loads(path.read_text())["sections"]["end_to_end"]["runs"]
    except (json.JSONDecodeError, KeyError, TypeError):
        return []


def merged_runs(previous: list[dict], measured: list[dict]) -> list[dict]:
    """Rows of this run replace the rows of the same notebook and profile; rows of profiles (or the test
    suite) not measured this time are kept, so ``--profiles cpu`` alone does not drop the smoke rows.
    Test suite first, then by profile and notebook, as the appendix lists them."""
    rows = {(row["profile"], row["notebook"]): row for row in previous}
    rows.update({(row["profile"], row["notebook"]): row for row in measured})
    return sorted(rows.values(), key=lambda row: (row["notebook"] != "test suite", row["profile"], row["notebook"]))


if __name__ == "__main__":
    main()
