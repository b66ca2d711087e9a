"""Synthesis configuration: one dataclass, YAML presets, CLI overrides, and the parsers for counts
(`1.2M`) and schedules (`112:2000,224:2000`)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from dfgen.errors import DfgenError

_COUNT_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kKmM]?)\s*$")
_SUFFIX = {"": 1, "k": 1_000, "m": 1_000_000}


def parse_count(text: str | int) -> int:
    """`1.2M` -> 1200000, `50k` -> 50000, `1000` -> 1000; anything else (or <= 0) is an error."""
    if isinstance(text, int) and not isinstance(text, bool):
        value = text
    else:
        match = _COUNT_RE.match(str(text))
        if not match:
            raise DfgenError(f"--n must be a positive count such as 1000, 50k or 1.2M, got {text!r}")
        number, suffix = match.groups()
        scaled = float(number) * _SUFFIX[suffix.lower()]
        if scaled != int(scaled):
            raise DfgenError(f"--n must be a whole number of images, got {text!r}")
        value = int(scaled)
    if value <= 0:
        raise DfgenError(f"--n must be a positive count such as 1000, 50k or 1.2M, got {text!r}")
    return value


def parse_schedule(text: str | list) -> list[tuple[int, int]]:
    """`112:2000,224:2000` -> [(112, 2000), (224, 2000)]; resolutions and iterations positive."""
    if isinstance(text, list):
        stages = [tuple(int(v) for v in stage) for stage in text]
    else:
        stages = []
        for part in str(text).split(","):
            match = re.fullmatch(r"\s*(\d+)\s*:\s*(\d+)\s*", part)
            if not match:
                raise DfgenError(
                    f"--schedule must look like 112:2000,224:2000 (resolution:iterations,...), got {text!r}"
                )
            stages.append((int(match.group(1)), int(match.group(2))))
    if not stages or any(len(s) != 2 or s[0] <= 0 or s[1] <= 0 for s in stages):
        raise DfgenError(f"--schedule needs positive resolution:iterations pairs, got {text!r}")
    return [(int(r), int(i)) for r, i in stages]


def format_schedule(stages: list[tuple[int, int]]) -> str:
    return ",".join(f"{r}:{i}" for r, i in stages)


@dataclass
class LossWeights:
    """DF-DearKD objective weights (SPEC section 2; paper values as defaults)."""

    tv_l2: float = 1e-4
    tv_l1: float = 0.0
    l2: float = 1e-5
    bn: float = 5e-2
    first_bn_multiplier: float = 10.0
    ep: float = 50.0
    triplet: float = 0.5
    margin: float = 0.5
    ep_reach: float | None = 0.3  # None: the unbounded -d(a, ep) form (docs/design.md)


@dataclass
class SynthesisConfig:
    """Everything that decides what `dfgen synthesize` makes, plus how it runs (device, logging).

    `content_fields()` is the part that decides the images; an existing output directory made with
    different content fields is refused unless `overwrite`.
    """

    teacher: str = "digits"
    teacher_weights: str | None = None
    n: int = 1000
    out: str = "out"
    schedule: list[tuple[int, int]] | None = None  # None: (res/2, 2000), (res, 2000) from the teacher
    classes_per_batch: int | None = None  # None: min(num_classes, 32)
    images_per_class: int = 4
    seed: int = 0
    shard_size: int | None = None  # images per shard; None: the multiple of the batch nearest 1024
    format: str = "png"
    quality: int = 95
    lr: float = 0.25
    warmup: int = 100
    upsample: str = "bilinear"
    jitter_fraction: float = 0.125
    flip: bool = True
    losses: LossWeights = field(default_factory=LossWeights)
    no_diversity: bool = False
    precision: str = "auto"
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
        if isinstance(self.losses, dict):
            self.losses = LossWeights(**self.losses)
        self.n = parse_count(self.n)
        if self.schedule is not None:
            self.schedule = parse_schedule(self.schedule)
        if self.format not in ("png", "jpg", "webp"):
            raise DfgenError(f"--format must be png, jpg or webp, got {self.format!r}")
        if self.precision not in ("auto", "fp32", "bf16", "fp16"):
            raise DfgenError(f"--precision must be auto, fp32, bf16 or fp16, got {self.precision!r}")
        if self.upsample not in ("bilinear", "nearest"):
            raise DfgenError(f"upsample must be bilinear or nearest, got {self.upsample!r}")
        if self.images_per_class < 1:
            raise DfgenError("--images-per-class must be >= 1 (>= 2 for the diversity losses)")
        if self.classes_per_batch is not None and self.classes_per_batch < 1:
            raise DfgenError("--classes-per-batch must be >= 1")
        if not 1 <= int(self.quality) <= 100:
            raise DfgenError(f"--quality must be in 1..100, got {self.quality}")

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
        data["losses"] = dataclasses.asdict(self.effective_losses)
        data.pop("no_diversity")
        if data["schedule"] is not None:
            data["schedule"] = format_schedule(data["schedule"])
        if self.format == "png":
            data.pop("quality")  # lossless: quality has no effect
        return data


def config_fingerprint(content: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()[:16]


def load_yaml_config(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise DfgenError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise DfgenError(f"config file {path} is not valid YAML: {exc}".splitlines()[0]) from exc
    if not isinstance(data, dict):
        raise DfgenError(f"config file {path} must hold a mapping of option: value")
    data = {key.replace("-", "_"): value for key, value in data.items()}
    known = {f.name for f in dataclasses.fields(SynthesisConfig)}
    loss_names = {f.name for f in dataclasses.fields(LossWeights)}
    losses = dict(data.pop("losses", None) or {})
    for key in list(data):
        if key in loss_names:  # flat loss keys are accepted too, like the CLI flags
            losses[key] = data.pop(key)
    unknown = sorted(set(data) - known)
    if unknown:
        raise DfgenError(f"config file {path}: unknown option(s) {', '.join(unknown)}")
    bad_losses = sorted(set(losses) - loss_names)
    if bad_losses:
        raise DfgenError(f"config file {path}: unknown loss weight(s) {', '.join(bad_losses)}")
    if losses:
        data["losses"] = losses
    return data


def build_config(yaml_path: str | Path | None = None, **overrides: Any) -> SynthesisConfig:
    """Defaults <- YAML file <- explicit overrides (None means 'not given')."""
    data: dict[str, Any] = load_yaml_config(yaml_path) if yaml_path else {}
    losses = dict(data.pop("losses", {}) or {})
    loss_names = {f.name for f in dataclasses.fields(LossWeights)}
    for key, value in overrides.items():
        if value is None:
            continue
        if key in loss_names:
            losses[key] = value
        else:
            data[key] = value
    return SynthesisConfig(**data, losses=LossWeights(**losses))
