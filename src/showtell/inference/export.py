"""Exporting a trained run: its model package, and optionally ONNX graphs for onnx_runtime.py.

`export_package(RUN, OUT)` copies what a user of the model needs (config, vocabulary, best
weights, the model card, a prefix-LM run's language_model/ folder) into OUT, which must be a new or empty folder, or one that holds an
earlier export of the same run (only package files, the same vocabulary): an export never
replaces another run's files. `export_onnx(RUN, OUT)` does the same, then adds

    OUT/encoder.onnx      images uint8 (B, 3, S, S) -> global (B, Dg), grid (B, L, D)   (normalisation inside)
    OUT/init_state.onnx   global, grid -> state.<name> for each array of the decoder's state
    OUT/step.onnx         words int64 (B,), state.<name> -> logprobs (B, V), next.<name>, [attention (B, L)]
    OUT/onnx.json         what the runtime needs to know: the state's names, the picture geometry, ...
    OUT/config.json, vocab.json, model.safetensors   the run's package, as a plain `export` copies it

Only the encoder and ONE decoder step are graphs, every axis 0 a dynamic batch axis; the decoding
loop (greedy, beam search) stays the decoding package's Python code, which runs the step graph through
onnxruntime exactly as it runs the PyTorch model. A decoder can be exported when its state keeps
its shape from step to step (NIC: h, c, and with every_step the picture's input; attention: h, c and the grid); one whose state grows with
each word (a Transformer's key/value cache) cannot be one fixed step graph and is refused.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import shutil
import warnings
from pathlib import Path

import torch

from ..errors import RunError
from ..fileio import atomic_write_text, replace_folder
from ..run import CARD, PACKAGE_FILES, VOCAB, Run
from ..tokenizer import LM_COPY
from .onnx_runtime import DECODERS, FORMAT, MANIFEST, load_package
from .torch_runtime import load_model

log = logging.getLogger("showtell")

FEATURES = ("global", "grid")
GRAPHS = ("encoder.onnx", "init_state.onnx", "step.onnx")
EXPORT_FILES = {*PACKAGE_FILES, LM_COPY, CARD, MANIFEST, *GRAPHS}


def _check_target(run: Run, out: Path) -> None:
    """Refuse, before anything is written, an OUT that is not a new or empty folder or an earlier
    export of this run: a folder holding only package files, with this run's vocabulary. A run
    folder (checkpoints, history) is never an export."""
    if out.exists() and not out.is_dir():
        raise RunError(f"{out}: exists and is not a folder; export into a new or empty folder")
    if not out.is_dir() or not any(out.iterdir()):
        return
    if out.resolve() == run.path.resolve():
        raise RunError(f"{out}: is the run itself; export into a new or empty folder")
    others = sorted(p.name for p in out.iterdir() if p.name not in EXPORT_FILES and not p.name.endswith(".tmp"))
    if others:
        raise RunError(f"{out}: holds other files ({', '.join(others[:3])}); export into a new or empty folder "
                       "(nothing was written)")
    same = (out / VOCAB).is_file() and (out / VOCAB).read_bytes() == (run.path / VOCAB).read_bytes()
    if not same:
        raise RunError(f"{out}: holds the export of another model (its {VOCAB} differs); export into a new or "
                       "empty folder (nothing was written)")


def export_package(run_dir: str | Path, out: str | Path) -> Path:
    """Copy the run's package files (and its model card) into `out` (see the module docstring)."""
    run, out = Run(run_dir), Path(out)
    for name in PACKAGE_FILES:
        run.need(name)
    _check_target(run, out)
    out.mkdir(parents=True, exist_ok=True)
    for name in PACKAGE_FILES + ((CARD,) if run.card.is_file() else ()):
        tmp = out / f".{name}.tmp"
        shutil.copyfile(run.path / name, tmp)
        tmp.replace(out / name)
    if (run.path / LM_COPY).is_dir():     # a prefix-LM run's language model config and tokenizer
        replace_folder(out / LM_COPY, lambda staged: shutil.copytree(run.path / LM_COPY, staged, dirs_exist_ok=True))
    else:                                 # an earlier export's copy would be read as this run's
        shutil.rmtree(out / LM_COPY, ignore_errors=True)
    (out / MANIFEST).unlink(missing_ok=True)   # an earlier ONNX export's graphs no longer match
    return out


class _Encoder(torch.nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, images):
        features = self.model.encode(images)
        return tuple(features[name] for name in FEATURES)


class _InitState(torch.nn.Module):
    def __init__(self, model, names):
        super().__init__()
        self.model, self.names = model, names

    def forward(self, global_, grid):
        state = self.model.init_state({"global": global_, "grid": grid})
        return tuple(state[name] for name in self.names)


class _Step(torch.nn.Module):
    def __init__(self, model, names, attention: bool):
        super().__init__()
        self.model, self.names, self.attention = model, names, attention

    def forward(self, words, state):
        logprobs, state, attention = self.model.step(words, dict(zip(self.names, state)))
        out = (logprobs, *(state[name] for name in self.names))
        return (*out, attention) if self.attention else out


