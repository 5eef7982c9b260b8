"""Training phases: each turns a batch into a loss, and `optimise` is the one place that steps.

Cross-entropy first (the encoder may be unfrozen after some epochs), then optionally
self-critical training (scst.py), from the best cross-entropy model."""

from __future__ import annotations

import logging
import shutil
from dataclasses import replace

import torch

from ..config import Config
from ..data.batching import choose_captions
from ..device import autocast
from ..evaluation.validation import features_of
from . import distributed as dist
from .schedules import Plan, sampling_probability
from .scst import SelfCritical
from .session import Session, make_split
from .state import TrainState

log = logging.getLogger("showtell")


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
