"""Teachers whose deep BatchNorm layers see tiny maps at the data's size: found at set-up, and said.

A stock ImageNet architecture fine-tuned on small images (a 7x7 stride-2 stem and a max-pool, so a 32-px input is
8x8 after the stem and 1x1 in the last stage) keeps BatchNorm statistics of maps of 2x2 and 1x1 in its deep layers.
Matching them constrains little: DeepInversion's images match those layers' statistics more closely than real
images do, without carrying the data's shapes, and a student may learn less from them. Synthesizing at twice the
size (deep maps twice as wide) and shrinking the images, or stronger in-loop jitter, did not teach a student more
on such a teacher; more images did (40 digits: 0.76-0.88 of real-data KD, 200: 0.94; docs/results.md), so set-up
changes nothing and says what it found and what helps (docs/design.md)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

TINY_SIDE = 2  # a BatchNorm layer whose input map is at most this wide carries little spatial statistics
TINY_SHARE = 0.25  # the teacher is of this family when at least this share of its BN layers (and two) see tiny maps


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


def bn_map_sizes(model: nn.Module, in_chans: int, size: int) -> MapSizes:
    """The smaller side of each BatchNorm2d layer's input map for one (1, in_chans, size, size) zero image, made on
    the model's own device and in its dtype (a teacher already on a GPU gets a GPU input)."""
    sides: list[int] = []

    def record(_module: nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
        sides.append(min(inputs[0].shape[-2:]))

    handles = [m.register_forward_pre_hook(record) for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    param = next(model.parameters(), None)
    dtype = param.dtype if param is not None else torch.float32
    device = param.device if param is not None else torch.device("cpu")
    was_training = model.training
    try:
        with torch.no_grad():
            model.eval()(torch.zeros(1, in_chans, size, size, device=device, dtype=dtype))
    finally:
        model.train(was_training)
        for handle in handles:
            handle.remove()
    return MapSizes(size, tuple(sides))


def describe_tiny_maps(maps: MapSizes) -> str:
    """One line: what was found, and what a user can do about it."""
    return (f"{maps.tiny} of the teacher's {len(maps.sides)} BatchNorm layers see maps of {TINY_SIDE}x{TINY_SIDE} "
            f"or less at {maps.input_size} px: their statistics constrain the images little, so a small set may teach "
            "a student less; more images help (--mode generator makes them for a tenth of the teacher passes), or a "
            "teacher that keeps wider maps at this size (a 3x3 stride-1 stem, no max-pool)")
