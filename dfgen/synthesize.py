"""`dfgen.synthesize(config)`: the pipeline plan -> invert -> write -> index.

Work is divided by shard: rank r of W makes the shards k with k % W == r. A shard is a pure function
of (configuration, seed, k), so the dataset does not depend on W, on which rank made what, or on
interruptions; whoever finds every shard done writes index.json and dataset.json."""

from __future__ import annotations

import dataclasses
import datetime as _dt
import json
import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from dfgen import __version__
from dfgen.calibration import (
    ProbeFigures,
    apply_probe,
    describe_probe,
    figures_from_record,
    needs_probe,
    probe_labels,
    probe_schedule,
    run_probe,
)
from dfgen.config import LossWeights, SynthesisConfig, config_fingerprint, default_schedule, format_schedule
from dfgen.errors import DfgenError
from dfgen.inversion import EngineSettings, InversionEngine, TeacherProbe, bn_noise_levels
from dfgen.plan import LabelPlan
from dfgen.resolutions import accepted_resolutions, resolve_multires
from dfgen.shards import (
    TMP_MARK,
    Sample,
    build_index,
    check_writable_channels,
    encode_image,
    image_key,
    read_sidecar,
    remove_temporaries,
    shard_done,
    shard_paths,
    write_json_atomic,
    write_shard,
)
from dfgen.teachers import Teacher, load_teacher

CONFIG_FILE = "config.json"  # written at the start: what this directory is being made with


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
    # Settings derived from the teacher by the probe (dfgen.calibration); None until derive_settings() ran.
    flip: bool | None = None
    weights: LossWeights | None = None
    probe: ProbeFigures | None = None
    noise_levels: list[float] | None = None  # normalized objective: each BN layer's loss on noise

    @property
    def out(self) -> Path:
        return Path(self.config.out)

    def content(self) -> dict[str, Any]:
        """What decides the images: compared with config.json of an existing output directory."""
        content = self.requested_content()
        if self.weights is None:
            raise RuntimeError("derive_settings() must run before content()")
        content.update(flip=self.flip, multires=self.multires, losses=dataclasses.asdict(self.weights))
        return content

    def requested_content(self) -> dict[str, Any]:
        """The content as asked for, "auto" values unresolved: the probe's identity."""
        content = self.config.content_fields()
        content.pop("teacher_weights")  # the path does not matter, the weights' hash does
        content.update(
            schedule=format_schedule(self.schedule),
            classes_per_batch=self.plan.classes_per_batch,
            shard_size=self.plan.shard_size,
            batch_size=self.plan.batch_size,
            teacher_source=self.teacher.source,
            teacher_weights_sha256=self.teacher.weights_sha256,
        )
        return content

    def my_shards(self) -> range:
        return self.plan.shards_for_rank(self.rank, self.world_size)


def world_from_env(config: SynthesisConfig) -> tuple[int, int, int]:
    """(rank, world_size, local_rank): explicit flags first, then torchrun's / SLURM's environment."""
    if config.rank is not None or config.world_size is not None:
        rank, world = config.rank or 0, config.world_size or 1
        local = int(os.environ.get("LOCAL_RANK", 0))
    else:
        from timm.utils import world_info_from_env  # torchrun, SLURM and MPI variables

        local, rank, world = world_info_from_env()
    if not 0 <= rank < world:
        raise DfgenError(f"--rank must be in 0..{world - 1} for --world-size {world}, got {rank}")
    return rank, world, local


def resolve_device(name: str, local_rank: int) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise DfgenError("--device cuda was asked for but no CUDA GPU is visible; use --device cpu")
        return torch.device(name if ":" in name else f"cuda:{local_rank % torch.cuda.device_count()}")
    if name != "cpu":
        raise DfgenError(f"--device must be auto, cpu or cuda, got {name!r}")
    return torch.device("cpu")


def resolve_precision(precision: str, device: torch.device) -> str:
    if precision != "auto":
        return precision
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return "bf16"
    return "fp32"


