"""Result files: one JSON per claim with provenance and the raw per-window metrics.

Every summary figure in a result file is derived from the raw values stored beside it by the
functions here, so the verifier can recompute it without any model and fail loudly on a
mismatch. Writes go to a temporary file that is renamed into place: a crash never leaves a
half-written result.

Fields that are not derived (parameters, published figures, anchor perplexities, provenance) cannot
be recomputed, so every file is sealed when written: ``content_sha256`` is the hash of every other
field, and a file edited after it was written no longer matches its seal.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import platform
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from types import ModuleType
from typing import Any, NoReturn

import numpy as np

from abi.nib import CORE_METRICS, NIB_THRESHOLDS, summary_from_per_window
from abi.paths import REPO_ROOT
from abi.sites import DEFAULT_CORRECTION_SITE
from abi.stats import window_bootstrap_ci

SCHEMA_VERSION = 1
REQUIRED_FIELDS = ("schema_version", "claim", "profile", "parameters", "provenance", "timings")
COMPARISON_SECTIONS = ("comparisons", "official", "dose_response")
COMPARISON_FIELDS = ("reference", "per_window", "nll", "summary", "ci", "pass", "verdict")
SEAL_FIELD = "content_sha256"
_LIBRARIES = ("torch", "transformers", "numpy", "scipy", "datasets", "abi")


class ResultFileError(ValueError):
    """A result file that is missing, unreadable, or does not match the schema or its raw data."""


Deriver = Callable[[dict[str, Any]], dict[str, Any]]


def _stats_of(claim: str, source: str) -> ModuleType:
    """The claim's statistics module, which importing the claim (or :mod:`abi.claims`) has loaded; looked up,
    never imported here, so a claim's notebook depends on its own claim's code only."""
    from abi.experiments import claim_names, loaded_stats_module

    if claim not in claim_names():
        raise ResultFileError(f"{source}: unknown claim {claim!r}; known: {', '.join(claim_names())}.")
    module = loaded_stats_module(claim)
    if module is None:
        raise ResultFileError(
            f"{source}: the statistics of claim {claim!r} are not loaded; import abi.experiments.{claim} "
            "(or abi.claims, for every claim) before reading its results."
        )
    return module


def claim_deriver(claim: str, source: str = "<result>") -> Deriver:
    """The function that computes a claim's derived sections from its comparisons: ``derive`` in
    ``abi.experiments.<claim>_stats``. The notebook's writer and the verifier both call it, so the
    two can never disagree; checking a result runs no experiment code."""
    return _stats_of(claim, source).derive


def claim_schema_version(claim: str) -> int:
    """The schema a claim's result files follow: its stats module's ``SCHEMA_VERSION``, else the common one
    (a claim whose result layout changed bumps its own version, so older files are refused by name)."""
    from abi.experiments import claim_names

    if claim not in claim_names():
        return SCHEMA_VERSION
    return getattr(_stats_of(claim, "<result>"), "SCHEMA_VERSION", SCHEMA_VERSION)


def provenance() -> dict[str, Any]:
    """Who made a result: git commit, library versions, machine, time."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True, check=True
        ).stdout.strip()
        status = subprocess.run(
            ["git", "status", "--porcelain", "--", "abi"], cwd=REPO_ROOT, capture_output=True, text=True
        )
        dirty = bool(status.stdout.strip())
    except (OSError, subprocess.CalledProcessError):
        commit, dirty = "unknown", False
    versions = {}
    for name in _LIBRARIES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return {
        "git_commit": commit,
        "library_dirty": dirty,
        "versions": versions,
        "python": platform.python_version(),
        "machine": f"{platform.system()} {platform.machine()}, {os.cpu_count()} cpus",
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
    }


