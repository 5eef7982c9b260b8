"""Decoding and scoring a split with a PyTorch model: decoded captions, coco-caption scores, perplexity.

This is training's validation, not `showtell evaluate`'s code. Both score captions the model
actually writes (greedy or beam search with the run's decode settings, decoding.search.decode),
never teacher-forced predictions, so the number that picks the best checkpoint is measured the
way the final one is. What differs, and why:
- the model: validation decodes the model being trained, in memory, on the session's device and
  in train.precision (autocast); evaluate loads the saved run through the Captioner;
- the pictures: validation reads the session's ImageSet or cached features through the training
  loader; evaluate reads the files (or a feature cache) of a --data split;
- the scores: BLEU-4 and CIDEr-D with the Python PTB tokeniser (no JVM start each epoch) on at
  most train.val_max_images pictures; evaluate scores every metric, the human bound and CHAIR;
- the perplexity: the model's own teacher-forced loss here, evaluate's from Captioner.score;
  both through decoding.scoring.perplexity.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch

from ..data.batching import CaptionTable, features_of, make_loader
from ..decoding.captions import CaptionResult, hypotheses_from, result_from
from ..decoding.scoring import perplexity
from ..decoding.search import decode
from ..device import autocast
from ..vocab import Vocabulary
from .metrics import score_captions

log = logging.getLogger("showtell")
SAMPLES = 3   # validation captions kept in each history line (the model card and TensorBoard show them)


@torch.no_grad()
def caption_images(model, images, device: torch.device, beam_size: int = 1, max_length: int = 20,
                   length_penalty: float = 0.0, block_unk: bool = True, n_best: int = 1, batch_size: int = 64,
                   vocab: Vocabulary | None = None, precision: str = "fp32", return_attention: bool = False,
                   num_workers: int = 0, progress=None, indices: Sequence[int] | None = None) -> list[CaptionResult]:
    """Decode every picture of an ImageSet (or feature set) in batches, in order."""
    model.eval()
    order = list(indices) if indices is not None else list(range(len(images)))
    batches = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    results: dict[int, CaptionResult] = {}
    source = lambda i: str(images.records[i].path)  # noqa: E731
    for ids, batch, bad in make_loader(images, batches, num_workers):
        for index, message in bad:
            results[index] = CaptionResult(source(index), error=message)
        if batch is not None:
            with autocast(device, precision):
                feats = features_of(model, batch, device)
                out = decode(model, feats, beam_size, max_length, length_penalty, block_unk,
                             n_best=n_best, return_attention=return_attention)
            for index, hyps in zip(ids.tolist(), hypotheses_from(out, vocab, return_attention)):
                results[index] = result_from(source(index), hyps)
        if progress:
            progress(len(ids) + len(bad))
    return [results[i] for i in order]


@torch.no_grad()
def teacher_forced_nll(model, images, table: CaptionTable, device: torch.device, batch_size: int = 64,
                       precision: str = "fp32", indices: Sequence[int] | None = None) -> tuple[float, int]:
    """Total negative log-likelihood (nats) of all captions of the pictures, and their word count
    (including each caption's <end>)."""
    model.eval()
    order = list(indices) if indices is not None else list(range(len(images)))
    batches = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    total, words = 0.0, 0
    for ids, batch, _ in make_loader(images, batches, 0):
        if batch is None:
            continue
        counts = [table.counts[i] for i in ids.tolist()]
        rows = [table.offsets[i] + c for i, n in zip(ids.tolist(), counts) for c in range(n)]
        tokens = table.batch(rows).to(device)
        with autocast(device, precision):
            feats = features_of(model, batch, device)
            feats = {k: v.repeat_interleave(torch.tensor(counts, device=v.device), dim=0) for k, v in feats.items()}
            out = model(tokens, features=feats)
        total += float(out.nll)
        words += out.words
    return total, words


def split_scores(results: Sequence[CaptionResult], references: Sequence[Sequence[str]],
                 metrics: Sequence[str], use_java: bool | None = None):
    """coco-caption scores of the best captions of the readable pictures; returns (scores,
    per-image scores keyed by position in `results`)."""
    keys = [str(i) for i, r in enumerate(results) if r.error is None]
    return score_captions({k: references[int(k)] for k in keys}, {k: results[int(k)].caption for k in keys},
                          metrics, use_java)


def validation_scores(model, images, table: CaptionTable, references: Sequence[Sequence[str]], vocab: Vocabulary,
                      device: torch.device, beam_size: int, max_length: int, precision: str = "fp32",
                      limit: int | None = None, length_penalty: float = 0.0, block_unk: bool = True) -> dict[str, float]:
    """Loss, perplexity, and BLEU-4/CIDEr-D of decoded captions on (at most `limit` of) a split,
    decoded with the same settings as `evaluate` uses. Uses the Python PTB tokeniser: no JVM
    start per epoch, same tokens on ordinary captions."""
    indices = list(range(min(len(images), limit or len(images))))
    nll, words = teacher_forced_nll(model, images, table, device, precision=precision, indices=indices)
    results = caption_images(model, images, device, beam_size, max_length, length_penalty, block_unk, vocab=vocab,
                             precision=precision, indices=indices)
    scores, _ = split_scores(results, [references[i] for i in indices], ("Bleu_4", "CIDEr"), use_java=False)
    loss = nll / max(words, 1)
    distinct = len({r.caption for r in results if r.error is None})
    samples = [{"file": images.records[i].path.name, "caption": r.caption, "reference": references[i][0]}
               for i, r in zip(indices, results) if r.error is None][:SAMPLES]
    return {"val_loss": loss, "val_perplexity": perplexity(loss), **{f"val_{k}": v for k, v in scores.items()},
            "val_distinct_captions": distinct, "val_images": len(results), "val_samples": samples}
