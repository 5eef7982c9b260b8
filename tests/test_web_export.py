"""`showtell export --web`: the static page captions in headless Chromium as PyTorch does.

The page runs the exported graphs with onnxruntime-web (from web/node_modules, which `npm ci` in
web/ installs from the lock file; .ci/run does it) and decodes with showtell.js's port of
decoding/search.py; its captions and log-probabilities must be the Captioner's.
"""

from __future__ import annotations

import functools
import http.server
import json
import threading
from pathlib import Path

import numpy as np
import pytest
from conftest import ROOT
from PIL import Image
from test_browser import ARGS, chromium

from showtell import Captioner
from showtell.data.images import LONG_SIDE_LIMIT, ImageTransform
from showtell.inference import web_export

DIST = ROOT / "web" / "node_modules" / "onnxruntime-web" / "dist"
N_PICTURES = 30


@pytest.fixture(scope="module")
def ort_dist() -> Path:
    # no npm install here: tests make no network requests; .ci/run runs `npm ci` in web/ first
    if not (DIST / web_export.pinned()["module"]).is_file():
        pytest.skip("onnxruntime-web is not installed (run `npm ci` in web/; .ci/run does this)")
    return DIST


@pytest.fixture(scope="module")
def browser():
    if chromium() is None:
        pytest.skip("no Chromium found (apt-get install chromium; .ci/run does this)")
    playwright = pytest.importorskip("playwright.sync_api")
    with playwright.sync_playwright() as p:
        b = p.chromium.launch(executable_path=chromium(), args=ARGS)
        yield b
        b.close()


class Folder:
    """A folder served by Python's own static file server on a free loopback port."""

    def __init__(self, path: Path):
        handler = functools.partial(_Quiet, directory=str(path))
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self):
        self.server.shutdown()
        self.server.server_close()


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


def _open(browser, folder: Folder):
    """The page, loaded, with every request it makes and every script error recorded; requests
    anywhere but the folder's server are refused, as with the network switched off."""
    page = browser.new_page()
    requests, errors = [], []
    page.on("request", lambda r: requests.append(r.url))
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.route("**/*", lambda route: route.continue_() if route.request.url.startswith(folder.url) else route.abort())
    page.goto(folder.url + "/")
    page.wait_for_function("document.body.dataset.ready === '1' || document.getElementById('error').textContent",
                           timeout=60000)
    assert page.inner_text("#error") == "", page.inner_text("#error")
    return page, requests, errors


def _caption_on_page(page, files: list[Path], beam: int) -> list[dict]:
    page.evaluate("document.getElementById('results').innerHTML = ''; delete document.body.dataset.done")
    page.select_option("#beam", str(beam))
    page.set_input_files("#file", [str(f) for f in files])
    page.wait_for_function(f"document.body.dataset.done === '{len(files)}'", timeout=120000)
    return page.evaluate("""[...document.querySelectorAll('#results > li')].map((li) => ({
        name: li.dataset.name, error: li.dataset.error || null,
        hypotheses: li.dataset.hypotheses ? JSON.parse(li.dataset.hypotheses) : null}))""")


def _agree(shown: list[dict], results, beam: int) -> None:
    for got, want in zip(shown, results, strict=True):
        assert got["name"] == Path(want.source).name and want.error is None
        assert [h["caption"] for h in got["hypotheses"]] == [h.caption for h in want.hypotheses], got["name"]
        assert [h["finished"] for h in got["hypotheses"]] == [h.finished for h in want.hypotheses]
        gaps = [abs(h["logprob"] - w.logprob) for h, w in zip(got["hypotheses"], want.hypotheses)]
        assert max(gaps) < 1e-3, (got["name"], gaps)
        assert len(got["hypotheses"]) == (1 if beam == 1 else len(want.hypotheses))


@pytest.fixture(scope="module", params=["nic", "attention"])
def exported(request, ort_dist, tmp_path_factory):
    run = request.getfixturevalue("trained_run" if request.param == "nic" else "attention_run")
    out = web_export.export_web(run, tmp_path_factory.mktemp("web") / "site", ort_dist)
    folder = Folder(out)
    yield run, out, folder
    folder.stop()


