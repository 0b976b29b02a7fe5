"""Reading result files for the report chapters (summary, cost appendix)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from abi.results import ResultFileError

# Every device's benchmark file has these; the CPU file also has `end_to_end`.
BENCHMARK_SECTIONS = ("feature_cache", "nib_evaluator", "scaling")


def load_benchmarks(path: Path, copy_to: Path | None = None, required: bool = True) -> dict[str, Any] | None:
    """A benchmark file (``make benchmarks`` writes it); copied beside a scratch build's results so that
    the figures drawn from it verify there too."""
    path = Path(path)
    if not path.is_file():
        if required:
            raise ResultFileError(f"{path}: no benchmark results; run `make benchmarks` first.")
        return None
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ResultFileError(f"{path}: not valid JSON ({error}); re-run `make benchmarks`.") from error
    if not isinstance(data.get("sections"), dict):
        raise ResultFileError(f"{path}: field 'sections' missing; re-run `make benchmarks`.")
    missing = [name for name in BENCHMARK_SECTIONS if name not in data["sections"]]
    if missing:
        raise ResultFileError(
            f"{path}: section(s) {', '.join(missing)} missing (an interrupted or partial "
            "`make benchmarks`?); re-run `make benchmarks`."
        )
    if copy_to is not None and Path(copy_to).resolve() != path.parent.resolve():
        Path(copy_to).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, Path(copy_to) / path.name)
    return data
