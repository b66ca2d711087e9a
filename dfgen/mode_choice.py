"""Which synthesis mode `--mode auto` (the default) takes for a teacher. The generator mode (dfgen.amortized)
taught every student measured as well as the pixel mode, within about a point, from a seventeenth to a twentieth of
the teacher passes, on every teacher it was measured on; those teachers take 28 and 32 px inputs (MNIST,
Fashion-MNIST, digits, CIFAR-10, stock ImageNet architectures fine-tuned on small images). Larger teachers keep
DeepInversion's pixel optimisation, the method their presets were written for, until the generator is measured
there (docs/design.md). The generator mode, given or taken, brings its own BN statistics weight for the teacher's
channels where none is given (dfgen.amortized_settings.generator_bn)."""

from __future__ import annotations

import dataclasses

from dfgen.amortized_settings import MODES, generator_bn
from dfgen.config import SynthesisConfig
from dfgen.loss_weights import AUTO

GENERATOR_MAX_SIZE = 32  # the largest teacher input size the generator mode has been measured at


def auto_mode(resolution: int) -> str:
    """The mode `--mode auto` takes for a teacher of this input size."""
    return "generator" if resolution <= GENERATOR_MAX_SIZE else "pixels"


def resolve_mode(config: SynthesisConfig, resolution: int, in_chans: int,
                 resumed: str | None = None) -> tuple[SynthesisConfig, str | None]:
    """`config` with an auto mode decided and the generator mode's BN weight for a teacher of `in_chans` channels
    where none was given (`config.mode_bn`), and a note saying what auto decided (None where there is nothing to
    say). `resumed`: the mode of the shards already in the output folder; a resumed run continues as it began."""
    mode, note = config.mode, None
    if mode == AUTO:
        by_size = auto_mode(resolution)
        mode = resumed if resumed in MODES else by_size
        if mode != by_size:
            note = (f"mode: {mode}, as the shards already in {config.out} were made (--mode auto would take "
                    f"{by_size} for a new folder)")
        elif mode == "generator":
            note = (f"mode: generator (auto, for a {resolution}-px teacher): {config.generator.steps} adaptation "
                    "steps a batch, about a twentieth of the pixel optimisation's teacher passes; --mode pixels for "
                    "DeepInversion's pixel optimisation")
    if mode == "generator" and config.mode_bn and config.losses.form == "normalized":
        losses = dataclasses.replace(config.losses, bn=generator_bn(in_chans))  # its own balance (design.md)
        config = dataclasses.replace(config, losses=losses, mode_bn=False)  # decided: a second call keeps it
    return dataclasses.replace(config, mode=mode), note
