"""Where tensors run and in what precision: device names, bfloat16 support, autocast.

The one place for each device rule, used by training, the Python API, the CLI and the service:

- `check_device_name(name, setting)`: the spelling of a device ('auto', 'cpu', 'cuda', 'cuda:N',
  'mps'), checked without torch (config files are read where torch may be absent);
- `resolve_device(name, setting)`: the torch.device it means on this machine, or a one-line error
  naming `setting` (`train.device`, `--device`, `device`) when this machine does not have it;
- `autocast(device, precision)`: bf16/fp16 autocast where asked for, nothing for fp32.

torch is imported inside the functions that need it, so `import showtell.device` stays light.
"""

from __future__ import annotations

import logging
import os
import re
import time
from pathlib import Path

from .errors import ArgumentError

DEVICE_NAMES = "auto, cpu, cuda, cuda:N or mps"
_NAME = re.compile(r"auto|cpu|mps|cuda(:\d+)?")


def check_device_name(name, setting: str = "train.device") -> str:
    """`name` if it is spelt as a device, else an ArgumentError naming `setting`."""
    text = str(name)
    if not _NAME.fullmatch(text):
        raise ArgumentError(f"{setting}: unknown device {text!r}; expected {DEVICE_NAMES}")
    return text


def local_rank() -> int:
    """This process's GPU under torchrun (LOCAL_RANK), 0 otherwise."""
    return int(os.environ.get("LOCAL_RANK", "0"))


def resolve_device(name, setting: str = "train.device"):
    """The torch.device for `name` (a device name or a torch.device): 'auto' is this rank's GPU when
    there is one, else the CPU. A device this machine lacks is a one-line ArgumentError."""
    import torch

    if not isinstance(name, (str, torch.device)):
        raise ArgumentError(f"{setting}: expected a device name such as 'cpu' or 'cuda', got {type(name).__name__}")
    text = check_device_name(name, setting)
    if text == "auto":
        return torch.device("cuda", local_rank()) if torch.cuda.is_available() else torch.device("cpu")
    if text.startswith("cuda") and not torch.cuda.is_available():
        raise ArgumentError(f"{setting}: {text} asked for, but no CUDA GPU is available")
    device = torch.device(text)
    try:
        torch.empty(1, device=device)
    except (RuntimeError, AssertionError, AttributeError):
        raise ArgumentError(f"{setting}: {device} is not available on this machine") from None
    return device


def cpu_has_native_bf16() -> bool:
    """Whether this CPU multiplies bfloat16 in hardware (AVX-512 BF16 or AMX). Without it PyTorch
    emulates bf16 and autocast is many times slower than fp32 (benchmarks/bench_precision.py)."""
    return bool({"avx512_bf16", "amx_bf16"} & cpu_flags()) or not Path("/proc/cpuinfo").exists()


