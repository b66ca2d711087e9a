"""Teachers: resolve a name (alias, timm, torchvision, the bundled digits CNN, or the user's own model factory)
to a frozen model with its data config, checking what inversion needs (BatchNorm layers, a linear classifier).

Names: `digits`, `regnety_16gf`, `timm:NAME`, `torchvision:NAME`, an unprefixed NAME (timm first, then
torchvision), or `package.module:factory` / `path/to/models.py:factory` for the user's own architecture. Weights
files are read with `torch.load(weights_only=True)` in every shape people save them (bare state dict, wrapped in
`state_dict` / `model` / EMA keys, Lightning's `model.` prefix, DataParallel's `module.` prefix)."""

from __future__ import annotations

import difflib
import hashlib
import importlib
import importlib.util
import pickle
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from dfgen.config import parse_floats, parse_kwargs
from dfgen.errors import DfgenError

# Short names users type -> "library:model". regnety_16gf is the DeiT/DearKD teacher (83.0% top-1).
ALIASES = {
    "regnety_16gf": "timm:regnety_160.deit_in1k",
    "digits": "dfgen:digits",
}
ALIAS_NOTES = {
    "regnety_16gf": "the DeiT / DearKD ImageNet teacher (83.0% top-1)",
    "digits": "the bundled offline teacher: a BatchNorm CNN on scikit-learn's digits, 1x32x32, 10 classes",
}
LIBRARY_PREFIXES = {"timm": "timm", "torchvision": "torchvision", "tv": "torchvision", "dfgen": "dfgen"}

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# Containers training code wraps a state dict in, in the order they are tried.
STATE_KEYS = ("state_dict", "model")
EMA_KEYS = ("state_dict_ema", "model_ema")
# Prefixes wrappers add to every key: DataParallel/DDP and timm's EMA (`module.`), Lightning modules holding
# the network as `self.model` (`model.`), torch.compile (`_orig_mod.`).
WRAPPER_PREFIXES = ("module.", "model.", "_orig_mod.")
_SHOWN_KEYS = 4  # how many missing/unexpected keys an error names


@dataclass
class Teacher:
    """A frozen classifier plus what the rest of the pipeline needs to know about it."""

    model: nn.Module
    name: str  # as the user gave it
    source: str  # "timm:<name>", "torchvision:<name>", "dfgen:digits" or "factory:<module or file>:<callable>"
    input_size: tuple[int, int, int]  # (C, H, W)
    mean: tuple[float, ...]
    std: tuple[float, ...]
    num_classes: int
    weights_sha256: str
    interpolation: str = "bilinear"
    # What was asked for (name, weights file, options): enough for `load_recorded_teacher` to rebuild it.
    spec: dict[str, Any] = field(default_factory=dict)

    @property
    def in_chans(self) -> int:
        return self.input_size[0]

    @property
    def resolution(self) -> int:
        return self.input_size[1]

    def describe(self) -> dict[str, Any]:
        """The teacher's entry in dataset.json."""
        return {
            "name": self.name,
            "source": self.source,
            "weights_sha256": self.weights_sha256,
            "num_classes": self.num_classes,
            "data_config": {
                "input_size": list(self.input_size),
                "mean": list(self.mean),
                "std": list(self.std),
                "interpolation": self.interpolation,
            },
            "spec": self.spec,
        }


