"""A time budget (`--max-minutes`) that plans the learning-rate decay to end at the budget, and
re-plans as the machine slows down or speeds up."""

from __future__ import annotations

import logging
from collections import deque
from contextlib import contextmanager
from dataclasses import replace
from time import monotonic as clock

from . import distributed as dist
from .session import Session
from .state import TrainState

log = logging.getLogger("showtell")

PLAN_AFTER_STEPS = 20   # steps measured before the first plan
WINDOW = 20             # the plan reads the times of this many recent steps
REPLAN_EVERY = 10       # steps between re-plans
REPORT_CHANGE = 0.05    # a new plan is logged when it moves the end by more than this share of what was left


class BudgetPlanner:
    """Fits the cross-entropy schedule to `--max-minutes` (budgeted training, Li et al., ICLR 2020:
    a decay that reaches zero at the budget beats a longer schedule cut off by it). It times every
    step and every validation, and every REPLAN_EVERY steps (and after each validation) moves the
    planned last step (`state.planned_end`, where the decay reaches zero and a last validation
    runs) so that training ends at the budget at the rate of the last WINDOW steps: a machine that
    slows down mid-run (another job starts) still ends its decay and its last validation inside the
    budget, one that speeds up uses the time. A validation is costed in steps of the speed it ran
    at, so it slows down with the steps. The plan is part of the checkpoint: a resumed run keeps
    it. Only a phase that says it is `budgeted` (phases.PHASES) is planned. Rank 0's clock decides
    for every rank."""

    def __init__(self, deadline: float | None, s: Session, state: TrainState, phase):
        t = s.config.train
        self.deadline = deadline
        self.enabled = (deadline is not None and t.budget_schedule and t.scst_epochs == 0 and phase.budgeted
                        and state.planned_end is None)
        self.last: float | None = None              # when the last step (or validation) ended
        self.recent: deque[float] = deque(maxlen=WINDOW)
        self.steps = 0
        self.validation_steps: list[float] = []    # each validation's duration, in steps of its time
        self.planned_at: float | None = None        # the step time of the last plan

    def step_seconds(self) -> float:
        return sum(self.recent) / max(len(self.recent), 1)

    def after_step(self, s: Session, state: TrainState) -> None:
        if not self.enabled:
            return
        now = clock()
        if self.last is not None:       # the first step pays for one-off costs: measure from its end
            self.recent.append(now - self.last)
            self.steps += 1
        self.last = now
        if state.planned_end is None:
            if self.steps >= min(PLAN_AFTER_STEPS, s.steps_per_epoch):
                self.plan(s, state)
        elif self.steps % REPLAN_EVERY == 0 and not state.finished:
            self.plan(s, state)

    @contextmanager
    def timing_validation(self, s: Session, state: TrainState):
        """Around a validation: its duration goes into the plan."""
        started = clock()
        yield
        seconds = clock() - started
        if self.enabled and self.recent:
            seconds = dist.all_reduce_sum(seconds if dist.is_main() else 0.0, s.device)
            self.validation_steps.append(seconds / max(self.step_seconds(), 1e-9))
            self.last = clock()          # the next step's time starts after the validation
            if state.planned_end is not None and not state.finished:
                self.plan(s, state)

    def plan(self, s: Session, state: TrainState) -> None:
        now = clock()
        step = max(self.step_seconds(), 1e-9)
        validation = step * (sum(self.validation_steps) / len(self.validation_steps) if self.validation_steps else 0.0)
        remaining = self.deadline - now - validation              # the last validation must fit too
        steps = int(max(remaining, 0.0) / (step + validation / s.steps_per_epoch))
        end = min(s.config.train.epochs * s.steps_per_epoch, state.global_step + max(1, steps))
        end = int(dist.all_reduce_sum(end if dist.is_main() else 0, s.device))
        if end == state.planned_end:
            return
        before, before_step = state.planned_end, self.planned_at
        plan = state.plan
        if end < 2 * (plan.warmup_from + plan.warmup_steps):     # a budget shorter than the warm-up
            plan = replace(plan, warmup_steps=min(plan.warmup_steps, max(1, end // 5)))
        state.plan, state.planned_end, self.planned_at = plan.replanned(state.global_step, end), end, step
        if not dist.is_main():
            return
        if before is None:
            log.info("time budget: %.2f s a step, %.1f s a validation; the learning-rate decay is planned to end at "
                     "step %d", step, validation, end)
        elif abs(end - before) > REPORT_CHANGE * max(before - state.global_step, 1):
            log.info("time budget re-planned at step %d: a step now takes %.2f s (%.2f s at the last plan); the decay "
                     "now ends at step %d (was %d)", state.global_step, step, before_step, end, before)
