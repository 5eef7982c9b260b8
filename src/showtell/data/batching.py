"""From records to training batches.

A batch is a set of images, each with `captions_per_image` of its captions, so the CNN runs once
per image however many captions it has. The order of images and the captions drawn for each are
a pure function of (seed, epoch): a run resumed mid-epoch replays exactly the batches it had not
seen yet, and every rank of a distributed run agrees on the global batch without talking.

Pictures come from one of three sources, all returning uint8 tensors or features by index:
files decoded on the fly (DataLoader workers), an in-memory cache of decoded pictures (small
datasets), or a feature cache written by `showtell prepare`.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from itertools import chain, repeat

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from ..errors import ImageError
from ..vocab import END, PAD, START, UNK, Vocabulary
from .formats import ImageRecord
from .images import DEFAULT_MAX_PIXELS, ImageTransform, load_tensor


class CaptionTable:
    """Every caption of a list of records as token ids: `ids` (N, T) padded, and for image i its
    captions are rows offsets[i] .. offsets[i] + counts[i] - 1."""

    def __init__(self, records: Sequence[ImageRecord], vocab: Vocabulary, max_words: int):
        # [<start>, w1 .. wn, <end>] per caption as Vocabulary.encode writes it, built as one flat
        # array of word ids placed with one indexed write (a row-by-row loop takes seconds at COCO size)
        cut = max_words or None
        captions = [tokens if cut is None or len(tokens) <= cut else tokens[:cut] for r in records for tokens in r.tokens]
        self.counts = [len(r.tokens) for r in records]
        self.offsets = [0]
        for c in self.counts[:-1]:
            self.offsets.append(self.offsets[-1] + c)
        if not isinstance(vocab, Vocabulary):   # a subword tokenizer (tokenizer.py): caption by caption
            self._encode_each(captions, vocab)
            return
        lengths = np.fromiter(map(len, captions), dtype=np.int64, count=len(captions))
        words = np.fromiter(map(vocab.index.get, chain.from_iterable(captions), repeat(UNK)),
                            dtype=np.int64, count=int(lengths.sum()))
        width = int(lengths.max()) + 2 if len(captions) else 2
        ids = np.full((len(captions), width), PAD, dtype=np.int64)
        ids[:, 0] = START
        rows = np.repeat(np.arange(len(captions), dtype=np.int32), lengths)
        columns = np.arange(1, len(words) + 1, dtype=np.int32)
        columns -= np.repeat((np.cumsum(lengths) - lengths).astype(np.int32), lengths)
        ids[rows, columns] = words
        ids[np.arange(len(captions)), lengths + 1] = END
        self.ids = torch.from_numpy(ids)
        self.widths = torch.from_numpy(lengths + 2)   # <start> .. <end> per caption

    def _encode_each(self, captions, tokenizer) -> None:
        encoded = [tokenizer.encode(c) for c in captions]
        widths = np.fromiter(map(len, encoded), dtype=np.int64, count=len(encoded))
        ids = np.full((len(encoded), int(widths.max()) if len(encoded) else 2), tokenizer.specials.pad, dtype=np.int64)
        for row, caption in enumerate(encoded):
            ids[row, :len(caption)] = caption
        self.ids, self.widths = torch.from_numpy(ids), torch.from_numpy(widths)

    def rows_for(self, image: int, chosen: Sequence[int]) -> list[int]:
        return [self.offsets[image] + c for c in chosen]

    def batch(self, rows: Sequence[int]) -> torch.Tensor:
        """(len(rows), T') token ids, trimmed to the longest caption of the batch."""
        ids = self.ids[list(rows)]
        length = int(self.widths[list(rows)].max())
        return ids[:, :length]


def epoch_order(n_images: int, seed: int, epoch: int, shuffle: bool = True) -> list[int]:
    order = list(range(n_images))
    if shuffle:
        random.Random(f"order/{seed}/{epoch}").shuffle(order)
    return order


def epoch_batches(n_images: int, batch_size: int, seed: int, epoch: int, shuffle: bool = True,
                  drop_last: bool = False) -> list[list[int]]:
    order = epoch_order(n_images, seed, epoch, shuffle)
    batches = [order[i:i + batch_size] for i in range(0, n_images, batch_size)]
    if drop_last and batches and len(batches[-1]) < batch_size and len(batches) > 1:
        batches.pop()
    return batches


def choose_captions(count: int, per_image: int, seed: int, epoch: int, image: int) -> list[int]:
    """`per_image` caption indices of one image for one epoch: a shuffled pass over its captions,
    repeated when it has fewer."""
    rng = random.Random(f"captions/{seed}/{epoch}/{image}")
    chosen = []
    while len(chosen) < per_image:
        block = list(range(count))
        rng.shuffle(block)
        chosen += block
    return chosen[:per_image]


class ImageSet(Dataset):
    """Pictures of `records` as uint8 tensors; a bad picture yields its error instead of failing."""

    def __init__(self, records: Sequence[ImageRecord], transform: ImageTransform,
                 max_pixels: int = DEFAULT_MAX_PIXELS):
        self.records = list(records)
        self.transform = transform
        self.max_pixels = max_pixels
        self.cache: torch.Tensor | None = None    # (N, 3, side, side) uint8 once pictures are kept
        self.cached: torch.Tensor | None = None   # (N,) bool: which rows of `cache` hold their picture
        self.bad: dict[int, str] = {}             # pictures known to be unusable

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int):
        if index in self.bad:
            return index, None, self.bad[index]
        if self.cached is not None and self.cached[index]:
            return index, self.cache[index], None
        try:
            return index, load_tensor(self.records[index].path, self.transform, self.max_pixels), None
        except ImageError as error:
            return index, None, str(error)

    def keep_decoded(self) -> None:
        """From now on keep each picture once it is decoded: the first pass over the set decodes as
        it goes (training starts at once instead of after decoding every picture), later passes
        read memory. The block's pages are only touched as pictures arrive."""
        side = self.transform.crop
        self.cache = torch.empty((len(self.records), 3, side, side), dtype=torch.uint8)
        self.cached = torch.zeros(len(self.records), dtype=torch.bool)

    def remembering(self, batches):
        """Pass a loader's batches through, keeping their pictures (and which ones are unreadable).
        Batches decoded by DataLoader workers are kept by this process, which receives them;
        workers started later (each epoch's) inherit them."""
        for ids, pictures, bad in batches:
            if pictures is not None and len(ids):
                self.cache[ids] = pictures
                self.cached[ids] = True
            self.bad.update(bad)
            yield ids, pictures, bad


