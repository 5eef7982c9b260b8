"""The training loop: epochs of batches through the current phase, checkpoints, stops.

`fit` is the loop; each step asks the phase for a loss and `optimise` for the update, each
epoch ends in epochs.end_epoch (validation, best model), the budget planner may move the planned
end, and a signal or the time budget stops it after a checkpoint."""

from __future__ import annotations

import logging
import math
import signal
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from ..data.batching import epoch_batches, make_loader
from ..device import check_threads
from ..errors import ShowtellError, Stopped
from ..progress import progress_bar
from . import budget
from . import distributed as dist
from .epochs import end_epoch, ensure_model
from .phases import encoder_should_train, make_phase, next_phase, optimise, start_finetuning
from .session import Session
from .state import TrainState, save_checkpoint
from .tensorboard import open_log

log = logging.getLogger("showtell")


@contextmanager
def stop_signals():
    """SIGINT and SIGTERM (cluster schedulers stop jobs with it) ask the loop to stop after the
    current step, save a checkpoint and exit; `requested` holds the signal."""
    requested: list[int] = []
    handlers = {}
    try:
        for signum in (signal.SIGINT, signal.SIGTERM):
            handlers[signum] = signal.signal(signum, lambda number, frame: requested.append(number))
    except ValueError:            # not the main thread: leave signals alone
        pass
    try:
        yield requested
    finally:
        for signum, handler in handlers.items():
            signal.signal(signum, handler)


@contextmanager
def closing_log(board):
    """Close the TensorBoard writer however training ends (its last events reach the disk)."""
    try:
        yield board
    finally:
        if board:
            board.close()


def should_stop(deadline: float | None, requested: list[int], device: torch.device) -> bool:
    """Every rank must stop at the same step: rank 0's clock, and any rank's signal, decide for all."""
    late = deadline is not None and dist.is_main() and budget.clock() > deadline
    return dist.all_reduce_sum(float(late or bool(requested)), device) > 0


@dataclass
class Loop:
    """What one `fit` call steps with, besides the session and the TrainState."""
    phase: object                        # the current row of phases.PHASES
    optimizer: torch.optim.Optimizer
    planner: budget.BudgetPlanner
    requested: list[int]                 # signals received
    board: object | None = None          # the TensorBoard writer, if any
    stopped: bool = False                # by the time budget or a signal


def fit(s: Session, state: TrainState, optimizer: torch.optim.Optimizer, max_minutes: float | None) -> dict:
    """Train from `state` until the planned epochs are done, the budget's plan ends or a stop."""
    phase = make_phase(s, state.phase)
    planner = budget.BudgetPlanner(budget.clock() + 60 * max_minutes if max_minutes else None, s, state, phase)
    if state.global_step == 0:
        save_checkpoint(s, state, optimizer)  # so that --resume works even after a kill in the very first steps
    with stop_signals() as requested, closing_log(open_log(s.config, s.run, state.global_step, dist.is_main())) as board:
        loop = Loop(phase, optimizer, planner, requested, board)
        while state.epoch < s.total_epochs and not loop.stopped and not state.finished:
            s = begin_epoch(s, state, loop)
            complete = train_epoch(s, state, loop)
            if complete or state.finished:   # any other stop validates nothing: the epoch continues on --resume
                with planner.timing_validation(s, state):
                    record = end_epoch(s, state, loop.phase, loop.optimizer.param_groups[0]["lr"])
                if board and record:
                    board.epoch(record)
            dist.barrier()
            save_checkpoint(s, state, loop.optimizer)
    ensure_model(s, state)
    return summarise(s, state, loop)


def begin_epoch(s: Session, state: TrainState, loop: Loop) -> Session:
    """The changes of phase due at this epoch: the next phase of the table (self-critical training
    after the cross-entropy epochs), an encoder unfrozen for fine-tuning."""
    following = next_phase(s, loop.phase) if state.epoch >= loop.phase.last_epoch(s.config) else None
    if following is not None:
        following.begin(s, state)
        loop.phase, loop.optimizer = following, following.optimizer(s)
        save_checkpoint(s, state, loop.optimizer)  # the change of phase is part of the resumable state
    if encoder_should_train(s.config, state.epoch) and s.model.encoder.frozen:
        s = start_finetuning(s, state)
    return s


