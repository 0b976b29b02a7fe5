"""The benchmark suite's own arithmetic: the baseline it times is the metric we ship, ratios and
growth fits mean what the cost appendix says, and result files are written without losing sections."""

from __future__ import annotations

import json

import pytest
import torch

from abi.nib import CORE_METRICS, nib_position_metrics
from benchmarks.common import ratio, write_section
from benchmarks.end_to_end import _with_target, merged_runs, recorded_stage_seconds, stored_module_seconds
from benchmarks.nib_evaluator import measure, reference_metrics, reference_positions
from benchmarks.release_nib import release_nib, release_positions
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


def _peaked(rows: int, vocab: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    anchor = torch.randn(rows, vocab, generator=generator) * 3
    return anchor, anchor + torch.randn(rows, vocab, generator=generator) * 0.7


@pytest.mark.parametrize("vocab", [300, 4096])
def test_release_algorithm_agrees_with_the_evaluator_to_float32_precision(vocab):
    anchor, candidate = _peaked(32, vocab, seed=vocab)
    ours = nib_position_metrics(anchor, candidate)
    release = release_positions(anchor.numpy(), candidate.numpy())
    for name in ("js", "entropy_diff"):  # float32 sums and the 1e-12 clip: about 1e-6 of an entropy
        assert release[name] == pytest.approx(ours[name].numpy(), abs=1e-5), name
    for name in ("top1", "top5"):  # no ties in random logits: the same tokens
        assert release[name].tolist() == ours[name].tolist(), name
    means = release_nib(anchor.view(4, 8, vocab).numpy(), candidate.view(4, 8, vocab).numpy())
    assert means == pytest.approx({k: float(ours[k].mean()) for k in CORE_METRICS}, abs=1e-5)


def test_release_top5_is_the_set_overlap_of_argpartition():
    anchor = torch.zeros(1, 30)
    candidate = torch.zeros(1, 30)
    anchor[0, [0, 1, 2, 3, 4]] = torch.tensor([10.0, 9, 8, 7, 6])
    candidate[0, [2, 0, 1, 20, 21]] = torch.tensor([10.0, 9, 8, 7, 6])
    release = release_positions(anchor.numpy(), candidate.numpy())
    assert release["top5"].tolist() == [0.6] and release["top1"].tolist() == [0.0]


def test_nib_benchmark_record_checks_accuracy_and_times_all_three():
    record = measure(vocab=2048, positions=8, turns=2, device="cpu")
    assert record["max_abs_difference"] <= 1e-6 and record["max_abs_difference_per_position"] <= 1e-6
    assert record["release_topk_disagreements"] == {"top1": 0, "top5": 0}
    for name in ("release", "reference", "vectorised"):
        assert record[name]["n"] == (6 if name == "vectorised" else 2) and record[name]["median_s"] > 0
    assert set(record["speedup_vs_release"]) == {"median", "min", "max"}


def test_per_position_reference_means_are_the_reference_metrics():
    anchor, candidate = (x.double().numpy() for x in _peaked(5, 200, seed=1))
    positions = reference_positions(anchor, candidate)
    assert positions["js"].shape == (5,)
    assert reference_metrics(anchor, candidate) == {k: float(v.mean()) for k, v in positions.items()}


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


def test_the_appendix_table_shows_a_dash_where_a_value_is_missing() -> None:
    from abi.reports.cost_and_scaling import end_to_end_table

    runs = [
        {"notebook": "90_summary", "profile": "cpu", "wall_s": 6.0, "target_s": None, "meets_target": None},
        {
            "notebook": "01_core_nib",
            "profile": "cpu",
            "wall_s": 600.0,
            "peak_rss_mib": 4000.0,
            "target_s": 1800,
            "meets_target": True,
        },
    ]
    table = end_to_end_table({"sections": {"end_to_end": {"runs": runs}}})
    assert table.loc[0, "peak memory (MiB)"] == "-" and table.loc[0, "target (min)"] == "-"
    assert table.loc[0, "meets target"] == "-" and table.loc[1, "meets target"] == "yes"
    assert not table.isna().any().any()


def test_an_end_to_end_run_of_one_profile_keeps_the_other_profiles_rows() -> None:
    previous = [
        {"notebook": "01_core_nib", "profile": "smoke", "wall_s": 49.0},
        {"notebook": "01_core_nib", "profile": "cpu", "wall_s": 864.5},
        {"notebook": "test suite", "profile": "-", "wall_s": 97.0},
    ]
    measured = [{"notebook": "01_core_nib", "profile": "cpu", "wall_s": 4800.0}]
    rows = merged_runs(previous, measured)
    assert [(r["notebook"], r["profile"], r["wall_s"]) for r in rows] == [
        ("test suite", "-", 97.0),
        ("01_core_nib", "cpu", 4800.0),
        ("01_core_nib", "smoke", 49.0),
    ]


def test_a_resumed_cpu_run_is_judged_by_the_stage_times_its_result_records() -> None:
    timings = {"shared": {"load": 1.0, "finetune": 600.0}, "python": {"train": 900.0, "note": "x"}}
    assert recorded_stage_seconds(timings) == 1501.0
    resumed = _with_target({"notebook": "02_cross_architecture", "profile": "cpu", "wall_s": 27.0, "stages_s": 3210.0})
    assert resumed["meets_target"] is False, "30 min target, 53.5 min of recorded stages"
    quick = _with_target({"notebook": "02_cross_architecture", "profile": "cpu", "wall_s": 27.0, "stages_s": 900.0})
    assert quick["meets_target"] is True


def test_modules_read_from_the_store_count_what_training_them_cost() -> None:
    result = {
        "settings": {
            "python": {"training": {"domain": {"anchor": {"from_cache": True, "stage_s": 120.0, "losses": [1.0]}}}},
            "dialect": {
                "training": {
                    "domain": {"anchor": {"from_cache": False, "stage_s": 300.0}},
                    "calibration": {"1": {"from_cache": True, "stage_s": 45.5}},
                }
            },
        },
        "timings": {"python": {"domain_stages": 0.4}},
    }
    # Trained in this run: already in the recorded stage times; read from the store: their training time.
    assert stored_module_seconds(result) == 165.5
    assert stored_module_seconds({"timings": {}}) == 0.0


def test_the_reproduce_chapter_table_has_each_claims_warm_and_empty_store_cost() -> None:
    from abi.reports.cost_and_scaling import claim_times_table

    runs = [
        {"notebook": "test suite", "profile": "-", "wall_s": 400.0, "target_s": 600, "meets_target": True},
        {"notebook": "01_core_nib", "profile": "cpu", "wall_s": 1572.0, "stages_s": 1551.0, "stored_modules_s": 3549.0}
        | {"target_s": 1800, "meets_target": True},
        {"notebook": "90_summary", "profile": "cpu", "wall_s": 16.0},
        {"notebook": "01_core_nib", "profile": "smoke", "wall_s": 12.0, "target_s": 120, "meets_target": True},
    ]
    table = claim_times_table({"sections": {"end_to_end": {"runs": runs}}})
    assert list(table["notebook"]) == ["01_core_nib"]
    assert table.iloc[0]["warm caches (min)"] == 26.2
    assert table.iloc[0]["with an empty module store (min)"] == 85.0


COLD = {
    "commit": "11f0375abcdef0123",
    "jobs": 2,
    "threads_per_notebook": 1,
    "setup_caches_kept": ["models", "corpora"],
    "exit_code": 0,
    "wall_s": 7800.0,
    "target_s": 9000,
    "meets_target": True,
    "notebook_wall_s": {"01_core_nib": 5400.0, "90_summary": 30.0, "04_backbone_invariance": None},
    "results_match_committed": {
        "core_nib.json": {"identical": True, "differences": 0, "first": []},
        "backbone_invariance.json": {"identical": False, "differences": 2, "first": ["/a (1 vs 2)", "/b (x)"]},
    },
}
VERDICT_MOVED = {
    "identical": False,
    "differences": 9,
    "first": ["/gate (0.1 vs 0.2)"],
    "verdict_differences": ["/verdicts/beats ('no' vs 'mixed')"],
}


def test_the_cold_build_table_and_sentence_come_from_its_record() -> None:
    from abi.reports.cost_and_scaling import cold_build_summary, cold_build_table

    benchmarks = {"sections": {"cold_build": COLD}}
    table = cold_build_table(benchmarks)
    assert list(table["cold wall (min)"]) == [90.0, 0.5, "-"]
    assert list(table["results equal the committed ones"]) == [
        "yes, value for value",
        "-",
        "no: 2 difference(s); first /a (1 vs 2); /b (x)",
    ]
    sentence = cold_build_summary(benchmarks)
    assert "took 130.0 min, within the 150-min target" in sentence and "models, corpora" in sentence
    assert "1 of its 2 claim result files equal" in sentence
    over = cold_build_summary({"sections": {"cold_build": {**COLD, "meets_target": False, "exit_code": 2}}})
    assert "failed, over the 150-min target" in over


def test_an_untimed_cold_build_says_so() -> None:
    from abi.reports.cost_and_scaling import cold_build_summary, cold_build_table

    assert cold_build_table({"sections": {}}) is None
    assert "has not been timed" in cold_build_summary({"sections": {}})


def test_a_changed_verdict_is_named_and_a_recheck_after_regeneration_is_reported() -> None:
    from abi.reports.cost_and_scaling import cold_build_summary, cold_build_table

    matches = {
        "core_nib.json": COLD["results_match_committed"]["core_nib.json"],
        "cross_architecture.json": VERDICT_MOVED,
    }
    recheck = {"commit": "abc1234567890", "files": {name: {"identical": True} for name in matches}}
    cold = {**COLD, "notebook_wall_s": {"02_cross_architecture": 60.0}, "results_match_committed": matches}
    sentence = cold_build_summary({"sections": {"cold_build": cold}})
    assert "/verdicts/beats ('no' vs 'mixed') in `cross_architecture.json`" in sentence
    assert "Against the results committed" not in sentence
    table = cold_build_table({"sections": {"cold_build": cold}})
    assert (
        table.iloc[0]["results equal the committed ones"]
        == "no: 9 difference(s); verdicts /verdicts/beats ('no' vs 'mixed')"
    )
    rechecked = {"sections": {"cold_build": {**cold, "results_match_checkout": recheck}}}
    assert "Against the results committed at `abc1234567`, after they were regenerated: 2 of 2 equal." in (
        cold_build_summary(rechecked)
    )
    assert cold_build_table(rechecked).iloc[0]["equal the ones committed at abc1234567"] == "yes, value for value"


APART = {"identical": False, "first_differing_step": 4, "max_loss_difference": 0.0077, "max_weight_difference": 0.00038}


def _run(threads: int, steps: int, best: int, improvements: list[float]) -> dict:
    margins = [{"improvement": x, "margin": x - 0.005} for x in improvements]
    evaluation_steps = [50 * i for i in range(len(improvements) + 1)]
    return {
        "threads": threads,
        "steps": steps,
        "best_step": best,
        "evaluation_steps": evaluation_steps,
        "decision_margins": margins,
    }


THREADS = {
    "setting": "python: a->b",
    "min_delta": 0.005,
    "modules": [
        {
            "side": "source",
            "backbone": "a",
            "seed": 1,
            "runs": [_run(1, 150, 50, [0.03, -0.04, -0.05])] * 2 + [_run(2, 150, 50, [0.03, -0.04, -0.05])],
            "same_threads": {"identical": True},
            "other_threads": APART,
        },
        {
            "side": "target",
            "backbone": "b",
            "seed": 0,
            "runs": [
                _run(1, 150, 50, [0.0103, -0.002, 0.00479]),
                _run(2, 250, 150, [0.0103, -0.002, 0.00506, -0.01, -0.02]),
            ],
            "same_threads": None,
            "other_threads": APART,
        },
    ],
}


def test_the_thread_sentences_come_from_their_record() -> None:
    from abi.reports.cost_and_scaling import thread_summary

    text = thread_summary({"sections": {"thread_determinism": THREADS}})
    assert "Claim 2's source module (a, seed 1) comes out identical when trained twice with one thread" in text
    assert "first differs at step 4" in text and "by up to 0.0077" in text
    assert "Both runs stopped at step 150 and kept step 50." in text
    assert "The native target module (b, seed 0), the reference" in text
    assert "At step 150 its validation loss improved on the best so far by 0.479% with one thread and by 0.506%" in text
    assert (
        "with one thread it stopped at step 150 and kept step 50, with 2 it trained to step 250 and kept step 150"
        in text
    )
    assert "has not been measured" in thread_summary({"sections": {}})


def test_decision_margins_follow_the_plateau_rules_comparison() -> None:
    from benchmarks.thread_determinism import decision_margins

    margins = decision_margins([2.0, 1.9, 1.895, 1.8], min_delta=0.005)
    assert [round(m["improvement"], 4) for m in margins] == [0.05, round(1 - 1.895 / 1.9, 4), round(1 - 1.8 / 1.9, 4)]
    assert margins[1]["margin"] < 0  # 0.26 % on 1.9 is no improvement: the best stays 1.9


def test_runs_at_other_thread_counts_are_compared_step_by_step_and_weight_by_weight() -> None:
    import torch

    from abi.train import TrainLog
    from benchmarks.thread_determinism import compare_runs

    first = (torch.nn.Linear(2, 2), TrainLog(losses=[1.0, 0.5, 0.25]))
    twin = (torch.nn.Linear(2, 2), TrainLog(losses=[1.0, 0.5, 0.25]))
    twin[0].load_state_dict(first[0].state_dict())
    assert compare_runs(first, twin) == {
        "identical": True,
        "first_differing_step": None,
        "max_loss_difference": 0.0,
        "max_weight_difference": 0.0,
    }
    drifted = (torch.nn.Linear(2, 2), TrainLog(losses=[1.0, 0.5, 0.2]))
    drifted[0].load_state_dict({k: v + 0.001 for k, v in first[0].state_dict().items()})
    apart = compare_runs(first, drifted)
    assert apart["identical"] is False and apart["first_differing_step"] == 2
    assert abs(apart["max_loss_difference"] - 0.05) < 1e-9 and abs(apart["max_weight_difference"] - 0.001) < 1e-6
