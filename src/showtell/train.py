"""Training: maximum likelihood with teacher forcing, validation by decoding, resumable checkpoints.

For each image the model sees the true previous words of its captions and learns to predict the
next one; the loss is the mean negative log-likelihood per word, exp(loss) the perplexity:

    loss = -1/N sum_t log p(S_t | I, S_<t)

Training runs in phases: cross-entropy (the encoder may be unfrozen after some epochs), then
optionally self-critical training (scst.py). A phase turns a batch into a loss; `optimise` is the
one place that steps. Each epoch ends with a validation pass that writes captions for the
validation images as evaluation does and scores them; the best score picks `model.safetensors`.
Every `checkpoint_every` steps, at each epoch's end and at each change of phase, a checkpoint
saves the weights, the optimiser, the `TrainState` and the RNGs, so `--resume` continues exactly
where the last checkpoint left off, with bitwise the same result as an uninterrupted run (on CPU).
"""

from __future__ import annotations

import logging
import math
import random
import shutil
import signal
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from time import monotonic as clock

import numpy as np
import torch

from . import distributed as dist
from .config import Config, apply, parse_overrides, resolve
from .data.batching import CaptionTable, ImageSet, choose_captions, epoch_batches, make_loader
from .data.formats import ImageRecord
from .distributed import cpu_has_native_bf16, resolve_device
from .errors import ConfigError, DataError, RunError, Stopped
from .evaluate import autocast, features_of, validation_scores
from .fileio import atomic_write_text
from .metrics import perplexity
from .modelcard import record_training, write_model_card
from .models.captioner import CaptionModel, build_model
from .progress import progress_bar
from .run import Run
from .schedules import Plan, sampling_probability
from .scst import SelfCritical
from .trainlog import check_available as check_log
from .trainlog import open_log
from .vocab import Vocabulary

log = logging.getLogger("showtell")

CACHE_LIMIT_BYTES = 2 << 30
COLLAPSE_FRACTION = 0.05   # fewer distinct validation captions than this share of pictures: warn


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2 ** 32))
    torch.manual_seed(seed)


# --- data ----------------------------------------------------------------------------------------
@dataclass
class SplitData:
    records: list[ImageRecord]
    images: ImageSet
    table: CaptionTable

    @property
    def references(self) -> list[list[str]]:
        return [r.captions for r in self.records]


def make_split(records: list[ImageRecord], model: CaptionModel, vocab: Vocabulary, config: Config,
               features=None, split: str = "train") -> SplitData:
    """Pictures (from files, memory or the feature cache) and encoded captions of one split."""
    if features is not None:
        images = features.split_set(records, split)
    else:
        images = ImageSet(records, model.transform, config.data.max_image_pixels)
        side = model.transform.crop
        want = config.data.cache_images
        if want == "yes" or (want == "auto" and len(records) * 3 * side * side <= CACHE_LIMIT_BYTES):
            images.keep_decoded()
    return SplitData(records, images, CaptionTable(records, vocab, config.data.max_caption_length))


def split_records(records: list[ImageRecord]) -> tuple[list[ImageRecord], list[ImageRecord]]:
    train = [r for r in records if r.split == "train"]
    val = [r for r in records if r.split == "val"]
    if not train:
        raise DataError("no training images: the data has no records in the 'train' split")
    return train, val


# --- what one process trains with, and what a checkpoint holds ------------------------------------
@dataclass
class Session:
    """What one process trains with. `run` is readable on every rank; only rank 0 writes to it."""
    config: Config
    run: Run | None
    model: CaptionModel
    vocab: Vocabulary
    train: SplitData
    val: SplitData | None
    device: torch.device
    features: object | None = None     # the feature cache, while the encoder stays frozen
    show_progress: bool = True
    ddp: torch.nn.Module | None = None
    scaler: torch.amp.GradScaler | None = None   # fp16: scales the loss so small gradients survive float16

    @property
    def steps_per_epoch(self) -> int:
        return math.ceil(len(self.train.records) / self.config.train.batch_size)   # epoch_batches keeps the last, short batch

    @property
    def total_epochs(self) -> int:
        return self.config.train.epochs + self.config.train.scst_epochs


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


