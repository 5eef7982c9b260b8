"""Drawing captions at random from the model (PyTorch models only): for `caption --sample`, and
for self-critical training, which differentiates the log-probabilities of what it drew."""

from __future__ import annotations

from ..tokenizer import specials_of
from .arrays import NEG_INF, mask_row, select_state
from .search import Decoded


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

    special = specials_of(model)
    state = model.init_state(features)
    if samples_per_image > 1:
        rows = torch.arange(next(iter(state.values())).shape[0], device=next(iter(state.values())).device)
        state = select_state(state, rows.repeat_interleave(samples_per_image))
    b = next(iter(state.values())).shape[0]
    device = next(iter(state.values())).device
    words = torch.full((b,), special.start, dtype=torch.long, device=device)
    sequences = torch.full((b, max_length), special.pad, dtype=torch.long, device=device)
    lengths = torch.zeros(b, dtype=torch.long, device=device)
    finished = torch.zeros(b, dtype=torch.bool, device=device)
    total = torch.zeros(b, device=device)
    token_lp, token_mask, mask = [], [], None
    for t in range(max_length + 1):
        logprobs, state, _ = model.step(words, state)
        mask = mask_row(torch, logprobs, block_unk, special) if mask is None else mask
        dist = F.log_softmax(_filter((logprobs + mask) / temperature, top_k, top_p), dim=-1)
        drawn = torch.multinomial(dist.detach().exp(), 1, generator=generator).squeeze(1)
        active = ~finished
        ends = active & (drawn == special.end)
        grows = active & (drawn != special.end) & (t < max_length)   # a word after max_length that is not <end> is cut
        counts = ends | grows
        token_lp.append(dist.gather(1, drawn.unsqueeze(1)).squeeze(1))
        token_mask.append(counts)
        own = logprobs.detach().gather(1, drawn.unsqueeze(1)).squeeze(1)
        total = torch.where(counts, total + own, total)
        finished |= ends
        if t < max_length:
            sequences[:, t] = torch.where(grows, drawn, torch.full_like(drawn, special.pad))
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



def rank_samples(out: Decoded, n: int) -> Decoded:
    """`sample`'s (B*n, 1) rows as (B, n) hypotheses per picture, ranked as beam search ranks:
    finished samples first (a cut one lacks its <end> term, so its log-probability is not
    comparable), each group most probable first."""
    import torch

    batch = out.sequences.shape[0] // n
    shape = lambda x: x.view(batch, n, *x.shape[2:])  # noqa: E731
    sequences, lengths, logprobs, finished = (shape(x) for x in (out.sequences, out.lengths, out.logprobs, out.finished))
    by_logprob = logprobs.view(batch, n).argsort(dim=1, descending=True, stable=True)
    done_first = finished.view(batch, n).gather(1, by_logprob).to(torch.uint8).argsort(dim=1, descending=True, stable=True)
    order = by_logprob.gather(1, done_first)
    pick = lambda x: x.gather(1, order.view(batch, n, *([1] * (x.dim() - 2))).expand_as(x))  # noqa: E731
    sequences, lengths, logprobs, finished = (pick(x) for x in (sequences, lengths, logprobs, finished))
    return Decoded(sequences, lengths, logprobs, logprobs, finished)
