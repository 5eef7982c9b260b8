"""Caption metrics as the coco-caption toolkit computes them, and the human bound.

`score(references, candidates)` takes `{image: [reference, ...]}` and `{image: candidate}` raw
strings and returns `Bleu_1..Bleu_4, METEOR, ROUGE_L, CIDEr` (and `SPICE` where its Java parts
are installed) on coco-caption's scale (CIDEr is not multiplied by 100).

- Text is tokenised with coco-caption's PTB tokeniser (Stanford CoreNLP, Java), punctuation
  dropped. Without Java, a Python tokeniser that agrees with it on ordinary captions is used.
- BLEU, ROUGE-L and METEOR are pycocoevalcap's own scorers (METEOR runs its Java jar).
- CIDEr is CIDEr-D exactly as pycocoevalcap's `Cider` computes it (n-grams 1-4, sigma 6,
  clipping, x10), implemented here because self-critical training and the per-image report
  need it with document frequencies taken once from a fixed corpus. Tests hold it equal to
  pycocoevalcap to 1e-6.
"""

from __future__ import annotations

import contextlib
import functools
import io
import logging
import math
import re
import shutil
import subprocess
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from ..decoding.scoring import perplexity  # noqa: F401  (the one perplexity; evaluate.py imports it from here)

log = logging.getLogger("showtell")

METRICS = ("Bleu_1", "Bleu_2", "Bleu_3", "Bleu_4", "METEOR", "ROUGE_L", "CIDEr", "SPICE")
PTB_PUNCTUATION = {"''", "'", "``", "`", "-LRB-", "-RRB-", "-LCB-", "-RCB-", ".", "?", "!", ",", ":", "-", "--", "...", ";"}


# ---------------------------------------------------------------------------------------------
# Tokenisation


@functools.lru_cache(maxsize=1)
def java_available() -> bool:
    java = shutil.which("java")
    if not java:
        return False
    try:
        return subprocess.run([java, "-version"], capture_output=True, timeout=30).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


# A Python mirror of the parts of CoreNLP 3.4.1's PTBLexer that captions meet, checked against it
# by tests/test_tokenizer_parity.py on a generated corpus; the README lists what it leaves out.
# Characters the Java lexer deletes as untokenizable (it reads UTF-16: anything past the BMP, such
# as emoji, and emoji variation selectors) or normalises (curly quotes, dashes, ellipses, currencies).
_UNTOKENIZABLE = re.compile("[\U00010000-\U0010FFFF\uFE00-\uFE0F\u200B-\u200D]")
_NORMALISE = str.maketrans({"\u2018": "'", "\u2019": "'", "\u201c": '"', "\u201d": '"', "\u00ab": '"', "\u00bb": '"',
                            "\u2026": " ... ", "\u2013": " -- ", "\u2014": " -- ", "\u00a3": " # ", "\u20ac": " $ ",
                            "\u00bd": " 1/2 ", "\u00a2": " cents "})
_TOKEN = re.compile(r"""(?ix)
    (?:https?://|www\.)[^\s"<>|()]*[^\s"<>|.!?(){},;:'-]     # URL, without trailing punctuation
  | [\w.+-]+@[\w-]+(?:\.[\w-]+)+                              # e-mail address
  | '(?:n'|em|til|cause|\d\d(?:s)?)(?!\w)                     # 'n'  'em  'til  'cause  '90s
  | 't(?=(?:is|was)\b)                                        # 'tis -> 't is
  | [#@][^\W\d]\w*                                            # #hashtag  @user  (but #1 -> # 1)
  | [?!]+                                                     # ?! and !!! stay one token
  | \d+\ \d+/\d+(?!\w)                                        # 2 1/2: one token (joined by a no-break space)
  | \.\.\.+ | --+
  | (?:(?<![\w.-])[-.](?=\d))?                                # a sign or point: -5  .5
    \w+(?: (?:-|/|\.|(?<=[^\W\d_])'(?=[^\W\d_])|(?<=\d)[,:](?=\d)) \w+ )*   # t-shirt and/or 3.5 o'clock 1,000 2:30
  | \S
""")
_CLITIC = re.compile(r"(?is)(.+?)(n't|'s|'re|'ve|'ll|'d|'m)$")
_SPLIT_WORDS = {"cannot": ("can", "not"), "gonna": ("gon", "na"), "gotta": ("got", "ta"), "wanna": ("wan", "na"),
                "lemme": ("lem", "me"), "gimme": ("gim", "me")}
# CoreNLP writes brackets as -LRB- etc.; lower-cased they escape coco-caption's punctuation filter
_BRACKETS = {"(": "-lrb-", ")": "-rrb-", "[": "-lsb-", "]": "-rsb-", "{": "-lcb-", "}": "-rcb-"}
_ABBREVIATIONS = {"mr", "mrs", "ms", "dr", "st", "jr", "sr", "vs", "etc", "inc", "co", "ltd", "mt", "ave", "prof"}