def _probe(model, size: int, batch: int = 2):
    """Example inputs, and the decoder's state names, checked to keep their shapes over steps."""
    images = torch.randint(0, 256, (batch, 3, size, size), dtype=torch.uint8)
    features = model.encode(images)
    state = model.init_state(features)
    names = list(state)
    words = torch.full((batch,), 1, dtype=torch.long)
    _, after, attention = model.step(words, state)
    _, later, _ = model.step(words, after)
    decoder = model.decoder.__class__.__name__
    for name in names:
        shapes = [tuple(s[name].shape) if name in s else None for s in (state, after, later)]
        if len(set(shapes)) != 1:
            raise RunError(f"the {decoder} cannot be exported to ONNX: its state {name!r} changes shape from word to "
                           f"word ({' -> '.join(map(str, shapes))}), and one ONNX step graph needs a state of fixed "
                           f"shape (export --onnx supports model.decoder={' and '.join(DECODERS)})")
        if shapes[0][0] != batch:
            raise RunError(f"the {decoder} cannot be exported to ONNX: its state {name!r} is not batch first")
    if set(after) != set(names):
        raise RunError(f"the {decoder} cannot be exported to ONNX: its step returns a different state "
                       f"({sorted(after)} after {names})")
    return images, features, state, names, words, attention is not None


def _export(module, args, path: Path, inputs, outputs, dynamic_shapes) -> None:
    quiet = io.StringIO()
    with warnings.catch_warnings(), contextlib.redirect_stdout(quiet), contextlib.redirect_stderr(quiet):
        warnings.simplefilter("ignore")
        program = torch.onnx.export(module, args, input_names=list(inputs), output_names=list(outputs),
                                    dynamic_shapes=dynamic_shapes, dynamo=True, verbose=False, optimize=True)
    program.save(str(path), external_data=False)


def export_onnx(run: str | Path, out: str | Path) -> Path:
    """The run's package plus the ONNX graphs and onnx.json in `out`; one-line errors."""
    if tuple(int(part) for part in torch.__version__.split("+")[0].split(".")[:2]) < (2, 6):
        raise RunError(f"export --onnx needs PyTorch 2.6 or later (its dynamo exporter); this is {torch.__version__}")
    try:
        import onnx  # noqa: F401  torch's exporter needs both
        import onnxscript  # noqa: F401
    except ImportError as error:
        raise RunError(f"export --onnx needs the onnx and onnxscript packages ({error.name} is missing): "
                       "pip install 'showtell[export]'") from None
    config, _, model = load_model(run, "cpu")
    model = model.float().eval()
    size = model.encoder.transform.crop
    with torch.no_grad():
        images, features, state, names, words, attention = _probe(model, size)
    out = export_package(run, out)
    batch = torch.export.Dim("batch", min=1)
    state_in = [f"state.{n}" for n in names]
    try:
        with torch.no_grad():
            _export(_Encoder(model), (images,), out / "encoder.onnx", ["images"], FEATURES, ({0: batch},))
            _export(_InitState(model, names), (features["global"], features["grid"]), out / "init_state.onnx",
                    FEATURES, state_in, ({0: batch}, {0: batch}))
            _export(_Step(model, names, attention), (words, tuple(state[n] for n in names)), out / "step.onnx",
                    ["words", *state_in], ["logprobs", *(f"next.{n}" for n in names), *(["attention"] if attention else [])],
                    ({0: batch}, tuple({0: batch} for _ in names)))
    except Exception as error:  # torch.export's reasons are long; the first line names the problem
        message = str(error).strip().splitlines()[0][:200] if str(error).strip() else error.__class__.__name__
        raise RunError(f"ONNX export of model.decoder={config.model.decoder} failed: {message}") from None
    transform = model.encoder.transform
    manifest = {"format": FORMAT, "decoder": config.model.decoder, "features": list(FEATURES), "state": names,
                "attention": attention, "grid_size": int(model.encoder.grid_size),
                "transform": {"mode": transform.mode, "crop": transform.crop, "resize": transform.resize,
                              "interpolation": transform.interpolation},
                "vocabulary": model.decoder.vocab_size, "torch": torch.__version__}
    atomic_write_text(out / MANIFEST, json.dumps(manifest, indent=2) + "\n")
    try:
        _verify(out, model, images, names)
    except BaseException:   # graphs that disagree with PyTorch must not load as a package later
        (out / MANIFEST).unlink(missing_ok=True)
        raise
    return out


def _verify(out: Path, model, images, names) -> None:
    """Run the graphs once with onnxruntime (when installed) against PyTorch: the log-probabilities
    of the first two steps must agree to 1e-4."""
    try:
        package = load_package(out)
    except RunError as error:
        if "onnxruntime" in str(error):
            log.info("onnxruntime is not installed: the exported graphs were not checked")
            return
        raise
    with torch.no_grad():
        state = model.init_state(model.encode(images))
        ours = package.init_state(package.encode(images.numpy()))
        words = torch.full((images.shape[0],), 1, dtype=torch.long)
        for _ in range(2):
            lp, state, _ = model.step(words, state)
            their_lp, ours, _ = package.step(words.numpy(), ours)
            gap = float((lp - torch.from_numpy(their_lp)).abs().max())
            if not gap <= 1e-4:
                raise RunError(f"{out}: the ONNX step disagrees with PyTorch (log-probabilities differ by {gap:.2e})")
            words = lp.argmax(dim=-1)
