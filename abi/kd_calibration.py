"""KD calibration: the last step of a migration (:mod:`abi.transfer`), and the release's recipe for it.

The target's native module is the teacher; ``0.9 * T^2 * KL(teacher_T || student_T) + 0.1 * CE``
at temperature ``T = 2`` through the target's frozen head, only the interface trainable; the frozen
part's hash is checked after. The teacher is read from its cached corrections, so calibrating
several students against one teacher runs the teacher once.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import Tensor, nn

from abi.backbones import Backbone
from abi.features import IGNORE_INDEX, FeatureSet
from abi.module import ABIModule, parameter_hash
from abi.progress import tqdm
from abi.schedule import PhaseSchedule
from abi.train import PlateauRule
from abi.transfer import MigrationError, frozen_parameters


def kd_loss(
    student_logits: Tensor,
    teacher_logits: Tensor,
    labels: Tensor,
    temperature: float = 2.0,
    kl_weight: float = 0.9,
    ce_weight: float = 0.1,
) -> tuple[Tensor, dict[str, float]]:
    """``kl_weight * T^2 * KL(teacher_T || student_T) + ce_weight * CE(student, next token)``.

    KL is the mean over positions of the divergence between the softmaxes at temperature ``T``
    (teacher first: the student is pulled towards the teacher's whole distribution); the ``T^2``
    factor keeps gradient sizes comparable across temperatures (Hinton et al.). CE is at
    temperature 1 over positions with a known next token (none known: 0). Logits ``[P, V]``.
    """
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(
            f"student {tuple(student_logits.shape)} and teacher {tuple(teacher_logits.shape)} logits "
            "differ in shape; both must be the target's logits."
        )
    if temperature <= 0:
        raise ValueError(f"temperature must be positive, got {temperature}.")
    student_log_probs = torch.log_softmax(student_logits.float() / temperature, dim=-1)
    teacher_log_probs = torch.log_softmax(teacher_logits.float().detach() / temperature, dim=-1)
    n_positions = teacher_log_probs[..., 0].numel()
    kl = nn.functional.kl_div(student_log_probs, teacher_log_probs, log_target=True, reduction="sum") / n_positions
    valid = labels != IGNORE_INDEX
    ce = (
        nn.functional.cross_entropy(student_logits.float()[valid], labels[valid])
        if valid.any()
        else student_logits.sum() * 0.0
    )
    loss = kl_weight * temperature**2 * kl + ce_weight * ce
    return loss, {"kl": float(kl.detach()), "ce": float(ce.detach())}


@dataclass(frozen=True)
class KDConfig:
    """KD calibration settings (the release: 1,200 steps, 0.9 KL at T=2 + 0.1 CE)."""

    steps: int
    lr: float = 1e-3
    positions: int = 32  # (window, position) pairs per step, drawn uniformly from the cached windows
    temperature: float = 2.0
    kl_weight: float = 0.9
    ce_weight: float = 0.1
    warmup_fraction: float = 0.1
    grad_clip: float = 1.0
    weight_decay: float = 0.0
    head_dtype: str = "float32"  # "bfloat16": the frozen head's product in bf16 (training signal only)
    train: Literal["interface", "all"] = "interface"

    def __post_init__(self) -> None:
        if isinstance(self.steps, bool) or not isinstance(self.steps, int) or self.steps < 1:
            raise ValueError(
                f"a KD calibration needs at least 1 step, got {self.steps!r}; the 0-step arm "
                "(Procrustes only) is the migrated module without calling kd_calibrate."
            )
        if self.positions < 1 or self.lr <= 0 or self.temperature <= 0:
            raise ValueError("KD needs positions >= 1, lr > 0 and temperature > 0.")
        if self.train not in ("interface", "all"):
            raise ValueError(f"train must be 'interface' or 'all', got {self.train!r}.")
        head_precision(self.head_dtype)


def head_precision(name: str) -> torch.dtype | None:
    """``"float32"`` -> None (the model's own head), ``"bfloat16"`` -> ``torch.bfloat16``."""
    if name not in ("float32", "bfloat16"):
        raise ValueError(f"head_dtype must be 'float32' or 'bfloat16', got {name!r}.")
    return None if name == "float32" else torch.bfloat16


@dataclass
class KDLog:
    """Per-step total loss, KL and CE parts, learning rates, and the frozen part's hashes."""

    losses: list[float] = field(default_factory=list)
    kl: list[float] = field(default_factory=list)
    ce: list[float] = field(default_factory=list)
    lrs: list[float] = field(default_factory=list)
    trained: str = "interface"
    frozen_hash_before: str = ""
    frozen_hash_after: str = ""
    evaluations: list[dict[str, float]] = field(default_factory=list)  # {"step", "val_loss", "val_kl"}
    best_step: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "losses": self.losses,
            "evaluations": self.evaluations,
            "best_step": self.best_step,
            "steps_run": len(self.losses),
            "kl": self.kl,
            "ce": self.ce,
            "lrs": self.lrs,
            "trained": self.trained,
            "frozen_hash_before": self.frozen_hash_before,
            "frozen_hash_after": self.frozen_hash_after,
            "frozen_unchanged": self.frozen_hash_before == self.frozen_hash_after,
        }


@contextmanager
def _no_grad_for(parameters: list[nn.Parameter]) -> Iterator[None]:
    """Switch gradients off for ``parameters`` (none is even computed), restoring the flags after."""
    flags = [p.requires_grad for p in parameters]
    for p in parameters:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in zip(parameters, flags):
            p.requires_grad_(flag)


@dataclass
class KDValidation:
    """Held-aside windows for the plateau rule: their cached features, the teacher's corrections on
    them, and the rule (evaluate every ``rule.every`` steps, stop after ``rule.patience`` evaluations
    without a relative improvement above ``rule.min_delta``, restore the state with the lowest validation
    loss: an improvement smaller than ``min_delta`` still counts for the state kept, as slow KD arms
    would otherwise be sent back to their start)."""

    features: FeatureSet
    teacher_corrections: Tensor
    rule: PlateauRule


@torch.no_grad()
def validation_loss(
    student: ABIModule, backbone: Backbone, validation: KDValidation, config: KDConfig, batch_windows: int = 4
) -> dict[str, float]:
    """KD loss (and its KL part) over every position of the validation windows, in the training
    head precision (it only decides when to stop; every reported number is scored in float32)."""
    dtype = head_precision(config.head_dtype)
    total, kl_total, count = 0.0, 0.0, 0
    for index, taps, final, labels in validation.features.iter_batches(batch_windows):
        teacher = backbone.logits(final, validation.teacher_corrections[index], dtype=dtype).flatten(0, -2)
        student_logits = backbone.logits(final, student(taps), dtype=dtype).flatten(0, -2)
        loss, parts = kd_loss(
            student_logits, teacher, labels.flatten(), config.temperature, config.kl_weight, config.ce_weight
        )
        n = teacher.shape[0]
        total, kl_total, count = total + float(loss) * n, kl_total + parts["kl"] * n, count + n
    return {"val_loss": total / count, "val_kl": kl_total / count}


def kd_calibrate(
    student: ABIModule,
    teacher_corrections: Tensor,
    backbone: Backbone,
    features: FeatureSet,
    config: KDConfig,
    seed: int = 0,
    desc: str = "KD calibration",
    validation: KDValidation | None = None,
) -> KDLog:
    """Distil the teacher (its cached corrections on ``features``) into ``student`` through the frozen head.

    Each step draws ``config.positions`` (window, position) pairs; the teacher's logits are
    ``head(final + teacher_correction)``, the student's ``head(final + student(taps))``. With
    ``train="interface"`` only proj_in/proj_out are updated and the hash of everything else is
    checked afterwards (a change raises); ``train="all"`` is the original code's variant.
    AdamW, linear warm-up then a constant rate, gradient clipping. With ``validation`` the run stops
    early when the validation KD loss plateaus (``config.steps`` is then the cap) and the best
    evaluated state is restored; the loss at step 0 is the first evaluation.
    """
    n_windows, seq_len = len(features), features.windows.seq_len
    if tuple(teacher_corrections.shape[:2]) != (n_windows, seq_len):
        raise ValueError(
            f"teacher corrections {tuple(teacher_corrections.shape)} do not cover the "
            f"{n_windows} x {seq_len} cached positions."
        )
    if teacher_corrections.shape[-1] != student.config.d_model:
        raise MigrationError(
            f"the student writes d_model={student.config.d_model} corrections, the teacher "
            f"{teacher_corrections.shape[-1]}; build the student for the target backbone."
        )
    dtype = head_precision(config.head_dtype)
    interface_only = config.train == "interface"
    trainable = student.interface_parameters() if interface_only else list(student.parameters())
    frozen = frozen_parameters(student)
    log = KDLog(trained=config.train, frozen_hash_before=parameter_hash(frozen))
    optimizer = torch.optim.AdamW(trainable, lr=config.lr, weight_decay=config.weight_decay)
    schedule = PhaseSchedule.constant(config.steps, config.lr, round(config.warmup_fraction * config.steps))
    generator = torch.Generator().manual_seed(seed)
    rows = torch.arange(config.positions)
    best_state, waited = None, 0

    def evaluate(step: int) -> bool:
        """Record the validation loss after ``step`` steps; True when the plateau rule says stop."""
        nonlocal best_state, waited
        student.eval()
        record = {"step": step, **validation_loss(student, backbone, validation, config)}
        student.train()
        best = min((e["val_loss"] for e in log.evaluations), default=None)
        log.evaluations.append(record)
        if best is None or record["val_loss"] < best:  # the state kept: the lowest validation loss seen
            log.best_step, best_state = step, copy.deepcopy(student.state_dict())
        # Patience counts only improvements that matter: a slow drift below min_delta is a plateau.
        waited = 0 if best is None or record["val_loss"] < best * (1 - validation.rule.min_delta) else waited + 1
        return waited >= validation.rule.patience

    student.train()
    with _no_grad_for(frozen if interface_only else []):
        if validation is not None:
            evaluate(0)
        for step in tqdm(range(config.steps), desc=desc, unit="step"):
            for group in optimizer.param_groups:
                group["lr"] = schedule.lr(step)
            windows = torch.randint(0, n_windows, (config.positions,), generator=generator)
            positions = torch.randint(0, seq_len, (config.positions,), generator=generator)
            taps, final, labels = features.batch(windows)
            taps, final, labels = taps[rows, positions], final[rows, positions], labels[rows, positions]
            with torch.no_grad():
                teacher_logits = backbone.logits(final, teacher_corrections[windows, positions], dtype=dtype)
            student_logits = backbone.logits(final, student(taps), dtype=dtype)
            loss, parts = kd_loss(
                student_logits, teacher_logits, labels, config.temperature, config.kl_weight, config.ce_weight
            )
            if not torch.isfinite(loss):
                raise FloatingPointError(f"{desc}: loss {loss.item()} at step {step}; lower kd_lr.")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(trainable, config.grad_clip)
            optimizer.step()
            log.losses.append(loss.item())
            log.kl.append(parts["kl"])
            log.ce.append(parts["ce"])
            log.lrs.append(schedule.lr(step))
            done = step + 1
            if validation is not None and (done % validation.rule.every == 0 or done == config.steps):
                if evaluate(done):
                    break
    if best_state is not None:
        student.load_state_dict(best_state)
    student.eval()
    log.frozen_hash_after = parameter_hash(frozen)
    if interface_only and log.frozen_hash_after != log.frozen_hash_before:
        raise MigrationError(f"{desc}: the frozen domain part changed during an interface-only calibration.")
    return log
