"""The time estimate of `--dry-run` in the generator mode (`--mode generator`): a batch's adaptation steps timed on
this device, then summed over the busiest rank's chains (chains go to ranks whole, and a chain's first batch takes
the warm-up steps).

The timing adapts a freshly initialised generator for 1 and for 1 + TIMED_STEPS steps after an untimed warm-up call;
the difference is the cost of a step, the rest of a call is a batch's fixed cost (latents, emitting the images, the
final teacher pass, quantising). On a CPU a batch of at most CPU_BATCH images is timed and the cost taken as
proportional to the images, as the pixel calibration's line does (dfgen.dry_run)."""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from dfgen.amortized import AmortizedEngine, shards_for_rank
from dfgen.runplan import RunPlan, engine_for

TIMED_STEPS = 4
CPU_BATCH = 8


@dataclass
class GeneratorTiming:
    batch: int  # images in the timed batch
    step_seconds: float  # one adaptation step of that batch
    fixed_seconds: float  # the rest of a batch


@dataclass
class GeneratorEstimate:
    timing: GeneratorTiming
    seconds_per_batch: float  # a full batch at the run's steps, encoding included
    busiest_batches: int
    busiest_seconds: float  # the busiest rank's batches (the probe is added by the caller)


def time_generator(run: RunPlan) -> GeneratorTiming:
    """Time the run's first batch (at most CPU_BATCH images of it on a CPU) in the generator mode."""
    labels = torch.as_tensor(run.plan.batch_labels(0))
    if run.device.type == "cpu":
        labels = labels[:CPU_BATCH]
    g, teacher = run.config.generator, run.teacher
    with engine_for(run) as inversion:
        inversion.settings.log_every = 0
        engine = AmortizedEngine(inversion, teacher.num_classes, g, run.config.seed, tuple(teacher.mean),
                                 tuple(teacher.std))
        meta = engine.initial_state(0)
        engine.adapt(labels, 0, meta, 1)  # allocations, kernel choice, compilation
        seconds = []
        for steps in (1, 1 + TIMED_STEPS):
            _sync(run.device)
            start = time.perf_counter()
            engine.adapt(labels, 1, meta, steps)
            _sync(run.device)
            seconds.append(time.perf_counter() - start)
    step = max(0.0, (seconds[1] - seconds[0]) / TIMED_STEPS)
    return GeneratorTiming(len(labels), step, max(0.0, seconds[0] - step))


def estimate_generator(run: RunPlan, encode_seconds: float, timing: GeneratorTiming | None = None) \
        -> GeneratorEstimate:
    """The busiest rank's time from a timing: each of its shards' batches at the run's steps (a chain's first batch
    at the warm-up steps), plus encoding each image (`encode_seconds`, from the pixel calibration)."""
    timing = timing or time_generator(run)
    plan, g = run.plan, run.config.generator

    def batches_seconds(batches: int, steps: int, images: int) -> float:
        units = batches * timing.fixed_seconds + steps * timing.step_seconds  # at the timed batch's size
        scale = images / (batches * timing.batch) if run.device.type == "cpu" else 1.0
        return units * scale + encode_seconds * images

    busiest = (0, 0.0)  # batches, seconds
    for rank in range(min(run.world_size, g.chains, plan.num_shards)):  # other ranks have no chain
        batches, seconds = 0, 0.0
        for shard in shards_for_rank(plan, g.chains, rank, run.world_size):
            count = len(plan.shard_batches(shard))
            steps = count * g.steps + (g.warmup_steps - g.steps if shard < g.chains else 0)
            batches += count
            seconds += batches_seconds(count, steps, len(plan.shard_range(shard)))
        busiest = max(busiest, (batches, seconds), key=lambda b: b[1])
    per_batch = batches_seconds(1, g.steps, plan.batch_size)
    return GeneratorEstimate(timing, per_batch, busiest[0], busiest[1])


def describe_generator_basis(timing: GeneratorTiming, device: str) -> str:
    text = (f"a batch of {timing.batch} timed for 1 and {1 + TIMED_STEPS} adaptation steps after a warm-up call on "
            f"{device}")
    return text + (" (a CPU batch's time taken as proportional to its images)" if device == "cpu" else "")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
