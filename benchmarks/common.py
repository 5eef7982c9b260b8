"""Shared helpers: timing that tolerates a noisy shared machine, and the machine's matmul limit."""

from __future__ import annotations

import os
import platform
import statistics
import time

import torch

# The wide small CNN of the demo and of attention, for NIC too: the preset's NIC has small_narrow
# since 2026-12-07 (bench_small_cnn.py compares them), and these benchmarks' recorded figures and
# NIC-against-attention ratios are of the wide one.
WIDE_CNN = "model.encoder=small"


def timed(fn, repeats: int = 5, warmup: int = 2, min_seconds: float = 0.3) -> float:
    """Median seconds per call over `repeats` rounds (each round loops until min_seconds)."""
    for _ in range(warmup):
        fn()
    rounds = []
    for _ in range(repeats):
        calls, started = 0, time.perf_counter()
        while True:
            fn()
            calls += 1
            elapsed = time.perf_counter() - started
            if elapsed >= min_seconds:
                break
        rounds.append(elapsed / calls)
    return statistics.median(rounds)


def alternating_rounds(steps: dict, rounds: int, min_seconds: float = 1.0) -> dict[str, list[float]]:
    """Seconds per call of each of `steps` (name -> fn), in `rounds` rounds that take turns (each at
    least `min_seconds`), so that a slower stretch of a shared machine falls on every one of them."""
    for step in steps.values():
        timed(step, repeats=1, warmup=2, min_seconds=0)
    seconds = {name: [] for name in steps}
    for _ in range(rounds):
        for name, step in steps.items():
            seconds[name].append(timed(step, repeats=1, warmup=0, min_seconds=min_seconds))
    return seconds


def matmul_flops(dtype=torch.float32, n: int = 2048, device: str = "cpu") -> float:
    """FLOP/s of a large square matrix product: the machine's practical limit for dense work."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)

    def run():
        a @ b
        if device != "cpu":
            torch.cuda.synchronize()

    seconds = timed(run, repeats=3, warmup=1, min_seconds=0.5 if dtype == torch.float32 else 0.05)
    return 2 * n ** 3 / seconds


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    from showtell.device import instruction_set

    gpu = f", GPU {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ""
    return (f"{cpu} ({instruction_set()}), {os.cpu_count()} cores, {torch.get_num_threads()} torch threads, "
            f"torch {torch.__version__}{gpu}")


def table(rows: list[tuple], header: tuple) -> str:
    widths = [max(len(str(x)) for x in column) for column in zip(header, *rows)]
    line = lambda r: "| " + " | ".join(str(x).ljust(w) for x, w in zip(r, widths)) + " |"  # noqa: E731
    return "\n".join([line(header), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *map(line, rows)])
