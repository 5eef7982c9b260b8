"""Training: maximum likelihood with teacher forcing, validation by decoding, resumable checkpoints.

For each image the model sees the true previous words of its captions and learns to predict the
next one; the loss is the mean negative log-likelihood per word, exp(loss) the perplexity:

    loss = -1/N sum_t log p(S_t | I, S_<t)

Each epoch ends with a validation pass that writes captions for the validation images (greedy
or a small beam) and scores them; the best score (CIDEr by default) picks `model.safetensors`.
Every `checkpoint_every` steps a resumable checkpoint saves weights, optimizer, schedule, RNG
state and the position in the epoch's batch list, so `--resume` continues exactly where the last
checkpoint left off, with bitwise the same result as an uninterrupted run (on CPU).
"""

from __future__ import annotations

import logging
import math
import random
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from . import distributed as dist
from .config import Config
from .config import apply as apply_settings
from .data.batching import CaptionTable, ImageSet, choose_captions, epoch_batches, make_loader, preload
from .data.formats import ImageRecord
from .distributed import cpu_has_native_bf16, resolve_device
from .errors import ConfigError, DataError, RunError
from .evaluate import autocast, to_device, validation_scores
from .fileio import atomic_write_text
from .models.captioner import CaptionModel, build_model
from .progress import progress_bar
from .run import Run
from .schedules import lr_factor, sampling_probability
from .vocab import PAD, Vocabulary

log = logging.getLogger("showtell")

CACHE_LIMIT_BYTES = 2 << 30


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2 ** 32))
    torch.manual_seed(seed)


@dataclass
class SplitData:
    records: list[ImageRecord]
    images: ImageSet
    table: CaptionTable

    @property
    def references(self) -> list[list[str]]:
        return [r.captions for r in self.records]


def make_split(records: list[ImageRecord], model: CaptionModel, vocab: Vocabulary, config: Config,
               features=None, split: str = "train", show_progress: bool = True) -> SplitData:
    """Pictures (from files, memory or the feature cache) and encoded captions of one split."""
    if features is not None:
        images = features.split_set(records, split)
    else:
        images = ImageSet(records, model.transform, config.data.max_image_pixels)
        side = model.transform.crop
        want = config.data.cache_images
        if want == "yes" or (want == "auto" and len(records) * 3 * side * side <= CACHE_LIMIT_BYTES):
            bar = progress_bar(total=len(records), desc=f"loading {split} images", unit="img", leave=False,
                       disable=not show_progress or not dist.is_main())
            preload(images, bar.update)
            bar.close()
    return SplitData(records, images, CaptionTable(records, vocab, config.data.max_caption_length))


