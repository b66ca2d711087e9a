"""`dfgen synthesize --dry-run`: the plan (shards and images per rank), and disk and time estimates from a
calibration on this device, with the basis of the estimate stated. Writes nothing.

The calibration inverts a real batch (the run's batch size and labels) for a few iterations per stage after
warm-up iterations, timing the steady iterations of each stage apart from the fixed cost of a batch (noise, the
final teacher pass, quantising, encoding). On a GPU a smaller batch would time launch overhead, not work. On a CPU a
real batch too slow to time within CPU_BUDGET_S is estimated from two smaller batches along a line (a cost per
call plus a cost per image), and the output says so."""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from dfgen.config import SynthesisConfig, format_schedule
from dfgen.cost_plan import describe_cost
from dfgen.dry_run_generator import describe_generator_basis, estimate_generator
from dfgen.outdir import claimed_mode
from dfgen.plan import LabelPlan
from dfgen.probe import needs_probe, probe_labels, probe_schedule
from dfgen.runplan import RunPlan, engine_for, explain_out_of_memory, set_up
from dfgen.shards import encode_image
from dfgen.teachers import Teacher, load_teacher

WARMUP_ITERATIONS = 2  # per stage, untimed: allocations, kernel choice, compilation
TIMED_ITERATIONS = 4  # per stage, timed (a multiple of WARMUP_ITERATIONS: both are log points)
CPU_BUDGET_S = 20.0  # the longest a CPU calibration call may take before a smaller batch is timed instead


@dataclass
class Calibration:
    """What was timed, for the run's real batch."""

    batches: list[int]  # the batch sizes timed: the run's, or two smaller ones extrapolated to it
    real_batch: int  # the run's batch
    stage_seconds: list[float]  # one steady iteration of each stage, for the real batch
    fixed_seconds: float  # the rest of a batch: noise, stage changes, the final teacher pass, quantising
    encode_seconds: float  # encoding one image
    bytes_per_image: float  # encoded size of the calibration's images (noise-like: an upper bound)
    device: str
    precision: str

    @property
    def extrapolated(self) -> bool:
        return self.batches != [self.real_batch]

    def batch_seconds(self, iterations: list[int], images: int) -> float:
        """A batch of `images` through stages of `iterations`: a shorter batch in proportion on a CPU, as much as a
        full one on a GPU (where a batch's time is mostly not proportional to its size)."""
        steady = sum(i * t for i, t in zip(iterations, self.stage_seconds, strict=True)) + self.fixed_seconds
        scale = images / self.real_batch if self.device == "cpu" else max(1.0, images / self.real_batch)
        return steady * scale + self.encode_seconds * images


@dataclass
class _Timing:
    batch: int
    stage_seconds: list[float]
    fixed_seconds: float
    total_seconds: float
    images: torch.Tensor  # the uint8 images of the timed call


@dataclass
class PlanEstimate:
    calibration: Calibration
    seconds_per_batch: float  # a full batch of the run
    probe_seconds: float  # the start-up probe (0 when nothing is left to it)
    busiest_images: int
    busiest_batches: int
    busiest_seconds: float  # the busiest rank's whole run: probe and its batches

    @property
    def images_per_second(self) -> float:
        return self.calibration.real_batch / self.seconds_per_batch


def calibrate(run: RunPlan, budget_s: float = CPU_BUDGET_S) -> Calibration:
    """Time the run's real batch (see the module's docstring) on its device, precision and compile setting."""
    labels = torch.as_tensor(run.plan.batch_labels(0))
    real = len(labels)
    stages = [res for res, _ in run.schedule]
    with engine_for(run) as engine:
        engine.settings.log_every = 0
        if run.device.type != "cpu":
            _warm_up(engine, labels, stages, run.device)
            timings = [_time_batch(engine, labels, stages, run.device)]
        else:  # CPU: the real batch if a line through two small ones says it can be timed within the budget
            small = min(real, 4)
            _warm_up(engine, labels[:small], stages, run.device)
            timings = [_time_batch(engine, labels[:small], stages, run.device)]
            if small < real:
                timings.append(_time_batch(engine, labels[:min(real, 2 * small)], stages, run.device))
            if timings[-1].batch < real and _line(timings, "total_seconds", real) <= budget_s:
                timings = [_time_batch(engine, labels, stages, run.device)]
    stage_seconds, fixed = _extrapolate(timings, real)
    images = timings[-1].images
    start = time.perf_counter()
    encoded = [len(encode_image(img.numpy(), run.config.format, run.config.quality)) for img in images]
    encode_seconds = (time.perf_counter() - start) / len(encoded)
    return Calibration([t.batch for t in timings], real, stage_seconds, fixed, encode_seconds,
                       float(np.mean(encoded)), run.device.type, run.precision)