class Stopwatch:
    """Named wall-clock timings for the result file's ``timings`` field, and what the run cost."""

    def __init__(self) -> None:
        self.timings: dict[str, float] = {}
        self.started = time.perf_counter()

    def resources(self) -> dict[str, float]:
        """Wall time since the stopwatch started and the process's peak resident memory: the
        cost of a run, recorded in its result file so the benchmarks can report it."""
        import resource

        peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return {"wall_s": round(time.perf_counter() - self.started, 1), "peak_rss_mib": round(peak_kib / 1024, 1)}

    def time(self, name: str):
        watch = self

        class _Section:
            def __enter__(self) -> None:
                self.start = time.perf_counter()

            def __exit__(self, *exc: object) -> None:
                watch.timings[name] = round(watch.timings.get(name, 0.0) + time.perf_counter() - self.start, 3)

        return _Section()


def perplexity_from(nll: dict[str, list]) -> float:
    return float(math.exp(sum(nll["sum"]) / sum(nll["n_tokens"])))


def derive_comparison(per_window: dict[str, list], nll: dict[str, list], bootstrap: dict[str, int]) -> dict[str, Any]:
    """Summary, CIs, pass flags and verdict of one comparison, from its raw per-window values."""
    summary = summary_from_per_window(per_window)
    summary["ppl"] = perplexity_from(nll)
    n_positions = np.asarray(per_window["n_positions"])
    ci = {
        metric: window_bootstrap_ci(
            np.asarray(per_window[metric]),
            n_positions,
            n_resamples=bootstrap["n_resamples"],
            seed=bootstrap["seed"],
        ).to_dict()
        for metric in CORE_METRICS
    }
    passes = NIB_THRESHOLDS.passes(summary)
    return {"summary": summary, "ci": ci, "pass": passes, "verdict": "PASS" if all(passes.values()) else "FAIL"}


def _finite_json(value: Any) -> Any:
    """Strict JSON has no NaN/Infinity: turn them into None so a reader never chokes."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite_json(v) for v in value]
    if isinstance(value, np.generic):
        return _finite_json(value.item())
    return value


def atomic_write_text(path: Path, text: str) -> None:
    """Write to a temporary file in the same directory, then rename over ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "w") as stream:
            stream.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def content_hash(result: dict[str, Any]) -> str:
    """SHA-256 of a result's content (every field but its seal), independent of JSON formatting.

    One function for both stamps: the seal written into the file and the hash every figure drawn
    from it carries, so a figure drawn before a file was sealed still matches it.
    """
    content = {key: value for key, value in result.items() if key != SEAL_FIELD}
    return hashlib.sha256(json.dumps(content, sort_keys=True, allow_nan=False, default=str).encode()).hexdigest()


def sealed(result: dict[str, Any]) -> dict[str, Any]:
    """The result as it will read back from disk (strict JSON types, string keys), its seal appended last.

    Hashing the round-tripped form matters: integer keys become strings and re-sort on reading.
    """
    content = json.loads(
        json.dumps(_finite_json({k: v for k, v in result.items() if k != SEAL_FIELD}), allow_nan=False)
    )
    return {**content, SEAL_FIELD: content_hash(content)}


def check_seal(result: dict[str, Any], source: str = "<result>") -> None:
    """Refuse a result whose content no longer matches the seal written with it."""
    stored = result.get(SEAL_FIELD)
    if stored is None:
        raise ResultFileError(
            f"{source}: no {SEAL_FIELD} seal (written by an older library, or rebuilt by hand); "
            "re-run its notebook to rewrite it."
        )
    if stored != content_hash(result):
        raise ResultFileError(
            f"{source}: edited after it was written: its content no longer matches its {SEAL_FIELD} seal (fields "
            "the re-derivation cannot check, such as parameters, published, anchor_ppl or provenance, are "
            "covered only by the seal); re-run its notebook to rewrite it."
        )


def write_result(path: Path, result: dict[str, Any]) -> Path:
    """Check ``result`` against the schema and its own raw data, then write it atomically, sealed."""
    check_result(result, source=str(path))
    atomic_write_text(path, json.dumps(sealed(result), indent=1, allow_nan=False) + "\n")
    return path


def _reject_constant(name: str) -> NoReturn:
    raise ValueError(f"{name} is not a number strict JSON allows")


