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

import os
import re
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
