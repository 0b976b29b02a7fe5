"""Calibration objectives: named, swappable functions in one registry.

Each objective compares a candidate's corrections ``c`` with a reference (anchor) module's
corrections ``a`` on the same positions; ``f`` is the backbone's cached final hidden state and
``H`` its frozen head (final norm + LM head), so the anchor's logits are ``H(f + a)`` and the
candidate's ``H(f + c)``. Means run over positions (and the last dimension where stated).

===========================  ===============================================================  ====  ==============
name                         loss                                                             head  source
===========================  ===============================================================  ====  ==============
``corr_mse``                 ``mean (c - a)^2``: the release's corrMSE                        no    release ledger
``kl_raw``                   ``mean_t KL(softmax(H(f+a)/T) || softmax(H(f+c)/T))``, T = 2     yes   release ledger
``weighted_corr_mse``        ``mean_t w_t mean_d (c - a)^2``, ``w_t = |a_t|^2 / mean|a|^2``   no    release ledger
                             clipped at 10
``curriculum``               corrMSE in phases 1-3 of the four-phase schedule, weighted       no    release ledger
                             corrMSE (as above) in phase 4
``logit_mse``                ``mean (H(f+c) - H(f+a))^2`` over positions and vocabulary       yes   unsourced
``kl_logits``                ``T^2 * mean_t KL(...)`` (distillation scaling)                  yes   this project
``norm_weighted_corr_mse``   ``mean_t w_t * mean_d (c - a)^2``, ``w_t ∝ |f_t + a_t|^power``   no    this project
``curriculum_corr_mse``      corrMSE with weights that favour small anchor corrections early  no    this project
``cosine_corr``              ``mean_t (1 - cos(c_t, a_t))``                                   no    this project
``final_hidden_mse``         ``mean ((f + c) - (f + a))^2`` (= corrMSE, see its docstring)    no    this project
===========================  ===============================================================  ====  ==============

*Source* says where a definition comes from: ``release ledger`` (the release's experiment ledger defines
it; see design/protocol.md, last section), ``this project`` (the FAQ names the idea, the definition is
ours), ``unsourced`` (the FAQ quotes a figure for it, but no ledger entry defines or records it).

Objectives without the head run on cached features only: the calibration never touches the
backbone (``abi.experiments.objective_ablation`` passes ``backbone=None`` to them). Objectives
that compare logits say so with ``needs_head`` and cost a vocabulary-wide head per position
(49,152 x 576 for SmolLM2), forward for the anchor and forward + backward for the candidate.

Hyper-parameters are declared per objective (``params``: name -> default); build a configured
objective with :func:`make_objective`, which rejects unknown names and parameters the objective
does not take before any work starts.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import torch
from torch import Tensor
from torch.nn import functional as F

from abi.schedule import RELEASE_PHASE_STEPS

_EPS = 1e-8
SOURCES = ("release ledger", "this project", "unsourced")
# The release ledger's weighted corrMSE caps a position's weight at this multiple of the mean.
RELEASE_WEIGHT_CLIP = 10.0


@dataclass(frozen=True)
class CalibrationObjective:
    """A calibration loss ``fn(candidate_corr, target_corr, **hyper, **context) -> scalar``.

    ``params`` declares the hyper-parameters the objective takes and their defaults; ``hyper``
    holds the values bound by :func:`make_objective` (empty: the defaults of ``fn``).
    ``equivalent_to`` names an objective this one equals mathematically (an honest note, used
    by the ablation's verdict so a duplicate is not counted as a separate competitor).
    """

    name: str
    fn: Callable[..., Tensor]
    needs_head: bool = False
    description: str = ""
    params: Mapping[str, float] = field(default_factory=dict, compare=False, hash=False)
    hyper: Mapping[str, float] = field(default_factory=dict, compare=False, hash=False)
    equivalent_to: str | None = None
    source: str = "this project"

    def __call__(self, candidate: Tensor, target: Tensor, **context: Any) -> Tensor:
        return self.fn(candidate, target, **self.hyper, **context)

    def resolved_hyper(self) -> dict[str, float]:
        """Every declared hyper-parameter with its value in use (defaults filled in)."""
        return {**self.params, **self.hyper}

    def describe(self) -> dict[str, Any]:
        """Plain record for result files."""
        return {
            "name": self.name,
            "needs_head": self.needs_head,
            "hyper": self.resolved_hyper(),
            "description": self.description,
            "equivalent_to": self.equivalent_to,
            "source": self.source,
        }


# -- helpers ----------------------------------------------------------------------------------------
def _require(context: dict[str, Any], key: str, objective: str) -> Any:
    value = context.get(key)
    if value is None:
        raise ValueError(
            f"objective {objective!r} needs {key}= in its context; abi.train.calibrate passes it "
            "(final hidden states, backbone, step, total_steps)."
        )
    return value


def _normalised(weights: Tensor) -> Tensor:
    """Detached per-position weights with mean 1 over the batch, so the loss scale is corrMSE's."""
    weights = weights.detach()
    return weights / weights.mean().clamp_min(_EPS)


def _weighted_mse(candidate: Tensor, target: Tensor, weights: Tensor) -> Tensor:
    per_position = (candidate - target).pow(2).mean(dim=-1)
    return (weights * per_position).mean()


def _logits_pair(candidate: Tensor, target: Tensor, context: dict[str, Any], objective: str) -> tuple[Tensor, Tensor]:
    """Anchor logits H(f + a) (no gradient) and candidate logits H(f + c) through the frozen head."""
    final = _require(context, "final", objective)
    backbone = _require(context, "backbone", objective)
    with torch.no_grad():
        anchor_logits = backbone.logits(final, target)
    return anchor_logits, backbone.logits(final, candidate)


# -- the objectives ---------------------------------------------------------------------------------
def corr_mse(candidate: Tensor, target: Tensor, **_: Any) -> Tensor:
    """The release's objective: mean squared error between correction vectors (hidden space)."""
    return (candidate - target).pow(2).mean()


def _tempered_kl(candidate: Tensor, target: Tensor, temperature: float, context: dict[str, Any], name: str) -> Tensor:
    """``mean_t KL(p_T || q_T)``, ``p_T = softmax(H(f+a)/T)``, ``q_T = softmax(H(f+c)/T)`` (anchor to candidate)."""
    anchor_logits, candidate_logits = _logits_pair(candidate, target, context, name)
    log_p = torch.log_softmax(anchor_logits.float() / temperature, dim=-1)
    log_q = torch.log_softmax(candidate_logits.float() / temperature, dim=-1)
    n_positions = log_p[..., 0].numel()
    return F.kl_div(log_q, log_p, log_target=True, reduction="sum") / n_positions


def kl_raw(candidate: Tensor, target: Tensor, temperature: float = 2.0, **context: Any) -> Tensor:
    """The release ledger's "raw KL": KL from the anchor to the candidate at temperature 2, *without*
    the T^2 factor (so its gradients are about 1/T^2 of distillation's). The ledger trains it at one
    tenth of corrMSE's learning rate; the ablation derives its LR that way rather than sweeping it."""
    return _tempered_kl(candidate, target, temperature, context, "kl_raw")


def kl_logits(candidate: Tensor, target: Tensor, temperature: float = 1.0, **context: Any) -> Tensor:
    """Distillation KL from the anchor to the candidate on logits, at temperature T, times T^2.

    ``T^2 * mean_t KL(p_T || q_T)``: the direction NIB's ``kl_ac`` diagnostic measures, and the T^2
    factor keeps gradient sizes comparable across temperatures (Hinton et al.). This project's arm;
    the release's is :func:`kl_raw`.
    """
    return _tempered_kl(candidate, target, temperature, context, "kl_logits") * temperature**2


def logit_mse(candidate: Tensor, target: Tensor, **context: Any) -> Tensor:
    """Mean squared difference of the logits over positions and the whole vocabulary.

    Softmax is invariant to a constant shift of the logits, which logit-MSE still penalises, and
    it weighs the ~49k irrelevant tail logits like the top-5 the benchmark measures.
    """
    anchor_logits, candidate_logits = _logits_pair(candidate, target, context, "logit_mse")
    return (candidate_logits.float() - anchor_logits.float()).pow(2).mean()


def release_weights(target: Tensor, clip: float = RELEASE_WEIGHT_CLIP) -> Tensor:
    """The release ledger's per-position weights: ``|a_t|^2 / mean |a|^2`` over the batch, capped at ``clip``
    (no renormalisation after the cap). Large anchor corrections count more."""
    size = target.detach().pow(2).sum(dim=-1)
    return (size / size.mean().clamp_min(_EPS)).clamp(max=clip)


def weighted_corr_mse(candidate: Tensor, target: Tensor, **_: Any) -> Tensor:
    """The release ledger's weighted corrMSE: ``mean_t w_t mean_d (c - a)^2`` with
    :func:`release_weights` (w = |corr_A|^2 / mean |corr_A|^2, clipped at 10x)."""
    return _weighted_mse(candidate, target, release_weights(target))


def release_phase4_start(total_steps: int) -> int:
    """First step of phase 4 of the release's four-phase schedule scaled to ``total_steps`` (the rounding of
    :meth:`abi.schedule.PhaseSchedule.release_calibration`, which needs at least four steps; this does not)."""
    release_total = sum(RELEASE_PHASE_STEPS)
    return sum(round(total_steps * steps / release_total) for steps in RELEASE_PHASE_STEPS[:-1])


def curriculum(candidate: Tensor, target: Tensor, **context: Any) -> Tensor:
    """The release ledger's curriculum: plain corrMSE in phases 1-3 of the release's four-phase schedule,
    the ledger's weighted corrMSE (:func:`weighted_corr_mse`) in phase 4. Phase boundaries follow
    :meth:`abi.schedule.PhaseSchedule.release_calibration` at ``total_steps`` (the schedule the ablation uses)."""
    step = _require(context, "step", "curriculum")
    total = _require(context, "total_steps", "curriculum")
    if step < release_phase4_start(total):
        return corr_mse(candidate, target)
    return weighted_corr_mse(candidate, target)


def norm_weighted_corr_mse(candidate: Tensor, target: Tensor, power: float = 1.0, **context: Any) -> Tensor:
    """corrMSE with per-position weights ``w_t ∝ |f_t + a_t|^power`` (mean weight 1 per batch).

    The weight is the norm of the *anchor's* final hidden state ``f + a`` (the state its head
    reads), not of the bare backbone's ``f``: the anchor is the model being matched, and ``|f|``
    alone would weigh positions the same for every anchor. Needs only cached features. Note that
    a final RMS/LayerNorm divides a hidden-state error by about this norm before the head, so
    ``power = 1`` emphasises the positions where an error changes the logits least; ``power = -1``
    is the logit-relevant opposite.
    """
    final = _require(context, "final", "norm_weighted_corr_mse")
    weights = _normalised((final + target).norm(dim=-1).clamp_min(_EPS).pow(power))
    return _weighted_mse(candidate, target, weights)


def curriculum_corr_mse(
    candidate: Tensor, target: Tensor, strength: float = 1.0, ramp: float = 0.5, **context: Any
) -> Tensor:
    """corrMSE with an easy-to-hard curriculum over the training steps.

    Difficulty of a position is the size of the anchor's correction ``|a_t|`` (a large correction
    is harder to match). Weights ``w_t ∝ (|a_t| / mean|a|)^(-strength * (1 - progress))`` with
    ``progress = min(1, step / (ramp * total_steps))``, normalised to mean 1: small corrections
    dominate at first, and from ``ramp`` of the run on every position counts equally (plain corrMSE).
    """
    step = _require(context, "step", "curriculum_corr_mse")
    total = _require(context, "total_steps", "curriculum_corr_mse")
    progress = min(1.0, step / max(ramp * total, 1.0))
    size = target.norm(dim=-1).clamp_min(_EPS)
    weights = _normalised((size / size.mean()).pow(-strength * (1.0 - progress)))
    return _weighted_mse(candidate, target, weights)


def cosine_corr(candidate: Tensor, target: Tensor, **_: Any) -> Tensor:
    """Mean cosine distance ``1 - cos(c_t, a_t)``: the direction of each correction, not its size
    (zero for any positive multiple of the anchor's correction)."""
    return (1.0 - F.cosine_similarity(candidate, target, dim=-1, eps=_EPS)).mean()


def final_hidden_mse(candidate: Tensor, target: Tensor, **context: Any) -> Tensor:
    """MSE between the candidate's and the anchor's final hidden states, ``f + c`` and ``f + a``.

    Honest note: both models share the frozen backbone's ``f``, so ``(f + c) - (f + a) = c - a``
    and this objective *is* corrMSE, exactly, not up to a constant: the loss values and gradients
    agree up to float32 rounding of the additions. The release lists it as a separate objective; the
    ablation runs it anyway to show that its results coincide with corrMSE's. (An objective on the
    hidden state *after* the final norm would differ; the release does not describe one.)
    """
    final = _require(context, "final", "final_hidden_mse")
    return ((final + candidate) - (final + target)).pow(2).mean()


def _objective(
    name: str,
    fn: Callable[..., Tensor],
    description: str,
    needs_head: bool = False,
    params: Mapping[str, float] | None = None,
    equivalent_to: str | None = None,
    source: str = "this project",
) -> CalibrationObjective:
    return CalibrationObjective(
        name,
        fn,
        needs_head,
        description,
        MappingProxyType(dict(params or {})),
        MappingProxyType({}),
        equivalent_to,
        source,
    )


OBJECTIVES: dict[str, CalibrationObjective] = {
    o.name: o
    for o in (
        _objective(
            "corr_mse",
            corr_mse,
            "MSE between candidate and anchor corrections (hidden space)",
            source="release ledger",
        ),
        _objective(
            "kl_raw",
            kl_raw,
            "KL(anchor || candidate) of the softmax at temperature T, without T^2",
            needs_head=True,
            params={"temperature": 2.0},
            source="release ledger",
        ),
        _objective(
            "weighted_corr_mse",
            weighted_corr_mse,
            "corrMSE weighted per position by |anchor correction|^2 / mean, capped at 10",
            source="release ledger",
        ),
        _objective(
            "curriculum",
            curriculum,
            "corrMSE in phases 1-3, weighted corrMSE (the ledger's weights) in phase 4",
            source="release ledger",
        ),
        _objective(
            "logit_mse",
            logit_mse,
            "MSE between candidate and anchor logits (whole vocabulary)",
            needs_head=True,
            source="unsourced",
        ),
        _objective(
            "kl_logits",
            kl_logits,
            "T^2 * KL(anchor || candidate) of the softmax at temperature T",
            needs_head=True,
            params={"temperature": 1.0},
        ),
        _objective(
            "norm_weighted_corr_mse",
            norm_weighted_corr_mse,
            "corrMSE weighted per position by |anchor final hidden state|^power",
            params={"power": 1.0},
        ),
        _objective(
            "curriculum_corr_mse",
            curriculum_corr_mse,
            "corrMSE, small anchor corrections first, uniform after `ramp` of the run",
            params={"strength": 1.0, "ramp": 0.5},
        ),
        _objective("cosine_corr", cosine_corr, "1 - cosine similarity of candidate and anchor corrections"),
        _objective(
            "final_hidden_mse",
            final_hidden_mse,
            "MSE between final hidden states f + c and f + a (equals corrMSE)",
            equivalent_to="corr_mse",
        ),
    )
}

# Value rules of every hyper-parameter: (check, what a valid value is).
_RULES: dict[str, tuple[Callable[[float], bool], str]] = {
    "temperature": (lambda v: v > 0, "a positive number, e.g. 2.0 (the release's raw KL) or 1.0"),
    "power": (lambda v: -4 <= v <= 4, "a number in [-4, 4], e.g. 1.0 (weight by the norm) or -1.0"),
    "strength": (lambda v: v >= 0, "a non-negative number, e.g. 1.0 (0 = plain corrMSE)"),
    "ramp": (lambda v: 0 < v <= 1, "a fraction of the run in (0, 1], e.g. 0.5"),
}


def _known() -> str:
    return ", ".join(sorted(OBJECTIVES))


def get_objective(name: str) -> CalibrationObjective:
    """Look up an objective by name (with its default hyper-parameters); unknown names list the known ones."""
    if not isinstance(name, str) or name not in OBJECTIVES:
        raise ValueError(f"unknown calibration objective {name!r}; known objectives: {_known()}.")
    return OBJECTIVES[name]


def check_hyper(name: str, hyper: Mapping[str, Any]) -> dict[str, float]:
    """Validate hyper-parameters for objective ``name`` without building it (for up-front checks)."""
    objective = get_objective(name)
    unknown = sorted(set(hyper) - set(objective.params))
    if unknown:
        takes = ", ".join(sorted(objective.params)) or "no hyper-parameters"
        raise ValueError(f"objective {name!r} does not take {unknown}; it takes: {takes}.")
    checked: dict[str, float] = {}
    for key, value in hyper.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ValueError(f"{name}: {key} must be a finite number, got {value!r}.")
        rule, expected = _RULES[key]
        if not rule(float(value)):
            raise ValueError(f"{name}: {key}={value!r} is out of range; expected {expected}.")
        checked[key] = float(value)
    return checked


def make_objective(name: str, **hyper: Any) -> CalibrationObjective:
    """An objective with its hyper-parameters bound, e.g. ``make_objective("kl_logits", temperature=2.0)``.

    Unknown names list the known objectives; a hyper-parameter the objective does not take (a
    temperature for corrMSE) or an out-of-range value is rejected here, before any training.
    """
    checked = check_hyper(name, hyper)
    return dataclasses.replace(get_objective(name), hyper=MappingProxyType(checked))