def _warm_up(engine, labels: torch.Tensor, stages: list[int], device: torch.device) -> None:
    """One iteration per stage: allocations, kernel choice, compilation."""
    engine.settings.log_every = 0
    engine.settings.schedule = [(res, 1) for res in stages]
    engine.invert(labels, 0)
    _sync(device)


def _time_batch(engine, labels: torch.Tensor, stages: list[int], device: torch.device) -> _Timing:
    """Invert `labels` for WARMUP + TIMED iterations per stage; the steady iterations are timed between log points
    (the loop's only host syncs), the rest of the call is the batch's fixed cost."""
    span = WARMUP_ITERATIONS + TIMED_ITERATIONS
    marks: dict[tuple[int, int], float] = {}

    def on_log(stage: str, it: int, iters: int, terms: dict[str, float]) -> None:
        marks[(int(stage.removesuffix("px")), it)] = time.perf_counter()

    engine.settings.log_every = WARMUP_ITERATIONS
    engine.settings.schedule = [(res, span) for res in stages]
    start = time.perf_counter()
    result = engine.invert(labels, 1, on_log)
    _sync(device)
    total = time.perf_counter() - start
    stage_seconds = [(marks[(res, span)] - marks[(res, WARMUP_ITERATIONS)]) / TIMED_ITERATIONS for res in stages]
    return _Timing(len(labels), stage_seconds, max(0.0, total - span * sum(stage_seconds)), total, result.images)


def _extrapolate(timings: list[_Timing], batch: int) -> tuple[list[float], float]:
    """Per-stage seconds and fixed seconds at `batch`: the last timing if it was at `batch`, else the line through
    the two timings (a cost per call plus a cost per image)."""
    if timings[-1].batch == batch:
        return timings[-1].stage_seconds, timings[-1].fixed_seconds
    stages = [_line(timings, lambda t, i=i: t.stage_seconds[i], batch) for i in range(len(timings[0].stage_seconds))]
    return stages, _line(timings, "fixed_seconds", batch)


def _line(timings: list[_Timing], value, batch: int) -> float:
    """`value` (an attribute name or a function of a timing) at `batch`, along the line through two timings; the
    slope is kept >= 0 against timing noise, and the value at least the larger batch's."""
    get = (lambda t: getattr(t, value)) if isinstance(value, str) else value
    a, b = timings
    slope = max(0.0, (get(b) - get(a)) / (b.batch - a.batch))
    return get(b) + slope * (batch - b.batch)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def estimate_plan(run: RunPlan, calibration: Calibration | None = None) -> PlanEstimate:
    """The busiest rank's time: the probe (if any setting is left to it) and its batches."""
    calibration = calibration or calibrate(run)
    plan = run.plan
    iterations = [i for _, i in run.schedule]
    probe_seconds = 0.0
    if needs_probe(run.config.flip, run.config.effective_losses):
        probe_iterations = [i for _, i in probe_schedule(run.schedule)]
        probe_seconds = calibration.batch_seconds(probe_iterations, len(probe_labels(plan))) - \
            calibration.encode_seconds * len(probe_labels(plan))  # the probe encodes nothing
    busiest = (0, 0, 0.0)  # images, batches, seconds
    for rank in range(run.world_size):
        images, full, tail = rank_batches(plan, rank, run.world_size)
        seconds = full * calibration.batch_seconds(iterations, plan.batch_size) + \
            (calibration.batch_seconds(iterations, tail) if tail else 0.0)
        busiest = max(busiest, (images, full + bool(tail), seconds))
        if rank >= 1 and run.world_size > 64:  # ranks differ by at most one shard: the first two bound it
            break
    return PlanEstimate(calibration, calibration.batch_seconds(iterations, plan.batch_size), probe_seconds,
                        busiest[0], busiest[1], busiest[2] + probe_seconds)


