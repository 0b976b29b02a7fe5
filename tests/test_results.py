"""Result files: schema, recomputation from raw values, atomic writes, loud failures."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import abi.experiments  # noqa: F401  (registers derivers)
from abi.results import (
    SEAL_FIELD,
    ResultFileError,
    atomic_write_text,
    check_result,
    content_hash,
    derive_comparison,
    load_result,
    write_result,
)

BOOT = {"n_resamples": 200, "seed": 0}


def _comparison(rng: np.random.Generator, n_windows: int = 12, level: float = 0.9) -> dict:
    per_window = {
        "js": rng.uniform(0.001, 0.02, n_windows).tolist(),
        "top1": rng.uniform(level - 0.1, level, n_windows).tolist(),
        "top5": rng.uniform(level - 0.05, min(level + 0.05, 1.0), n_windows).tolist(),
        "entropy_diff": rng.uniform(0.0, 0.2, n_windows).tolist(),
        "n_positions": rng.integers(50, 100, n_windows).tolist(),
    }
    nll = {"sum": rng.uniform(100, 200, n_windows).tolist(), "n_tokens": per_window["n_positions"]}
    return {"reference": "anchor", "per_window": per_window, "nll": nll, **derive_comparison(per_window, nll, BOOT)}


def synthetic_core_nib(seeds=(1, 2)) -> dict:
    """A small but schema-complete core_nib result, with derived sections computed the real way."""
    from abi.experiments.core_nib import derive

    rng = np.random.default_rng(0)
    names = ["no_module", "ceiling"] + [f"{g}/{s}" for s in seeds for g in ("candidate", "uncalibrated",
                                                                           "random_calibrated")]
    comparisons = {n: _comparison(rng, level=0.95 if n.startswith("candidate") else 0.5) for n in names}
    official = {n: _comparison(rng) for n in names}
    result = {
        "schema_version": 1,
        "claim": "core_nib",
        "profile": "smoke",
        "parameters": {"candidate_seeds": list(seeds), "ni_margin": 0.02, "bootstrap": BOOT},
        "provenance": {},
        "timings": {},
        "comparisons": comparisons,
        "official": official,
    }
    result.update(derive(result))
    return result


def test_round_trip_verifies(tmp_path: Path) -> None:
    path = write_result(tmp_path / "core_nib.json", synthetic_core_nib())
    loaded = load_result(path)
    assert loaded["verdicts"]["held_out_pass_per_seed"] == {"1": "PASS", "2": "PASS"}


def test_tampered_summary_is_named(tmp_path: Path) -> None:
    path = write_result(tmp_path / "r.json", synthetic_core_nib())
    data = json.loads(path.read_text())
    data["comparisons"]["candidate/1"]["summary"]["top5"] += 0.01
    path.write_text(json.dumps(data))
    with pytest.raises(ResultFileError, match=r"comparisons\.candidate/1\.summary"):
        load_result(path)


def test_tampered_raw_value_breaks_derived_sections(tmp_path: Path) -> None:
    path = write_result(tmp_path / "r.json", synthetic_core_nib())
    data = json.loads(path.read_text())
    data["comparisons"]["ceiling"]["per_window"]["top5"][0] = 0.0
    path.write_text(json.dumps(data))
    with pytest.raises(ResultFileError, match="ceiling"):
        load_result(path)


def test_truncated_file_is_reported(tmp_path: Path) -> None:
    path = write_result(tmp_path / "r.json", synthetic_core_nib())
    path.write_text(path.read_text()[:500])
    with pytest.raises(ResultFileError, match="truncated or corrupted"):
        load_result(path)


def test_missing_field_is_named(tmp_path: Path) -> None:
    result = synthetic_core_nib()
    del result["provenance"]
    with pytest.raises(ResultFileError, match="provenance"):
        write_result(tmp_path / "r.json", result)
    assert not (tmp_path / "r.json").exists(), "an invalid result must not be written"


def test_unequal_arrays_are_rejected(tmp_path: Path) -> None:
    result = synthetic_core_nib()
    result["comparisons"]["ceiling"]["per_window"]["js"].pop()
    with pytest.raises(ResultFileError, match="unequal length"):
        write_result(tmp_path / "r.json", result)


def test_atomic_write_keeps_old_file_on_failure(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "r.json"
    atomic_write_text(path, "old")

    def broken_replace(*_args, **_kwargs):
        raise OSError("disk full")

    monkeypatch.setattr("abi.results.os.replace", broken_replace)
    with pytest.raises(OSError):
        atomic_write_text(path, "new")
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["r.json"], "no temporary file may be left behind"


def test_missing_file_says_what_to_run(tmp_path: Path) -> None:
    with pytest.raises(ResultFileError, match="make book"):
        load_result(tmp_path / "absent.json")


def test_benchmark_loader_names_missing_sections(tmp_path):
    from abi.reports.loading import load_benchmarks

    path = tmp_path / "benchmarks.json"
    path.write_text(json.dumps({"schema": 1, "device": "cpu", "sections": {"feature_cache": {}}}))
    with pytest.raises(ResultFileError, match="nib_evaluator, scaling missing"):
        load_benchmarks(path)
    assert load_benchmarks(tmp_path / "absent.json", required=False) is None
    path.write_text("{not json")
    with pytest.raises(ResultFileError, match="not valid JSON"):
        load_benchmarks(path)


def test_written_result_is_sealed_last_and_reads_back(tmp_path: Path) -> None:
    result = synthetic_core_nib()
    result["timings"] = {10: 1.0, 9: 2.0}  # integer keys become strings and re-sort: the seal hashes what is read
    path = write_result(tmp_path / "core_nib.json", result)
    stored = json.loads(path.read_text())
    assert list(stored)[-1] == SEAL_FIELD and stored[SEAL_FIELD] == content_hash(stored)
    assert path.read_text() == json.dumps(stored, indent=1) + "\n"
    assert SEAL_FIELD not in result, "writing must not change the caller's result"
    load_result(path)


def test_edited_field_that_is_not_derived_breaks_the_seal(tmp_path: Path) -> None:
    path = write_result(tmp_path / "r.json", synthetic_core_nib())
    data = json.loads(path.read_text())
    data["parameters"]["ni_margin_note"] = "edited"
    path.write_text(json.dumps(data))
    with pytest.raises(ResultFileError, match=r"r\.json: edited after it was written.*re-run its notebook"):
        load_result(path)


def test_unsealed_result_is_refused(tmp_path: Path) -> None:
    path = write_result(tmp_path / "r.json", synthetic_core_nib())
    data = json.loads(path.read_text())
    del data[SEAL_FIELD]
    path.write_text(json.dumps(data))
    with pytest.raises(ResultFileError, match=f"no {SEAL_FIELD} seal"):
        load_result(path)


def test_nan_in_a_file_is_refused(tmp_path: Path) -> None:
    path = write_result(tmp_path / "r.json", synthetic_core_nib())
    path.write_text(path.read_text().replace('"ni_margin": 0.02', '"ni_margin": NaN'))
    with pytest.raises(ResultFileError, match="NaN is not a number strict JSON allows"):
        load_result(path)


def test_removed_section_is_a_result_error_not_a_key_error(tmp_path: Path) -> None:
    result = synthetic_core_nib()
    del result["comparisons"]["ceiling"]
    with pytest.raises(ResultFileError, match="malformed.*KeyError"):
        check_result(result, source="r.json")