def read_json(path: Path, remedy: str = "re-run its notebook") -> Any:
    """Parse a result file as strict JSON: NaN and Infinity are refused, not read back as numbers."""
    try:
        return json.loads(Path(path).read_text(), parse_constant=_reject_constant)
    except (ValueError, OSError) as error:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise ResultFileError(
            f"{path}: not valid JSON ({error}); the file is truncated or corrupted: {remedy}."
        ) from error


def load_result(path: Path) -> dict[str, Any]:
    """Read and fully verify a result file; any problem names the file and the field."""
    path = Path(path)
    if not path.is_file():
        raise ResultFileError(f"{path}: no such result file; run its notebook first (see `make book`).")
    result = read_json(path)
    check_result(result, source=str(path))
    check_seal(result, source=str(path))
    return result


def _missing(mapping: dict, fields: Iterable[str]) -> list[str]:
    return [f for f in fields if f not in mapping]


def _close(a: Any, b: Any, tol: float = 1e-9) -> bool:
    if a is None or b is None:
        return a is b
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_close(a[k], b[k], tol) for k in a)
    if isinstance(a, (list, tuple)):
        return isinstance(b, (list, tuple)) and len(a) == len(b) and all(_close(x, y, tol) for x, y in zip(a, b))
    if isinstance(a, (bool, str)):
        return a == b
    return math.isclose(float(a), float(b), rel_tol=tol, abs_tol=tol)


def check_result(result: dict[str, Any], source: str = "<result>") -> None:
    """Schema and consistency check: every summary must follow from the stored raw values.

    A section missing or of the wrong type is a :class:`ResultFileError` naming the file, never a
    bare ``KeyError`` from deep inside a deriver.
    """
    try:
        _check_result(result, source)
    except ResultFileError:
        raise
    except (KeyError, TypeError, ValueError, AttributeError, IndexError, ZeroDivisionError) as error:
        raise ResultFileError(
            f"{source}: malformed, a section is missing or has the wrong type ({type(error).__name__}: {error}); "
            "re-run its notebook."
        ) from error


def _check_result(result: dict[str, Any], source: str) -> None:
    if not isinstance(result, dict):
        raise ResultFileError(f"{source}: top level must be a JSON object.")
    if missing := _missing(result, REQUIRED_FIELDS):
        raise ResultFileError(f"{source}: missing field(s) {missing}; re-run the notebook that writes it.")
    expected_version = claim_schema_version(result["claim"])
    if result["schema_version"] != expected_version:
        raise ResultFileError(
            f"{source}: schema_version {result['schema_version']!r}, expected {expected_version}; re-run its notebook."
        )
    if "comparisons" not in result and "settings" not in result:
        raise ResultFileError(f"{source}: neither comparisons nor settings; re-run the notebook that writes it.")
    bootstrap = result["parameters"].get("bootstrap") or {}
    if not bootstrap:
        raise ResultFileError(f"{source}: parameters.bootstrap (n_resamples, seed) is missing.")
    scopes = [("", result)] + [(f"settings.{name}.", setting) for name, setting in result.get("settings", {}).items()]
    for prefix, scope in scopes:
        for section in COMPARISON_SECTIONS:
            for name, comparison in scope.get(section, {}).items():
                _check_comparison(comparison, bootstrap, f"{source}: {prefix}{section}.{name}")
    for key, expected in claim_deriver(result["claim"], source)(result).items():
        if key not in result:
            raise ResultFileError(f"{source}: missing derived section {key!r}; re-run its notebook.")
        if not _close(_finite_json(expected), _finite_json(result[key])):
            raise ResultFileError(
                f"{source}: {key} does not match its value recomputed from the raw per-window data; "
                "the file was edited or is corrupted: re-run its notebook."
            )


