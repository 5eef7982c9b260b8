"""What captioning returns: hypotheses with their scores, per picture."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field


@dataclass
class Hypothesis:
    caption: str
    logprob: float                               # total log-probability of the words (and <end>)
    score: float                                 # the ranking score (logprob / length**alpha)
    finished: bool                               # False: stopped at the maximum length
    attention: list[list[float]] | None = None   # per word: weights over the encoder grid


@dataclass
class CaptionResult:
    source: str
    caption: str = ""
    logprob: float = 0.0
    hypotheses: list[Hypothesis] = field(default_factory=list)   # n-best, best first
    error: str | None = None
    grid_size: int | None = None                                  # side of the attention grid

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class CaptionScore:
    """A given caption under the model (teacher forcing), as `Captioner.logprob` returns it."""

    caption: str
    words: list[str]                 # the words the model read, unknown ones as <unk>, then <end>
    word_logprobs: list[float]       # log p(word | picture, words before it), one per entry of `words`
    logprob: float                   # their sum: the caption's log-probability, <end> included
    perplexity: float                # exp(-logprob / len(words))

    def to_dict(self) -> dict:
        return asdict(self)


def hypotheses_from(decoded, vocab, return_attention: bool = False) -> list[list[Hypothesis]]:
    """Per picture, the decoded hypotheses as text (those that exist: finite score)."""
    out = []
    for row in range(decoded.sequences.shape[0]):
        hyps = []
        for k in range(decoded.sequences.shape[1]):
            score = float(decoded.scores[row, k])
            if not math.isfinite(score):
                continue
            length = int(decoded.lengths[row, k])
            attention = None
            if return_attention and decoded.attention is not None:
                attention = decoded.attention[row, k, :length].tolist()  # torch or NumPy
            hyps.append(Hypothesis(vocab.decode(decoded.sequences[row, k, :length].tolist()),
                                   float(decoded.logprobs[row, k]), score, bool(decoded.finished[row, k]), attention))
        out.append(hyps)
    return out


def result_from(source: str, hyps: list[Hypothesis], grid_size: int | None = None) -> CaptionResult:
    best = hyps[0] if hyps else None
    return CaptionResult(source, best.caption if best else "", best.logprob if best else 0.0, hyps, grid_size=grid_size)
