"""Pretrained word vectors for the decoder's embedding table.

`model.word_embeddings` names the source:

- `glove:PATH`: GloVe text (`word v1 ... vd` per line, no header), e.g. glove.6B.300d.txt
- `word2vec:PATH`: word2vec text (`.txt`/`.vec`, first line "count dim") or binary (`.bin`)
- `spacy:PACKAGE` : the vectors of an installed spaCy package (en_core_web_md) or a saved pipeline folder

Only the rows of words in our vocabulary are kept (the file is streamed, never loaded whole).
Words the vectors lack start random with the vectors' own scale; the coverage is reported. The
embedding size becomes the vectors' size, which must be within `model.embed_dim`'s range. A kept
vector with a NaN or infinite number is refused with its line (one would make every row NaN).
"""

from __future__ import annotations

import logging
import struct
from pathlib import Path

import numpy as np
import torch

from ..config import all_settings
from ..errors import ConfigError, DataError
from ..vocab import PAD, SPECIALS

log = logging.getLogger("showtell")

MAX_LINE = 1 << 20        # characters of one text line (a 4096-d vector in text is about 50 kB)
MAX_WORD = 1 << 12        # bytes of one word of a binary word2vec file


def _max_dim() -> int:
    return all_settings()["model.embed_dim"].metadata["max"]


def _checked_dim(dim: int, path: Path, where: str) -> int:
    if not 1 <= dim <= _max_dim():
        raise DataError(f"{path}: {where}: vectors of {dim} numbers (model.embed_dim takes 1 to {_max_dim()})")
    return dim


def _finite(vector: np.ndarray, path: Path, where: str) -> np.ndarray:
    if not np.isfinite(vector).all():
        raise DataError(f"{path}: {where}: a number is not finite (nan or inf)")
    return vector


def _lines(f, path: Path):
    """(number, line) of a text file, each line read bounded: a file without line breaks
    (/dev/zero) is refused instead of read whole."""
    n = 0
    while line := f.readline(MAX_LINE + 1):
        n += 1
        if len(line) > MAX_LINE and not line.endswith("\n"):
            raise DataError(f"{path}: line {n} is longer than {MAX_LINE:,} characters; not a word vectors file")
        yield n, line


def _text_vectors(path: Path, wanted: set[str], header: bool) -> tuple[dict[str, np.ndarray], int]:
    found: dict[str, np.ndarray] = {}
    dim = None
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            for n, line in _lines(f, path):
                if header and n == 1:
                    parts = line.split()
                    if len(parts) == 2 and all(p.isdigit() for p in parts):
                        dim = _checked_dim(int(parts[1]), path, "header")
                        continue
                parts = line.rstrip("\n").rstrip().split(" ")
                if len(parts) < 2:
                    continue
                if dim is None:
                    dim = _checked_dim(len(parts) - 1, path, f"line {n}")
                if len(parts) - 1 != dim:
                    # GloVe 840B has a few "words" with spaces; their extra fields shift the numbers
                    continue
                word = parts[0]
                key = word if word in wanted else word.lower() if word.lower() in wanted else None
                if key is not None and (key not in found or word == key):
                    try:
                        vector = np.asarray(parts[1:], dtype=np.float32)
                    except ValueError:
                        raise DataError(f"{path}: line {n}: not a vector of numbers") from None
                    found[key] = _finite(vector, path, f"line {n} ({shown_word(word)})")
    except FileNotFoundError:
        raise ConfigError(f"model.word_embeddings: {path} not found") from None
    except OSError as error:
        raise ConfigError(f"model.word_embeddings: cannot read {path} ({error.strerror})") from None
    if dim is None:
        raise DataError(f"{path}: no word vectors found")
    return found, dim