# --- phases: each turns a batch into a loss ----------------------------------------------------------
class CrossEntropy:
    """Teacher forcing over `captions_per_image` captions of each picture; the whole step runs
    through DistributedDataParallel's forward."""

    name = "xe"
    through_ddp = True

    def loss(self, s: Session, ids: torch.Tensor, batch, state: TrainState) -> tuple[torch.Tensor, float]:
        t = s.config.train
        table = s.train.table
        rows = [r for i in ids.tolist()
                for r in table.rows_for(i, choose_captions(table.counts[i], t.captions_per_image, t.seed, state.epoch, i))]
        tokens = table.batch(rows).to(s.device)                              # (B*S, T+2)
        source = {"features": features_of(s.model, batch, s.device)} if isinstance(batch, dict) else \
            {"images": batch.to(s.device, non_blocking=True)}
        p = sampling_probability(t.scheduled_sampling, state.epoch + state.step_in_epoch / max(1, s.steps_per_epoch))
        with autocast(s.device, t.precision):
            out = (s.ddp or s.model)(tokens, repeats=t.captions_per_image, encoder_grad=not s.model.encoder.frozen,
                                     sampling_probability=p, **source)
        # mean over the words of the *global* batch, so N processes match one process exactly
        total_words = dist.all_reduce_sum(out.words, s.device)
        return out.loss * dist.world_size() / max(total_words, 1), float(out.loss.detach()) / max(out.words, 1)


class SelfCriticalPhase:
    """scst.SelfCritical on the session's pictures: encode each batch once, then its loss."""

    name = "scst"
    through_ddp = False

    def __init__(self, s: Session):
        references = [[" ".join(tokens) for tokens in r.tokens] for r in s.train.records]
        self.critic = SelfCritical(references, s.vocab, s.config)

    def loss(self, s: Session, ids: torch.Tensor, batch, state: TrainState) -> tuple[torch.Tensor, float]:
        with autocast(s.device, s.config.train.precision):
            features = features_of(s.model, batch, s.device)
            return self.critic.loss(s.model, features, ids, state.global_step, s.device)


def make_optimizer(s: Session, phase: str) -> torch.optim.Optimizer:
    """Adam with each group's base rate kept as `initial_lr`, which the plan's factor scales."""
    t, model = s.config.train, s.model
    if phase == "scst":
        groups = [{"params": [p for p in model.parameters() if p.requires_grad], "lr": t.scst_lr}]
    else:
        # a pretrained encoder, even frozen now, gets its own (small) rate for later fine-tuning
        pretrained = s.config.model.encoder_weights != "none"
        groups = [{"params": [p for p in model.decoder.parameters() if p.requires_grad], "lr": t.lr},
                  {"params": list(model.encoder.parameters()), "lr": t.encoder_lr if pretrained else t.lr}]
    for group in groups:
        group["initial_lr"] = group["lr"]
    return torch.optim.Adam(groups, weight_decay=t.weight_decay if phase == "xe" else 0.0)


def phase_plan(s: Session, phase: str) -> Plan:
    t = s.config.train
    if phase == "scst":
        return Plan(total_steps=s.steps_per_epoch * t.scst_epochs, kind="constant")
    return Plan(total_steps=s.steps_per_epoch * t.epochs, warmup_steps=t.warmup_steps, kind=t.lr_schedule)


def make_phase(s: Session, phase: str):
    return SelfCriticalPhase(s) if phase == "scst" else CrossEntropy()


