"""ONNX export and the torch-free runtime: the same captions as PyTorch, without PyTorch."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from showtell import Captioner
from showtell.cli import main
from showtell.data.images import ImageTransform

pytest.importorskip("onnxruntime")
pytestmark = pytest.mark.slow

# Put first in a child process: torch and torchvision (and anything named in BLOCK) cannot be imported.
BLOCKER = """
import importlib.abc, os, sys
class _Blocked(importlib.abc.MetaPathFinder):
    names = ("torch", "torchvision") + tuple(os.environ.get("BLOCK", "").split(","))
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in self.names:
            raise ModuleNotFoundError(f"No module named {name!r} (blocked by the test)")
sys.meta_path.insert(0, _Blocked())
"""
LOADED = "[m for m in sys.modules if m.split('.')[0] in ('torch', 'torchvision')]"


def run_blocked(code: str, block: str = "", timeout: float = 300):
    return subprocess.run([sys.executable, "-c", BLOCKER + code], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "BLOCK": block})


def make_run(dataset: Path, out: Path, decoder: str, steps: int = 60, settings: tuple[str, ...] = ()) -> Path:
    """A small model (32 px pictures, 64 hidden units) from a fixed seed whose decoder learns the
    captions of its random encoder's features for a few full-batch steps: enough that its
    captions finish with <end> and differ between pictures (so that beam search's finished pool,
    not only its unfinished fallback, is compared), in seconds."""
    from showtell.config import load_config
    from showtell.data.formats import load_dataset
    from showtell.data.images import load_image
    from showtell.models.caption_model import build_model
    from showtell.run import Run
    from showtell.vocab import PAD, Vocabulary

    torch.manual_seed(0)
    config = load_config("synth", ["model.embed_dim=32", "model.hidden_dim=64", "data.image_size=32",
                                   "model.attention_dim=32", f"model.decoder={decoder}", *settings])
    records = load_dataset([str(dataset)], None, config.data)
    vocab = Vocabulary.build([t for r in records for t in r.tokens], 1)
    model = build_model(config, vocab, pretrained=False).eval()
    with torch.no_grad():
        features = model.encode(torch.stack([model.transform(load_image(r.path)) for r in records]))
    captions = [vocab.encode(t) for r in records for t in r.tokens[:2]]
    width = max(map(len, captions))
    tokens = torch.tensor([c + [PAD] * (width - len(c)) for c in captions])
    optimizer = torch.optim.Adam(model.decoder.parameters(), lr=1e-2)
    model.decoder.train()
    for _ in range(steps):
        forced = model(tokens, features=features, repeats=2)
        optimizer.zero_grad()
        (forced.loss / forced.words).backward()
        optimizer.step()
    run = Run.create(out, config, vocab, {"data": [str(dataset)]})
    run.save_model(model, {"step": steps})
    return run.path


@pytest.fixture(scope="module")
def pictures(tmp_path_factory) -> list[str]:
    from showtell.data.synthetic import write_dataset

    folder = tmp_path_factory.mktemp("onnx-data")
    write_dataset(folder, n_images=100, seed=5, side=64)
    return sorted(str(p) for p in (folder / "images").glob("*.png"))


def _export(pictures, folder: Path, decoder: str, settings: tuple[str, ...] = ()) -> tuple[Path, Path]:
    run = make_run(Path(pictures[0]).parents[1] / "dataset.json", folder / "run", decoder, settings=settings)
    assert main(["--quiet", "export", str(run), str(folder / "package"), "--onnx"]) == 0
    return run, folder / "package"


@pytest.fixture(scope="module", params=["nic", "attention"])
def exported(request, pictures, tmp_path_factory):
    """(run, ONNX package) of one decoder."""
    return _export(pictures, tmp_path_factory.mktemp(f"onnx-{request.param}"), request.param)


def _hypotheses(results):
    return [[(h.caption, h.finished) for h in r.hypotheses] for r in results]


def _logprobs(results):
    return np.array([[h.logprob for h in r.hypotheses] for r in results])


@pytest.mark.parametrize("beam", [1, 3])
def test_onnx_captions_equal_pytorch(exported, pictures, beam):
    _assert_onnx_equals_pytorch(*exported, pictures, beam)


def test_onnx_captions_equal_pytorch_with_the_picture_beside_every_word(pictures, tmp_path):
    """NIC's every_step state carries the picture's input from step to step (beam 3 reorders it)."""
    run, package = _export(pictures, tmp_path, "nic", ("model.image_injection=every_step",))
    _assert_onnx_equals_pytorch(run, package, pictures, 3)


def _assert_onnx_equals_pytorch(run: Path, package: Path, pictures, beam: int) -> None:
    ours = Captioner.load(package)
    assert ours.backend == "onnx" and Captioner.load(run).backend == "torch"
    theirs = Captioner.load(run).caption(pictures, beam_size=beam, n_best=beam)
    got = ours.caption(pictures, beam_size=beam, n_best=beam)
    assert len(got) == 100 and not any(r.error for r in got)
    assert sum(h.finished for r in got for h in r.hypotheses) > 50 * beam  # the finished pool is compared too
    assert _hypotheses(got) == _hypotheses(theirs)
    assert np.abs(_logprobs(got) - _logprobs(theirs)).max() < 1e-4
    assert np.abs(np.array([h.score for r in got for h in r.hypotheses]) -
                  np.array([h.score for r in theirs for h in r.hypotheses])).max() < 1e-4
    if ours.has_attention:  # the attention maps travel through the same code
        a = ours.caption(pictures[:5], beam_size=beam, return_attention=True)
        b = Captioner.load(run).caption(pictures[:5], beam_size=beam, return_attention=True)
        for x, y in zip(a, b):
            assert np.allclose(np.array(x.hypotheses[0].attention), np.array(y.hypotheses[0].attention), atol=1e-4)


@pytest.mark.parametrize("size", [(64, 64), (50, 37), (37, 50), (20, 15), (333, 101)])
@pytest.mark.parametrize("transform", [ImageTransform(32, 32, "squash"), ImageTransform(32, 36, "crop"),
                                       ImageTransform(224, 256, "crop", "bicubic"), ImageTransform(24, 24, "crop")])
def test_preprocessing_without_torchvision_equals_torchvision(size, transform):
    rng = np.random.default_rng(size[0] * 1000 + size[1])
    image = Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))
    expected = transform(image).numpy()
    got = transform.to_array(image)
    assert got.dtype == np.uint8 and got.shape == expected.shape
    assert np.array_equal(got, expected)


def test_caption_cli_without_torch_equals_pytorch(exported, pictures):
    run, package = exported
    code = f"""
