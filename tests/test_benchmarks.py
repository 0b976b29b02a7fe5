"""The benchmark suite's own arithmetic: the baseline it times is the metric we ship, ratios and
growth fits mean what the cost appendix says, and result files are written without losing sections."""

from __future__ import annotations

import json

import pytest
import torch

from abi.nib import CORE_METRICS, nib_position_metrics
from benchmarks.common import ratio, write_section
from benchmarks.end_to_end import _with_target
from benchmarks.nib_evaluator import reference_metrics
from benchmarks.scaling import growth_exponent


def test_per_position_reference_equals_the_vectorised_metric():
    generator = torch.Generator().manual_seed(0)
    anchor = torch.randn(12, 300, generator=generator, dtype=torch.float64) * 3
    candidate = anchor + torch.randn(12, 300, generator=generator, dtype=torch.float64)
    reference = reference_metrics(anchor.numpy(), candidate.numpy())
    ours = nib_position_metrics(anchor, candidate)
    for name in CORE_METRICS:
        assert float(ours[name].mean()) == pytest.approx(reference[name], abs=1e-9), name
    assert 0 < reference["top5"] < 1 and reference["js"] > 0


def test_ratio_pairs_the_worst_and_best_cases():
    slow = {"median_s": 10.0, "min_s": 8.0, "max_s": 12.0}
    fast = {"median_s": 1.0, "min_s": 0.5, "max_s": 2.0}
    assert ratio(slow, fast) == {"median": 10.0, "min": 4.0, "max": 24.0}


def test_growth_exponent_recovers_linear_and_quadratic_growth():
    x = [256, 512, 1024, 2048, 4096]
    assert growth_exponent(x, [3e-4 * v for v in x])["exponent"] == pytest.approx(1.0)
    quadratic = growth_exponent(x, [1e-7 * v**2 for v in x])
    assert quadratic["exponent"] == pytest.approx(2.0) and quadratic["r2"] == pytest.approx(1.0)


def test_targets_are_met_missed_or_absent():
    met = _with_target({"notebook": "01_core_nib", "profile": "smoke", "wall_s": 60.0, "exit_code": 0})
    slow = _with_target({"notebook": "01_core_nib", "profile": "smoke", "wall_s": 121.0, "exit_code": 0})
    failed = _with_target({"notebook": "01_core_nib", "profile": "smoke", "wall_s": 1.0, "exit_code": 1})
    report = _with_target({"notebook": "90_summary", "profile": "smoke", "wall_s": 6.0, "exit_code": 0})
    assert (met["target_s"], met["meets_target"]) == (120, True)
    assert slow["meets_target"] is False and failed["meets_target"] is False
    assert (report["target_s"], report["meets_target"]) == (None, None)


def test_write_section_keeps_other_sections_and_refuses_a_corrupted_file(tmp_path):
    path = tmp_path / "benchmarks.json"
    write_section("cpu", "feature_cache", {"speedup": {"median": 9.0}}, path)
    write_section("cpu", "scaling", {"curves": {}}, path)
    data = json.loads(path.read_text())
    assert set(data["sections"]) == {"feature_cache", "scaling"}
    assert data["sections"]["feature_cache"]["speedup"] == {"median": 9.0}
    assert "git_commit" in data["sections"]["scaling"]["provenance"]
    path.write_text("{truncated")
    with pytest.raises(SystemExit, match="corrupted"):
        write_section("cpu", "scaling", {}, path)
    assert path.read_text() == "{truncated"
