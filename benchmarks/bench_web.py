"""The exported web page in headless Chromium against onnxruntime in Python and PyTorch: captions/s
on the same pictures in one run, and the size of the folder the page is served from.

    python benchmarks/bench_web.py [--images 32]

Builds the `synth` preset's model (the demo's size: small CNN at 64 px; NIC and attention decoders,
random weights from seed 0, as bench_onnx.py does: speed does not depend on training), exports it
with `showtell export --web` (onnxruntime-web copied from web/node_modules: run `npm ci` in web/
first), serves the folder on 127.0.0.1 and captions the pictures on the page, greedy and beam 3,
one picture at a time (the page's way), from choosing the files to the last caption shown. Python
captions the same files with Captioner.load (PyTorch, the ONNX package) in batches of 32 and one by
one. The browser's wasm runs on one thread; set OMP_NUM_THREADS=1 for the like-for-like figures.
"""

from __future__ import annotations

import argparse
import functools
import http.server
import os
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

from bench_onnx import _package
from common import machine, table, timed

from showtell import Captioner
from showtell.data.synthetic import write_dataset
from showtell.decoding.options import decoding_label
from showtell.inference.web_export import ORT_FOLDER, export_web, find_onnxruntime_web, folder_size

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = os.environ.get("SHOWTELL_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"]


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


def _browser_rate(browser, folder: Path, files: list[str], beam: int) -> tuple[float, list[str]]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Quiet, directory=str(folder)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        page = browser.new_page()
        page.goto(f"http://127.0.0.1:{server.server_address[1]}/")
        page.wait_for_function("document.body.dataset.ready === '1'", timeout=60000)
        page.select_option("#beam", str(beam))
        page.set_input_files("#file", files[:2])   # warm-up: the first run compiles the graphs' kernels
        page.wait_for_function("document.body.dataset.done === '2'", timeout=120000)
        page.evaluate("document.getElementById('results').innerHTML = ''; delete document.body.dataset.done")
        started = time.perf_counter()
        page.set_input_files("#file", files)
        page.wait_for_function(f"document.body.dataset.done === '{len(files)}'", timeout=600000, polling=20)
        seconds = time.perf_counter() - started
        captions = page.evaluate("[...document.querySelectorAll('#results > li .caption')].map((p) => p.textContent)")
        page.close()
        return len(files) / seconds, captions
    finally:
        server.shutdown()
        server.server_close()


def main(images: int = 32) -> str:
    from playwright.sync_api import sync_playwright

    ort = find_onnxruntime_web(None)
    if ort is None:
        raise SystemExit("bench_web: onnxruntime-web is not installed (run `npm ci` in web/)")
    rows, sizes = [], []
    with tempfile.TemporaryDirectory() as tmp, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        folder = Path(tmp)
        write_dataset(folder / "data", n_images=images, seed=0, side=128)
        files = sorted(str(x) for x in (folder / "data" / "images").glob("*.png"))
        for decoder in ("nic", "attention"):
            run, package = _package(folder, decoder, folder / "data")
            site = export_web(run, folder / f"web-{decoder}", ort)
            ort_bytes = folder_size(site / ORT_FOLDER)
            sizes.append((decoder, f"{folder_size(site) / 1e6:.1f} MB", f"{ort_bytes / 1e6:.1f} MB",
                          f"{(folder_size(site) - ort_bytes) / 1e6:.1f} MB"))
            python = {"PyTorch": (Captioner.load(run), 32), "ONNX": (Captioner.load(package), 32),
                      "ONNX, one at a time": (Captioner.load(package), 1)}
            for beam in (1, 3):
                rates, captions = {}, {}
                for name, (captioner, batch) in python.items():
                    captions[name] = [r.caption for r in captioner.caption(files, beam_size=beam, batch_size=batch)]
                    seconds = timed(lambda c=captioner, b=beam, n=batch: c.caption(files, beam_size=b, batch_size=n),
                                    repeats=3, warmup=0, min_seconds=0.5)
                    rates[name] = len(files) / seconds
                rates["browser"], captions["browser"] = _browser_rate(browser, site, files, beam)
                same = captions["browser"] == captions["PyTorch"]
                rows.append((decoder, decoding_label(beam),
                             *(f"{rates[k]:,.1f}" for k in ("PyTorch", "ONNX", "ONNX, one at a time", "browser")),
                             f"{rates['browser'] / rates['PyTorch']:.2f}x", "yes" if same else "NO"))
        browser.close()
    return "\n".join([
        f"captioning {images} synthetic pictures (128 px PNG, shaped to 64), `synth` preset model with random weights; "
        f"headless Chromium {chromium_version()}, onnxruntime-web wasm on 1 thread; {machine()}", "",
        table(rows, ("decoder", "decoding", "PyTorch (batch 32)", "ONNX Python (batch 32)", "ONNX Python (batch 1)",
                     "browser (one at a time)", "browser / PyTorch", "same captions")), "",
        "the exported folder (`showtell export RUN OUT --web`, onnxruntime-web copied in):", "",
        table(sizes, ("decoder", "folder", "onnxruntime-web (wasm + module)", "graphs + page + vocabulary"))])


def chromium_version() -> str:
    import subprocess

    done = subprocess.run([CHROMIUM, "--version"], capture_output=True, text=True)
    return done.stdout.split()[1] if done.stdout.split()[1:] else "?"


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=32)
    args = parser.parse_args()
    print(main(args.images))
    sys.exit(0)
