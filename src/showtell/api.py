"""The Python API: load a trained captioner and caption pictures.

    from showtell import Captioner
    captioner = Captioner.load("runs/demo", device="cpu")
    captioner.caption("photo.jpg", beam_size=3)            # -> CaptionResult
    captioner.caption(["a.jpg", pil_image, raw_bytes])     # -> list of CaptionResult

One lock guards the model, so a Captioner can be shared between threads (the web service does).
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from pathlib import Path

import torch
from PIL import Image

from .data.images import load_image
from .decode import Ensemble, decode, sample
from .distributed import resolve_device
from .errors import ConfigError, ImageError
from .results import CaptionResult, Hypothesis, hypotheses_from, result_from
from .run import load_model

ImageInput = str | Path | bytes | Image.Image


class Captioner:
    def __init__(self, models, configs, vocab, device: torch.device):
        self.models, self.configs, self.vocab, self.device = models, configs, vocab, device
        self.config = configs[0]
        self._lock = threading.Lock()

    @classmethod
    def load(cls, paths: str | Path | Sequence[str | Path], device: str = "cpu") -> "Captioner":
        """One run directory (or exported package), or several to decode as an ensemble."""
        paths = [paths] if isinstance(paths, (str, Path)) else list(paths)
        device = resolve_device(device)
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
                    names: Sequence[str] | None = None) -> tuple[list[list[torch.Tensor] | None], list[ImageError | None]]:
        """Each picture prepared for each model (models may differ in size); an error per picture."""
        prepared, errors = [], []
        limit = max_pixels or self.max_pixels
        for i, source in enumerate(sources):
            name = names[i] if names else (source if isinstance(source, (str, Path)) else f"image {i}")
            try:
                image = load_image(source, limit, name=str(name))  # decoded once, shaped per model
                prepared.append([model.transform(image) for model in self.models])
                errors.append(None)
            except ImageError as error:
                prepared.append(None)
                errors.append(error)
        return prepared, errors

    @torch.inference_mode()
    def caption_tensors(self, batch: list[list[torch.Tensor]], beam_size: int | None = None, n_best: int = 1,
                        max_length: int | None = None, return_attention: bool = False,
                        sampling: dict | None = None) -> list[list[Hypothesis]]:
        """Decode prepared pictures (one list of per-model tensors each) in one batched pass:
        greedy or beam search, or, with `sampling` ({temperature, top_k, top_p, seed}), n_best
        random captions per picture, most probable first."""
        d = self.config.decode
        beam = beam_size or d.beam_size
        n_best = max(1, n_best if sampling is not None else min(n_best, beam))
        with self._lock:
            features = [model.encode(torch.stack([item[m] for item in batch]).to(self.device))
                        for m, model in enumerate(self.models)]
            decoder = self.models[0] if len(self.models) == 1 else Ensemble(self.models)
            feats = features[0] if len(self.models) == 1 else features
            if sampling is not None:
                out = self._sample(decoder, feats, len(batch), n_best, max_length or d.max_length, sampling)
            else:
                out = decode(decoder, feats, beam, max_length or d.max_length, d.length_penalty, d.block_unk,
                             n_best=n_best, return_attention=return_attention)
        return hypotheses_from(out, self.vocab, return_attention)

    def _sample(self, decoder, feats, batch: int, n: int, max_length: int, sampling: dict):
        d = self.config.decode
        generator = torch.Generator(device=self.device)
        generator.manual_seed(int(sampling.get("seed") or 0))
        out, _, _ = sample(decoder, feats, max_length, sampling.get("temperature") or d.temperature,
                           sampling.get("top_k") if sampling.get("top_k") is not None else d.top_k,
                           sampling.get("top_p") if sampling.get("top_p") is not None else d.top_p,
                           d.block_unk, generator, samples_per_image=n)
        # (B*n, 1, ...) -> (B, n, ...), most probable sample first
        shape = lambda x: x.view(batch, n, *x.shape[2:])  # noqa: E731
        sequences, lengths, logprobs, finished = (shape(x) for x in (out.sequences, out.lengths, out.logprobs, out.finished))
        order = logprobs.argsort(dim=1, descending=True)
        pick = lambda x: x.gather(1, order.view(batch, n, *([1] * (x.dim() - 2))).expand_as(x))  # noqa: E731
        sequences, lengths, logprobs, finished = (pick(x) for x in (sequences, lengths, logprobs, finished))
        return type(out)(sequences, lengths, logprobs, logprobs, finished)

    def caption(self, images: ImageInput | Sequence[ImageInput], beam_size: int | None = None, n_best: int = 1,
                batch_size: int = 32, return_attention: bool = False, sampling: dict | None = None):
        """Caption one picture (-> CaptionResult) or a list (-> list). Unreadable pictures give
        a result with `error` set instead of raising, so one bad file spoils nothing else.
        `sampling={"temperature": 0.8, "top_k": 0, "top_p": 0.9, "seed": 1}` draws captions
        instead of searching for the most probable one."""
        single = isinstance(images, (str, Path, bytes, Image.Image))
        sources = [images] if single else list(images)
        results = []
        for start in range(0, len(sources), batch_size):
            chunk = sources[start:start + batch_size]
            prepared, errors = self.load_images(chunk)
            good = [p for p in prepared if p is not None]
            hyps = iter(self.caption_tensors(good, beam_size, n_best, return_attention=return_attention,
                                             sampling=sampling) if good else [])
            for i, (source, error) in enumerate(zip(chunk, errors)):
                name = str(source) if isinstance(source, (str, Path)) else f"image {start + i}"
                if error:
                    results.append(CaptionResult(name, error=str(error)))
                    continue
                results.append(result_from(name, next(hyps), self.grid_side if return_attention else None))
        return results[0] if single else results

    @torch.inference_mode()
    def logprob(self, pictures: ImageInput | Sequence[ImageInput], captions: str | Sequence[str]):
        """How probable the model finds given captions: per caption its total log-probability,
        per-word log-probabilities (<end> included) and perplexity, under teacher forcing through
        the same `init_state`/`step` functions decoding uses (an ensemble averages its models'
        probabilities as in decoding), so a decoded caption scores exactly what decoding reported.
        One picture is scored with every caption; a list of pictures pairs with the captions.
        One caption string -> one CaptionScore, a list -> a list."""
        from .decode import Ensemble
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
        with self._lock:
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
