"""The teacher's data config: input size, per-channel mean and std, interpolation; from the library, the
model's own pretrained_cfg, or the user's --image-size / --mean / --std."""

from __future__ import annotations

from typing import Any

from torch import nn

from dfgen.errors import DfgenError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def check_overrides(std: list[float] | None, image_size: int | None) -> None:
    """Refuse non-positive --std values or --image-size before anything is built."""
    if std is not None and any(v <= 0 for v in std):
        raise DfgenError(f"--std values must be positive, got {std}")
    if image_size is not None and image_size < 1:
        raise DfgenError(f"--image-size must be positive, got {image_size}")


def model_data_config(model: nn.Module, name: str, library: str, channels: int,
                      image_size: int | None) -> dict[str, Any]:
    """The model's own data config (timm resolves its pretrained_cfg); the user's own model without one needs
    --image-size and gets ImageNet's mean and std."""
    if library == "factory" and not isinstance(getattr(model, "pretrained_cfg", None), dict) and \
            not isinstance(getattr(model, "default_cfg", None), dict):
        if image_size is None:
            raise DfgenError(f"teacher {name} is your own model and has no data config: pass --image-size "
                             "(and --mean/--std; ImageNet's are the default)")
        return {"input_size": (channels, image_size, image_size), "mean": IMAGENET_MEAN,
                "std": IMAGENET_STD, "interpolation": "bilinear"}
    from timm.data import resolve_model_data_config

    return resolve_model_data_config(model)


def _fit_channels(values: list[float] | tuple[float, ...], channels: int, what: str, given: bool) -> tuple:
    """Per-channel mean/std for `channels`: one value is repeated; a default 3-channel value is averaged
    for a one-channel model; anything else that does not fit is an error."""
    values = tuple(float(v) for v in values)
    if len(values) == channels:
        return values
    if len(values) == 1:
        return values * channels
    if not given and channels == 1:
        return (sum(values) / len(values),)
    source = f"--{what}" if given else f"the model's default {what}"
    raise DfgenError(f"{source} has {len(values)} values but the teacher takes {channels}-channel images; "
                     f"give {channels} (or one) with --{what}")
