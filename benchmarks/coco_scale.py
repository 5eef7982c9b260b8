"""COCO at its real size, without COCO: a generated Karpathy-format annotation file (and optionally a
feature cache in `showtell prepare`'s format), and the data-path figures of issue 14 measured on it.

    python benchmarks/coco_scale.py                       # annotations + a 2% grid cache, all figures
    python benchmarks/coco_scale.py --generate-only --out DIR
    python benchmarks/coco_scale.py --grid-fraction 1     # the whole 25 GB attention cache

The annotations have COCO's Karpathy split sizes (113,287 train incl. restval, 5,000 val, 5,000 test;
616,767 captions: 5 per picture, a few with 6 or 7), caption lengths of mean about 10.5 words, and
words drawn from a Zipf-Mandelbrot law over 29,000 made-up words, fitted so that about 25,000 distinct
words occur in the training captions and about 10,000 of them occur at least 5 times (the vocabulary
at min_word_count=5). Everything is a function of --seed.

The feature cache holds --grid-fraction of the pictures (every split in proportion): 2048-d global
vectors and 7x7x2048 grids in float16, random values, written in exactly prepare's layout.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

SPLIT_SIZES = {"train": 82_783, "restval": 30_504, "val": 5_000, "test": 5_000}
CAPTIONS = 616_767
WORD_TYPES, ZIPF_S, ZIPF_Q = 29_000, 1.52, 2.0
GLOBAL_DIM, GRID = 2048, (49, 2048)


# ---------------------------------------------------------------------------------------------
# generation

def make_words(n: int, rng: np.random.Generator) -> list[str]:
    """`n` distinct pronounceable lower-case words, short ones first (frequent words are short)."""
    consonants, vowels = "bcdfghjklmnprstvwz", "aeiou"
    syllables = [c + v for c in consonants for v in vowels]   # 90
    words, seen = [], set()
    length = 1
    while len(words) < n:
        for _ in range(4 * n):
            word = "".join(syllables[i] for i in rng.integers(0, len(syllables), length))
            if rng.random() < 0.3:
                word += consonants[rng.integers(0, len(consonants))]
            if word not in seen:
                seen.add(word)
                words.append(word)
                if len(words) == n or len(words) >= 60 * length ** 3:
                    break
        length += 1
    return words


def caption_counts(n_images: int, n_captions: int, rng: np.random.Generator) -> np.ndarray:
    """5 captions per picture; the extra ones go to a few pictures as 6th and 7th captions."""
    counts = np.full(n_images, 5, dtype=np.int64)
    extra = max(0, n_captions - 5 * n_images)
    sevens = -(-extra // 20)   # about 1 in 20 of the extra captions is a 7th
    sixes = extra - 2 * sevens
    chosen = rng.choice(n_images, size=sixes + sevens, replace=False)
    counts[chosen[:sixes]] = 6
    counts[chosen[sixes:]] = 7
    return counts


def generate(scale: float = 1.0, seed: int = 0) -> dict:
    """The Karpathy-format dict (`dataset_coco.json`'s shape) at `scale` times COCO's size."""
    rng = np.random.default_rng(seed)
    sizes = {split: max(1, round(n * scale)) for split, n in SPLIT_SIZES.items()}
    n_images = sum(sizes.values())
    counts = caption_counts(n_images, round(CAPTIONS * n_images / sum(SPLIT_SIZES.values())), rng)
    n_captions = int(counts.sum())
    # lengths: at least 7 words, mean 10.5, a long thin tail (COCO's Karpathy tokens: 10.5 +- 2.4)
    lengths = np.minimum(7 + rng.poisson(3.5, n_captions), 50)
    ranks = np.arange(1, WORD_TYPES + 1)
    p = (ranks + ZIPF_Q) ** -ZIPF_S
    words = np.array(make_words(WORD_TYPES, rng), dtype=object)
    tokens = words[rng.choice(WORD_TYPES, size=int(lengths.sum()), p=p / p.sum())].tolist()
    splits = [s for s, n in sizes.items() for _ in range(n)]
    images, t, c = [], 0, 0
    for i in range(n_images):
        split = splits[i]
        folder = "val2014" if split in ("val", "test", "restval") else "train2014"
        cocoid = 100_000 + i
        sentences = []
        for _ in range(counts[i]):
            toks = tokens[t:t + lengths[c]]
            t += lengths[c]
            raw = " ".join(toks)
            sentences.append({"tokens": toks, "raw": raw[0].upper() + raw[1:] + ".", "imgid": i, "sentid": c})
            c += 1
        images.append({"filepath": folder, "sentids": list(range(c - len(sentences), c)),
                       "filename": f"COCO_{folder}_{cocoid:012d}.jpg", "imgid": i, "split": split,
                       "sentences": sentences, "cocoid": cocoid})
    return {"images": images, "dataset": "coco"}


def write_annotations(path: Path, scale: float = 1.0, seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(generate(scale, seed)), encoding="utf-8")
    return path


def write_feature_cache(out: Path, annotations: Path, fraction: float, seed: int = 0, grid: bool = True) -> Path:
    """A complete feature cache in `prepare`'s format for `fraction` of the pictures (each split in
    proportion), with random float16 features."""
    import torch

    from showtell.data.features import FORMAT, open_for_writing, record_dict
    from showtell.data.formats import read_annotations
    from showtell.fileio import atomic_write_text
    from showtell.models.encoder import Encoder
    from showtell.vocab import Vocabulary

    records = read_annotations(str(annotations), annotations.parent)
    rng = np.random.default_rng(seed)
    keep = np.sort(rng.choice(len(records), size=max(8, round(fraction * len(records))), replace=False))
    records = [records[i] for i in keep]
    outputs = ["global", "grid"] if grid else ["global"]
    shapes = {"global": (len(records), GLOBAL_DIM), "grid": (len(records), *GRID)}
    manifest = {"format": FORMAT, "outputs": outputs, "records": [record_dict(r) for r in records],
                "sources": [str(annotations)], "shapes": {k: list(shapes[k]) for k in outputs},
                "encoder": {"encoder": "resnet50", "encoder_weights": "none", "image_size": 224}}
    vocab = Vocabulary.build((t for r in records if r.split == "train" for t in r.tokens), 5)
    # the real encoder's weights, so a run trained from this cache loads like one from prepare
    encoder = Encoder("resnet50", "none", 224)
    open_for_writing(out, manifest, shapes, vocab, encoder.state_dict())
    for name in outputs:
        array = np.load(out / f"{name}.npy", mmap_mode="r+")
        step = max(1, (64 << 20) // (array[0].nbytes))
        for start in range(0, len(array), step):
            block = rng.standard_normal((min(step, len(array) - start), *array.shape[1:]), dtype=np.float32)
            array[start:start + len(block)] = np.abs(block).astype(np.float16)   # post-ReLU, like ResNet's
        array.flush()
        del array
    done = np.load(out / "done.npy", mmap_mode="r+")
    done[:] = 1
    done.flush()
    atomic_write_text(out / "complete.json", json.dumps({"images": len(records), "bad": {}}) + "\n")
    del torch
    return out


def expected_vocabulary(n_tokens: float, min_word_count: int = 5) -> tuple[float, float]:
    """(distinct words, words seen at least `min_word_count` times) expected in `n_tokens` draws
    from the word law: each word's count is Poisson."""
    from math import factorial

    ranks = np.arange(1, WORD_TYPES + 1)
    p = (ranks + ZIPF_Q) ** -ZIPF_S
    lam = n_tokens * p / p.sum()
    below = np.exp(-lam) * sum(lam ** k / factorial(k) for k in range(min_word_count))
    return float((1 - np.exp(-lam)).sum()), float((1 - below).sum())


def statistics(path: Path, min_word_count: int = 5) -> dict:
    """What the issue asks of the file: split sizes, captions per picture, lengths, vocabulary."""
    from collections import Counter

    data = json.loads(path.read_text(encoding="utf-8"))
    splits = Counter(item["split"] for item in data["images"])
    per_image = Counter(len(item["sentences"]) for item in data["images"])
    lengths = [len(s["tokens"]) for item in data["images"] for s in item["sentences"]]
    train_tokens = sum(len(s["tokens"]) for item in data["images"] if item["split"] in ("train", "restval")
                       for s in item["sentences"])
    words = Counter(w for item in data["images"] if item["split"] in ("train", "restval")
                    for s in item["sentences"] for w in s["tokens"])
    return {"images": len(data["images"]), "splits": dict(splits), "captions": len(lengths),
            "captions_per_image": dict(sorted(per_image.items())), "mean_length": float(np.mean(lengths)),
            "train_tokens": train_tokens, "raw_words": len(words),
            "kept_words": sum(1 for c in words.values() if c >= min_word_count)}


# ---------------------------------------------------------------------------------------------
# measurement

def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
