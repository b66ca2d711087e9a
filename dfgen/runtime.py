"""Where a synthesis process runs: its rank among the processes, its device and its precision.

The rank decides which shards a process makes, so a wrong rank silently duplicates work: `--world-size W` without
`--rank` takes the rank from torchrun's, SLURM's or MPI's environment, or is refused."""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Mapping

import torch

from dfgen.errors import DfgenError

# Where launchers put them, first found wins (torchrun, MPICH/Intel MPI, SLURM's srun, Open MPI).
LOCAL_RANK_VARS = ("LOCAL_RANK", "MPI_LOCALRANKID", "SLURM_LOCALID", "OMPI_COMM_WORLD_LOCAL_RANK")
RANK_VARS = ("RANK", "PMI_RANK", "SLURM_PROCID", "OMPI_COMM_WORLD_RANK")
WORLD_SIZE_VARS = ("WORLD_SIZE", "PMI_SIZE", "SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE")


def launcher_world(environ: Mapping[str, str] | None = None) -> tuple[int, int, int]:
    """(local_rank, rank, world_size) from the launcher's environment, (0, 0, 1) without one; every value checked:
    a whole number, not negative, the rank below the world size, else one line naming the variable."""
    environ = os.environ if environ is None else environ
    local, _ = _env_number(environ, LOCAL_RANK_VARS, 0, 0)
    rank, rank_var = _env_number(environ, RANK_VARS, 0, 0)
    world, world_var = _env_number(environ, WORLD_SIZE_VARS, 1, 1)
    if rank >= world:
        raise DfgenError(f"{rank_var}={rank} but {world_var}={world}: a rank must be in 0..{world - 1}; the "
                         "launcher's variables disagree (check how the processes were started)")
    return local, rank, world


def _env_number(environ: Mapping[str, str], names: tuple[str, ...], default: int, minimum: int) -> tuple[int, str]:
    for name in names:
        if name in environ:
            text = environ[name].strip()
            if not re.fullmatch(r"[+-]?\d{1,9}", text):
                raise DfgenError(f"{name}={environ[name]!r} in the environment is not a whole number; unset it or "
                                 "start the processes with torchrun, srun or mpirun")
            if int(text) < minimum:
                raise DfgenError(f"{name}={text} in the environment must be >= {minimum}")
            return int(text), name
    return default, ""


def world_from_env(rank: int | None, world_size: int | None) -> tuple[int, int, int]:
    """(rank, world_size, local_rank): explicit flags first, then torchrun's / SLURM's / MPI's environment."""
    environ = os.environ
    for flag, value, minimum in (("--rank", rank, 0), ("--world-size", world_size, 1)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < minimum):
            raise DfgenError(f"{flag} must be a whole number >= {minimum}, got {value!r}")
    local, env_rank, env_world = launcher_world(environ)
    if rank is not None:
        if world_size is None and rank > 0:
            raise DfgenError(f"--rank {rank} needs --world-size (the number of processes)")
        world = world_size or 1
    elif world_size is not None:
        rank, world = _rank_for_world(world_size, env_rank, env_world, environ), world_size
    else:
        rank, world = env_rank, env_world
        _note_unused_array(env_world, environ)
    if not 0 <= rank < world:
        raise DfgenError(f"--rank must be in 0..{world - 1} for --world-size {world}, got {rank}")
    return rank, world, local


def _rank_for_world(world: int, env_rank: int, env_world: int, environ: Mapping[str, str]) -> int:
    """The rank of this process in `world` processes, from the environment, or a one-line refusal."""
    if env_world == world:  # torchrun, srun -n W, mpirun -n W (or a single process)
        return env_rank
    array_id = environ.get("SLURM_ARRAY_TASK_ID")
    if array_id is not None and env_world == 1:  # an array of single-process tasks
        count = environ.get("SLURM_ARRAY_TASK_COUNT")
        if count is not None and _env_number(environ, ("SLURM_ARRAY_TASK_COUNT",), 1, 1)[0] != world:
            raise DfgenError(f"--world-size {world} but this SLURM array has {count} tasks; pass --world-size {count} "
                             "or --rank for each task")
        array_rank = _env_number(environ, ("SLURM_ARRAY_TASK_ID",), 0, 0)[0] - \
            _env_number(environ, ("SLURM_ARRAY_TASK_MIN",), 0, 0)[0]
        if not 0 <= array_rank < world:
            raise DfgenError(f"SLURM array task {array_id} gives rank {array_rank}, outside 0..{world - 1} for "
                             f"--world-size {world}; pass --rank to each task")
        return array_rank
    if env_world > 1:
        raise DfgenError(f"--world-size {world} but the environment says {env_world} processes (WORLD_SIZE / "
                         "SLURM_NTASKS); drop --world-size, or pass --rank to each process")
    raise DfgenError(f"--world-size {world} without --rank, and no rank in the environment (torchrun's RANK, "
                     f"SLURM_PROCID, SLURM_ARRAY_TASK_ID): every process would make the same shards; pass --rank R "
                     f"(0..{world - 1}) to each process")


def _note_unused_array(env_world: int, environ: Mapping[str, str]) -> None:
    count = _env_number(environ, ("SLURM_ARRAY_TASK_COUNT",), 1, 1)[0]
    if env_world == 1 and count > 1:  # a sweep is fine (each task its own --out); a split needs --world-size
        print(f"note: SLURM array task {environ.get('SLURM_ARRAY_TASK_ID')} of {count} runs as a single process; "
              f"to divide one dataset over the array pass --world-size {count}", file=sys.stderr)


def resolve_device(name: str, local_rank: int) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise DfgenError("--device cuda was asked for but no CUDA GPU is visible; use --device cpu")
        return torch.device(name if ":" in name else f"cuda:{local_rank % torch.cuda.device_count()}")
    if name != "cpu":
        raise DfgenError(f"--device must be auto, cpu or cuda, got {name!r}")
    return torch.device("cpu")


def resolve_precision(precision: str, device: torch.device) -> str:
    if precision != "auto":
        return precision
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return "bf16"
    return "fp32"
