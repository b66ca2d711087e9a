"""The label plan: which class and which random seed every image gets, as pure functions of
(seed, index). Nothing of size `n` is ever materialised, so a plan for 1.2M images costs nothing.

Layout. Images come in *groups* of `images_per_class` (M) consecutive indices of one class, and in
*rounds* of C*M images in which every one of the C classes has exactly one group, in a per-round
order drawn from the seed. A batch is K*M consecutive images (K = classes_per_batch), so inside full
rounds it holds K groups: K classes with M >= 2 images each, which the diversity losses need. The
last, partial round of R < C*M images gives every class R // C images, the first R % C classes of
its order one more, so over the whole dataset class counts differ by at most one (when R < 2C some
classes then have a single image in their batch; the diversity losses skip anchors without a
positive).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from dfgen.config import DEFAULT_IMAGES_PER_CLASS, DEFAULT_MAX_CLASSES_PER_BATCH
from dfgen.errors import DfgenError

_STREAM_BATCH = 0  # SeedSequence stream ids: keep batch seeds and round orders independent
_STREAM_ROUND = 1


def derive_seed(seed: int, stream: int, index: int) -> int:
    """A 63-bit seed that depends only on (seed, stream, index): never on rank, device or time."""
    words = np.random.SeedSequence([seed, stream, index]).generate_state(2, dtype=np.uint32)
    return int((int(words[0]) << 31) ^ int(words[1])) & ((1 << 63) - 1)


@dataclass(frozen=True)
class LabelPlan:
    n: int
    num_classes: int
    classes_per_batch: int
    images_per_class: int
    seed: int
    shard_size: int

    def __post_init__(self) -> None:
        if self.shard_size % self.batch_size:
            raise ValueError(f"shard size {self.shard_size} must be a multiple of the batch size {self.batch_size}")
        if self.classes_per_batch > self.num_classes:
            raise ValueError(
                f"classes per batch ({self.classes_per_batch}) exceeds the teacher's {self.num_classes} classes"
            )

    @property
    def batch_size(self) -> int:
        return self.classes_per_batch * self.images_per_class

    @property
    def round_size(self) -> int:
        return self.num_classes * self.images_per_class

    @property
    def num_batches(self) -> int:
        return math.ceil(self.n / self.batch_size)

    @property
    def num_shards(self) -> int:
        return math.ceil(self.n / self.shard_size)

    def batch_range(self, batch: int) -> range:
        return range(batch * self.batch_size, min(self.n, (batch + 1) * self.batch_size))

    def shard_range(self, shard: int) -> range:
        return range(shard * self.shard_size, min(self.n, (shard + 1) * self.shard_size))

    def shard_batches(self, shard: int) -> range:
        first = shard * self.shard_size // self.batch_size
        return range(first, min(self.num_batches, first + self.shard_size // self.batch_size))

    def batch_seed(self, batch: int) -> int:
        return derive_seed(self.seed, _STREAM_BATCH, batch)

    def round_order(self, round_index: int) -> np.ndarray:
        rng = np.random.Generator(np.random.PCG64(derive_seed(self.seed, _STREAM_ROUND, round_index)))
        return rng.permutation(self.num_classes)

    def labels(self, indices: range | np.ndarray) -> np.ndarray:
        """Class of each image index (vectorised; O(len + C) per call)."""
        idx = np.asarray(indices, dtype=np.int64)
        if idx.size and (idx.min() < 0 or idx.max() >= self.n):
            raise IndexError("image index outside the plan")
        full_rounds = self.n // self.round_size
        rounds = idx // self.round_size
        offsets = idx % self.round_size
        groups = offsets // self.images_per_class
        last = rounds >= full_rounds
        if last.any():
            remainder = self.n - full_rounds * self.round_size
            base, extra = divmod(remainder, self.num_classes)
            off = offsets[last]
            big = extra * (base + 1)  # the first `extra` classes of the order have base + 1 images
            groups[last] = np.where(
                off < big, off // (base + 1), extra + (off - big) // max(base, 1)
            )
        out = np.empty_like(idx)
        for round_index in np.unique(rounds):
            mask = rounds == round_index
            out[mask] = self.round_order(int(round_index))[groups[mask]]
        return out

    def batch_labels(self, batch: int) -> np.ndarray:
        return self.labels(self.batch_range(batch))

    def class_counts(self) -> np.ndarray:
        """Images per class over the whole plan, in closed form."""
        full_rounds, remainder = divmod(self.n, self.round_size)
        counts = np.full(self.num_classes, full_rounds * self.images_per_class, dtype=np.int64)
        if remainder:
            base, extra = divmod(remainder, self.num_classes)
            order = self.round_order(full_rounds)
            counts[order] += base
            counts[order[:extra]] += 1
        return counts

    def shards_for_rank(self, rank: int, world_size: int) -> range:
        return range(rank, self.num_shards, world_size)


def batch_layout(num_classes: int, batch_size: int | None, classes_per_batch: int | None,
                 images_per_class: int | None, min_images: int = 2) -> tuple[int, int, list[str]]:
    """(classes per batch K, images per class M, notes) from any of --batch-size, --classes-per-batch and
    --images-per-class. A batch size alone is split as K x 4 when that fits the teacher's classes, else into as many
    classes as divide it with at least `min_images` images each (50 with 10 classes: 10 x 5). Near misses are
    adjusted with a note (more classes per batch than the teacher has: all of them)."""
    notes = []
    if classes_per_batch is not None and classes_per_batch > num_classes:
        notes.append(f"--classes-per-batch {classes_per_batch} is more than the teacher's {num_classes} classes; "
                     f"using {num_classes}")
        classes_per_batch = num_classes
    if batch_size is None:
        return (classes_per_batch or min(num_classes, DEFAULT_MAX_CLASSES_PER_BATCH),
                images_per_class or DEFAULT_IMAGES_PER_CLASS, notes)
    if classes_per_batch and images_per_class:
        if classes_per_batch * images_per_class != batch_size:
            raise DfgenError(f"--batch-size {batch_size} is not --classes-per-batch {classes_per_batch} x "
                             f"--images-per-class {images_per_class}; give two of the three")
        return classes_per_batch, images_per_class, notes
    if classes_per_batch or images_per_class:
        given, flag = (classes_per_batch, "--classes-per-batch") if classes_per_batch else \
            (images_per_class, "--images-per-class")
        if batch_size % given:
            raise DfgenError(f"--batch-size {batch_size} is not a multiple of {flag} {given}")
        other = batch_size // given
        if classes_per_batch:
            return classes_per_batch, other, notes
        if other > num_classes:
            raise DfgenError(f"--batch-size {batch_size} with --images-per-class {images_per_class} needs {other} "
                             f"classes per batch but the teacher has {num_classes}; raise --images-per-class")
        return other, images_per_class, notes
    layout = _split_batch(batch_size, num_classes, min_images)
    if layout is None:
        nearby = next(b for d in range(1, batch_size + 2 * min_images) for b in (batch_size - d, batch_size + d)
                      if b > 0 and _split_batch(b, num_classes, min_images))
        k, m = _split_batch(nearby, num_classes, min_images)
        raise DfgenError(f"--batch-size {batch_size} cannot be split into classes x images (at most {num_classes} "
                         f"classes, at least {min_images} images each); try --batch-size {nearby} ({k} x {m}) or give "
                         "--classes-per-batch and --images-per-class")
    notes.append(f"--batch-size {batch_size}: {layout[0]} classes x {layout[1]} images per batch")
    return layout[0], layout[1], notes


def _split_batch(batch_size: int, num_classes: int, min_images: int) -> tuple[int, int] | None:
    """K x M = batch_size: M = 4 if that fits, else the most classes K <= num_classes with M >= min_images (and, for
    the diversity losses, K >= 2: the triplet loss needs another class in the batch)."""
    fewest = 2 if min_images >= 2 and num_classes >= 2 else 1
    per_class = DEFAULT_IMAGES_PER_CLASS
    if batch_size % per_class == 0 and fewest <= batch_size // per_class <= num_classes:
        return batch_size // per_class, per_class
    for classes in range(min(num_classes, batch_size), fewest - 1, -1):
        if batch_size % classes == 0 and batch_size // classes >= min_images:
            return classes, batch_size // classes
    return None


def shard_size_for(requested: int | None, batch_size: int) -> tuple[int, str | None]:
    """Images per shard: a multiple of the batch (the nearest to `requested`, with a note), else the one nearest
    1024 images."""
    if requested is None:
        return batch_size * max(1, round(1024 / batch_size)), None
    if requested % batch_size == 0:
        return requested, None
    size = batch_size * max(1, round(requested / batch_size))
    return size, f"--shard-size {requested} is not a multiple of the batch size {batch_size}; using {size}"
