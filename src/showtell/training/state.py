"""Where training stands (`TrainState`) and the resumable checkpoint that holds it with the
weights, the optimiser and every random-number generator's state."""

from __future__ import annotations

import logging
import math
import random
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from . import distributed as dist
from .schedules import Plan
from .session import Session

log = logging.getLogger("showtell")


@dataclass
class TrainState:
    """Where training stands: everything a checkpoint holds besides weights, optimiser and RNGs."""
    plan: Plan
    epoch: int = 0                  # completed epochs
    step_in_epoch: int = 0
    global_step: int = 0
    phase: str = "xe"               # "xe" (cross-entropy) or "scst" (self-critical)
    best_metric: str = ""           # what best_score measures; another measure starts a new comparison
    best_score: float = -math.inf   # higher is better
    best_epoch: int | None = None
    epoch_values: list[float] = field(default_factory=list)  # this epoch's step losses (or rewards) so far
    skipped: dict[int, str] = field(default_factory=dict)
    history_length: int = 0         # history.jsonl lines that belong to this state
    planned_end: int | None = None  # a time budget's planned last step (the decay ends there)

    @property
    def finished(self) -> bool:
        """The time budget's plan has been carried out."""
        return self.planned_end is not None and self.global_step >= self.planned_end

    def to_dict(self) -> dict:
        return {**asdict(self), "plan": self.plan.to_dict()}

    @classmethod
    def from_dict(cls, saved: dict) -> "TrainState":
        state = cls(**{**saved, "plan": Plan(**saved["plan"])})
        state.skipped = {int(k): v for k, v in state.skipped.items()}
        return state


def rng_state() -> dict:
    return {"torch": torch.get_rng_state(), "python": list(random.getstate()[1]),
            "numpy": torch.from_numpy(np.random.get_state()[1].astype(np.int64)),
            "numpy_pos": int(np.random.get_state()[2]),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}


def set_rng_state(saved: dict) -> None:
    torch.set_rng_state(saved["torch"])
    random.setstate((3, tuple(int(x) for x in saved["python"]), None))
    np.random.set_state(("MT19937", saved["numpy"].numpy().astype(np.uint32), int(saved["numpy_pos"]), 0, 0.0))
    if saved["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(saved["cuda"])


def save_checkpoint(s: Session, state: TrainState, optimizer: torch.optim.Optimizer) -> None:
    if s.run is not None and dist.is_main():
        s.run.save_checkpoint(state.global_step, s.model, {"train_state": state.to_dict(), "rng": rng_state(),
                                                           "optimizer": optimizer.state_dict(),
                                                           **({"scaler": s.scaler.state_dict()} if s.scaler else {})},
                              s.config.train.keep_checkpoints)
