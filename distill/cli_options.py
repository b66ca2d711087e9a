"""The options of `distill run`, made from TrainConfig's fields: one option per field (`--field-name`), its type from
the field's declaration, its default shown from the dataclass, plus timm's train.py names where timm calls the
setting otherwise (`--output`, `-b`, `-j`, `--model-ema`, `--aug-repeats`, ...). A field added to TrainConfig gets
its option here without further code; HELP says what it does.

Optional values take `none` (`--aa none`, `--clip-grad none`, `--stop-after none`) to set None over a preset's value.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import click

from distill.config import _DEVICES, _DISTILLATIONS, _INTERPOLATIONS, _PRECISIONS, _REMODES, _SOFT_LABELS, TrainConfig
from distill.values import NULL

# more names of a field's option: timm's train.py names where they differ from ours, and its short forms
ALIASES: dict[str, tuple[str, ...]] = {
    "batch_size": ("-b",),
    "workers": ("-j",),
    "out": ("--output",),
    "ema": ("--model-ema",),
    "ema_decay": ("--model-ema-decay",),
    "ema_warmup": ("--model-ema-warmup",),
    "repeats": ("--aug-repeats",),
    "eval_batch_size": ("-vb", "--validation-batch-size"),
}
CHOICES: dict[str, tuple[str, ...]] = {"device": _DEVICES, "precision": _PRECISIONS, "distillation": _DISTILLATIONS,
                                       "soft_labels": _SOFT_LABELS, "remode": _REMODES,
                                       "train_interpolation": _INTERPOLATIONS}
FLAGS_ONLY = ("resume", "quiet")  # switches turned on for one invocation: no --no-X form
METAVARS = {"mix": "W1,W2", "fraction": "F1,F2", "model_kwargs": "KEY=VALUE", "scale": "LOW HIGH",
            "ratio": "LOW HIGH", "align": "BLOCK:STAGE,..."}

HELP: dict[str, str] = {
    "shards": "Training source: a dfgen dataset, an ImageFolder, or .tar shards (brace pattern, a::b list, a directory "
              "of .tar); repeat to mix several.",
    "mix": "Share of each --shards source in the stream, e.g. 0.5,0.5 (real/synthetic mixing; not --mixup) [by size].",
    "fraction": "Share of each source's images used, e.g. 0.1,1 (fixed subset) [all].",
    "val": "Validation data: a source as --shards, or a flat image directory with --val-labels [none].",
    "val_labels": '"FILE LABEL" lines (or LOC_val_solution.csv) for a flat --val.',
    "image_key": "Plain WebDataset shards: the image's extension [png/jpg/jpeg/webp].",
    "label_key": "Plain WebDataset shards: the label's extension.",
    "model": "Student: a DearKD model (dearkd_tiny_patch16_224, ..., dearkd_micro_patch4_32) or any timm model "
             "(resnet18, deit_tiny_patch16_224, ...: plain KD).",
    "num_classes": "Classes [from dataset.json].",
    "in_chans": "Input channels [from dataset.json].",
    "img_size": "Student input size [the training data's].",
    "drop_path": "Stochastic depth rate.",
    "model_kwargs": "More student arguments, e.g. prefix_logit=false; repeat for several.",
    "teacher": "Teacher for stage 1: a name, or a dfgen dataset directory whose recorded teacher to use [the one "
               "named in the synthetic dataset.json].",
    "teacher_weights": "Local teacher weights file (state dict).",
    "epochs": "Total epochs.",
    "stage1_epochs": "Epochs with the teacher (stage 1).",
    "hidden_weight": "Weight beta of the hidden loss.",
    "align": 'Student block : teacher stage pairs, e.g. "4:s3" [a middle MHCA block : equal size].',
    "distillation": "Teacher's argmax (hard) or KL at --distill-tau (soft).",
    "distill_tau": "Soft distillation temperature.",
    "soft_labels": "Distillation target: the teacher on each batch, or the logits dfgen stored.",
    "stored_views": "With --soft-labels stored: train on the crops whose logits dfgen stored (dfgen synthesize "
                    "--soft-views), replayed exactly, instead of random crops labelled by the whole image's logits.",
    "batch_size": "Global batch, split over processes.",
    "lr": "Learning rate per --lr-base-size images (x batch / lr_base_size).",
    "lr_base_size": "Batch the --lr is given for; none: --lr used as is.",
    "min_lr": "Lowest learning rate of the cosine schedule.",
    "warmup_lr": "Learning rate at the start of the warmup.",
    "warmup_epochs": "Epochs of linear warmup.",
    "weight_decay": "Weight decay.",
    "opt": "Optimizer: a timm name (adamw, sgd, lamb, ...).",
    "opt_eps": "Optimizer epsilon.",
    "clip_grad": "Clip gradients to this norm (none: off).",
    "ema": "Keep an EMA of the weights.",
    "ema_decay": "EMA decay per step.",
    "ema_warmup": "Ramp the EMA decay up from 0 as 1-(1+step)^-2/3, capped at --ema-decay (short runs).",
    "aa": "RandAugment policy, timm's string (none: off).",
    "aa_fill": "Pixel value RandAugment fills with [timm's: the mean].",
    "reprob": "Random erasing probability.",
    "remode": "Random erasing mode.",
    "recount": "Random erasing count.",
    "mixup": "Mixup alpha (0: off).",
    "cutmix": "CutMix alpha (0: off).",
    "mixup_prob": "Probability of mixup or cutmix per batch.",
    "mixup_switch_prob": "Probability of cutmix instead of mixup when both are on.",
    "smoothing": "Label smoothing.",
    "scale": "Random-resized-crop area range.",
    "ratio": "Random-resized-crop aspect ratio range.",
    "hflip": "Horizontal flip probability.",
    "color_jitter": "Colour jitter strength.",
    "train_interpolation": "Training resize interpolation.",
    "repeats": "Repeated augmentation: uses of each image.",
    "seed": "Seed.",
    "shuffle_buffer": "Shuffle buffer per loader worker (samples).",
    "shard_interleave": "Shards read at once per loader worker.",
    "attn_images": "Images of the attention-distance probe (0: not logged).",
    "out": "Run directory (last.pt, best.pt, config.json, metrics.jsonl, summary.csv, curves.png).",
    "device": "Device.",
    "precision": "Precision [auto: bf16 on CUDA].",
    "workers": "Loader processes per rank [0 on CPU, <=8 on GPU].",
    "eval_batch_size": "Validation batch per rank [the training batch per rank].",
    "eval_every": "Epochs between validations; the last always.",
    "max_bad_shards": "Corrupt shards skipped with a warning before the run stops.",
    "max_bad_images": "Unreadable images skipped with a warning before the run stops.",
    "resume": "Continue the run in --out exactly where it stopped.",
    "quiet": "No progress bars; one line per epoch.",
    "stop_after": "Leave after N epochs of this invocation.",
    "pretrained": "Local weights file to fine-tune from, adapted to the student (classifier, channels, position "
                  "embedding) [random weights].",
    "initial_checkpoint": "Checkpoint of this very student to start from (EMA weights where it holds them).",
}


class _OrNone(click.ParamType):
    """A value of `base`, or `none` / `null` for None (NULL: set, unlike an option not given)."""

    def __init__(self, base: click.ParamType) -> None:
        self.base = base
        self.name = f"{base.name} or none"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if value is NULL or (isinstance(value, str) and value.strip().lower() in ("none", "null")):
            return NULL
        return self.base.convert(value, param, ctx)

    def get_metavar(self, param: click.Parameter, ctx: click.Context | None = None) -> str:
        return f"{self.base.name.upper()}|none"


def _key_values(ctx: click.Context, param: click.Parameter, pairs: tuple[str, ...]) -> dict[str, Any] | None:
    """("prefix_logit=false", "locality_strength=2") -> {"prefix_logit": False, "locality_strength": 2}."""
    from dfgen.errors import DfgenError
    from dfgen.parsing import safe_yaml

    result = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise click.BadParameter(f"expected KEY=VALUE, got {pair!r}")
        try:
            result[key.strip()] = safe_yaml(value, f"{pair!r:.80}") if value.strip() else None
        except DfgenError:
            raise click.BadParameter(f"{pair!r:.80}: the value is not a YAML value (a number, true/false, text, a "
                                     "list)") from None
    return result or None


def _yaml_value(ctx: click.Context, param: click.Parameter, value: str | None) -> Any:
    """A field of another kind: its value read as YAML (a list, a mapping, a number)."""
    from dfgen.errors import DfgenError
    from dfgen.parsing import safe_yaml

    if value is None:
        return None
    try:
        parsed = safe_yaml(value, f"--{param.name}")
    except DfgenError as exc:
        raise click.BadParameter(str(exc)) from None
    return NULL if parsed is None else parsed


def _default(field: dataclasses.Field) -> Any:
    if field.default is not dataclasses.MISSING:
        return field.default
    return field.default_factory() if field.default_factory is not dataclasses.MISSING else None


def _shown(value: Any) -> str:
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, (tuple, list, dict)):
        return " ".join(_shown(v) for v in value) if value and not isinstance(value, dict) else ""
    return f"{value:g}" if isinstance(value, float) else str(value)


def _help(field: dataclasses.Field) -> str:
    text = HELP.get(field.name, field.name.replace("_", " ").capitalize() + ".")
    default = _shown(_default(field))
    return text if "[" in text or not default or field.name in FLAGS_ONLY else f"{text} [{default}]"


def field_option(field: dataclasses.Field) -> Callable:
    """The click option of one TrainConfig field."""
    kind = str(field.type).replace(" ", "")
    optional = kind.endswith("|None")
    base = kind.removesuffix("|None")
    dashed = "--" + field.name.replace("_", "-")
    names = [dashed, *ALIASES.get(field.name, ())]
    settings: dict[str, Any] = {"help": _help(field), "metavar": METAVARS.get(field.name)}
    if base == "bool":
        if field.name in FLAGS_ONLY:
            return click.option(*names, field.name, is_flag=True, default=None, help=settings["help"])
        pairs = [f"{n}/--no-{n.removeprefix('--')}" for n in names if n.startswith("--")]
        return click.option(*pairs, field.name, default=None, help=settings["help"])
    if field.name in CHOICES:
        settings["type"] = click.Choice(CHOICES[field.name])
    elif base in ("int", "float", "str"):
        settings["type"] = {"int": click.INT, "float": click.FLOAT, "str": click.STRING}[base]
    elif base.startswith("list[str]"):
        settings["multiple"] = True
    elif base.startswith("dict["):
        settings.update(multiple=True, callback=_key_values)
    elif base == "tuple[float,float]":
        settings.update(nargs=2, type=click.FLOAT)
    elif base == "list[float]":
        settings["type"] = click.STRING  # "0.5,0.5", split by TrainConfig
    else:
        settings["callback"] = _yaml_value
    if optional and "type" in settings:
        settings["type"] = _OrNone(settings["type"])
    return click.option(*names, field.name, **settings)


def train_config_options(func: Callable) -> Callable:
    """Decorate a click command with one option per TrainConfig field, in the dataclass's order."""
    for field in reversed(dataclasses.fields(TrainConfig)):
        func = field_option(field)(func)
    return func


def given_options(options: dict[str, Any]) -> dict[str, Any]:
    """The options given on the command line (None and empty repeats are 'not given')."""
    return {k: v for k, v in options.items() if v is not None and v != ()}
