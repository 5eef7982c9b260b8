"""Starting and resuming training: `train` (a new run) and `resume` (from its newest checkpoint)."""

from __future__ import annotations

import logging
import math
from contextlib import nullcontext
from pathlib import Path
from time import monotonic as clock

from ..architectures import check_lengths
from ..config import Config, apply, parse_overrides, resolve
from ..data.formats import ImageRecord
from ..errors import ConfigError, RunError
from ..models.caption_model import build_model
from ..reporting.modelcard import record_training, write_model_card
from ..run import CONFIG, Run
from ..tokenizer import longest_caption, make_tokenizer
from ..vocab import Vocabulary
from . import distributed as dist
from .loop import fit
from .phases import FIRST, PHASES, encoder_should_train, make_phase
from .session import open_session, seed_everything, split_records
from .state import TrainState, set_rng_state
from .tensorboard import check_available as check_log

log = logging.getLogger("showtell")


def _lock(out, command: str):
    """The run's lock, held by the process that writes (rank 0); no lock without a run folder."""
    return Run(out).locked(command, create=command == "train") if out is not None and dist.is_main() else nullcontext()


def train(config: Config, records: list[ImageRecord], out: str | Path | None, sources: dict | None = None,
          max_minutes: float | None = None, show_progress: bool = True, features=None) -> dict:
    """Train a new model on `records` into run directory `out` (None: keep nothing on disk),
    holding the run's lock throughout."""
    started = clock()
    config = resolve(config)
    check_log(config)
    train_records, val_records = split_records(records)
    vocab = make_tokenizer(config, (t for r in train_records for t in r.tokens))
    check_lengths(config, lambda: longest_caption(vocab, (t for r in train_records for t in r.tokens),
                                                  config.data.max_caption_length))   # before the run folder is made
    seed_everything(config.train.seed)
    model = build_model(config, vocab, pretrained=True, encoder_state=features.encoder_state() if features else None)
    if config.model.word_embeddings:
        config.model.embed_dim = model.decoder.embed.embedding_dim   # the vectors decide
    with _lock(out, "train"):
        if out is not None and dist.is_main():
            Run.create(out, config, vocab, sources or {})
        dist.barrier()
        run = Run(out) if out is not None else None
        s = open_session(config, run, model, vocab, records, features, show_progress)
        first = make_phase(s, FIRST)
        state = TrainState(plan=first.plan(s), phase=first.name)
        summary = fit(s, state, first.optimizer(s), max_minutes if max_minutes is not None else config.train.max_minutes)
        summary.update(vocab_size=len(vocab), train_images=len(train_records), val_images=len(val_records))
        describe_run(run, summary, clock() - started)
    return summary


def describe_run(run: Run | None, summary: dict, seconds: float) -> None:
    """training.json and the model card (README.md), written by rank 0 at the end of training."""
    if run is not None and dist.is_main():
        record_training(run, summary, seconds)
        write_model_card(run)


RESUME_SETTINGS = ("train.epochs", "train.scst_epochs", "train.scst_lr", "train.scst_samples", "train.max_minutes",
                   "train.checkpoint_every", "train.keep_checkpoints", "train.val_max_images", "train.val_beam_size",
                   "data.num_workers", "train.device", "train.log", "train.threads")


def resume_config(saved: Config, overrides: list[str] | None) -> Config:
    """The run's config with the `--set` changes that do not alter what was already trained."""
    values = parse_overrides(overrides or [])
    for key in values:
        if key not in RESUME_SETTINGS:
            raise ConfigError(f"--set {key}: cannot change when resuming (allowed: {', '.join(RESUME_SETTINGS)})")
    return resolve(apply(saved, values, where="--set ")) if values else saved