def cpu_flags() -> set[str]:
    """The instruction-set flags of this CPU (Linux's /proc/cpuinfo; empty elsewhere)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    line = next((row for row in text.splitlines() if row.startswith("flags")), "")
    return set(line.partition(":")[2].split())


def instruction_set() -> str:
    """The widest vector and matrix instructions of this CPU, for benchmark and log lines:
    'AVX-512 + AMX', 'AVX-512', 'AVX2' or 'other'."""
    flags = cpu_flags()
    wide = "AVX-512" if "avx512f" in flags else "AVX2" if "avx2" in flags else "other"
    return wide + (" + AMX" if "amx_bf16" in flags else "")


def autocast(device, precision: str):
    """bf16 or fp16 autocast where asked for (CPU or GPU); a no-op context for fp32."""
    import torch

    dtype = torch.float16 if precision == "fp16" else torch.bfloat16
    return torch.autocast(device_type=device.type, dtype=dtype, enabled=precision in ("bf16", "fp16"))


# --- CPU threads ---------------------------------------------------------------------------------------
# PyTorch's intra-op threads wait on each other at every operation; the decoders are made of small
# operations, so when another process keeps a core busy two threads run 2-10x slower than one
# (benchmarks/bench_contention.py). 'auto' therefore uses the cores other processes leave free,
# measured from /proc/stat against this process's own CPU time, and checks again as it runs.
CHECK_EVERY_S = 10.0       # how often 'auto' looks at the machine again
FIRST_LOOK_S = 0.2         # the first measurement, before any work
log = logging.getLogger("showtell")


def _busy_seconds() -> float | None:
    """CPU seconds the whole machine has spent busy (all cores), from /proc/stat; None elsewhere."""
    try:
        fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    except OSError:
        return None
    user, nice, system, idle, iowait, irq, softirq, steal = (int(x) for x in (fields + ["0"] * 8)[:8])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def _own_seconds() -> float:
    t = os.times()
    return t.user + t.system


class ThreadPolicy:
    """The number of intra-op threads: a fixed count, or 'auto' (the cores other processes leave free,
    at most what PyTorch would use by default), re-measured every CHECK_EVERY_S seconds by `check()`.
    'auto' with OMP_NUM_THREADS set uses that count. Results differ in their last digits between
    thread counts, so a bitwise reproducible run (and a bitwise exact resume) needs a fixed count."""

    def __init__(self, setting="auto"):
        import torch

        self.auto = setting in (None, "auto")
        self.most = torch.get_num_threads()
        self.reason = "as set"
        if self.auto and os.environ.get("OMP_NUM_THREADS", "").strip().isdigit():   # the user's own choice wins
            self.auto, setting, self.reason = False, os.environ["OMP_NUM_THREADS"], "OMP_NUM_THREADS"
        self.count = self.most if self.auto else max(1, int(setting))
        self.mark = (time.monotonic(), _busy_seconds(), _own_seconds())

    def _free_cores(self) -> float | None:
        now, busy, own = time.monotonic(), _busy_seconds(), _own_seconds()
        then, busy_then, own_then = self.mark
        self.mark = (now, busy, own)
        if busy is None or busy_then is None or now - then <= 0:
            return None
        others = max(0.0, (busy - busy_then) - (own - own_then)) / (now - then)
        return (os.cpu_count() or 1) - others

    def start(self, announce: bool = True) -> int:
        """Measure for FIRST_LOOK_S (auto), set the threads, and say how many and why when that is
        news: other processes leave fewer cores than PyTorch would use, or (with `announce`) a
        count was set that differs from PyTorch's own."""
        if self.auto:
            time.sleep(max(0.0, FIRST_LOOK_S - (time.monotonic() - self.mark[0])))
            self._apply(self._free_cores(), "start")
        else:
            self._set(self.count)
            say = log.info if announce and self.count != self.most else log.debug
            say("using %d CPU thread%s (%s)", self.count, "" if self.count == 1 else "s", self.reason)
        return self.count

    def check(self) -> None:
        """Look at the machine again if CHECK_EVERY_S have passed (auto only); cheap otherwise."""
        if self.auto and time.monotonic() - self.mark[0] >= CHECK_EVERY_S:
            self._apply(self._free_cores(), "check")

    def _apply(self, free: float | None, when: str) -> None:
        count = self.most if free is None else max(1, min(self.most, int(free + 0.5)))
        if when == "check" and count == self.count:
            return
        self._set(count)
        cores = os.cpu_count() or 1
        why = ("could not measure the other processes' load" if free is None else
               f"other processes keep {cores - free:.1f} of {cores} cores busy")
        say = log.info if count < self.most or when == "check" else log.debug
        say("using %d CPU thread%s%s (%s)", count, "" if count == 1 else "s", " from now on" if when == "check" else "", why)

    def _set(self, count: int) -> None:
        import torch

        self.count = count
        torch.set_num_threads(count)


_policy: ThreadPolicy | None = None


def configure_threads(setting="auto", announce: bool = True) -> int:
    """Choose PyTorch's CPU threads for this process ('auto' or a count) and log the choice; returns
    the count (0 without PyTorch: the ONNX runtime keeps its own). Later `check_threads()` calls
    follow the machine's load (auto)."""
    global _policy
    try:
        _policy = ThreadPolicy(setting)
    except ImportError:
        return 0
    return _policy.start(announce)


def ensure_threads(setting="auto") -> None:
    """The library's entry points (the first `train`/`resume` or `Captioner.load` of a process used
    from Python) configure the policy unless the process already has one: the CLI's `main`
    configures it first, once, for every command."""
    if _policy is None:
        configure_threads(setting)


def check_threads() -> None:
    """Re-measure the machine's load if an 'auto' policy is configured and it is time (cheap)."""
    if _policy is not None:
        _policy.check()


def check_threads_setting(value, setting: str = "--threads") -> str:
    """'auto' or a whole number of threads from 1 to 256, as text; else an ArgumentError (its
    message starts with `setting`, when given)."""
    text = str(value).strip()
    if text == "auto" or (text.isdigit() and 1 <= int(text) <= 256):
        return text
    where = f"{setting}: " if setting else ""
    raise ArgumentError(f"{where}expected 'auto' or a number of threads from 1 to 256, got {value!r}")
