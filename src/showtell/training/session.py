"""What one training process works with: the data of both splits, the model on its device, DDP."""

from __future__ import annotations

import logging
import math
import random
from dataclasses import dataclass, replace

import numpy as np
import torch

from ..config import Config
from ..data.batching import CaptionTable, ImageSet
from ..data.formats import ImageRecord
from ..device import cpu_has_native_bf16, ensure_threads, resolve_device
from ..errors import DataError
from ..models.caption_model import CaptionModel
from ..run import Run
from ..vocab import Vocabulary
from . import distributed as dist

log = logging.getLogger("showtell")


CACHE_LIMIT_BYTES = 2 << 30


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


def open_session(config: Config, run: Run | None, model: CaptionModel, vocab: Vocabulary, records: list[ImageRecord],
                 features, show_progress: bool) -> Session:
    """The session for `model`: device, data of both splits, DDP. Shared by train and resume, so
    it is where the library configures train.threads when the CLI has not (device.ensure_threads)."""
    ensure_threads(config.train.threads)
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
