"""Process-group set-up for `torchrun` (DistributedDataParallel): one process per GPU, or gloo on CPU.

A run is distributed when torchrun's environment (`WORLD_SIZE` > 1, `RANK`, `LOCAL_RANK`,
`MASTER_ADDR`, `MASTER_PORT`) is present; otherwise it is a single process and nothing here touches
torch.distributed.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from xkd_core.device import resolve_device


@dataclass(frozen=True)
class DistInfo:
    """Where this process sits in the job."""

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        """Rank 0 logs, validates the summary and writes checkpoints."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError as exc:
        raise ValueError(f"environment variable {name}={raw!r} is not an integer") from exc


def init_distributed(device_pref: str) -> tuple[DistInfo, torch.device]:
    """Join the torchrun process group if there is one (nccl on GPU, gloo on CPU); pick the device."""
    world = _env_int("WORLD_SIZE", 1)
    rank = _env_int("RANK", 0)
    local = _env_int("LOCAL_RANK", rank)
    info = DistInfo(rank=rank, local_rank=local, world_size=world)
    device = resolve_device(device_pref, local)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if info.distributed and not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        kwargs = {"device_id": device} if device.type == "cuda" else {}
        dist.init_process_group(backend=backend, rank=rank, world_size=world, **kwargs)
    return info, device


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def all_gather_objects(obj: object, info: DistInfo) -> list:
    """Every rank's `obj`, in rank order (just `[obj]` in a single process)."""
    if not info.distributed:
        return [obj]
    out: list = [None] * info.world_size
    dist.all_gather_object(out, obj)
    return out


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
