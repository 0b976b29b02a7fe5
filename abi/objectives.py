"""Calibration objectives: named, swappable functions in one registry.

Each objective compares a candidate's corrections with a reference module's corrections on the
same windows. Hidden-space objectives (corrMSE) run on cached features only; objectives that
compare logits go through the frozen head and say so with ``needs_head``. Claim 3 (the
objective ablation) adds the remaining objectives of the seed to this registry.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from torch import Tensor


@dataclass(frozen=True)
class CalibrationObjective:
    """A calibration loss ``fn(candidate_corr, target_corr, **context) -> scalar``."""

    name: str
    fn: Callable[..., Tensor]
    needs_head: bool = False
    description: str = ""

    def __call__(self, candidate: Tensor, target: Tensor, **context: Any) -> Tensor:
        return self.fn(candidate, target, **context)


def corr_mse(candidate: Tensor, target: Tensor, **_: Any) -> Tensor:
    """The seed's objective: mean squared error between correction vectors (hidden space)."""
    return (candidate - target).pow(2).mean()


OBJECTIVES: dict[str, CalibrationObjective] = {
    "corr_mse": CalibrationObjective(
        "corr_mse", corr_mse, description="MSE between candidate and anchor corrections (hidden space)"
    ),
}


def get_objective(name: str) -> CalibrationObjective:
    """Look up an objective by name; unknown names list the known ones."""
    if name not in OBJECTIVES:
        raise ValueError(f"unknown calibration objective {name!r}; known objectives: {', '.join(sorted(OBJECTIVES))}.")
    return OBJECTIVES[name]
