"""Verification in seconds, with no model and no network: ``abi verify`` / ``make verify``.

Everything the book shows is checked, and every problem is reported (never a traceback):

- every claim (each of ``abi.experiments.claim_names()``, loaded by :mod:`abi.claims`) has its result file,
  and so does the cost appendix (``benchmarks.json``; ``benchmarks-gpu.json`` when present);
- each claim's result is re-derived from its stored raw per-window values (schema, every summary,
  interval, contrast and verdict; see :mod:`abi.results`); the fields that cannot be re-derived
  (parameters, published figures, anchor perplexities, provenance) are covered by the seal written
  with the file (``content_sha256``), and ``published`` must also equal the claim module's ``PUBLISHED``;
- every figure the plotting modules declare in ``FIGURES`` exists for each present result, is a
  complete PNG, carries its own name (a swapped or copied figure fails) and the hash of the result it
  was drawn from (a stale figure fails). A figure of a failed result is reported as not checked, so
  an edited result is never blamed on its figures.

The release's ``verify_result.py`` compared stored numbers with constants typed into the script;
this recomputes them.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from abi.paths import REPO_ROOT
from abi.results import ResultFileError, check_result, check_seal, read_json

PROVENANCE_FIELDS = ("git_commit", "versions", "python", "machine", "created")
# Result files that are not claims (no per-window data): checked for structure only.
AUXILIARY = {"benchmarks": "sections", "benchmarks-gpu": "sections"}
# Auxiliary files the book cannot do without (the GPU measurements are optional).
REQUIRED_AUXILIARY = ("benchmarks",)
_BENCHMARKS_REMEDY = "re-run `make benchmarks`"


@dataclass(frozen=True)
class Finding:
    """One check of one file: ``ok`` or the reason it failed, naming the file and the field."""

    path: Path
    ok: bool
    message: str = ""


@dataclass(frozen=True)
class _Result:
    """A present result file as the figure checks need it: its content (None if unreadable) and whether it passed."""

    data: Any
    ok: bool


def _unexpected(path: Path, what: str, error: Exception) -> str:
    return f"{path}: {what} failed unexpectedly ({type(error).__name__}: {error}); re-run the notebook that writes it."


def _broken_library(where: str, what: str, error: Exception) -> Finding:
    return Finding(
        REPO_ROOT / where,
        False,
        f"{where}: {what} ({type(error).__name__}: {error}); nothing below it could be checked: fix the library first.",
    )


# -- result files --------------------------------------------------------------------------------------
def _check_name(result: dict, source: str) -> None:
    stem = Path(source).stem
    if result.get("claim") != stem:
        raise ResultFileError(
            f"{source}: field claim is {result.get('claim')!r}, but the file is named {stem}.json; "
            "a result was copied under another claim's name: re-run its notebook."
        )


def _check_provenance(result: dict, source: str) -> None:
    recorded = result.get("provenance")
    missing = [f for f in PROVENANCE_FIELDS if not isinstance(recorded, dict) or f not in recorded]
    if missing:
        raise ResultFileError(f"{source}: provenance lacks {missing}; re-run its notebook.")


def _check_published(result: dict, source: str) -> None:
    """The release's figures quoted in a result must be the ones its claim module holds."""
    from abi.claims import stats_module
    from abi.experiments import claim_names

    if result.get("claim") not in claim_names():
        return
    module = stats_module(result["claim"])
    if not hasattr(module, "PUBLISHED"):
        return
    expected = json.loads(json.dumps(module.PUBLISHED))  # tuples become lists, as in the file
    if result.get("published") != expected:
        raise ResultFileError(
            f"{source}: field published differs from PUBLISHED in {module.__name__} (the "
            "release's figures): edited, or the constant changed since the run; re-run its notebook."
        )


_CLAIM_CHECKS: tuple[Callable[[dict, str], None], ...] = (
    check_result,
    check_seal,
    _check_name,
    _check_provenance,
    _check_published,
)


def _claim_problems(path: Path, result: Any) -> list[str]:
    """Every independent problem of a parsed claim result: each check runs, whatever the others found."""
    if not isinstance(result, dict):
        return [f"{path}: top level must be a JSON object; re-run its notebook."]
    problems = []
    for check in _CLAIM_CHECKS:
        try:
            check(result, str(path))
        except ResultFileError as error:
            problems.append(str(error))
        except Exception as error:  # a check must report, never crash the verifier
            problems.append(_unexpected(path, check.__name__.lstrip("_"), error))
    return problems


def _auxiliary_problems(path: Path, data: Any) -> list[str]:
    field = AUXILIARY[path.stem]
    if not isinstance(data, dict) or not isinstance(data.get(field), dict):
        return [f"{path}: field {field!r} missing; {_BENCHMARKS_REMEDY}."]
    return []


def _read(path: Path) -> Any:
    return read_json(path, _BENCHMARKS_REMEDY if path.stem in AUXILIARY else "re-run its notebook")


def _check_result_file(path: Path) -> tuple[list[Finding], _Result]:
    """One present result file: an OK finding, or one FAIL finding per problem."""
    try:
        data = _read(path)
        problems = _auxiliary_problems(path, data) if path.stem in AUXILIARY else _claim_problems(path, data)
    except ResultFileError as error:
        data, problems = None, [str(error)]
    except Exception as error:
        data, problems = None, [_unexpected(path, "reading", error)]
    findings = [Finding(path, False, problem) for problem in problems] or [Finding(path, True)]
    return findings, _Result(data, not problems)