def _binary_word2vec(path: Path, wanted: set[str]) -> tuple[dict[str, np.ndarray], int]:
    found: dict[str, np.ndarray] = {}
    try:
        with open(path, "rb") as f:
            header = f.readline(100).split()
            if len(header) != 2 or not all(p.isdigit() for p in header):
                raise DataError(f"{path}: not a binary word2vec file (its header, the first line, must be 'count dim': "
                                "two whole numbers)")
            count, dim = int(header[0]), _checked_dim(int(header[1]), path, "header")
            for i in range(1, count + 1):
                word = bytearray()
                while (ch := f.read(1)) not in (b" ", b""):
                    if ch != b"\n":
                        word += ch
                    if len(word) > MAX_WORD:
                        raise DataError(f"{path}: vector {i}: a word longer than {MAX_WORD} bytes; "
                                        "not a binary word2vec file")
                raw = f.read(4 * dim)
                if len(raw) < 4 * dim:
                    raise DataError(f"{path}: file ends early (truncated?)")
                text = word.decode("utf-8", errors="replace")
                key = text if text in wanted else text.lower() if text.lower() in wanted else None
                if key is not None and (key not in found or text == key):
                    vector = np.array(struct.unpack(f"<{dim}f", raw), dtype=np.float32)
                    found[key] = _finite(vector, path, f"vector {i} ({shown_word(text)})")
    except FileNotFoundError:
        raise ConfigError(f"model.word_embeddings: {path} not found") from None
    except OSError as error:
        raise ConfigError(f"model.word_embeddings: cannot read {path} ({error.strerror})") from None
    return found, dim


def shown_word(word: str) -> str:
    """A word from the file as a message shows it: escaped, and cut short."""
    return repr(word[:40])[1:-1]


def _spacy_vectors(name: str, wanted: set[str]) -> tuple[dict[str, np.ndarray], int]:
    try:
        import spacy
    except ImportError:
        raise ConfigError("model.word_embeddings: spacy is not installed (pip install spacy)") from None
    try:
        nlp = spacy.load(name)
    except OSError:
        raise ConfigError(f"model.word_embeddings: spaCy package {name!r} is not installed "
                          f"(python -m spacy download {name})") from None
    vectors = nlp.vocab.vectors
    if vectors.shape[0] == 0:
        raise ConfigError(f"model.word_embeddings: spaCy package {name!r} has no word vectors (use a _md or _lg package)")
    found = {}
    for word in wanted:
        for form in (word, word.lower()):
            key = nlp.vocab.strings[form] if form in nlp.vocab.strings else None
            if key is not None and key in vectors:
                found[word] = _finite(np.asarray(vectors[key], dtype=np.float32), Path(name),
                                      f"the vector of {shown_word(word)}")
                break
    return found, vectors.shape[1]


def read_word_vectors(spec: str, words: list[str]) -> tuple[dict[str, np.ndarray], int]:
    """{word: vector} for the given words that the source covers, and the vector size."""
    kind, _, source = spec.partition(":")
    wanted = {w for w in words if w not in SPECIALS}
    if kind == "glove":
        return _text_vectors(Path(source).expanduser(), wanted, header=False)
    if kind == "word2vec":
        path = Path(source).expanduser()
        return _binary_word2vec(path, wanted) if path.suffix == ".bin" else _text_vectors(path, wanted, header=True)
    if kind == "spacy":
        return _spacy_vectors(source, wanted)
    raise ConfigError(f"model.word_embeddings: unknown source {kind!r} (glove, word2vec or spacy)")


def embedding_matrix(spec: str, words: list[str], seed: int = 0) -> tuple[torch.Tensor, float]:
    """(V, d) initial embedding table and the fraction of non-special words covered."""
    found, dim = read_word_vectors(spec, words)
    if not found:
        raise ConfigError(f"model.word_embeddings: {spec} covers none of the {len(words) - len(SPECIALS)} vocabulary words")
    stacked = np.stack(list(found.values()))
    scale = float(stacked.std()) or 1.0
    generator = torch.Generator().manual_seed(seed)
    table = torch.randn(len(words), dim, generator=generator) * scale
    table[PAD] = 0.0
    for i, word in enumerate(words):
        if word in found:
            table[i] = torch.from_numpy(found[word])
    coverage = len(found) / max(1, len(words) - len(SPECIALS))
    return table, coverage
