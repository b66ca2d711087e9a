"""Agreement near chance: when a teacher's top-1 agreement with the target classes is no better than guessing.

A guesser over `num_classes` classes is right with probability p = 1 / num_classes; over `images` images its share
of hits has standard error sqrt(p (1 - p) / images). An agreement within CHANCE_SE standard errors of p is
indistinguishable from chance: the images are not (yet) their classes to the teacher, so anything measured on them
as class images (the probe's mirror test, a report's agreement) means nothing."""

from __future__ import annotations

import math

CHANCE_SE = 3.0  # standard errors above chance an agreement must clear to count as recognition


def chance_bound(num_classes: int, images: int) -> float:
    """The highest agreement still near chance for `images` images of `num_classes` classes."""
    p = 1.0 / max(1, num_classes)
    return p + CHANCE_SE * math.sqrt(p * (1 - p) / max(1, images))


def near_chance(agreement: float | None, num_classes: int, images: int) -> bool:
    """Whether `agreement` (a share in [0, 1]) over `images` images is within chance's reach; False when unknown."""
    if agreement is None or images < 1 or num_classes < 2:
        return False
    return agreement <= chance_bound(num_classes, images)


def describe_chance(num_classes: int, images: int) -> str:
    """What "near chance" means here: 'up to 0.30 for 10 classes on 20 images'."""
    return f"up to {chance_bound(num_classes, images):.2f} for {num_classes} classes on {images} images"
