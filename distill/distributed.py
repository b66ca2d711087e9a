"""Processes of a `distill run`: rank and world from torchrun's (or SLURM's) environment, the process group, the
autocast precision, and gathering Python objects from every rank."""

from __future__ import annotations

import contextlib
import sys
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from timm.utils import world_info_from_env

from distill.errors import DistillError


@dataclass
class DistEnv:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    owns_group: bool = False

    @property
    def main(self) -> bool:
        return self.rank == 0

    def log(self, message: str) -> None:
        """A line on stderr, from the main rank only."""
        if self.main:
            print(message, file=sys.stderr, flush=True)


def setup_distributed(device: str) -> DistEnv:
    """Rank and world from torchrun's (or SLURM's) environment; a process group when there are several ranks
    (NCCL on GPUs, gloo on CPU)."""
    local_rank, rank, world_size = world_info_from_env()
    if device == "cuda" and not torch.cuda.is_available():
        raise DistillError("--device cuda was asked for, but no CUDA device is available; use --device cpu")
    use_cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    dev = torch.device("cuda", local_rank) if use_cuda else torch.device("cpu")
    if use_cuda:
        torch.cuda.set_device(dev)
    env = DistEnv(rank, world_size, local_rank, dev)
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo", rank=rank, world_size=world_size)
        env.owns_group = True
    return env


def resolve_precision(precision: str, device: torch.device) -> torch.dtype | None:
    if precision == "auto":
        return torch.bfloat16 if device.type == "cuda" else None
    if precision in ("bf16", "fp16") and device.type != "cuda":
        raise DistillError(f"--precision {precision} needs a CUDA device; use fp32 (or auto) on CPU")
    return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


def autocast(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    """torch.autocast at `dtype` (from `resolve_precision`); None: fp32, no autocast at all."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def gather_objects(obj: Any, world_size: int) -> list[Any]:
    """`obj` of every rank (rank order); just `[obj]` without a process group."""
    if world_size <= 1:
        return [obj]
    gathered: list[Any] = [None] * world_size
    dist.all_gather_object(gathered, obj)
    return gathered