import json
from showtell.cli import main
rc = main(["caption", {str(package)!r}, *{pictures!r}, "--beam-size", "3", "--json"])
print(json.dumps({{"rc": rc, "loaded": {LOADED}}}))
"""
    done = run_blocked(code)
    assert "Traceback" not in done.stderr, done.stderr
    lines = done.stdout.strip().splitlines()
    status = json.loads(lines[-1])
    assert status == {"rc": 0, "loaded": []}
    got = [json.loads(line) for line in lines[:-1]]
    theirs = Captioner.load(run).caption(pictures, beam_size=3)
    assert [g["caption"] for g in got] == [t.caption for t in theirs]
    assert [g["image"] for g in got] == pictures
    assert max(abs(g["logprob"] - t.logprob) for g, t in zip(got, theirs)) < 1e-4


def test_service_without_torch_equals_pytorch(exported, pictures):
    run, package = exported
    code = f"""
import json
from fastapi.testclient import TestClient
from showtell import Captioner
from showtell.serve.app import create_app
app = create_app(Captioner.load({str(package)!r}))
with TestClient(app, base_url="http://127.0.0.1") as client:
    health = client.get("/healthz").json()
    files = [("images", (p, open(p, "rb").read(), "image/png")) for p in {pictures[:12]!r}]
    response = client.post("/v1/captions", files=files, params={{"beam_size": 3, "n_best": 2}})