def state_dict_sha256(model: nn.Module) -> str:
    """sha256 over parameter/buffer names and raw bytes: the same weights give the same value
    whatever file format (timm or torchvision keys, wrapped or not) they came from."""
    digest = hashlib.sha256()
    for key, tensor in sorted(model.state_dict().items()):
        digest.update(key.encode())
        data = tensor.detach().cpu().contiguous().reshape(-1)
        if data.dtype == torch.bool:
            data = data.to(torch.uint8)
        digest.update(data.view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


# ---------------------------------------------------------------------------------------------- checkpoints


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


def _shape(tensor: torch.Tensor) -> str:
    return "[" + ", ".join(str(s) for s in tensor.shape) + "]"


def _first_keys(keys: list[str]) -> str:
    more = f", ... ({len(keys)} in all)" if len(keys) > _SHOWN_KEYS else ""
    return ", ".join(keys[:_SHOWN_KEYS]) + more


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


def _module_name(model: nn.Module, module: nn.Module) -> str:
    return next((name for name, m in model.named_modules() if m is module), "")


# ---------------------------------------------------------------------------------------------- names


def known_names() -> list[str]:
    import timm
    import torchvision

    return sorted(
        set(ALIASES)
        | set(timm.list_models())
        | set(timm.list_models(pretrained=True))
        | set(torchvision.models.list_models(module=torchvision.models))
    )


def suggest(name: str, limit: int = 5) -> list[str]:
    return difflib.get_close_matches(name, known_names(), n=limit, cutoff=0.5)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:200] if text else type(exc).__name__


def resolve_name(name: str) -> tuple[str, str]:
    """(library, model): library is "timm", "torchvision", "dfgen", "factory", or "" (unprefixed: timm
    first, then torchvision)."""
    source = ALIASES.get(name, name)
    prefix, sep, rest = source.partition(":")
    if not sep:
        return "", source
    if prefix in LIBRARY_PREFIXES:
        return LIBRARY_PREFIXES[prefix], rest
    if prefix in ("hf-hub", "hf_hub"):  # timm's own Hugging Face names
        return "timm", source
    if prefix == "factory":
        return "factory", rest
    return "factory", source


def _resolved_factory(spec: str) -> str:
    """A file factory with its absolute path, so the recorded spec rebuilds it from any directory."""
    target, _, attr = spec.rpartition(":")
    if _is_file_target(target):
        return f"{Path(target).expanduser().resolve()}:{attr}"
    return spec


def _is_file_target(target: str) -> bool:
    return target.endswith(".py") or "/" in target or "\\" in target


def import_factory(spec: str) -> Callable[..., Any]:
    """`package.module:factory` (importable) or `path/to/models.py:factory` -> the callable."""
    target, sep, attr = spec.rpartition(":")
    if not sep or not target or not attr:
        raise DfgenError(f"--teacher {spec!r}: a model factory is written module:factory or path/to/file.py:factory")
    if _is_file_target(target):
        path = Path(target).expanduser()
        if not path.is_file():
            raise DfgenError(f"teacher factory file not found: {path} (from --teacher {spec})")
        module = _import_file(path.resolve())
    else:
        try:
            module = importlib.import_module(target)
        except ModuleNotFoundError as exc:
            raise DfgenError(
                f"cannot import module {target!r} for --teacher {spec} ({_first_line(exc)}); put its directory on "
                "PYTHONPATH, or give the file: path/to/models.py:factory"
            ) from exc
        except Exception as exc:  # the user's module failed while importing
            raise DfgenError(f"importing {target} failed: {type(exc).__name__}: {_first_line(exc)}") from exc
    obj: Any = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            names = [n for n in dir(module) if not n.startswith("_") and callable(getattr(module, n))]
            close = difflib.get_close_matches(part, names, n=3, cutoff=0.5)
            hint = f"; did you mean {', '.join(close)}?" if close else f" (callables in it: {_first_keys(names)})"
            raise DfgenError(f"{target} has no attribute {attr!r}{hint}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise DfgenError(f"{target}:{attr} is not callable (a {type(obj).__name__}); name the function or class "
                         "that builds the model")
    return obj


def _import_file(path: Path) -> Any:
    # A stable, unique module name per file: importing the same file twice reuses the module.
    name = "dfgen_teacher_" + hashlib.sha256(str(path).encode()).hexdigest()[:12]
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise DfgenError(f"cannot import {path} as a Python module")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    # The file's directory goes on sys.path while it runs, so it can import its sibling modules.
    sys.path.insert(0, str(path.parent))
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        del sys.modules[name]
        raise DfgenError(f"importing {path} failed: {type(exc).__name__}: {_first_line(exc)}") from exc
    finally:
        sys.path.remove(str(path.parent))
    return module


