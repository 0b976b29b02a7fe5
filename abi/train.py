"""The two training stages of an ABI module, both on cached tap features.

* Domain stage: cross-entropy of ``head(final + correction)`` on the domain corpus; the
  gradient flows through the frozen head into the module only.
* Calibration stage: match a reference module's corrections (corrMSE by default, or another
  objective from :mod:`abi.objectives`) with the release's four-phase schedule, gradient clipping
  and the best 50-step rolling-mean checkpoint restored at the end. corrMSE lives in hidden
  space, so it needs neither the backbone nor its head once the targets are cached.
"""

from __future__ import annotations

import copy
import math
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from abi.backbones import Backbone
from abi.features import IGNORE_INDEX, FeatureSet
from abi.module import ABIModule
from abi.objectives import CalibrationObjective, get_objective
from abi.progress import tqdm
from abi.schedule import PhaseSchedule


class TrainingDivergedError(RuntimeError):
    """Raised when a loss becomes NaN or infinite; nothing is written after it."""


@dataclass
class TrainLog:
    """Per-step losses and learning rates of one stage, plus the restored checkpoint's step."""

    losses: list[float] = field(default_factory=list)
    lrs: list[float] = field(default_factory=list)
    best_step: int | None = None
    best_rolling_loss: float | None = None
    evaluations: list[dict] = field(default_factory=list)
    best_val_loss: float | None = None

    def to_dict(self) -> dict:
        return {
            "losses": self.losses,
            "lrs": self.lrs,
            "best_step": self.best_step,
            "best_rolling_loss": self.best_rolling_loss,
            "evaluations": self.evaluations,
            **({"best_val_loss": self.best_val_loss} if self.best_val_loss is not None else {}),
        }


def _sample_windows(generator: torch.Generator, n_windows: int, batch_windows: int) -> Tensor:
    return torch.randint(0, n_windows, (batch_windows,), generator=generator)


def _check_finite(loss: Tensor, stage: str, step: int) -> None:
    if not torch.isfinite(loss):
        raise TrainingDivergedError(
            f"{stage}: loss became {loss.item()} at step {step}; lower the learning rate or enable gradient clipping."
        )


def module_logits(
    backbone: Backbone, module: nn.Module | None, taps: Tensor, final: Tensor, head_dtype: torch.dtype | None = None
) -> Tensor:
    """Logits of backbone + module (``module=None``: the bare backbone); ``head_dtype``: see
    :meth:`abi.backbones.Backbone.head` (training signals only)."""
    return backbone.logits(final, None if module is None else module(taps), dtype=head_dtype)


def domain_loss(
    backbone: Backbone,
    module: ABIModule,
    taps: Tensor,
    final: Tensor,
    labels: Tensor,
    head_dtype: torch.dtype | None = None,
) -> Tensor:
    """Next-token cross-entropy of backbone + module on domain text."""
    logits = module_logits(backbone, module, taps, final, head_dtype)
    return nn.functional.cross_entropy(logits.flatten(0, -2), labels.flatten(), ignore_index=IGNORE_INDEX)


@dataclass(frozen=True)
class PlateauRule:
    """Stop the domain stage when validation loss plateaus: evaluate every ``every`` steps, stop after
    ``patience`` evaluations without an improvement of more than ``min_delta`` (relative), and
    restore the best evaluated state. Recorded in every result file with the step it stopped at."""

    every: int = 50
    patience: int = 3
    min_delta: float = 0.002

    def __post_init__(self) -> None:
        if self.every < 1 or self.patience < 1 or not self.min_delta >= 0:
            raise ValueError(f"PlateauRule needs every >= 1, patience >= 1, min_delta >= 0; got {self}.")

    def to_dict(self) -> dict:
        return {
            "every": self.every,
            "patience": self.patience,
            "min_delta": self.min_delta,
            "rule": "stop after `patience` validation evaluations without a relative improvement above "
            "`min_delta`; restore the best evaluated state",
        }


@torch.no_grad()
def mean_domain_loss(
    backbone: Backbone,
    module: nn.Module | None,
    features: FeatureSet,
    batch_windows: int = 8,
    head_dtype: torch.dtype | None = None,
) -> float:
    """Token-mean cross-entropy of backbone + module over every window of ``features``."""
    total, count = 0.0, 0
    for _, taps, final, labels in features.iter_batches(batch_windows):
        logits = module_logits(backbone, module, taps, final, head_dtype)
        losses = nn.functional.cross_entropy(
            logits.flatten(0, -2), labels.flatten(), ignore_index=IGNORE_INDEX, reduction="sum"
        )
        total += float(losses)
        count += int((labels != IGNORE_INDEX).sum())
    return total / max(count, 1)


