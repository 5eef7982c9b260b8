"""The synth preset's whole NIC training step (CNN, LSTM, Adam) with the small CNN against
`small_narrow`, its half-width twin that the preset gives NIC (issue 31), at 64 and 96 px on random
pictures, in alternating rounds; prints the median seconds a step and the ratio.

    python benchmarks/bench_small_cnn.py        (about a minute on 2 CPU cores)
"""

from __future__ import annotations

import statistics
import time

import torch
from common import machine, table

from showtell.config import load_config
from showtell.models.caption_model import build_model
from showtell.vocab import END, START, Vocabulary

ENCODERS, SIZES, ROUNDS, STEPS = ("small", "small_narrow"), (64, 96), 5, 5


def preset_step(size: int, encoder: str):
    config = load_config("synth", [f"data.image_size={size}", f"model.encoder={encoder}"])
    generator = torch.Generator().manual_seed(0)
    vocab = Vocabulary.build([[f"w{i}" for i in range(30)]], min_word_count=1)
    model = build_model(config, vocab).train()
    pictures, repeats = config.train.batch_size, config.train.captions_per_image
    images = torch.randint(0, 256, (pictures, 3, size, size), dtype=torch.uint8, generator=generator)
    tokens = torch.randint(4, len(vocab), (pictures * repeats, 14), generator=generator)
    tokens[:, 0], tokens[:, -1] = START, END
    optimizer = torch.optim.Adam(model.parameters(), 1e-4)

    def step():
        loss = model(tokens, images=images, repeats=repeats).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return step


def main() -> str:
    rows = []
    for size in SIZES:
        steps = {name: preset_step(size, name) for name in ENCODERS}
        seconds = {name: [] for name in ENCODERS}
        for step in steps.values():
            step()
            step()
        for _ in range(ROUNDS):          # alternating, so a busy moment of the host falls on both
            for name, step in steps.items():
                started = time.perf_counter()
                for _ in range(STEPS):
                    step()
                seconds[name].append((time.perf_counter() - started) / STEPS)
        wide, narrow = (statistics.median(seconds[name]) for name in ENCODERS)
        rows.append((f"{size} px", f"{1000 * wide:.0f}", f"{1000 * narrow:.0f}", f"{wide / narrow:.2f}x"))
    return "\n".join([f"synth preset NIC training step, 32 pictures x 3 captions, median of {ROUNDS} alternating rounds; "
                      + machine(), "",
                      table(rows, ("pictures", "small, ms a step", "small_narrow, ms a step", "small_narrow speed"))])


if __name__ == "__main__":
    print(main())
