"""Training phases: the table of them (`PHASES`), and `optimise`, the one place that steps.

Each phase is an object that owns its optimiser, learning-rate plan, progress label, epoch record
and loss; the loop asks the current one and never branches on a phase's name. Cross-entropy
first (the encoder may be unfrozen after some epochs), then optionally self-critical training
(scst.py), from the best cross-entropy model."""

from __future__ import annotations

import functools
import logging
from dataclasses import replace

import torch

from ..config import Config
from ..data.batching import choose_captions, features_of
from ..decoding.scoring import perplexity
from ..device import autocast
from . import distributed as dist
from .schedules import Plan, sampling_probability
from .scst import SelfCritical
from .session import Session, make_split
from .state import TrainState

log = logging.getLogger("showtell")


# --- phases: each owns its optimiser, plan, label and loss -------------------------------------------
class CrossEntropy:
    """Teacher forcing over `captions_per_image` captions of each picture; the whole step runs
    through DistributedDataParallel's forward."""

    name = "xe"                      # as history.jsonl and checkpoints record the phase
    title = "cross-entropy training"
    epochs_setting = "train.epochs"  # the setting that says how long it runs
    label = ""                       # after the epoch in the progress bar
    value_name = "loss"              # the progress bar's running value
    what = "training loss"           # what a non-finite value is called
    through_ddp = True
    budgeted = True                  # --max-minutes may plan its learning-rate decay (budget.py)

    def __init__(self, s: Session | None = None):
        pass

    def last_epoch(self, config: Config) -> int:
        """The epoch count at which this phase is over."""
        return config.train.epochs

    def plan(self, s: Session) -> Plan:
        t = s.config.train
        return Plan(total_steps=s.steps_per_epoch * t.epochs, warmup_steps=t.warmup_steps, kind=t.lr_schedule)

    def optimizer(self, s: Session) -> torch.optim.Optimizer:
        # a pretrained encoder, even frozen now, gets its own (small) rate for later fine-tuning
        t, model = s.config.train, s.model
        pretrained = s.config.model.encoder_weights != "none"
        return _adam([{"params": [p for p in model.decoder.parameters() if p.requires_grad], "lr": t.lr},
                      {"params": list(model.encoder.parameters()), "lr": t.encoder_lr if pretrained else t.lr}],
                     t.weight_decay)

    def record(self, train_value: float | None) -> dict:
        """The epoch's training value, as the history line holds it."""
        return {"train_loss": train_value,
                "train_perplexity": perplexity(train_value) if train_value is not None else None}

    def begin(self, s: Session, state: TrainState) -> None:
        state.phase, state.plan = self.name, self.plan(s)

    def resized(self, s: Session, state: TrainState, saved: Config) -> None:
        """A resume changed train.epochs: the decay continues from here to the new end."""
        if s.config.train.epochs == saved.train.epochs:
            return
        planned = self.plan(s).total_steps
        log.info("train.epochs changed: the learning-rate decay now ends at step %d (was %d), continuing from step %d",
                 planned, state.plan.total_steps, state.global_step)
        state.plan = state.plan.replanned(state.global_step, planned)
        state.planned_end = None

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
    """scst.SelfCritical on the session's pictures: encode each batch once, then its loss. Starts
    from the best cross-entropy model (start_self_critical), at a constant train.scst_lr."""

    name = "scst"
    title = "self-critical training"
    epochs_setting = "train.scst_epochs"
    label = " (self-critical)"
    value_name = "greedy_cider"
    what = "self-critical loss"
    through_ddp = False
    budgeted = False

    def __init__(self, s: Session):
        self.records, self.vocab, self.config = s.train.records if s.train is not None else [], s.vocab, s.config

    @functools.cached_property
    def critic(self) -> SelfCritical:
        references = [[" ".join(tokens) for tokens in r.tokens] for r in self.records]
        return SelfCritical(references, self.vocab, self.config)

    def last_epoch(self, config: Config) -> int:
        return config.train.epochs + config.train.scst_epochs

    def plan(self, s: Session) -> Plan:
        return Plan(total_steps=s.steps_per_epoch * s.config.train.scst_epochs, kind="constant")

    def optimizer(self, s: Session) -> torch.optim.Optimizer:
        return _adam([{"params": [p for p in s.model.parameters() if p.requires_grad], "lr": s.config.train.scst_lr}],
                     0.0)

    def record(self, train_value: float | None) -> dict:
        return {"train_loss": None, "train_perplexity": None, "scst_greedy_cider": train_value}

    def begin(self, s: Session, state: TrainState) -> None:
        start_self_critical(s, state)

    def resized(self, s: Session, state: TrainState, saved: Config) -> None:
        """Its rate is constant: a new length needs no new plan."""

    def loss(self, s: Session, ids: torch.Tensor, batch, state: TrainState) -> tuple[torch.Tensor, float]:
        with autocast(s.device, s.config.train.precision):
            features = features_of(s.model, batch, s.device)
            return self.critic.loss(s.model, features, ids, state.global_step, s.device)


# The table of phases, in the order training runs them; the names are what history.jsonl and
# checkpoints hold, so old runs keep loading. Nothing outside this table branches on a name.
PHASES = {phase.name: phase for phase in (CrossEntropy, SelfCriticalPhase)}
FIRST = CrossEntropy.name


def make_phase(s: Session, name: str):
    """The phase called `name` (a TrainState's `phase`), for session `s`."""
    return PHASES[name](s)


def next_phase(s: Session, phase):
    """The phase that follows `phase` in the table, or None after the last."""
    names = list(PHASES)
    following = names.index(phase.name) + 1
    return PHASES[names[following]](s) if following < len(names) else None


def _adam(groups: list[dict], weight_decay: float) -> torch.optim.Optimizer:
    """Adam with each group's base rate kept as `initial_lr`, which the plan's factor scales."""
    for group in groups:
        group["initial_lr"] = group["lr"]
    return torch.optim.Adam(groups, weight_decay=weight_decay)


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
            s.run.keep_xe_model()
    state.phase, state.plan = SelfCriticalPhase.name, SelfCriticalPhase(s).plan(s)


def encoder_should_train(config: Config, epoch: int) -> bool:
    return not config.model.freeze_encoder or 0 <= config.train.finetune_encoder_after <= epoch