def _keeps_period(word: str, rest: str) -> bool:
    """Whether CoreNLP reads `word.` (followed by `rest`) as an abbreviation that keeps its period:
    known ones, acronyms (u.s., a.m.), an initial that is not the last word, No. before a number."""
    if word in _ABBREVIATIONS or re.fullmatch(r"[^\W\d_](?:\.[^\W\d_])+", word):
        return True
    if re.fullmatch(r"[^\W\d_]", word):
        return bool(re.search(r"\w", rest))
    return word == "no" and bool(re.match(r"\s*\d", rest))


def python_ptb_tokenize(text: str) -> str:
    """PTB-style tokens of one caption, lower-cased, punctuation tokens dropped, space-joined, as
    coco-caption's Java tokeniser gives them: clitics split ("dog's" -> "dog 's", "don't" -> "do
    n't"), quotes and sentence punctuation dropped, numbers (1,000  2:30  3.5), hyphenated words,
    URLs and e-mail addresses kept whole."""
    text = _UNTOKENIZABLE.sub("", text.replace("\n", " ")).translate(_NORMALISE)
    tokens = []
    for match in _TOKEN.finditer(text):  # lower-cased token by token, as CoreNLP does (İ is one letter)
        token, end = match.group().lower(), match.end()
        if token[0].isalnum() or (token[0] in "-." and len(token) > 1 and token[1].isdigit()):
            if text[end:end + 1] == "." and _keeps_period(token, text[end + 1:]):
                token += "."
            clitic = _CLITIC.match(token)
            if token.startswith("y'") and len(token) > 2:      # y'all -> y' all
                tokens += ["y'", token[2:]]
            elif clitic and not token.endswith("."):          # don't -> do n't, can't -> ca n't
                tokens += [clitic.group(1), clitic.group(2)]
            else:
                tokens.extend(_SPLIT_WORDS.get(token, (token.replace(" ", "\u00a0"),)))
        else:
            tokens.append(_BRACKETS.get(token, "--" if token.startswith("--") else token))
    return " ".join(t for t in tokens if t not in PTB_PUNCTUATION and t not in ('"', '``', "''", "...."))


def _java_ptb(sentences: list[str]) -> list[str] | None:
    """CoreNLP's PTBTokenizer over many sentences at once (one JVM), as coco-caption runs it."""
    try:
        from pycocoevalcap.tokenizer import ptbtokenizer
    except ImportError:
        return None
    jar = Path(ptbtokenizer.__file__).parent / ptbtokenizer.STANFORD_CORENLP_3_4_1_JAR
    if not jar.is_file() or not java_available():
        return None
    text = "\n".join(s.replace("\n", " ").replace("\r", " ") for s in sentences)
    try:
        done = subprocess.run(["java", "-cp", str(jar), "edu.stanford.nlp.process.PTBTokenizer",
                               "-preserveLines", "-lowerCase"], input=text.encode("utf-8"),
                              capture_output=True, timeout=600)
    except (OSError, subprocess.SubprocessError):
        return None
    lines = done.stdout.decode("utf-8", errors="replace").split("\n")
    if done.returncode != 0 or len(lines) < len(sentences):
        return None
    return [" ".join(w for w in line.rstrip().split(" ") if w and w not in PTB_PUNCTUATION)
            for line in lines[: len(sentences)]]


def ptb_tokenize(captions: Mapping[str, Sequence[str]], use_java: bool | None = None) -> dict[str, list[str]]:
    """{key: [caption, ...]} -> {key: [tokenised caption, ...]} with coco-caption's tokeniser."""
    keys = [(k, i) for k, caps in captions.items() for i in range(len(caps))]
    flat = [captions[k][i] for k, i in keys]
    # empty captions stay empty; feeding blank lines to CoreNLP would shift its output lines
    nonblank = [j for j, s in enumerate(flat) if s.strip()]
    tokenised = [""] * len(flat)
    result = None
    if use_java is not False and nonblank:
        result = _java_ptb([flat[j] for j in nonblank])
        if result is None and use_java:
            raise RuntimeError("the Java PTB tokeniser is not available")
        if result is None:
            _warn_once("Java not found: tokenising with showtell's Python PTB tokeniser (agrees with "
                       "coco-caption's on ordinary captions); install Java 11+ for the reference one")
    for position, j in enumerate(nonblank):
        tokenised[j] = result[position] if result is not None else python_ptb_tokenize(flat[j])
    out: dict[str, list[str]] = {k: [] for k in captions}
    for (k, _), text in zip(keys, tokenised):
        out[k].append(text)
    return out