class Trainer:
    """Owns the model, optimiser and data of one training run (one process of a distributed run)."""

    def __init__(self, config: Config, run: Run | None, model: CaptionModel, vocab: Vocabulary,
                 train: SplitData, val: SplitData | None, device: torch.device, show_progress: bool = True):
        self.config, self.run, self.vocab = config, run, vocab
        self.model, self.train_data, self.val_data = model.to(device), train, val
        self.device, self.show_progress = device, show_progress
        if config.train.precision == "bf16" and device.type == "cpu" and not cpu_has_native_bf16() and dist.is_main():
            log.warning("train.precision=bf16: this CPU has no bfloat16 instructions (no avx512_bf16 or amx_bf16), "
                        "so bf16 is emulated and slower than fp32 here")
        self.steps_per_epoch = len(epoch_batches(len(train.records), config.train.batch_size, 0, 0))
        self.total_steps = self.steps_per_epoch * config.train.epochs
        self.optimizer = self._make_optimizer()
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, self._lr_lambda)
        self.epoch, self.step_in_epoch, self.global_step = 0, 0, 0
        self.best_score, self.best_epoch = -math.inf, None
        self.skipped: dict[int, str] = {}
        self.epoch_losses: list[float] = []  # this epoch's batch losses so far, so a resumed epoch reports the same mean
        self.total_epochs = config.train.epochs + config.train.scst_epochs
        self.phase, self.scst = "xe", None   # cross-entropy, then self-critical (train.scst_epochs)
        self.ddp = dist.wrap(self.model, device) if dist.is_distributed() else None
        self.features_in_use = not isinstance(train.images, ImageSet)

    def _start_finetuning(self) -> None:
        """Unfreeze a pretrained encoder (train.finetune_encoder_after): from now on features
        come from the pictures, since the cached ones no longer match the changing CNN."""
        log.info("fine-tuning the encoder from epoch %d (lr %g)", self.epoch + 1, self.config.train.encoder_lr)
        self.model.encoder.freeze(False)
        if self.features_in_use:
            self.train_data = make_split(self.train_data.records, self.model, self.vocab, self.config, None, "train",
                                         self.show_progress)
            if self.val_data is not None:
                self.val_data = make_split(self.val_data.records, self.model, self.vocab, self.config, None, "val",
                                           self.show_progress)
            self.features_in_use = False
        if self.ddp is not None:  # DDP fixes its parameter set when built
            self.ddp = dist.wrap(self.model, self.device)

    def _start_scst(self, restoring: bool = False) -> None:
        """Self-critical fine-tuning starts from the best cross-entropy model, with its own
        optimiser at a constant train.scst_lr."""
        from .scst import SelfCritical

        if not restoring:
            log.info("self-critical training (CIDEr-D reward, greedy baseline) for %d epochs", self.config.train.scst_epochs)
            if self.run is not None and self.run.has_model():
                self.model.load_state_dict(self.run.weights())
                if dist.is_main():  # keep the cross-entropy model it started from
                    shutil.copyfile(self.run.path / "model.safetensors", self.run.path / "model-xe.safetensors")
        params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.Adam(params, lr=self.config.train.scst_lr)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda step: 1.0)
        self.phase, self.scst = "scst", SelfCritical(self)

    # --- optimisation ----------------------------------------------------------------------------
    def _make_optimizer(self) -> torch.optim.Optimizer:
        t = self.config.train
        pretrained_encoder = self.config.model.encoder_weights != "none"
        groups = [{"params": [p for p in self.model.decoder.parameters() if p.requires_grad], "lr": t.lr}]
        encoder_params = list(self.model.encoder.parameters())
        # a pretrained encoder, even frozen now, gets its own (small) rate for later fine-tuning
        groups.append({"params": encoder_params, "lr": t.encoder_lr if pretrained_encoder else t.lr})
        return torch.optim.Adam(groups, weight_decay=t.weight_decay)

    def _lr_lambda(self, step: int) -> float:
        t = self.config.train
        return lr_factor(step, self.total_steps, t.warmup_steps, t.lr_schedule)

    def _encoder_trains(self) -> bool:
        t = self.config.train
        if not self.config.model.freeze_encoder:
            return True
        return 0 <= t.finetune_encoder_after <= self.epoch

    # --- one step --------------------------------------------------------------------------------
    def loss_of(self, ids: torch.Tensor, batch, epoch: int) -> tuple[torch.Tensor, int]:
        """Sum of word negative log-likelihoods of the batch's captions, and the word count."""
        t = self.config.train
        per_image = t.captions_per_image
        rows = [r for i in ids.tolist()
                for r in self.train_data.table.rows_for(i, choose_captions(self.train_data.table.counts[i], per_image,
                                                                         t.seed, epoch, i))]
        tokens = self.train_data.table.batch(rows).to(self.device)          # (B*S, T+2)
        inputs, targets = tokens[:, :-1], tokens[:, 1:]
        positions = targets != PAD
        model = self.ddp or self.model
        source = {"features": to_device(batch, self.device)} if isinstance(batch, dict) else \
            {"images": batch.to(self.device, non_blocking=True)}
        p = sampling_probability(t.scheduled_sampling, epoch + self.step_in_epoch / max(1, self.steps_per_epoch))
        with autocast(self.device, t.precision):
            logits = model(inputs, positions, repeats=per_image, encoder_grad=self._encoder_trains(),
                           sampling_probability=p, **source)
            if isinstance(logits, tuple):                                    # attention adds its penalty
                logits, penalty = logits
            else:
                penalty = None
            loss_sum = F.cross_entropy(logits.float(), targets[positions], reduction="sum")
            if penalty is not None:
                loss_sum = loss_sum + penalty.float() * positions.sum() / positions.shape[0]
        return loss_sum, int(positions.sum())

    def train_step(self, ids, batch, epoch: int) -> float:
        self.model.train()
        loss_sum, n_words = self.loss_of(ids, batch, epoch)
        # mean over the words of the *global* batch, so N processes match one process exactly
        total_words = dist.all_reduce_sum(n_words, self.device)
        loss = loss_sum * dist.world_size() / max(total_words, 1)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.config.train.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.config.train.grad_clip)
        self.optimizer.step()
        self.scheduler.step()
        return float(loss_sum.detach()) / max(n_words, 1)

    # --- checkpoints -------------------------------------------------------------------------------
    def state(self) -> dict:
        return {"epoch": self.epoch, "step_in_epoch": self.step_in_epoch, "global_step": self.global_step, "phase": self.phase,
                "best_score": self.best_score, "best_epoch": self.best_epoch,
                "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                "rng_torch": torch.get_rng_state(), "rng_python": list(random.getstate()[1]),
                "rng_numpy": torch.from_numpy(np.random.get_state()[1].astype(np.int64)),
                "rng_numpy_pos": int(np.random.get_state()[2]),
                "rng_cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
                "skipped": dict(self.skipped), "epoch_losses": list(self.epoch_losses)}

    def save_checkpoint(self) -> None:
        if self.run is not None and dist.is_main():
            self.run.save_checkpoint(self.global_step, self.model, self.state(), self.config.train.keep_checkpoints)

    def restore(self, weights: dict, state: dict) -> None:
        self.model.load_state_dict(weights)
        if state.get("phase") == "scst":
            self._start_scst(restoring=True)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.epoch, self.step_in_epoch = int(state["epoch"]), int(state["step_in_epoch"])
        self.global_step = int(state["global_step"])
        self.best_score, self.best_epoch = float(state["best_score"]), state["best_epoch"]
        torch.set_rng_state(state["rng_torch"])
        random.setstate((3, tuple(int(x) for x in state["rng_python"]), None))
        np.random.set_state(("MT19937", state["rng_numpy"].numpy().astype(np.uint32), int(state["rng_numpy_pos"]), 0, 0.0))
        if state.get("rng_cuda") and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["rng_cuda"])
        self.skipped = {int(k): v for k, v in state.get("skipped", {}).items()}
        self.epoch_losses = [float(x) for x in state.get("epoch_losses", [])]

    # --- validation ----------------------------------------------------------------------------------
    def validate(self, train_loss: float | None) -> dict:
        t = self.config.train
        record = {"epoch": self.epoch, "step": self.global_step, "phase": self.phase, "train_loss": train_loss,
                  "train_perplexity": math.exp(min(train_loss, 50)) if train_loss is not None else None,
                  "lr": self.optimizer.param_groups[0]["lr"]}
        if self.phase == "scst":  # the running value is the reward over the greedy baseline, not a loss
            record.update(train_loss=None, train_perplexity=None, scst_advantage=train_loss)
        if self.val_data is not None and len(self.val_data.records):
            record.update(validation_scores(self.model, self.val_data.images, self.val_data.table,
                                            self.val_data.references, self.vocab, self.device, t.val_beam_size,
                                            self.config.decode.max_length, t.precision, t.val_max_images))
            metric = "val_loss" if t.val_metric == "loss" else f"val_{t.val_metric}"
            value = -record[metric] if t.val_metric == "loss" else record[metric]
        else:
            value = -train_loss if train_loss is not None else 0.0
        record["best"] = value > self.best_score
        if record["best"]:
            self.best_score, self.best_epoch = value, self.epoch
            if self.run is not None:
                self.run.save_model(self.model, {"epoch": self.epoch, "step": self.global_step,
                                                 "val_metric": t.val_metric, "val_score": value})
        if self.run is not None:
            self.run.append_history(record)
        return record

    # --- the loop ------------------------------------------------------------------------------------
    def _out_of_time(self, deadline: float | None) -> bool:
        """Every rank must stop at the same step, so rank 0's clock decides for all."""
        if deadline is None:
            return False
        late = float(time.monotonic() > deadline) if dist.is_main() else 0.0
        return dist.all_reduce_sum(late, self.device) > 0

    def fit(self, max_minutes: float | None = None) -> dict:
        t = self.config.train
        deadline = time.monotonic() + 60 * max_minutes if max_minutes else None
        stopped_early = False
        last_record = None
        if self.global_step == 0:
            self.save_checkpoint()  # so that --resume works even after a kill in the very first steps
        while self.epoch < self.total_epochs and not stopped_early:
            if self._encoder_trains() and self.model.encoder.frozen:
                self._start_finetuning()
            if self.epoch >= t.epochs and self.phase == "xe":
                self._start_scst()
            batches = epoch_batches(len(self.train_data.records), t.batch_size, t.seed, self.epoch)
            todo = [dist.shard(b) for b in batches[self.step_in_epoch:]]
            loader = make_loader(self.train_data.images, todo, self.config.data.num_workers,
                                 pin_memory=self.device.type == "cuda")
            label = f"epoch {self.epoch + 1}/{self.total_epochs}" + (" (self-critical)" if self.phase == "scst" else "")
            bar = progress_bar(total=len(batches), initial=self.step_in_epoch, desc=label,
                               unit="batch", disable=not self.show_progress or not dist.is_main())
            losses, started, seen = self.epoch_losses, time.monotonic(), 0
            for ids, batch, bad in loader:
                for index, message in bad:
                    if index not in self.skipped:
                        self.skipped[index] = message
                        log.warning("skipping %s", message)
                if batch is not None and len(ids):
                    step = self.scst.step if self.phase == "scst" else self.train_step
                    losses.append(step(ids, batch, self.epoch))
                    seen += len(ids) * dist.world_size()
                self.step_in_epoch += 1
                self.global_step += 1
                bar.update(1)
                rate = seen / max(time.monotonic() - started, 1e-9)
                name = "advantage" if self.phase == "scst" else "loss"
                bar.set_postfix({name: f"{losses[-1]:.3f}" if losses else "-", "img_s": f"{rate:.0f}"}, refresh=False)
                if self.global_step % t.checkpoint_every == 0:
                    self.save_checkpoint()
                if self._out_of_time(deadline):
                    stopped_early = True
                    break
            bar.close()
            train_loss = sum(losses) / len(losses) if losses else None
            finished_epoch = not stopped_early or self.step_in_epoch >= len(batches)
            if finished_epoch:
                self.epoch, self.step_in_epoch, self.epoch_losses = self.epoch + 1, 0, []
            last_record = self.validate(train_loss) if dist.is_main() else None
            dist.barrier()
            self.save_checkpoint()
            if last_record and dist.is_main():
                log.info(format_record(last_record))
        if stopped_early and dist.is_main():
            log.info("stopped at the %.1f-minute budget after %d steps; the best checkpoint is kept",
                     max_minutes, self.global_step)
        if self.skipped and dist.is_main():
            log.warning("%d unreadable images were skipped during training (first: %s)",
                        len(self.skipped), next(iter(self.skipped.values())))
        return {"epochs": self.epoch, "steps": self.global_step, "best_epoch": self.best_epoch,
                "best_score": self.best_score, "stopped_early": stopped_early, "last": last_record,
                "skipped_images": len(self.skipped)}