def optimise(s: Session, optimizer: torch.optim.Optimizer, loss: torch.Tensor, factor: float, through_ddp: bool) -> None:
    """The one update step of every phase: backward, gradient averaging, clipping, Adam."""
    for group in optimizer.param_groups:
        group["lr"] = group["initial_lr"] * factor
    optimizer.zero_grad(set_to_none=True)
    if s.scaler is None:
        loss.backward()
    else:   # fp16: backward of the scaled loss, then true gradients for clipping; a step with inf/NaN is skipped
        s.scaler.scale(loss).backward()
    if not through_ddp:
        dist.average_gradients(s.model)
    if s.scaler is not None:
        s.scaler.unscale_(optimizer)
    if s.config.train.grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(s.model.parameters(), s.config.train.grad_clip)
    if s.scaler is None:
        optimizer.step()
    else:
        s.scaler.step(optimizer)
        s.scaler.update()


# --- changes of phase ---------------------------------------------------------------------------------
def start_finetuning(s: Session, state: TrainState) -> Session:
    """Unfreeze a pretrained encoder (train.finetune_encoder_after): from now on features come from
    the pictures, since cached ones no longer match the changing CNN."""
    log.info("fine-tuning the encoder from epoch %d (lr %g)", state.epoch + 1, s.config.train.encoder_lr)
    s.model.encoder.freeze(False)
    if s.features is not None:
        s = replace(s, features=None,
                    train=make_split(s.train.records, s.model, s.vocab, s.config, None, "train"),
                    val=make_split(s.val.records, s.model, s.vocab, s.config, None, "val")
                    if s.val is not None else None)
    return replace(s, ddp=dist.wrap(s.model, s.device) if s.ddp is not None else None)  # DDP fixes its parameters


def start_self_critical(s: Session, state: TrainState) -> None:
    """Self-critical training starts, on every rank, from the best cross-entropy model (kept as
    model-xe.safetensors), with its own optimiser at a constant train.scst_lr."""
    log.info("self-critical training (CIDEr-D reward, greedy baseline) for %d epochs", s.config.train.scst_epochs)
    dist.barrier()                     # rank 0 has written its last cross-entropy model
    if s.run is not None and s.run.has_model():
        s.model.load_state_dict(s.run.weights())
        if dist.is_main():
            shutil.copyfile(s.run.path / "model.safetensors", s.run.path / "model-xe.safetensors")
    state.phase, state.plan = "scst", phase_plan(s, "scst")


def encoder_should_train(config: Config, epoch: int) -> bool:
    return not config.model.freeze_encoder or 0 <= config.train.finetune_encoder_after <= epoch


# --- validation and the best model --------------------------------------------------------------------
def validate(s: Session, state: TrainState, train_value: float | None, lr: float) -> dict:
    """The epoch's record: training loss (or the self-critical phase's greedy CIDEr-D on the training
    batches) and, with a validation split, scores of decoded captions, decoded as `evaluate` does."""
    t, d = s.config.train, s.config.decode
    record = {"epoch": state.epoch, "step": state.global_step, "phase": state.phase, "lr": lr}
    if state.phase == "scst":
        record.update(train_loss=None, train_perplexity=None, scst_greedy_cider=train_value)
    else:
        record.update(train_loss=train_value,
                      train_perplexity=perplexity(train_value) if train_value is not None else None)
    if s.val is not None and len(s.val.records):
        record.update(validation_scores(s.model, s.val.images, s.val.table, s.val.references, s.vocab, s.device,
                                        t.val_beam_size, d.max_length, t.precision, t.val_max_images,
                                        length_penalty=d.length_penalty, block_unk=d.block_unk))
    return record


def score_of(record: dict, config: Config) -> tuple[str, float] | None:
    """(what is measured, the value; higher is better) for choosing the best model."""
    metric = config.train.val_metric
    if "val_loss" in record:
        return (f"val_{metric}", -record["val_loss"]) if metric == "loss" else (f"val_{metric}", record[f"val_{metric}"])
    if record.get("scst_greedy_cider") is not None:
        return "train_greedy_CIDEr", record["scst_greedy_cider"]
    if record.get("train_loss") is not None:
        return "train_loss", -record["train_loss"]
    return None


