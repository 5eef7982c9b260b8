"""torch.distributed for `torchrun`: who am I, how many are we, and the few collective calls training needs.

Launched by torchrun (RANK, WORLD_SIZE, LOCAL_RANK in the environment), showtell joins the
process group with gloo on CPU or nccl on GPU. Each global batch is split across ranks by
`shard`; gradients are averaged by DistributedDataParallel; only rank 0 writes files.
Without torchrun every function here is the single-process identity.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from datetime import timedelta

import torch
import torch.distributed as td

from ..device import local_rank


def launched_by_torchrun() -> bool:
    """Started by torchrun (with one process too: it then joins a process group of one, so the
    NCCL or gloo set-up runs as it would with more)."""
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def init(device_type: str) -> None:
    """Join the process group once (no-op outside torchrun)."""
    if launched_by_torchrun() and not td.is_initialized():
        backend = "nccl" if device_type == "cuda" else "gloo"
        if device_type == "cuda":
            torch.cuda.set_device(local_rank())
        td.init_process_group(backend=backend, timeout=timedelta(minutes=30))


def is_distributed() -> bool:
    return td.is_available() and td.is_initialized() and td.get_world_size() > 1


def world_size() -> int:
    return td.get_world_size() if is_distributed() else 1


def rank() -> int:
    return td.get_rank() if is_distributed() else 0


def is_main() -> bool:
    """Rank 0, or a process outside torchrun. Still right after the process group is gone (when
    the command prints its summary), because torchrun's RANK stays in the environment."""
    if is_distributed():
        return td.get_rank() == 0
    return not launched_by_torchrun() or int(os.environ["RANK"]) == 0


@contextmanager
def process_group(device_type: str):
    """Inside: joined to torchrun's process group (when launched by torchrun); left on the way out."""
    init(device_type)
    try:
        yield
    finally:
        cleanup()


def barrier() -> None:
    if is_distributed():
        td.barrier()


def _all_reduce(value: float, device: torch.device, op) -> float:
    if not is_distributed():
        return value
    tensor = torch.tensor([float(value)], dtype=torch.float64,
                          device=device if device.type == "cuda" else torch.device("cpu"))
    td.all_reduce(tensor, op=op)
    return float(tensor.item())


def all_reduce_sum(value: int | float, device: torch.device) -> float:
    return _all_reduce(value, device, td.ReduceOp.SUM if td.is_available() else None)


def all_reduce_max(value: float, device: torch.device) -> float:
    return _all_reduce(value, device, td.ReduceOp.MAX if td.is_available() else None)


def average_gradients(model: torch.nn.Module) -> None:
    """Average gradients over ranks by hand (for steps that do not go through DDP's forward)."""
    if not is_distributed():
        return
    for p in model.parameters():
        if p.grad is not None:
            td.all_reduce(p.grad)
            p.grad /= world_size()


def shard(items: list) -> list:
    """This rank's contiguous share of a global batch (ranks take equal-as-possible slices)."""
    if not is_distributed():
        return items
    n, r, w = len(items), rank(), world_size()
    start = (n * r) // w
    return items[start:(n * (r + 1)) // w]


def wrap(model: torch.nn.Module, device: torch.device):
    from torch.nn.parallel import DistributedDataParallel

    ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=ids, find_unused_parameters=False)


def cleanup() -> None:
    if td.is_available() and td.is_initialized():
        td.destroy_process_group()