@pytest.mark.browser
@pytest.mark.slow
def test_browser_captions_equal_pytorch(browser, exported, synth_dir, tmp_path):
    run, out, folder = exported
    pictures = sorted((synth_dir / "images").glob("*.png"))[:N_PICTURES]
    page, requests, errors = _open(browser, folder)
    assert "from this folder" in page.inner_text("#runtime")
    captioner = Captioner.load(run)
    for beam in (1, 3):
        shown = _caption_on_page(page, pictures, beam)
        expected = captioner.caption([str(p) for p in pictures], beam_size=beam, n_best=beam)
        _agree(shown, expected, beam)
        # the tiny model's captions are much alike, but each picture's log-probability is its own: a
        # picture shaped wrongly on the page shows there
        assert len({round(r.logprob, 3) for r in expected}) > N_PICTURES // 2
    # a broken picture: a message on the page, and the page still captions the next one
    broken = tmp_path / "broken.png"
    broken.write_bytes(pictures[0].read_bytes()[:60])
    shown = _caption_on_page(page, [broken, pictures[1]], 1)
    assert shown[0]["error"] and "broken.png: not a picture" in page.inner_text("#error")
    assert shown[1]["hypotheses"][0]["caption"] == captioner.caption(str(pictures[1]), beam_size=1).caption
    assert errors == []
    # nothing but the folder's own files (and the pictures the user gave, as blob: URLs)
    assert requests and all(u.startswith((folder.url + "/", "blob:" + folder.url + "/")) for u in requests), requests
    assert {u.rsplit("/", 1)[-1] for u in requests if u.startswith(folder.url)} >= {"encoder.onnx", "step.onnx"}


CASES = [  # (width, height), transform: every branch of ImageTransform.to_array and each filter
    ((53, 41), ImageTransform(crop=31, resize=37)),
    ((41, 53), ImageTransform(crop=24, resize=27, interpolation="bicubic")),
    ((64, 64), ImageTransform(crop=32, resize=32, mode="squash")),
    ((50, 30), ImageTransform(crop=20, resize=26, interpolation="hamming")),
    ((45, 31), ImageTransform(crop=19, resize=21, interpolation="box")),
    ((30, 40), ImageTransform(crop=36, resize=24)),          # the crop is larger than the picture: padding
    ((240, 7), ImageTransform(crop=8, resize=9)),            # extreme aspect ratio: the source-box shortcut
    ((7, 240), ImageTransform(crop=8, resize=9)),            # ... through a box that widens and shortens
    ((23, 37), ImageTransform(crop=32, resize=32, mode="squash", interpolation="lanczos")),   # height first
    ((160, 120), ImageTransform(crop=56, resize=64)),
    ((300, 200), ImageTransform(crop=32, resize=32, mode="squash")),
]
# Known gap: squashing a picture much taller than wide, both sides shrinking (64 x 200 -> 32 x 32), this
# Pillow 13.0 build takes the two passes in an order showtell.js does not know; a few bytes differ by 1.


