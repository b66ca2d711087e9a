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