def train_domain_stage(
    module: ABIModule,
    backbone: Backbone,
    features: FeatureSet,
    steps: int,
    lr: float = 3e-4,
    weight_decay: float = 0.01,
    batch_windows: int = 2,
    seed: int = 0,
    grad_clip: float | None = 1.0,
    desc: str = "domain stage",
    head_dtype: torch.dtype | None = None,
    validation: FeatureSet | None = None,
    plateau: PlateauRule | None = None,
) -> TrainLog:
    """Teach the module the domain: AdamW on cross-entropy (release: LR 3e-4, wd 0.01, batch 2).

    ``steps`` is the most steps; with ``validation`` and ``plateau`` the stage stops early when the
    validation loss plateaus and the best evaluated state is restored (``log.best_step``).
    ``head_dtype=torch.bfloat16`` runs the frozen vocabulary projection in bf16 (about 5x faster
    on CPUs with bf16 instructions; the module's own weights and gradients stay float32).
    """
    if steps < 1:
        raise ValueError(f"the domain stage needs at least 1 step, got {steps}.")
    if (validation is None) != (plateau is None):
        raise ValueError("the plateau rule needs validation features, and validation features need a rule.")
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.AdamW(module.parameters(), lr=lr, weight_decay=weight_decay)
    log = TrainLog()
    best_state, waited = None, 0

    def evaluate(step: int) -> bool:
        """Record the validation loss after ``step`` steps; True when the plateau rule says stop."""
        nonlocal best_state, waited
        module.eval()
        loss = mean_domain_loss(backbone, module, validation)  # float32, whatever the training head
        module.train()
        log.evaluations.append({"step": step, "val_loss": loss})
        if log.best_val_loss is None or loss < log.best_val_loss * (1 - plateau.min_delta):
            log.best_val_loss, log.best_step, waited = loss, step, 0
            best_state = copy.deepcopy(module.state_dict())
            return False
        waited += 1
        return waited >= plateau.patience

    module.train()
    if plateau:
        evaluate(0)
    for step in tqdm(range(steps), desc=desc, unit="step"):
        taps, final, labels = features.batch(_sample_windows(generator, len(features), batch_windows))
        loss = domain_loss(backbone, module, taps, final, labels, head_dtype)
        _check_finite(loss, desc, step)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if grad_clip:
            nn.utils.clip_grad_norm_(module.parameters(), grad_clip)
        optimizer.step()
        log.losses.append(loss.item())
        log.lrs.append(lr)
        done = step + 1
        if plateau and (done % plateau.every == 0 or done == steps) and evaluate(done):
            break
    if best_state is not None:
        module.load_state_dict(best_state)
    module.eval()
    return log


@torch.no_grad()
def module_corrections(module: ABIModule, features: FeatureSet, batch_windows: int = 16) -> Tensor:
    """Corrections of a (frozen) module for every cached window: the calibration targets."""
    module.eval()
    return torch.cat([module(taps) for _, taps, _, _ in features.iter_batches(batch_windows)])


def calibrate(
    module: ABIModule,
    features: FeatureSet,
    target_corrections: Tensor,
    schedule: PhaseSchedule,
    objective: str | CalibrationObjective = "corr_mse",
    batch_windows: int = 8,
    seed: int = 0,
    grad_clip: float = 1.0,
    weight_decay: float = 0.0,
    rolling_window: int = 50,
    backbone: Backbone | None = None,
    on_step: Callable[[int, ABIModule], dict | None] | None = None,
    eval_every: int = 0,
    parameters: list[nn.Parameter] | None = None,
    desc: str = "calibration",
) -> TrainLog:
    """Calibrate ``module`` to a reference module's corrections on the same cached windows.

    ``target_corrections`` is ``[N, T, d]`` aligned with ``features``. ``parameters`` restricts
    what is trained (e.g. only proj_in/proj_out in a migration). The state with the best
    ``rolling_window``-step mean loss is restored at the end, as in the release. ``on_step`` is
    called every ``eval_every`` steps (and after the last) for calibration curves.
    """
    if target_corrections.shape[0] != len(features):
        raise ValueError(
            f"{target_corrections.shape[0]} target corrections for {len(features)} feature windows; "
            "compute the targets on the same feature set."
        )
    objective = get_objective(objective) if isinstance(objective, str) else objective
    if objective.needs_head and backbone is None:
        raise ValueError(f"objective {objective.name!r} works on logits: pass the backbone for its head.")
    trainable = parameters if parameters is not None else [p for p in module.parameters()]
    optimizer = torch.optim.AdamW(trainable, lr=schedule.lr(0), weight_decay=weight_decay)
    generator = torch.Generator().manual_seed(seed)
    log, recent, best_state = TrainLog(), deque(maxlen=rolling_window), None
    module.train()
    for step in tqdm(range(schedule.total_steps), desc=desc, unit="step"):
        lr = schedule.lr(step)
        for group in optimizer.param_groups:
            group["lr"] = lr
        index = _sample_windows(generator, len(features), batch_windows)
        taps, final, _ = features.batch(index)
        loss = objective(
            module(taps),
            target_corrections[index],
            final=final,
            backbone=backbone,
            step=step,
            total_steps=schedule.total_steps,
        )
        _check_finite(loss, desc, step)
        log.losses.append(loss.item())
        log.lrs.append(lr)
        recent.append(loss.item())
        rolling = sum(recent) / len(recent)
        window_ready = len(recent) == recent.maxlen or step == schedule.total_steps - 1
        if window_ready and (log.best_rolling_loss is None or rolling < log.best_rolling_loss):
            # Snapshot before this step's update: the window's losses were measured on this state.
            log.best_rolling_loss, log.best_step = rolling, step
            best_state = copy.deepcopy(module.state_dict())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(trainable, grad_clip)
        optimizer.step()
        if on_step and eval_every and (step % eval_every == 0 or step == schedule.total_steps - 1):
            module.eval()
            record = on_step(step, module) or {}
            log.evaluations.append({"step": step, "rolling_loss": rolling, **record})
            module.train()
    if best_state is not None:
        module.load_state_dict(best_state)
    module.eval()
    if log.best_rolling_loss is not None and math.isnan(log.best_rolling_loss):
        raise TrainingDivergedError(f"{desc}: the best rolling loss is NaN; nothing usable was trained.")
    return log
