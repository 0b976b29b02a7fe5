"""Learning-rate schedules: the release's four-phase calibration schedule, scaled to any budget."""

from __future__ import annotations

from dataclasses import dataclass

# The release's calibration: 16,000 steps, 400 warm-up, LR 5e-3 / 5e-4 / 5e-5 / 5e-6 for
# 4000 / 3000 / 3000 / 6000 steps.
RELEASE_PHASE_STEPS = (4000, 3000, 3000, 6000)
RELEASE_PHASE_LRS = (5e-3, 5e-4, 5e-5, 5e-6)
RELEASE_WARMUP_STEPS = 400


@dataclass(frozen=True)
class PhaseSchedule:
    """Piecewise-constant LR phases with a linear warm-up at the start of the first phase."""

    phase_steps: tuple[int, ...]
    phase_lrs: tuple[float, ...]
    warmup_steps: int = 0

    def __post_init__(self) -> None:
        if len(self.phase_steps) != len(self.phase_lrs) or not self.phase_steps:
            raise ValueError("phase_steps and phase_lrs need the same, non-zero number of entries.")
        if any(s < 0 for s in self.phase_steps) or self.total_steps < 1:
            raise ValueError(f"phase steps must be non-negative and sum to at least 1, got {self.phase_steps}.")

    @property
    def total_steps(self) -> int:
        return sum(self.phase_steps)

    @classmethod
    def release_calibration(cls, total_steps: int, peak_lr: float = RELEASE_PHASE_LRS[0]) -> PhaseSchedule:
        """The release's schedule shape (phase fractions, LR ratios, warm-up fraction) at ``total_steps``."""
        if total_steps < len(RELEASE_PHASE_STEPS):
            raise ValueError(
                f"calibration needs at least {len(RELEASE_PHASE_STEPS)} steps for its four phases, got {total_steps}."
            )
        release_total = sum(RELEASE_PHASE_STEPS)
        steps = [round(total_steps * s / release_total) for s in RELEASE_PHASE_STEPS[:-1]]
        steps.append(total_steps - sum(steps))
        lrs = tuple(peak_lr * lr / RELEASE_PHASE_LRS[0] for lr in RELEASE_PHASE_LRS)
        warmup = round(total_steps * RELEASE_WARMUP_STEPS / release_total)
        return cls(tuple(steps), lrs, warmup)

    @classmethod
    def constant(cls, steps: int, lr: float, warmup_steps: int = 0) -> PhaseSchedule:
        return cls((steps,), (lr,), warmup_steps)

    def lr(self, step: int) -> float:
        """Learning rate at 0-based ``step``."""
        if step < self.warmup_steps:
            return self.phase_lrs[0] * (step + 1) / self.warmup_steps
        boundary = 0
        for steps, lr in zip(self.phase_steps, self.phase_lrs):
            boundary += steps
            if step < boundary:
                return lr
        return self.phase_lrs[-1]

    def phase(self, step: int) -> int:
        """1-based phase number of ``step`` (for logs and curves)."""
        boundary = 0
        for number, steps in enumerate(self.phase_steps, start=1):
            boundary += steps
            if step < boundary:
                return number
        return len(self.phase_steps)
