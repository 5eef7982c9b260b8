"""Searching for the most probable caption: greedy decoding and beam search.

Everything here is batched over images (and beams) as arrays; the only Python loop is over time
steps. Decoding knows nothing of a model's internals, only its two-call interface:

    state = model.init_state(features)            # dict of arrays, batch first
    logprobs, state, attention = model.step(words, state)   # (B,) -> (B, V), ..., (B, L) or None

Greedy and beam search are written once against the array API standard (through
`array_api_compat`), so the same code decodes a PyTorch model (torch tensors, on any device) and
an exported ONNX step graph run by onnxruntime (NumPy arrays); the few operations the standard
lacks are in arrays.py. Sampling (sampling.py), which self-critical training differentiates, works
on torch tensors only; an Ensemble (ensemble.py) implements the same two calls over several models.

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

from dataclasses import dataclass

from array_api_compat import device as device_of

from ..tokenizer import specials_of
from .arrays import NEG_INF, Array, backend, mask_row, max_with_index, pad_to, select_state, topk


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



def greedy(model, features, max_length: int = 20, block_unk: bool = True, return_attention: bool = False) -> Decoded:
    """Feed the most probable word back in until <end> or `max_length` words."""
    special = specials_of(model)                             # the model's start/end/pad ids
    state = model.init_state(features)
    xp, b, device = backend(state)
    words = xp.full((b,), special.start, dtype=xp.int64, device=device)
    sequences = xp.full((b, max_length), special.pad, dtype=xp.int64, device=device)
    pad = xp.full((b,), special.pad, dtype=xp.int64, device=device)
    total = xp.zeros(b, dtype=xp.float32, device=device)
    lengths = xp.zeros(b, dtype=xp.int64, device=device)
    finished = xp.zeros(b, dtype=xp.bool, device=device)
    mask, attention = None, []
    for t in range(max_length + 1):
        logprobs, state, attn = model.step(words, state)
        mask = mask_row(xp, logprobs, block_unk, special) if mask is None else mask
        if return_attention and attn is not None and t < max_length:
            attention.append(attn)
        best_lp, best = max_with_index(xp, logprobs + mask)
        active = ~finished & (lengths == t)                  # still writing
        ends = active & (best == special.end) & xp.isfinite(best_lp)
        if t == max_length:                                  # only <end> may follow now
            total = xp.where(ends, total + best_lp, total)
            finished = finished | ends
            break
        grows = active & (best != special.end) & xp.isfinite(best_lp)
        total = xp.where(ends | grows, total + best_lp, total)
        finished = finished | ends
        sequences[:, t] = xp.where(grows, best, pad)
        lengths = lengths + xp.astype(grows, xp.int64)
        if not bool(xp.any(grows)):
            break
        words = best
    attn_out = None
    if return_attention and attention:
        attn_out = pad_to(xp, xp.stack(attention, axis=1), max_length, axis=1)[:, None]   # (B, 1, T, L)
    return Decoded(sequences[:, None], lengths[:, None], total[:, None], total[:, None], finished[:, None], attn_out)


def _normalise(logprobs: Array, length: int, alpha: float) -> Array:
    return logprobs if alpha == 0.0 else logprobs / (float(length) ** alpha)


@dataclass
class _Beams:
    """Beam search's arrays for B images: K live hypotheses and the n_best finished ones each."""
    alive_lp: Array                 # (B, K) log-probability of each live hypothesis
    alive_seq: Array                # (B, K, t) its words so far
    fin_seq: Array                  # (B, n, T) finished hypotheses' words, <pad> after
    fin_lp: Array                   # (B, n) their log-probability, <end> included
    fin_score: Array                # (B, n) their ranking score, best first
    fin_len: Array                  # (B, n) their lengths
    pad: int = 0                    # the id written after a hypothesis's last word
    alive_attn: Array | None = None  # (B, K, t, L)
    fin_attn: Array | None = None    # (B, n, T, L)


