"""The Python API: load a trained captioner and caption pictures.

    from showtell import Captioner
    captioner = Captioner.load("runs/demo", device="cpu")
    captioner.caption("photo.jpg", beam_size=3)            # -> CaptionResult
    captioner.caption(["a.jpg", pil_image, raw_bytes])     # -> list of CaptionResult

A picture is a path, bytes, a binary file object, a PIL image or a numpy array (H x W or H x W x
3/4, uint8); one that cannot be read gives a result with `error` set. A bad argument (a beam size
of 0, an unknown device, no run) raises `ArgumentError`, a `ShowtellError` and a `ValueError`.

One lock guards the model, so a Captioner can be shared between threads (the web service does).

A package made by `showtell export RUN OUT --onnx` (it has an onnx.json) loads as a Captioner
that runs on onnxruntime (runtime.OnnxCaptioner), with no PyTorch installed: same methods, same
captions. Nothing in this module imports torch until a PyTorch run is loaded.
"""

from __future__ import annotations

import contextlib
import numbers
import sys
import threading
from collections.abc import Sequence
from pathlib import Path

from PIL import Image

from .data.images import load_image
from .decode import Ensemble, decode, sample
from .errors import ConfigError, ImageError, RunError, ShowtellError
from .results import CaptionResult, Hypothesis, hypotheses_from, result_from

ImageInput = str | Path | bytes | Image.Image

# what counts as one picture (anything else that is iterable is a list of pictures)
_SINGLE = (str, Path, bytes, bytearray, memoryview, Image.Image)
_SAMPLING_KEYS = ("temperature", "top_k", "top_p", "seed")


class ArgumentError(ConfigError, ValueError):
    """A bad argument to the Python API (also a ValueError); `str(error)` names it and the problem."""


def _torch(what: str):
    """torch, or a one-line error saying that `what` needs it and what runs without it."""
    try:
        import torch
    except ImportError:
        raise RunError(f"{what}: PyTorch is not installed; without it showtell runs ONNX packages only "
                       "(made by `showtell export RUN OUT --onnx` where PyTorch is)") from None
    return torch


def check_device(name, setting: str = "device"):
    """The torch device for `name` ('cpu', 'cuda', 'cuda:N', 'mps', 'auto'), or a one-line error
    naming `setting` when torch does not know it or this machine does not have it."""
    torch = _torch(setting)
    from .distributed import resolve_device

    if not isinstance(name, (str, torch.device)):
        raise ArgumentError(f"{setting}: expected a device name such as 'cpu' or 'cuda', got {type(name).__name__}")
    try:
        device = resolve_device(str(name), setting)
    except ShowtellError as error:
        raise ArgumentError(str(error)) from None
    if device.type not in ("cpu", "cuda", "mps"):
        raise ArgumentError(f"{setting}: {device.type} devices are not supported (expected cpu, cuda, cuda:N, mps or auto)")
    try:
        torch.empty(1, device=device)
    except (RuntimeError, AssertionError, AttributeError):
        raise ArgumentError(f"{setting}: {device} is not available on this machine") from None
    return device


def _count(value, name: str, minimum: int = 1, allow_none: bool = False) -> int | None:
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ArgumentError(f"{name}: expected a whole number, got {value!r}")
    if value < minimum:
        raise ArgumentError(f"{name}: expected {minimum} or more, got {value}")
    return int(value)


def check_sampling(sampling: dict | None) -> dict | None:
    """The sampling options, checked: temperature > 0, top_k >= 0, 0 < top_p <= 1, an integer seed."""
    if sampling is None:
        return None
    if not isinstance(sampling, dict):
        raise ArgumentError(f"sampling: expected a dict with {', '.join(_SAMPLING_KEYS)}, got {type(sampling).__name__}")
    unknown = sorted(set(sampling) - set(_SAMPLING_KEYS))
    if unknown:
        raise ArgumentError(f"sampling: unknown option {unknown[0]!r} (expected {', '.join(_SAMPLING_KEYS)})")
    temperature, top_p = sampling.get("temperature"), sampling.get("top_p")
    if temperature is not None and (isinstance(temperature, bool) or not isinstance(temperature, numbers.Real)
                                    or not temperature > 0):
        raise ArgumentError(f"temperature: expected a positive number, got {temperature!r}")
    if top_p is not None and (isinstance(top_p, bool) or not isinstance(top_p, numbers.Real) or not 0 < top_p <= 1):
        raise ArgumentError(f"top_p: expected a number in (0, 1], got {top_p!r}")
    _count(sampling.get("top_k"), "top_k", minimum=0, allow_none=True)
    _count(sampling.get("seed"), "seed", minimum=-(1 << 63), allow_none=True)
    return sampling


