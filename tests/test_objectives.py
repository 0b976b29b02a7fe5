"""Tests of abi.objectives: every calibration objective on hand-made tensors, and bad input."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from abi.objectives import (
    OBJECTIVES,
    SOURCES,
    check_hyper,
    corr_mse,
    get_objective,
    make_objective,
    release_phase4_start,
    release_weights,
)

HIDDEN = (
    "corr_mse",
    "weighted_corr_mse",
    "curriculum",
    "norm_weighted_corr_mse",
    "curriculum_corr_mse",
    "cosine_corr",
    "final_hidden_mse",
)
LOGIT = ("kl_raw", "kl_logits", "logit_mse")

pytestmark = pytest.mark.usefixtures("single_thread")


class ScaledHead:
    """A stand-in backbone whose logits are ``scale * (final + correction)``: known values by hand."""

    def __init__(self, scale: float = 1.0):
        self.scale = scale
        self.calls = 0

    def logits(self, final: torch.Tensor, correction: torch.Tensor | None = None) -> torch.Tensor:
        self.calls += 1
        return self.scale * (final if correction is None else final + correction)


class NoBackbone:
    """Fails on any use: hidden-space objectives must never touch the backbone."""

    def __getattr__(self, name: str):
        raise AssertionError(f"a hidden-space objective used the backbone ({name})")


def _context(final: torch.Tensor, backbone=None, step: int = 0, total: int = 10) -> dict:
    return {"final": final, "backbone": backbone, "step": step, "total_steps": total}


@pytest.fixture
def tensors() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    candidate, target = torch.randn(2, 5, 8, generator=g), torch.randn(2, 5, 8, generator=g)
    return candidate, target, 10 * torch.randn(2, 5, 8, generator=g)


def test_registry_flags_the_head_and_the_source_of_each_definition():
    assert set(OBJECTIVES) == set(HIDDEN) | set(LOGIT)
    assert {n for n, o in OBJECTIVES.items() if o.needs_head} == set(LOGIT)
    assert OBJECTIVES["final_hidden_mse"].equivalent_to == "corr_mse"
    sources = {n: o.source for n, o in OBJECTIVES.items()}
    assert {n for n, s in sources.items() if s == "release ledger"} == {
        "corr_mse",
        "kl_raw",
        "weighted_corr_mse",
        "curriculum",
    }
    assert sources["logit_mse"] == "unsourced" and set(sources.values()) <= set(SOURCES)
    assert OBJECTIVES["kl_raw"].describe()["source"] == "release ledger"
    assert get_objective("corr_mse") is OBJECTIVES["corr_mse"]


@pytest.mark.parametrize("name", [*HIDDEN, *LOGIT])
def test_zero_at_identity(name, tensors):
    _, target, final = tensors
    backbone = ScaledHead() if name in LOGIT else NoBackbone()
    loss = get_objective(name)(target.clone(), target, **_context(final, backbone))
    assert loss.item() == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("name", [*HIDDEN, *LOGIT])
def test_gradients_flow_to_the_candidate_only(name, tensors):
    candidate, target, final = tensors
    candidate = candidate.clone().requires_grad_(True)
    backbone = ScaledHead() if name in LOGIT else NoBackbone()
    loss = get_objective(name)(candidate, target, **_context(final, backbone, step=1))
    loss.backward()
    assert loss.item() > 0 and math.isfinite(loss.item())
    assert candidate.grad is not None and torch.isfinite(candidate.grad).all() and candidate.grad.abs().sum() > 0
    assert not target.requires_grad


@pytest.mark.parametrize("name", HIDDEN)
def test_hidden_space_objectives_never_touch_the_backbone(name, tensors):
    candidate, target, final = tensors
    get_objective(name)(candidate, target, **_context(final, NoBackbone()))  # NoBackbone raises on any use
    get_objective(name)(candidate, target, **_context(final, None))


def test_corr_mse_and_final_hidden_mse_are_the_same_objective(tensors):
    candidate, target, final = tensors
    a = corr_mse(candidate.double(), target.double())
    b = get_objective("final_hidden_mse")(candidate.double(), target.double(), final=final.double())
    assert a.item() == pytest.approx(1.0 * ((candidate - target) ** 2).mean().item(), rel=1e-6)
    assert b.item() == pytest.approx(a.item(), rel=1e-12)


def test_kl_known_value_and_temperature_scaling(tensors):
    candidate, target, final = tensors
    head = ScaledHead()
    for temperature in (1.0, 2.0, 0.5):
        p = torch.softmax((final + target) / temperature, dim=-1)
        q = torch.softmax((final + candidate) / temperature, dim=-1)
        expected = temperature**2 * (p * (p.log() - q.log())).sum(-1).mean()
        loss = make_objective("kl_logits", temperature=temperature)(candidate, target, **_context(final, head))
        assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    assert head.calls == 6  # anchor and candidate logits, once each per call


def test_raw_kl_is_the_ledger_kl_at_temperature_2_without_t_squared(tensors):
    candidate, target, final = tensors
    head = ScaledHead()
    raw = get_objective("kl_raw")(candidate, target, **_context(final, head))
    distilled = make_objective("kl_logits", temperature=2.0)(candidate, target, **_context(final, head))
    p = torch.softmax((final + target) / 2, dim=-1)
    q = torch.softmax((final + candidate) / 2, dim=-1)
    assert raw.item() == pytest.approx((p * (p.log() - q.log())).sum(-1).mean().item(), rel=1e-5)
    assert distilled.item() == pytest.approx(4 * raw.item(), rel=1e-6)
    assert OBJECTIVES["kl_raw"].resolved_hyper() == {"temperature": 2.0}


def test_release_weighted_corr_mse_weights_by_the_squared_anchor_correction_capped_at_10():
    target = torch.tensor([[[1.0, 0.0], [3.0, 0.0]]])  # |a|^2 = 1 and 9, mean 5 -> weights 0.2 and 1.8
    candidate = target + torch.tensor([[[1.0, 1.0], [2.0, 2.0]]])  # per-position MSE 1 and 4
    loss = get_objective("weighted_corr_mse")(candidate, target)
    assert loss.item() == pytest.approx((0.2 * 1 + 1.8 * 4) / 2, rel=1e-6)
    big = torch.zeros(1, 20, 2)
    big[0, 0, 0] = 100.0  # one huge correction: weight 20 before the cap, 10 after; the rest 0
    weights = release_weights(big)
    assert weights[0, 0].item() == pytest.approx(10.0) and weights[0, 1:].abs().max().item() == 0.0


def test_release_curriculum_is_corr_mse_then_weighted_in_phase_4():
    target = torch.tensor([[[1.0, 0.0], [3.0, 0.0]]])
    candidate = target + torch.tensor([[[1.0, 1.0], [2.0, 2.0]]])
    assert release_phase4_start(16000) == 10000 and release_phase4_start(120) == 74
    curriculum = get_objective("curriculum")
    plain, weighted = corr_mse(candidate, target).item(), get_objective("weighted_corr_mse")(candidate, target).item()
    assert curriculum(candidate, target, step=73, total_steps=120).item() == pytest.approx(plain)
    assert curriculum(candidate, target, step=74, total_steps=120).item() == pytest.approx(weighted)


def test_kl_is_anchor_to_candidate():
    final = torch.zeros(1, 1, 2)
    anchor, candidate = torch.tensor([[[2.0, 0.0]]]), torch.tensor([[[0.0, 0.0]]])
    p, q = torch.softmax(anchor, -1), torch.softmax(candidate, -1)
    forward = (p * (p / q).log()).sum()
    loss = get_objective("kl_logits")(candidate, anchor, **_context(final, ScaledHead()))
    assert loss.item() == pytest.approx(forward.item(), rel=1e-6)


def test_logit_mse_known_value(tensors):
    candidate, target, final = tensors
    loss = get_objective("logit_mse")(candidate, target, **_context(final, ScaledHead(3.0)))
    assert loss.item() == pytest.approx(9 * corr_mse(candidate, target).item(), rel=1e-5)


def test_norm_weighted_corr_mse_weights_by_the_anchor_hidden_norm():
    target = torch.zeros(1, 2, 2)
    final = torch.tensor([[[1.0, 0.0], [3.0, 0.0]]])  # |f + a| = 1 and 3 -> weights 0.5 and 1.5
    candidate = torch.tensor([[[2.0, 0.0], [0.0, 4.0]]])  # per-position MSE 2 and 8
    weighted = get_objective("norm_weighted_corr_mse")
    assert weighted(candidate, target, final=final).item() == pytest.approx((0.5 * 2 + 1.5 * 8) / 2)
    inverse = make_objective("norm_weighted_corr_mse", power=-1.0)  # weights 1.5 and 0.5
    assert inverse(candidate, target, final=final).item() == pytest.approx((1.5 * 2 + 0.5 * 8) / 2)
    # The weight is |f + a|, not |f|: equal |f| but different anchor corrections give the same weights.
    anchor = torch.tensor([[[0.0, 0.0], [2.0, 0.0]]])
    same_f = torch.tensor([[[1.0, 0.0], [1.0, 0.0]]])
    assert weighted(candidate + anchor, anchor, final=same_f).item() == pytest.approx((0.5 * 2 + 1.5 * 8) / 2)
    uniform = torch.ones(1, 2, 2)
    assert weighted(candidate, target, final=uniform).item() == pytest.approx(corr_mse(candidate, target).item())


def test_curriculum_starts_with_small_corrections_and_ends_as_corr_mse():
    target = torch.tensor([[[1.0, 0.0], [3.0, 0.0]]])  # |a| = 1 and 3, mean 2
    candidate = target + torch.tensor([[[1.0, 1.0], [2.0, 2.0]]])  # per-position MSE 1 and 4
    final = torch.zeros_like(target)
    curriculum = get_objective("curriculum_corr_mse")
    start = curriculum(candidate, target, final=final, step=0, total_steps=100)
    w = torch.tensor([2.0 / 1.0, 2.0 / 3.0])  # (|a| / mean|a|)^-1 at progress 0
    w = w / w.mean()
    assert start.item() == pytest.approx(((w * torch.tensor([1.0, 4.0])).mean()).item(), rel=1e-6)
    plain = corr_mse(candidate, target).item()
    assert start.item() < plain
    for step in (50, 99):  # from ramp (0.5 of the run) on: plain corrMSE
        late = curriculum(candidate, target, final=final, step=step, total_steps=100)
        assert late.item() == pytest.approx(plain, rel=1e-6)
    none = make_objective("curriculum_corr_mse", strength=0.0)
    assert none(candidate, target, final=final, step=0, total_steps=100).item() == pytest.approx(plain, rel=1e-6)


def test_cosine_distance_sees_direction_not_size():
    a = torch.tensor([[[1.0, 0.0], [0.0, 2.0]]])
    cosine = get_objective("cosine_corr")
    assert cosine(2 * a, a).item() == pytest.approx(0.0, abs=1e-7)
    assert cosine(-a, a).item() == pytest.approx(2.0)
    assert cosine(a.flip(-1), a).item() == pytest.approx(1.0)


def test_logit_objectives_work_through_a_real_frozen_head(tiny_llama, tensors):
    g = torch.Generator().manual_seed(1)
    final = torch.randn(2, 3, tiny_llama.d_model, generator=g)
    target = torch.randn(2, 3, tiny_llama.d_model, generator=g)
    candidate = (target + 0.5 * torch.randn(2, 3, tiny_llama.d_model, generator=g)).requires_grad_(True)
    ctx = _context(final, tiny_llama)
    kl = get_objective("kl_logits")(candidate, target, **ctx)
    log_p = torch.log_softmax(tiny_llama.logits(final, target), -1)
    log_q = torch.log_softmax(tiny_llama.logits(final, candidate), -1)
    assert kl.item() == pytest.approx((log_p.exp() * (log_p - log_q)).sum(-1).mean().item(), rel=1e-4)
    kl.backward()
    assert candidate.grad.abs().sum() > 0
    assert all(p.grad is None for p in tiny_llama.model.parameters())
    assert get_objective("kl_logits")(target, target, **ctx).item() == pytest.approx(0.0, abs=1e-6)


# -- bad input ------------------------------------------------------------------------------------
def test_unknown_name_lists_the_known_objectives():
    with pytest.raises(
        ValueError,
        match=r"unknown calibration objective 'kl_rawer'; known objectives: corr_mse, "
        r"cosine_corr, curriculum, curriculum_corr_mse, final_hidden_mse, kl_logits, kl_raw",
    ):
        make_objective("kl_rawer")
    with pytest.raises(ValueError, match="known objectives"):
        get_objective("nope")


@pytest.mark.parametrize(
    ("name", "hyper", "message"),
    [
        ("corr_mse", {"temperature": 2.0}, r"'corr_mse' does not take \['temperature'\]; it takes: no hyper"),
        ("kl_logits", {"power": 1.0}, r"does not take \['power'\]; it takes: temperature"),
        ("kl_logits", {"temperature": 0.0}, "out of range; expected a positive number"),
        ("kl_logits", {"temperature": "2"}, "must be a finite number"),
        ("kl_logits", {"temperature": float("nan")}, "must be a finite number"),
        ("curriculum_corr_mse", {"ramp": 1.5}, "ramp=1.5 is out of range"),
        ("norm_weighted_corr_mse", {"power": True}, "must be a finite number"),
        ("weighted_corr_mse", {"power": 1.0}, r"does not take \['power'\]; it takes: no hyper"),
    ],
)
def test_incompatible_hyper_parameters_are_rejected(name, hyper, message):
    with pytest.raises(ValueError, match=message):
        make_objective(name, **hyper)
    with pytest.raises(ValueError, match=message):
        check_hyper(name, hyper)


def test_bound_hyper_parameters_are_used_and_the_registry_is_untouched(tensors):
    candidate, target, final = tensors
    hot = make_objective("kl_logits", temperature=4.0)
    assert hot.resolved_hyper() == {"temperature": 4.0}
    assert OBJECTIVES["kl_logits"].resolved_hyper() == {"temperature": 1.0}
    assert hot.describe()["hyper"] == {"temperature": 4.0} and hot.describe()["needs_head"]
    ctx = _context(final, ScaledHead())
    assert hot(candidate, target, **ctx).item() != pytest.approx(
        get_objective("kl_logits")(candidate, target, **ctx).item()
    )


def test_missing_context_says_what_is_needed(tensors):
    candidate, target, final = tensors
    with pytest.raises(ValueError, match="needs backbone="):
        get_objective("kl_logits")(candidate, target, final=final)
    with pytest.raises(ValueError, match="needs step="):
        get_objective("curriculum_corr_mse")(candidate, target, final=final)
    with pytest.raises(ValueError, match="needs final="):
        get_objective("norm_weighted_corr_mse")(candidate, target)
    with pytest.raises(ValueError, match="needs step="):
        get_objective("curriculum")(candidate, target)


def test_objectives_plug_into_calibrate(tiny_llama, tmp_path):
    from abi.features import Windows, extract_features
    from abi.module import ABIModule, ModuleConfig
    from abi.schedule import PhaseSchedule
    from abi.train import calibrate, module_corrections

    windows = Windows.causal(torch.randint(0, 50257, (4, 16), generator=torch.Generator().manual_seed(3)))
    features = extract_features(tiny_llama, windows, [3, 4], root=tmp_path)
    anchor = ABIModule(ModuleConfig(64, 2, 16), seed=0)
    targets = module_corrections(anchor, features)
    for name in OBJECTIVES:
        objective = get_objective(name)
        module = ABIModule(ModuleConfig(64, 2, 16), seed=1)
        log = calibrate(
            module,
            features,
            targets,
            PhaseSchedule.constant(3, 1e-3),
            objective=objective,
            batch_windows=2,
            rolling_window=2,
            backbone=tiny_llama if objective.needs_head else None,
        )
        assert len(log.losses) == 3 and all(math.isfinite(x) for x in log.losses)
    with pytest.raises(ValueError, match="pass the backbone"):
        calibrate(
            ABIModule(ModuleConfig(64, 2, 16)),
            features,
            targets,
            PhaseSchedule.constant(3, 1e-3),
            objective=make_objective("kl_logits", temperature=2.0),
        )


def test_objective_is_a_plain_callable_module_free():
    # An objective is a function of tensors, not an nn.Module holding state.
    assert not isinstance(get_objective("corr_mse"), nn.Module)
