"""Checks on the values of a `distill run` configuration where they enter (CLI, YAML preset, a run's config.json,
a checkpoint's stored config): each field of the kind its declaration says (numbers written as strings, such as
YAML's `5e-4`, read as numbers), finite, in range, and free-form mappings (model_kwargs) of bounded depth and size
made of JSON values only."""

from __future__ import annotations

import math
import os
from typing import Any

from distill.errors import DistillError

MAX_DEPTH = 16  # nesting of a free-form mapping (model_kwargs)
MAX_NODES = 10_000  # values in it, every visit of a shared (YAML alias) value counted again


class _Null:
    """An option given as `none` on the command line (e.g. `--aa none`): it sets None, where an option not given
    (None) leaves the file's or the default value."""

    def __repr__(self) -> str:
        return "NULL"


NULL = _Null()


def check_choice(name: str, value: Any, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise DistillError(f"{name} must be one of {', '.join(choices)}, got {value!r}")


def coerce(name: str, kind: str, value: Any) -> Any:
    """`value` as the field's declared kind ("int", "float | None", "bool", "str"...); a one-line error otherwise."""
    optional = kind.endswith("| None")
    base = kind.split("|")[0].strip()
    if value is None:
        if optional:
            return None
        raise DistillError(f"{name} needs a value ({base}), got null")
    if base == "int":
        return _whole(name, value)
    if base == "float":
        return _number(name, value)
    if base == "bool":
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in ("true", "false"):
            return value.strip().lower() == "true"
        raise DistillError(f"{name} must be true or false, got {value!r}")
    if base == "str":
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float, os.PathLike)) and not isinstance(value, bool):  # a number, a Path
            return str(value)
        raise DistillError(f"{name} must be a text value, got {value!r}")
    return value


def _number(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise DistillError(f"{name} must be a number, got {value!r}")
    try:
        number = float(value)
    except ValueError:
        raise DistillError(f"{name} must be a number, got {value!r}") from None
    if not math.isfinite(number):
        raise DistillError(f"{name} must be a finite number, got {value!r}")
    return number


def _whole(name: str, value: Any) -> int:
    if isinstance(value, bool):
        raise DistillError(f"{name} must be a whole number, got {value!r}")
    if isinstance(value, int):
        return value
    number = _number(name, value)
    if not number.is_integer():
        raise DistillError(f"{name} must be a whole number, got {value!r}")
    return int(number)


def check_range(name: str, value: float | None, low: float | None = None, high: float | None = None,
                low_open: bool = False, high_open: bool = False) -> None:
    """`value` (None: not set, fine) within [low, high], ends open where asked; one line naming the bounds."""
    if value is None:
        return
    below = low is not None and (value <= low if low_open else value < low)
    above = high is not None and (value >= high if high_open else value > high)
    if below or above:
        if high is None:
            bound = f"{'>' if low_open else '>='} {low:g}"
        elif low is None:
            bound = f"{'<' if high_open else '<='} {high:g}"
        else:
            bound = f"in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
        raise DistillError(f"{name} must be {bound}, got {value:g}")


def check_json_tree(name: str, value: Any) -> None:
    """A free-form value made of JSON types only (str keys, finite numbers), at most MAX_DEPTH deep and MAX_NODES
    values, shared (aliased) values counted at each use: what json.dumps writes into a checkpoint as it is read."""
    budget = [MAX_NODES]

    def walk(item: Any, depth: int) -> None:
        budget[0] -= 1
        if budget[0] < 0:
            raise DistillError(f"{name} holds more than {MAX_NODES} values (YAML aliases counted at each use); "
                               "give plain settings")
        if depth > MAX_DEPTH:
            raise DistillError(f"{name} is nested more than {MAX_DEPTH} levels deep; give plain settings")
        if isinstance(item, dict):
            for key, sub in item.items():
                if not isinstance(key, str):
                    raise DistillError(f"{name}: keys must be names, got {key!r}")
                walk(sub, depth + 1)
        elif isinstance(item, (list, tuple)):
            for sub in item:
                walk(sub, depth + 1)
        elif isinstance(item, float) and not math.isfinite(item):
            raise DistillError(f"{name}: numbers must be finite, got {item!r}")
        elif item is not None and not isinstance(item, (str, int, float, bool)):
            raise DistillError(f"{name}: only text, numbers, true/false, null, lists and mappings are allowed, got "
                               f"{type(item).__name__} {item!r:.60}")

    walk(value, 0)