def train_epoch(s: Session, state: TrainState, loop: Loop) -> bool:
    """The rest of the current epoch's batches, one update each; True when the epoch is complete."""
    t = s.config.train
    batches = epoch_batches(len(s.train.records), t.batch_size, t.seed, state.epoch)
    loader = make_loader(s.train.images, [dist.shard(b) for b in batches[state.step_in_epoch:]],
                         s.config.data.num_workers, pin_memory=s.device.type == "cuda")
    label = f"epoch {state.epoch + 1}/{s.total_epochs}" + loop.phase.label
    bar = progress_bar(total=len(batches), initial=state.step_in_epoch, desc=label, unit="batch",
                       disable=not s.show_progress or not dist.is_main())
    started, seen = budget.clock(), 0
    with bar:
        for ids, batch, bad in loader:
            seen += train_step(s, state, loop, ids, batch, bad)
            bar.update(1)
            last = f"{state.epoch_values[-1]:.3f}" if state.epoch_values else "-"
            bar.set_postfix({loop.phase.value_name: last, "img_s": f"{seen / max(budget.clock() - started, 1e-9):.0f}"},
                            refresh=False)
            loop.planner.after_step(s, state)
            if state.global_step % t.checkpoint_every == 0:
                save_checkpoint(s, state, loop.optimizer)
            if state.finished:   # the budget's plan is done: validate now, even mid-epoch
                break
            if should_stop(loop.planner.deadline, loop.requested, s.device):
                loop.stopped = True
                break
    return state.step_in_epoch >= len(batches)


def train_step(s: Session, state: TrainState, loop: Loop, ids, batch, bad) -> int:
    """One batch: its unreadable pictures noted, one update; returns the pictures trained on (all ranks)."""
    for index, message in bad:
        if index not in state.skipped:
            state.skipped[index] = message
            log.warning("skipping %s", message)
    trained = 0
    if batch is not None and len(ids):
        s.model.train()
        loss, value = loop.phase.loss(s, ids, batch, state)
        check_finite(s, state, loop.phase, loss, value)
        optimise(s, loop.optimizer, loss, state.plan.factor(state.global_step), loop.phase.through_ddp)
        state.epoch_values.append(value)
        if loop.board:
            loop.board.update(state.global_step, value, loop.optimizer.param_groups[0]["lr"])
        trained = len(ids) * dist.world_size()
    state.step_in_epoch += 1
    state.global_step += 1
    check_threads()
    return trained


def check_finite(s: Session, state: TrainState, phase, loss: torch.Tensor, value: float) -> None:
    """Stop before an update with a NaN or infinite loss (or reward): it would make every weight NaN,
    and the epoch's mean of NaN would then be compared as a score. Every rank stops at the same step."""
    bad = not math.isfinite(value) or not bool(torch.isfinite(loss.detach()).all())
    if dist.all_reduce_sum(float(bad), s.device) > 0:
        own = value if not math.isfinite(value) else float(loss.detach().float().sum())
        shown = f"{own:g}" if not math.isfinite(own) else "in another process"
        raise ShowtellError(
            f"the {phase.what} is not finite ({shown}) at step {state.global_step + 1} (epoch {state.epoch + 1}); "
            f"stopped before updating, so the weights, the checkpoints and the best model are the last finite ones; "
            f"lower train.lr (now {s.config.train.lr:g}), keep train.grad_clip on, or check model.word_embeddings")


def summarise(s: Session, state: TrainState, loop: Loop) -> dict:
    """How training ended, said once on rank 0; a signal ends in `Stopped` (its exit status)."""
    t = s.config.train
    if loop.requested:
        name = signal.Signals(loop.requested[0]).name
        raise Stopped(loop.requested[0], f"stopped by {name} at step {state.global_step}; checkpoint saved "
                                         f"(continue with --resume {s.run.path if s.run else 'RUN'})")
    if state.planned_end is not None and dist.is_main():
        log.info("time budget: the learning-rate decay was planned to end at step %d of %d (train.epochs=%d); "
                 "%d steps done", state.planned_end, t.epochs * s.steps_per_epoch, t.epochs, state.global_step)
    if state.best_epoch is None and s.run is not None and dist.is_main():
        share = 100.0 * state.global_step / max(1, s.steps_per_epoch)
        log.warning("the model was never validated: training stopped after %d steps (%.0f%% of one epoch), before "
                    "its first validation, so %s/model.safetensors holds its last weights, which may caption every "
                    "picture alike; train longer (--max-minutes, train.epochs) or continue with showtell train "
                    "--resume %s", state.global_step, share, s.run.path, s.run.path)
    elif loop.stopped and dist.is_main():
        log.info("stopped at the time budget after %d steps; the best checkpoint is kept", state.global_step)
    if state.skipped and dist.is_main():
        log.warning("%d unreadable images were skipped during training (first: %s)",
                    len(state.skipped), next(iter(state.skipped.values())))
    return {"epochs": state.epoch, "steps": state.global_step, "best_epoch": state.best_epoch,
            "best_score": state.best_score, "best_metric": state.best_metric, "stopped_early": loop.stopped,
            "planned_steps": state.planned_end, "skipped_images": len(state.skipped)}
