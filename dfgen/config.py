"""Synthesis configuration: one dataclass, its defaults and value checks, YAML presets and CLI overrides. The parsers
of values as they enter are in dfgen.parsing, the loss weights in dfgen.loss_weights."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dfgen.amortized_settings import MODES, AmortizedSettings
from dfgen.config_file import read_config_file, refuse_unknown
from dfgen.early_stop import DEFAULT_WINDOW, check_early_stop
from dfgen.errors import DfgenError
from dfgen.loss_weights import AUTO, COMPETITION, LossWeights, losses_content, synthesis_losses
from dfgen.parsing import (
    MAX_ITERATIONS,
    MAX_SEED,
    parse_count,
    parse_floats,
    parse_kwargs,
    parse_schedule,
    read_class_names,
)

SMALL_INPUT = 128  # below this teacher input size the default schedule has three stages (docs/design.md)
SMALL_INPUT_ITERATIONS = 200  # per stage


def default_schedule(size: int) -> list[tuple[int, int]]:
    """The schedule when none is given, from the teacher's input size: the paper's two stages at half and full
    size, 2000 iterations each (112:2000,224:2000 for ImageNet teachers); for small inputs (digits, MNIST, CIFAR:
    below 128 px) three stages from a quarter of the size, which transferred better there at a tenth of the cost."""
    if size >= SMALL_INPUT:
        return [(max(1, size // 2), 2000), (size, 2000)]
    sizes = sorted({max(4, size // 4), max(4, size // 2), size})
    return [(res, SMALL_INPUT_ITERATIONS) for res in sizes]


def format_schedule(stages: list[tuple[int, int]]) -> str:
    return ",".join(f"{r}:{i}" for r, i in stages)


# Options for users' own teachers (and class names): in the content only when set, so directories made before
# they existed keep their fingerprint.
OPTIONAL_CONTENT_FIELDS = ("teacher_kwargs", "num_classes", "in_chans", "image_size", "mean", "std", "use_ema",
                           "class_names", "competitor", "competitor_weights")


# Optimiser and jitter defaults: one home for SynthesisConfig and inversion.EngineSettings.
LR = 0.25  # Adam, per stage: linear warm-up then cosine to 0
WARMUP = 100  # iterations
UPSAMPLE = "bilinear"  # how a stage's image is enlarged to the next (bilinear or nearest)
JITTER_FRACTION = 0.125  # largest random roll, as a fraction of the side
DEFAULT_IMAGES_PER_CLASS = 4  # a batch layout's images per class when nothing decides it (plan.batch_layout)
DEFAULT_MAX_CLASSES_PER_BATCH = 32  # and its classes per batch: min(classes, this)

MULTIRES_MODES = (AUTO, "native", "upsample")


def parse_flip(value: Any) -> bool | str:
    """--flip on|off|auto (or a bool) -> True, False or "auto"."""
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("auto",):
        return AUTO
    if text in ("on", "true", "yes", "1"):
        return True
    if text in ("off", "false", "no", "0"):
        return False
    raise DfgenError(f"--flip must be on, off or auto, got {value!r}")


@dataclass
class SynthesisConfig:
    """Everything that decides what `dfgen synthesize` makes, plus how it runs (device, logging).

    `content_fields()` is the part that decides the images; an existing output directory made with
    different content fields is refused unless `overwrite`.
    """

    teacher: str = "digits"
    teacher_weights: str | None = None
    # The teacher's spec beyond its name (dfgen.teachers.load_teacher): part of the content, so a resume or
    # `distill` rebuilds the same teacher and a different spec is a different configuration.
    teacher_kwargs: dict[str, Any] | None = None
    num_classes: int | None = None  # None: the model's, or the weights file's classifier
    in_chans: int | None = None
    image_size: int | None = None  # None: the model's data config
    mean: list[float] | None = None
    std: list[float] | None = None
    use_ema: bool = False
    class_names: list[str] | str | None = None  # a file (one name a line, or JSON) or the names themselves
    # ADI's second round: a student trained on a first synthetic set, whose disagreement with the teacher the
    # competition term seeks (a model name or file.py:factory as for the teacher, with its weights file)
    competitor: str | None = None
    competitor_weights: str | None = None
    n: int = 1000
    out: str = "out"
    schedule: list[tuple[int, int]] | None = None  # None: (res/2, 2000), (res, 2000) from the teacher
    # The batch layout: classes x images per class. Give any of the three (e.g. --batch-size 50 with 10 classes
    # is 10 x 5); None: derived (plan.batch_layout), min(num_classes, 32) x 4 when nothing is given.
    batch_size: int | None = None
    classes_per_batch: int | None = None
    images_per_class: int | None = None
    seed: int = 0
    shard_size: int | None = None  # images per shard, rounded to a multiple of the batch; None: that nearest 1024
    format: str = "png"
    quality: int = 95
    lr: float = LR
    warmup: int = WARMUP
    upsample: str = UPSAMPLE
    jitter_fraction: float = JITTER_FRACTION
    flip: bool | str = AUTO  # auto: on only if the teacher is mirror-invariant on its own images (a probe)
    multires: str = AUTO  # native: the teacher sees each stage's size; upsample: it always sees its own size
    soft_topk: int = 10  # teacher logits stored per image (top-k; 0: none), for distill --soft-labels stored
    soft_views: int = 0  # random-resized-crop views per image whose logits are stored too (dfgen.soft_views)
    soft_view_min_scale: float = 0.25  # smallest area fraction of a stored view
    crop_min_scale: float | None = None  # random-resized crops in the loop, area scale min..1 (None: off)
    # a pixel-mode stage ends once its loss improves by less than this (relative) from one window of iterations to
    # the next (dfgen.early_stop; None: off, every stage runs its iterations)
    early_stop: float | None = None
    early_stop_window: int = DEFAULT_WINDOW
    losses: LossWeights = field(default_factory=lambda: synthesis_losses())
    no_diversity: bool = False
    precision: str = "auto"
    # pixels: each batch's pixels optimised through the schedule; generator: a meta-learned generator adapted a few
    # steps per batch (dfgen.amortized), with its settings; auto: decided from the teacher (dfgen.mode_choice), and
    # pixels where a pixel-mode option (a schedule, an early stop, a competitor) is given
    mode: str = AUTO
    generator: AmortizedSettings = field(default_factory=AmortizedSettings)
    # the generator mode (given, or taken by auto) replaces the losses' BN weight with its own for the teacher's
    # channels (dfgen.mode_choice, once the teacher is loaded); build_config clears this where a BN weight is given,
    # and so should a caller who builds the losses themselves. Not part of the content, which records the weight
    mode_bn: bool = True
    # How it runs; not part of the content.
    device: str = "auto"
    log_every: int = 50
    overwrite: bool = False
    quiet: bool = False
    rank: int | None = None
    world_size: int | None = None
    compile: bool = False

    RUN_FIELDS = ("out", "device", "log_every", "overwrite", "quiet", "rank", "world_size", "compile")

    def __post_init__(self) -> None:
        check_values(self)
        if isinstance(self.losses, dict):
            check_loss_values(self.losses, "losses")
            self.losses = synthesis_losses(**self.losses)
        check_loss_values(dataclasses.asdict(self.losses), "losses")
        self.teacher_kwargs = parse_kwargs(self.teacher_kwargs) or None
        self.mean = parse_floats(self.mean, "--mean")
        self.std = parse_floats(self.std, "--std")
        for name in ("num_classes", "in_chans", "image_size"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise DfgenError(f"--{name.replace('_', '-')} must be a positive whole number, got {value!r}")
        if self.class_names is not None:
            self.class_names = read_class_names(self.class_names)
        self.n = parse_count(self.n)
        if self.schedule is not None:
            self.schedule = parse_schedule(self.schedule)
        if self.format not in ("png", "jpg", "webp"):
            raise DfgenError(f"--format must be png, jpg or webp, got {self.format!r}")
        if self.precision not in ("auto", "fp32", "bf16", "fp16"):
            raise DfgenError(f"--precision must be auto, fp32, bf16 or fp16, got {self.precision!r}")
        self.flip = parse_flip(self.flip)
        if self.mode not in (AUTO, *MODES):
            raise DfgenError(f"--mode must be one of {', '.join((AUTO, *MODES))}, got {self.mode!r}")
        if self.mode == AUTO and (self.schedule is not None or self.early_stop is not None or self.competitor):
            self.mode = "pixels"  # options of the pixel mode alone: the intent is clear
        if isinstance(self.generator, dict):
            self.generator = AmortizedSettings(**self.generator)
        if self.competitor is not None and self.competitor_weights is None:
            raise DfgenError("--competitor needs --competitor-weights: the student trained on the first round")
        if self.competitor is not None and self.losses.competition is None:
            self.losses = dataclasses.replace(self.losses, competition=COMPETITION)
        elif self.competitor is None and self.competitor_weights is not None:
            raise DfgenError("--competitor-weights needs --competitor (the model they belong to)")
        elif self.competitor is None and self.losses.competition:
            raise DfgenError("--competition needs --competitor: the student whose disagreement with the teacher "
                             "it seeks (docs/design.md, two-round synthesis)")
        if self.multires not in MULTIRES_MODES:
            raise DfgenError(f"--multires must be one of {', '.join(MULTIRES_MODES)}, got {self.multires!r}")
        if self.soft_topk < 0:
            raise DfgenError(f"--soft-topk must be >= 0, got {self.soft_topk}")
        if isinstance(self.soft_views, bool) or not isinstance(self.soft_views, int) or self.soft_views < 0:
            raise DfgenError(f"--soft-views must be a whole number >= 0, got {self.soft_views!r}")
        if self.soft_views and not self.soft_topk:
            raise DfgenError("--soft-views needs stored soft labels: --soft-topk 0 turns them off")
        if not 0 < self.soft_view_min_scale <= 1:
            raise DfgenError(f"--soft-view-min-scale must be in (0, 1], got {self.soft_view_min_scale}")
        self.early_stop, self.early_stop_window = check_early_stop(self.early_stop, self.early_stop_window, self.mode)
        if self.crop_min_scale is not None and not 0 < self.crop_min_scale <= 1:
            raise DfgenError(f"--crop-min-scale must be in (0, 1], got {self.crop_min_scale}")
        if self.upsample not in ("bilinear", "nearest"):
            raise DfgenError(f"upsample must be bilinear or nearest, got {self.upsample!r}")
        for name in ("batch_size", "classes_per_batch", "images_per_class"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise DfgenError(f"--{name.replace('_', '-')} must be a positive whole number, got {value!r}")
        if not 1 <= int(self.quality) <= 100:
            raise DfgenError(f"--quality must be in 1..100, got {self.quality}")

    def teacher_options(self) -> dict[str, Any]:
        """Keyword arguments of dfgen.teachers.load_teacher beyond name and weights."""
        return {"kwargs": self.teacher_kwargs, "num_classes": self.num_classes, "in_chans": self.in_chans,
                "image_size": self.image_size, "mean": self.mean, "std": self.std, "use_ema": self.use_ema}

    @property
    def effective_losses(self) -> LossWeights:
        """The weights in force: `no_diversity` is plain DeepInversion (a_ep = a_triplet = 0)."""
        if self.no_diversity:
            return dataclasses.replace(self.losses, ep=0.0, triplet=0.0)
        return self.losses

    def content_fields(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        for name in self.RUN_FIELDS:
            data.pop(name, None)
        data["losses"] = losses_content(self.effective_losses)
        data.pop("no_diversity")
        data.pop("mode_bn")  # the weight it decides is in the losses
        for name in OPTIONAL_CONTENT_FIELDS:
            if data.get(name) in (None, False):
                data.pop(name, None)
        if not self.soft_views:  # no views, no entries: directories made before the option keep their fingerprint
            data.pop("soft_views")
            data.pop("soft_view_min_scale")
        if self.early_stop is None:  # off: directories made before the option keep their fingerprint
            data.pop("early_stop")
            data.pop("early_stop_window")
        if self.mode == "pixels":  # the mode's settings only where they matter: earlier directories keep theirs
            data.pop("mode")
            data.pop("generator")
        if data["schedule"] is not None:
            data["schedule"] = format_schedule(data["schedule"])
        if self.format == "png":
            data.pop("quality")  # lossless: quality has no effect
        return data


# The numbers of SynthesisConfig: (whole number?, lowest, highest, lowest excluded?); checked where they enter.
NUMBERS: dict[str, tuple[bool, float, float | None, bool]] = {
    "seed": (True, 0, MAX_SEED, False),
    "lr": (False, 0, None, True),
    "warmup": (True, 0, MAX_ITERATIONS, False),
    "jitter_fraction": (False, 0, 0.5, False),
    "log_every": (True, 1, None, False),
    "quality": (True, 1, 100, False),
    "soft_topk": (True, 0, None, False),
    "soft_view_min_scale": (False, 0, 1, True),
}
FLAGS = ("use_ema", "no_diversity", "overwrite", "quiet", "compile")
TEXTS = ("teacher", "out", "device", "upsample", "multires", "format", "precision")
OPTIONAL_TEXTS = ("teacher_weights", "competitor", "competitor_weights")
PATHS = ("out", "teacher_weights", "competitor_weights")
LOSS_NUMBERS = ("tv_l2", "tv_l1", "l2", "bn", "first_bn_multiplier", "ep", "triplet", "competition")


def check_values(config: SynthesisConfig) -> None:
    """Types, ranges and finiteness of the plain values (a YAML preset or the Python API can hold anything):
    one line naming the option, never an error deeper in the run."""
    for name, (whole, low, high, low_open) in NUMBERS.items():
        value = getattr(config, name)
        setattr(config, name, check_number(value, f"--{name.replace('_', '-')}", whole, low, high, low_open))
    for name in FLAGS:
        if not isinstance(getattr(config, name), bool):
            raise DfgenError(f"{name} must be true or false, got {getattr(config, name)!r}")
    for name in TEXTS + OPTIONAL_TEXTS:
        value = getattr(config, name)
        if name in PATHS and isinstance(value, os.PathLike):  # the Python API may pass a Path
            continue
        if not isinstance(value, str) and not (value is None and name in OPTIONAL_TEXTS):
            raise DfgenError(f"--{name.replace('_', '-')} must be text, got {value!r}")
        if isinstance(value, str) and not value.strip() and name in ("teacher", "out"):
            raise DfgenError(f"--{name} must not be empty")
    if config.crop_min_scale is not None:
        config.crop_min_scale = check_number(config.crop_min_scale, "--crop-min-scale", False, 0, 1, True)


def check_number(value: Any, what: str, whole: bool, low: float, high: float | None = None,
                 low_open: bool = False) -> Any:
    """`value` as an int (`whole`) or float in [low, high] ((low, high] with `low_open`), finite; else one line."""
    kind = "a whole number" if whole else "a number"
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise DfgenError(f"{what} must be {kind}, got {value!r}")
    if not math.isfinite(value):
        raise DfgenError(f"{what} must be a finite number, got {value!r}")
    if whole and not float(value).is_integer():
        raise DfgenError(f"{what} must be {kind}, got {value!r}")
    value = int(value) if whole else float(value)
    if value < low or (low_open and value == low) or (high is not None and value > high):
        upper = f"{high}]" if high is not None else "inf)"
        bounds = f"{'(' if low_open else '['}{low}, {upper}"
        raise DfgenError(f"{what} must be in {bounds}, got {value!r}")
    return value


def check_loss_values(losses: Mapping[str, Any], where: str) -> None:
    """Loss weights: finite numbers >= 0 (None: the form's default); margin and ep-reach: numbers or auto."""
    for name in LOSS_NUMBERS:
        if losses.get(name) is not None:
            check_number(losses[name], f"--{name.replace('_', '-')}", False, 0)
    for name in ("margin", "ep_reach"):
        value = losses.get(name)
        if value is None or (isinstance(value, str) and value.strip().lower() == AUTO):
            continue
        if isinstance(value, str):
            try:
                value = float(value)
            except ValueError:
                raise DfgenError(f"--{name.replace('_', '-')} must be a number or auto, got {value!r}") from None
        check_number(value, f"--{name.replace('_', '-')}", False, 0, 2)
    if losses.get("form") is not None and not isinstance(losses["form"], str):
        raise DfgenError(f"{where}: form must be normalized or paper, got {losses['form']!r}")


def config_fingerprint(content: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()[:16]


def load_yaml_config(path: str | Path) -> dict[str, Any]:
    data = read_config_file(path)
    known = {f.name for f in dataclasses.fields(SynthesisConfig)} - {"mode_bn"}
    loss_names = {f.name for f in dataclasses.fields(LossWeights)}
    losses = data.pop("losses", None) or {}
    if not isinstance(losses, dict) or not all(isinstance(key, str) for key in losses):
        raise DfgenError(f"config file {path}: losses must be a mapping of weight: value")
    losses = dict(losses)
    for key in list(data):
        if key in loss_names:  # flat loss keys are accepted too, like the CLI flags
            losses[key] = data.pop(key)
    refuse_unknown(data, known, f"config file {path}")
    bad_losses = sorted(set(losses) - loss_names)
    if bad_losses:
        raise DfgenError(f"config file {path}: unknown loss weight(s) {', '.join(bad_losses)}")
    check_loss_values(losses, f"config file {path}")
    if losses:
        data["losses"] = losses
    return data


def build_config(yaml_path: str | Path | None = None, **overrides: Any) -> SynthesisConfig:
    """Defaults <- YAML file <- explicit overrides (None means 'not given')."""
    data: dict[str, Any] = load_yaml_config(yaml_path) if yaml_path else {}
    if overrides.get("batch_size") is not None:  # a batch size given here replaces the preset's batch layout
        for key in ("batch_size", "classes_per_batch", "images_per_class"):
            if overrides.get(key) is None:
                data.pop(key, None)
    losses = dict(data.pop("losses", {}) or {})
    generator = dict(data.pop("generator", {}) or {})
    loss_names = {f.name for f in dataclasses.fields(LossWeights)}
    for key, value in overrides.items():
        if value is None:
            continue
        if key in ("losses", "generator"):  # whole groups, as SynthesisConfig takes them (dict or dataclass)
            group = losses if key == "losses" else generator
            group.update(value if isinstance(value, dict) else dataclasses.asdict(value))
        elif key.startswith("gen_"):  # the generator mode's settings (AmortizedSettings), flat as on the CLI
            generator[key.removeprefix("gen_")] = value
        elif key in loss_names:
            losses[key] = value
        else:
            data[key] = value
    if data.get("mode", AUTO) == AUTO and generator:
        data["mode"] = "generator"  # generator settings given: the intent is clear
    # no BN weight given: the generator mode's own, by the teacher's channels, once the teacher is known
    data["mode_bn"] = "bn" not in losses and losses.get("form", "normalized") == "normalized"
    return SynthesisConfig(**data, losses=synthesis_losses(**losses), generator=AmortizedSettings(**generator))
