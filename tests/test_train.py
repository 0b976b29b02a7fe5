"""Tests of abi.schedule and abi.train: the release's LR schedule, the domain stage, calibration."""

from __future__ import annotations

import math

import pytest
import torch

from abi.features import Windows, extract_features
from abi.module import ABIModule, ModuleConfig, parameter_hash
from abi.objectives import OBJECTIVES, CalibrationObjective, corr_mse, get_objective
from abi.schedule import PhaseSchedule
from abi.train import (
    TrainingDivergedError,
    calibrate,
    domain_loss,
    module_corrections,
    module_logits,
    train_domain_stage,
)

CANDIDATE = ModuleConfig(64, 2, 32)
ANCHOR = ModuleConfig(64, 1, 16, per_tap_norm=False)

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def windows(random_ids) -> Windows:
    return Windows.causal(random_ids(16, 32, seed=21))


@pytest.fixture(scope="module")
def features(tiny_llama, windows, tmp_path_factory):
    """Candidate features: taps 3 and 4 of tiny-llama on 16 windows of 32 random tokens."""
    return extract_features(tiny_llama, windows, [3, 4], root=tmp_path_factory.mktemp("features"))


@pytest.fixture(scope="module")
def anchor_targets(tiny_llama, windows, tmp_path_factory) -> torch.Tensor:
    """Corrections of a 1-tap anchor module (tap 4) on the same windows, as in the release's claim 1."""
    anchor_features = extract_features(tiny_llama, windows, [4], root=tmp_path_factory.mktemp("anchor"))
    return module_corrections(ABIModule(ANCHOR, seed=0), anchor_features)


def _corr_mse(module: ABIModule, features, targets: torch.Tensor) -> float:
    return corr_mse(module_corrections(module, features), targets).item()


# -- schedule -------------------------------------------------------------------------------------
def test_release_calibration_schedule_at_full_size():
    schedule = PhaseSchedule.release_calibration(16000)
    assert schedule.phase_steps == (4000, 3000, 3000, 6000)
    assert schedule.total_steps == 16000
    assert schedule.warmup_steps == 400
    assert schedule.phase_lrs == pytest.approx((5e-3, 5e-4, 5e-5, 5e-6), rel=1e-12)
    assert schedule.lr(0) == pytest.approx(5e-3 / 400, rel=1e-12)
    assert schedule.lr(199) == pytest.approx(5e-3 / 2, rel=1e-12)
    assert schedule.lr(399) == pytest.approx(5e-3, rel=1e-12)
    assert schedule.lr(400) == pytest.approx(5e-3, rel=1e-12)
    assert schedule.lr(3999) == pytest.approx(5e-3, rel=1e-12)
    assert schedule.lr(4000) == pytest.approx(5e-4, rel=1e-12)
    assert schedule.lr(7000) == pytest.approx(5e-5, rel=1e-12)
    assert schedule.lr(9999) == pytest.approx(5e-5, rel=1e-12)
    assert schedule.lr(10000) == pytest.approx(5e-6, rel=1e-12)
    assert schedule.lr(15999) == pytest.approx(5e-6, rel=1e-12)
    assert [schedule.phase(s) for s in (0, 3999, 4000, 6999, 7000, 9999, 10000, 15999)] == [1, 1, 2, 2, 3, 3, 4, 4]


def test_release_calibration_scales_to_any_budget():
    small = PhaseSchedule.release_calibration(160, peak_lr=1e-2)
    assert small.phase_steps == (40, 30, 30, 60) and small.warmup_steps == 4
    assert small.phase_lrs == pytest.approx((1e-2, 1e-3, 1e-4, 1e-5), rel=1e-12)
    for total in range(4, 400):
        schedule = PhaseSchedule.release_calibration(total)
        assert schedule.total_steps == total
        assert len(schedule.phase_steps) == 4 and min(schedule.phase_steps) >= 1
        assert schedule.warmup_steps <= schedule.phase_steps[0]


@pytest.mark.parametrize("total", [0, 1, 3])
def test_release_calibration_needs_four_steps(total):
    with pytest.raises(ValueError, match="at least 4 steps"):
        PhaseSchedule.release_calibration(total)