@functools.lru_cache(maxsize=None)
def _warn_once(message: str) -> None:
    log.warning(message)


# ---------------------------------------------------------------------------------------------
# CIDEr-D


def ngram_counts(sentence: str, n: int = 4) -> dict[tuple[str, ...], int]:
    words = sentence.split()
    counts: dict[tuple[str, ...], int] = defaultdict(int)
    for k in range(1, n + 1):
        for i in range(len(words) - k + 1):
            counts[tuple(words[i:i + k])] += 1
    return counts


class CiderD:
    """CIDEr-D with document frequencies from a fixed set of reference lists.

    `CiderD(refs).score(candidate, refs_of_that_image)` scores one tokenised candidate. Built from
    the references of the evaluated images it equals pycocoevalcap's `Cider`; built once from the
    training references it is the reward of self-critical training."""

    def __init__(self, reference_lists: Iterable[Sequence[str]], n: int = 4, sigma: float = 6.0):
        self.n, self.sigma = n, sigma
        self.document_frequency: dict[tuple[str, ...], float] = defaultdict(float)
        count = 0
        for refs in reference_lists:
            count += 1
            for ngram in {g for ref in refs for g in ngram_counts(ref, n)}:
                self.document_frequency[ngram] += 1
        self.log_documents = math.log(float(count)) if count else 0.0
        self._ref_cache: dict[tuple[str, ...], list] = {}

    def _vector(self, counts):
        vec = [dict() for _ in range(self.n)]
        norm = [0.0] * self.n
        length = 0
        for ngram, tf in counts.items():
            df = math.log(max(1.0, self.document_frequency.get(ngram, 0.0)))
            k = len(ngram) - 1
            vec[k][ngram] = float(tf) * (self.log_documents - df)
            norm[k] += vec[k][ngram] ** 2
            if k == 1:  # coco-caption measures length in bigrams; kept for identical numbers
                length += tf
        return vec, [math.sqrt(x) for x in norm], length

    def _similarity(self, hyp, ref) -> list[float]:
        (vec_h, norm_h, len_h), (vec_r, norm_r, len_r) = hyp, ref
        delta = float(len_h - len_r)
        penalty = math.e ** (-(delta ** 2) / (2 * self.sigma ** 2))
        out = []
        for k in range(self.n):
            value = 0.0
            for ngram, weight in vec_h[k].items():
                ref_weight = vec_r[k].get(ngram, 0.0)
                value += min(weight, ref_weight) * ref_weight
            if norm_h[k] != 0 and norm_r[k] != 0:
                value /= norm_h[k] * norm_r[k]
            out.append(value * penalty)
        return out

    def score(self, candidate: str, references: Sequence[str]) -> float:
        key = tuple(references)
        ref_vectors = self._ref_cache.get(key)
        if ref_vectors is None:
            ref_vectors = [self._vector(ngram_counts(r, self.n)) for r in references]
            if len(self._ref_cache) < 200_000:
                self._ref_cache[key] = ref_vectors
        hyp = self._vector(ngram_counts(candidate, self.n))
        total = [0.0] * self.n
        for ref in ref_vectors:
            for k, value in enumerate(self._similarity(hyp, ref)):
                total[k] += value
        return sum(total) / self.n / len(references) * 10.0


def cider_d(references: Mapping[str, Sequence[str]], candidates: Mapping[str, str]) -> tuple[float, dict[str, float]]:
    """Corpus CIDEr-D and per-image scores of tokenised text, document frequencies from `references`."""
    scorer = CiderD(references[k] for k in candidates)
    per_image = {k: scorer.score(candidates[k], references[k]) for k in candidates}
    return (sum(per_image.values()) / len(per_image) if per_image else 0.0), per_image


# ---------------------------------------------------------------------------------------------
# All metrics


def _spice_available() -> bool:
    try:
        from pycocoevalcap import spice
    except ImportError:
        return False
    lib = Path(spice.__file__).parent / "lib"
    return java_available() and (lib / "stanford-corenlp-3.6.0.jar").is_file() and \
        (lib / "stanford-corenlp-3.6.0-models.jar").is_file()