def _notebook_of(claim: str) -> str:
    found = sorted((REPO_ROOT / "notebooks").glob(f"[0-9][0-9]_{claim}.ipynb"))
    return f"notebooks/{found[0].name}" if found else "its notebook"


def _missing_result(path: Path) -> Finding:
    remedy = _BENCHMARKS_REMEDY if path.stem in AUXILIARY else f"run {_notebook_of(path.stem)} (`make notebooks`)"
    return Finding(path, False, f"{path}: missing; the book reads it: {remedy}.")


def _expected_results() -> list[str]:
    from abi.experiments import claim_names

    return [*claim_names(), *REQUIRED_AUXILIARY]


def _check_results(results_dir: Path) -> tuple[list[Finding], dict[str, _Result]]:
    """Every present ``*.json`` checked, every expected one that is absent reported."""
    present = {path.stem: path for path in results_dir.glob("*.json")}
    findings, results = [], {}
    for name in sorted(set(present) | set(_expected_results())):
        if name not in present:
            findings.append(_missing_result(results_dir / f"{name}.json"))
            continue
        found, results[name] = _check_result_file(present[name])
        findings += found
    return findings, results


# -- figures -------------------------------------------------------------------------------------------
def _owner(stem: str, names: set[str]) -> str | None:
    """The result a figure belongs to: the longest result name its file stem starts with, then ``_``."""
    return next((name for name in sorted(names, key=len, reverse=True) if stem.startswith(f"{name}_")), None)


def _stamp_problems(path: Path, owner: str, result: _Result) -> list[str]:
    """A readable, complete PNG that carries its own name and the hash of its result's current content."""
    from abi.plotting import NAME_STAMP, RESULT_STAMP, figure_stamps, result_hash

    try:
        stamps = figure_stamps(path)
    except Exception as error:
        return [
            f"{path}: not a readable PNG ({type(error).__name__}: {error}); the file is truncated or "
            "corrupted: re-run the notebook that draws it."
        ]
    problems = []
    name = stamps.get(NAME_STAMP)
    if name is None:
        problems.append(
            f"{path}: carries no {NAME_STAMP} name stamp, so it cannot be told from another figure; "
            "re-run the notebook that draws it."
        )
    elif name != path.stem:
        problems.append(
            f"{path}: is the figure {name}.png (its {NAME_STAMP} stamp), not {path.name}: figures were "
            "swapped or copied under another name; re-run the notebook that draws them."
        )
    stamped = stamps.get(RESULT_STAMP)
    if stamped != result_hash(result.data):
        problems.append(
            f"{path}: drawn from another version of {owner}.json (stamp {str(stamped)[:12]}); re-run its notebook."
        )
    return problems


def _figure_problems(path: Path, declared: dict[str, str], names: set[str], results: dict[str, _Result]) -> list[str]:
    stem = path.stem
    if not path.exists():
        return [f"{path}: missing; the book shows it ({declared[stem]}): re-run the notebook that draws it."]
    if not path.is_file():
        return [f"{path}: not a file; delete it and re-run the notebook that draws it."]
    owner = _owner(stem, names)
    if owner is None:
        return [
            f"{path}: no result file {{claim}}.json matches its name; delete it or re-run the notebook that draws it."
        ]
    if stem not in declared:
        return [f"{path}: not a figure the book uses (no abi.plotting module declares it in FIGURES); delete it."]
    if owner not in results:
        return [f"{path}: not checked: its result {owner}.json is missing."]
    if not results[owner].ok:
        return [f"{path}: not checked: its result {owner}.json failed verification (see above)."]
    return _stamp_problems(path, owner, results[owner])


def _check_figures(results_dir: Path, results: dict[str, _Result]) -> list[Finding]:
    """Every declared figure of every present result, and every PNG in ``figures/``."""
    try:
        from abi.claims import declared_figures

        declared = declared_figures()
    except Exception as error:
        return [_broken_library("abi/plotting", "the declared FIGURES cannot be collected", error)]
    folder = results_dir / "figures"
    names = set(results) | set(_expected_results()) | set(AUXILIARY)
    present = {path.stem for path in folder.glob("*.png")}
    expected = {stem for stem in declared if _owner(stem, names) in results}
    findings = []
    for stem in sorted(present | expected):
        path = folder / f"{stem}.png"
        try:
            problems = _figure_problems(path, declared, names, results)
        except Exception as error:
            problems = [_unexpected(path, "checking the figure", error)]
        findings += [Finding(path, False, problem) for problem in problems] or [Finding(path, True)]
    return findings


def verify_results(results_dir: Path) -> list[Finding]:
    """Check every expected and every present result and figure in ``results_dir``; all problems, no exceptions."""
    results_dir = Path(results_dir)
    try:
        from abi.claims import stats_module
        from abi.experiments import claim_names

        for claim in claim_names():
            stats_module(claim)
    except Exception as error:
        return [_broken_library("abi/experiments", "the claims' statistics modules cannot be imported", error)]
    findings, results = _check_results(results_dir)
    return findings + _check_figures(results_dir, results)


def require_verified(results_dir: Path) -> None:
    """Stop (before a book build, say) when any result or figure fails verification."""
    failures = [f for f in verify_results(results_dir) if not f.ok]
    if failures:
        raise SystemExit("verification failed:\n" + "\n".join(f.message for f in failures))