def prepare(config: SynthesisConfig, teacher: Teacher | None = None) -> RunPlan:
    """Resolve the teacher, defaults, device and rank into a RunPlan (no files written)."""
    rank, world, local = world_from_env(config)
    device = resolve_device(config.device, local)
    if teacher is None:
        teacher = load_teacher(config.teacher, config.teacher_weights, device="cpu", **config.teacher_options())
    check_writable_channels(teacher.in_chans, config.format)
    if config.class_names is not None and len(config.class_names) != teacher.num_classes:
        raise DfgenError(f"--class-names has {len(config.class_names)} names but teacher {teacher.name} has "
                         f"{teacher.num_classes} classes")
    resolution = teacher.resolution
    schedule = config.schedule or default_schedule(resolution)
    classes_per_batch = config.classes_per_batch or min(teacher.num_classes, 32)
    if classes_per_batch > teacher.num_classes:
        raise DfgenError(
            f"--classes-per-batch {classes_per_batch} exceeds the teacher's {teacher.num_classes} classes"
        )
    weights = config.effective_losses
    if (weights.ep or weights.triplet) and config.images_per_class < 2:
        raise DfgenError("the diversity losses need --images-per-class >= 2 (or pass --no-diversity)")
    batch_size = classes_per_batch * config.images_per_class
    shard_size = config.shard_size or batch_size * max(1, round(1024 / batch_size))
    if shard_size % batch_size:
        raise DfgenError(f"--shard-size {shard_size} must be a multiple of the batch size {batch_size}")
    plan = LabelPlan(
        n=config.n,
        num_classes=teacher.num_classes,
        classes_per_batch=classes_per_batch,
        images_per_class=config.images_per_class,
        seed=config.seed,
        shard_size=shard_size,
    )
    accepted = accepted_resolutions(teacher.model, teacher.in_chans, [r for r, _ in schedule] + [resolution])
    multires = resolve_multires(config.multires, schedule, resolution, accepted, teacher.name)
    return RunPlan(config, teacher, plan, schedule, device, resolve_precision(config.precision, device), rank, world,
                   multires=multires, accepted=accepted)


def derive_settings(run: RunPlan, recorded: dict[str, Any] | None = None, log: bool = True) -> RunPlan:
    """Fill in what is derived from the teacher (flips, reach, margin) with the probe (dfgen.calibration). A probe
    `recorded` in config.json for the same requested content is reused, not run again."""
    key = config_fingerprint(run.requested_content())
    if run.config.effective_losses.form == "normalized":
        run.noise_levels = teacher_noise_levels(run)
    figures, probed = None, False
    if needs_probe(run.config.flip, run.config.effective_losses):
        if recorded and recorded.get("key") == key:
            figures = figures_from_record(recorded.get("probe"))
        if figures is None:
            figures, probed = run_probe(run.teacher.model, run.teacher.mean, run.teacher.std,
                                        engine_settings(run, run.config.effective_losses, flip=False), run.plan,
                                        run.device), True
    run.flip, run.weights = apply_probe(run.config.flip, run.config.effective_losses, figures)
    run.probe = figures
    if probed and log:
        prefix = f"[rank {run.rank}/{run.world_size}] " if run.world_size > 1 else ""
        _log(prefix + describe_probe(figures, run.flip, run.weights))
    return run


def teacher_noise_levels(run: RunPlan) -> list[float]:
    """Each BN layer's loss on noise at the teacher's size: the units of the normalized BN term."""
    probe = TeacherProbe(run.teacher.model.to(run.device).eval())
    try:
        return bn_noise_levels(probe, run.teacher.in_chans, run.teacher.resolution, run.device)
    finally:
        probe.remove()


