"""Result files: schema, recomputation from raw values, atomic writes, loud failures."""

from __future__ import annotations

import copy
import functools
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


def _comparison(rng: np.random.Generator, n_windows: int = 12, level: float = 0.9, effect: bool = False) -> dict:
    per_window = {
        "js": rng.uniform(0.001, 0.02, n_windows).tolist(),
        "top1": rng.uniform(level - 0.1, level, n_windows).tolist(),
        "top5": rng.uniform(level - 0.05, min(level + 0.05, 1.0), n_windows).tolist(),
        "entropy_diff": rng.uniform(0.0, 0.2, n_windows).tolist(),
        "n_positions": rng.integers(50, 100, n_windows).tolist(),
    }
    nll = {"sum": rng.uniform(100, 200, n_windows).tolist(), "n_tokens": per_window["n_positions"]}
    comparison = {
        "reference": "anchor",
        "per_window": per_window,
        "nll": nll,
        **derive_comparison(per_window, nll, BOOT),
    }
    if effect:  # effect positions: a subset of each window's positions, none at all in the first window
        counts = [0] + rng.integers(1, 20, n_windows - 1).tolist()
        comparison["effect_per_window"] = {
            **{
                k: [0.0 if n == 0 else v * 0.9 for v, n in zip(values, counts)]
                for k, values in per_window.items()
                if k != "n_positions"
            },
            "n_positions": counts,
        }
    return comparison


def _setting(rng: np.random.Generator, seeds: tuple[int, ...], site: str, doses: tuple[int, ...] = ()) -> dict:
    names = ["no_module", "ceiling"] + [
        f"{g}/{s}" for s in seeds for g in ("candidate", "uncalibrated", "random_calibrated")
    ]
    comparisons = {n: _comparison(rng, level=0.95 if n.startswith("candidate") else 0.5, effect=True) for n in names}
    official = {n: _comparison(rng) for n in names}
    dose_names = [f"{arm}/{d}/{s}" for d in doses for s in seeds for arm in ("trained", "untrained")]
    dose_names += [f"uncalibrated/{s}" for s in seeds] if doses else []
    dose = {n: _comparison(rng, n_windows=4) for n in dose_names}
    anchor_nll = {
        split: {"sum": rng.uniform(20, 40, 12).tolist(), "n_tokens": [75] * 12} for split in ("held_out", "official")
    }  # perplexity about 1.6, the bare backbone's about 7
    return {
        "domain": "python",
        "correction_site": site,
        "candidate_seeds": list(seeds),
        "data": {},
        "anchor_nll": anchor_nll,
        "comparisons": comparisons,
        "official": official,
        "dose_response": dose,
        "diagnostics": {},
        "training": {},
    }


def synthetic_core_nib(seeds=(1, 2)) -> dict:
    """A small but schema-complete core_nib result (two settings, one at the pre-norm site), with
    derived sections computed the real way; a fresh copy, safe to edit."""
    return copy.deepcopy(_synthetic_core_nib(tuple(seeds)))


@functools.cache
def _synthetic_core_nib(seeds: tuple[int, ...]) -> dict:
    from abi.experiments.core_nib_stats import SCHEMA_VERSION, derive

    rng = np.random.default_rng(0)
    result = {
        "schema_version": SCHEMA_VERSION,
        "claim": "core_nib",
        "profile": "smoke",
        "parameters": {"candidate_seeds": list(seeds), "dose_windows": [2], "ni_margin": 0.02, "bootstrap": BOOT},
        "provenance": {},
        "timings": {},
        "settings": {
            "python": _setting(rng, tuple(seeds), "after_final_norm", doses=(2,)),
            "python@before_final_norm": _setting(rng, tuple(seeds[:1]), "before_final_norm"),
        },
    }
    result.update(derive(result))
    return result


def test_round_trip_verifies(tmp_path: Path) -> None:
    path = write_result(tmp_path / "core_nib.json", synthetic_core_nib())
    loaded = load_result(path)
    stats = loaded["setting_stats"]
    assert stats["python"]["verdicts"]["held_out_pass_per_seed"] == {"1": "PASS", "2": "PASS"}
    assert stats["python@before_final_norm"]["verdicts"]["held_out_pass_per_seed"] == {"1": "PASS"}
    assert loaded["regime_gates"]["python"]["testable"] is True
    assert loaded["row_verdicts"] == {"python": "reproduced", "python@before_final_norm": "reproduced"}
    assert loaded["verdict"] == "reproduced"
    assert (
        set(stats["python"]["dose_response"]["doses"]) == {"2"}
        and stats["python@before_final_norm"]["dose_response"] == {}
    )