def _check_comparison(comparison: dict[str, Any], bootstrap: dict[str, int], where: str) -> None:
    if missing := _missing(comparison, COMPARISON_FIELDS):
        raise ResultFileError(f"{where}: missing field(s) {missing}.")
    per_window = comparison["per_window"]
    if missing := _missing(per_window, (*CORE_METRICS, "n_positions")):
        raise ResultFileError(f"{where}.per_window: missing metric(s) {missing}.")
    lengths = {key: len(values) for key, values in per_window.items()}
    if len(set(lengths.values())) != 1 or len(comparison["nll"]["sum"]) != lengths["n_positions"]:
        raise ResultFileError(f"{where}.per_window: arrays of unequal length {lengths}; the file is truncated.")
    if "effect_per_window" in comparison:
        _check_effect_positions(comparison["effect_per_window"], per_window, where)
    derived = derive_comparison(per_window, comparison["nll"], bootstrap)
    for field, expected in derived.items():
        if not _close(_finite_json(expected), comparison[field]):
            raise ResultFileError(
                f"{where}.{field}: stored {comparison[field]!r} does not match {expected!r} recomputed "
                "from the raw per-window values; the file was edited or is corrupted: re-run its notebook."
            )


def _check_effect_positions(effect: dict[str, Any], per_window: dict[str, Any], where: str) -> None:
    """Effect-position values (claim 1): one entry per window, each window's count within its scored
    positions, means of zero where a window has no effect position (weight 0 in every summary, so a
    value there would otherwise escape re-derivation)."""
    n_windows = len(per_window["n_positions"])
    if missing := _missing(effect, (*CORE_METRICS, "n_positions")):
        raise ResultFileError(f"{where}.effect_per_window: missing metric(s) {missing}.")
    lengths = {key: len(values) for key, values in effect.items()}
    if set(lengths.values()) != {n_windows}:
        raise ResultFileError(
            f"{where}.effect_per_window: arrays of lengths {lengths}, expected {n_windows} "
            "(one per window); the file is truncated or edited."
        )
    for window, (count, total) in enumerate(zip(effect["n_positions"], per_window["n_positions"])):
        empty_but_valued = count == 0 and any(effect[key][window] != 0 for key in CORE_METRICS)
        if not 0 <= count <= total or empty_but_valued:
            raise ResultFileError(
                f"{where}.effect_per_window: window {window} has {count} effect positions of "
                f"{total} scored (or values without positions); the file was edited: re-run its "
                "notebook."
            )


# -- pieces every claim's result file shares ----------------------------------------------------------
def result_document(claim: str, params: dict[str, Any], **sections: Any) -> dict[str, Any]:
    """A result file's content: the common header, then the claim's own sections in the given order.

    The header is the schema version, the claim, the profile, every parameter and the provenance. The
    parameters record ``correction_site`` (the release's site unless the claim sets another; claim 1's
    settings each record their own).
    """
    parameters = {**params, "correction_site": params.get("correction_site", DEFAULT_CORRECTION_SITE)}
    header = {
        "schema_version": claim_schema_version(claim),
        "claim": claim,
        "profile": params["profile"],
        "parameters": parameters,
        "provenance": provenance(),
    }
    return {**header, **sections}


def comparison_record(scores: Any, bootstrap: dict[str, int], reference: str, **extra: Any) -> dict[str, Any]:
    """One comparison of a result file from a :class:`abi.evaluate.VariantScores`: the raw
    per-window values and NLL, then everything :func:`derive_comparison` computes from them."""
    per_window = {key: list(values) for key, values in scores.per_window.items()}
    nll = {"sum": list(scores.nll_sum), "n_tokens": list(scores.n_tokens)}
    return {
        "reference": reference,
        **extra,
        "per_window": per_window,
        "nll": nll,
        **derive_comparison(per_window, nll, bootstrap),
    }


def fingerprint_after(backbone: Any, fingerprint_before: str) -> str:
    """Recompute a backbone's weight fingerprint and refuse the run if training changed the weights."""
    after = backbone.fingerprint(recompute=True)
    if after != fingerprint_before:
        raise RuntimeError(
            f"{backbone.name!r}: the backbone's weights changed during the run (fingerprint "
            f"{fingerprint_before[:12]} -> {after[:12]}); the run is invalid."
        )
    return after


def backbone_record(backbone: Any, fingerprint_before: str) -> dict[str, Any]:
    """A frozen backbone as a result file records it: description and the fingerprints that prove it frozen."""
    after = fingerprint_after(backbone, fingerprint_before)
    return {
        **backbone.describe(),
        "fingerprint_before": fingerprint_before,
        "fingerprint_after": after,
        "unchanged": True,
    }