def rank_batches(plan: LabelPlan, rank: int, world_size: int) -> tuple[int, int, int]:
    """(images, full batches, size of a last partial batch or 0) of one rank, in closed form: a plan of a billion
    images is not walked batch by batch. Every shard is full but the plan's last, and shards hold whole batches."""
    shards = plan.shards_for_rank(rank, world_size)
    if not shards:
        return 0, 0, 0
    has_last = shards[-1] == plan.num_shards - 1
    full_shards = len(shards) - has_last
    images, batches, tail = full_shards * plan.shard_size, full_shards * (plan.shard_size // plan.batch_size), 0
    if has_last:
        last = len(plan.shard_range(plan.num_shards - 1))
        images, batches, tail = images + last, batches + last // plan.batch_size, last % plan.batch_size
    return images, batches, tail


def describe_plan(config: SynthesisConfig, teacher: Teacher | None = None) -> str:
    """The `--dry-run` text: shards, images per rank, disk and time estimates (from a calibration on this
    device, its basis stated). Writes nothing."""
    if teacher is None:  # the cost does not depend on the weights: no download for a plan
        teacher = load_teacher(config.teacher, config.teacher_weights, pretrained=config.teacher_weights is not None,
                               **config.teacher_options())
    if config.world_size is not None and config.rank is None:  # the plan covers every rank: none is needed
        config = dataclasses.replace(config, rank=0)
    run = set_up(config, teacher, probe=False,  # settings left to the probe take stand-in values
                 resumed_mode=claimed_mode(Path(config.out), config.overwrite))
    config = run.config  # its mode decided
    plan = run.plan
    probe_note = describe_probe_plan(run)
    with explain_out_of_memory(run):
        estimate = estimate_plan(run)
    lines = [
        f"teacher      {teacher.name} ({teacher.source}), {teacher.num_classes} classes, input {teacher.input_size}",
        f"images       {plan.n:,} in {plan.num_shards:,} shard(s) of {plan.shard_size} "
        f"({plan.num_batches:,} batches of {plan.classes_per_batch} classes x {plan.images_per_class})",
        f"schedule     {format_schedule(run.schedule)}"
        f"{' (the start-up probe only: the generator draws at the teacher size)' if config.mode == 'generator' else ''}"
        f" on {run.device} ({run.precision}{', compiled' if config.compile else ''})",
    ]
    if probe_note:
        lines.append(probe_note)
    lines.append(describe_cost(run))  # teacher passes per image, generator FLOPs (dfgen.cost_plan)
    for rank in range(run.world_size):
        shards = plan.shards_for_rank(rank, run.world_size)
        images = rank_batches(plan, rank, run.world_size)[0]
        if rank < 4 or rank == run.world_size - 1:
            lines.append(f"rank {rank:<7} {len(shards):,} shard(s), {images:,} images")
        elif rank == 4:
            lines.append("...")
    probe = f" + probe {human_seconds(estimate.probe_seconds)}" if estimate.probe_seconds else ""
    busiest, batches, per_batch = estimate.busiest_seconds, estimate.busiest_batches, estimate.seconds_per_batch
    basis = describe_basis(estimate.calibration, config.teacher_weights is None)
    if config.mode == "generator":  # the adaptation steps timed apart; the probe still inverts pixels
        with explain_out_of_memory(run):
            generator = estimate_generator(run, estimate.calibration.encode_seconds)
        busiest = generator.busiest_seconds + estimate.probe_seconds
        batches, per_batch = generator.busiest_batches, generator.seconds_per_batch
        basis = f"{describe_generator_basis(generator.timing, run.device.type)}; the probe's pixels: {basis}"
    bound = "at most " if config.early_stop else ""  # early-stopped stages end sooner
    lines += [
        f"disk         ~{human_bytes(estimate.calibration.bytes_per_image * plan.n)} ({config.format}; upper bound "
        "from noise-like images)",
        f"time         ~{bound}{human_seconds(busiest)} for the busiest rank ({batches:,} batches at ~{per_batch:.3g} "
        f"s{probe}), {plan.batch_size / per_batch:.3g} images/s per process",
        f"basis        {basis}",
        f"output       {run.out}",
    ]
    return "\n".join(lines)


def describe_basis(calibration: Calibration, random_weights: bool) -> str:
    """What the time estimate rests on, in one line."""
    c = calibration
    how = f"{TIMED_ITERATIONS} iterations per stage after {WARMUP_ITERATIONS} warm-ups on {c.device} ({c.precision})"
    if not c.extrapolated:
        text = f"the run's batch of {c.real_batch} timed for {how}"
    else:
        text = (f"batches of {' and '.join(map(str, c.batches))} timed for {how}, extrapolated along a line to the "
                f"run's {c.real_batch} (the full batch is too slow to time on this CPU)")
    return text + ("; random teacher weights (the cost does not depend on them)" if random_weights else "")


def describe_probe_plan(run: RunPlan) -> str | None:
    """The line that says what the start-up probe will do, or None when nothing is left to it."""
    if not needs_probe(run.config.flip, run.config.effective_losses):
        return None
    labels = probe_labels(run.plan)
    iterations = sum(i for _, i in probe_schedule(run.schedule))
    return (f"probe        flips/reach/margin set to auto: decided at start by inverting {len(labels)} images for "
            f"{iterations} iterations on each rank")


def human_bytes(size: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if size < 1000 or unit == "TB":
            return f"{size:.3g} {unit}"
        size /= 1000
    return f"{size:.3g} TB"


def human_seconds(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    if seconds < 172800:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"