def _start(xp, b: int, k: int, n_best: int, max_length: int, device, pad: int) -> _Beams:
    alive_lp = xp.full((b, k), NEG_INF, dtype=xp.float32, device=device)
    alive_lp[:, 0] = 0.0                                      # one live hypothesis at the start
    return _Beams(alive_lp, xp.zeros((b, k, 0), dtype=xp.int64, device=device),
                  xp.full((b, n_best, max_length), pad, dtype=xp.int64, device=device),
                  xp.full((b, n_best), NEG_INF, dtype=xp.float32, device=device),
                  xp.full((b, n_best), NEG_INF, dtype=xp.float32, device=device),
                  xp.zeros((b, n_best), dtype=xp.int64, device=device), pad)


def _pool_ends(xp, beams: _Beams, top_lp, is_end, t: int, w: int, max_length: int, length_penalty: float) -> None:
    """The finished pool keeps the n_best best of (the old pool + the hypotheses ending at step t)."""
    b, kw = top_lp.shape
    n_best = beams.fin_score.shape[1]
    rows = xp.arange(b, device=device_of(top_lp))[:, None]   # x[rows, index]: per image, pick along axis 1
    end_lp = xp.where(is_end, top_lp, xp.full_like(top_lp, NEG_INF))
    end_beam = xp.broadcast_to((xp.arange(kw, device=device_of(top_lp)) // w)[None, :], (b, kw))
    beams.fin_score, pick = topk(xp.concat([beams.fin_score, _normalise(end_lp, t + 1, length_penalty)], axis=1), n_best)
    from_new = pick >= n_best
    new_beam = end_beam[rows, xp.clip(pick - n_best, 0, kw - 1)]
    old = xp.clip(pick, 0, n_best - 1)
    new_seq = pad_to(xp, beams.alive_seq, max_length, axis=2, value=beams.pad)[rows, new_beam]     # (B, n, T)
    beams.fin_seq = xp.where(from_new[:, :, None], new_seq, beams.fin_seq[rows, old])
    beams.fin_lp = xp.concat([beams.fin_lp, end_lp], axis=1)[rows, pick]
    beams.fin_len = xp.where(from_new, xp.full_like(beams.fin_len, t), beams.fin_len[rows, old])
    if beams.fin_attn is not None and t > 0:
        new_attn = pad_to(xp, beams.alive_attn[:, :, :t], max_length, axis=2)[rows, new_beam]
        beams.fin_attn = xp.where(from_new[:, :, None, None], new_attn, beams.fin_attn[rows, old])


def _keep_alive(xp, beams: _Beams, top_lp, top_word, is_end, valid, w: int):
    """The K best continuations that are not <end> stay live; returns (their words (B*K,), the
    rows of the decoder state they continue)."""
    b, k = beams.alive_lp.shape
    rows = xp.arange(b, device=device_of(top_lp))[:, None]
    go_on = xp.where(is_end | ~valid, xp.full_like(top_lp, NEG_INF), top_lp)
    beams.alive_lp, pick = topk(go_on, k)                                                    # (B, K)
    beam = pick // w
    words = top_word[rows, pick]
    beams.alive_seq = xp.concat([beams.alive_seq[rows, beam], words[:, :, None]], axis=2)
    if beams.alive_attn is not None:
        beams.alive_attn = beams.alive_attn[rows, beam]
    return xp.reshape(words, (-1,)), xp.reshape(rows * k + beam, (-1,))


def _with_unfinished(xp, beams: _Beams, max_length: int, length_penalty: float) -> Decoded:
    """The n_best hypotheses per image: images with fewer finished ones get their best unfinished
    ones, ranked after every complete caption (a sentence cut off at max_length is a worse answer
    than a whole one)."""
    b, n_best = beams.fin_score.shape
    device = device_of(beams.fin_score)
    rows = xp.arange(b, device=device)[:, None]
    steps = beams.alive_seq.shape[-1]
    alive_score = _normalise(beams.alive_lp, steps, length_penalty)
    alive_order = xp.argsort(alive_score, axis=1, descending=True, stable=True)[:, :n_best]
    n_done = xp.sum(xp.astype(xp.isfinite(beams.fin_score), xp.int64), axis=1, keepdims=True)   # (B, 1)
    slot = xp.arange(n_best, device=device)[None, :]
    use_alive = slot >= n_done
    alive_pick = alive_order[rows, xp.clip(slot - n_done, 0, alive_order.shape[1] - 1)]
    unfinished_seq = pad_to(xp, beams.alive_seq, max_length, axis=2, value=beams.pad)[rows, alive_pick]
    sequences = xp.where(use_alive[:, :, None], unfinished_seq, beams.fin_seq)
    logprobs = xp.where(use_alive, beams.alive_lp[rows, alive_pick], beams.fin_lp)
    scores = xp.where(use_alive, alive_score[rows, alive_pick], beams.fin_score)
    lengths = xp.where(use_alive, xp.full_like(beams.fin_len, steps), beams.fin_len)
    found = xp.isfinite(scores)
    sequences = xp.where(found[:, :, None], sequences, xp.full_like(sequences, beams.pad))
    lengths = xp.where(found, lengths, xp.zeros_like(lengths))
    attention = None
    if beams.fin_attn is not None:
        unfinished_attn = pad_to(xp, beams.alive_attn[:, :, :steps], max_length, axis=2)[rows, alive_pick]
        attention = xp.where(use_alive[:, :, None, None], unfinished_attn, beams.fin_attn)
    return Decoded(sequences, lengths, logprobs, scores, ~use_alive & found, attention)


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
    special = specials_of(model)                             # the model's start/end/pad ids
    state = model.init_state(features)
    xp, b, device = backend(state)
    state = select_state(state, xp.repeat(xp.arange(b, device=device), k))
    beams = _start(xp, b, k, n_best, max_length, device, special.pad)
    words = xp.full((b * k,), special.start, dtype=xp.int64, device=device)
    mask = None
    for t in range(max_length + 1):
        logprobs, state, attn = model.step(words, state)
        v = logprobs.shape[-1]
        w = min(k, v)
        mask = mask_row(xp, logprobs, block_unk, special) if mask is None else mask
        candidates = beams.alive_lp[:, :, None] + xp.reshape(logprobs + mask, (b, k, v))     # (B, K, V)
        top_lp, top_word = topk(candidates, w)                                               # (B, K, W)
        top_lp, top_word = xp.reshape(top_lp, (b, k * w)), xp.reshape(top_word, (b, k * w))
        valid = xp.isfinite(top_lp)
        is_end = (top_word == special.end) & valid
        if return_attention and attn is not None:
            step_attn = xp.reshape(attn, (b, k, 1, attn.shape[-1]))
            beams.alive_attn = step_attn if beams.alive_attn is None else xp.concat([beams.alive_attn, step_attn], axis=2)
            if beams.fin_attn is None:
                beams.fin_attn = xp.zeros((b, n_best, max_length, attn.shape[-1]), dtype=attn.dtype, device=device)
        _pool_ends(xp, beams, top_lp, is_end, t, w, max_length, length_penalty)
        if t == max_length:
            break
        words, keep = _keep_alive(xp, beams, top_lp, top_word, is_end, valid, w)
        state = select_state(state, keep, within_pictures=True)
        # a live hypothesis's log-probability only falls; its best possible score is bounded
        best_alive = xp.max(beams.alive_lp, axis=1)
        bound = best_alive if length_penalty == 0 else best_alive / float(max_length + 1) ** length_penalty
        if bool(xp.all(beams.fin_score[:, -1] >= bound)):
            break
    return _with_unfinished(xp, beams, max_length, length_penalty)


def decode(model, features, beam_size: int = 1, max_length: int = 20, length_penalty: float = 0.0,
           block_unk: bool = True, n_best: int = 1, return_attention: bool = False) -> Decoded:
    """Greedy for beam size 1, beam search otherwise."""
    if beam_size == 1:
        return greedy(model, features, max_length, block_unk, return_attention)
    return beam_search(model, features, beam_size, max_length, length_penalty, n_best, block_unk, return_attention)