class Captioner:
    backend = "torch"

    def __init__(self, models, configs, vocab, device):
        self.models, self.configs, self.vocab, self.device = models, configs, vocab, device
        self.config = configs[0]
        self._lock = threading.Lock()

    @classmethod
    def load(cls, paths: str | Path | Sequence[str | Path], device: str = "cpu", backend: str = "auto") -> "Captioner":
        """One run directory (or exported package), or several to decode as an ensemble.
        `backend`: 'auto' runs ONNX packages on onnxruntime and runs on PyTorch; 'torch' or 'onnx'
        to choose (an ONNX export also holds the PyTorch weights)."""
        if isinstance(paths, (str, Path)):
            paths = [paths]
        elif isinstance(paths, Sequence) and all(isinstance(p, (str, Path)) for p in paths):
            paths = list(paths)
        else:
            raise ArgumentError(f"Captioner.load: expected a run directory or a list of them, got {paths!r:.80}")
        if not paths:
            raise ArgumentError("Captioner.load: expected a run directory or a list of them, got an empty list")
        if backend not in ("auto", "torch", "onnx"):
            raise ArgumentError(f"backend: expected 'auto', 'torch' or 'onnx', got {backend!r}")
        from .runtime import is_onnx_package

        if backend == "onnx" or (backend == "auto" and any(is_onnx_package(p) for p in paths)):
            from .runtime import OnnxCaptioner

            return OnnxCaptioner.load_packages(paths, device)
        device = check_device(device)
        from .run import load_model

        loaded = [load_model(p, device) for p in paths]
        vocab = loaded[0][1]
        for path, (_, other, _) in zip(paths[1:], loaded[1:]):
            if other != vocab:
                raise ConfigError(f"{path}: an ensemble needs models with the same vocabulary")
        return cls([m for _, _, m in loaded], [c for c, _, _ in loaded], vocab, device)

    @property
    def max_pixels(self) -> int:
        return self.config.data.max_image_pixels

    def load_images(self, sources: Sequence[ImageInput], max_pixels: int | None = None,
                    names: Sequence[str] | None = None, budget=None) -> tuple[list[list | None], list[ImageError | None]]:
        """Each picture prepared for each model (models may differ in size); an error per picture.
        `budget` (a data.images.DecodeBudget) bounds the pixels decoded at once across threads."""
        prepared, errors = [], []
        limit = max_pixels or self.max_pixels
        for i, source in enumerate(sources):
            name = names[i] if names else _name(source, i)
            try:
                with contextlib.ExitStack() as held:  # a decoding budget, held until the picture is shaped
                    hold = (lambda pixels: held.enter_context(budget.hold(pixels))) if budget else None
                    image = load_image(source, limit, name=str(name), before_decode=hold)  # decoded once
                    prepared.append([model.transform(image) for model in self.models])  # uint8 (3, S, S)
                    del image
                errors.append(None)
            except ImageError as error:
                prepared.append(None)
                errors.append(error)
        return prepared, errors

    def _batch(self, tensors: list):
        """Prepared pictures of one model as one batch on the device."""
        import torch

        return torch.stack(tensors).to(self.device)

    def _no_grad(self):
        import torch

        return torch.inference_mode()

    def caption_tensors(self, batch: list[list], beam_size: int | None = None, n_best: int = 1,
                        max_length: int | None = None, return_attention: bool = False,
                        sampling: dict | None = None) -> list[list[Hypothesis]]:
        """Decode prepared pictures (one list of per-model tensors each) in one batched pass:
        greedy or beam search, or, with `sampling` ({temperature, top_k, top_p, seed}), n_best
        random captions per picture, most probable first."""
        d = self.config.decode
        beam = beam_size or d.beam_size
        n_best = max(1, n_best if sampling is not None else min(n_best, beam))
        if return_attention and not self.has_attention:
            raise ArgumentError("return_attention: not an attention model (model.decoder=attention)")
        with self._no_grad(), self._lock:
            features = [model.encode(self._batch([item[m] for item in batch])) for m, model in enumerate(self.models)]
            decoder = self.models[0] if len(self.models) == 1 else Ensemble(self.models)
            feats = features[0] if len(self.models) == 1 else features
            if sampling is not None:
                out = self._sample(decoder, feats, len(batch), n_best, max_length or d.max_length, sampling)
            else:
                out = decode(decoder, feats, beam, max_length or d.max_length, d.length_penalty, d.block_unk,
                             n_best=n_best, return_attention=return_attention)
        return hypotheses_from(out, self.vocab, return_attention)

    def _sample(self, decoder, feats, batch: int, n: int, max_length: int, sampling: dict):
        import torch

        d = self.config.decode
        generator = torch.Generator(device=self.device)
        generator.manual_seed(int(sampling.get("seed") or 0))
        out, _, _ = sample(decoder, feats, max_length, sampling.get("temperature") or d.temperature,
                           sampling.get("top_k") if sampling.get("top_k") is not None else d.top_k,
                           sampling.get("top_p") if sampling.get("top_p") is not None else d.top_p,
                           d.block_unk, generator, samples_per_image=n)
        # (B*n, 1, ...) -> (B, n, ...): finished samples first (a cut one lacks its <end> term, so
        # its log-probability is not comparable), each group most probable first, as beam search ranks
        shape = lambda x: x.view(batch, n, *x.shape[2:])  # noqa: E731
        sequences, lengths, logprobs, finished = (shape(x) for x in (out.sequences, out.lengths, out.logprobs, out.finished))
        by_logprob = logprobs.view(batch, n).argsort(dim=1, descending=True, stable=True)
        done_first = finished.view(batch, n).gather(1, by_logprob).to(torch.uint8).argsort(dim=1, descending=True, stable=True)
        order = by_logprob.gather(1, done_first)
        pick = lambda x: x.gather(1, order.view(batch, n, *([1] * (x.dim() - 2))).expand_as(x))  # noqa: E731
        sequences, lengths, logprobs, finished = (pick(x) for x in (sequences, lengths, logprobs, finished))
        return type(out)(sequences, lengths, logprobs, logprobs, finished)

    def caption(self, images: ImageInput | Sequence[ImageInput], beam_size: int | None = None, n_best: int = 1,
                batch_size: int = 32, return_attention: bool = False, sampling: dict | None = None):
        """Caption one picture (-> CaptionResult) or a list (-> list). Unreadable pictures give
        a result with `error` set instead of raising, so one bad file spoils nothing else.
        `sampling={"temperature": 0.8, "top_k": 0, "top_p": 0.9, "seed": 1}` draws captions
        instead of searching for the most probable one."""
        beam = _count(beam_size, "beam_size", allow_none=True)
        n_best = _count(n_best, "n_best")
        batch_size = _count(batch_size, "batch_size")
        sampling = check_sampling(sampling)
        if sampling is None and n_best > (beam or self.config.decode.beam_size):
            raise ArgumentError(f"n_best: beam search keeps at most beam_size alternatives ({n_best} > "
                                f"{beam or self.config.decode.beam_size}); raise beam_size or sample")
        if return_attention and not self.has_attention:
            raise ArgumentError("return_attention: not an attention model (model.decoder=attention)")
        single = _is_single(images)
        sources = [images] if single else list(images)
        results = []
        for start in range(0, len(sources), batch_size):
            chunk = sources[start:start + batch_size]
            prepared, errors = self.load_images(chunk, names=[_name(x, start + i) for i, x in enumerate(chunk)])
            good = [p for p in prepared if p is not None]
            hyps = iter(self.caption_tensors(good, beam_size, n_best, return_attention=return_attention,
                                             sampling=sampling) if good else [])
            for i, (source, error) in enumerate(zip(chunk, errors)):
                name = _name(source, start + i)
                if error:
                    results.append(CaptionResult(name, error=str(error)))
                    continue
                results.append(result_from(name, next(hyps), self.grid_side if return_attention else None))
        return results[0] if single else results

    def logprob(self, pictures: ImageInput | Sequence[ImageInput], captions: str | Sequence[str]):
        """How probable the model finds given captions: per caption its total log-probability,
        per-word log-probabilities (<end> included) and perplexity, under teacher forcing through
        the same `init_state`/`step` functions decoding uses (an ensemble averages its models'
        probabilities as in decoding), so a decoded caption scores exactly what decoding reported.
        One picture is scored with every caption; a list of pictures pairs with the captions.
        One caption string -> one CaptionScore, a list -> a list."""
        import torch

        from .results import CaptionScore
        from .vocab import END, PAD, SPECIALS, START, UNK, tokenize

        single = isinstance(captions, str)
        texts = [captions] if single else list(captions)
        many = not isinstance(pictures, (str, Path, bytes, Image.Image))
        sources = list(pictures) if many else [pictures]
        if many and len(sources) != len(texts):
            raise ConfigError(f"{len(sources)} pictures for {len(texts)} captions: give one picture, or one per caption")
        prepared, errors = self.load_images(sources)
        for error in errors:
            if error:
                raise error
        ids = []
        for text in texts:  # the training preprocessing; "<unk>" as a decoder writes it stays <unk>
            tokens = [t for piece in text.split() for t in ([piece] if piece in SPECIALS else tokenize(piece))]
            ids.append([UNK if t == "<unk>" else self.vocab.index.get(t, UNK) for t in tokens])
        which = torch.tensor([i if many else 0 for i in range(len(texts))], device=self.device)
        steps = max(len(x) for x in ids) + 1
        targets = torch.full((len(texts), steps), PAD, dtype=torch.long, device=self.device)
        for row, x in enumerate(ids):
            targets[row, :len(x) + 1] = torch.tensor(x + [END])
        with torch.inference_mode(), self._lock:
            features = [{k: v.index_select(0, which) for k, v in
                         model.encode(torch.stack([item[m] for item in prepared]).to(self.device)).items()}
                        for m, model in enumerate(self.models)]
            decoder = self.models[0] if len(self.models) == 1 else Ensemble(self.models)
            state = decoder.init_state(features[0] if len(self.models) == 1 else features)
            words, per_step = torch.full((len(texts),), START, dtype=torch.long, device=self.device), []
            for t in range(steps):
                logprobs, state, _ = decoder.step(words, state)
                per_step.append(logprobs.float().gather(1, targets[:, t:t + 1]).squeeze(1))
                words = targets[:, t]
        table = torch.stack(per_step, dim=1).cpu()                               # (N, T)
        scores = []
        for row, (text, x) in enumerate(zip(texts, ids)):
            word_lp = table[row, :len(x) + 1].tolist()
            total = float(sum(word_lp))
            scores.append(CaptionScore(text, [self.vocab.words[i] for i in x] + ["<end>"], word_lp, total,
                                       float(torch.tensor(-total / len(word_lp)).exp())))
        return scores[0] if single else scores

    @property
    def grid_side(self) -> int:
        return int(round(self.models[0].encoder.grid_size ** 0.5))

    @property
    def has_attention(self) -> bool:
        return all(getattr(m.decoder, "uses_grid", False) for m in self.models)


def _is_single(images) -> bool:
    """One picture, or a list of them? Paths, bytes, images, arrays and file objects are one each;
    other iterables are lists; anything else is one (bad) picture, reported in its result."""
    if isinstance(images, _SINGLE) or hasattr(images, "read") or hasattr(images, "__array_interface__"):
        return True
    try:
        iter(images)
    except TypeError:
        return True
    torch = sys.modules.get("torch")  # a tensor is one picture; torch is not imported to find out
    return torch is not None and isinstance(images, torch.Tensor)


def _name(source, index: int) -> str:
    """How a picture is named in results and messages: its path, a file object's name, or 'image N'."""
    if isinstance(source, (str, Path)):
        return str(source)
    name = getattr(source, "name", None) if hasattr(source, "read") else None
    return name if isinstance(name, str) and name else f"image {index}"
