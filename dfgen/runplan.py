"""Run set-up, one step (`set_up`): the configuration resolved into a finished, immutable `RunPlan`. First what
follows from the configuration and the teacher's shape (`prepare`: teacher, batch layout, schedule, rank, device,
precision), then what the teacher decides by running (each BN layer's loss on noise, the unit of the normalized BN
term, and the start-up probe's flips, reach and margin, dfgen.probe). The decisions are recorded in config.json
(`derived_record`), so a resume or another rank reuses them instead of probing again (`decide`). The pipeline
calls `prepare` and `decide` apart, to refuse a wrong output folder before the probe. Also the engine a plan
drives (`engine_for`). Nothing here writes files."""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from dfgen.amortized_settings import idle_ranks_note
from dfgen.competitor import load_competitor
from dfgen.config import (
    AUTO,
    LossWeights,
    SynthesisConfig,
    config_fingerprint,
    default_schedule,
    format_schedule,
    losses_content,
)
from dfgen.errors import DfgenError
from dfgen.inversion import (
    NOISE_IMAGES,
    EngineSettings,
    InversionEngine,
    OutOfMemory,
    TeacherProbe,
    bn_noise_levels,
    is_out_of_memory,
)
from dfgen.mode_choice import resolve_mode
from dfgen.plan import LabelPlan, batch_layout, shard_size_for
from dfgen.probe import (
    STAND_IN,
    ProbeFigures,
    apply_probe,
    describe_probe,
    figures_from_record,
    flip_fallback,
    needs_probe,
    run_probe,
)
from dfgen.resolutions import accepted_resolutions, resolve_multires
from dfgen.runtime import resolve_device, resolve_precision, world_from_env
from dfgen.shards import check_writable_channels
from dfgen.teachers import Teacher, load_teacher
from dfgen.tiny_maps import bn_map_sizes, describe_tiny_maps


@dataclass(frozen=True)
class RunRequest:
    """The configuration resolved without running the teacher (`prepare`)."""

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
    notes: list[str] = dataclasses.field(default_factory=list)  # near misses adjusted (batch layout, shards); tiny maps
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


@dataclass(frozen=True, kw_only=True)
class RunPlan(RunRequest):
    """One synthesis run, set up (`set_up`): the request and what the teacher decided."""

    flip: bool
    weights: LossWeights  # no "auto" left
    probe: ProbeFigures | None  # what the decisions rest on; None when nothing was left to the probe
    noise_levels: tuple[float, ...] | None  # each BN layer's loss on noise; None under the paper's form

    def content(self) -> dict[str, Any]:
        """What decides the images: compared with config.json of an existing output directory."""
        content = self.requested_content()
        content.update(flip=self.flip, multires=self.multires, losses=losses_content(self.weights),
                       execution=self.execution())
        return content


def set_up(config: SynthesisConfig, teacher: Teacher | None = None, recorded: dict[str, Any] | None = None,
           log: bool = True, probe: bool = True, resumed_mode: str | None = None) -> RunPlan:
    """The run `config` asks for, finished: `prepare`, then what the teacher decides. A probe `recorded` in
    config.json (`derived_record`) for the same request is reused, not run again. Without `probe` (a plan's cost
    estimate) settings left to the probe take stand-in values, which do not change the cost."""
    return decide(prepare(config, teacher, log, resumed_mode), recorded, log, probe)


def prepare(config: SynthesisConfig, teacher: Teacher | None = None, log: bool = True,
            resumed_mode: str | None = None) -> RunRequest:
    """Resolve the teacher, defaults (the mode among them: `resumed_mode` is that of shards already made, see
    dfgen.mode_choice), batch layout, device and rank (no files written). Values adjusted from near misses are noted
    on stderr (`log`) and kept in RunRequest.notes."""
    rank, world, local = world_from_env(config.rank, config.world_size)
    device = resolve_device(config.device, local)
    if teacher is None:
        teacher = load_teacher(config.teacher, config.teacher_weights, device="cpu", **config.teacher_options())
    config, mode_note = resolve_mode(config, teacher.resolution, teacher.in_chans, resumed_mode)
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
    notes += [mode_note] if mode_note else []
    plan = LabelPlan(n=config.n, num_classes=teacher.num_classes, classes_per_batch=classes_per_batch,
                     images_per_class=images_per_class, seed=config.seed, shard_size=shard_size)
    accepted = accepted_resolutions(teacher.model, teacher.in_chans, [r for r, _ in schedule] + [resolution])
    multires = resolve_multires(config.multires, schedule, resolution, accepted, teacher.name)
    tiny_note = tiny_maps_note(teacher)  # after resolve_multires: a teacher failing at its own size is refused there
    notes += [tiny_note] if tiny_note else []
    idle_note = idle_ranks_note(config.generator, plan.num_shards, world) if config.mode == "generator" else None
    notes += [idle_note] if idle_note else []
    competitor = None
    if config.competitor is not None and weights.competition:
        competitor = load_competitor(config.competitor, config.competitor_weights, teacher)
    run = RunRequest(config, teacher, plan, schedule, device, resolve_precision(config.precision, device), rank, world,
                     multires=multires, accepted=accepted, notes=notes, competitor=competitor)
    for note in notes if log else ():
        print(f"{run.log_prefix}note: {note}", file=sys.stderr, flush=True)
    return run