# ---------------------------------------------------------------------------------------------- builders


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


def classifier_of(model: nn.Module) -> nn.Module:
    """The final linear layer; its input is the penultimate embedding the diversity losses use."""
    get = getattr(model, "get_classifier", None)
    head = get() if callable(get) else None
    if isinstance(head, nn.Linear):
        return head
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise DfgenError("the teacher has no linear classifier layer; dfgen needs one for the embedding")
    return linears[-1]


def first_conv(model: nn.Module) -> nn.Conv2d | None:
    return next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)


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


def check_running_statistics(model: nn.Module, name: str) -> None:
    """Refuse a teacher whose BatchNorm layers keep no running statistics (`track_running_stats=False`): the BN
    loss matches the batch's statistics to them, so there is nothing to match."""
    missing = [layer for layer, m in model.named_modules()
               if isinstance(m, nn.BatchNorm2d) and (m.running_mean is None or m.running_var is None)]
    if missing:
        listed = ", ".join(missing[:4]) + (f" and {len(missing) - 4} more" if len(missing) > 4 else "")
        raise DfgenError(f"teacher {name}: BatchNorm layer(s) {listed} keep no running statistics "
                         "(track_running_stats=False), which DeepInversion matches; use a teacher built with "
                         "track_running_stats=True and weights trained that way")


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
    if std_given is not None and any(v <= 0 for v in std_given):
        raise DfgenError(f"--std values must be positive, got {std_given}")
    if image_size is not None and image_size < 1:
        raise DfgenError(f"--image-size must be positive, got {image_size}")
    library, model_name = resolve_name(name)
    state = read_checkpoint(weights_path, use_ema, strip=False) if weights_path is not None else None
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

    model.eval().requires_grad_(False)
    if require_batchnorm and not any(isinstance(m, nn.BatchNorm2d) for m in model.modules()):
        raise DfgenError(
            f"teacher {name} has no BatchNorm2d layers; DeepInversion matches BatchNorm statistics, so it needs a "
            "CNN with BatchNorm (e.g. a ResNet or RegNet)"
        )
    if require_batchnorm:
        check_running_statistics(model, name)
    classifier = classifier_of(model)
    count = getattr(model, "num_classes", None)
    model_classes = int(count) if isinstance(count, int) and count > 0 else int(classifier.out_features)
    if num_classes is not None and num_classes != model_classes:
        hint = " (pass it to your factory with --teacher-kwargs)" if library == "factory" else ""
        raise DfgenError(f"teacher {name} has {model_classes} classes but --num-classes {num_classes}{hint}")
    conv = first_conv(model)
    if conv is None:
        raise DfgenError(f"teacher {name} has no Conv2d layer; dfgen inverts convolutional image classifiers")
    channels = conv.in_channels  # the truth for every source, whatever a data config says
    if in_chans is not None and in_chans != channels:
        hint = " (pass it to your factory with --teacher-kwargs)" if library == "factory" else ""
        raise DfgenError(f"teacher {name}'s first convolution takes {channels} channels but --in-chans {in_chans}"
                         f"{hint}")

    if data_config is None:
        if library == "factory" and not isinstance(getattr(model, "pretrained_cfg", None), dict) and \
                not isinstance(getattr(model, "default_cfg", None), dict):
            if image_size is None:
                raise DfgenError(f"teacher {name} is your own model and has no data config: pass --image-size "
                                 "(and --mean/--std; ImageNet's are the default)")
            data_config = {"input_size": (channels, image_size, image_size), "mean": IMAGENET_MEAN,
                           "std": IMAGENET_STD, "interpolation": "bilinear"}
        else:
            from timm.data import resolve_model_data_config

            data_config = resolve_model_data_config(model)
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


