"""torch.distributed set-up for `torchrun`: gloo on the CPU, nccl on GPUs."""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, List

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistributedContext:
    """Where this process sits in the job and which device it trains on."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def pick_device(preference: str, local_rank: int) -> torch.device:
    """'auto' -> this rank's GPU when CUDA is available, else the CPU."""
    if preference not in ("auto", "cpu", "cuda"):
        raise ValueError(f"device {preference!r} is not one of auto, cpu, cuda")
    if preference == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' requested but CUDA is not available")
    if preference == "cpu" or not torch.cuda.is_available():
        return torch.device("cpu")
    return torch.device("cuda", local_rank)


def init_distributed(device_preference: str = "auto") -> DistributedContext:
    """Join the process group that torchrun describes in the environment (or run alone).

    WORLD_SIZE > 1 in the environment starts a process group (nccl for CUDA, gloo for the
    CPU) unless one is already initialised by the caller.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", str(rank)))
    device = pick_device(device_preference, local_rank)
    if world_size > 1 and not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo",
                                rank=rank, world_size=world_size)
    return DistributedContext(rank=rank, world_size=world_size, local_rank=local_rank, device=device)


def shutdown_distributed() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def mean_across_ranks(value: torch.Tensor, context: DistributedContext) -> torch.Tensor:
    """All-reduce average of a tensor (identity when running alone)."""
    if not context.enabled:
        return value
    value = value.detach().clone()
    dist.all_reduce(value, op=dist.ReduceOp.SUM)
    return value / context.world_size


def sum_across_ranks(value: int, context: DistributedContext) -> int:
    """All-reduce sum of an integer counter (identity when running alone)."""
    if not context.enabled:
        return value
    tensor = torch.tensor([value], dtype=torch.long, device=context.device)
    dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return int(tensor.item())


def min_across_ranks(value: int, context: DistributedContext) -> int:
    """All-reduce minimum of an integer (identity when running alone)."""
    if not context.enabled:
        return value
    tensor = torch.tensor([value], dtype=torch.long, device=context.device)
    dist.all_reduce(tensor, op=dist.ReduceOp.MIN)
    return int(tensor.item())


def gather_objects(obj: Any, context: DistributedContext) -> List[Any]:
    """Every rank's `obj`, in rank order (a one-element list when running alone)."""
    if not context.enabled:
        return [obj]
    gathered: List[Any] = [None] * context.world_size
    dist.all_gather_object(gathered, obj)
    return gathered


def barrier(context: DistributedContext) -> None:
    if context.enabled:
        dist.barrier()