def derived_record(run: RunPlan) -> dict[str, Any]:
    """config.json's "derived" entry: what was decided from the teacher, and from which request."""
    return {
        "key": config_fingerprint(run.requested_content()),
        "schedule": {"requested": format_schedule(run.config.schedule) if run.config.schedule else None,
                     "value": format_schedule(run.schedule)},
        "multires": run.multires,
        "accepted_resolutions": {str(k): v or "ok" for k, v in sorted(run.accepted.items())},
        "flip": {"requested": run.config.flip, "value": run.flip},
        "ep_reach": {"requested": run.config.losses.ep_reach, "value": run.weights.ep_reach},
        "margin": {"requested": run.config.losses.margin, "value": run.weights.margin},
        "probe": dataclasses.asdict(run.probe) if run.probe is not None else None,
        "bn_noise_levels": run.noise_levels,
    }


def _prepare_out_dir(run: RunPlan) -> None:
    """Claim `out` for this configuration, or refuse. Several ranks may run this at once: each writes
    the same config.json atomically, and a directory holding only dfgen's own entries is never foreign."""
    out = run.out
    content = run.content()
    config_path = out / CONFIG_FILE
    existing = json.loads(config_path.read_text()) if config_path.is_file() else None
    own = {"shards", CONFIG_FILE, "index.json", "dataset.json"}
    foreign = [p.name for p in out.iterdir() if p.name not in own and not p.name.startswith(CONFIG_FILE + TMP_MARK)] \
        if out.is_dir() else []
    if existing is not None and existing.get("content") == content:
        (out / "shards").mkdir(parents=True, exist_ok=True)
        return
    if existing is None and foreign:
        raise DfgenError(f"{out} is not empty and was not made by dfgen synthesize; choose another --out")
    if existing is not None:
        if not run.config.overwrite:
            # Name what the user asked differently (derived values follow from it), else what was resolved.
            new, old = content, existing.get("content", {})
            if existing.get("requested") and existing["requested"] != run.requested_content():
                new, old = run.requested_content(), existing["requested"]
            changed = sorted(k for k in set(new) | set(old) if new.get(k) != old.get(k))
            raise DfgenError(
                f"{out} was made with a different configuration (differs in: {', '.join(changed)}); rerun the same "
                "command to continue it, or pass --overwrite to replace it"
            )
        if run.world_size > 1:
            raise DfgenError("--overwrite with several processes would race; delete the output directory first")
        shutil.rmtree(out / "shards", ignore_errors=True)
        for name in ("index.json", "dataset.json", CONFIG_FILE):
            (out / name).unlink(missing_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(
        config_path,
        {"fingerprint": config_fingerprint(content), "content": content, "requested": run.requested_content(),
         "dataset": dataset_description(run), "derived": derived_record(run)},
    )
    (out / "shards").mkdir(exist_ok=True)


def _shard_samples(run: RunPlan, engine: InversionEngine, shard: int, progress: tqdm | None) -> tuple:
    """Invert every batch of one shard; returns (samples, stats)."""
    plan = run.plan
    samples: list[Sample] = []
    totals, target_probs, agreements, retries = [], [], [], 0
    activity: dict[str, list[float]] = {"ep_active": [], "triplet_active": []}
    for batch in plan.shard_batches(shard):
        indices = plan.batch_range(batch)
        labels = torch.as_tensor(plan.labels(indices))
        seed = plan.batch_seed(batch)

        def on_log(stage: str, it: int, iters: int, terms: dict[str, float], batch=batch) -> None:
            if progress is not None:
                progress.set_postfix_str(f"batch {batch} {stage} it {it}/{iters} loss {terms['total']:.3g}")

        result = engine.invert(labels, seed, on_log)
        retries += result.lr_scale != 1.0
        losses = {k: round(v, 6) for k, v in result.losses.items()}
        totals.append(result.losses["total"])
        for key, values in activity.items():
            if key in result.losses:
                values.append(result.losses[key])
        for j, index in enumerate(indices):
            label = int(labels[j])
            prob = float(result.target_prob[j])
            predicted = int(result.predicted[j])
            target_probs.append(prob)
            agreements.append(predicted == label)
            meta = {"index": index, "label": label, "batch": batch, "seed": seed, "target_prob": round(prob, 6),
                    "predicted": predicted, "losses": losses}
            if result.soft_index is not None:  # the teacher's top-k logits on the written image
                meta["soft"] = {"index": result.soft_index[j].tolist(),
                                "logit": [round(float(v), 4) for v in result.soft_logit[j]]}
            image = encode_image(result.images[j].numpy(), run.config.format, run.config.quality)
            samples.append(Sample(key=image_key(index), image=image, label=label, meta=meta))
        if progress is not None:
            progress.update(len(indices))
    stats = {
        "first_index": plan.shard_range(shard).start,
        "last_index": plan.shard_range(shard).stop - 1,
        "loss": {
            "final_total_mean": float(np.mean(totals)),
            "target_prob_mean": float(np.mean(target_probs)),
            "agreement": float(np.mean(agreements)),
            "retried_batches": int(retries),
            # share of anchors on which each diversity term pushed or pulled, at each batch's last log
            **{key: float(np.mean(values)) for key, values in activity.items() if values},
        },
    }
    return samples, stats


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
        bn_noise_levels=run.noise_levels,
    )


