"""Process layout: one process, or one of N under torchrun (DDP or FSDP).

torchrun sets WORLD_SIZE / RANK / LOCAL_RANK; then the process group is gloo on the CPU and
nccl on CUDA, and each process uses cuda:LOCAL_RANK when it trains on CUDA.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from .config import TrainConfigError


@dataclass
class Layout:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def distributed(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def resolve_device(spec: str, local_rank: int) -> torch.device:
    if spec == "auto":
        spec = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(spec)
    except RuntimeError as e:
        raise TrainConfigError(f"invalid device {spec!r}: {e}") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise TrainConfigError(f"device {spec!r} requested but CUDA is not available")
        if dev.index is None:
            dev = torch.device("cuda", local_rank)
    elif dev.type != "cpu":
        raise TrainConfigError(f"unsupported training device {spec!r} (use cpu or cuda)")
    return dev


def setup(device: str) -> Layout:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    dev = resolve_device(device, local)
    if world > 1 and not dist.is_initialized():
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
    return Layout(rank, world, local, dev)


def all_sum(value: float | int, layout: Layout) -> float:
    """Sum a number over processes (float64, so counts and loss sums stay exact enough)."""
    if not layout.distributed:
        return float(value)
    t = torch.tensor([float(value)], dtype=torch.float64,
                     device=layout.device if layout.device.type == "cuda" else "cpu")
    dist.all_reduce(t)
    return float(t.item())


def barrier(layout: Layout) -> None:
    if layout.distributed:
        dist.barrier()


def teardown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
