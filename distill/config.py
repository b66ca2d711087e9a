"""Training configuration of `distill run`: one dataclass, YAML presets (configs/distill_*.yaml), CLI overrides.

Defaults are the DeiT / DearKD ImageNet recipe; the digits preset overrides what does not fit
32x32 greyscale digits.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dfgen.config_file import read_config_file, refuse_unknown
from distill.errors import DistillError
from distill.values import NULL, check_choice, check_json_tree, check_range, coerce

_DEVICES = ("auto", "cpu", "cuda")
_DISTILLATIONS = ("hard", "soft")
_SOFT_LABELS = ("online", "stored")
_PRECISIONS = ("auto", "fp32", "bf16", "fp16")
_REMODES = ("pixel", "rand", "const")  # timm's RandomErasing
_INTERPOLATIONS = ("bilinear", "bicubic", "nearest", "random")  # timm's training transform


@dataclass
class TrainConfig:
    """Everything `distill.train` needs. `content()` is the part that decides the result: `--resume` refuses a
    checkpoint made with a different one (the run fields may change between invocations)."""

    # data (sources: distill.sources)
    shards: list[str] = field(default_factory=list)  # one or more sources: dfgen dataset, ImageFolder, .tar shards
    mix: list[float] | None = None  # share of each --shards source in the stream; None: by size
    fraction: list[float] | None = None  # share of each source's images used (the data-efficient setting)
    val: str | None = None  # a source, or a flat image directory with val_labels, evaluated every eval_every epochs
    val_labels: str | None = None  # "FILE LABEL" lines (or Kaggle's LOC_val_solution.csv) for a flat --val
    image_key: str | None = None  # plain WebDataset shards: the image's extension; None: png/jpg/jpeg/webp
    label_key: str = "cls"  # plain WebDataset shards: the label's extension (an integer from 0)
    # student
    model: str = "dearkd_tiny_patch16_224"
    num_classes: int | None = None  # None: from the training data's dataset.json
    in_chans: int | None = None
    img_size: int | None = None
    drop_path: float = 0.1
    model_kwargs: dict[str, Any] = field(default_factory=dict)  # more student arguments (prefix_logit, ...)
    # teacher and stage 1
    teacher: str | None = None  # None: the teacher named in a synthetic dataset.json
    teacher_weights: str | None = None
    epochs: int = 300
    stage1_epochs: int = 250  # epochs with the teacher (DeiT hard distillation + hidden loss)
    hidden_weight: float = 1.0  # beta of the hidden (aligner MSE) loss
    align: str | None = None  # "block:stage,..."; None: a middle MHCA block with the equal-size teacher stage
    distillation: str = "hard"  # "hard": CE on the teacher's argmax (DeiT); "soft": KL at distill_tau
    distill_tau: float = 1.0  # temperature of soft distillation (DeiT's code: 1; its paper's soft runs: 3)
    soft_labels: str = "online"  # "online": the teacher labels each batch; "stored": dfgen's stored top-k logits
    stored_views: bool = True  # with "stored": replay the crops dfgen labelled (--soft-views), where stored
    # optimization (DeiT)
    batch_size: int = 256  # global: split over the DDP ranks
    lr: float = 5e-4  # at a batch of lr_base_size; None there: used as is
    lr_base_size: int | None = 512
    min_lr: float = 1e-5
    warmup_lr: float = 1e-6
    warmup_epochs: int = 5
    weight_decay: float = 0.05
    opt: str = "adamw"
    opt_eps: float = 1e-8
    clip_grad: float | None = None
    ema: bool = False
    ema_decay: float = 0.99996
    # decay min(ema_decay, 1 - (1 + step)^-2/3) (timm's EMA warm-up): a run of a few hundred steps otherwise ends
    # with an EMA still mostly its random initialisation (the small presets turn it on)
    ema_warmup: bool = False
    # augmentation (DeiT)
    aa: str | None = "rand-m9-mstd0.5-inc1"
    aa_fill: int | None = None  # pixel value RandAugment fills with; None: timm's (the normalization mean)
    reprob: float = 0.25
    remode: str = "pixel"
    recount: int = 1
    mixup: float = 0.8
    cutmix: float = 1.0
    mixup_prob: float = 1.0
    mixup_switch_prob: float = 0.5
    smoothing: float = 0.1
    scale: tuple[float, float] = (0.08, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    hflip: float = 0.5
    color_jitter: float = 0.3
    train_interpolation: str = "bicubic"
    repeats: int = 1  # repeated augmentation: each drawn image used this many times, steps unchanged (DeiT: 3)
    seed: int = 0
    shuffle_buffer: int = 8192  # samples per loader worker (timm's WebDataset reader: 8192); holds encoded bytes
    shard_interleave: int = 4  # shards read at once per loader worker (one dfgen shard holds few batches' classes)
    attn_images: int = 64  # images of the fixed probe batch for the attention distance (0: not logged)
    # how it runs (not content)
    out: str = "runs/distill"
    device: str = "auto"
    precision: str = "auto"
    workers: int | None = None  # None: 0 on CPU, min(8, cores per rank) on CUDA
    eval_batch_size: int | None = None  # None: the per-rank training batch
    eval_every: int = 1  # epochs between validations (and attention probes, curve plots); the last one always
    max_bad_shards: int = 3  # corrupt shards skipped with a warning before the run stops
    max_bad_images: int = 10  # unreadable images (ImageFolder, validation) skipped with a warning before it stops
    resume: bool = False
    quiet: bool = False
    stop_after: int | None = None  # leave after this many epochs of this invocation (time-sliced jobs)
    # the student's starting weights (local files; distill.student_weights)
    pretrained: str | None = None  # weights adapted to the student (classifier, channels, position embedding)
    initial_checkpoint: str | None = None  # a checkpoint of this very student, loaded as is

    RUN_FIELDS = ("out", "device", "precision", "workers", "eval_batch_size", "eval_every", "max_bad_shards",
                  "max_bad_images", "resume", "quiet", "stop_after")

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):  # numbers written as text ("5e-4" in YAML) become numbers; types checked
            if f.type.split("|")[0].strip() in ("int", "float", "bool", "str"):
                setattr(self, f.name, coerce(f.name, f.type, getattr(self, f.name)))
        if isinstance(self.shards, (str, Path)):
            self.shards = [str(self.shards)]
        if not isinstance(self.shards, (list, tuple)):
            raise DistillError(f"shards must be a list of sources (paths or shard patterns), got {self.shards!r:.80}")
        self.shards = [str(s) for s in self.shards]
        self.mix = _floats(self.mix, "--mix")
        self.fraction = _floats(self.fraction, "--fraction")
        for name, values in (("--mix", self.mix), ("--fraction", self.fraction)):
            if values is not None and len(values) != len(self.shards) and self.shards:
                raise DistillError(f"{name} gives {len(values)} value(s) for {len(self.shards)} --shards source(s)")
        if self.mix is not None and (min(self.mix) < 0 or sum(self.mix) <= 0):
            raise DistillError(f"--mix weights must be >= 0 and not all 0, got {self.mix}")
        if self.fraction is not None and not all(0 < f <= 1 for f in self.fraction):
            raise DistillError(f"--fraction values must be in (0, 1], got {self.fraction}")
        if not isinstance(self.model_kwargs, dict):
            raise DistillError(f"model_kwargs must be a mapping of argument: value, got {self.model_kwargs!r:.80}")
        check_json_tree("model_kwargs", self.model_kwargs)
        if self.distillation not in _DISTILLATIONS:
            raise DistillError(f"--distillation must be one of {', '.join(_DISTILLATIONS)}, got {self.distillation!r}")
        if not self.distill_tau > 0:
            raise DistillError(f"--distill-tau must be positive, got {self.distill_tau}")
        if self.soft_labels not in _SOFT_LABELS:
            raise DistillError(f"--soft-labels must be one of {', '.join(_SOFT_LABELS)}, got {self.soft_labels!r}")
        for name in ("repeats", "shuffle_buffer", "shard_interleave"):
            if getattr(self, name) < 1:
                raise DistillError(f"{name} must be >= 1, got {getattr(self, name)}")
        self.scale = _pair(self.scale, "scale")
        self.ratio = _pair(self.ratio, "ratio")
        if self.epochs < 1:
            raise DistillError(f"--epochs must be >= 1, got {self.epochs}")
        if not 0 <= self.stage1_epochs <= self.epochs:
            raise DistillError(
                f"--stage1-epochs ({self.stage1_epochs}) must be between 0 and --epochs ({self.epochs}): stage 1 is "
                "the first part of the run"
            )
        if self.batch_size < 1:
            raise DistillError(f"--batch-size must be >= 1, got {self.batch_size}")
        if not self.lr > 0:
            raise DistillError(f"--lr must be positive, got {self.lr}")
        if self.hidden_weight < 0:
            raise DistillError(f"--hidden-weight must be >= 0, got {self.hidden_weight}")
        if self.device not in _DEVICES:
            raise DistillError(f"--device must be one of {', '.join(_DEVICES)}, got {self.device!r}")
        if self.precision not in _PRECISIONS:
            raise DistillError(f"--precision must be one of {', '.join(_PRECISIONS)}, got {self.precision!r}")
        if self.eval_every < 1:
            raise DistillError(f"--eval-every must be >= 1, got {self.eval_every}")
        if self.max_bad_shards < 0 or self.max_bad_images < 0:
            raise DistillError(f"max_bad_shards and max_bad_images must be >= 0, got {self.max_bad_shards} and "
                               f"{self.max_bad_images}")
        if self.align:
            from distill.teacher_features import parse_align

            parse_align(self.align)  # a malformed --align fails now, not after the data and teacher are loaded
        if self.stop_after is not None and self.stop_after < 1:
            raise DistillError(f"--stop-after must be >= 1, got {self.stop_after}")
        self._check_ranges()

    def _check_ranges(self) -> None:
        """What the optimizer, the schedule and the augmentations accept (each would fail late, or learn nothing)."""
        for name in ("min_lr", "warmup_lr", "warmup_epochs", "weight_decay", "mixup", "cutmix", "color_jitter",
                     "drop_path", "seed", "attn_images", "recount"):
            check_range(name, getattr(self, name), low=0)
        for name in ("mixup_prob", "mixup_switch_prob", "reprob", "hflip"):
            check_range(name, getattr(self, name), 0, 1)
        check_range("smoothing", self.smoothing, 0, 1, high_open=True)
        check_range("drop_path", self.drop_path, 0, 1, high_open=True)
        check_range("ema_decay", self.ema_decay, 0, 1, high_open=True)
        check_range("opt_eps", self.opt_eps, 0, low_open=True)
        check_range("clip_grad", self.clip_grad, 0, low_open=True)
        check_range("aa_fill", self.aa_fill, 0, 255)
        for name in ("num_classes", "in_chans", "img_size", "lr_base_size", "eval_batch_size"):
            check_range(name, getattr(self, name), 1)
        check_range("workers", self.workers, 0)
        check_choice("remode", self.remode, _REMODES)
        check_choice("train_interpolation", self.train_interpolation, _INTERPOLATIONS)
        from timm.optim import list_optimizers

        if self.opt.lower().split("_")[-1] not in list_optimizers():  # timm's names, e.g. lookahead_adamw
            raise DistillError(f"opt must be one of timm's optimizers (adamw, sgd, lamb, ...: "
                               f"timm.optim.list_optimizers()), got {self.opt!r}")
        for name, (low, high) in (("scale", self.scale), ("ratio", self.ratio)):
            if not 0 < low <= high:
                raise DistillError(f"{name} must be [low, high] with 0 < low <= high, got [{low:g}, {high:g}]")

    @property
    def mixing(self) -> bool:
        return self.mixup > 0 or self.cutmix > 0

    def content(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        for name in self.RUN_FIELDS:
            data.pop(name)
        return json.loads(json.dumps(data))  # tuples -> lists, as they come back from a checkpoint

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> TrainConfig:
        data = json.loads(text)
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


def with_absolute_paths(cfg: TrainConfig) -> TrainConfig:
    """Local paths made absolute, so the configuration compared on --resume does not depend on the cwd (shard
    patterns and `a::b` lists part by part, without touching the braces)."""
    def local(path: str | None) -> str | None:
        if path is None:
            return None
        if "{" in path or "::" in path:
            return "::".join(os.path.abspath(part) for part in path.split("::"))
        return str(Path(path).resolve())

    return dataclasses.replace(cfg, shards=[local(s) for s in cfg.shards], val=local(cfg.val),
                               val_labels=local(cfg.val_labels), teacher_weights=local(cfg.teacher_weights))


def _floats(value: Any, name: str) -> list[float] | None:
    """A list of numbers from a list or a comma-separated string ("0.5,0.5"); None stays None."""
    if value is None:
        return None
    parts = value.split(",") if isinstance(value, str) else value
    try:
        numbers = [float(v) for v in parts]
    except (TypeError, ValueError):
        raise DistillError(f"{name} must be numbers separated by commas, got {value!r}") from None
    if not all(math.isfinite(v) for v in numbers):
        raise DistillError(f"{name} must be finite numbers, got {value!r}")
    return numbers


def _pair(value: Any, name: str) -> tuple[float, float]:
    try:
        low, high = (float(v) for v in value)
    except (TypeError, ValueError):
        raise DistillError(f"{name} must be two numbers [low, high], got {value!r}") from None
    if not (math.isfinite(low) and math.isfinite(high)):
        raise DistillError(f"{name} must be two finite numbers [low, high], got {value!r}")
    return low, high


def load_yaml_config(path: str | Path) -> dict[str, Any]:
    """The options of a YAML preset or of a run's config.json (dfgen.config_file: the reader both tools share)."""
    data = read_config_file(path, DistillError)
    refuse_unknown(data, [f.name for f in dataclasses.fields(TrainConfig)], f"config file {path}", DistillError)
    return data


