"""torch.distributed for data-parallel training: setup from torchrun's environment and the few collectives used.

With one process (no torchrun) every helper is a cheap no-op, so single-device code paths stay as they are.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from datetime import timedelta
from typing import Any, Iterator

import torch
import torch.distributed as dist

from nmt.errors import NMTError


def active() -> bool:
    return dist.is_available() and dist.is_initialized()


def world_size() -> int:
    return dist.get_world_size() if active() else 1


def rank() -> int:
    return dist.get_rank() if active() else 0


def is_main() -> bool:
    return rank() == 0


def setup(device: torch.device) -> torch.device:
    """Join the process group torchrun describes (WORLD_SIZE > 1); returns this rank's device."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or active():
        return device
    if device.type == "cuda":
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        device = torch.device("cuda", local)
    dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return device


def teardown() -> None:
    if active():
        dist.destroy_process_group()


def sum_(tensor: torch.Tensor) -> torch.Tensor:
    """Sum over ranks, in place on the tensor's device; returns it. The host does not wait for the result."""
    if active():
        dist.all_reduce(tensor)
    return tensor


def broadcast(value: Any) -> Any:
    """Rank 0's value, on every rank."""
    if not active():
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def gather(value: Any) -> list[Any]:
    """Every rank's value, in rank order, on every rank."""
    if not active():
        return [value]
    out: list[Any] = [None] * world_size()
    dist.all_gather_object(out, value)
    return out


def barrier() -> None:
    if active():
        dist.barrier()


@contextmanager
def main_first(name: str) -> Iterator[None]:
    """Rank 0 runs the block first; the other ranks run it once rank 0 is through, however long that takes.

    Preparing a large corpus can outlast a collective's timeout (10-30 minutes), so the other ranks wait
    on the process group's key-value store instead of in a barrier. If rank 0 fails, they stop too.
    """
    if not active():
        yield
        return
    store = dist.distributed_c10d._get_default_store()
    key = f"nmt/{name}"
    if rank() != 0:
        store.wait([key], timedelta(days=7))
        if store.get(key) != b"ok":
            raise NMTError(f"rank 0 failed while preparing the {name}; its message says why")
        yield
        return
    try:
        yield
    except BaseException:
        store.set(key, "failed")
        raise
    store.set(key, "ok")
