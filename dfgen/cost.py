"""What synthesis costs, counted as it runs: teacher passes, teacher forward-only evaluations, the FLOPs of anything
else run per image (a generator), and wall time.

Units (docs/design.md):
- one *teacher pass* is one image through the frozen teacher forward and backward to the input (no gradient to the
  teacher's weights): what an optimisation step costs per image, whatever is optimised (pixels or a generator);
- one *teacher forward* is one image through the teacher forward only (the start-up noise batch, the final
  evaluation of the written images, stored soft-label views);
- *generator FLOPs* are floating-point operations (a multiply-add is 2) of the image generator, forward and
  backward, measured once per generator with torch's FLOP counter and added per step.

The engines report to every counter active in the current context (`counting`), so a shard's counter and the run's
counter are filled by the same increments; nothing is inferred from the schedule. A context variable (not a global)
keeps jobs in different threads apart."""

from __future__ import annotations

import contextvars
import json
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

_ACTIVE: contextvars.ContextVar[tuple[Cost, ...]] = contextvars.ContextVar("dfgen_cost_counters", default=())

UNITS = ("teacher_passes: images through the teacher forward and backward to the input; teacher_forwards: images "
         "through the teacher forward only; generator_flops: FLOPs of the image generator (forward and backward, a "
         "multiply-add counts 2); seconds: wall time")


@dataclass
class Cost:
    """A counter of synthesis work (see the module's docstring for the units)."""

    teacher_passes: int = 0
    teacher_forwards: int = 0
    generator_flops: int = 0
    seconds: float = 0.0

    def add(self, other: Cost) -> None:
        self.teacher_passes += other.teacher_passes
        self.teacher_forwards += other.teacher_forwards
        self.generator_flops += other.generator_flops
        self.seconds += other.seconds

    def record(self, images: int | None = None) -> dict[str, Any]:
        """As JSON: the totals, and per image where `images` is given."""
        data: dict[str, Any] = asdict(self)
        data["seconds"] = round(self.seconds, 3)
        if images:
            data["per_image"] = {
                "teacher_passes": round(self.teacher_passes / images, 4),
                "teacher_forwards": round(self.teacher_forwards / images, 4),
                "generator_flops": round(self.generator_flops / images, 1),
                "seconds": round(self.seconds / images, 6),
            }
        return data

    @classmethod
    def from_record(cls, data: dict[str, Any] | None) -> Cost:
        data = data or {}
        return cls(int(data.get("teacher_passes", 0)), int(data.get("teacher_forwards", 0)),
                   int(data.get("generator_flops", 0)), float(data.get("seconds", 0.0)))


@contextmanager
def counting(cost: Cost | None = None) -> Iterator[Cost]:
    """Count the work done inside the block into `cost` (a new one if None), and its wall time. Nested blocks
    count into every open counter."""
    cost = cost if cost is not None else Cost()
    token = _ACTIVE.set(_ACTIVE.get() + (cost,))
    start = time.perf_counter()
    try:
        yield cost
    finally:
        cost.seconds += time.perf_counter() - start
        _ACTIVE.reset(token)


def count_teacher(images: int, backward: bool) -> None:
    """`images` images went through the teacher: with a backward to the input (passes) or forward only."""
    for cost in _ACTIVE.get():
        if backward:
            cost.teacher_passes += images
        else:
            cost.teacher_forwards += images


def count_generator(flops: int) -> None:
    for cost in _ACTIVE.get():
        cost.generator_flops += int(flops)


def watch_teacher(model: nn.Module):
    """Count every call of `model`: a call whose input requires a gradient is a pass (the engines always take the
    backward of what they forward with a gradient), any other a forward. Returns the hook's handle."""

    def hook(module: nn.Module, inputs: tuple[Any, ...]) -> None:
        x = inputs[0] if inputs else None
        if isinstance(x, Tensor):
            count_teacher(int(x.shape[0]), backward=x.requires_grad and torch.is_grad_enabled())
    return model.register_forward_pre_hook(hook)


def measure_flops(call: Callable[[], Tensor], backward: bool) -> int:
    """FLOPs of `call()` (and of its backward to everything that requires a gradient, where `backward`), counted by
    torch's FLOP counter. Gradients it leaves are the caller's to clear."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        if backward:
            call().float().sum().backward()
        else:
            with torch.no_grad():
                call()
    return int(counter.get_total_flops())


STARTUP_FILE = "startup-cost.json"  # under shards/: what the start-up (noise levels, probe) cost the first process


def record_startup(out: str | Path, cost: Cost) -> None:
    """Keep the start-up cost of the first process that claimed `out` (the probe runs there; a resume or another
    rank that reuses the recorded probe pays only the noise batch, not counted in the dataset's cost)."""
    from dfgen.atomic import write_json_atomic

    path = Path(out) / "shards" / STARTUP_FILE
    if path.is_file():
        return
    try:
        write_json_atomic(path, cost.record(), replace=False)
    except FileExistsError:  # another rank recorded the same start-up first
        pass


def dataset_cost(out: str | Path, sidecars: list[dict[str, Any]], images: int) -> dict[str, Any]:
    """dataset.json's "cost": the start-up plus every shard's counted work, in total and per image."""
    path = Path(out) / "shards" / STARTUP_FILE
    startup = Cost.from_record(json.loads(path.read_text())) if path.is_file() else Cost()
    total = Cost()
    total.add(startup)
    for sidecar in sidecars:
        total.add(Cost.from_record(sidecar.get("cost")))
    return {**total.record(images), "startup": startup.record(), "units": UNITS}
