"""The HTTP service under a bounded concurrent load on loopback: throughput and p50/p99 latency,
with micro-batching against one picture per forward pass (--max-batch 1), in the same run."""

from __future__ import annotations

import io
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import torch
from common import WIDE_CNN, machine, table
from PIL import Image

from showtell.config import load_config
from showtell.data.synthetic import write_dataset
from showtell.models.caption_model import build_model
from showtell.run import Run
from showtell.vocab import Vocabulary

CLIENTS, REQUESTS = 16, 320


def make_run(folder: Path) -> Path:
    """An untrained model of the demo's size (speed does not depend on what it has learned)."""
    data = write_dataset(folder / "data", 40, seed=0, side=64)
    import json

    captions = [s["tokens"] for im in json.loads(data.read_text())["images"] for s in im["sentences"]]
    config = load_config("synth", [WIDE_CNN])
    vocab = Vocabulary.build(captions, 1)
    torch.manual_seed(0)
    model = build_model(config, vocab)
    run = Run.create(folder / "run", config, vocab, {"data": [], "images": None, "features": None})
    run.save_model(model, {"note": "untrained, for benchmarks"})
    return folder / "run"


def load(url: str, picture: bytes) -> tuple[float, list[float], int]:
    def one(_):
        started = time.perf_counter()
        r = httpx.post(url + "/v1/captions", files=[("images", ("p.png", picture, "image/png"))],
                       params={"beam_size": 3}, timeout=120)
        return time.perf_counter() - started, r.status_code

    with ThreadPoolExecutor(CLIENTS) as pool:
        list(pool.map(one, range(CLIENTS * 2)))  # warm-up
        started = time.perf_counter()
        results = list(pool.map(one, range(REQUESTS)))
        wall = time.perf_counter() - started
    errors = sum(1 for _, code in results if code != 200)
    return REQUESTS / wall, sorted(t for t, _ in results), errors


def serve(run: Path, *options: str) -> tuple[subprocess.Popen, str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    process = subprocess.Popen([sys.executable, "-m", "showtell", "--quiet", "serve", str(run), "--port", str(port),
                                *options], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    for _ in range(300):
        try:
            if httpx.get(url + "/healthz", timeout=1).status_code == 200:
                return process, url
        except httpx.HTTPError:
            time.sleep(0.2)
    process.kill()
    raise RuntimeError("server did not start")


def main() -> str:
    with tempfile.TemporaryDirectory() as tmp:
        run = make_run(Path(tmp))
        buffer = io.BytesIO()
        Image.open(next((Path(tmp) / "data" / "images").glob("*.png"))).save(buffer, format="PNG")
        picture = buffer.getvalue()
        rows, rates = [], {}
        for label, options in (("micro-batching (up to 32 pictures, 5 ms window)", ()),
                               ("one picture per forward pass", ("--max-batch", "1"))):
            process, url = serve(run, *options)
            try:
                rate, latencies, errors = load(url, picture)
                stats = httpx.get(url + "/healthz").json()["batching"]
            finally:
                process.terminate()
                process.wait()
            p50 = statistics.median(latencies)
            p99 = latencies[int(0.99 * (len(latencies) - 1))]
            rates[label] = rate
            rows.append((label, f"{rate:.0f}", f"{p50 * 1000:.0f}", f"{p99 * 1000:.0f}",
                         f"{stats['images'] / max(stats['batches'], 1):.1f}", errors))
    ratio = rates["micro-batching (up to 32 pictures, 5 ms window)"] / rates["one picture per forward pass"]
    return "\n".join([f"service, demo-sized model (small CNN at 64 px + LSTM), beam 3, {CLIENTS} concurrent clients, "
                      f"{REQUESTS} requests of one picture; {machine()}", "",
                      table(rows, ("server", "requests/s", "p50 ms", "p99 ms", "pictures per pass", "non-200")), "",
                      f"micro-batching vs one picture per pass: {ratio:.2f}x throughput"])


if __name__ == "__main__":
    print(main())
