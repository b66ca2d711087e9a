"""Teacher weights: a state dict read with torch.load(weights_only=True) from every checkpoint shape people save
(bare, wrapped in `state_dict` / `model` / EMA keys, with `module.` / `model.` / `_orig_mod.` prefixes), and a
strict load into a model that says what differs."""

from __future__ import annotations

import pickle
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from dfgen.errors import DfgenError
from dfgen.teachers.messages import _first_keys, _shape
from dfgen.teachers.validate import _module_name, classifier_of

# Containers training code wraps a state dict in, in the order they are tried.
STATE_KEYS = ("state_dict", "model")
EMA_KEYS = ("state_dict_ema", "model_ema")
# Prefixes wrappers add to every key: DataParallel/DDP and timm's EMA (`module.`), Lightning modules holding
# the network as `self.model` (`model.`), torch.compile (`_orig_mod.`).
WRAPPER_PREFIXES = ("module.", "model.", "_orig_mod.")


def _is_state_dict(obj: Any) -> bool:
    return isinstance(obj, dict) and bool(obj) and all(isinstance(v, torch.Tensor) for v in obj.values())


def _unwrap(obj: Any, path: Path, use_ema: bool) -> dict[str, torch.Tensor]:
    """The state dict inside a training checkpoint: EMA weights first when asked for, else the plain ones
    (EMA ones only when nothing else is there)."""
    if use_ema and _is_state_dict(obj):
        raise DfgenError(f"--use-ema: {path} is a bare state dict, it holds no EMA weights "
                         f"({' or '.join(EMA_KEYS)} entry)")
    for depth in range(3):  # e.g. {"model": {"state_dict": ...}}
        if _is_state_dict(obj) or not isinstance(obj, dict):
            break
        present = [k for k in (*EMA_KEYS, *STATE_KEYS) if isinstance(obj.get(k), dict) and obj.get(k)]
        ema = [k for k in present if k in EMA_KEYS]
        if use_ema and depth == 0 and not ema:
            raise DfgenError(f"--use-ema: {path} holds no EMA weights (no {' or '.join(EMA_KEYS)} entry; it has "
                             f"{', '.join(map(str, list(obj)[:8]))})")
        order = (ema if use_ema and depth == 0 else []) or [k for k in present if k in STATE_KEYS] or ema
        if not order:
            break
        obj = obj[order[0]]
    if not _is_state_dict(obj):
        what = f"a {type(obj).__name__}" if not isinstance(obj, dict) else f"a mapping of {', '.join(map(str, obj))}"
        raise DfgenError(f"{path} is a checkpoint but not a state dict of tensors ({what[:160]}); expected a state "
                         f"dict, or one under {', '.join(STATE_KEYS + EMA_KEYS)}")
    return obj


def strip_wrapper_prefixes(
    state: dict[str, torch.Tensor], model_keys: set[str] | None = None
) -> dict[str, torch.Tensor]:
    """Remove `module.` / `model.` / `_orig_mod.` from the keys. Without the model's keys only a prefix shared
    by every key is removed; with them also a prefix on a subset that covers the model (a Lightning module
    that holds other networks or a loss beside `self.model`), and never one the model's own names carry."""
    while True:
        for prefix in WRAPPER_PREFIXES:
            keyed = [k for k in state if k.startswith(prefix)]
            if not keyed or (model_keys and all(k.startswith(prefix) for k in model_keys)):
                continue
            inner = {k[len(prefix):] for k in keyed}
            if len(keyed) == len(state) or (model_keys and not _essential(model_keys) - inner):
                state = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
                break
        else:
            return state


def _essential(keys: set[str]) -> set[str]:
    # BatchNorm's step counter is not used in eval mode; older checkpoints lack it.
    return {k for k in keys if not k.endswith("num_batches_tracked")}


def read_checkpoint(path: str | Path, use_ema: bool = False, strip: bool = True) -> dict[str, torch.Tensor]:
    """Load a state dict with torch.load(weights_only=True) (a pickle with code in it is refused), unwrapped
    from the training checkpoint around it, with wrapper prefixes shared by every key removed unless `strip`
    is False (then `load_state_into` removes them knowing the model's own key names)."""
    path = Path(path)
    if not path.is_file():
        raise DfgenError(f"teacher weights file not found: {path}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise DfgenError(
            f"{path} holds pickled code or objects, not only tensors; refused (loaded with weights_only=True). "
            "Re-save it as a plain state dict: torch.save(model.state_dict(), FILE)"
        ) from exc
    except Exception as exc:  # torch raises many types for files that are not checkpoints
        raise DfgenError(f"{path} is not a PyTorch checkpoint ({str(exc).splitlines()[0][:120]})") from exc
    state = _unwrap(obj, path, use_ema)
    return strip_wrapper_prefixes(state) if strip else state

def _checkpoint_classifier(state: dict[str, torch.Tensor],
                           names: Sequence[str] = ()) -> tuple[str, torch.Tensor] | None:
    """The checkpoint's classifier weight: a known classifier name, else the last 2-D `.weight` (classifiers
    are registered last in the architectures people use)."""
    for name in names:
        weight = state.get(f"{name}.weight")
        if weight is not None and weight.dim() == 2:
            return f"{name}.weight", weight
    last = [(k, v) for k, v in state.items() if k.endswith(".weight") and v.dim() == 2 and v.is_floating_point()]
    return last[-1] if last else None


def _checkpoint_in_chans(state: dict[str, torch.Tensor], names: Sequence[str] = ()) -> tuple[str, int] | None:
    for name in names:
        weight = state.get(f"{name}.weight")
        if weight is not None and weight.dim() == 4:
            return f"{name}.weight", int(weight.shape[1])
    return None


def load_state_into(model: nn.Module, state: dict[str, torch.Tensor], what: str, path: Path | str,
                    hint: str = "") -> None:
    """Strict load that says what differs: the classifier's class count first (the usual mistake), then the
    first missing and unexpected keys and shape mismatches."""
    own = model.state_dict()
    state = strip_wrapper_prefixes(state, set(own))
    head_name = _module_name(model, classifier_of(model))
    head_key = f"{head_name}.weight"
    if head_key in state and head_key in own and state[head_key].shape[0] != own[head_key].shape[0]:
        theirs, ours = state[head_key], own[head_key]
        raise DfgenError(
            f"checkpoint classifier has {theirs.shape[0]} classes ({head_key} {_shape(theirs)}) but {what} has "
            f"{ours.shape[0]} ({head_key} {_shape(ours)}){hint}"
        )
    missing = [k for k in own if k not in state and k in _essential({k})]  # model order: the first says most
    unexpected = [k for k in state if k not in own]
    mismatched = [f"{k} {_shape(state[k])} in the file, {_shape(own[k])} in the model"
                  for k in own if k in state and state[k].shape != own[k].shape]
    if missing or unexpected or mismatched:
        parts = []
        if missing:
            parts.append(f"missing keys {_first_keys(missing)}")
        if unexpected:
            parts.append(f"unexpected keys {_first_keys(unexpected)}")
        if mismatched:
            parts.append(f"shape mismatch {_first_keys(mismatched)}")
        raise DfgenError(f"weights in {path} do not fit {what} (a different architecture?): {'; '.join(parts)}")
    model.load_state_dict(state, strict=False)  # strict on everything but num_batches_tracked, checked above