def test_phase_schedule_validation_and_constant():
    with pytest.raises(ValueError, match="same, non-zero number"):
        PhaseSchedule((10, 10), (1e-3,))
    with pytest.raises(ValueError, match="same, non-zero number"):
        PhaseSchedule((), ())
    with pytest.raises(ValueError, match="non-negative"):
        PhaseSchedule((10, -1), (1e-3, 1e-4))
    constant = PhaseSchedule.constant(10, 2e-3, warmup_steps=4)
    assert [constant.lr(s) for s in range(6)] == pytest.approx([5e-4, 1e-3, 1.5e-3, 2e-3, 2e-3, 2e-3])
    assert constant.lr(50) == 2e-3  # past the end: the last phase's LR


# -- domain stage ---------------------------------------------------------------------------------
def test_bare_head_on_cached_features_reproduces_the_model(tiny_llama, features, windows):
    taps, final, labels = features.batch(slice(0, 3))
    logits = module_logits(tiny_llama, None, taps, final)
    torch.testing.assert_close(logits, tiny_llama.model_logits(windows.input_ids[:3]), atol=1e-4, rtol=0)
    module = ABIModule(CANDIDATE, seed=0)
    with torch.no_grad():
        loss = domain_loss(tiny_llama, module, taps, final, labels)
        corrected = module_logits(tiny_llama, module, taps, final)
    assert not torch.allclose(corrected, logits, atol=1e-3)
    expected = torch.nn.functional.cross_entropy(corrected[:, :-1].flatten(0, 1), labels[:, :-1].flatten())
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)  # the -100 at each window's end is ignored


def test_domain_stage_lowers_the_loss_and_leaves_the_backbone_untouched(tiny_llama, features):
    before = tiny_llama.fingerprint(recompute=True)
    module = ABIModule(CANDIDATE, seed=0)
    start = parameter_hash(module)
    log = train_domain_stage(module, tiny_llama, features, steps=40, lr=3e-3, batch_windows=2, seed=0)
    assert len(log.losses) == 40 and log.lrs == [3e-3] * 40
    assert all(math.isfinite(x) for x in log.losses)
    assert 10.0 < log.losses[0] < 11.5  # random labels over a 50,257 vocabulary: about ln(50257) = 10.8
    first, last = sum(log.losses[:5]) / 5, sum(log.losses[-5:]) / 5
    assert last < first - 0.05
    assert parameter_hash(module) != start and not module.training
    assert tiny_llama.fingerprint(recompute=True) == before
    assert all(p.grad is None and not p.requires_grad for p in tiny_llama.model.parameters())


def test_domain_stage_is_deterministic_and_validates_steps(tiny_llama, features):
    logs = [train_domain_stage(ABIModule(CANDIDATE, seed=3), tiny_llama, features, steps=3, seed=5) for _ in "ab"]
    assert logs[0].losses == logs[1].losses
    with pytest.raises(ValueError, match="at least 1 step"):
        train_domain_stage(ABIModule(CANDIDATE), tiny_llama, features, steps=0)


def test_domain_stage_divergence_raises(tiny_llama, features):
    with pytest.raises(TrainingDivergedError, match="lower the learning rate"):
        train_domain_stage(ABIModule(CANDIDATE), tiny_llama, features, steps=10, lr=1e30, grad_clip=None)


# -- calibration ----------------------------------------------------------------------------------
def test_module_corrections_cover_every_window(features, anchor_targets):
    assert anchor_targets.shape == (16, 32, 64)
    module = ABIModule(CANDIDATE, seed=0)
    corrections = module_corrections(module, features, batch_windows=5)
    taps, _, _ = features.batch(slice(None))
    with torch.no_grad():
        torch.testing.assert_close(corrections, module(taps), atol=1e-5, rtol=0)


def test_calibration_reaches_the_anchor_and_restores_the_best_checkpoint(features, anchor_targets):
    candidate = ABIModule(CANDIDATE, seed=1)
    initial = _corr_mse(candidate, features, anchor_targets)
    schedule = PhaseSchedule.release_calibration(200)
    hashes: dict[int, str] = {}

    def record(step, module):
        hashes[step] = parameter_hash(module)  # state after the update of `step`
        return {"hash_recorded": True}

    log = calibrate(candidate, features, anchor_targets, schedule, rolling_window=20, on_step=record, eval_every=1)
    final = _corr_mse(candidate, features, anchor_targets)
    assert initial > 1.0
    assert final < initial / 5
    assert len(log.losses) == 200 and log.lrs == [schedule.lr(s) for s in range(200)]
    assert [e["step"] for e in log.evaluations] == list(range(200))
    assert log.evaluations[7]["hash_recorded"] is True
    # The best rolling mean is the minimum over the eligible steps (full windows, and the last step).
    rolling = {s: sum(log.losses[s - 19 : s + 1]) / 20 for s in range(19, 200)}
    best_step = min(rolling, key=rolling.get)
    assert log.best_step == best_step
    assert log.best_rolling_loss == pytest.approx(rolling[best_step], rel=1e-9)
    assert log.best_step < 199  # so restoring differs from simply keeping the last state
    # The restored state is the checkpoint taken at best_step (one optimizer step either side of its last loss).
    restored = parameter_hash(candidate)
    assert restored in {hashes[best_step - 1], hashes[best_step]}
    assert restored != hashes[199]
    assert log.best_rolling_loss / 3 < final < log.best_rolling_loss * 3
    assert not candidate.training