def choose_best(state: TrainState, scored: tuple[str, float] | None) -> bool:
    """Whether this epoch's model is the best so far; scores of another measure (the self-critical
    phase without a validation split) start a new comparison instead of meeting other units."""
    if scored is None:
        return False
    metric, value = scored
    if metric == state.best_metric and value <= state.best_score:
        return False
    state.best_metric, state.best_score, state.best_epoch = metric, value, state.epoch
    return True


def end_epoch(s: Session, state: TrainState, lr: float) -> dict | None:
    """Validate (rank 0), keep the best model and the history line, warn on collapse."""
    values = state.epoch_values
    train_value = sum(values) / len(values) if values else None
    state.epoch, state.step_in_epoch, state.epoch_values = state.epoch + 1, 0, []
    check_replicas(s)
    if not dist.is_main():
        return None
    record = validate(s, state, train_value, lr)
    record["best"] = choose_best(state, score_of(record, s.config))
    if record["best"] and s.run is not None:
        s.run.save_model(s.model, {"epoch": state.epoch, "step": state.global_step, "val_metric": state.best_metric,
                                   "val_score": state.best_score})
    if s.run is not None:
        s.run.append_history(record)
        state.history_length += 1
    warn_if_collapsed(record, s.config)
    log.info(format_record(record))
    return record


def check_replicas(s: Session) -> None:
    """Every rank must hold the same weights (DDP and hand-averaged gradients keep them so only if
    they start equal): compare a checksum at each epoch's end."""
    if not dist.is_distributed():
        return
    with torch.no_grad():
        checksum = float(sum(p.double().sum() for p in s.model.parameters()))
    spread = dist.all_reduce_max(checksum, s.device) + dist.all_reduce_max(-checksum, s.device)
    if spread > 1e-6 * max(1.0, abs(checksum)):
        raise RunError(f"the {dist.world_size()} processes hold different weights (checksums differ by {spread:g}); "
                       "this is a showtell bug, please report it")


def warn_if_collapsed(record: dict, config: Config) -> None:
    """The field's best-known failure: the same caption for every picture."""
    images, distinct = record.get("val_images", 0), record.get("val_distinct_captions", 0)
    if images >= 20 and distinct < COLLAPSE_FRACTION * images:
        m = config.model
        causes = ["a frozen encoder" + (" with random weights" if m.encoder_weights == "none" else "")
                  if m.freeze_encoder else "an encoder that has not learnt yet",
                  f"train.lr={config.train.lr:g} too high or too low", "too few epochs", "captions that do not depend on the picture"]
        log.warning("validation captions collapsed: %d distinct captions for %d pictures after epoch %d; likely causes: %s",
                    distinct, images, record["epoch"], "; ".join(causes))


def ensure_model(s: Session, state: TrainState) -> None:
    """A run stopped before its first validation (or whose best model file is damaged) still gets a
    model package: the current weights, marked as not validated."""
    if s.run is None or not dist.is_main():
        return
    if s.run.model_is_readable():
        return
    if s.run.has_model():
        log.warning("%s/model.safetensors is damaged; replacing it with the current weights (not validated)", s.run.path)
    s.run.save_model(s.model, {"epoch": state.epoch, "step": state.global_step, "val_metric": "none (not validated)"})


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


# --- the loop ------------------------------------------------------------------------------------------
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
    late = deadline is not None and dist.is_main() and clock() > deadline
    return dist.all_reduce_sum(float(late or bool(requested)), device) > 0


