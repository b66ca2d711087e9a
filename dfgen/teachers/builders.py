"""Build the model a resolved name stands for: the bundled digits CNN, a timm or torchvision model (pretrained,
random, or with the user's weights, class and channel counts inferred from the file), or the user's factory."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from dfgen.errors import DfgenError
from dfgen.teachers.data_config import IMAGENET_MEAN, IMAGENET_STD
from dfgen.teachers.messages import _first_keys, _first_line, _shape
from dfgen.teachers.resolve import _is_timm, _is_torchvision, _resolved_factory, import_factory, suggest
from dfgen.teachers.weights import (
    _checkpoint_classifier,
    _checkpoint_in_chans,
    load_state_into,
    strip_wrapper_prefixes,
)


def build_model(name: str, library: str, model_name: str, state: dict[str, torch.Tensor] | None,
                weights_path: Path | None, pretrained: bool, num_classes: int | None, in_chans: int | None,
                options: dict[str, Any]) -> tuple[nn.Module, str, str, dict[str, Any] | None]:
    """(model, library, model name, data config): the library and model name as resolved (an unprefixed name
    becomes timm or torchvision, a file factory's path absolute); the data config is what the library says, None
    where the model's own pretrained_cfg holds it."""
    data_config: dict[str, Any] | None = None  # what the library says (None: the model's own pretrained_cfg)
    if library == "dfgen":
        if model_name != "digits":
            raise DfgenError(f"unknown dfgen teacher {model_name!r}; the bundled one is digits")
        from dfgen.zoo.digits import DigitsNet, load_digits_teacher

        if options:
            raise DfgenError("the digits teacher takes no --teacher-kwargs")
        if state is not None:
            model = DigitsNet()
            load_state_into(model, state, "the digits teacher (DigitsNet)", weights_path)
        else:
            model = load_digits_teacher() if pretrained else DigitsNet()
    elif library == "factory":
        model_name = _resolved_factory(model_name)
        model = _load_factory(model_name, state, weights_path, options)
    elif library in ("", "timm") and _is_timm(model_name):
        library = "timm"
        model = _load_timm(model_name, state, weights_path, pretrained, num_classes, in_chans, options)
    elif library in ("", "torchvision") and _is_torchvision(model_name):
        library = "torchvision"
        model, crop = _load_torchvision(model_name, state, weights_path, pretrained, num_classes, in_chans, options)
        data_config = {"input_size": (3, crop, crop), "mean": IMAGENET_MEAN, "std": IMAGENET_STD,
                       "interpolation": "bilinear"}
    elif name.endswith(".py"):
        raise DfgenError(f"--teacher {name} names a file: add the function or class that builds the model, "
                         f"{name}:FACTORY")
    else:
        close = suggest(name)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise DfgenError(f"unknown teacher {name!r}{hint} (timm or torchvision model names, digits, regnety_16gf, "
                         "or your own model as path/to/models.py:factory or package.module:factory)")
    return model, library, model_name, data_config


def _download_error(name: str, exc: BaseException) -> DfgenError:
    return DfgenError(
        f"could not get pretrained weights for {name} ({_first_line(exc)}); without network, download them on a "
        "connected machine and pass --teacher-weights FILE"
    )


def _classes_from_checkpoint(state: dict[str, torch.Tensor], names: Sequence[str], num_classes: int | None,
                             path: Path) -> int | None:
    """--num-classes, or the checkpoint's classifier size; a disagreement names both."""
    found = _checkpoint_classifier(state, names)
    if found is None:
        return num_classes
    key, weight = found
    if num_classes is not None and num_classes != weight.shape[0]:
        raise DfgenError(f"checkpoint classifier has {weight.shape[0]} classes ({key} {_shape(weight)}) but "
                         f"--num-classes {num_classes} (weights {path})")
    return int(weight.shape[0])


def _load_timm(name: str, state: dict | None, weights: Path | None, pretrained: bool, num_classes: int | None,
               in_chans: int | None, kwargs: dict[str, Any]) -> nn.Module:
    import timm
    from timm.models import get_pretrained_cfg

    try:
        cfg = get_pretrained_cfg(name)
    except RuntimeError as exc:
        raise DfgenError(f"timm model {name}: {_first_line(exc)}") from exc
    cfg_classes = cfg.num_classes if cfg is not None else None
    options = dict(kwargs)
    if state is not None:
        state = dict(strip_wrapper_prefixes(state))  # a copy: timm's loader may change it
    try:
        if state is not None:
            heads = [cfg.classifier] if cfg is not None and isinstance(cfg.classifier, str) else \
                list(cfg.classifier) if cfg is not None and cfg.classifier else []
            num_classes = _classes_from_checkpoint(state, heads, num_classes, weights)
            convs = [cfg.first_conv] if cfg is not None and isinstance(cfg.first_conv, str) else \
                list(cfg.first_conv) if cfg is not None and cfg.first_conv else []
            found = _checkpoint_in_chans(state, convs)
            if found is not None and in_chans is not None and found[1] != in_chans:
                raise DfgenError(f"checkpoint's first convolution takes {found[1]} channels ({found[0]} "
                                 f"{_shape(state[found[0]])}) but --in-chans {in_chans} (weights {weights})")
            in_chans = in_chans or (found[1] if found else None)
            size = tuple(cfg.input_size[1:]) if cfg is not None and cfg.input_size else (224, 224)
            # timm's own loader applies the model's key filter (torchvision names -> timm names); telling it
            # the file's class and channel counts keeps it from dropping the classifier or adapting the stem.
            overlay = {"state_dict": state, "input_size": (in_chans or 3, *size)}
            if num_classes is not None:
                overlay["num_classes"] = options["num_classes"] = num_classes
            if in_chans is not None:
                options["in_chans"] = in_chans
            model = timm.create_model(name, pretrained=True, pretrained_cfg_overlay=overlay, **options)
            for attr in ("pretrained_cfg", "default_cfg"):  # do not keep a second copy of the weights
                cfg_dict = getattr(model, attr, None)
                if isinstance(cfg_dict, dict):
                    cfg_dict.pop("state_dict", None)
            return model
        if pretrained and num_classes is not None and cfg_classes and num_classes != cfg_classes:
            raise DfgenError(f"timm's pretrained {name} has {cfg_classes} classes, not --num-classes {num_classes}; "
                             "give the weights of your fine-tuned model with --teacher-weights FILE")
        if num_classes is not None:
            options["num_classes"] = num_classes
        if in_chans is not None:
            options["in_chans"] = in_chans
        return timm.create_model(name, pretrained=pretrained, **options)
    except DfgenError:
        raise
    except TypeError as exc:  # an argument the model does not take (from --teacher-kwargs)
        raise DfgenError(f"timm model {name} rejected its arguments {options}: {_first_line(exc)}") from exc
    except RuntimeError as exc:
        if weights is not None:
            raise DfgenError(f"weights in {weights} do not fit timm model {name} (a different architecture?): "
                             f"{_condense(exc)}") from exc
        raise _download_error(name, exc) from exc
    except Exception as exc:  # network and hub errors come in many types
        raise _download_error(name, exc) from exc


def _condense(exc: BaseException) -> str:
    """torch's load_state_dict message on one line, with the first few keys of each list."""
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    if len(lines) <= 1:
        return _first_line(exc)
    parts = []
    for line in lines[1:]:
        head, _, keys = line.partition(": ")
        names = [k.strip().strip('"') for k in keys.rstrip(". ").split(", ")] if "key" in head.lower() else []
        parts.append(f"{head.lower()} {_first_keys(names)}" if names else line)
    return "; ".join(parts)[:600]


def _load_torchvision(name: str, state: dict | None, weights: Path | None, pretrained: bool,
                      num_classes: int | None, in_chans: int | None, kwargs: dict[str, Any]) -> tuple[nn.Module, int]:
    import torchvision

    if in_chans not in (None, 3):
        raise DfgenError(f"torchvision models take 3-channel images; --in-chans {in_chans} needs a timm name "
                         "(timm:NAME) or your own factory")
    options = dict(kwargs)
    if state is not None:
        num_classes = _classes_from_checkpoint(strip_wrapper_prefixes(state), [], num_classes, weights)
    if num_classes is not None:
        options["num_classes"] = num_classes
    try:
        if state is not None or not pretrained:
            model = torchvision.models.get_model(name, weights=None, **options)
            if state is not None:
                load_state_into(model, state, f"torchvision model {name}", weights)
            return model, 224
        model_weights = torchvision.models.get_model_weights(name).DEFAULT
        categories = len(model_weights.meta.get("categories") or [])
        if num_classes is not None and categories and num_classes != categories:
            raise DfgenError(f"torchvision's pretrained {name} has {categories} classes, not --num-classes "
                             f"{num_classes}; give the weights of your fine-tuned model with --teacher-weights FILE")
        crop = int(model_weights.transforms().crop_size[0])
        return torchvision.models.get_model(name, weights=model_weights, **options), crop
    except DfgenError:
        raise
    except TypeError as exc:
        raise DfgenError(f"torchvision model {name} rejected its arguments {options}: {_first_line(exc)}") from exc
    except Exception as exc:
        raise _download_error(name, exc) from exc


def _load_factory(spec: str, state: dict | None, weights: Path | None, kwargs: dict[str, Any]) -> nn.Module:
    factory = import_factory(spec)
    try:
        model = factory(**kwargs)
    except Exception as exc:  # the user's code: any error, reported on one line
        args = ", ".join(f"{k}={v!r}" for k, v in kwargs.items())
        raise DfgenError(f"teacher factory {spec}({args}) raised {type(exc).__name__}: {_first_line(exc)}") from exc
    if not isinstance(model, nn.Module):
        raise DfgenError(f"teacher factory {spec} returned a {type(model).__name__}, not a torch.nn.Module")
    if state is not None:
        hint = " (pass the class count to your factory, e.g. --teacher-kwargs '{num_classes: N}')"
        load_state_into(model, state, f"the model from {spec}", weights, hint=hint)
    return model
