"""Running an exported ONNX package (export.py) on onnxruntime, without PyTorch.

    captioner = Captioner.load("package")        # an ONNX package is recognised by its onnx.json
    captioner.caption("photo.jpg", beam_size=3)

The encoder and the decoder's `init_state` and `step` are onnxruntime sessions on NumPy arrays;
greedy, beam search and scoring are the decoding package's own functions, the same code that
decodes the PyTorch model. Pictures are shaped with PIL and NumPy (`ImageTransform.to_array`),
pixel for pixel as torchvision shapes them for the PyTorch model. Nothing here imports torch or
torchvision. `OnnxRuntime` is the sibling of torch_runtime.TorchRuntime behind the same Captioner.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import numpy as np

from ..architectures import DECODERS as DECODER_TRAITS
from ..data.images import ImageTransform
from ..errors import ArgumentError, ConfigError, RunError
from ..run import Run

MANIFEST = "onnx.json"
FORMAT = "showtell-onnx-1"
DECODERS = tuple(name for name, d in DECODER_TRAITS.items() if d.onnx)   # their state keeps its shape


def is_onnx_package(path) -> bool:
    return (Path(path) / MANIFEST).is_file()


def check_onnx_device(name, setting: str = "device") -> str:
    """ONNX packages run on onnxruntime's CPU provider: 'cpu' (or 'auto')."""
    if str(name) not in ("cpu", "auto"):
        raise ArgumentError(f"{setting}: an ONNX package runs on the CPU here (onnxruntime's CPU provider); got {name!r}")
    return "cpu"


class ArrayTransform(ImageTransform):
    """The run's picture geometry, giving uint8 NumPy arrays (3, crop, crop) without torchvision."""

    def __call__(self, image) -> np.ndarray:
        return self.to_array(image)


class OnnxModel:
    """One exported model: `encode`, `init_state` and `step` as decode.py calls them, on NumPy arrays."""

    def __init__(self, path: Path, manifest: dict, sessions: dict, config, vocab):
        self.path, self.manifest, self.config, self.vocab = path, manifest, config, vocab
        self.encoder, self.init, self.stepper = sessions["encoder.onnx"], sessions["init_state.onnx"], sessions["step.onnx"]
        self.names = list(manifest["state"])
        self.has_attention = bool(manifest["attention"])
        self.grid_size = int(manifest["grid_size"])
        self.transform = ArrayTransform(**manifest["transform"])
        self._init_inputs = [i.name for i in self.init.get_inputs()]
        self._outputs = ["logprobs", *(f"next.{n}" for n in self.names), *(["attention"] if self.has_attention else [])]

    def encode(self, images: np.ndarray) -> dict[str, np.ndarray]:
        global_, grid = self.encoder.run(["global", "grid"], {"images": np.ascontiguousarray(images, dtype=np.uint8)})
        return {"global": global_, "grid": grid}

    def init_state(self, features: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        values = self.init.run([f"state.{n}" for n in self.names], {k: features[k] for k in self._init_inputs})
        return dict(zip(self.names, values))

    def step(self, words: np.ndarray, state: dict[str, np.ndarray]):
        feed = {"words": np.asarray(words, dtype=np.int64), **{f"state.{n}": state[n] for n in self.names}}
        out = self.stepper.run(self._outputs, feed)
        attention = out[-1] if self.has_attention else None
        return out[0], dict(zip(self.names, out[1:1 + len(self.names)])), attention


def _read_json(path: Path, what: str) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise RunError(f"{path}: missing ({what})") from None
    except (OSError, ValueError) as error:
        raise RunError(f"{path}: unreadable {what} ({error.__class__.__name__})") from None


def load_package(path) -> OnnxModel:
    """An ONNX package as an OnnxModel, or a one-line RunError saying what is wrong with it."""
    path = Path(path)
    if not path.is_dir():
        raise RunError(f"{path}: run directory or package not found")
    if not is_onnx_package(path):
        raise RunError(f"{path}: not an ONNX package (no {MANIFEST}; make one with `showtell export RUN OUT --onnx`)")
    manifest = _read_json(path / MANIFEST, "ONNX package description")
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise RunError(f"{path / MANIFEST}: not a showtell ONNX package description (expected format {FORMAT})")
    decoder = manifest.get("decoder")
    if decoder not in DECODERS:
        raise RunError(f"{path}: model.decoder={decoder} cannot run from ONNX (its state grows with each word); "
                       f"only {' and '.join(DECODERS)} can; caption with the PyTorch run instead")
    config, vocab = Run(path).config(), Run(path).vocab()
    try:
        import onnxruntime as ort
    except ImportError:
        raise RunError(f"{path}: an ONNX package needs onnxruntime (pip install onnxruntime array-api-compat, "
                       "or pip install 'showtell[onnx]')") from None
    options = ort.SessionOptions()
    options.log_severity_level = 3
    sessions = {}
    for name in ("encoder.onnx", "init_state.onnx", "step.onnx"):
        file = path / name
        if not file.is_file():
            raise RunError(f"{file}: missing from the ONNX package")
        try:
            sessions[name] = ort.InferenceSession(str(file), options, providers=["CPUExecutionProvider"])
        except Exception as error:  # onnxruntime raises its own exception kinds for a damaged graph
            raise RunError(f"{file}: not a loadable ONNX graph ({str(error).splitlines()[0][:160]})") from None
    model = OnnxModel(path, manifest, sessions, config, vocab)
    if len(vocab) != int(manifest.get("vocabulary", len(vocab))):
        raise RunError(f"{path}: vocab.json has {len(vocab)} words but the graphs {manifest['vocabulary']}")
    return model


class OnnxRuntime:
    """ONNX packages behind the Captioner: greedy and beam search, and scoring given captions.
    Sampling needs the PyTorch run (it draws with torch's generator)."""

    backend = "onnx"
    supports_sampling = False

    def __init__(self, models: list[OnnxModel]):
        self.models, self.configs, self.vocab, self.device = models, [m.config for m in models], models[0].vocab, "cpu"

    @classmethod
    def load(cls, paths: list, device="cpu", setting: str = "device") -> "OnnxRuntime":
        check_onnx_device(device, setting)
        models = [load_package(p) for p in paths]
        for path, model in zip(paths[1:], models[1:]):
            if model.vocab != models[0].vocab:
                raise ConfigError(f"{path}: an ensemble needs models with the same vocabulary")
        return cls(models)

    def batch(self, pictures: list) -> np.ndarray:
        return np.stack(pictures)

    def word_ids(self, rows: list[list[int]]) -> np.ndarray:
        return np.asarray(rows, dtype=np.int64)

    def no_grad(self):
        return contextlib.nullcontext()

    def generator(self, seed: int):
        raise ArgumentError("sampling: an ONNX package decodes with greedy or beam search; sample with the PyTorch run")

    def grid_size(self) -> int:
        return self.models[0].grid_size

    def has_attention(self) -> bool:
        return all(m.has_attention for m in self.models)