def fit(s: Session, state: TrainState, optimizer: torch.optim.Optimizer, max_minutes: float | None) -> dict:
    t = s.config.train
    deadline = clock() + 60 * max_minutes if max_minutes else None
    phase = make_phase(s, state.phase)
    budget = BudgetPlanner(deadline, s, state)
    stopped = False
    if state.global_step == 0:
        save_checkpoint(s, state, optimizer)  # so that --resume works even after a kill in the very first steps
    board = open_log(s.config, s.run, state.global_step, dist.is_main())
    with stop_signals() as requested, closing_log(board):
        while state.epoch < s.total_epochs and not stopped and not state.finished:
            if state.phase == "xe" and state.epoch >= t.epochs:
                start_self_critical(s, state)
                phase, optimizer = make_phase(s, "scst"), make_optimizer(s, "scst")
                save_checkpoint(s, state, optimizer)  # the change of phase is part of the resumable state
            if encoder_should_train(s.config, state.epoch) and s.model.encoder.frozen:
                s = start_finetuning(s, state)
            batches = epoch_batches(len(s.train.records), t.batch_size, t.seed, state.epoch)
            loader = make_loader(s.train.images, [dist.shard(b) for b in batches[state.step_in_epoch:]],
                                 s.config.data.num_workers, pin_memory=s.device.type == "cuda")
            label = f"epoch {state.epoch + 1}/{s.total_epochs}" + (" (self-critical)" if state.phase == "scst" else "")
            value_name = "greedy_cider" if state.phase == "scst" else "loss"
            bar = progress_bar(total=len(batches), initial=state.step_in_epoch, desc=label, unit="batch",
                               disable=not s.show_progress or not dist.is_main())
            started, seen = clock(), 0
            for ids, batch, bad in loader:
                for index, message in bad:
                    if index not in state.skipped:
                        state.skipped[index] = message
                        log.warning("skipping %s", message)
                if batch is not None and len(ids):
                    s.model.train()
                    loss, value = phase.loss(s, ids, batch, state)
                    optimise(s, optimizer, loss, state.plan.factor(state.global_step), phase.through_ddp)
                    state.epoch_values.append(value)
                    if board:
                        board.update(state.global_step, value, optimizer.param_groups[0]["lr"])
                    seen += len(ids) * dist.world_size()
                state.step_in_epoch += 1
                state.global_step += 1
                bar.update(1)
                last = f"{state.epoch_values[-1]:.3f}" if state.epoch_values else "-"
                bar.set_postfix({value_name: last, "img_s": f"{seen / max(clock() - started, 1e-9):.0f}"},
                                refresh=False)
                budget.after_step(s, state)
                if state.global_step % t.checkpoint_every == 0:
                    save_checkpoint(s, state, optimizer)
                if state.finished:   # the budget's plan is done: validate now, even mid-epoch
                    break
                if should_stop(deadline, requested, s.device):
                    stopped = True
                    break
            bar.close()
            if state.step_in_epoch >= len(batches) or state.finished:   # any other stop validates nothing:
                validation_started = clock()                     # the epoch continues on --resume
                record = end_epoch(s, state, optimizer.param_groups[0]["lr"])
                if board and record:
                    board.epoch(record)
                budget.after_validation(clock() - validation_started, s, state)
            dist.barrier()
            save_checkpoint(s, state, optimizer)
    ensure_model(s, state)
    if requested:
        name = signal.Signals(requested[0]).name
        raise Stopped(requested[0], f"stopped by {name} at step {state.global_step}; checkpoint saved "
                                    f"(continue with --resume {s.run.path if s.run else 'RUN'})")
    if state.planned_end is not None and dist.is_main():
        log.info("time budget: the learning-rate decay was planned to end at step %d of %d (train.epochs=%d); "
                 "%d steps done", state.planned_end, t.epochs * s.steps_per_epoch, t.epochs, state.global_step)
    if stopped and dist.is_main():
        log.info("stopped at the time budget after %d steps; the best checkpoint is kept", state.global_step)
    if state.skipped and dist.is_main():
        log.warning("%d unreadable images were skipped during training (first: %s)",
                    len(state.skipped), next(iter(state.skipped.values())))
    return {"epochs": state.epoch, "steps": state.global_step, "best_epoch": state.best_epoch,
            "best_score": state.best_score, "best_metric": state.best_metric, "stopped_early": stopped,
            "planned_steps": state.planned_end,
            "skipped_images": len(state.skipped)}


