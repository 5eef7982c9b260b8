"""Caption preprocessing and the vocabulary.

Training captions are the annotation file's own tokens where it has them (a Karpathy split
file's `tokens`, lower-cased, punctuation tokens such as "," kept if the file keeps them);
otherwise their raw text tokenised as Karpathy's files are: lower-case, punctuation removed,
split on white space ("A dog's ball." -> ["a", "dogs", "ball"]). The vocabulary keeps training
words seen at least `min_word_count` times; the rest become <unk>. The four special tokens have
fixed ids so that decoding code needs no vocabulary object.

Text given for scoring (`Captioner.logprob`, `showtell score`) is read by `Vocabulary.words_of`:
a piece between spaces that is a vocabulary word stays that word, so a caption showtell wrote
reads back as the very words it decoded, whatever tokenisation the model was trained with; other
pieces are tokenised as raw training text is. Metrics tokenise with coco-caption's PTB tokenizer
(evaluation/metrics.py), which drops punctuation, whatever the training tokens were.
"""

from __future__ import annotations

import json
import logging
import string
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from itertools import chain
from pathlib import Path

from .errors import ConfigError, RunError
from .fileio import FILE_LIMITS, atomic_write_text, read_bounded

PAD, START, END, UNK = 0, 1, 2, 3
SPECIALS = ("<pad>", "<start>", "<end>", "<unk>")


@dataclass(frozen=True)
class Specials:
    """The ids decoding must know: where a caption starts and ends, what pads it, what is unknown."""

    start: int
    end: int
    pad: int
    unk: int | None = None
    size: int | None = None   # the tokenizer's ids are 0 .. size-1; a model's rows beyond (an LM's padded embedding) are never chosen

    def never(self, block_unk: bool) -> tuple[int, ...]:
        """Ids decoding never chooses; `end` never among them even where it doubles as start or pad."""
        ids = {self.pad, self.start} | ({self.unk} if block_unk and self.unk is not None else set())
        return tuple(sorted(ids - {self.end}))


WORD_SPECIALS = Specials(START, END, PAD, UNK)


def real_positions(targets, end: int):
    """(N, T) bool: the target positions up to and including each caption's first `end` (torch).
    Equal to `targets != <pad>` for the word vocabulary; also right where pad == end (GPT-2)."""
    ends = (targets == end).long()
    return (ends.cumsum(dim=1) - ends) == 0


_PUNCTUATION = str.maketrans("", "", string.punctuation)


def tokenize(text: str) -> list[str]:
    """Karpathy-style tokens: lower-case, ASCII punctuation deleted, split on white space."""
    return text.lower().translate(_PUNCTUATION).split()


class Vocabulary:
    specials = WORD_SPECIALS   # the tokenizer interface (tokenizer.py): fixed ids

    def __init__(self, words: Sequence[str], min_word_count: int = 1):
        if tuple(words[: len(SPECIALS)]) != SPECIALS:
            raise ValueError("a vocabulary starts with the special tokens " + " ".join(SPECIALS))
        self.words = list(words)
        self.min_word_count = min_word_count
        self.index = {w: i for i, w in enumerate(self.words)}
        if len(self.index) != len(self.words):
            raise ValueError("duplicate words in vocabulary")

    @classmethod
    def build(cls, captions: Iterable[Sequence[str]], min_word_count: int) -> "Vocabulary":
        """From tokenised training captions; most frequent first, ties alphabetical (deterministic)."""
        return cls.from_counts(Counter(chain.from_iterable(captions)), min_word_count)

    @classmethod
    def from_counts(cls, counts: Counter, min_word_count: int) -> "Vocabulary":
        kept = sorted((w for w, c in counts.items() if c >= min_word_count and w not in SPECIALS),
                      key=lambda w: (-counts[w], w))
        return cls(list(SPECIALS) + kept, min_word_count)

    def __len__(self) -> int:
        return len(self.words)

    def __eq__(self, other) -> bool:
        return isinstance(other, Vocabulary) and self.words == other.words

    def words_of(self, text: str) -> list[str]:
        """The words the model reads for `text` (see the module docstring): vocabulary words and
        special tokens as written, other pieces tokenised; unknown words are kept as written here
        and become <unk> in `ids_of`."""
        words = []
        for piece in text.split():
            lowered = piece if piece in SPECIALS else piece.lower()
            words.extend([lowered] if lowered in self.index else tokenize(piece))
        return words

    def ids_of(self, words: Sequence[str]) -> list[int]:
        """Word ids, unknown words as <unk> (no <start> or <end>)."""
        return [self.index.get(w, UNK) for w in words]

    def encode(self, tokens: Sequence[str], max_words: int | None = None) -> list[int]:
        """[<start>, w1 .. wn, <end>] ids, unknown words as <unk>, cut to max_words words."""
        words = list(tokens)[:max_words] if max_words else list(tokens)
        return [START] + [self.index.get(w, UNK) for w in words] + [END]

    def decode(self, ids: Iterable[int]) -> str:
        """Ids to a sentence, stopping at <end>, dropping <start> and <pad>."""
        words = []
        for i in ids:
            i = int(i)
            if i == END:
                break
            if i in (PAD, START):
                continue
            words.append(self.words[i])
        return " ".join(words)

    def to_json(self) -> str:
        return json.dumps({"format": "showtell-vocab-1", "min_word_count": self.min_word_count,
                           "words": self.words}, ensure_ascii=False, indent=0) + "\n"

    def save(self, path: str | Path) -> None:
        atomic_write_text(path, self.to_json())

    @classmethod
    def load(cls, path: str | Path) -> "Vocabulary":
        try:
            data = json.loads(read_bounded(path, FILE_LIMITS["vocabulary"], "a vocabulary").decode("utf-8"))
            return cls(data["words"], int(data.get("min_word_count", 1)))
        except FileNotFoundError:
            raise RunError(f"{path}: vocabulary file not found") from None
        except RecursionError:
            raise RunError(f"{path}: nested too deeply to be a showtell vocabulary") from None
        except (OSError, ValueError, KeyError, TypeError) as error:
            raise RunError(f"{path}: not a showtell vocabulary ({error.__class__.__name__})") from None


UNKNOWN_WARNING = 0.5   # warn when more than this share of the training captions' words become <unk>


def build_vocabulary(captions: Iterable[Sequence[str]], min_word_count: int) -> Vocabulary:
    """`Vocabulary.build`, refusing a vocabulary with no word (data.min_word_count above every
    word's count) and warning when most of the captions' words would be <unk>."""
    counts = Counter(chain.from_iterable(captions))
    vocab = Vocabulary.from_counts(counts, min_word_count)
    if len(vocab) == len(SPECIALS):
        common = counts.most_common(1)
        seen = f" (the most frequent, {common[0][0]!r}, is seen {common[0][1]:,} times)" if common else ""
        raise ConfigError(f"data.min_word_count={min_word_count}: no training word is seen that often{seen}, so the "
                          "vocabulary would hold no word; lower data.min_word_count")
    total = sum(counts.values())
    unknown = sum(c for w, c in counts.items() if w not in vocab.index)
    if total and unknown / total > UNKNOWN_WARNING:
        logging.getLogger("showtell").warning(
            "data.min_word_count=%d: %.0f%% of the training captions' words become <unk> (the vocabulary keeps %d of "
            "%d distinct words); the model will write few real words: lower data.min_word_count",
            min_word_count, 100 * unknown / total, len(vocab) - len(SPECIALS), len(counts))
    return vocab
