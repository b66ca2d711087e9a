"""The resolved run: the configuration with the teacher, the batch layout, the schedule, the rank, the device and
the precision decided (`prepare`), and the engine it drives (`engine_for`). Nothing here writes files."""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from dfgen.calibration import ProbeFigures
from dfgen.competitor import load_competitor
from dfgen.config import LossWeights, SynthesisConfig, default_schedule, format_schedule, losses_content
from dfgen.errors import DfgenError
from dfgen.inversion import NOISE_IMAGES, EngineSettings, InversionEngine, OutOfMemory, is_out_of_memory
from dfgen.plan import LabelPlan, batch_layout, shard_size_for
from dfgen.resolutions import accepted_resolutions, resolve_multires
from dfgen.runtime import resolve_device, resolve_precision, world_from_env
from dfgen.shards import check_writable_channels
from dfgen.teachers import Teacher, load_teacher


@dataclass
class RunPlan:
    """The resolved configuration of one synthesis run."""

    config: SynthesisConfig
    teacher: Teacher
    plan: LabelPlan
    schedule: list[tuple[int, int]]
    device: torch.device
    precision: str
    rank: int
    world_size: int
    multires: str = "native"  # resolved (dfgen.resolutions)
    accepted: dict[int, str | None] = dataclasses.field(default_factory=dict)  # size -> why rejected
    # Settings derived from the teacher by the probe (dfgen.derived); None until derive_settings() ran.
    flip: bool | None = None
    weights: LossWeights | None = None
    probe: ProbeFigures | None = None
    noise_levels: list[float] | None = None  # normalized objective: each BN layer's loss on noise
    notes: list[str] = dataclasses.field(default_factory=list)  # near-miss values adjusted (batch layout, shards)
    competitor: Teacher | None = None  # ADI's student (dfgen.competitor), when the competition weight is set

    @property
    def out(self) -> Path:
        return Path(self.config.out)

    @property
    def log_prefix(self) -> str:
        return f"[rank {self.rank}/{self.world_size}] " if self.world_size > 1 else ""

    def execution(self) -> dict[str, Any]:
        """How this process computes: part of the content, since it changes the images' bytes (bf16 and fp32, a
        compiled graph and an eager one, CPU and CUDA kernels round differently)."""
        return {"device": self.device.type, "precision": self.precision, "compile": bool(self.config.compile)}

    def content(self) -> dict[str, Any]:
        """What decides the images: compared with config.json of an existing output directory."""
        content = self.requested_content()
        if self.weights is None:
            raise RuntimeError("derive_settings() must run before content()")
        content.update(flip=self.flip, multires=self.multires, losses=losses_content(self.weights),
                       execution=self.execution())
        return content

    def requested_content(self) -> dict[str, Any]:
        """The content as asked for, "auto" values unresolved: the probe's identity."""
        content = self.config.content_fields()
        content.pop("teacher_weights")  # the path does not matter, the weights' hash does
        if self.competitor is not None:
            content.pop("competitor_weights", None)
            content["competitor_weights_sha256"] = self.competitor.weights_sha256
        content.update(
            schedule=format_schedule(self.schedule),
            classes_per_batch=self.plan.classes_per_batch,
            images_per_class=self.plan.images_per_class,
            shard_size=self.plan.shard_size,
            batch_size=self.plan.batch_size,
            teacher_source=self.teacher.source,
            teacher_weights_sha256=self.teacher.weights_sha256,
        )
        return content

    def my_shards(self) -> range:
        return self.plan.shards_for_rank(self.rank, self.world_size)


