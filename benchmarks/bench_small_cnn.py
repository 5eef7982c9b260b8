"""The synth preset's whole NIC training step (CNN, LSTM, Adam) with the small CNN against
`small_narrow`, its half-width twin that the preset gives NIC (issue 31), at 64 and 96 px on random
pictures, in alternating rounds; prints the median seconds a step and the ratio.

    python benchmarks/bench_small_cnn.py        (about a minute on 2 CPU cores)
"""

from __future__ import annotations

import statistics

from bench_precision import preset_step
from common import alternating_rounds, machine, table

from showtell.config import load_config

ENCODERS, SIZES, ROUNDS = ("small", "small_narrow"), (64, 96), 5


def main() -> str:
    rows = []
    for size in SIZES:
        steps = {name: preset_step("fp32", load_config("synth", [f"data.image_size={size}", f"model.encoder={name}"]))
                 for name in ENCODERS}
        seconds = alternating_rounds(steps, ROUNDS)
        wide, narrow = (statistics.median(seconds[name]) for name in ENCODERS)
        rows.append((f"{size} px", f"{1000 * wide:.0f}", f"{1000 * narrow:.0f}", f"{wide / narrow:.2f}x"))
    return "\n".join([f"synth preset NIC training step, 32 pictures x 3 captions, median of {ROUNDS} alternating rounds "
                      f"of a second or more; {machine()}", "",
                      table(rows, ("pictures", "small, ms a step", "small_narrow, ms a step", "small_narrow speed"))])


if __name__ == "__main__":
    print(main())