def format_record(record: dict) -> str:
    parts = [f"epoch {record['epoch']}"]
    if record.get("train_loss") is not None:
        parts.append(f"train loss {record['train_loss']:.3f} (ppl {record['train_perplexity']:.2f})")
    if record.get("scst_advantage") is not None:
        parts.append(f"self-critical advantage {record['scst_advantage']:+.3f}")
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


def split_records(records: list[ImageRecord]) -> tuple[list[ImageRecord], list[ImageRecord]]:
    train = [r for r in records if r.split == "train"]
    val = [r for r in records if r.split == "val"]
    if not train:
        raise DataError("no training images: the data has no records in the 'train' split")
    return train, val


def train(config: Config, records: list[ImageRecord], out: str | Path | None, sources: dict | None = None,
          max_minutes: float | None = None, show_progress: bool = True, features=None) -> dict:
    """Train a new model on `records` into run directory `out` (None: keep nothing on disk)."""
    train_records, val_records = split_records(records)
    vocab = Vocabulary.build((t for r in train_records for t in r.tokens), config.data.min_word_count)
    seed_everything(config.train.seed)
    device = resolve_device(config.train.device)
    model = build_model(config, vocab, pretrained=True, encoder_state=features.encoder_state() if features else None)
    if config.model.word_embeddings:
        config.model.embed_dim = model.decoder.embed.embedding_dim   # the vectors decide
    run = None
    if out is not None and dist.is_main():
        run = Run.create(out, config, vocab, sources or {})
    dist.barrier()
    train_data = make_split(train_records, model, vocab, config, features, "train", show_progress)
    val_data = make_split(val_records, model, vocab, config, features, "val", show_progress) if val_records else None
    trainer = Trainer(config, run, model, vocab, train_data, val_data, device, show_progress)
    summary = trainer.fit(max_minutes if max_minutes is not None else config.train.max_minutes)
    summary.update(vocab_size=len(vocab), train_images=len(train_records), val_images=len(val_records))
    return summary


