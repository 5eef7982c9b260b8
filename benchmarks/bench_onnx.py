"""The ONNX runtime against PyTorch: captions/s on the same pictures in one run, and install sizes.

    python benchmarks/bench_onnx.py [--images 64] [--batch 32]

Builds the `synth` preset's model (small CNN at 64 px, NIC and attention decoders, random weights
from seed 0: speed does not depend on training), exports it with `showtell export --onnx`, and
captions the same synthetic pictures with `Captioner.load(run)` (PyTorch) and
`Captioner.load(package)` (onnxruntime), greedy and beam 3, checking that the captions are equal.
Install sizes are the files each distribution installed (its RECORD), with everything it requires.
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
from importlib import metadata
from pathlib import Path

import torch
from common import WIDE_CNN, machine, table, timed

from showtell import Captioner
from showtell.config import load_config
from showtell.data.synthetic import write_dataset
from showtell.decoding.options import decoding_label
from showtell.inference.export import export_onnx
from showtell.models.caption_model import build_model
from showtell.run import Run
from showtell.vocab import Vocabulary


def _closure(names: list[str]) -> set[str]:
    """The distributions `names` need, themselves included (extras not followed)."""
    seen, todo = set(), list(names)
    while todo:
        name = re.split(r"[ ;<>=!~\[(]", todo.pop(), maxsplit=1)[0].lower().replace("_", "-")
        if name in seen:
            continue
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            continue
        seen.add(name)
        todo += [r for r in dist.requires or [] if "extra ==" not in r]
    return seen


def _size(names: set[str]) -> int:
    total = 0
    for name in names:
        for file in metadata.distribution(name).files or []:
            path = Path(file.locate())
            if path.is_file():
                total += path.stat().st_size
    return total


def install_sizes() -> list[tuple]:
    full = _closure(["torch", "torchvision"])
    slim = _closure(["onnxruntime", "numpy", "array-api-compat"])
    rows = []
    for label, names in (("torch + torchvision, with what they require", full),
                         ("onnxruntime + numpy + array-api-compat, with what they require", slim)):
        rows.append((label, f"{_size(names) / 1e6:,.0f} MB", ", ".join(sorted(names))[:90]))
    return rows


def _package(folder: Path, decoder: str, pictures: Path) -> tuple[Path, Path]:
    torch.manual_seed(0)
    config = load_config("synth", [f"model.decoder={decoder}", WIDE_CNN])
    import json

    captions = json.loads((pictures / "dataset.json").read_text())
    words = sorted({w for image in captions["images"] for s in image["sentences"] for w in s["tokens"]})
    vocab = Vocabulary(["<pad>", "<start>", "<end>", "<unk>"] + words)
    model = build_model(config, vocab, pretrained=False)
    run = Run.create(folder / f"run-{decoder}", config, vocab, {})
    run.save_model(model, {"step": 0})
    return run.path, export_onnx(run.path, folder / f"onnx-{decoder}")


def main(images: int = 64, batch: int = 32) -> str:
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        write_dataset(folder / "data", n_images=images, seed=0, side=128)
        files = sorted(str(p) for p in (folder / "data" / "images").glob("*.png"))
        rows = []
        for decoder in ("nic", "attention"):
            run, package = _package(folder, decoder, folder / "data")
            backends = {"PyTorch": Captioner.load(run), "ONNX": Captioner.load(package)}
            for beam in (1, 3):
                rates, captions = {}, {}
                for name, captioner in backends.items():
                    captions[name] = [r.caption for r in captioner.caption(files, beam_size=beam, batch_size=batch)]
                    seconds = timed(lambda c=captioner, b=beam: c.caption(files, beam_size=b, batch_size=batch),
                                    repeats=3, warmup=0, min_seconds=0.5)
                    rates[name] = len(files) / seconds
                same = captions["PyTorch"] == captions["ONNX"]
                words = sum(len(c.split()) for c in captions["ONNX"]) / len(files)
                rows.append((decoder, decoding_label(beam), f"{rates['PyTorch']:,.1f}",
                             f"{rates['ONNX']:,.1f}", f"{rates['ONNX'] / rates['PyTorch']:.2f}x",
                             f"{words:.1f}", "yes" if same else "NO"))
    return "\n".join([
        f"captioning {images} synthetic pictures (128 px, shaped to 64), batches of {batch}, `synth` preset model with "
        f"random weights; {machine()}", "",
        table(rows, ("decoder", "decoding", "PyTorch captions/s", "ONNX captions/s", "ONNX / PyTorch", "words",
                     "same captions")), "",
        "installed size (the files each distribution installed, with its requirements):", "",
        table(install_sizes(), ("install", "size", "distributions"))])


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--batch", type=int, default=32)
    args = parser.parse_args()
    print(main(args.images, args.batch))
    sys.exit(0)
