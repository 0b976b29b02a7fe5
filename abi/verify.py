"""Verification in seconds, with no model and no network: ``abi verify`` / ``make verify``.

Every claim's result file is re-derived from its stored raw per-window values (schema,
provenance fields, every summary, interval, contrast and verdict; see :mod:`abi.results`), and
every figure under ``figures/`` must carry the hash of the result it was drawn from: a figure
left over from another run, or drawn from a result that was since edited, fails. The seed's
``verify_result.py`` compared stored numbers with constants typed into the script; this
recomputes them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from abi.results import ResultFileError, load_result

PROVENANCE_FIELDS = ("git_commit", "versions", "python", "machine", "created")
# Result files that are not claims (no per-window data): checked for structure only.
AUXILIARY = {"benchmarks": "sections", "benchmarks-gpu": "sections"}


@dataclass(frozen=True)
class Finding:
    """One verified file: ``ok`` or the reason it failed, naming the file and the field."""

    path: Path
    ok: bool
    message: str = ""


def _check_provenance(path: Path, result: dict) -> None:
    missing = [f for f in PROVENANCE_FIELDS if f not in result.get("provenance", {})]
    if missing:
        raise ResultFileError(f"{path}: provenance lacks {missing}; re-run its notebook.")


def _load_any(path: Path) -> dict:
    """A claim result, fully re-derived; or an auxiliary file, checked for its structure."""
    if path.stem in AUXILIARY:
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as error:
            raise ResultFileError(f"{path}: not valid JSON ({error}); re-run `make benchmarks`.") from error
        if not isinstance(data.get(AUXILIARY[path.stem]), dict):
            raise ResultFileError(f"{path}: field {AUXILIARY[path.stem]!r} missing; re-run `make benchmarks`.")
        return data
    result = load_result(path)
    _check_provenance(path, result)
    return result


def _check_figures(results_dir: Path, results: dict[str, dict]) -> list[Finding]:
    from abi.plotting import figure_result_hash, result_hash

    findings = []
    for figure in sorted((results_dir / "figures").glob("*.png")):
        owner = next((stem for stem in sorted(results, key=len, reverse=True) if figure.name.startswith(f"{stem}_")),
                     None)
        if owner is None:
            findings.append(Finding(figure, False, f"{figure}: no result file {{claim}}.json matches its name; "
                                                   "delete it or re-run the notebook that draws it."))
            continue
        stamped = figure_result_hash(figure)
        if stamped != result_hash(results[owner]):
            findings.append(Finding(figure, False, f"{figure}: drawn from another version of {owner}.json "
                                                   f"(stamp {str(stamped)[:12]}); re-run its notebook."))
        else:
            findings.append(Finding(figure, True))
    return findings


def verify_results(results_dir: Path) -> list[Finding]:
    """Check every ``*.json`` result and every figure in ``results_dir``."""
    import abi.experiments  # noqa: F401  (registers every claim's derived-section function)

    findings, loaded = [], {}
    for path in sorted(Path(results_dir).glob("*.json")):
        try:
            loaded[path.stem] = _load_any(path)
            findings.append(Finding(path, True))
        except ResultFileError as error:
            findings.append(Finding(path, False, str(error)))
    return findings + _check_figures(Path(results_dir), loaded)


def require_verified(results_dir: Path) -> None:
    """Stop (before a book build, say) when any result or figure fails verification."""
    failures = [f for f in verify_results(results_dir) if not f.ok]
    if failures:
        raise SystemExit("verification failed:\n" + "\n".join(f.message for f in failures))
