"""A time budget (`--max-minutes`) that plans the learning-rate decay to end at the budget."""

from __future__ import annotations

import logging
from contextlib import contextmanager
from dataclasses import replace
from time import monotonic as clock

from . import distributed as dist
from .session import Session
from .state import TrainState

log = logging.getLogger("showtell")


# --- a time budget -------------------------------------------------------------------------------------
PLAN_AFTER_STEPS = 20


class BudgetPlanner:
    """Fits the cross-entropy schedule to `--max-minutes` (budgeted training, Li et al., ICLR 2020:
    a decay that reaches zero at the budget beats a longer schedule cut off by it). After the first
    steps it measures the time per step, and after each validation the time a validation takes,
    and moves the planned last step (`state.planned_end`, where the decay reaches zero and a last
    validation runs) so that training ends at the budget. The plan is part of the checkpoint: a
    resumed run keeps it. Rank 0's clock decides for every rank."""

    def __init__(self, deadline: float | None, s: Session, state: TrainState):
        t = s.config.train
        self.deadline = deadline
        self.enabled = (deadline is not None and t.budget_schedule and t.scst_epochs == 0 and state.phase == "xe"
                        and state.planned_end is None)
        self.started: float | None = None
        self.steps, self.validation_seconds, self.validations = 0, 0.0, 0

    def after_step(self, s: Session, state: TrainState) -> None:
        if not self.enabled:
            return
        if self.started is None:       # the first step pays for one-off costs: measure from its end
            self.started = clock()
            return
        self.steps += 1
        if state.planned_end is None and self.steps >= min(PLAN_AFTER_STEPS, s.steps_per_epoch):
            self.plan(s, state)

    @contextmanager
    def timing_validation(self, s: Session, state: TrainState):
        """Around a validation: its duration goes into the plan."""
        started = clock()
        yield
        self.after_validation(clock() - started, s, state)

    def after_validation(self, seconds: float, s: Session, state: TrainState) -> None:
        if self.enabled and self.started is not None:
            self.validation_seconds += dist.all_reduce_sum(seconds if dist.is_main() else 0.0, s.device)
            self.validations += 1
            if state.planned_end is not None and not state.finished:
                self.plan(s, state)

    def plan(self, s: Session, state: TrainState) -> None:
        now = clock()
        step_seconds = max(now - self.started - self.validation_seconds, 1e-9) / max(self.steps, 1)
        validation = self.validation_seconds / max(self.validations, 1)
        remaining = self.deadline - now - validation              # the last validation must fit too
        steps = int(max(remaining, 0.0) / (step_seconds + validation / s.steps_per_epoch))
        end = min(s.config.train.epochs * s.steps_per_epoch, state.global_step + max(1, steps))
        end = int(dist.all_reduce_sum(end if dist.is_main() else 0, s.device))
        if end == state.planned_end:
            return
        plan = state.plan
        if end < 2 * (plan.warmup_from + plan.warmup_steps):     # a budget shorter than the warm-up
            plan = replace(plan, warmup_steps=min(plan.warmup_steps, max(1, end // 5)))
        state.plan, state.planned_end = plan.replanned(state.global_step, end), end
        log.debug("time budget: %.2f s a step, %.1f s a validation; the decay now ends at step %d",
                  step_seconds, validation, end)