def engine_for(run: RunPlan) -> InversionEngine:
    settings = engine_settings(run, run.weights, run.flip)
    return InversionEngine(run.teacher.model, run.teacher.mean, run.teacher.std, settings, run.device)


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


@dataclass
class SynthesisResult:
    out: Path
    shards_made: list[int]
    shards_skipped: list[int]
    complete: bool
    seconds: float


def synthesize(
    config: SynthesisConfig | None = None, teacher: Teacher | str | None = None, **overrides: Any
) -> SynthesisResult:
    """Make (or continue) the synthetic dataset described by `config` (or keyword overrides of the
    defaults, e.g. `synthesize(teacher="digits", n=200, out="out")`). Returns what this process did."""
    if isinstance(teacher, str):  # synthesize(teacher="digits", ...): a name, not a loaded Teacher
        overrides["teacher"], teacher = teacher, None
    if config is None:
        config = SynthesisConfig(**overrides)
    elif overrides:
        config = dataclasses.replace(config, **overrides)
    start = time.perf_counter()
    run = prepare(config, teacher)
    derive_settings(run, _recorded_derivation(run.out))
    _prepare_out_dir(run)
    out = run.out
    mine = run.my_shards()
    remove_temporaries(out, mine)
    todo, skipped = [], []
    for shard in mine:
        (skipped if shard_done(out, shard, len(run.plan.shard_range(shard))) else todo).append(shard)
    prefix = f"[rank {run.rank}/{run.world_size}] " if run.world_size > 1 else ""
    if not todo:
        _log(f"{prefix}all {len(mine)} shard(s) of this process are already done in {out}; nothing to do")
    else:
        if skipped:
            _log(f"{prefix}resuming: {len(skipped)} shard(s) already done, {len(todo)} to make")
        total = sum(len(run.plan.shard_range(k)) for k in todo)
        progress = tqdm(total=total, unit="img", desc=f"{prefix}synthesize", disable=config.quiet, dynamic_ncols=True)
        with engine_for(run) as engine, progress:
            for shard in todo:
                shard_start = time.perf_counter()
                samples, stats = _shard_samples(run, engine, shard, None if config.quiet else progress)
                stats["seconds"] = round(time.perf_counter() - shard_start, 3)
                sidecar = write_shard(out, shard, samples, config.format, stats)
                if config.quiet:
                    _log(f"{prefix}shard {shard} done: {sidecar['count']} images, "
                         f"agreement {stats['loss']['agreement']:.3f}, {stats['seconds']:.1f}s")
    complete = finalize(out)
    if complete and todo:
        _log(f"{prefix}dataset complete: {run.plan.n} images in {run.plan.num_shards} shard(s) at {out}")
    return SynthesisResult(out, todo, skipped, complete, time.perf_counter() - start)


