"""Run every benchmark and print its table; with --write, record them in BENCHMARKS.md.

    python benchmarks/run_all.py [--write]      (about 4 minutes on 2 CPU cores)
"""

from __future__ import annotations

import argparse
import datetime
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import bench_decode  # noqa: E402
import bench_features  # noqa: E402
import bench_precision  # noqa: E402
import bench_prefix_lm  # noqa: E402
import bench_serve  # noqa: E402
import bench_train  # noqa: E402
from common import machine  # noqa: E402

BENCHES = [("Training step", bench_train), ("Decoding", bench_decode), ("Feature extraction", bench_features),
           ("bfloat16 against float32", bench_precision), ("Service", bench_serve),
           ("A pretrained language model as the decoder", bench_prefix_lm)]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--write", action="store_true", help="replace the measured sections of BENCHMARKS.md")
    args = parser.parse_args()
    sections = []
    for title, module in BENCHES:
        started = time.monotonic()
        text = module.main()
        print(f"## {title}\n\n{text}\n\n({time.monotonic() - started:.0f} s)\n", flush=True)
        sections.append(f"### {title}\n\n```\n{text}\n```\n")
    if args.write:
        path = Path(__file__).resolve().parents[1] / "BENCHMARKS.md"
        head = path.read_text().split("<!-- measured -->")[0] if path.exists() else "# Benchmarks\n\n"
        stamp = f"Measured {datetime.date.today()} on {machine()} with `python benchmarks/run_all.py --write`.\n\n"
        path.write_text(head + "<!-- measured -->\n\n" + stamp + "\n".join(sections))
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
