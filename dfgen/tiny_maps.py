"""Teachers whose deep BatchNorm layers see tiny maps at the data's size, and the default schedule they get.

A stock ImageNet architecture fine-tuned on small images (a 7x7 stride-2 stem and a max-pool, so a 32-px input is
8x8 after the stem and 1x1 in the last stage) keeps BatchNorm statistics of maps of 2x2 and 1x1 in its deep layers.
Matching them constrains little: DeepInversion's images satisfy such a teacher without carrying the data's shapes,
and a student learns little from them. When the schedule is left to dfgen and the teacher also runs at twice its
size, the default schedule then ends at twice the size (its deep maps twice as wide) and the images are written at
the teacher's size, shrunk with antialiasing (docs/design.md). Set-up prints why."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

TINY_SIDE = 2  # a BatchNorm layer whose input map is at most this wide carries little spatial statistics
TINY_SHARE = 0.25  # the teacher is of this family when at least this share of its BN layers (and two) see tiny maps
UPSCALE = 2  # the default schedule's last stage for such a teacher, as a multiple of its size


@dataclass(frozen=True)
class MapSizes:
    """The side of the map each BatchNorm layer sees, in forward order, at one input size."""

    input_size: int
    sides: tuple[int, ...]

    @property
    def tiny(self) -> int:
        return sum(side <= TINY_SIDE for side in self.sides)

    @property
    def has_tiny_maps(self) -> bool:
        """At least TINY_SHARE of the BN layers, and at least two, see maps of TINY_SIDE or less: a LeNet whose
        last convolution is 1x1 (one such layer) is not of this family."""
        return self.tiny >= 2 and self.tiny >= TINY_SHARE * len(self.sides)


def bn_map_sizes(model: nn.Module, in_chans: int, size: int, device: torch.device | str = "cpu") -> MapSizes:
    """The smaller side of each BatchNorm2d layer's input map for one (1, in_chans, size, size) zero image."""
    sides: list[int] = []

    def record(_module: nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
        sides.append(min(inputs[0].shape[-2:]))

    handles = [m.register_forward_pre_hook(record) for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    param = next(model.parameters(), None)
    dtype = param.dtype if param is not None else torch.float32
    was_training = model.training
    try:
        with torch.no_grad():
            model.eval()(torch.zeros(1, in_chans, size, size, device=device, dtype=dtype))
    finally:
        model.train(was_training)
        for handle in handles:
            handle.remove()
    return MapSizes(size, tuple(sides))


def larger_final_schedule(schedule: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """The default schedule moved up by UPSCALE: each stage's size times UPSCALE, same iterations."""
    return [(res * UPSCALE, iterations) for res, iterations in schedule]


def describe_tiny_maps(maps: MapSizes, schedule: list[tuple[int, int]] | None) -> str:
    """One line: what was found and what the default schedule became (None: the teacher rejects the larger size)."""
    found = (f"{maps.tiny} of the teacher's {len(maps.sides)} BatchNorm layers see maps of {TINY_SIDE}x{TINY_SIDE} "
             f"or less at {maps.input_size} px")
    if schedule is None:
        return f"{found}; it does not run at {UPSCALE * maps.input_size} px, so the schedule stays"
    from dfgen.config import format_schedule

    return (f"{found} -> default schedule {format_schedule(schedule)}, images shrunk to {maps.input_size} px "
            f"(deep statistics of wider maps)")
