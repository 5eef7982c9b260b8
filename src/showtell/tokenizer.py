"""What turns a caption into token ids and back: the one small interface every stage asks.

    tokenizer.encode(words, max_words) -> [start, t1 .. tn, end]    tokenizer.decode(ids) -> text
    tokenizer.specials -> Specials(start, end, pad, unk)            len(tokenizer) -> ids it can write

Two implementations: showtell's word `Vocabulary` (vocab.py; fixed ids <pad>=0 <start>=1 <end>=2
<unk>=3) and `HFTokenizer`, a Hugging Face tokenizer read from a local folder for a pretrained
language model (model.decoder=prefix-lm). Decoding reads a model's `specials` instead of assuming
the word vocabulary's ids.

GPT-2's tokenizer has one special token, <|endoftext|>, which is its bos, eos and unk and which it
has no pad for. We use that eos as start, end and pad alike: a caption is [eos, t1 .. tn, eos] and
padding after it is eos too. Nothing reads padding by its id (a caption's real positions are those
up to its first end, `real_positions`), and the prefix-LM never feeds the start id to the LM: the
picture's prefix plays its part, as in ClipCap.

A basic: imports nothing of showtell but architectures, errors, fileio and vocab; `transformers`
only when a Hugging Face tokenizer is loaded (the optional extra showtell[lm]).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterable, Sequence
from pathlib import Path

from .architectures import decoder as decoder_traits
from .errors import ConfigError, RunError
from .fileio import FILE_LIMITS, atomic_write_text, read_bounded, replace_folder
from .vocab import WORD_SPECIALS, Specials, Vocabulary, build_vocabulary, tokenize

HF_FORMAT = "showtell-hf-tokenizer-1"   # a run's vocab.json that names the language model's tokenizer

LM_EXTRA = "pip install showtell[lm]"
TOKENIZER_FILES = ("tokenizer.json", "vocab.json", "tokenizer.model", "spiece.model")   # any one of them
# Beside a run's vocab.json: its own copy of the LM folder's files but its weights (those are in the
# run's model file), so a run or an exported package loads wherever the LM folder went.
LM_COPY = "language_model"
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".h5", ".msgpack", ".gguf", ".onnx")


def lm_copy(folder) -> Path | None:
    """`folder`/language_model if it holds a usable copy (config.json and a tokenizer file), else None."""
    copy = Path(folder) / LM_COPY
    usable = (copy / "config.json").is_file() and any((copy / name).is_file() for name in TOKENIZER_FILES)
    return copy if usable else None


def specials_of(model) -> Specials:
    """A model's special ids; a model that names none uses the word vocabulary's."""
    return getattr(model, "specials", None) or WORD_SPECIALS


def require_transformers():
    try:
        import transformers
    except ImportError:
        raise ConfigError(f"model.decoder=prefix-lm needs Hugging Face transformers: {LM_EXTRA}") from None
    return transformers


def language_model_name(name: str) -> str:
    """How a run records model.language_model: an existing folder as its absolute path (so the run
    loads from any working directory), a hub name as given."""
    folder = Path(name).expanduser() if name else None
    return str(folder.resolve()) if folder is not None and folder.is_dir() else name


def resolve_language_model(name: str) -> Path:
    """model.language_model -> a local folder: the folder itself, or a hub name resolved through the
    user's own Hugging Face cache (never downloaded here)."""
    if not name:
        raise ConfigError("model.language_model: model.decoder=prefix-lm needs a language model: a folder with "
                          "config.json, safetensors weights and tokenizer files, or a hub name such as gpt2 already "
                          "in your Hugging Face cache")
    folder = Path(name).expanduser()
    if folder.is_dir():
        return folder
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(name, local_files_only=True))
    except Exception:   # not a repository name, not cached, or huggingface_hub missing: the same advice
        raise ConfigError(f"model.language_model: {name!r} is neither a folder nor a model in your Hugging Face "
                          "cache (download it once with `huggingface-cli download NAME`)") from None


