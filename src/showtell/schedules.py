"""Schedules over training steps: the learning rate, and the scheduled-sampling probability."""

from __future__ import annotations

import math

from .errors import ConfigError


def lr_factor(step: int, total_steps: int, warmup_steps: int, kind: str) -> float:
    """Multiplier of the base learning rate: linear warm-up, then constant or cosine to zero."""
    if warmup_steps and step < warmup_steps:
        return (step + 1) / warmup_steps
    if kind == "constant" or total_steps <= warmup_steps:
        return 1.0
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def parse_scheduled_sampling(spec: str) -> tuple[float, float]:
    """'linear:MAX:EPOCHS' -> (MAX, EPOCHS): the probability of feeding the model's own word rises
    linearly from 0 to MAX over EPOCHS epochs (Bengio et al. 2015 use such ramps)."""
    parts = spec.split(":")
    try:
        if len(parts) != 3 or parts[0] != "linear":
            raise ValueError
        top, epochs = float(parts[1]), float(parts[2])
        if not (0.0 <= top <= 1.0) or epochs <= 0:
            raise ValueError
    except ValueError:
        raise ConfigError(f"train.scheduled_sampling: expected 'linear:MAX:EPOCHS' with 0 <= MAX <= 1 and "
                          f"EPOCHS > 0, e.g. 'linear:0.25:10', got {spec!r}") from None
    return top, epochs


def sampling_probability(spec: str, epoch_progress: float) -> float:
    """Probability of using the model's prediction at fractional epoch `epoch_progress`."""
    if not spec:
        return 0.0
    top, epochs = parse_scheduled_sampling(spec)
    return top * min(1.0, epoch_progress / epochs)
