"""What the teacher sees of the optimised image each iteration: the paper's random roll and flip, and optional
random-resized crops (SRe2L/CDA style). All draws of a stage come up front from the batch's generator, so a batch's
images are a function of its seed only."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Generator, Tensor


@dataclass
class StageJitter:
    """The per-iteration draws of one stage."""

    shifts: list[list[int]]  # (dy, dx) roll per iteration
    flips: list[bool]
    crops: list[tuple[int, int, int, int]] | None  # (top, left, height, width) per iteration, or None

    def view(self, x: Tensor, it: int, size: int) -> Tensor:
        """The teacher's view at iteration `it`: roll, flip, then crop resized back to `size`."""
        if any(self.shifts[it]):
            x = torch.roll(x, shifts=self.shifts[it], dims=(2, 3))
        if self.flips[it]:
            x = x.flip(3)
        if self.crops is not None:
            top, left, height, width = self.crops[it]
            if (height, width) != tuple(x.shape[-2:]):
                x = F.interpolate(x[:, :, top:top + height, left:left + width], size=(size, size), mode="bilinear",
                                  align_corners=False)
        return x


def draw_stage_jitter(generator: Generator, iterations: int, size: int, jitter_fraction: float, flip: bool,
                      crop_min_scale: float | None) -> StageJitter:
    """Draw a stage's jitter. Flips and crops are drawn only when on, so turning them on does not change the
    rolls, and a run without them keeps the random stream of earlier versions."""
    max_shift = int(size * jitter_fraction)
    shifts = torch.randint(-max_shift, max_shift + 1, (iterations, 2), generator=generator).tolist()
    coins = (torch.rand(iterations, generator=generator) < 0.5).tolist()  # drawn either way (stream as before)
    flips = coins if flip else [False] * iterations
    crops = None
    if crop_min_scale is not None and crop_min_scale < 1:
        crops = _draw_crops(generator, iterations, size, crop_min_scale)
    return StageJitter(shifts, flips, crops)


def _draw_crops(generator: Generator, iterations: int, size: int, min_scale: float) -> list[tuple[int, int, int, int]]:
    """Random-resized crop boxes with an easy-to-hard curriculum: the smallest area allowed falls linearly from
    the whole image to `min_scale` over the stage (CDA), aspect ratio log-uniform in [3/4, 4/3]."""
    u = torch.rand(iterations, 4, generator=generator).tolist()
    boxes = []
    for it, (a, r, y, x) in enumerate(u):
        lowest = 1.0 - (1.0 - min_scale) * it / max(1, iterations - 1)
        area = (lowest + (1.0 - lowest) * a) * size * size
        ratio = math.exp(math.log(3 / 4) + (math.log(4 / 3) - math.log(3 / 4)) * r)
        width = max(1, min(size, round(math.sqrt(area * ratio))))
        height = max(1, min(size, round(math.sqrt(area / ratio))))
        boxes.append((int(y * (size - height + 1)), int(x * (size - width + 1)), height, width))
    return boxes
