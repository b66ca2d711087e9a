"""Processes of a `distill run`: rank and world from torchrun's (or SLURM's) environment, the process group, the
autocast precision, and gathering Python objects from every rank."""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from distill.errors import DistillError

# where each launcher puts a process's place (torchrun, Intel MPI / PMI, SLURM's srun, Open MPI), first found wins
_LOCAL_RANK_VARS = ("LOCAL_RANK", "MPI_LOCALRANKID", "SLURM_LOCALID", "OMPI_COMM_WORLD_LOCAL_RANK")
_RANK_VARS = ("RANK", "PMI_RANK", "SLURM_PROCID", "OMPI_COMM_WORLD_RANK")
_WORLD_VARS = ("WORLD_SIZE", "PMI_SIZE", "SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE")


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
    local_rank, rank, world_size = launch_from_env(os.environ, need_rendezvous=not dist.is_initialized())
    if device == "cuda" and not torch.cuda.is_available():
        raise DistillError("--device cuda was asked for, but no CUDA device is available; use --device cpu")
    use_cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    dev = torch.device("cuda", local_rank) if use_cuda else torch.device("cpu")
    if use_cuda:
        if local_rank >= torch.cuda.device_count():
            raise DistillError(f"local rank {local_rank} but this node has {torch.cuda.device_count()} CUDA "
                               "device(s): start at most one process per GPU on each node")
        torch.cuda.set_device(dev)
    env = DistEnv(rank, world_size, local_rank, dev)
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo", rank=rank, world_size=world_size)
        env.owns_group = True
    return env


def launch_from_env(environ: Mapping[str, str], need_rendezvous: bool = True) -> tuple[int, int, int]:
    """(local rank, rank, world size) from the launcher's variables, checked: whole numbers, 0 <= rank < world size,
    and with several processes the rendezvous address the process group is made with (MASTER_ADDR, MASTER_PORT).
    A wrong value fails here in one line instead of waiting forever for ranks that never come."""
    local_rank, local_var = _env_int(environ, _LOCAL_RANK_VARS, 0)
    rank, rank_var = _env_int(environ, _RANK_VARS, 0)
    world, world_var = _env_int(environ, _WORLD_VARS, 1)
    if world < 1:
        raise DistillError(f"{world_var}={world}: the number of processes must be at least 1; check the launcher")
    if not 0 <= rank < world:
        raise DistillError(f"{rank_var or 'rank'}={rank} but {world_var or 'world size'}={world}: ranks run "
                           f"0..{world - 1}; check the launcher's settings")
    if local_rank < 0:
        raise DistillError(f"{local_var}={local_rank}: a local rank is a number from 0; check the launcher's settings")
    if world > 1 and need_rendezvous:
        missing = [v for v in ("MASTER_ADDR", "MASTER_PORT") if not environ.get(v)]
        if missing:
            raise DistillError(f"{world_var}={world} processes but no rendezvous address ({' and '.join(missing)} "
                               "unset): launch with torchrun (or srun under a SLURM allocation with MASTER_ADDR and "
                               "MASTER_PORT exported), or run a single process without it")
        port = environ["MASTER_PORT"]
        if not port.strip().isdigit() or not 0 < int(port) < 65536:
            raise DistillError(f"MASTER_PORT={port!r} is not a port number (1..65535)")
    return local_rank, rank, world


def _env_int(environ: Mapping[str, str], names: tuple[str, ...], default: int) -> tuple[int, str | None]:
    """The first of `names` set in the environment, as an integer, and its name; (default, None) if none is."""
    for name in names:
        value = environ.get(name)
        if value is None or value == "":
            continue
        try:
            return int(value.strip()), name
        except ValueError:
            raise DistillError(f"{name}={value!r} is not a whole number; check the launcher's settings") from None
    return default, None


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
