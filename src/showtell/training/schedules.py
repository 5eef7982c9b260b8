"""Schedules over training steps: the learning rate, and the scheduled-sampling probability."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace

from ..config import parse_scheduled_sampling


@dataclass
class Plan:
    """The learning-rate multiplier over training steps: linear warm-up over `warmup_steps` from
    step `warmup_from`, then constant or a cosine decay that reaches zero at `total_steps`.

    A plan changed mid-run (more epochs on --resume) continues from where the old one was: the
    decay then runs from `decay_from_step` at `decay_from_factor` down to zero at the new total,
    so the rate never jumps. A plan that had already ended restarts with a warm-up instead
    (training on at a rate of zero would change nothing)."""
    total_steps: int
    warmup_steps: int = 0
    kind: str = "cosine"
    warmup_from: int = 0
    decay_from_step: int = 0
    decay_from_factor: float = 1.0

    def factor(self, step: int) -> float:
        warm_end = self.warmup_from + self.warmup_steps
        if self.warmup_from <= step < warm_end:
            return (step - self.warmup_from + 1) / self.warmup_steps
        if self.kind == "constant":
            return 1.0
        start = max(self.decay_from_step, warm_end)
        if self.total_steps <= start:
            return 1.0 if self.decay_from_step == 0 else self.decay_from_factor
        progress = min(1.0, max(0.0, (step - start) / (self.total_steps - start)))
        return self.decay_from_factor * 0.5 * (1.0 + math.cos(math.pi * progress))

    def replanned(self, step: int, total_steps: int) -> "Plan":
        """The same schedule made to end at `total_steps`: continuous at `step`, or, if the old
        plan had ended by then, a new warm-up and decay from `step`."""
        if step >= self.total_steps and self.kind != "constant":
            return replace(self, total_steps=total_steps, warmup_from=step, decay_from_step=step, decay_from_factor=1.0)
        if step < self.warmup_from + self.warmup_steps:
            return replace(self, total_steps=total_steps)
        return replace(self, total_steps=total_steps, decay_from_step=step, decay_from_factor=self.factor(step))

    def to_dict(self) -> dict:
        return asdict(self)


def sampling_probability(spec: str, epoch_progress: float) -> float:
    """Probability of using the model's prediction at fractional epoch `epoch_progress`."""
    if not spec:
        return 0.0
    top, epochs = parse_scheduled_sampling(spec)
    return top * min(1.0, epoch_progress / epochs)