def _recorded_derivation(out: Path) -> dict[str, Any] | None:
    """The "derived" entry of an existing config.json (a resume or another rank reuses its probe)."""
    try:
        return json.loads((out / CONFIG_FILE).read_text()).get("derived")
    except (OSError, ValueError, AttributeError):
        return None


def plan_from_description(description: dict[str, Any]) -> LabelPlan:
    return LabelPlan(
        n=description["n"],
        num_classes=description["num_classes"],
        classes_per_batch=description["classes_per_batch"],
        images_per_class=description["images_per_class"],
        seed=description["seed"],
        shard_size=description["shard_size"],
    )


def finalize(out: Path) -> bool:
    """If every shard is done, write index.json and dataset.json (atomically; several processes may
    do it at once and write the same content). Cheap: sidecars and file sizes, not hashes. Needs only
    config.json, not the teacher, so `dfgen index` can run anywhere."""
    description = json.loads((out / CONFIG_FILE).read_text())["dataset"]
    plan = plan_from_description(description)
    sidecars = []
    for shard in range(plan.num_shards):
        sidecar = read_sidecar(out, shard)
        tar_path, _ = shard_paths(out, shard)
        if sidecar is None or not tar_path.is_file() or tar_path.stat().st_size != sidecar.get("bytes"):
            return False
        sidecars.append(sidecar)
    counts = [int(s["count"]) for s in sidecars]
    weighted = lambda key: float(np.average([s["loss"][key] for s in sidecars], weights=counts))  # noqa: E731
    description = {
        **description,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "stats": {
            "agreement": weighted("agreement"),
            "target_prob_mean": weighted("target_prob_mean"),
            "final_total_mean": weighted("final_total_mean"),
            "retried_batches": int(sum(s["loss"]["retried_batches"] for s in sidecars)),
            "seconds": float(sum(s.get("seconds", 0.0) for s in sidecars)),
            "bytes": int(sum(s["bytes"] for s in sidecars)),
        },
    }
    write_json_atomic(out / "index.json", build_index(sidecars, name=out.name))
    write_json_atomic(out / "dataset.json", description)
    return True


def dataset_description(run: RunPlan) -> dict[str, Any]:
    """dataset.json without the figures only known at the end (stats, created)."""
    c, plan, teacher = run.config, run.plan, run.teacher
    resolution = run.teacher.resolution  # images are written at the teacher's input size
    return {
        "kind": "synthetic",
        "tool": "dfgen",
        "version": __version__,
        "teacher": teacher.describe(),
        "num_classes": teacher.num_classes,
        "classes": list(c.class_names) if c.class_names else [str(i) for i in range(teacher.num_classes)],
        "class_counts": plan.class_counts().tolist(),
        "in_chans": teacher.in_chans,
        "image_size": [teacher.in_chans, resolution, resolution],
        "n": plan.n,
        "num_shards": plan.num_shards,
        "shard_size": plan.shard_size,
        "batch_size": plan.batch_size,
        "classes_per_batch": plan.classes_per_batch,
        "images_per_class": plan.images_per_class,
        "seed": c.seed,
        "schedule": format_schedule(run.schedule),
        "losses": dataclasses.asdict(run.weights),
        "diversity": not c.no_diversity,
        "optimizer": {"lr": c.lr, "warmup": c.warmup, "betas": [0.5, 0.9], "upsample": c.upsample,
                      "jitter_fraction": c.jitter_fraction, "flip": run.flip, "multires": run.multires,
                      "crop_min_scale": c.crop_min_scale, "kept": "last iterate"},
        "derived": derived_record(run),
        "soft_labels": {"k": min(c.soft_topk, teacher.num_classes), "of": "teacher logits on the written image"}
        if c.soft_topk else None,
        "precision": run.precision,
        "format": c.format,
        "quality": None if c.format == "png" else c.quality,
        "fingerprint": config_fingerprint(run.content()),
    }