class HFTokenizer:
    """A Hugging Face tokenizer behind showtell's interface. Captions arrive as words (the data
    stage's tokens) and are joined with spaces before subword tokenisation."""

    def __init__(self, tokenizer, name: str = "", folder: Path | None = None):
        self.tokenizer, self.name, self.folder = tokenizer, name, folder      # folder: where its files were read
        self._words = None
        end = tokenizer.eos_token_id
        if end is None:
            raise ConfigError("model.language_model: its tokenizer has no end-of-text token (eos) to end captions with")
        start = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else end
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else end
        self.specials = Specials(start, end, pad, tokenizer.unk_token_id, size=len(tokenizer))

    @classmethod
    def load(cls, name: str, folder: Path | None = None) -> "HFTokenizer":
        """model.language_model's tokenizer, read from `folder` if given (a run's own copy) and named `name`."""
        folder = Path(folder) if folder is not None else resolve_language_model(name)
        if not any((folder / f).is_file() for f in TOKENIZER_FILES):
            raise ConfigError(f"model.language_model: {folder} has no tokenizer files ({', '.join(TOKENIZER_FILES)}); "
                              "save the tokenizer beside the model (tokenizer.save_pretrained)")
        transformers = require_transformers()
        try:
            return cls(transformers.AutoTokenizer.from_pretrained(str(folder), local_files_only=True),
                       language_model_name(name), folder)
        except (OSError, ValueError) as error:
            raise ConfigError(f"model.language_model: {folder}: cannot read its tokenizer "
                              f"({str(error).splitlines()[0][:200]})") from None

    def __len__(self) -> int:
        return len(self.tokenizer)

    def __eq__(self, other) -> bool:
        return isinstance(other, HFTokenizer) and self.name == other.name

    def __hash__(self) -> int:
        return hash(self.name)

    @property
    def words(self) -> list[str]:
        """Each id's token as the tokenizer spells it (what `score` shows)."""
        if self._words is None:
            self._words = self.tokenizer.convert_ids_to_tokens(list(range(len(self))))
        return self._words

    def save(self, path) -> None:
        """A run's vocab.json names the language model whose tokenizer it uses, and the LM's small files
        (configuration, tokenizer) are copied beside it into `LM_COPY`."""
        copy = Path(path).parent / LM_COPY
        if self.folder is not None and self.folder.resolve() != copy.resolve():
            def fill(staged: Path) -> None:
                for file in self.folder.iterdir():
                    if file.is_file() and not file.name.endswith(WEIGHT_SUFFIXES):
                        shutil.copyfile(file, staged / file.name)     # a hub cache's links followed
            replace_folder(copy, fill)
        atomic_write_text(path, json.dumps({"format": HF_FORMAT, "language_model": self.name}) + "\n")

    def ids_of(self, words: Sequence[str]) -> list[int]:
        return list(self.tokenizer(" ".join(words), add_special_tokens=False)["input_ids"])

    def words_of(self, text: str) -> list[str]:
        """Text to score as the words training captions are (vocab.tokenize: lower-case, no punctuation)."""
        return tokenize(text)

    def encode(self, tokens: Sequence[str], max_words: int | None = None) -> list[int]:
        """[start, t1 .. tn, end]: the first max_words words, subword-tokenised."""
        words = list(tokens)[:max_words] if max_words else list(tokens)
        return [self.specials.start] + self.ids_of(words) + [self.specials.end]

    def decode(self, ids: Iterable[int]) -> str:
        """Ids to text, stopping at end, dropping start and pad (as Vocabulary.decode): one leading
        start is skipped before looking for end, which GPT-2's start is too."""
        ids = list(map(int, ids))
        if ids and ids[0] == self.specials.start:
            ids = ids[1:]
        kept = []
        for i in ids:
            if i == self.specials.end:
                break
            if i not in (self.specials.start, self.specials.pad):
                kept.append(i)
        return self.tokenizer.decode(kept, skip_special_tokens=True).strip()


def make_tokenizer(config, train_captions) -> Vocabulary | HFTokenizer:
    """What a new run tokenises with: the language model's tokenizer for a decoder that has one
    (its row says so), else a word vocabulary of the training captions."""
    if decoder_traits(config.model.decoder).lm_tokenizer:
        return HFTokenizer.load(config.model.language_model)
    return build_vocabulary(train_captions, config.data.min_word_count)


def longest_caption(tokenizer, captions: Iterable[Sequence[str]], max_words: int | None) -> int:
    """The most ids a training caption (its first max_words words) takes, <start> and <end> not counted."""
    cut = [list(c)[:max_words] if max_words else list(c) for c in captions]
    if isinstance(tokenizer, HFTokenizer):       # one batched call: caption by caption takes long at COCO size
        texts = [" ".join(c) for c in cut]
        return max(map(len, tokenizer.tokenizer(texts, add_special_tokens=False)["input_ids"]), default=0) if texts else 0
    return max(map(len, cut), default=0)


def load_tokenizer(path) -> Vocabulary | HFTokenizer:
    """A run's (or feature cache's) vocab.json: a word vocabulary, or the name of an LM's tokenizer."""
    try:
        data = json.loads(read_bounded(path, FILE_LIMITS["vocabulary"], "a vocabulary").decode("utf-8"))
    except (OSError, ValueError, RecursionError):
        data = None                      # Vocabulary.load names what is wrong
    if isinstance(data, dict) and data.get("format") == HF_FORMAT:
        if not isinstance(data.get("language_model"), str):
            raise RunError(f"{path}: names no language model")
        return HFTokenizer.load(data["language_model"], lm_copy(Path(path).parent))   # the run's own copy if any
    return Vocabulary.load(path)