def check_changes(saved: Config, config: Config, state: TrainState) -> list[str]:
    """The settings a resume changes, as 'name old -> new'; a change that contradicts what the run
    has already trained (fewer epochs than it has done) is a ConfigError."""
    done_xe = min(state.epoch, saved.train.epochs)
    phase = PHASES[state.phase]
    if config.train.epochs != saved.train.epochs:
        if phase.epochs_setting != "train.epochs":
            raise ConfigError(f"--set train.epochs={config.train.epochs}: the run finished its {saved.train.epochs} "
                              f"cross-entropy epochs and is in {phase.title}; change {phase.epochs_setting} instead")
        if config.train.epochs < done_xe:
            raise ConfigError(f"--set train.epochs={config.train.epochs}: the run has already trained {done_xe} epochs; "
                              f"give {done_xe} or more")
    done_scst = max(0, state.epoch - saved.train.epochs)
    if config.train.scst_epochs < done_scst:
        raise ConfigError(f"--set train.scst_epochs={config.train.scst_epochs}: the run has already trained {done_scst} "
                          f"self-critical epochs; give {done_scst} or more")
    old, new = saved.to_dict(), config.to_dict()
    return [f"{section}.{key} {old[section][key]!r} -> {new[section][key]!r}"
            for section in new for key in new[section] if new[section][key] != old[section][key]]


def resume(path: str | Path, records: list[ImageRecord], max_minutes: float | None = None,
           show_progress: bool = True, features=None, overrides: list[str] | None = None) -> dict:
    """Continue the run in `path` from its newest good checkpoint, holding its lock. Everything is
    checked before anything in the run is written: a refused resume leaves the run as it was."""
    with _lock(path, "train --resume"):
        return _resume(Run(path), records, max_minutes, show_progress, features, overrides)


def _restore_model(run: Run, config: Config, vocab, weights, state: TrainState):
    model = build_model(config, vocab, pretrained=False)
    try:
        model.load_state_dict(weights)
    except RuntimeError as error:
        raise RunError(f"{run.path / CONFIG}: does not describe the checkpoint's model (was it edited?): "
                       f"{run.describe_mismatch(model, weights, error).split(': ', 1)[1]}") from None
    if encoder_should_train(config, state.epoch) and config.model.freeze_encoder:
        model.encoder.freeze(False)  # the checkpoint was taken while fine-tuning
    return model


def _resume(run: Run, records, max_minutes, show_progress, features, overrides) -> dict:
    started = clock()
    saved_config = run.config()
    config, vocab = resume_config(saved_config, overrides), run.vocab()
    check_log(config)
    step, weights, saved = run.load_checkpoint()
    if "train_state" not in saved:
        raise RunError(f"{run.path}: checkpoint from an older showtell; it cannot be resumed by this version")
    state = TrainState.from_dict(saved["train_state"])
    changes = check_changes(saved_config, config, state)
    train_records, val_records = split_records(records)
    if isinstance(vocab, Vocabulary) and Vocabulary.build((t for r in train_records for t in r.tokens),
                                                          config.data.min_word_count) != vocab:
        raise RunError(f"{run.path}: the training data differs from the data this run started with")
    model = _restore_model(run, config, vocab, weights, state)
    if changes and dist.is_main():
        run.save_config(config)
        log.info("resuming with %s (%s updated)", "; ".join(changes), CONFIG)
    run.clean_temporary_files()
    if not run.model_is_readable():
        log.warning("%s is missing or damaged; the next validated model replaces it", run.model_file)
        state.best_metric, state.best_score = "", -math.inf
    s = open_session(config, run, model, vocab, records, features, show_progress)
    phase = make_phase(s, state.phase)
    optimizer = phase.optimizer(s)
    optimizer.load_state_dict(saved["optimizer"])
    if s.scaler is not None and saved.get("scaler"):
        s.scaler.load_state_dict(saved["scaler"])
    set_rng_state(saved["rng"])
    phase.resized(s, state, saved_config)   # a new plan for a new length
    if dist.is_main():  # forget history written after the checkpoint (it will be recomputed identically)
        run.rewrite_history(run.history()[: state.history_length])
    if state.epoch >= s.total_epochs:
        log.info("%s has already trained its %d epochs; nothing to do (give --set train.epochs=N to train more)",
                 run.path, s.total_epochs)
    else:
        log.info("resuming %s at epoch %d, step %d", run.path, state.epoch + 1, state.step_in_epoch)
    summary = fit(s, state, optimizer, max_minutes if max_minutes is not None else config.train.max_minutes)
    summary.update(vocab_size=len(vocab), train_images=len(train_records), val_images=len(val_records))
    describe_run(run, summary, clock() - started)
    return summary