@pytest.mark.browser
def test_preprocessing_equals_pillow(browser):
    """showtell.js's port of the picture geometry gives ImageTransform.to_array's bytes exactly."""
    folder = Folder(Path(web_export.__file__).parent / "web")   # the module as shipped; no model needed
    page = browser.new_page()
    page.goto(folder.url + "/onnxruntime-web.json")
    rng = np.random.default_rng(0)
    for (w, h), t in CASES:
        pixels = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        pixels[: h // 2] = pixels[: h // 2] // 4 + 100   # smooth and sharp regions
        expected = t.to_array(Image.fromarray(pixels))
        got = page.evaluate("""async ([w, h, data, t]) => {
            const m = await import('./showtell.js');
            return Array.from(m.prepare({width: w, height: h, data: Uint8Array.from(data)}, t)); }""",
                            [w, h, pixels.ravel().tolist(), {"crop": t.crop, "resize": t.resize, "mode": t.mode,
                                                             "interpolation": t.interpolation,
                                                             "long_side_limit": LONG_SIDE_LIMIT}])
        assert np.array_equal(np.asarray(got, dtype=np.uint8).reshape(expected.shape), expected), ((w, h), t)
    folder.stop()


def test_the_cdn_page_pins_version_and_integrity():
    pin = web_export.pinned()
    html = web_export._page(web_export._runtime(pin, None))
    url = f"https://cdn.jsdelivr.net/npm/onnxruntime-web@{pin['version']}/dist/{pin['module']}"
    imports = json.loads(html.split('<script type="importmap">')[1].split("</script>")[0])
    assert imports == {"imports": {"onnxruntime-web": url}, "integrity": {url: pin["integrity"][pin["module"]]}}
    assert "from cdn.jsdelivr.net" in html
    lock = json.loads((ROOT / "web" / "package-lock.json").read_text())
    assert lock["packages"]["node_modules/onnxruntime-web"]["version"] == pin["version"]
    assert json.loads((ROOT / "web" / "package.json").read_text())["dependencies"]["onnxruntime-web"] == pin["version"]


def test_the_pinned_hashes_are_the_npm_files(ort_dist):
    for name, digest in web_export.pinned()["integrity"].items():
        assert web_export.sri((ort_dist / name).read_bytes()) == digest, name


def _one_line(args, capsys, *words):
    from showtell.cli import main

    assert main(["export", *args]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("showtell: error: "), lines
    for word in words:
        assert word in lines[0], lines[0]


def test_bad_onnxruntime_web_folders_are_one_line_errors(trained_run, tmp_path, capsys):
    run = str(trained_run)
    _one_line([run, str(tmp_path / "a"), "--web", "--onnxruntime-web", str(tmp_path / "missing")], capsys,
              "--onnxruntime-web", "no such folder")
    (tmp_path / "empty").mkdir()
    _one_line([run, str(tmp_path / "b"), "--web", "--onnxruntime-web", str(tmp_path / "empty")], capsys,
              "--onnxruntime-web", "holds no ort.wasm.bundle.min.mjs")
    fake = tmp_path / "fake"
    fake.mkdir()
    for name in (web_export.pinned()["module"], web_export.pinned()["wasm"]):
        (fake / name).write_bytes(b"not onnxruntime-web")
    _one_line([run, str(tmp_path / "c"), "--web", "--onnxruntime-web", str(fake)], capsys,
              "--onnxruntime-web", "hash differs")
    _one_line([run, str(tmp_path / "d"), "--onnxruntime-web", str(fake)], capsys, "--onnxruntime-web", "only with --web")
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    _one_line([run, str(tmp_path / "busy"), "--web"], capsys, "holds other files")
    assert not any((tmp_path / x).exists() for x in "abcd")


class _Table:
    """A decoder whose log-probabilities are a table (previous word, time step) -> next word: the
    same model for search.py (NumPy) and for showtell.js, so the two searches can be compared."""

    def __init__(self, table: np.ndarray):
        self.table = table   # (V, T, V) float32 log-probabilities

    def init_state(self, features):
        return {"t": np.zeros(1, dtype=np.int64)}

    def step(self, words, state):
        return self.table[words, state["t"]], {"t": state["t"] + 1}, None


def _table(seed: int, words: int = 7, steps: int = 7) -> np.ndarray:
    """Random log-probabilities, <end> likelier as the caption grows (some end early, some never)."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(0, 1.5, (words, steps, words))
    logits[:, :, 2] += np.linspace(-3, 1.5, steps)[None, :] + rng.normal(0, 1, (words, 1))
    logits[:, :, 3] += seed % 3          # <unk> is sometimes the likeliest word
    top = logits.max(-1, keepdims=True)
    return (logits - top - np.log(np.exp(logits - top).sum(-1, keepdims=True))).astype(np.float32)


@pytest.mark.browser
def test_decoding_equals_search_py_on_a_table_model(browser):
    """showtell.js's greedy and beam search choose, score and rank as decoding/search.py does:
    finished and cut hypotheses, the length penalty, the max-length rule, the word mask."""
    from showtell.decoding.search import decode

    folder = Folder(Path(web_export.__file__).parent / "web")
    page = browser.new_page()
    page.goto(folder.url + "/onnxruntime-web.json")
    cases, expected = [], []
    for seed in range(24):
        table = _table(seed)
        beam, alpha, block = 1 + seed % 4, (0.0, 0.7, 2.0)[seed % 3], seed % 5 != 0
        out = decode(_Table(table), None, beam, 5, alpha, block, n_best=beam)
        expected.append([{"words": out.sequences[0, k, :out.lengths[0, k]].tolist(), "logprob": float(out.logprobs[0, k]),
                          "score": float(out.scores[0, k]), "finished": bool(out.finished[0, k])}
                         for k in range(out.scores.shape[1]) if np.isfinite(out.scores[0, k])])
        cases.append([table.ravel().tolist(), list(table.shape), {"beamSize": beam, "nBest": beam, "maxLength": 5,
                                                                  "lengthPenalty": alpha, "blockUnk": block}])
    got = page.evaluate("""async (cases) => {
        const m = await import('./showtell.js');
        const out = [];
        for (const [flat, [V, T], opts] of cases) {
            const table = Float32Array.from(flat);
            const fake = {
                async initState() { return { t: [0] }; },
                selectRows(state, rows) { return { t: rows.map((r) => state.t[r]) }; },
                async step(words, state) {
                    const lp = new Float32Array(words.length * V);
                    words.forEach((w, i) => lp.set(table.subarray((w * T + state.t[i]) * V, (w * T + state.t[i] + 1) * V), i * V));
                    return [lp, { t: state.t.map((x) => x + 1) }];
                },
            };
            out.push(opts.beamSize === 1 ? await m.greedy(fake, null, opts) : await m.beamSearch(fake, null, opts));
        }
        return out; }""", cases)
    folder.stop()
    assert any(h["finished"] for e in expected for h in e) and any(not h["finished"] for e in expected for h in e)
    for seed, (g, e) in enumerate(zip(got, expected, strict=True)):
        assert [h["words"] for h in g] == [h["words"] for h in e], seed
        assert [h["finished"] for h in g] == [h["finished"] for h in e], seed
        assert np.allclose([h["logprob"] for h in g], [h["logprob"] for h in e], rtol=0, atol=1e-6), seed
        assert np.allclose([h["score"] for h in g], [h["score"] for h in e], rtol=0, atol=1e-6), seed


def test_a_transformer_run_is_refused_as_its_onnx_export_is(tmp_path, capsys):
    """An untrained Transformer run (its key/value cache grows each word): the same line as --onnx."""
    import torch

    from showtell.cli import main
    from showtell.config import load_config
    from showtell.models.caption_model import build_model
    from showtell.run import Run
    from showtell.vocab import Vocabulary

    torch.manual_seed(0)
    config = load_config("synth", ["model.decoder=transformer", "model.hidden_dim=32", "model.embed_dim=32",
                                   "model.transformer_heads=2", "data.image_size=32"])
    vocab = Vocabulary(["<pad>", "<start>", "<end>", "<unk>", "a", "red", "circle"])
    run = Run.create(tmp_path / "run", config, vocab, {})
    run.save_model(build_model(config, vocab, pretrained=False), {"step": 0})
    lines = []
    for flag in ("--onnx", "--web"):
        assert main(["export", str(run.path), str(tmp_path / flag.strip("-")), flag]) == 2
        lines.append(capsys.readouterr().err.strip())
    assert lines[0] == lines[1] and len(lines[1].splitlines()) == 1, lines
    assert "cannot be exported to ONNX" in lines[1]
    assert not (tmp_path / "web").exists()


@pytest.mark.browser
def test_a_tampered_onnxruntime_web_is_refused_with_a_message(browser, exported, tmp_path):
    """The integrity hashes are checked: a changed byte in onnxruntime-web stops the page, which says so."""
    import shutil

    _, out, _ = exported
    copy = Path(shutil.copytree(out, tmp_path / "site"))
    with open(copy / web_export.ORT_FOLDER / web_export.pinned()["module"], "a") as module:
        module.write("\n// changed\n")
    folder = Folder(copy)
    page = browser.new_page()
    page.goto(folder.url + "/")
    page.wait_for_function("document.getElementById('error').textContent.length > 0", timeout=30000)
    assert "could not be loaded" in page.inner_text("#error") and page.evaluate("document.body.dataset.ready") is None
    folder.stop()