def format_record(record: dict) -> str:
    parts = [f"epoch {record['epoch']}"]
    if record.get("train_loss") is not None:
        parts.append(f"train loss {record['train_loss']:.3f} (ppl {record['train_perplexity']:.2f})")
    if record.get("scst_greedy_cider") is not None:
        parts.append(f"self-critical: greedy CIDEr-D on training batches {record['scst_greedy_cider']:.3f}")
    if "val_loss" in record:
        parts.append(f"val loss {record['val_loss']:.3f} (ppl {record['val_perplexity']:.2f})")
    for key in ("val_Bleu_4", "val_CIDEr"):
        if key in record:
            parts.append(f"{key[4:]} {record[key]:.3f}")
    if "val_distinct_captions" in record:
        parts.append(f"{record['val_distinct_captions']}/{record['val_images']} distinct")
    if record.get("best"):
        parts.append("(best)")
    return ", ".join(parts)


# --- starting and resuming ------------------------------------------------------------------------------
def open_session(config: Config, run: Run | None, model: CaptionModel, vocab: Vocabulary, records: list[ImageRecord],
                 features, show_progress: bool) -> Session:
    """The session for `model`: device, data of both splits, DDP. Shared by train and resume."""
    device = resolve_device(config.train.device)
    if config.train.precision == "bf16" and device.type == "cpu" and not cpu_has_native_bf16() and dist.is_main():
        log.warning("train.precision=bf16: this CPU has no bfloat16 instructions (no avx512_bf16 or amx_bf16), "
                    "so bf16 is emulated and slower than fp32 here")
    if config.train.precision == "fp16" and device.type == "cpu" and dist.is_main():
        log.warning("train.precision=fp16 is meant for GPUs without bfloat16 (V100, T4); on the CPU float16 "
                    "autocast runs, slower than fp32")
    train_records, val_records = split_records(records)
    if not model.encoder.frozen:
        features = None   # a training encoder needs the pictures
    model.to(device)
    s = Session(config, run, model, vocab,
                make_split(train_records, model, vocab, config, features, "train"),
                make_split(val_records, model, vocab, config, features, "val") if val_records else None,
                device, features, show_progress)
    scaler = torch.amp.GradScaler(device.type) if config.train.precision == "fp16" else None
    return replace(s, ddp=dist.wrap(model, device) if dist.is_distributed() else None, scaler=scaler)


def train(config: Config, records: list[ImageRecord], out: str | Path | None, sources: dict | None = None,
          max_minutes: float | None = None, show_progress: bool = True, features=None) -> dict:
    """Train a new model on `records` into run directory `out` (None: keep nothing on disk)."""
    started = clock()
    config = resolve(config)
    check_log(config)
    train_records, val_records = split_records(records)
    vocab = Vocabulary.build((t for r in train_records for t in r.tokens), config.data.min_word_count)
    seed_everything(config.train.seed)
    model = build_model(config, vocab, pretrained=True, encoder_state=features.encoder_state() if features else None)
    if config.model.word_embeddings:
        config.model.embed_dim = model.decoder.embed.embedding_dim   # the vectors decide
    if out is not None and dist.is_main():
        Run.create(out, config, vocab, sources or {})
    dist.barrier()
    run = Run(out) if out is not None else None
    s = open_session(config, run, model, vocab, records, features, show_progress)
    state = TrainState(plan=phase_plan(s, "xe"))
    summary = fit(s, state, make_optimizer(s, "xe"), max_minutes if max_minutes is not None else config.train.max_minutes)
    summary.update(vocab_size=len(vocab), train_images=len(train_records), val_images=len(val_records))
    describe_run(run, summary, clock() - started)
    return summary