def test_restored_checkpoint_has_the_loss_of_the_best_window(features, anchor_targets):
    candidate = ABIModule(CANDIDATE, seed=1)
    initial = _corr_mse(candidate, features, anchor_targets)
    # A good first phase, then an LR far too high: the best window ends where the second phase starts.
    schedule = PhaseSchedule((100, 50), (5e-3, 0.5))
    log = calibrate(candidate, features, anchor_targets, schedule, rolling_window=20)
    restored = _corr_mse(candidate, features, anchor_targets)
    assert log.best_rolling_loss < initial / 5
    assert restored < initial
    assert log.best_rolling_loss / 3 < restored < log.best_rolling_loss * 3


def test_calibrating_only_the_interface_keeps_the_domain(features, anchor_targets):
    candidate = ABIModule(CANDIDATE, seed=1)
    domain = parameter_hash(candidate.domain_parameters())
    norms = parameter_hash([*candidate.tap_norms.parameters(), *candidate.abi_norm.parameters()])
    interface = parameter_hash(candidate.interface_parameters())
    initial = _corr_mse(candidate, features, anchor_targets)
    calibrate(
        candidate,
        features,
        anchor_targets,
        PhaseSchedule.release_calibration(60),
        rolling_window=10,
        parameters=candidate.interface_parameters(),
    )
    assert parameter_hash(candidate.domain_parameters()) == domain
    assert parameter_hash([*candidate.tap_norms.parameters(), *candidate.abi_norm.parameters()]) == norms
    assert parameter_hash(candidate.interface_parameters()) != interface
    assert _corr_mse(candidate, features, anchor_targets) < initial


def test_calibration_divergence_raises(features, anchor_targets):
    with pytest.raises(TrainingDivergedError, match="lower the learning rate"):
        calibrate(ABIModule(CANDIDATE), features, anchor_targets, PhaseSchedule.constant(20, 1e30))
    nan_targets = torch.full_like(anchor_targets, float("nan"))
    with pytest.raises(TrainingDivergedError, match="at step 0"):
        calibrate(ABIModule(CANDIDATE), features, nan_targets, PhaseSchedule.constant(5, 1e-3))


def test_calibration_rejects_misaligned_targets(features, anchor_targets):
    with pytest.raises(ValueError, match="15 target corrections for 16 feature windows"):
        calibrate(ABIModule(CANDIDATE), features, anchor_targets[:15], PhaseSchedule.constant(5, 1e-3))


def test_unknown_objective_lists_the_known_ones(features, anchor_targets):
    with pytest.raises(ValueError, match=r"unknown calibration objective 'kl_rawest'.*corr_mse"):
        calibrate(
            ABIModule(CANDIDATE), features, anchor_targets, PhaseSchedule.constant(5, 1e-3), objective="kl_rawest"
        )
    with pytest.raises(ValueError, match="corr_mse"):
        get_objective("nope")
    assert get_objective("corr_mse") is OBJECTIVES["corr_mse"]


def test_head_objective_needs_the_backbone(features, anchor_targets):
    needs_head = CalibrationObjective("logit_test", corr_mse, needs_head=True)
    with pytest.raises(ValueError, match="pass the backbone"):
        calibrate(ABIModule(CANDIDATE), features, anchor_targets, PhaseSchedule.constant(5, 1e-3), objective=needs_head)


def test_custom_objective_receives_the_step_context(features, anchor_targets):
    seen: list[tuple[int, int, tuple]] = []

    def spy(candidate, target, *, final, step, total_steps, **_):
        seen.append((step, total_steps, tuple(final.shape)))
        return corr_mse(candidate, target)

    calibrate(
        ABIModule(CANDIDATE),
        features,
        anchor_targets,
        PhaseSchedule.constant(6, 1e-3),
        objective=CalibrationObjective("spy", spy),
        batch_windows=3,
    )
    assert seen == [(s, 6, (3, 32, 64)) for s in range(6)]
