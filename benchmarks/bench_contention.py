"""Training and beam-3 decoding speed of NIC, attention and the Transformer at the `synth` preset,
alone and beside one busy process, at the default thread policy and at fixed thread counts: caption
samples trained per second and captions decoded per second, as ratios within one run.

    python benchmarks/bench_contention.py               # about 6 minutes on 2 cores
    python benchmarks/bench_contention.py --quick       # fewer steps, for a smoke run

Each measurement runs in a fresh process (thread settings and OpenMP's environment apply at start),
with `showtell.device.configure_threads` choosing threads as `showtell train` would; "busy" is
`python -c "while True: pass"` started beside it. The output names the CPU's instruction set.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DECODERS = ("nic", "attention", "transformer")
WORKER = Path(__file__).resolve()


def measure(decoder: str, threads: str, steps: int) -> dict:
    """In this process: samples/s of `steps` training steps and captions/s of beam-3 decoding."""
    import torch
    from common import WIDE_CNN

    from showtell.config import load_config
    from showtell.device import configure_threads
    from showtell.models.caption_model import build_model
    from showtell.vocab import END, Vocabulary

    chosen = configure_threads(threads)
    config = load_config("synth", [f"model.decoder={decoder}", WIDE_CNN])
    vocab = Vocabulary(["<pad>", "<start>", "<end>", "<unk>", *[f"w{i}" for i in range(60)]])
    torch.manual_seed(0)
    model = build_model(config, vocab, pretrained=True)
    t = config.train
    images = torch.randint(0, 256, (t.batch_size, 3, 64, 64), dtype=torch.uint8)
    tokens = torch.randint(4, len(vocab), (t.batch_size * t.captions_per_image, 14))
    tokens[:, 0], tokens[:, -1] = 1, END
    optimizer = torch.optim.Adam(model.parameters(), t.lr)

    def step():
        model.train()
        out = model(tokens, images=images, repeats=t.captions_per_image)
        optimizer.zero_grad()
        (out.loss / out.words).backward()
        optimizer.step()

    for _ in range(2):
        step()
    started = time.perf_counter()
    for _ in range(steps):
        step()
    train_rate = steps * tokens.shape[0] / (time.perf_counter() - started)

    from showtell.decoding.search import decode

    with torch.no_grad():   # never <end>: every caption runs its full 20 words, whatever the random weights
        output = getattr(model.decoder, "output", None)
        if output is not None:
            output.bias[END] = -30.0
        model.eval()
        pictures = images[:16]
        decode(model, model.encode(pictures), 3, 20)
        started = time.perf_counter()
        rounds = max(1, steps // 10)
        for _ in range(rounds):
            decode(model, model.encode(pictures), 3, 20)
        decode_rate = rounds * len(pictures) / (time.perf_counter() - started)
    return {"decoder": decoder, "threads": chosen, "train_samples_s": train_rate, "decode_captions_s": decode_rate}


def run_one(decoder: str, threads: str, busy: bool, steps: int) -> dict:
    hog = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if busy else None
    try:
        done = subprocess.run([sys.executable, str(WORKER), "--worker", decoder, threads, str(steps)],
                              capture_output=True, text=True, timeout=900,
                              env={**os.environ, "PYTHONPATH": str(ROOT / "src")})
    finally:
        if hog is not None:
            hog.kill()
            hog.wait()
    if done.returncode != 0:
        raise RuntimeError(done.stderr[-2000:])
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(quick: bool = False) -> str:
    sys.path.insert(0, str(ROOT / "src"))
    from common import table

    from showtell.device import instruction_set

    steps = 6 if quick else 30
    settings = ("auto", "1", str(os.cpu_count() or 1))
    results = {}
    for busy in (False, True):
        for decoder in DECODERS:
            for threads in settings:
                results[busy, decoder, threads] = run_one(decoder, threads, busy, steps)
    rows = []
    for busy in (False, True):
        for decoder in DECODERS:
            best_train = max(results[busy, decoder, th]["train_samples_s"] for th in settings[1:])
            best_decode = max(results[busy, decoder, th]["decode_captions_s"] for th in settings[1:])
            for threads in settings:
                r = results[busy, decoder, threads]
                rows.append(("beside one busy process" if busy else "alone", decoder, f"{threads} ({r['threads']})",
                             f"{r['train_samples_s']:.0f}", f"{r['train_samples_s'] / best_train:.2f}",
                             f"{r['decode_captions_s']:.1f}", f"{r['decode_captions_s'] / best_decode:.2f}"))
    nic = {busy: results[busy, "nic", "auto"] for busy in (False, True)}
    attention = {busy: results[busy, "attention", "auto"] for busy in (False, True)}
    lines = [f"synth preset (64 px, small CNN trained, batch 32 x 3 captions of 13 words; beam 3, 20 words, 16 "
             f"pictures); {os.cpu_count()} cores, {instruction_set()}, {steps} steps per measurement", "",
             table(rows, ("machine", "decoder", "threads (used)", "train samples/s", "of best fixed",
                          "beam-3 captions/s", "of best fixed")), ""]
    for busy in (False, True):
        label = "beside one busy process" if busy else "alone"
        lines.append(f"attention / NIC ({label}, auto): training {attention[busy]['train_samples_s'] / nic[busy]['train_samples_s']:.2f}x, "
                     f"decoding {attention[busy]['decode_captions_s'] / nic[busy]['decode_captions_s']:.2f}x")
    return "\n".join(lines)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        print(json.dumps(measure(sys.argv[2], sys.argv[3], int(sys.argv[4]))))
        sys.exit(0)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    print(main(parser.parse_args().quick))
