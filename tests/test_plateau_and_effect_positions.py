"""The domain stage's plateau rule, views of the first cached windows, and NIB on the effect positions."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from abi.evaluate import effect_window_metrics, score_variants
from abi.features import Windows, extract_features
from abi.module import ABIModule, ModuleConfig, parameter_hash
from abi.nib import summary_from_per_window
from abi.train import PlateauRule, mean_domain_loss, train_domain_stage

CANDIDATE = ModuleConfig(64, 2, 32)

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def features(tiny_llama, random_ids, tmp_path_factory):
    """Taps 3 and 4 of tiny-llama on 12 windows of 24 random tokens."""
    windows = Windows.causal(random_ids(12, 24, seed=31))
    return extract_features(tiny_llama, windows, [3, 4], root=tmp_path_factory.mktemp("features"))


@pytest.fixture(scope="module")
def validation(tiny_llama, random_ids, tmp_path_factory):
    windows = Windows.causal(random_ids(4, 24, seed=32))
    return extract_features(tiny_llama, windows, [3, 4], root=tmp_path_factory.mktemp("validation"))


# -- plateau rule ---------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "values",
    [{"every": 0}, {"patience": 0}, {"min_delta": -0.1}, {"min_delta": math.nan}, {"every": -3}],
)
def test_plateau_rule_refuses_bad_values(values: dict) -> None:
    with pytest.raises(ValueError, match="every >= 1, patience >= 1, min_delta >= 0"):
        PlateauRule(**values)


def test_plateau_rule_records_itself() -> None:
    rule = PlateauRule(every=5, patience=2, min_delta=0.01).to_dict()
    assert (rule["every"], rule["patience"], rule["min_delta"]) == (5, 2, 0.01) and "restore" in rule["rule"]


def test_validation_and_plateau_come_together(tiny_llama, features, validation) -> None:
    with pytest.raises(ValueError, match="plateau rule needs validation"):
        train_domain_stage(ABIModule(CANDIDATE), tiny_llama, features, steps=2, validation=validation)
    with pytest.raises(ValueError, match="plateau rule needs validation"):
        train_domain_stage(ABIModule(CANDIDATE), tiny_llama, features, steps=2, plateau=PlateauRule(every=1))


def test_without_improvement_the_stage_stops_early_and_restores_the_start(tiny_llama, features, validation) -> None:
    # No step can lower the validation loss by 90 %: the stage must stop after `patience` evaluations
    # and put back the state evaluated at step 0, although training moved the weights.
    moved = ABIModule(CANDIDATE, seed=4)
    start = parameter_hash(moved)
    train_domain_stage(moved, tiny_llama, features, steps=4, lr=1e-2, batch_windows=2, seed=0)
    assert parameter_hash(moved) != start

    module = ABIModule(CANDIDATE, seed=4)
    initial_loss = mean_domain_loss(tiny_llama, module, validation)
    log = train_domain_stage(
        module,
        tiny_llama,
        features,
        steps=50,
        lr=1e-2,
        batch_windows=2,
        seed=0,
        validation=validation,
        plateau=PlateauRule(every=2, patience=2, min_delta=0.9),
    )
    assert len(log.losses) == 4, "two evaluations without improvement after step 0, at steps 2 and 4"
    assert [e["step"] for e in log.evaluations] == [0, 2, 4]
    assert log.best_step == 0 and log.best_val_loss == pytest.approx(initial_loss, rel=1e-6)
    assert log.evaluations[0]["val_loss"] == pytest.approx(initial_loss, rel=1e-6)
    assert parameter_hash(module) == start, "the best (step 0) state was not restored"
    assert not module.training
    assert log.to_dict()["best_val_loss"] == log.best_val_loss


def test_improving_stage_runs_to_the_end_and_keeps_the_best_evaluated_state(tiny_llama, features, validation) -> None:
    module = ABIModule(CANDIDATE, seed=5)
    log = train_domain_stage(
        module,
        tiny_llama,
        features,
        steps=5,
        lr=3e-3,
        batch_windows=2,
        seed=0,
        validation=validation,
        plateau=PlateauRule(every=2, patience=100, min_delta=0.0),
    )
    assert len(log.losses) == 5
    assert [e["step"] for e in log.evaluations] == [0, 2, 4, 5], "step 0, every 2 steps, and the last step"
    losses = {e["step"]: e["val_loss"] for e in log.evaluations}
    assert log.best_step == min(losses, key=losses.get) and log.best_step > 0
    assert log.best_val_loss == losses[log.best_step]
    assert mean_domain_loss(tiny_llama, module, validation) == pytest.approx(log.best_val_loss, rel=1e-6)


def test_plateau_stage_is_deterministic(tiny_llama, features, validation) -> None:
    rule = PlateauRule(every=1, patience=1, min_delta=0.0)
    logs = [
        train_domain_stage(
            ABIModule(CANDIDATE, seed=6),
            tiny_llama,
            features,
            steps=3,
            lr=3e-3,
            seed=1,
            validation=validation,
            plateau=rule,
        )
        for _ in "ab"
    ]
    assert logs[0].evaluations == logs[1].evaluations and logs[0].best_step == logs[1].best_step


# -- FeatureSet.first -------------------------------------------------------------------------------------
def test_first_windows_view_shares_the_cache(features) -> None:
    view = features.first(5)
    assert len(view) == 5 and len(features) == 12
    assert len(view.windows) == 5
    torch.testing.assert_close(view.windows.labels, features.windows.labels[:5], atol=0, rtol=0)
    for got, want in zip(view.batch(slice(None)), features.batch(slice(0, 5))):
        torch.testing.assert_close(got, want, atol=0, rtol=0)
    assert sum(batch[1].shape[0] for batch in view.iter_batches(2)) == 5
    assert len(features.first(len(features))) == len(features)


@pytest.mark.parametrize("n", [0, -1, 13])
def test_first_refuses_counts_outside_the_cache(features, n: int) -> None:
    with pytest.raises(ValueError, match=r"choose 1\.\.12"):
        features.first(n)


# -- effect positions -------------------------------------------------------------------------------------
def test_effect_window_metrics_gives_a_window_without_effect_positions_weight_zero() -> None:
    metrics = {
        "top1": torch.tensor([[1.0, 0.0, 1.0, 1.0], [1.0, 1.0, 1.0, 1.0]]),
        "js": torch.tensor([[0.1, 0.3, 0.5, 0.7], [9.0, 9.0, 9.0, 9.0]]),
    }
    mask = torch.tensor([[True, True, False, False], [False, False, False, False]])
    out = effect_window_metrics(metrics, mask)
    assert out["n_positions"].tolist() == [2, 0] and out["n_positions"].dtype == np.int64
    np.testing.assert_allclose(out["top1"], [0.5, 0.0])
    np.testing.assert_allclose(out["js"], [0.2, 0.0])
    assert all(np.isfinite(v).all() for v in out.values())
    summary = summary_from_per_window({k: v.tolist() for k, v in out.items()})
    assert summary == pytest.approx({"top1": 0.5, "js": 0.2})


def test_effect_positions_are_where_the_reference_changes_the_top1(tiny_llama, features) -> None:
    reference = ABIModule(CANDIDATE, seed=9)  # random output projection: changes many top-1 tokens
    zero = ABIModule(CANDIDATE, seed=9)
    torch.nn.init.zeros_(zero.proj_out.weight)  # adds nothing: the bare backbone
    _, scores = score_variants(
        tiny_llama, features, reference, {"bare": None, "self": reference, "zero": zero}, skip=2, effect_positions=True
    )
    bare, same = scores["bare"], scores["self"]
    for variant in scores.values():
        assert variant.effect_per_window.keys() == variant.per_window.keys()
        assert all(len(v) == len(features) for v in variant.effect_per_window.values())
    n_effect = np.asarray(bare.effect_per_window["n_positions"])
    assert (n_effect <= np.asarray(bare.per_window["n_positions"])).all() and n_effect.sum() > 0
    effect = summary_from_per_window(bare.effect_per_window)
    assert effect["top1"] == 0.0, "the bare backbone never agrees with the reference's top-1 where they differ"
    assert summary_from_per_window(same.effect_per_window)["top1"] == 1.0
    assert scores["zero"].effect_per_window == bare.effect_per_window
    _, without = score_variants(tiny_llama, features, reference, {"bare": None}, skip=2)
    assert without["bare"].effect_per_window == {} and without["bare"].per_window == bare.per_window
