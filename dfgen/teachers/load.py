"""load_teacher: resolve a name, read the weights, build the model, check it, settle its data config; and
load_recorded_teacher, which rebuilds the teacher a dataset.json describes."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from dfgen.errors import DfgenError
from dfgen.parsing import parse_floats, parse_kwargs
from dfgen.teachers.builders import build_model
from dfgen.teachers.data_config import _fit_channels, check_overrides, model_data_config
from dfgen.teachers.resolve import is_file_target, resolve_name
from dfgen.teachers.teacher import Teacher, state_dict_sha256
from dfgen.teachers.validate import check_teacher
from dfgen.teachers.weights import read_checkpoint


def load_teacher(
    name: str,
    weights: str | Path | None = None,
    device: str | torch.device = "cpu",
    pretrained: bool = True,
    *,
    kwargs: str | Mapping[str, Any] | None = None,
    num_classes: int | None = None,
    in_chans: int | None = None,
    image_size: int | None = None,
    mean: str | list[float] | tuple[float, ...] | None = None,
    std: str | list[float] | tuple[float, ...] | None = None,
    use_ema: bool = False,
    require_batchnorm: bool = True,
) -> Teacher:
    """Resolve `name` and return the frozen teacher in eval mode on `device`.

    `pretrained=False` builds random weights (for speed benchmarks and tests only). `kwargs` go to the model
    factory (`timm.create_model`, torchvision's builder or the user's `module:factory`); `num_classes` and
    `in_chans` build timm/torchvision models of that shape (inferred from the weights file when not given);
    `image_size`, `mean` and `std` override the model's data config; `use_ema` takes the EMA weights of a
    training checkpoint."""
    weights_path = Path(weights) if weights is not None else None
    options = parse_kwargs(kwargs)
    mean_given, std_given = parse_floats(mean, "--mean"), parse_floats(std, "--std")
    check_overrides(std_given, image_size)
    library, model_name = resolve_name(name)
    state = read_checkpoint(weights_path, use_ema, strip=False) if weights_path is not None else None
    model, library, model_name, data_config = build_model(name, library, model_name, state, weights_path, pretrained,
                                                           num_classes, in_chans, options)
    model.eval().requires_grad_(False)
    model_classes, channels = check_teacher(model, name, library, num_classes, in_chans, require_batchnorm)
    if data_config is None:
        data_config = model_data_config(model, name, library, channels, image_size)
    size = image_size or int(data_config["input_size"][1])
    mean_values = _fit_channels(mean_given or data_config["mean"], channels, "mean", mean_given is not None)
    std_values = _fit_channels(std_given or data_config["std"], channels, "std", std_given is not None)
    source = f"{library}:{model_name}"
    spec = {
        "teacher": source,  # resolved: a file factory's path is absolute, so it rebuilds from any directory
        "weights": str(weights_path.resolve()) if weights_path is not None else None,
        "pretrained": bool(pretrained),
        "kwargs": options or None,
        "num_classes": num_classes,
        "in_chans": in_chans,
        "image_size": image_size,
        "mean": mean_given,
        "std": std_given,
        "use_ema": bool(use_ema),
    }
    return Teacher(
        model=model.to(device),
        name=name,
        source=source,
        input_size=(channels, size, size),
        mean=mean_values,
        std=std_values,
        num_classes=model_classes,
        weights_sha256=state_dict_sha256(model),
        interpolation=str(data_config.get("interpolation") or "bilinear"),
        spec=spec,
    )

def load_recorded_teacher(entry: Mapping[str, Any], weights: str | Path | None = None,
                          device: str | torch.device = "cpu") -> Teacher:
    """Rebuild the teacher a dataset.json `teacher` entry describes (its spec: name, weights file, options),
    e.g. for `distill` and `dfgen report`. `weights` replaces the recorded weights file."""
    spec = entry.get("spec") if isinstance(entry.get("spec"), Mapping) else {}
    name = spec.get("teacher") or entry.get("source") or entry.get("name")
    if not name:
        raise DfgenError("dataset.json names no teacher; pass --teacher NAME")
    target, sep, factory = str(name).removeprefix("factory:").rpartition(":")
    if sep and is_file_target(target) and not Path(target).expanduser().is_file():
        recorded_weights = weights or spec.get("weights")
        with_weights = f" --teacher-weights {recorded_weights}" if recorded_weights else ""
        raise DfgenError(f"the teacher's model file recorded in dataset.json, {target}, is not there (moved or "
                         f"deleted); pass --teacher NEW/PATH/{Path(target).name}:{factory}{with_weights}")
    if weights is None and spec.get("weights"):
        weights = spec["weights"]
        if not Path(weights).is_file():
            raise DfgenError(f"the teacher's weights file recorded in dataset.json, {weights}, is not there; pass "
                             "--teacher-weights FILE")
    # "pretrained": False (random-init speed runs) is not replayed: random weights cannot be rebuilt anyway.
    return load_teacher(str(name), weights, device=device,
                        kwargs=spec.get("kwargs"), num_classes=spec.get("num_classes"),
                        in_chans=spec.get("in_chans"), image_size=spec.get("image_size"), mean=spec.get("mean"),
                        std=spec.get("std"), use_ema=bool(spec.get("use_ema", False)))