def score_tokenised(gts: dict[str, list[str]], res: dict[str, list[str]], metrics: Sequence[str] = METRICS,
                    ) -> tuple[dict[str, float], dict[str, dict[str, float]]]:
    """Metrics of already tokenised text in pycocoevalcap's layout ({key: [text]} both sides);
    returns (corpus scores, per-image scores of CIDEr and ROUGE_L)."""
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.rouge.rouge import Rouge

    scores: dict[str, float] = {}
    per_image: dict[str, dict[str, float]] = {}
    if not res:
        return scores, per_image
    meteor = None
    if "METEOR" in metrics:   # its Java process works while the Python scorers below run
        pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="meteor")
        meteor = pool.submit(_meteor, gts, res)
        pool.shutdown(wait=False)
    if any(m.startswith("Bleu") for m in metrics):
        with contextlib.redirect_stdout(io.StringIO()):  # BleuScorer prints its statistics
            bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
        for i, value in enumerate(bleu):
            if f"Bleu_{i + 1}" in metrics:
                scores[f"Bleu_{i + 1}"] = float(value)
    if "ROUGE_L" in metrics:
        value, each = Rouge().compute_score(gts, res)
        scores["ROUGE_L"] = float(value)
        per_image["ROUGE_L"] = {k: float(v) for k, v in zip(gts.keys(), each)}
    if "CIDEr" in metrics:
        value, each = cider_d(gts, {k: v[0] for k, v in res.items()})
        scores["CIDEr"] = value
        per_image["CIDEr"] = each
    if "SPICE" in metrics:
        if _spice_available():
            from pycocoevalcap.spice.spice import Spice

            try:
                scores["SPICE"] = float(Spice().compute_score(gts, res)[0])
            except Exception as error:  # a Java failure must not lose the other metrics
                log.warning("SPICE failed (%s); reporting the other metrics", error.__class__.__name__)
        else:
            _warn_once("SPICE skipped: it needs Java and Stanford CoreNLP 3.6.0 in pycocoevalcap/spice/lib "
                       "(run python -m pycocoevalcap.spice.get_stanford_models where there is internet)")
    if meteor is not None and meteor.result() is not None:
        scores["METEOR"] = meteor.result()
    return {m: scores[m] for m in METRICS if m in scores}, per_image


def _meteor(gts, res) -> float | None:
    if not java_available():
        _warn_once("METEOR skipped: it runs coco-caption's Java jar and no Java was found (install Java 11+)")
        return None
    try:
        from pycocoevalcap.meteor.meteor import Meteor

        meteor = Meteor()  # starts the jar (about 10 s: it loads its paraphrase table)
        try:
            value, _ = meteor.compute_score(gts, res)
        finally:
            meteor.__del__()  # stop the JVM now, not whenever the object is collected
        return float(value)
    except Exception as error:
        log.warning("METEOR failed (%s: %s); reporting the other metrics", error.__class__.__name__, str(error)[:80])
        return None


def score_captions(references: Mapping[str, Sequence[str]], candidates: Mapping[str, str],
                   metrics: Sequence[str] = METRICS, use_java: bool | None = None,
                   ) -> tuple[dict[str, float], dict[str, dict[str, float]]]:
    """The one tokenise-and-score recipe: raw candidates and their raw references through the PTB
    tokenizer together, then the scorers; returns (corpus scores, per-image CIDEr and ROUGE_L by key)."""
    keys = list(candidates)
    missing = [k for k in keys if k not in references or not references[k]]
    if missing:
        raise ValueError(f"no references for {len(missing)} candidates (first: {missing[0]!r})")
    both = {f"r{k}": list(references[k]) for k in keys}
    both.update({f"c{k}": [candidates[k]] for k in keys})
    tokenised = ptb_tokenize(both, use_java)
    gts = {k: tokenised[f"r{k}"] for k in keys}
    res = {k: tokenised[f"c{k}"] for k in keys}
    return score_tokenised(gts, res, metrics)


def score(references: Mapping[str, Sequence[str]], candidates: Mapping[str, str],
          metrics: Sequence[str] = METRICS, use_java: bool | None = None) -> dict[str, float]:
    """coco-caption scores of raw candidate strings against raw references (see module doc)."""
    return score_captions(references, candidates, metrics, use_java)[0]


def human_bound(references: Mapping[str, Sequence[str]], metrics: Sequence[str] = ("Bleu_4", "CIDEr"),
                use_java: bool | None = None) -> dict[str, float]:
    """How well people agree: each reference scored as a candidate against the others, averaged
    over which reference is left out. (It uses one reference fewer than a model is scored with.)"""
    keys = [k for k in references if len(references[k]) >= 2]
    tokenised = ptb_tokenize({k: list(references[k]) for k in keys}, use_java)
    most = max((len(tokenised[k]) for k in keys), default=0)
    totals: dict[str, list[float]] = defaultdict(list)
    for left_out in range(most):
        gts, res = {}, {}
        for k in keys:
            refs = tokenised[k]
            if left_out < len(refs):
                res[k] = [refs[left_out]]
                gts[k] = refs[:left_out] + refs[left_out + 1:]
        for name, value in score_tokenised(gts, res, metrics)[0].items():
            totals[name].append(value)
    return {name: sum(v) / len(v) for name, v in totals.items()}
