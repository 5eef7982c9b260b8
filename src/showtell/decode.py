"""Turning image features into sentences: greedy, beam search, sampling and ensembles.

Everything here is batched over images (and beams) as arrays; the only Python loop is over time
steps. Decoding knows nothing of a model's internals, only its two-call interface:

    state = model.init_state(features)            # dict of arrays, batch first
    logprobs, state, attention = model.step(words, state)   # (B,) -> (B, V), ..., (B, L) or None

Greedy and beam search are written once against the array API standard (through
`array_api_compat`), so the same code decodes a PyTorch model (torch tensors, on any device) and
an exported ONNX step graph run by onnxruntime (NumPy arrays); the few operations the standard
lacks (top-k, log-sum-exp) are the small helpers below. Sampling, which self-critical training
differentiates, works on torch tensors only.

A caption has at most `max_length` words. After `max_length` words the decoder takes one more
step in which only <end> counts: greedy ends if <end> is the best word, sampling if it draws <end>,
beam search if <end> is among a hypothesis's K best words (im2txt's rule). A hypothesis that does
not end then is returned unfinished (`finished` False, its log-probability without <end>) rather
than dropped, so a model that never emits <end> still gets captions; beam search ranks unfinished
hypotheses after every finished one. Nothing forces <end>.

<pad> and <start> are never generated; <unk> is not either when `block_unk` is set. Masking only
restricts which words can be chosen: every reported log-probability is the model's own (log
softmax over the full vocabulary), equal to teacher forcing of the same caption.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from array_api_compat import array_namespace, is_numpy_array, is_torch_array
from array_api_compat import device as device_of

from .vocab import END, PAD, START, UNK

NEG_INF = float("-inf")
Array = Any  # a torch tensor or a NumPy array (anything array_api_compat knows)


@dataclass
class Decoded:
    """N hypotheses per image, best first (arrays of the model's own kind: torch or NumPy)."""

    sequences: Array               # (B, N, T) word ids, <pad> after the last word, no <start>/<end>
    lengths: Array                 # (B, N) words per hypothesis
    logprobs: Array                # (B, N) total log-probability, including that of <end> when finished
    scores: Array                  # (B, N) the ranking score: logprob / length**alpha
    finished: Array                # (B, N) ended with <end> (False: stopped at max_length, or no hypothesis)
    attention: Array | None = None  # (B, N, T, L) attention over the grid for each word

    def best(self) -> "Decoded":
        return Decoded(self.sequences[:, :1], self.lengths[:, :1], self.logprobs[:, :1], self.scores[:, :1],
                       self.finished[:, :1], None if self.attention is None else self.attention[:, :1])


# --- the operations the array API standard lacks ---------------------------------------------------

def topk(x: Array, k: int) -> tuple[Array, Array]:
    """The k largest entries along the last axis, largest first: (values, indices). Equal values
    come lowest index first on NumPy; torch.topk's order among exact ties is its own (finite ties
    do not occur in a trained model's log-probabilities; -inf ones are never chosen words)."""
    if is_torch_array(x):
        return x.topk(k, dim=-1)
    if is_numpy_array(x):
        import numpy as np

        n = x.shape[-1]
        part = np.argpartition(-x, k - 1, axis=-1)[..., :k] if k < n else np.broadcast_to(np.arange(n), x.shape)
        values = np.take_along_axis(x, part, axis=-1)
        order = np.lexsort((part, -values), axis=-1)                   # by value, then by index
        return np.take_along_axis(values, order, axis=-1), np.take_along_axis(part, order, axis=-1)
    xp = array_namespace(x)
    index = xp.argsort(x, axis=-1, descending=True, stable=True)[..., :k]
    return xp.take_along_axis(x, index, axis=-1), index


def _max(xp, x: Array) -> tuple[Array, Array]:
    """(largest value, its index) along the last axis; the first index among equal values."""
    if is_torch_array(x):
        return x.max(dim=-1)
    index = xp.argmax(x, axis=-1)
    return xp.take_along_axis(x, index[..., None], axis=-1)[..., 0], index


def logsumexp(xp, x: Array, axis: int) -> Array:
    if is_torch_array(x):
        return x.logsumexp(dim=axis)
    top = xp.max(x, axis=axis, keepdims=True)
    top = xp.where(xp.isfinite(top), top, xp.zeros_like(top))
    return xp.squeeze(top, axis=axis) + xp.log(xp.sum(xp.exp(x - top), axis=axis))


def _backend(state: dict[str, Array]):
    """(array namespace, batch size, device) of a decoder state."""
    first = next(iter(state.values()))
    return array_namespace(first), first.shape[0], device_of(first)


def _mask_row(xp, like: Array, block_unk: bool) -> Array:
    """Added to each step's log-probabilities (B, V): -inf for the words decoding never chooses,
    0 elsewhere, so the log-probabilities of the others stay exactly the model's."""
    row = xp.zeros(like.shape[-1], dtype=like.dtype, device=device_of(like))
    for word in (PAD, START, UNK) if block_unk else (PAD, START):
        row[word] = NEG_INF
    return row


def _pad_to(xp, x: Array, length: int, axis: int, value=0) -> Array:
    """`x` extended with `value` along `axis` to `length` entries."""
    missing = length - x.shape[axis]
    if missing <= 0:
        return x
    shape = list(x.shape)
    shape[axis] = missing
    return xp.concat([x, xp.full(tuple(shape), value, dtype=x.dtype, device=device_of(x))], axis=axis)


def select_state(state: dict[str, Array], index: Array) -> dict[str, Array]:
    """Reorder/duplicate the batch rows of every state array (beam bookkeeping)."""
    return {k: v[index] for k, v in state.items()}


# --- decoding ---------------------------------------------------------------------------------------

def greedy(model, features, max_length: int = 20, block_unk: bool = True, return_attention: bool = False) -> Decoded:
    """Feed the most probable word back in until <end> or `max_length` words."""
    state = model.init_state(features)
    xp, b, device = _backend(state)
    words = xp.full((b,), START, dtype=xp.int64, device=device)
    sequences = xp.full((b, max_length), PAD, dtype=xp.int64, device=device)
    pad = xp.full((b,), PAD, dtype=xp.int64, device=device)
    total = xp.zeros(b, dtype=xp.float32, device=device)
    lengths = xp.zeros(b, dtype=xp.int64, device=device)
    finished = xp.zeros(b, dtype=xp.bool, device=device)
    mask, attention = None, []
    for t in range(max_length + 1):
        logprobs, state, attn = model.step(words, state)
        mask = _mask_row(xp, logprobs, block_unk) if mask is None else mask
        if return_attention and attn is not None and t < max_length:
            attention.append(attn)
        best_lp, best = _max(xp, logprobs + mask)
        active = ~finished & (lengths == t)                  # still writing
        ends = active & (best == END) & xp.isfinite(best_lp)
        if t == max_length:                                  # only <end> may follow now
            total = xp.where(ends, total + best_lp, total)
            finished = finished | ends
            break
        grows = active & (best != END) & xp.isfinite(best_lp)
        total = xp.where(ends | grows, total + best_lp, total)
        finished = finished | ends
        sequences[:, t] = xp.where(grows, best, pad)
        lengths = lengths + xp.astype(grows, xp.int64)
        if not bool(xp.any(grows)):
            break
        words = best
    attn_out = None
    if return_attention and attention:
        attn_out = _pad_to(xp, xp.stack(attention, axis=1), max_length, axis=1)[:, None]   # (B, 1, T, L)
    return Decoded(sequences[:, None], lengths[:, None], total[:, None], total[:, None], finished[:, None], attn_out)


def _normalise(logprobs: Array, length: int, alpha: float) -> Array:
    return logprobs if alpha == 0.0 else logprobs / (float(length) ** alpha)


def beam_search(model, features, beam_size: int = 3, max_length: int = 20, length_penalty: float = 0.0,
                n_best: int | None = None, block_unk: bool = True, return_attention: bool = False) -> Decoded:
    """Beam search as in the Show and Tell code: each of the K live hypotheses proposes its K best
    next words; those that are <end> join the finished pool (ranked by logprob / length**alpha,
    length counting <end>), the K best of the rest stay live. Stops when no live hypothesis can
    beat the n_best-th finished one. With K = 1 this is exactly greedy decoding.

    At `max_length` words (im2txt's rule): the hypotheses still alive take one more step, and only
    those whose <end> is among their K best words finish. If fewer than n_best hypotheses finished,
    the best of those alive at the limit fill the remaining places, unfinished, ranked after every
    finished one whatever their scores (a sentence cut off is a worse answer than a whole one);
    their log-probability has no <end> and their length is `max_length`."""
    k = beam_size
    n_best = min(n_best or k, k)
    state = model.init_state(features)
    xp, b, device = _backend(state)
    i64, f32 = xp.int64, xp.float32
    state = select_state(state, xp.repeat(xp.arange(b, device=device), k))
    rows = xp.arange(b, device=device)[:, None]             # x[rows, index]: per image, pick along axis 1

    alive_lp = xp.full((b, k), NEG_INF, dtype=f32, device=device)
    alive_lp[:, 0] = 0.0                                      # one live hypothesis at the start
    alive_seq = xp.zeros((b, k, 0), dtype=i64, device=device)
    alive_attn = None
    fin_seq = xp.full((b, n_best, max_length), PAD, dtype=i64, device=device)
    fin_lp = xp.full((b, n_best), NEG_INF, dtype=f32, device=device)
    fin_score = xp.full((b, n_best), NEG_INF, dtype=f32, device=device)
    fin_len = xp.zeros((b, n_best), dtype=i64, device=device)
    fin_attn = None
    words = xp.full((b * k,), START, dtype=i64, device=device)
    mask = None

    for t in range(max_length + 1):
        logprobs, state, attn = model.step(words, state)
        v = logprobs.shape[-1]
        w = min(k, v)
        mask = _mask_row(xp, logprobs, block_unk) if mask is None else mask
        candidates = alive_lp[:, :, None] + xp.reshape(logprobs + mask, (b, k, v))           # (B, K, V)
        top_lp, top_word = topk(candidates, w)                                               # (B, K, W)
        top_lp, top_word = xp.reshape(top_lp, (b, k * w)), xp.reshape(top_word, (b, k * w))
        valid = xp.isfinite(top_lp)
        is_end = (top_word == END) & valid
        if return_attention and attn is not None:
            step_attn = xp.reshape(attn, (b, k, 1, attn.shape[-1]))
            alive_attn = step_attn if alive_attn is None else xp.concat([alive_attn, step_attn], axis=2)
            if fin_attn is None:
                fin_attn = xp.zeros((b, n_best, max_length, attn.shape[-1]), dtype=attn.dtype, device=device)

        # finished pool: keep the n_best best of (old pool + hypotheses ending now)
        end_lp = xp.where(is_end, top_lp, xp.full_like(top_lp, NEG_INF))
        end_beam = xp.broadcast_to((xp.arange(k * w, device=device) // w)[None, :], (b, k * w))
        fin_score, pick = topk(xp.concat([fin_score, _normalise(end_lp, t + 1, length_penalty)], axis=1), n_best)
        from_new = pick >= n_best
        new_beam = end_beam[rows, xp.clip(pick - n_best, 0, k * w - 1)]
        old = xp.clip(pick, 0, n_best - 1)
        new_seq = _pad_to(xp, alive_seq, max_length, axis=2, value=PAD)[rows, new_beam]     # (B, n, T)
        fin_seq = xp.where(from_new[:, :, None], new_seq, fin_seq[rows, old])
        fin_lp = xp.concat([fin_lp, end_lp], axis=1)[rows, pick]
        fin_len = xp.where(from_new, xp.full_like(fin_len, t), fin_len[rows, old])
        if fin_attn is not None and t > 0:
            new_attn = _pad_to(xp, alive_attn[:, :, :t], max_length, axis=2)[rows, new_beam]
            fin_attn = xp.where(from_new[:, :, None, None], new_attn, fin_attn[rows, old])
        if t == max_length:
            break

        # live hypotheses: the K best continuations that are not <end>
        go_on = xp.where(is_end | ~valid, xp.full_like(top_lp, NEG_INF), top_lp)
        alive_lp, pick = topk(go_on, k)                                                      # (B, K)
        beam = pick // w
        words = top_word[rows, pick]
        alive_seq = xp.concat([alive_seq[rows, beam], words[:, :, None]], axis=2)
        if alive_attn is not None:
            alive_attn = alive_attn[rows, beam]
        state = select_state(state, xp.reshape(rows * k + beam, (-1,)))
        words = xp.reshape(words, (-1,))

        # a live hypothesis's log-probability only falls; its best possible score is bounded
        best_alive = xp.max(alive_lp, axis=1)
        bound = best_alive if length_penalty == 0 else best_alive / float(max_length + 1) ** length_penalty
        if bool(xp.all(fin_score[:, -1] >= bound)):
            break

    # images with fewer than n_best finished hypotheses get their best unfinished ones, ranked after
    # every complete caption (a sentence cut off at max_length is a worse answer than a whole one)
    steps = alive_seq.shape[-1]
    alive_score = _normalise(alive_lp, steps, length_penalty)
    alive_order = xp.argsort(alive_score, axis=1, descending=True, stable=True)[:, :n_best]
    n_done = xp.sum(xp.astype(xp.isfinite(fin_score), i64), axis=1, keepdims=True)          # (B, 1)
    slot = xp.arange(n_best, device=device)[None, :]
    use_alive = slot >= n_done
    alive_pick = alive_order[rows, xp.clip(slot - n_done, 0, alive_order.shape[1] - 1)]
    unfinished_seq = _pad_to(xp, alive_seq, max_length, axis=2, value=PAD)[rows, alive_pick]
    sequences = xp.where(use_alive[:, :, None], unfinished_seq, fin_seq)
    logprobs_out = xp.where(use_alive, alive_lp[rows, alive_pick], fin_lp)
    scores = xp.where(use_alive, alive_score[rows, alive_pick], fin_score)
    lengths = xp.where(use_alive, xp.full_like(fin_len, steps), fin_len)
    found = xp.isfinite(scores)
    sequences = xp.where(found[:, :, None], sequences, xp.full_like(sequences, PAD))
    lengths = xp.where(found, lengths, xp.zeros_like(lengths))
    attention = None
    if fin_attn is not None:
        unfinished_attn = _pad_to(xp, alive_attn[:, :, :steps], max_length, axis=2)[rows, alive_pick]
        attention = xp.where(use_alive[:, :, None, None], unfinished_attn, fin_attn)
    return Decoded(sequences, lengths, logprobs_out, scores, ~use_alive & found, attention)


def _filter(logits, top_k: int, top_p: float):
    """Keep the k most likely words and/or the smallest set holding top_p of the probability (torch)."""
    if top_k and top_k < logits.shape[-1]:
        kth = logits.topk(top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, NEG_INF)
    if top_p < 1.0:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        probs = sorted_logits.softmax(dim=-1)
        before = probs.cumsum(dim=-1) - probs                # mass of the words ranked above
        drop = before >= top_p
        drop[..., 0] = False                                 # always keep the most likely word
        logits = logits.masked_fill(drop.scatter(-1, order, drop), NEG_INF)
    return logits


def sample(model, features, max_length: int = 20, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
           block_unk: bool = True, generator=None, samples_per_image: int = 1):
    """Draw captions word by word from the (tempered, filtered) distribution. PyTorch models only
    (it draws with torch's generator and keeps the graph for self-critical training).

    Returns (Decoded with one hypothesis per row, token_logprobs (B*S, T+1), token_mask (B*S, T+1)).
    `Decoded.logprobs` is the model's own log-probability of the caption (its unmasked, untempered
    distribution, <end> included when finished), as greedy and beam search report it.
    `token_logprobs` is the log-probability of every chosen token under the distribution it was
    drawn from (masked, tempered, filtered), differentiable when gradients are enabled: the policy
    that self-critical training differentiates. As in greedy decoding, the word drawn after
    `max_length` words counts only if it is <end>; otherwise the sample is cut and unfinished.
    Rows are image-major: image i's samples are rows i*S .. i*S+S-1."""
    import torch
    import torch.nn.functional as F

    state = model.init_state(features)
    if samples_per_image > 1:
        rows = torch.arange(next(iter(state.values())).shape[0], device=next(iter(state.values())).device)
        state = select_state(state, rows.repeat_interleave(samples_per_image))
    b = next(iter(state.values())).shape[0]
    device = next(iter(state.values())).device
    words = torch.full((b,), START, dtype=torch.long, device=device)
    sequences = torch.full((b, max_length), PAD, dtype=torch.long, device=device)
    lengths = torch.zeros(b, dtype=torch.long, device=device)
    finished = torch.zeros(b, dtype=torch.bool, device=device)
    total = torch.zeros(b, device=device)
    token_lp, token_mask, mask = [], [], None
    for t in range(max_length + 1):
        logprobs, state, _ = model.step(words, state)
        mask = _mask_row(torch, logprobs, block_unk) if mask is None else mask
        dist = F.log_softmax(_filter((logprobs + mask) / temperature, top_k, top_p), dim=-1)
        drawn = torch.multinomial(dist.detach().exp(), 1, generator=generator).squeeze(1)
        active = ~finished
        ends = active & (drawn == END)
        grows = active & (drawn != END) & (t < max_length)   # a word after max_length that is not <end> is cut
        counts = ends | grows
        token_lp.append(dist.gather(1, drawn.unsqueeze(1)).squeeze(1))
        token_mask.append(counts)
        own = logprobs.detach().gather(1, drawn.unsqueeze(1)).squeeze(1)
        total = torch.where(counts, total + own, total)
        finished |= ends
        if t < max_length:
            sequences[:, t] = torch.where(grows, drawn, torch.full_like(drawn, PAD))
        lengths = lengths + grows.long()
        if not bool(grows.any()):
            break
        words = drawn
    token_logprobs = torch.stack(token_lp, dim=1)
    mask = torch.stack(token_mask, dim=1)
    token_logprobs = torch.where(mask, token_logprobs, torch.zeros_like(token_logprobs))
    decoded = Decoded(sequences.unsqueeze(1), lengths.unsqueeze(1), total.unsqueeze(1), total.unsqueeze(1),
                      finished.unsqueeze(1))
    return decoded, token_logprobs, mask


class Ensemble:
    """Several models decoding as one: their word probabilities are averaged at every step.
    Each model keeps its own state; `features` is a list with one entry per model (they may use
    different encoders and image sizes)."""

    def __init__(self, models):
        self.models = list(models)

    def init_state(self, features: list) -> dict[str, Array]:
        state = {}
        for i, (model, feats) in enumerate(zip(self.models, features)):
            for key, value in model.init_state(feats).items():
                state[f"{i}.{key}"] = value
        return state

    def step(self, words: Array, state: dict[str, Array]):
        logprobs, new_state, attentions = [], {}, []
        for i, model in enumerate(self.models):
            own = {k.split(".", 1)[1]: v for k, v in state.items() if k.startswith(f"{i}.")}
            lp, own, attn = model.step(words, own)
            logprobs.append(lp)
            attentions.append(attn)
            new_state.update({f"{i}.{k}": v for k, v in own.items()})
        xp = array_namespace(logprobs[0])
        mean = logsumexp(xp, xp.stack(logprobs), axis=0) - math.log(len(self.models))
        attn = attentions[0] if len(self.models) == 1 else None
        return mean, new_state, attn


def decode(model, features, beam_size: int = 1, max_length: int = 20, length_penalty: float = 0.0,
           block_unk: bool = True, n_best: int = 1, return_attention: bool = False) -> Decoded:
    """Greedy for beam size 1, beam search otherwise."""
    if beam_size == 1:
        return greedy(model, features, max_length, block_unk, return_attention)
    return beam_search(model, features, beam_size, max_length, length_penalty, n_best, block_unk, return_attention)
