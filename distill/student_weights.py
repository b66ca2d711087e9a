"""A student's starting weights from local files, as timm's train.py means its options:

- `--pretrained FILE`: weights to fine-tune from, adapted to the student as timm adapts its pretrained weights: the
  model's own checkpoint filter (e.g. a vision transformer's position embedding resampled to the new patch grid),
  the first convolution summed or repeated to the student's channel count, and a classifier of another class count
  left at its fresh initialisation. Everything else must fit.
- `--initial-checkpoint FILE`: a checkpoint of this very student (same architecture, classes and size), loaded as
  is.

Both read the file with `torch.load(weights_only=True)` as timm's `load_checkpoint` reads one: a plain state dict,
or the one under `state_dict_ema` / `model_ema` (preferred where present), `state_dict` or `model` (a distill
checkpoint), or a .safetensors file; the `module.` / `_orig_mod.` prefixes of DDP and torch.compile are dropped.
Nothing is downloaded.
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path
from typing import Any

import torch
from timm.models import adapt_input_conv
from torch import nn

from distill.checkpoint import load_weights
from distill.config import TrainConfig
from distill.errors import DistillError


def read_state_dict(path: str | Path, what: str) -> dict[str, Any]:
    """The weights a file holds (see the module's docstring), read with weights_only=True."""
    path = Path(path)
    if not path.is_file():
        raise DistillError(f"{what} file {path} not found")
    try:
        if path.suffix == ".safetensors":  # tensors only by design (timm installs safetensors)
            from safetensors.torch import load_file

            checkpoint = load_file(str(path), device="cpu")
        else:
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for files that are not (safe) checkpoints
        first = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else type(exc).__name__
        raise DistillError(f"{what} file {path} does not load with weights_only=True ({first}); give a state dict or "
                           "a checkpoint saved with torch.save") from None
    state = checkpoint
    if isinstance(checkpoint, dict):
        key = next((k for k in ("state_dict_ema", "model_ema", "state_dict", "model")
                    if isinstance(checkpoint.get(k), dict)), None)
        state = checkpoint[key] if key else checkpoint
    if isinstance(state, dict):
        state = {_unwrapped(k): v for k, v in state.items()}
    if not isinstance(state, dict) or not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise DistillError(f"{what} file {path} holds no mapping of parameter names to tensors")
    return state


def absolute_weight_paths(cfg: TrainConfig) -> TrainConfig:
    """--pretrained and --initial-checkpoint as absolute paths, so --resume compares them whatever the cwd."""
    paths = {k: str(Path(v).resolve()) for k in ("pretrained", "initial_checkpoint") if (v := getattr(cfg, k))}
    return dataclasses.replace(cfg, **paths)


def starting_weights(cfg: TrainConfig, model: nn.Module) -> list[str]:
    """--pretrained, then --initial-checkpoint (which wins where both are given, as in timm's train.py), into a
    fresh student; the lines that say so."""
    lines = []
    if cfg.pretrained:
        adapted = load_pretrained(model, cfg.pretrained)
        lines.append(f"student weights from --pretrained {cfg.pretrained}" + (f" ({', '.join(adapted)})"
                                                                              if adapted else ""))
    if cfg.initial_checkpoint:
        load_initial_checkpoint(model, cfg.initial_checkpoint)
        lines.append(f"student weights from --initial-checkpoint {cfg.initial_checkpoint}")
    return lines


def load_initial_checkpoint(model: nn.Module, path: str | Path) -> None:
    """Start from a checkpoint of the same student: every weight must fit."""
    load_weights(model, read_state_dict(path, "--initial-checkpoint"), f"the weights in {path}")


def load_pretrained(model: nn.Module, path: str | Path) -> list[str]:
    """Start from pretrained weights adapted to the student; returns what was adapted, one phrase each."""
    state = read_state_dict(path, "--pretrained")
    cfg = dict(getattr(model, "pretrained_cfg", None) or {})
    adapted = []
    filter_fn = getattr(sys.modules.get(type(model).__module__), "checkpoint_filter_fn", None)
    if callable(filter_fn):
        try:  # timm's filters turn other layouts of the model's weights into its own, and resample to its size
            state = filter_fn(state, model)
        except Exception as exc:
            first = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else type(exc).__name__
            raise DistillError(f"--pretrained {path}: the weights do not convert to {type(model).__name__} "
                               f"({first})") from None
    own = model.state_dict()
    for conv in _names(cfg.get("first_conv")):
        key = f"{conv}.weight"
        weight = state.get(key)
        if weight is not None and key in own and weight.ndim == 4 and weight.shape[1] != own[key].shape[1]:
            state[key] = adapt_input_conv(own[key].shape[1], weight, base_chans=weight.shape[1])
            adapted.append(f"{conv} from {weight.shape[1]} to {own[key].shape[1]} channels")
    for head in _names(cfg.get("classifier")):
        keys = [k for k in (f"{head}.weight", f"{head}.bias") if k in own]
        if any(k in state and state[k].shape != own[k].shape for k in keys):
            classes = state[keys[0]].shape[0] if keys[0] in state else "?"
            for key in keys:  # the fresh classifier of the student's classes
                state[key] = own[key]
            adapted.append(f"{head} newly initialised ({classes} -> {own[keys[0]].shape[0]} classes)")
    load_weights(model, state, f"the --pretrained weights in {path}")
    return adapted


def _unwrapped(key: Any) -> Any:
    """A parameter name without the prefixes DDP and torch.compile add."""
    while isinstance(key, str) and key.startswith(("module.", "_orig_mod.")):
        key = key.split(".", 1)[1]
    return key


def _names(value: Any) -> tuple[str, ...]:
    if not value:
        return ()
    return (value,) if isinstance(value, str) else tuple(value)
