"""The synth preset's whole NIC training step (CNN, LSTM, Adam) with the small CNN against
`small_narrow`, its half-width twin that the preset gives NIC (issue 31), at 64 and 96 px on random
pictures, in alternating rounds; prints the median seconds a step and the ratio.

    python benchmarks/bench_small_cnn.py        (about a minute on 2 CPU cores)
"""

from __future__ import annotations

import statistics
import time

from bench_precision import preset_step
from common import machine, table

from showtell.config import load_config

ENCODERS, SIZES, ROUNDS, STEPS = ("small", "small_narrow"), (64, 96), 5, 5


def main() -> str:
    rows = []
    for size in SIZES:
        steps = {name: preset_step("fp32", load_config("synth", [f"data.image_size={size}", f"model.encoder={name}"]))
                 for name in ENCODERS}
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
