"""Shared helpers of the benchmark suite: repeated timings, peak memory, and the result file.

Every timing is a median over repeats with min and max, and each figure the book reports is a
ratio against a baseline measured in the same run; absolute seconds are context only. CPU and GPU
measurements go to separate files and are never mixed.
"""

from __future__ import annotations

import json
import resource
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from abi.paths import REPO_ROOT
from abi.results import atomic_write_text, provenance

SCHEMA = "abi-benchmarks/1"


class PrerequisiteError(SystemExit):
    """A benchmark needs something that is not there; the message names the make target."""


def sync(device: str) -> None:
    """Wait for queued GPU work so a timer measures it."""
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def timed(fn: Callable[[], Any], repeats: int, device: str = "cpu", warmup: int = 1) -> dict[str, float]:
    """Median, min and max wall time of ``fn`` over ``repeats`` runs, after warm-up runs."""
    for _ in range(warmup):
        fn()
    sync(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - start)
    return {"median_s": statistics.median(times), "min_s": min(times), "max_s": max(times), "n": repeats}


def ratio(baseline: dict[str, float], faster: dict[str, float]) -> dict[str, float]:
    """Speed-up of ``faster`` over ``baseline``: median ratio, and the worst and best case pairs."""
    return {
        "median": baseline["median_s"] / faster["median_s"],
        "min": baseline["min_s"] / faster["max_s"],
        "max": baseline["max_s"] / faster["min_s"],
    }


def peak_rss_mib() -> float:
    """Peak resident memory of this process so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def device_description(device: str) -> str:
    if device.startswith("cuda"):
        return f"{torch.cuda.get_device_name()} (torch {torch.__version__})"
    import os
    import platform

    return f"{platform.machine()} CPU, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads"


def results_path(device: str) -> Path:
    """results/benchmarks.json for the CPU, results/benchmarks-gpu.json for an accelerator."""
    name = "benchmarks.json" if device == "cpu" else "benchmarks-gpu.json"
    return REPO_ROOT / "results" / name


def write_section(device: str, section: str, record: dict[str, Any], path: Path | None = None) -> Path:
    """Replace one section of the device's benchmark file, keeping the others (atomic write)."""
    path = path or results_path(device)
    existing: dict[str, Any] = {}
    if path.is_file():
        try:
            existing = json.loads(path.read_text())
        except json.JSONDecodeError as error:
            raise SystemExit(f"{path} is corrupted ({error}); delete it and run `make benchmarks` again.") from None
    existing.update({"schema": SCHEMA, "device": device_description(device)})
    existing.setdefault("sections", {})[section] = {**record, "provenance": provenance(), "command": " ".join(sys.argv)}
    atomic_write_text(path, json.dumps(existing, indent=1) + "\n")
    return path
