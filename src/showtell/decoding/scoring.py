"""How probable a model finds given captions: teacher forcing through the decoding interface.

`word_logprobs(decoder, features, targets)` feeds each caption's true previous word into the same
`init_state`/`step` calls that greedy, beam search and sampling use, so a caption that decoding
wrote scores exactly the log-probability decoding reported, for every decoder, for an ensemble
(which averages its models' probabilities in `step`) and for the ONNX runtime's NumPy arrays
alike. `targets` are word ids after <start>: each caption's words, then <end>, then <pad>.
`perplexity` turns a mean log-likelihood into the perplexity that training, evaluation and
`Captioner.logprob` all report.
"""

from __future__ import annotations

import math

from ..tokenizer import specials_of
from .arrays import Array, backend


def word_logprobs(decoder, features, targets: Array) -> Array:
    """(N, T) float32: log p(targets[n, t] | picture, targets[n, :t]) for every position (padding
    positions hold the log-probability of <pad>, which callers leave out)."""
    state = decoder.init_state(features)
    xp, n, device = backend(state)
    words = xp.full((n,), specials_of(decoder).start, dtype=xp.int64, device=device)
    columns = []
    for t in range(targets.shape[1]):
        logprobs, state, _ = decoder.step(words, state)
        chosen = xp.take_along_axis(xp.astype(logprobs, xp.float32), targets[:, t:t + 1], axis=1)
        columns.append(chosen[:, 0])
        words = targets[:, t]
    return xp.stack(columns, axis=1)


def perplexity(mean_nll: float) -> float:
    """exp of the mean negative log-likelihood per word (nats): the one perplexity of training,
    evaluation and `Captioner.logprob`. Exact wherever a float holds it; inf where exp overflows
    (a mean above about 709 nats), never a made-up cap: a caption the model finds absurd can score
    50 nats a word and must still show its true value."""
    try:
        return math.exp(mean_nll)
    except OverflowError:
        return math.inf
