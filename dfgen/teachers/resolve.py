"""Teacher names: aliases, `timm:` / `torchvision:` / `dfgen:` prefixes, unprefixed names (timm first, then
torchvision), and the user's own model factory (`package.module:factory` or `path/to/models.py:factory`)."""

from __future__ import annotations

import difflib
import hashlib
import importlib
import importlib.util
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from dfgen.errors import DfgenError
from dfgen.teachers.messages import _first_keys, _first_line

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
    if is_file_target(target):
        return f"{Path(target).expanduser().resolve()}:{attr}"
    return spec


def is_file_target(target: str) -> bool:
    return target.endswith(".py") or "/" in target or "\\" in target


def import_factory(spec: str) -> Callable[..., Any]:
    """`package.module:factory` (importable) or `path/to/models.py:factory` -> the callable."""
    target, sep, attr = spec.rpartition(":")
    if not sep or not target or not attr:
        raise DfgenError(f"--teacher {spec!r}: a model factory is written module:factory or path/to/file.py:factory")
    if is_file_target(target):
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

def _is_timm(name: str) -> bool:
    import timm

    return bool(name) and (timm.is_model(name) or name.startswith(("hf-hub:", "hf_hub:")))


def _is_torchvision(name: str) -> bool:
    import torchvision

    return name in torchvision.models.list_models(module=torchvision.models)
