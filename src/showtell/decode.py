"""Turning image features into sentences: greedy, beam search, sampling and ensembles.

Everything here is batched over images (and beams) as tensors; the only Python loop is over time
steps. Decoding knows nothing of a model's internals, only its two-call interface:

    state = model.init_state(features)            # dict of tensors, batch first
    logprobs, state, attention = model.step(words, state)   # (B,) -> (B, V), ..., (B, L) or None

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

import torch
import torch.nn.functional as F

from .vocab import END, PAD, START, UNK

NEG_INF = float("-inf")


@dataclass
class Decoded:
    """N hypotheses per image, best first."""

    sequences: torch.Tensor        # (B, N, T) word ids, <pad> after the last word, no <start>/<end>
    lengths: torch.Tensor          # (B, N) words per hypothesis
    logprobs: torch.Tensor         # (B, N) total log-probability, including that of <end> when finished
    scores: torch.Tensor           # (B, N) the ranking score: logprob / length**alpha
    finished: torch.Tensor         # (B, N) ended with <end> (False: stopped at max_length, or no hypothesis)
    attention: torch.Tensor | None = None   # (B, N, T, L) attention over the grid for each word

    def best(self) -> "Decoded":
        return Decoded(self.sequences[:, :1], self.lengths[:, :1], self.logprobs[:, :1], self.scores[:, :1],
                       self.finished[:, :1], None if self.attention is None else self.attention[:, :1])


def _mask(logprobs: torch.Tensor, block_unk: bool) -> torch.Tensor:
    logprobs = logprobs.clone()
    logprobs[..., PAD] = NEG_INF
    logprobs[..., START] = NEG_INF
    if block_unk:
        logprobs[..., UNK] = NEG_INF
    return logprobs


def _batch_size(state: dict[str, torch.Tensor]) -> int:
    return next(iter(state.values())).shape[0]


def select_state(state: dict[str, torch.Tensor], index: torch.Tensor) -> dict[str, torch.Tensor]:
    """Reorder/duplicate the batch rows of every state tensor (beam bookkeeping)."""
    return {k: v.index_select(0, index) for k, v in state.items()}


def greedy(model, features, max_length: int = 20, block_unk: bool = True, return_attention: bool = False) -> Decoded:
    """Feed the most probable word back in until <end> or `max_length` words."""
    state = model.init_state(features)
    b = _batch_size(state)
    device = next(iter(state.values())).device
    words = torch.full((b,), START, dtype=torch.long, device=device)
    sequences = torch.full((b, max_length), PAD, dtype=torch.long, device=device)
    total = torch.zeros(b, device=device)
    lengths = torch.zeros(b, dtype=torch.long, device=device)
    finished = torch.zeros(b, dtype=torch.bool, device=device)
    attention = []
    for t in range(max_length + 1):
        logprobs, state, attn = model.step(words, state)
        logprobs = _mask(logprobs, block_unk)
        if return_attention and attn is not None and t < max_length:
            attention.append(attn)
        best_lp, best = logprobs.max(dim=-1)
        active = ~finished & (lengths == t)                  # still writing
        ends = active & (best == END) & torch.isfinite(best_lp)
        if t == max_length:                                  # only <end> may follow now
            total = torch.where(ends, total + best_lp, total)
            finished |= ends
            break
        grows = active & (best != END) & torch.isfinite(best_lp)
        total = torch.where(ends | grows, total + best_lp, total)
        finished |= ends
        sequences[:, t] = torch.where(grows, best, torch.full_like(best, PAD))
        lengths = lengths + grows.long()
        if not grows.any():
            break
        words = best
    attn_tensor = None
    if return_attention and attention:
        stacked = torch.stack(attention, dim=1)              # (B, T', L)
        pad = max_length - stacked.shape[1]
        attn_tensor = F.pad(stacked, (0, 0, 0, pad)).unsqueeze(1)
    return Decoded(sequences.unsqueeze(1), lengths.unsqueeze(1), total.unsqueeze(1),
                   total.unsqueeze(1), finished.unsqueeze(1), attn_tensor)


def _normalise(logprobs: torch.Tensor, length, alpha: float) -> torch.Tensor:
    if alpha == 0.0:
        return logprobs
    if not torch.is_tensor(length):
        return logprobs / (float(length) ** alpha)
    return logprobs / length.clamp(min=1).float().pow(alpha)


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
    b = _batch_size(state)
    device = next(iter(state.values())).device
    state = select_state(state, torch.arange(b, device=device).repeat_interleave(k))
    rows = torch.arange(b, device=device)

    alive_lp = torch.full((b, k), NEG_INF, device=device)
    alive_lp[:, 0] = 0.0                                      # one live hypothesis at the start
    alive_seq = torch.zeros((b, k, 0), dtype=torch.long, device=device)
    alive_attn = None
    fin_seq = torch.full((b, n_best, max_length), PAD, dtype=torch.long, device=device)
    fin_lp = torch.full((b, n_best), NEG_INF, device=device)
    fin_score = torch.full((b, n_best), NEG_INF, device=device)
    fin_len = torch.zeros((b, n_best), dtype=torch.long, device=device)
    fin_attn = None
    words = torch.full((b * k,), START, dtype=torch.long, device=device)

    for t in range(max_length + 1):
        logprobs, state, attn = model.step(words, state)
        v = logprobs.shape[-1]
        w = min(k, v)
        candidates = alive_lp.unsqueeze(-1) + _mask(logprobs, block_unk).view(b, k, v)      # (B, K, V)
        top_lp, top_word = candidates.topk(w, dim=-1)                                        # (B, K, W)
        top_lp, top_word = top_lp.reshape(b, k * w), top_word.reshape(b, k * w)
        valid = torch.isfinite(top_lp)
        is_end = (top_word == END) & valid
        if return_attention and attn is not None:
            step_attn = attn.view(b, k, 1, -1)
            alive_attn = step_attn if alive_attn is None else torch.cat([alive_attn, step_attn], dim=2)
            if fin_attn is None:
                fin_attn = torch.zeros((b, n_best, max_length, attn.shape[-1]), device=device)

        # finished pool: keep the n_best best of (old pool + hypotheses ending now)
        end_lp = torch.where(is_end, top_lp, torch.full_like(top_lp, NEG_INF))
        end_beam = torch.div(torch.arange(k * w, device=device), w, rounding_mode="floor").expand(b, -1)
        pool_score = torch.cat([fin_score, _normalise(end_lp, t + 1, length_penalty)], dim=1)
        fin_score, pick = pool_score.topk(n_best, dim=1)
        from_new = pick >= n_best
        new_beam = end_beam.gather(1, (pick - n_best).clamp(min=0))
        old = pick.clamp(max=n_best - 1)
        new_seq = F.pad(alive_seq, (0, max_length - t), value=PAD)[rows.unsqueeze(1), new_beam]  # (B, n, T)
        fin_seq = torch.where(from_new.unsqueeze(-1), new_seq, fin_seq.gather(1, old.unsqueeze(-1).expand(-1, -1, max_length)))
        fin_lp = torch.cat([fin_lp, end_lp], dim=1).gather(1, pick)
        fin_len = torch.where(from_new, torch.full_like(fin_len, t), fin_len.gather(1, old))
        if fin_attn is not None and t > 0:
            new_attn = F.pad(alive_attn[:, :, :t], (0, 0, 0, max_length - t))[rows.unsqueeze(1), new_beam]
            old_attn = fin_attn.gather(1, old.view(b, n_best, 1, 1).expand_as(fin_attn))
            fin_attn = torch.where(from_new.view(b, n_best, 1, 1), new_attn, old_attn)
        if t == max_length:
            break

        # live hypotheses: the K best continuations that are not <end>
        go_on = torch.where(is_end | ~valid, torch.full_like(top_lp, NEG_INF), top_lp)
        alive_lp, pick = go_on.topk(k, dim=1)                                            # (B, K)
        beam = torch.div(pick, w, rounding_mode="floor")
        words = top_word.gather(1, pick)
        alive_seq = torch.cat([alive_seq[rows.unsqueeze(1), beam], words.unsqueeze(-1)], dim=-1)
        if alive_attn is not None:
            alive_attn = alive_attn[rows.unsqueeze(1), beam]
        state = select_state(state, (rows.unsqueeze(1) * k + beam).view(-1))
        words = words.view(-1)

        # a live hypothesis's log-probability only falls; its best possible score is bounded
        best_alive = alive_lp.max(dim=1).values
        bound = best_alive if length_penalty == 0 else best_alive / float(max_length + 1) ** length_penalty
        if bool((fin_score[:, -1] >= bound).all()):
            break

    # images with fewer than n_best finished hypotheses get their best unfinished ones, ranked after
    # every complete caption (a sentence cut off at max_length is a worse answer than a whole one)
    steps = alive_seq.shape[-1]
    alive_score = _normalise(alive_lp, steps, length_penalty)
    alive_order = alive_score.argsort(dim=1, descending=True)[:, :n_best]
    n_done = torch.isfinite(fin_score).sum(dim=1, keepdim=True)                         # (B, 1)
    slot = torch.arange(n_best, device=device).unsqueeze(0)
    use_alive = slot >= n_done
    alive_pick = alive_order.gather(1, (slot - n_done).clamp(min=0, max=alive_order.shape[1] - 1))
    unfinished_seq = F.pad(alive_seq, (0, max_length - steps), value=PAD)[rows.unsqueeze(1), alive_pick]
    sequences = torch.where(use_alive.unsqueeze(-1), unfinished_seq, fin_seq)
    logprobs_out = torch.where(use_alive, alive_lp.gather(1, alive_pick), fin_lp)
    scores = torch.where(use_alive, alive_score.gather(1, alive_pick), fin_score)
    lengths = torch.where(use_alive, torch.full_like(fin_len, steps), fin_len)
    found = torch.isfinite(scores)
    sequences = torch.where(found.unsqueeze(-1), sequences, torch.full_like(sequences, PAD))
    lengths = torch.where(found, lengths, torch.zeros_like(lengths))
    attention = None
    if fin_attn is not None:
        unfinished_attn = F.pad(alive_attn[:, :, :steps], (0, 0, 0, max_length - steps))[rows.unsqueeze(1), alive_pick]
        attention = torch.where(use_alive.view(b, n_best, 1, 1), unfinished_attn, fin_attn)
    return Decoded(sequences, lengths, logprobs_out, scores, ~use_alive & found, attention)


def _filter(logits: torch.Tensor, top_k: int, top_p: float) -> torch.Tensor:
    """Keep the k most likely words and/or the smallest set holding top_p of the probability."""
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
           block_unk: bool = True, generator: torch.Generator | None = None, samples_per_image: int = 1):
    """Draw captions word by word from the (tempered, filtered) distribution.

    Returns (Decoded with one hypothesis per row, token_logprobs (B*S, T+1), token_mask (B*S, T+1)).
    `Decoded.logprobs` is the model's own log-probability of the caption (its unmasked, untempered
    distribution, <end> included when finished), as greedy and beam search report it.
    `token_logprobs` is the log-probability of every chosen token under the distribution it was
    drawn from (masked, tempered, filtered), differentiable when gradients are enabled: the policy
    that self-critical training differentiates. As in greedy decoding, the word drawn after
    `max_length` words counts only if it is <end>; otherwise the sample is cut and unfinished.
    Rows are image-major: image i's samples are rows i*S .. i*S+S-1."""
    state = model.init_state(features)
    if samples_per_image > 1:
        rows = torch.arange(_batch_size(state), device=next(iter(state.values())).device)
        state = select_state(state, rows.repeat_interleave(samples_per_image))
    b = _batch_size(state)
    device = next(iter(state.values())).device
    words = torch.full((b,), START, dtype=torch.long, device=device)
    sequences = torch.full((b, max_length), PAD, dtype=torch.long, device=device)
    lengths = torch.zeros(b, dtype=torch.long, device=device)
    finished = torch.zeros(b, dtype=torch.bool, device=device)
    total = torch.zeros(b, device=device)
    token_lp, token_mask = [], []
    for t in range(max_length + 1):
        logprobs, state, _ = model.step(words, state)
        dist = F.log_softmax(_filter(_mask(logprobs, block_unk) / temperature, top_k, top_p), dim=-1)
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

    def init_state(self, features: list) -> dict[str, torch.Tensor]:
        state = {}
        for i, (model, feats) in enumerate(zip(self.models, features)):
            for key, value in model.init_state(feats).items():
                state[f"{i}.{key}"] = value
        return state

    def step(self, words: torch.Tensor, state: dict[str, torch.Tensor]):
        logprobs, new_state, attentions = [], {}, []
        for i, model in enumerate(self.models):
            own = {k.split(".", 1)[1]: v for k, v in state.items() if k.startswith(f"{i}.")}
            lp, own, attn = model.step(words, own)
            logprobs.append(lp)
            attentions.append(attn)
            new_state.update({f"{i}.{k}": v for k, v in own.items()})
        mean = torch.logsumexp(torch.stack(logprobs), dim=0) - math.log(len(self.models))
        attn = attentions[0] if len(self.models) == 1 else None
        return mean, new_state, attn


def decode(model, features, beam_size: int = 1, max_length: int = 20, length_penalty: float = 0.0,
           block_unk: bool = True, n_best: int = 1, return_attention: bool = False) -> Decoded:
    """Greedy for beam size 1, beam search otherwise."""
    if beam_size == 1:
        return greedy(model, features, max_length, block_unk, return_attention)
    return beam_search(model, features, beam_size, max_length, length_penalty, n_best, block_unk, return_attention)
