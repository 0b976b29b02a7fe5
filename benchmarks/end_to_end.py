"""Benchmark: wall time and peak memory of each claim notebook per profile, and of the test suite.

Each notebook runs through papermill in a fresh process into a scratch directory (the committed
results are not touched). Peak memory is the maximum resident set size of the child processes
(the notebook kernel). Results go to ``results/benchmarks.json`` under ``end_to_end``.

Run: ``python benchmarks/end_to_end.py --profiles smoke cpu --tests``
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from abi.paths import REPO_ROOT, results_dir
from abi.pipeline import NOTEBOOKS
from abi.results import atomic_write_text, provenance

TARGET_MINUTES = {("01_core_nib", "cpu"): 15, ("01_core_nib", "smoke"): 2, ("tests", "-"): 10}


def _run(command: list[str]) -> dict:
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    start = time.perf_counter()
    completed = subprocess.run(command, cwd=REPO_ROOT, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    wall = time.perf_counter() - start
    peak_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return {
        "wall_s": round(wall, 1),
        "peak_rss_mib": round(peak_kib / 1024, 1) if peak_kib > before else None,
        "exit_code": completed.returncode,
    }


def time_notebook(name: str, profile: str, scratch: Path) -> dict:
    command = [sys.executable, "-m", "papermill", str(REPO_ROOT / "notebooks" / f"{name}.ipynb"),
               str(scratch / f"{name}.{profile}.ipynb"), "-p", "profile", profile,
               "-p", "results_dir", str(scratch / profile)]
    return _run(command)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--profiles", nargs="*", default=["smoke"])
    parser.add_argument("--tests", action="store_true", help="also time the test suite (pytest)")
    args = parser.parse_args()
    records = []
    with tempfile.TemporaryDirectory(prefix="abi-e2e-") as tmp:
        for profile in args.profiles:
            for name in NOTEBOOKS:
                print(f"timing {name} on {profile} ...", flush=True)
                record = {"what": name, "profile": profile, **time_notebook(name, profile, Path(tmp))}
                records.append(record)
    if args.tests:
        print("timing the test suite ...", flush=True)
        records.append({"what": "tests", "profile": "-", **_run([sys.executable, "-m", "pytest", "-q"])})
    for record in records:
        target = TARGET_MINUTES.get((record["what"], record["profile"]))
        record["target_s"] = target * 60 if target else None
        record["meets_target"] = bool(target) and record["exit_code"] == 0 and record["wall_s"] <= target * 60
        print(json.dumps(record))
    path = results_dir() / "benchmarks.json"
    existing = json.loads(path.read_text()) if path.is_file() else {}
    section = existing.setdefault("end_to_end", {"runs": []})
    keep = {(r["what"], r["profile"]) for r in records}
    section["runs"] = [r for r in section["runs"] if (r["what"], r["profile"]) not in keep] + records
    section["provenance"] = provenance()
    atomic_write_text(path, json.dumps(existing, indent=1) + "\n")


if __name__ == "__main__":
    main()