def describe_run(run: Run | None, summary: dict, seconds: float) -> None:
    """training.json and the model card (README.md), written by rank 0 at the end of training."""
    if run is not None and dist.is_main():
        record_training(run.path, summary, seconds)
        write_model_card(run.path)


RESUME_SETTINGS = ("train.epochs", "train.scst_epochs", "train.scst_lr", "train.scst_samples", "train.max_minutes",
                   "train.checkpoint_every", "train.keep_checkpoints", "train.val_max_images", "train.val_beam_size",
                   "data.num_workers", "train.device", "train.log")


def resume_config(saved: Config, overrides: list[str] | None) -> Config:
    """The run's config with the `--set` changes that do not alter what was already trained."""
    values = parse_overrides(overrides or [])
    for key in values:
        if key not in RESUME_SETTINGS:
            raise ConfigError(f"--set {key}: cannot change when resuming (allowed: {', '.join(RESUME_SETTINGS)})")
    return resolve(apply(saved, values, where="--set ")) if values else saved


def resume(path: str | Path, records: list[ImageRecord], max_minutes: float | None = None,
           show_progress: bool = True, features=None, overrides: list[str] | None = None) -> dict:
    """Continue the run in `path` from its newest good checkpoint. Everything is checked before
    anything in the run is written: a refused resume leaves the run as it was."""
    started = clock()
    run = Run(path)
    saved = run.config()
    config, vocab = resume_config(saved, overrides), run.vocab()
    check_log(config)
    more_epochs = config.train.epochs != saved.train.epochs
    step, weights, saved = run.load_checkpoint()
    if "train_state" not in saved:
        raise RunError(f"{run.path}: checkpoint from an older showtell; it cannot be resumed by this version")
    state = TrainState.from_dict(saved["train_state"])
    train_records, val_records = split_records(records)
    if Vocabulary.build((t for r in train_records for t in r.tokens), config.data.min_word_count) != vocab:
        raise RunError(f"{run.path}: the training data differs from the data this run started with")
    model = build_model(config, vocab, pretrained=False)
    try:
        model.load_state_dict(weights)
    except RuntimeError as error:
        raise RunError(f"{run.path}/config.json: does not describe the checkpoint's model (was it edited?): "
                       f"{str(error).splitlines()[0][:160]}") from None
    if encoder_should_train(config, state.epoch) and config.model.freeze_encoder:
        model.encoder.freeze(False)  # the checkpoint was taken while fine-tuning
    if overrides:
        atomic_write_text(run.path / "config.json", config.to_json())
    run.clean_temporary_files()
    if not run.model_is_readable():
        log.warning("%s/model.safetensors is missing or damaged; the next validated model replaces it", run.path)
        state.best_metric, state.best_score = "", -math.inf
    s = open_session(config, run, model, vocab, records, features, show_progress)
    optimizer = make_optimizer(s, state.phase)
    optimizer.load_state_dict(saved["optimizer"])
    if s.scaler is not None and saved.get("scaler"):
        s.scaler.load_state_dict(saved["scaler"])
    set_rng_state(saved["rng"])
    if more_epochs and state.phase == "xe":   # a new plan for the new length (a time budget's plan is kept otherwise)
        planned = phase_plan(s, "xe").total_steps
        log.info("train.epochs changed: the learning-rate decay now ends at step %d (was %d), continuing from step %d",
                 planned, state.plan.total_steps, state.global_step)
        state.plan = state.plan.replanned(state.global_step, planned)
        state.planned_end = None
    if dist.is_main():  # forget history written after the checkpoint (it will be recomputed identically)
        run.rewrite_history(run.history()[: state.history_length])
    log.info("resuming %s at epoch %d, step %d", run.path, state.epoch + 1, state.step_in_epoch)
    summary = fit(s, state, optimizer, max_minutes if max_minutes is not None else config.train.max_minutes)
    summary.update(vocab_size=len(vocab), train_images=len(train_records), val_images=len(val_records))
    describe_run(run, summary, clock() - started)
    return summary