print(json.dumps({{"status": response.status_code, "body": response.json(), "health": health, "loaded": {LOADED}}}))
"""
    done = run_blocked(code)
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["status"] == 200 and out["loaded"] == []
    assert out["health"]["model"]["transform"]["crop"] == 32
    theirs = Captioner.load(run).caption(pictures[:12], beam_size=3, n_best=2)
    assert [[h["caption"] for h in r["hypotheses"]] for r in out["body"]["results"]] == \
        [[h.caption for h in t.hypotheses] for t in theirs]


def _one_line_error(done, *words):
    assert done.returncode != 0 and "Traceback" not in done.stderr, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("showtell: error: "), done.stderr
    for word in words:
        assert word in lines[0], lines[0]


def _cli_blocked(args: list[str], block: str = ""):
    return run_blocked(f"from showtell.cli import main\nsys.exit(main({args!r}))", block)


def test_user_errors_are_one_line(exported, pictures, tmp_path):
    run, package = exported
    picture = pictures[0]
    # a PyTorch run where PyTorch is missing: not an ONNX package
    _one_line_error(_cli_blocked(["caption", str(run), picture]), "PyTorch is not installed", "--onnx")
    # onnxruntime missing
    _one_line_error(_cli_blocked(["caption", str(package), picture], block="onnxruntime"), "needs onnxruntime")
    # a device onnxruntime's CPU provider does not have; sampling, which only the PyTorch run does
    _one_line_error(_cli_blocked(["caption", str(package), picture, "--device", "cuda"]), "CPU")
    _one_line_error(_cli_blocked(["caption", str(package), picture, "--sample"]), "sampling")
    # a decoder whose state cannot be one ONNX step graph, and a damaged graph
    broken = tmp_path / "broken"
    broken.mkdir()
    for f in package.iterdir():
        (broken / f.name).write_bytes(f.read_bytes())
    manifest = json.loads((broken / "onnx.json").read_text())
    (broken / "onnx.json").write_text(json.dumps({**manifest, "decoder": "transformer"}))
    _one_line_error(_cli_blocked(["caption", str(broken), picture]), "transformer", "cannot run from ONNX")
    (broken / "onnx.json").write_text(json.dumps(manifest))
    (broken / "step.onnx").write_bytes(b"not a graph")
    _one_line_error(_cli_blocked(["caption", str(broken), picture]), "step.onnx", "not a loadable ONNX graph")
    # export of something that is not a run
    done = subprocess.run([sys.executable, "-m", "showtell", "export", str(tmp_path / "nothing"), str(tmp_path / "x"),
                           "--onnx"], capture_output=True, text=True, timeout=300)
    _one_line_error(done, "not found")


def test_a_decoder_whose_state_grows_is_refused_at_export(exported):
    """A Transformer-like decoder (its key/value cache grows with each word) cannot be one step graph."""
    from showtell.errors import RunError
    from showtell.inference.export import _probe
    from showtell.inference.torch_runtime import load_model

    run, _ = exported
    _, _, model = load_model(run)

    class Growing(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner, self.decoder = inner, inner.decoder

        def encode(self, images):
            return self.inner.encode(images)

        def init_state(self, features):
            return {**self.inner.init_state(features), "cache": features["global"][:, None, :4]}

        def step(self, words, state):
            cache = state.pop("cache")
            logprobs, state, attention = self.inner.step(words, state)
            return logprobs, {**state, "cache": torch.cat([cache, cache[:, -1:]], dim=1)}, attention

    with torch.no_grad(), pytest.raises(RunError, match="changes shape from word to word"):
        _probe(Growing(model), 32)
