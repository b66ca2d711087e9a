"""Teachers: resolve a name (alias, timm, torchvision, the bundled digits CNN, or the user's own model factory)
to a frozen model with its data config, checking what inversion needs (BatchNorm layers, a linear classifier).

Names: `digits`, `regnety_16gf`, `timm:NAME`, `torchvision:NAME`, an unprefixed NAME (timm first, then
torchvision), or `package.module:factory` / `path/to/models.py:factory` for the user's own architecture. Weights
files are read with `torch.load(weights_only=True)` in every shape people save them (bare state dict, wrapped in
`state_dict` / `model` / EMA keys, Lightning's `model.` prefix, DataParallel's `module.` prefix).

Modules: `resolve` (names, aliases, the user's factory), `weights` (reading checkpoints, strict loads),
`builders` (the model a name stands for), `validate` (what inversion needs), `data_config` (size, mean, std),
`teacher` (the Teacher record), `load` (load_teacher, load_recorded_teacher), `describe` (`dfgen teachers
--check`)."""

from __future__ import annotations

from dfgen.teachers.data_config import IMAGENET_MEAN, IMAGENET_STD
from dfgen.teachers.describe import describe_resolutions, describe_teacher
from dfgen.teachers.load import load_recorded_teacher, load_teacher
from dfgen.teachers.resolve import (
    ALIAS_NOTES,
    ALIASES,
    LIBRARY_PREFIXES,
    import_factory,
    known_names,
    resolve_name,
    suggest,
)
from dfgen.teachers.teacher import Teacher, state_dict_sha256
from dfgen.teachers.validate import check_running_statistics, classifier_of, first_conv
from dfgen.teachers.weights import (
    EMA_KEYS,
    STATE_KEYS,
    WRAPPER_PREFIXES,
    load_state_into,
    read_checkpoint,
    strip_wrapper_prefixes,
)

__all__ = [
    "ALIASES",
    "ALIAS_NOTES",
    "EMA_KEYS",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "LIBRARY_PREFIXES",
    "STATE_KEYS",
    "WRAPPER_PREFIXES",
    "Teacher",
    "check_running_statistics",
    "classifier_of",
    "describe_resolutions",
    "describe_teacher",
    "first_conv",
    "import_factory",
    "known_names",
    "load_recorded_teacher",
    "load_state_into",
    "load_teacher",
    "read_checkpoint",
    "resolve_name",
    "state_dict_sha256",
    "strip_wrapper_prefixes",
    "suggest",
]