def _stack(tensors: list[torch.Tensor]) -> torch.Tensor:
    """torch.stack, without the copy when the tensors are the rows of one block in order (a
    FeatureSet reads a whole batch as one block and hands out its rows)."""
    base = tensors[0]._base
    if (base is not None and base.shape[0] == len(tensors) and base.is_contiguous()
            and all(t._base is base and t.storage_offset() == base.storage_offset() + i * base.stride(0)
                    and t.shape == base.shape[1:] for i, t in enumerate(tensors))):
        return base
    return torch.stack(tensors)


def collate(items):
    """Stack the good pictures (uint8 tensors, or dicts of cached feature tensors); report the
    bad ones by index with their messages."""
    good = [(i, x) for i, x, err in items if err is None]
    bad = [(i, err) for i, _, err in items if err is not None]
    if not good:
        return torch.empty(0, dtype=torch.long), None, bad
    first = good[0][1]
    if isinstance(first, dict):
        stacked = {k: _stack([x[k] for _, x in good]) for k in first}
    else:
        stacked = torch.stack([x for _, x in good])
    return torch.tensor([i for i, _ in good]), stacked, bad


def make_loader(images: Dataset, batches: list[list[int]], num_workers: int, pin_memory: bool = False):
    """An iterable that yields exactly `batches` (lists of indices) as (ids, pictures, bad), in order;
    an ImageSet that keeps its pictures keeps those it has not seen yet on the way."""
    # a private generator: creating a loader must not consume the global RNG (exact resume)
    loader = DataLoader(images, batch_sampler=batches, num_workers=num_workers, collate_fn=collate,
                        pin_memory=pin_memory, generator=torch.Generator())
    if isinstance(images, ImageSet) and images.cached is not None and not bool(images.cached.all()):
        return images.remembering(loader)
    return loader


def to_device(batch, device: torch.device):
    """A batch (uint8 pictures, or a dict of cached features) on `device`."""
    if isinstance(batch, dict):
        return {k: v.to(device, non_blocking=True) for k, v in batch.items()}
    return batch.to(device, non_blocking=True)


def features_of(model, batch, device: torch.device) -> dict[str, torch.Tensor]:
    """Encoder features of a batch of uint8 pictures (`model.encode`), or the batch itself if it
    is cached features: what every training step and validation batch starts from."""
    batch = to_device(batch, device)
    if isinstance(batch, dict):
        return {k: v.float() for k, v in batch.items()}
    return model.encode(batch)
