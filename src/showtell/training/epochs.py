"""The end of an epoch: validation by decoding, the best model, the history line, warnings."""

from __future__ import annotations

import logging
import math

import torch

from ..config import Config
from ..errors import RunError
from ..evaluation.validation import validation_scores
from . import distributed as dist
from .session import Session
from .state import TrainState

log = logging.getLogger("showtell")


COLLAPSE_FRACTION = 0.05   # fewer distinct validation captions than this share of pictures: warn


# --- validation and the best model --------------------------------------------------------------------
def validate(s: Session, state: TrainState, phase, train_value: float | None, lr: float) -> dict:
    """The epoch's record: training loss (or the self-critical phase's greedy CIDEr-D on the training
    batches) and, with a validation split, scores of decoded captions, decoded as `evaluate` does."""
    t, d = s.config.train, s.config.decode
    record = {"epoch": state.epoch, "step": state.global_step, "phase": state.phase, "lr": lr,
              **phase.record(train_value)}
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
    if not math.isfinite(value):   # NaN compares false with everything: it would win every comparison
        return False
    if metric == state.best_metric and value <= state.best_score:
        return False
    state.best_metric, state.best_score, state.best_epoch = metric, value, state.epoch
    return True


def end_epoch(s: Session, state: TrainState, phase, lr: float) -> dict | None:
    """Validate (rank 0), keep the best model and the history line, warn on collapse."""
    values = state.epoch_values
    train_value = sum(values) / len(values) if values else None
    state.epoch, state.step_in_epoch, state.epoch_values = state.epoch + 1, 0, []
    check_replicas(s)
    if not dist.is_main():
        return None
    record = validate(s, state, phase, train_value, lr)
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