def tiny_maps_note(teacher: Teacher) -> str | None:
    """A note for a teacher whose deep BN layers see tiny maps at its size (dfgen.tiny_maps), else None."""
    maps = bn_map_sizes(teacher.model, teacher.in_chans, teacher.resolution)
    return describe_tiny_maps(maps) if maps.has_tiny_maps else None


def decide(request: RunRequest, recorded: dict[str, Any] | None = None, log: bool = True,
           probe: bool = True) -> RunPlan:
    """What the teacher decides (see `set_up`): the BN noise levels, then the probe's flips, reach and margin; running
    out of memory on the way is one line (`explain_out_of_memory`)."""
    with explain_out_of_memory(request):
        return _decide(request, recorded, log, probe)


def _decide(request: RunRequest, recorded: dict[str, Any] | None, log: bool, probe: bool) -> RunPlan:
    weights = request.config.effective_losses
    noise_levels = teacher_noise_levels(request) if weights.form == "normalized" else None
    figures, probed = None, False
    if needs_probe(request.config.flip, weights):
        if not probe:
            figures = STAND_IN
        elif recorded and recorded.get("key") == config_fingerprint(request.requested_content()):
            figures = figures_from_record(recorded.get("probe"))
        if figures is None:
            figures, probed = run_probe(request.teacher.model, request.teacher.mean, request.teacher.std,
                                        _engine_settings(request, weights, False, noise_levels), request.plan,
                                        request.device, request.competitor.model if request.competitor else None), True
    num_classes = request.plan.num_classes
    flip, weights = apply_probe(request.config.flip, weights, figures, num_classes)
    decided = (recorded or {}).get("flip") if figures is not None and not probed and probe else None
    if request.config.flip == AUTO and isinstance(decided, dict) and isinstance(decided.get("value"), bool):
        flip = decided["value"]  # the recorded decision stands: a run begun under an earlier rule continues as begun
    if probed and log:
        print(request.log_prefix + describe_probe(figures, flip, weights, num_classes, request.config.flip),
              file=sys.stderr, flush=True)
    fields = {f.name: getattr(request, f.name) for f in dataclasses.fields(RunRequest)}
    return RunPlan(**fields, flip=flip, weights=weights, probe=figures, noise_levels=noise_levels)


def teacher_noise_levels(run: RunRequest) -> tuple[float, ...]:
    """Each BN layer's loss on noise at the teacher's size: the units of the normalized BN term."""
    with TeacherProbe(run.teacher.model.to(run.device).eval()) as probe:
        return tuple(bn_noise_levels(probe, run.teacher.in_chans, run.teacher.resolution, run.device))


def derived_record(run: RunPlan) -> dict[str, Any]:
    """config.json's "derived" entry: what was decided from the teacher, and from which request."""
    return {
        "key": config_fingerprint(run.requested_content()),
        "schedule": {"requested": format_schedule(run.config.schedule) if run.config.schedule else None,
                     "value": format_schedule(run.schedule)},
        "multires": run.multires,
        "accepted_resolutions": {str(k): v or "ok" for k, v in sorted(run.accepted.items())},
        "flip": _flip_record(run),
        "ep_reach": {"requested": run.config.losses.ep_reach, "value": run.weights.ep_reach},
        "margin": {"requested": run.config.losses.margin, "value": run.weights.margin},
        "probe": dataclasses.asdict(run.probe) if run.probe is not None else None,
        "bn_noise_levels": list(run.noise_levels) if run.noise_levels is not None else None,
    }


def _flip_record(run: RunPlan) -> dict[str, Any]:
    """The flip as asked and decided, and why, where the probe decided nothing (agreement near chance)."""
    record: dict[str, Any] = {"requested": run.config.flip, "value": run.flip}
    reason = flip_fallback(run.config.flip, run.probe, run.plan.num_classes)
    if reason and not run.flip:
        record["reason"] = reason
    return record


def engine_settings(run: RunPlan) -> EngineSettings:
    """The inversion settings of a set-up run."""
    return _engine_settings(run, run.weights, run.flip, run.noise_levels)


def _engine_settings(run: RunRequest, weights: LossWeights, flip: bool,
                     noise_levels: tuple[float, ...] | None) -> EngineSettings:
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
        early_stop=c.early_stop,
        early_stop_window=c.early_stop_window,
        precision=run.precision,
        log_every=c.log_every,
        channels_last=run.device.type == "cuda",
        compile=c.compile,
        output_resolution=run.teacher.resolution,
        soft_topk=c.soft_topk,
        soft_views=c.soft_views,
        soft_view_min_scale=c.soft_view_min_scale,
        bn_noise_levels=list(noise_levels) if noise_levels is not None else None,
    )


def engine_for(run: RunPlan) -> InversionEngine:
    """The engine of a set-up run; use it as a context manager."""
    settings = engine_settings(run)
    return InversionEngine(run.teacher.model, run.teacher.mean, run.teacher.std, settings, run.device,
                           competitor=run.competitor.model if run.competitor is not None else None)


@contextmanager
def explain_out_of_memory(run: RunRequest) -> Iterator[None]:
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
