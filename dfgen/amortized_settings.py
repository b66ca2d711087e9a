"""Settings of the amortized synthesis mode (`--mode generator`, dfgen.amortized): a small image generator whose
starting weights are meta-learned along fixed chains of shards. Part of the configuration's content only in that
mode, so pixel-mode directories keep their fingerprint."""

from __future__ import annotations

from dataclasses import dataclass

from dfgen.errors import DfgenError

MODES = ("pixels", "generator")  # and "auto" (the default): dfgen.mode_choice decides per teacher
# The BN statistics weight of the generator mode where none is given (normalized loss form; the pixel mode's is 100),
# by the teacher's input channels (docs/design.md). Grey: on the MNIST LeNet-5-BN teacher at 10 adaptation steps a
# batch, teacher agreement 0.51 at 100, 0.90 at 30, 0.985 at 10; at 30 steps LeNet-5-half 97.52% from 500 images at
# 10, 97.00% at 30, 95.84% at 100. Colour: on the CIFAR-10 VGG-8-BN teacher at 30 steps the half-width student took
# 55.4% from 2,000 images at 10, 61.7% at 30, 62.3% at 100 (two seeds each), and another network recognised the images
# at 30 (0.70) far better than at 100 (0.49).
GREY_GENERATOR_BN = 10.0
COLOUR_GENERATOR_BN = 30.0


def generator_bn(in_chans: int) -> float:
    """The generator mode's BN statistics weight for a teacher taking `in_chans` input channels, where none is given."""
    return GREY_GENERATOR_BN if in_chans == 1 else COLOUR_GENERATOR_BN


@dataclass
class AmortizedSettings:
    # adaptation steps per batch: teacher passes per image, warm-up aside. 30 is where the mode's students matched the
    # pixel mode's on MNIST (LeNet-5-half 97.52% against 97.40% at 500 images, 98.62% at 24,000; 10 steps: 97.00%)
    steps: int = 30
    width: int = 8  # channels of the generator's last hidden map (dfgen.generator)
    latent: int = 32  # latent size
    lr: float = 0.01  # Adam's learning rate of the adaptation steps (betas 0.5, 0.999; fresh per batch)
    latent_lr: float = 0.0  # the latents are optimised too at this rate (0: fixed)
    meta_step: float = 0.5  # Reptile: meta += meta_step * (adapted - meta) after each batch
    warmup_steps: int = 100  # adaptation steps of a chain's first batch, which the meta-weights then take whole
    chains: int = 1  # independent chains: shard k belongs to chain k % chains; rank r of W makes chains c % W == r

    def __post_init__(self) -> None:
        for name in ("steps", "width", "latent", "chains"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise DfgenError(f"--gen-{name.replace('_', '-')} must be a positive whole number, got {value!r}")
        if isinstance(self.warmup_steps, bool) or not isinstance(self.warmup_steps, int) or self.warmup_steps < 0:
            raise DfgenError(f"--gen-warmup-steps must be a whole number >= 0, got {self.warmup_steps!r}")
        if not self.lr > 0:
            raise DfgenError(f"--gen-lr must be positive, got {self.lr}")
        if self.latent_lr < 0:
            raise DfgenError(f"--gen-latent-lr must be >= 0, got {self.latent_lr}")
        if not 0 < self.meta_step <= 1:
            raise DfgenError(f"--gen-meta-step must be in (0, 1], got {self.meta_step}")


def idle_ranks_note(settings: AmortizedSettings, num_shards: int, world_size: int) -> str | None:
    """A note where some of `world_size` processes get no chain (chains go to processes whole), else None."""
    busy = min(settings.chains, num_shards)
    if world_size <= busy:
        return None
    remedies = []
    if settings.chains < world_size:
        remedies.append(f"--gen-chains {world_size} or more (the chain count is part of the configuration, so the "
                        "images change with it)")
    if num_shards < world_size:
        remedies.append(f"at least {world_size} shards (a smaller --shard-size)")
    return (f"generator mode: {world_size - busy} of the {world_size} processes would have no work, since chains of "
            f"shards go to processes whole and this run has {busy} (--gen-chains {settings.chains}, {num_shards} "
            f"shard(s)); to use them all give {' and '.join(remedies)}")