def describe_teacher(teacher: Teacher) -> tuple[str, bool]:
    """The `dfgen teachers --check` text (what dfgen will use) and whether a forward pass at the input size
    gave one logit per class."""
    model = teacher.model
    bn = sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    params = sum(p.numel() for p in model.parameters())
    head = classifier_of(model)
    channels, height, width = teacher.input_size
    kind = "greyscale" if channels == 1 else "RGB" if channels == 3 else f"{channels}-channel"
    weights = teacher.spec.get("weights")
    lines = [
        f"teacher       {teacher.name} ({teacher.source})",
        f"weights       {weights or _default_weights(teacher)} "
        f"(sha256 {teacher.weights_sha256[:16]}...)",
        f"classes       {teacher.num_classes}",
        f"input size    {channels} x {height} x {width} ({kind} images)",
        f"mean          {', '.join(f'{v:.4g}' for v in teacher.mean)}",
        f"std           {', '.join(f'{v:.4g}' for v in teacher.std)}",
        f"interpolation {teacher.interpolation}",
        f"BatchNorm     {bn} BatchNorm2d layers",
        f"classifier    {_module_name(model, head) or 'linear'}: {head.in_features} -> {head.out_features} "
        f"(embedding {head.in_features})",
        f"parameters    {params:,}",
    ]
    param = next(model.parameters())
    try:
        with torch.no_grad():
            logits = model(torch.zeros(1, channels, height, width, device=param.device, dtype=param.dtype))
        shape = list(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
        ok = isinstance(logits, torch.Tensor) and tuple(logits.shape) == (1, teacher.num_classes)
        lines.append(f"forward       {'ok' if ok else 'UNEXPECTED'}: logits {shape} for a {height}x{width} input")
    except Exception as exc:  # the check exists to find this: say it, do not crash
        ok = False
        lines.append(f"forward       FAILED at {height}x{width}: {type(exc).__name__}: {_first_line(exc)}")
    lines.append("resolutions   " + describe_resolutions(teacher))
    return "\n".join(lines), ok


def describe_resolutions(teacher: Teacher) -> str:
    """Which of the default schedule's stage sizes the teacher accepts, and what multi-resolution synthesis will do
    about it."""
    from dfgen.config import default_schedule, format_schedule
    from dfgen.resolutions import accepted_resolutions

    size = teacher.resolution
    schedule = default_schedule(size)
    device = next(teacher.model.parameters()).device
    accepted = accepted_resolutions(teacher.model, teacher.in_chans, [r for r, _ in schedule], device)
    if accepted[size] is not None:
        return f"{size} REJECTED ({accepted[size]}): no schedule can run; pass --image-size with its training size"
    rejected = {res: why for res, why in accepted.items() if why is not None}
    if not rejected:
        return (f"{', '.join(map(str, sorted(accepted)))} accepted: the default schedule {format_schedule(schedule)} "
                "runs each stage natively")
    res, why = min(rejected.items())
    listed = ", ".join(map(str, sorted(rejected)))
    return (f"{size} accepted; {listed} rejected ({res}: {why}): stages below {size} are optimised at their size "
            f"and shown to the teacher upsampled to {size} (--multires upsample, chosen automatically)")


def _default_weights(teacher: Teacher) -> str:
    if not teacher.spec.get("pretrained", True):
        return "random init"
    if teacher.source.startswith("dfgen:"):
        return "bundled"
    return "the factory's own" if teacher.source.startswith("factory:") else "pretrained"


def _is_timm(name: str) -> bool:
    import timm

    return bool(name) and (timm.is_model(name) or name.startswith(("hf-hub:", "hf_hub:")))


def _is_torchvision(name: str) -> bool:
    import torchvision

    return name in torchvision.models.list_models(module=torchvision.models)
