"""Values as they enter from text (the command line, YAML presets, JSON): image counts (`1.2M`), schedules
(`112:2000,224:2000`), mappings such as --teacher-kwargs, float lists, class-name files; each checked for type,
range and size before anything is allocated from it."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from dfgen.errors import DfgenError

# Size limits of what is allocated or looped over from a value: refused by size, before anything is allocated.
MAX_IMAGES = 1_000_000_000  # -n
MAX_RESOLUTION = 4096  # a schedule stage's side, in pixels
MAX_ITERATIONS = 1_000_000  # a schedule stage's iterations
MAX_STAGES = 16
MAX_SEED = 2**63 - 1
# YAML / JSON mappings (presets, --teacher-kwargs): nesting depth, values counted as expanded (aliases included),
# and the preset file's size
MAX_DEPTH = 16
MAX_VALUES = 10_000
MAX_CONFIG_BYTES = 1 << 20

_COUNT_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kKmM]?)\s*$")
_SUFFIX = {"": 1, "k": 1_000, "m": 1_000_000}


def parse_count(text: str | int) -> int:
    """`1.2M` -> 1200000, `50k` -> 50000, `1000` -> 1000; anything else (or <= 0) is an error."""
    if isinstance(text, int) and not isinstance(text, bool):
        value = text
    else:
        match = _COUNT_RE.match(str(text))
        if not match:
            raise DfgenError(f"--n must be a positive count such as 1000, 50k or 1.2M, got {text!r}")
        number, suffix = match.groups()
        scaled = float(number) * _SUFFIX[suffix.lower()]
        if scaled != int(scaled):
            raise DfgenError(f"--n must be a whole number of images, got {text!r}")
        value = int(scaled)
    if value <= 0:
        raise DfgenError(f"--n must be a positive count such as 1000, 50k or 1.2M, got {text!r}")
    if value > MAX_IMAGES:
        raise DfgenError(f"--n {text} is {value:,} images, more than the {MAX_IMAGES:,} dfgen plans for; split it "
                         "into several datasets")
    return value


def parse_schedule(text: str | list) -> list[tuple[int, int]]:
    """`112:2000,224:2000` -> [(112, 2000), (224, 2000)]; resolutions and iterations positive."""
    if isinstance(text, list | tuple):
        try:
            stages = [tuple(_whole(v) for v in stage) for stage in text]
        except (TypeError, ValueError):
            raise DfgenError(f"--schedule needs resolution:iterations pairs of whole numbers, got {text!r}") from None
    else:
        stages = []
        for part in str(text).split(","):
            match = re.fullmatch(r"\s*(\d+)\s*:\s*(\d+)\s*", part)
            if not match:
                raise DfgenError(
                    f"--schedule must look like 112:2000,224:2000 (resolution:iterations,...), got {text!r}"
                )
            stages.append((int(match.group(1)), int(match.group(2))))
    if not stages or any(len(s) != 2 or s[0] <= 0 or s[1] <= 0 for s in stages):
        raise DfgenError(f"--schedule needs positive resolution:iterations pairs, got {text!r}")
    if len(stages) > MAX_STAGES:
        raise DfgenError(f"--schedule has {len(stages)} stages; at most {MAX_STAGES}")
    for resolution, iterations in stages:
        if resolution > MAX_RESOLUTION:
            raise DfgenError(f"--schedule resolution {resolution} is larger than {MAX_RESOLUTION} px (a batch of such "
                             "images would not fit in memory); use the teacher's input size or below")
        if iterations > MAX_ITERATIONS:
            raise DfgenError(f"--schedule iterations {iterations} per stage exceed {MAX_ITERATIONS:,}; the paper uses "
                             "2000")
    return [(int(r), int(i)) for r, i in stages]


def _whole(value: Any) -> int:
    """A whole number from YAML/JSON (an int, or a float or string holding one); TypeError/ValueError otherwise."""
    if isinstance(value, bool):
        raise TypeError("a boolean is not a number")
    if isinstance(value, float) and not value.is_integer():
        raise ValueError("not a whole number")
    return int(value)


def check_plain_values(value: Any, what: str) -> None:
    """Refuse a YAML/JSON value nested deeper than MAX_DEPTH or holding more than MAX_VALUES values as expanded
    (a YAML alias counts each time it is used: an alias bomb is refused without being expanded)."""
    count = 0
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        count += 1
        if depth > MAX_DEPTH:
            raise DfgenError(f"{what} is nested deeper than {MAX_DEPTH} levels")
        if count > MAX_VALUES:
            raise DfgenError(f"{what} holds more than {MAX_VALUES:,} values (counting repeated YAML aliases)")
        if isinstance(item, Mapping):
            stack.extend((v, depth + 1) for v in item.values())
            count += len(item)
        elif isinstance(item, list | tuple):
            stack.extend((v, depth + 1) for v in item)


def parse_kwargs(value: str | Mapping[str, Any] | None, what: str = "--teacher-kwargs") -> dict[str, Any]:
    """A YAML/JSON mapping (`'{num_classes: 10}'`) or a dict -> a dict of plain values."""
    if value is None or value == "":
        return {}
    if isinstance(value, str):
        if len(value) > MAX_CONFIG_BYTES:
            raise DfgenError(f"{what} is longer than {MAX_CONFIG_BYTES:,} characters")
        value = safe_yaml(value, what)
        if value is None:
            return {}
    check_plain_values(value, what)
    if not isinstance(value, Mapping) or not all(isinstance(k, str) for k in value):
        raise DfgenError(f"{what} must be a mapping of argument: value, such as '{{num_classes: 10}}', got {value!r}")
    try:  # it is recorded in config.json and compared on resume: plain JSON values only
        return json.loads(json.dumps(dict(value)))
    except (TypeError, ValueError) as exc:
        raise DfgenError(f"{what} must hold plain values (numbers, strings, lists, mappings): {exc}") from exc


class NumberLoader(yaml.SafeLoader):
    """yaml.SafeLoader that also reads exponent numbers without a dot (`5e-4`, `1e-08`, as JSON and YAML 1.2 write
    them) as floats: PyYAML follows YAML 1.1, which reads them as text."""


NumberLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float", re.compile(r"^[-+]?[0-9][0-9_]*(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"), list("-+0123456789"))


def safe_yaml(text: str, what: str) -> Any:
    """Safe YAML loading (NumberLoader) with its failures (syntax, nesting too deep for the parser) as one line."""
    try:
        return yaml.load(text, Loader=NumberLoader)  # noqa: S506 (a SafeLoader)
    except yaml.YAMLError as exc:
        raise DfgenError(f"{what} is not valid YAML/JSON: {str(exc).splitlines()[0]}") from None
    except RecursionError:
        raise DfgenError(f"{what} is nested too deeply to read (at most {MAX_DEPTH} levels)") from None


def parse_floats(value: str | float | list | tuple | None, what: str) -> list[float] | None:
    """`0.49,0.48,0.45` (or a list) -> [0.49, 0.48, 0.45]."""
    if value is None:
        return None
    items = value.split(",") if isinstance(value, str) else value if isinstance(value, list | tuple) else [value]
    try:
        floats = [float(v) for v in items if not isinstance(v, bool)]
    except (TypeError, ValueError):
        raise DfgenError(f"{what} must be a comma-separated list of numbers such as 0.5,0.5,0.5, got {value!r}") \
            from None
    if not floats or len(floats) != len(items):
        raise DfgenError(f"{what} needs one number per channel, such as 0.5,0.5,0.5, got {value!r}")
    if not all(math.isfinite(v) for v in floats):
        raise DfgenError(f"{what} must hold finite numbers, got {value!r}")
    return floats


def read_class_names(source: str | Path | list | tuple) -> list[str]:
    """Class names from a file (one a line, or a JSON list, or a JSON {index: name} mapping) or a list."""
    if isinstance(source, list | tuple):
        names = [str(v) for v in source]
        where = "class_names"
    else:
        path = Path(source)
        where = f"--class-names {path}"
        if not path.is_file():
            raise DfgenError(f"class names file not found: {path}")
        text = path.read_text(encoding="utf-8")
        names = _parse_class_names(text, where)
    if not names or any(not n.strip() for n in names):
        raise DfgenError(f"{where}: class names must be non-empty")
    seen: set[str] = set()
    duplicates = [n for n in names if n in seen or seen.add(n)]
    if duplicates:  # the report keys per-class figures by name
        raise DfgenError(f"{where}: class names must be distinct; repeated: {', '.join(duplicates[:5])}")
    return names


def _parse_class_names(text: str, where: str) -> list[str]:
    if text.lstrip().startswith(("[", "{")):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise DfgenError(f"{where} looks like JSON but is not valid: {exc}") from exc
        if isinstance(data, dict):  # {"0": "airplane", ...}: indices 0..C-1
            try:
                indexed = {int(k): str(v) for k, v in data.items()}
            except ValueError:
                raise DfgenError(f"{where}: a JSON mapping must map class indices to names") from None
            if sorted(indexed) != list(range(len(indexed))):
                raise DfgenError(f"{where}: a JSON mapping must have the indices 0..{len(indexed) - 1}")
            return [indexed[i] for i in range(len(indexed))]
        if isinstance(data, list):
            return [str(v) for v in data]
        raise DfgenError(f"{where}: JSON class names must be a list or an {{index: name}} mapping")
    return [line.strip() for line in text.splitlines() if line.strip()]