def describe_plan(config: SynthesisConfig, teacher: Teacher | None = None) -> str:
    """The `--dry-run` text: shards, images per rank, disk and time estimates (from a short
    calibration on this device). Writes nothing."""
    if teacher is None:  # the cost does not depend on the weights: no download for a plan
        teacher = load_teacher(config.teacher, config.teacher_weights, pretrained=config.teacher_weights is not None,
                               **config.teacher_options())
    note = "" if config.teacher_weights else " (timed with random weights: the cost does not depend on them)"
    run = prepare(config, teacher)
    plan = run.plan
    probe_note = _assume_probe_defaults(run)
    seconds_per_image, bytes_per_image, calib_batch = _calibrate(run)
    lines = [
        f"teacher      {teacher.name} ({teacher.source}), {teacher.num_classes} classes, input {teacher.input_size}",
        f"images       {plan.n:,} in {plan.num_shards:,} shard(s) of {plan.shard_size} "
        f"({plan.num_batches:,} batches of {plan.classes_per_batch} classes x {plan.images_per_class})",
        f"schedule     {format_schedule(run.schedule)} on {run.device} ({run.precision})",
    ]
    worst = 0
    for rank in range(run.world_size):
        shards = plan.shards_for_rank(rank, run.world_size)
        images = sum(len(plan.shard_range(k)) for k in shards)
        worst = max(worst, images)
        if rank < 4 or rank == run.world_size - 1:
            lines.append(f"rank {rank:<7} {len(shards):,} shard(s), {images:,} images")
        elif rank == 4:
            lines.append("...")
    lines += [
        f"disk         ~{_human_bytes(bytes_per_image * plan.n)} ({config.format}; upper bound from noise-like images)",
        f"time         ~{_human_seconds(seconds_per_image * worst)} for the busiest rank at "
        f"{1 / seconds_per_image:.3g} images/s per process{note} (calibrated on a batch of {calib_batch})",
        f"output       {run.out}",
    ]
    if probe_note:
        lines.insert(3, probe_note)
    return "\n".join(lines)


def _assume_probe_defaults(run: RunPlan) -> str | None:
    """For a plan, settings left to the probe take stand-in values (they do not change the cost); returns the line
    that says so, or None when nothing is left to the probe."""
    c = run.config
    weights = c.effective_losses
    if not needs_probe(c.flip, weights):
        run.flip, run.weights = apply_probe(c.flip, weights, None)
        return None
    stand_in = ProbeFigures(images=0, iterations=0, seconds=0.0, agreement=1.0, mirror_kept=1.0, mirror_prob_drop=0.0,
                            negative_distance=1.0, positive_distance=0.0)
    run.flip, run.weights = apply_probe(c.flip, weights, stand_in)
    labels = probe_labels(run.plan)
    iterations = sum(i for _, i in probe_schedule(run.schedule))
    return (f"probe        flips/reach/margin set to auto: decided at start by inverting {len(labels)} images for "
            f"{iterations} iterations on each rank")


def _calibrate(run: RunPlan, iterations: int = 1) -> tuple[float, float, int]:
    """Time a few iterations per stage resolution on a small batch: (seconds per image, bytes per image)."""
    batch = min(run.plan.batch_size, 2)
    labels = torch.arange(batch) % run.plan.num_classes
    seconds_per_image = 0.0
    encoded: list[int] = []
    with engine_for(run) as engine:
        for resolution, stage_iterations in run.schedule:
            engine.settings.schedule = [(resolution, iterations)]
            engine.settings.log_every = 0
            engine.invert(labels, 0)  # warm-up: allocations, kernels
            start = time.perf_counter()
            result = engine.invert(labels, 1)
            elapsed = time.perf_counter() - start
            seconds_per_image += elapsed / (iterations * batch) * stage_iterations
        encoded = [len(encode_image(img.numpy(), run.config.format, run.config.quality)) for img in result.images]
    return seconds_per_image, float(np.mean(encoded)), batch


def _human_bytes(size: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if size < 1000 or unit == "TB":
            return f"{size:.3g} {unit}"
        size /= 1000
    return f"{size:.3g} TB"


def _human_seconds(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    if seconds < 172800:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"
