"""Which students `distill run` trains: any registered timm model, built at the input size the data asks for.

A DearKD student (`distill.models.DearKD`, registered with timm by `distill.models.dearkd`) gets the full DearKD
recipe (two heads, hidden loss through aligners, attention distances). Any other timm model is trained with a plain
KD recipe (`distill.losses.kd_loss`); a timm model with a distillation head (DeiT's `*_distilled_*`) uses it as DeiT
does. The model's attached `pretrained_cfg` is made to describe the model as built (input size, per-channel
mean/std), so `timm.data.resolve_data_config({}, model=model)` gives its transforms everywhere (training, `distill
eval`).
"""

from __future__ import annotations

import difflib
import sys
from typing import Any

import timm
from torch import nn

from distill.errors import DistillError
from distill.models import DearKD

# the timm registry's module names of the DearKD students (timm.list_models(module=...))
STUDENT_MODULES = ("dearkd",)

Size = tuple[int, int]


def create_student(name: str, num_classes: int, in_chans: int, img_size: int | Size | None, drop_path: float,
                   model_kwargs: dict[str, Any] | None = None) -> nn.Module:
    """A registered timm model with random weights; `img_size` (None: the model's default) goes to models that take
    it (vision transformers) and is recorded in the data config of the others (CNNs take any size); `model_kwargs`
    go to its constructor (e.g. prefix_logit, depth)."""
    if not timm.is_model(name):
        close = difflib.get_close_matches(name, timm.list_models(), n=4, cutoff=0.5)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise DistillError(f"unknown student model {name!r}{hint} (a timm model name: {', '.join(student_names())}, "
                           "resnet18, deit_tiny_patch16_224, ...)")
    size = _pair(img_size)
    kwargs: dict[str, Any] = {**(model_kwargs or {}), "num_classes": num_classes, "in_chans": in_chans,
                              "drop_path_rate": drop_path}
    if size is not None:
        kwargs["img_size"] = size
    model = _build(name, kwargs, model_kwargs or {})
    grid = getattr(getattr(model, "patch_embed", None), "grid_size", None)
    if grid is not None and min(grid) < 1:
        patch = tuple(model.patch_embed.patch_size)
        raise DistillError(f"{name} at {size[0]}x{size[1]} px has no patch ({patch[0]}x{patch[1]} px patches); give "
                           f"--img-size {max(patch)} or more")
    fit_data_config(model, in_chans, size)
    if size is not None and size != default_size(name):
        # built for a size other than its registered one (e.g. the data's 32 px): evaluation takes the whole image
        # at that size, without the registered centre crop's zoom
        model.pretrained_cfg["crop_pct"] = 1.0
    return model


def _build(name: str, kwargs: dict[str, Any], model_kwargs: dict[str, Any]) -> nn.Module:
    """timm.create_model, leaving out `img_size` for models that take none (CNNs) and `drop_path_rate` for models
    without stochastic depth (with a warning when one was asked for)."""
    while True:
        try:
            return timm.create_model(name, pretrained=False, **kwargs)
        except TypeError as exc:  # an argument the model's constructor does not take
            text = str(exc)
            dropped = next((k for k in ("img_size", "drop_path_rate") if k in kwargs and f"'{k}'" in text
                            and k not in model_kwargs), None)
            if dropped is None:
                first = text.splitlines()[0][:160] if text else type(exc).__name__
                raise DistillError(f"model_kwargs {model_kwargs}: {name} does not take them ({first})") from None
            if dropped == "drop_path_rate" and kwargs[dropped]:
                print(f"note: {name} has no stochastic depth: drop_path {kwargs[dropped]:g} is not used",
                      file=sys.stderr, flush=True)
            kwargs = {k: v for k, v in kwargs.items() if k != dropped}
        except (ValueError, AssertionError, RuntimeError) as exc:  # e.g. a size the model's windows do not divide
            first = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else type(exc).__name__
            size = kwargs.get("img_size")
            raise DistillError(f"{name} cannot be built" + (f" at {size[0]}x{size[1]} px" if size else "")
                               + f" ({first}); choose another --img-size or model") from None


def fit_data_config(model: nn.Module, in_chans: int, size: Size | None) -> None:
    """Make the model's `pretrained_cfg` describe it as built: input size (C, H, W) and mean/std per channel (a
    greyscale student gets the mean of the RGB values), so timm's data config matches the model."""
    cfg = dict(getattr(model, "pretrained_cfg", None) or {})
    default = tuple(cfg.get("input_size") or (3, 224, 224))
    height, width = size if size is not None else _model_size(model) or default[1:]
    cfg["input_size"] = (in_chans, int(height), int(width))
    cfg["num_classes"] = getattr(model, "num_classes", cfg.get("num_classes"))
    for key, fallback in (("mean", (0.485, 0.456, 0.406)), ("std", (0.229, 0.224, 0.225))):
        values = tuple(cfg.get(key) or fallback)
        if len(values) != in_chans:
            cfg[key] = (sum(values) / len(values),) * in_chans
    model.pretrained_cfg = model.default_cfg = cfg


def _model_size(model: nn.Module) -> Size | None:
    """The input size a model with a patch embedding was built for (None: it takes any size)."""
    embed = getattr(model, "patch_embed", None)
    size = getattr(embed, "img_size", None)
    return (int(size[0]), int(size[1])) if size is not None else None


def default_size(name: str, model_kwargs: dict[str, Any] | None = None) -> Size:
    """The input size timm registers for a model (its pretrained configuration's, e.g. 224x224)."""
    if model_kwargs and model_kwargs.get("img_size"):
        return _pair(model_kwargs["img_size"])
    cfg = timm.models.get_pretrained_cfg(name) if timm.is_model(name) else None
    size = (cfg.input_size if cfg is not None else None) or (3, 224, 224)
    return int(size[1]), int(size[2])


def is_dearkd(model: nn.Module) -> bool:
    """Whether the student gets the DearKD recipe (hidden loss, attention distances)."""
    return isinstance(model, DearKD)


def has_distillation_head(model: nn.Module) -> bool:
    """A DeiT-style student with a distillation token and head (timm's distilled ViT, DearKD)."""
    return hasattr(model, "set_distilled_training") and hasattr(model, "head_dist")


def student_names() -> list[str]:
    """The registered DearKD student names, sorted."""
    return sorted({n for module in STUDENT_MODULES for n in timm.list_models(module=module)})


def _pair(size: Any) -> Size | None:
    if size is None:
        return None
    if isinstance(size, int):
        return size, size
    height, width = (int(v) for v in size)
    return height, width