def prepare(config: SynthesisConfig, teacher: Teacher | None = None, log: bool = True) -> RunPlan:
    """Resolve the teacher, defaults, batch layout, device and rank into a RunPlan (no files written). Values
    adjusted from near misses are noted on stderr (`log`) and kept in RunPlan.notes."""
    rank, world, local = world_from_env(config.rank, config.world_size)
    device = resolve_device(config.device, local)
    if teacher is None:
        teacher = load_teacher(config.teacher, config.teacher_weights, device="cpu", **config.teacher_options())
    check_writable_channels(teacher.in_chans, config.format)
    if config.class_names is not None and len(config.class_names) != teacher.num_classes:
        raise DfgenError(f"--class-names has {len(config.class_names)} names but teacher {teacher.name} has "
                         f"{teacher.num_classes} classes")
    resolution = teacher.resolution
    schedule = config.schedule or default_schedule(resolution)
    weights = config.effective_losses
    diversity = bool(weights.ep or weights.triplet)
    classes_per_batch, images_per_class, notes = batch_layout(
        teacher.num_classes, config.batch_size, config.classes_per_batch, config.images_per_class,
        min_images=2 if diversity else 1)
    if diversity and images_per_class < 2:
        raise DfgenError("the diversity losses need --images-per-class >= 2 (or pass --no-diversity)")
    shard_size, shard_note = shard_size_for(config.shard_size, classes_per_batch * images_per_class)
    notes += [shard_note] if shard_note else []
    plan = LabelPlan(n=config.n, num_classes=teacher.num_classes, classes_per_batch=classes_per_batch,
                     images_per_class=images_per_class, seed=config.seed, shard_size=shard_size)
    accepted = accepted_resolutions(teacher.model, teacher.in_chans, [r for r, _ in schedule] + [resolution])
    multires = resolve_multires(config.multires, schedule, resolution, accepted, teacher.name)
    competitor = None
    if config.competitor is not None and weights.competition:
        competitor = load_competitor(config.competitor, config.competitor_weights, teacher)
    run = RunPlan(config, teacher, plan, schedule, device, resolve_precision(config.precision, device), rank, world,
                  multires=multires, accepted=accepted, notes=notes, competitor=competitor)
    for note in notes if log else ():
        print(f"{run.log_prefix}note: {note}", file=sys.stderr, flush=True)
    return run


def engine_settings(run: RunPlan, weights: LossWeights, flip: bool) -> EngineSettings:
    c = run.config
    return EngineSettings(
        schedule=run.schedule,
        weights=weights,
        teacher_resolution=run.teacher.resolution,
        lr=c.lr,
        warmup=c.warmup,
        upsample=c.upsample,
        jitter_fraction=c.jitter_fraction,
        flip=flip,
        multires=run.multires,
        crop_min_scale=c.crop_min_scale,
        precision=run.precision,
        log_every=c.log_every,
        channels_last=run.device.type == "cuda",
        compile=c.compile,
        output_resolution=run.teacher.resolution,
        soft_topk=c.soft_topk,
        soft_views=c.soft_views,
        soft_view_min_scale=c.soft_view_min_scale,
        bn_noise_levels=run.noise_levels,
    )


def engine_for(run: RunPlan) -> InversionEngine:
    """The engine of a run whose settings are derived (dfgen.derived.derive_settings); use it as a context manager."""
    settings = engine_settings(run, run.weights, run.flip)
    return InversionEngine(run.teacher.model, run.teacher.mean, run.teacher.std, settings, run.device,
                           competitor=run.competitor.model if run.competitor is not None else None)


@contextmanager
def explain_out_of_memory(run: RunPlan) -> Iterator[None]:
    """Turn running out of memory into one line: in a batch (the engine's OutOfMemory), naming the run's batch
    layout and the flag to lower; before any batch (the teacher's start-up pass on noise), naming that."""
    try:
        yield
    except Exception as exc:
        if not is_out_of_memory(exc):
            raise
        if not isinstance(exc, OutOfMemory):
            if run.device.type == "cuda":
                torch.cuda.empty_cache()
            raise OutOfMemory(f"out of memory on {run.device} in the teacher's start-up pass on {NOISE_IMAGES} noise "
                              f"images ({run.precision})", "the teacher does not fit on this device") from None
        plan = run.plan
        hint = f"--classes-per-batch {plan.classes_per_batch // 2}" if plan.classes_per_batch > 1 else \
            f"--images-per-class {max(2, plan.images_per_class // 2)}"
        bf16 = ", or --precision bf16" if run.precision == "fp32" and run.device.type == "cuda" else ""
        raise OutOfMemory(exc.where, f"the batch is {plan.classes_per_batch} classes x {plan.images_per_class} "
                                     f"images: lower it, e.g. {hint}{bf16}") from None