def build_config(yaml_path: str | Path | None = None, **overrides: Any) -> TrainConfig:
    """Defaults <- YAML preset <- explicit overrides (None or an empty list means 'not given'; `NULL`, from `none`
    on the command line, sets None)."""
    data: dict[str, Any] = load_yaml_config(yaml_path) if yaml_path else {}
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    for key, value in overrides.items():
        if key not in known:
            raise DistillError(f"unknown option {key!r}")
        if value is None or (isinstance(value, (list, tuple)) and not value):
            continue
        data[key] = None if value is NULL else value
    fit_stage1_to_epochs(data)
    try:
        return TrainConfig(**data)
    except TypeError as exc:  # a YAML value of the wrong kind (e.g. a list where a number goes)
        raise DistillError(f"bad configuration: {exc}") from None


STAGE1_SHARE = 250 / 300  # DearKD's schedule: 250 of 300 epochs with the teacher


def fit_stage1_to_epochs(data: dict[str, Any]) -> None:
    """A run shorter than the default stage 1 (`--epochs 10` with no `--stage1-epochs`) keeps DearKD's share of
    epochs with the teacher instead of being refused; a stage 1 that was given is left to the checks."""
    default = TrainConfig.__dataclass_fields__["stage1_epochs"].default
    epochs = data.get("epochs")
    if "stage1_epochs" in data or not isinstance(epochs, int) or isinstance(epochs, bool) or not 1 <= epochs < default:
        return
    data["stage1_epochs"] = max(1, round(epochs * STAGE1_SHARE))
    print(f"note: --epochs {epochs} is shorter than the default stage 1 ({default}); --stage1-epochs "
          f"{data['stage1_epochs']} (DearKD's 250 of 300)", file=sys.stderr)