RESUME_SETTINGS = ("train.epochs", "train.scst_epochs", "train.scst_lr", "train.scst_samples", "train.max_minutes",
                   "train.checkpoint_every", "train.keep_checkpoints", "train.val_max_images", "train.val_beam_size",
                   "data.num_workers", "train.device")


def resume(path: str | Path, records: list[ImageRecord], max_minutes: float | None = None,
           show_progress: bool = True, features=None, overrides: list[str] | None = None) -> dict:
    """Continue the run in `path` from its newest good checkpoint. `overrides` may change the
    settings that do not alter what was already trained (more epochs, self-critical epochs, ...)."""
    run = Run(path)
    config, vocab = run.config(), run.vocab()
    if overrides:
        values = {}
        for item in overrides:
            key = item.split("=", 1)[0].strip()
            if key not in RESUME_SETTINGS:
                raise ConfigError(f"--set {key}: cannot change when resuming (allowed: {', '.join(RESUME_SETTINGS)})")
            values[key] = item.split("=", 1)[1] if "=" in item else ""
        config = apply_settings(config, values, where="--set ")
        atomic_write_text(run.path / "config.json", config.to_json())
    step, weights, state = run.load_checkpoint()
    train_records, val_records = split_records(records)
    if Vocabulary.build((t for r in train_records for t in r.tokens), config.data.min_word_count) != vocab:
        raise RunError(f"{run.path}: the training data differs from the data this run started with")
    device = resolve_device(config.train.device)
    model = build_model(config, vocab, pretrained=False)
    if 0 <= config.train.finetune_encoder_after <= int(state["epoch"]) and config.model.freeze_encoder:
        model.encoder.freeze(False)  # the checkpoint was taken while fine-tuning
        features = None
    train_data = make_split(train_records, model, vocab, config, features, "train", show_progress)
    val_data = make_split(val_records, model, vocab, config, features, "val", show_progress) if val_records else None
    trainer = Trainer(config, run, model, vocab, train_data, val_data, device, show_progress)
    trainer.restore(weights, state)
    # forget history written after the checkpoint (it will be recomputed identically)
    run.rewrite_history([r for r in run.history() if r["step"] <= step])
    log.info("resuming %s at epoch %d, step %d", run.path, trainer.epoch + 1, trainer.step_in_epoch)
    summary = trainer.fit(max_minutes if max_minutes is not None else config.train.max_minutes)
    summary.update(vocab_size=len(vocab), train_images=len(train_records), val_images=len(val_records))
    return summary