def test_tampered_summary_is_named(tmp_path: Path) -> None:
    path = write_result(tmp_path / "r.json", synthetic_core_nib())
    data = json.loads(path.read_text())
    data["settings"]["python"]["comparisons"]["candidate/1"]["summary"]["top5"] += 0.01
    path.write_text(json.dumps(data))
    with pytest.raises(ResultFileError, match=r"settings\.python\.comparisons\.candidate/1\.summary"):
        load_result(path)


def test_tampered_raw_value_breaks_derived_sections(tmp_path: Path) -> None:
    path = write_result(tmp_path / "r.json", synthetic_core_nib())
    data = json.loads(path.read_text())
    data["settings"]["python"]["comparisons"]["ceiling"]["per_window"]["top5"][0] = 0.0
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
    result["settings"]["python"]["comparisons"]["ceiling"]["per_window"]["js"].pop()
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
    del result["settings"]["python"]["comparisons"]["ceiling"]
    with pytest.raises(ResultFileError, match="malformed.*KeyError"):
        check_result(result, source="r.json")


@pytest.mark.parametrize(
    ("section", "name"),
    [("official", "candidate/1"), ("dose_response", "trained/2/2"), ("dose_response", "uncalibrated/1")],
)
def test_comparisons_nested_in_a_setting_are_checked(section: str, name: str) -> None:
    result = synthetic_core_nib()
    result["settings"]["python"][section][name]["summary"]["top5"] += 0.01
    with pytest.raises(ResultFileError, match=rf"settings\.python\.{section}\.{name}\.summary"):
        check_result(result, source="r.json")


def test_tampered_effect_position_value_breaks_the_derived_sections() -> None:
    result = synthetic_core_nib()
    effect = result["settings"]["python@before_final_norm"]["comparisons"]["candidate/1"]["effect_per_window"]
    assert effect["n_positions"][1] > 0
    effect["top5"][1] += 0.05
    with pytest.raises(ResultFileError, match="setting_stats does not match"):
        check_result(result, source="r.json")


def test_core_nib_result_of_the_old_schema_is_refused() -> None:
    result = synthetic_core_nib()
    result["schema_version"] = 1
    with pytest.raises(ResultFileError, match="schema_version 1, expected 2"):
        check_result(result, source="r.json")


def test_result_with_neither_comparisons_nor_settings_is_refused() -> None:
    result = synthetic_core_nib()
    del result["settings"]
    with pytest.raises(ResultFileError, match="neither comparisons nor settings"):
        check_result(result, source="r.json")


def test_edit_of_an_effect_value_is_caught(tmp_path: Path) -> None:
    # Such a window has weight 0 in every effect-position mean: the consistency check (and the seal) catch it.
    path = write_result(tmp_path / "r.json", synthetic_core_nib())
    data = json.loads(path.read_text())
    effect = data["settings"]["python"]["comparisons"]["ceiling"]["effect_per_window"]
    assert effect["n_positions"][0] == 0
    effect["top5"][0] = 0.5
    path.write_text(json.dumps(data))
    with pytest.raises(ResultFileError, match="edited after it was written|effect positions"):
        load_result(path)


def test_effect_arrays_must_cover_every_window_and_stay_within_its_positions() -> None:
    result = synthetic_core_nib()
    effect = result["settings"]["python"]["comparisons"]["candidate/1"]["effect_per_window"]
    for key in effect:
        effect[key] = effect[key][1:]  # one window dropped
    with pytest.raises(ResultFileError, match="effect_per_window: arrays of lengths"):
        check_result(result, source="r.json")
    result = synthetic_core_nib()
    effect = result["settings"]["python"]["comparisons"]["ceiling"]["effect_per_window"]
    assert effect["n_positions"][0] == 0
    effect["top5"][0] = 123.0  # a value where the window has no effect position
    with pytest.raises(ResultFileError, match="window 0 has 0 effect positions"):
        check_result(result, source="r.json")
