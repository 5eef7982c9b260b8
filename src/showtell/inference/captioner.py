"""The Python API: load a trained captioner and caption pictures.

    from showtell import Captioner
    captioner = Captioner.load("runs/demo", device="cpu")
    captioner.caption("photo.jpg", beam_size=3)            # -> CaptionResult
    captioner.caption(["a.jpg", pil_image, raw_bytes])     # -> list of CaptionResult
    captioner.logprob("photo.jpg", ["a red circle"])       # -> list of CaptionScore

A picture is a path, bytes, a binary file object, a PIL image or a numpy array (H x W or H x W x
3/4, uint8); one that cannot be read gives a result with `error` set. A bad argument (a beam size
of 0, an unknown device, no run) raises `ArgumentError`, a `ShowtellError` and a `ValueError`.

The Captioner is backend-neutral: a run trained by showtell runs on PyTorch (torch_runtime.py), a
package made by `showtell export RUN OUT --onnx` (it has an onnx.json) on onnxruntime
(onnx_runtime.py) with no PyTorch installed; both decode and score with the same functions of the
decoding package. Its stages, usable alone: `load_images` (decode and shape the pictures),
`encode`, `decode` (greedy, beam or sampling) and `score` (teacher forcing of given word ids).
One lock guards the models, so a Captioner can be shared between threads (the web service does).
Nothing here imports torch until a PyTorch run is loaded.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Sequence
from pathlib import Path

from PIL import Image

from ..architectures import decoder as decoder_traits
from ..data.images import ImageTransform, is_one_picture, load_image, picture_name
from ..decoding.captions import CaptionResult, CaptionScore, Hypothesis, hypotheses_from, result_from
from ..decoding.ensemble import Ensemble
from ..decoding.options import PYTHON, DecodeOptions, Spelling, check_options, whole_number
from ..decoding.scoring import perplexity, word_logprobs
from ..decoding.search import decode
from ..device import check_threads, ensure_threads
from ..errors import ArgumentError, ImageError, RunError

ImageInput = str | Path | bytes | Image.Image
BACKENDS = ("auto", "torch", "onnx")


def _run_paths(paths) -> list:
    if isinstance(paths, (str, Path)):
        return [paths]
    if isinstance(paths, Sequence) and paths and all(isinstance(p, (str, Path)) for p in paths):
        return list(paths)
    shown = "an empty list" if isinstance(paths, Sequence) and not paths else f"{paths!r:.80}"
    raise ArgumentError(f"Captioner.load: expected a run directory or a list of them, got {shown}")


def _torch_runtime():
    """The PyTorch runtime, or a one-line error saying what runs without PyTorch."""
    try:
        from .torch_runtime import TorchRuntime
    except ImportError as error:
        if error.name not in ("torch", "torchvision") and "torch" not in str(error):
            raise
        raise RunError("PyTorch is not installed; without it showtell runs ONNX packages only "
                       "(made by `showtell export RUN OUT --onnx` where PyTorch is)") from None
    return TorchRuntime


class Captioner:
    def __init__(self, runtime):
        self.runtime = runtime
        self._lock = threading.Lock()

    @classmethod
    def load(cls, paths: str | Path | Sequence[str | Path], device: str = "cpu", backend: str = "auto",
             spelling: Spelling = PYTHON) -> "Captioner":
        """One run directory (or exported package), or several to decode as an ensemble.
        `backend`: 'auto' runs ONNX packages on onnxruntime and runs on PyTorch; 'torch' or 'onnx'
        to choose (an ONNX export also holds the PyTorch weights). Messages name the device
        argument as `spelling` does (`--device` for the CLI)."""
        setting = spelling.name("device")
        paths = _run_paths(paths)
        if backend not in BACKENDS:
            raise ArgumentError(f"backend: expected 'auto', 'torch' or 'onnx', got {backend!r}")
        from .onnx_runtime import OnnxRuntime, is_onnx_package

        if backend == "onnx" or (backend == "auto" and any(is_onnx_package(p) for p in paths)):
            return cls(OnnxRuntime.load(paths, device, setting))
        runtime = _torch_runtime()
        ensure_threads()   # a process's first Captioner sets PyTorch's threads, unless the CLI already has
        return cls(runtime.load(paths, device, setting))

    # --- what the loaded models are ----------------------------------------------------------------
    @property
    def backend(self) -> str:
        return self.runtime.backend

    @property
    def config(self):
        return self.runtime.configs[0]

    @property
    def vocab(self):
        return self.runtime.vocab

    @property
    def device(self):
        return self.runtime.device

    @property
    def transform(self) -> ImageTransform:
        """The first model's picture geometry (an ensemble's models may differ)."""
        return self.runtime.models[0].transform

    @property
    def ensemble_size(self) -> int:
        return len(self.runtime.models)

    @property
    def max_pixels(self) -> int:
        return self.config.data.max_image_pixels

    @property
    def has_attention(self) -> bool:
        return self.runtime.has_attention()

    @property
    def grid_side(self) -> int:
        return int(round(self.runtime.grid_size() ** 0.5))

    def options(self, spelling: Spelling = PYTHON, **asked) -> DecodeOptions:
        """The decoding options `asked` (beam_size, n_best, max_length, return_attention, sampling)
        over this run's `decode` settings, checked (decoding/options.py); errors spelt as `spelling`."""
        return check_options(self.config.decode, self.has_attention, spelling=spelling, **asked)

    # --- the stages ----------------------------------------------------------------------------------
    def load_images(self, sources: Sequence, max_pixels: int | None = None, names: Sequence[str] | None = None,
                    budget=None) -> tuple[list[list | None], list[ImageError | None]]:
        """Each picture decoded once and shaped for each model (their sizes may differ); an error per
        picture. `budget` (a data.images.DecodeBudget) bounds the pixels decoded at once across threads."""
        prepared, errors = [], []
        limit = max_pixels or self.max_pixels
        for i, source in enumerate(sources):
            name = names[i] if names else picture_name(source, i)
            try:
                with contextlib.ExitStack() as held:  # a decoding budget, held until the picture is shaped
                    hold = (lambda pixels: held.enter_context(budget.hold(pixels))) if budget else None
                    image = load_image(source, limit, name=str(name), before_decode=hold)
                    prepared.append([model.transform(image) for model in self.runtime.models])  # uint8 (3, S, S)
                    del image
                errors.append(None)
            except ImageError as error:
                prepared.append(None)
                errors.append(error)
        return prepared, errors

    def encode(self, prepared: list[list]) -> list[dict]:
        """Features of prepared pictures (one list of per-model arrays each): one dict per model."""
        with self.runtime.no_grad(), self._lock:
            return [model.encode(self.runtime.batch([item[m] for item in prepared]))
                    for m, model in enumerate(self.runtime.models)]

    def _decoder(self, features: list[dict]):
        """The model, or the ensemble of models, that decoding steps, and the features it reads."""
        if len(self.runtime.models) == 1:
            return self.runtime.models[0], features[0]
        return Ensemble(self.runtime.models), features

    def decode(self, features: list[dict], options: DecodeOptions) -> list[list[Hypothesis]]:
        """Captions of encoded pictures, `options.n_best` per picture, best first: greedy or beam
        search, or with `options.sampling` random captions, finished ones first, most probable first."""
        with self.runtime.no_grad(), self._lock:
            decoder, feats = self._decoder(features)
            if options.sampling is not None:
                out = self._sample(decoder, feats, options)
            else:
                out = decode(decoder, feats, options.beam_size, options.max_length, options.length_penalty,
                             options.block_unk, n_best=options.n_best, return_attention=options.return_attention)
        return hypotheses_from(out, self.vocab, options.return_attention)

    def caption_tensors(self, batch: list[list], options: DecodeOptions) -> list[list[Hypothesis]]:
        """`encode`, then `decode`: one batched pass over prepared pictures (the service's batcher)."""
        return self.decode(self.encode(batch), options)

    def score(self, features: list[dict], rows, targets: list[list[int]]) -> list[list[float]]:
        """Teacher forcing: per caption, the log-probability of each of its word ids and of <end>,
        through the same `init_state`/`step` calls decoding uses. Caption n belongs to the picture in
        row `rows[n]` of `features`."""
        width = max(len(ids) for ids in targets) + 1
        end, pad = self.vocab.specials.end, self.vocab.specials.pad
        padded = self.runtime.word_ids([ids + [end] + [pad] * (width - len(ids) - 1) for ids in targets])
        which = self.runtime.word_ids(list(rows))
        with self.runtime.no_grad(), self._lock:
            picked = [{k: v[which] for k, v in feats.items()} for feats in features]
            decoder, feats = self._decoder(picked)
            table = word_logprobs(decoder, feats, padded)
            values = table.tolist()
        return [row[:len(ids) + 1] for row, ids in zip(values, targets)]

    def _sample(self, decoder, features, options: DecodeOptions):
        """options.n_best drawn captions per picture, reordered as beam search ranks: finished ones
        first (a cut one lacks its <end> term), each group most probable first."""
        if not self.runtime.supports_sampling:
            self.runtime.generator(0)   # raises: this runtime cannot sample
        from ..decoding.sampling import rank_samples, sample

        s = options.sampling
        out, _, _ = sample(decoder, features, options.max_length, s.temperature, s.top_k, s.top_p,
                           options.block_unk, self.runtime.generator(s.seed), samples_per_image=options.n_best)
        return rank_samples(out, options.n_best)

    # --- the API ---------------------------------------------------------------------------------------
    def caption(self, images: ImageInput | Sequence[ImageInput], beam_size: int | None = None, n_best: int = 1,
                batch_size: int = 32, return_attention: bool = False, sampling: dict | None = None,
                options: DecodeOptions | None = None):
        """Caption one picture (-> CaptionResult) or a list (-> list). Unreadable pictures give
        a result with `error` set instead of raising, so one bad file spoils nothing else.
        `sampling={"temperature": 0.8, "top_k": 0, "top_p": 0.9, "seed": 1}` draws captions
        instead of searching for the most probable one. `options` (from `Captioner.options`)
        replaces the decoding arguments."""
        if options is None:
            options = self.options(beam_size=beam_size, n_best=n_best, return_attention=return_attention,
                                   sampling=sampling)
        single = is_one_picture(images)
        results = [r for chunk in self.caption_chunks([images] if single else list(images), options, batch_size)
                   for r in chunk]
        return results[0] if single else results

    def caption_chunks(self, sources: Sequence[ImageInput], options: DecodeOptions, batch_size: int = 32):
        """`caption` a batch at a time: yields each batch's results (CaptionResult list) in order,
        for callers that show progress or write results as they go."""
        batch_size = whole_number(batch_size, "batch_size")
        for start in range(0, len(sources), batch_size):
            check_threads()   # the loop that owns the long work follows the thread policy (device.py)
            chunk = sources[start:start + batch_size]
            names = [picture_name(x, start + i) for i, x in enumerate(chunk)]
            prepared, errors = self.load_images(chunk, names=names)
            good = [p for p in prepared if p is not None]
            hyps = iter(self.caption_tensors(good, options) if good else [])
            grid = self.grid_side if options.return_attention else None
            yield [CaptionResult(name, error=str(error)) if error else result_from(name, next(hyps), grid)
                   for name, error in zip(names, errors)]

    def logprob(self, pictures: ImageInput | Sequence[ImageInput], captions: str | Sequence[str]):
        """How probable the model finds given captions: per caption its total log-probability,
        per-word log-probabilities (<end> included) and perplexity, through the same calls decoding
        uses, so a caption showtell wrote scores exactly what decoding reported (an ensemble averages
        its models' probabilities as in decoding). The text is read by `Vocabulary.words_of`. One
        picture is scored with every caption; a list of pictures pairs with the captions. One
        caption string -> one CaptionScore, a list -> a list."""
        single_caption = isinstance(captions, str)
        texts = [captions] if single_caption else list(captions)
        if not texts or not all(isinstance(t, str) for t in texts):
            raise ArgumentError("captions: expected a caption string or a non-empty list of them")
        one_picture = is_one_picture(pictures)
        sources = [pictures] if one_picture else list(pictures)
        if not one_picture and len(sources) != len(texts):
            raise ArgumentError(f"pictures: {len(sources)} pictures for {len(texts)} captions: give one picture, "
                                "or one per caption")
        prepared, errors = self.load_images(sources)
        for error in errors:
            if error:
                raise error
        words = [self.vocab.words_of(text) for text in texts]
        ids = [self.vocab.ids_of(w) for w in words]
        for c in self.runtime.configs:
            traits = decoder_traits(c.model.decoder)
            most = traits.max_scored_words(c.model)
            for text, x in zip(texts, ids):
                if most is not None and len(x) > most:
                    raise ArgumentError(f"captions: {text[:80]!r} is {len(x)} {traits.unit}; a {traits.name} run "
                                        f"scores captions of at most {most} {traits.unit}")
        rows = [0] * len(texts) if one_picture else list(range(len(texts)))
        table = self.score(self.encode(prepared), rows, ids)
        scores = []
        for text, x, word_lp in zip(texts, ids, table):
            total = float(sum(word_lp))
            shown = [self.vocab.words[i] for i in x] + ["<end>"]
            scores.append(CaptionScore(text, shown, word_lp, total, perplexity(-total / len(word_lp))))
        return scores[0] if single_caption else scores
