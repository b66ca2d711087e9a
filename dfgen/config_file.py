"""Configuration files of both tools (`dfgen synthesize --config`, `distill run --config`): a YAML preset or a run's
own config.json, read into a mapping of option name to value. One reader, so both tools read numbers the same way
(`5e-4` and JSON's `1e-08` are numbers), refuse the same malformed files in one line, and name an unknown option
with the nearest known ones."""

from __future__ import annotations

import difflib
from collections.abc import Collection
from pathlib import Path
from typing import Any

from dfgen.errors import DfgenError
from dfgen.parsing import MAX_CONFIG_BYTES, check_plain_values, safe_yaml


def read_config_file(path: str | Path, error: type[DfgenError] = DfgenError) -> dict[str, Any]:
    """The options of a YAML (or JSON) file as {name: value}, names with `-` read as `_`; `error` is the tool's own
    error type. The values are checked by the tool's configuration class, not here."""
    path = Path(path)
    try:
        if not path.is_file():
            raise error(f"config file not found: {path}")
        if path.stat().st_size > MAX_CONFIG_BYTES:
            raise error(f"config file {path} is larger than {MAX_CONFIG_BYTES:,} bytes; a preset holds settings")
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise error(f"config file {path} is not text (UTF-8)") from None
    except OSError as exc:
        raise error(f"config file {path} cannot be read ({exc.strerror or exc})") from None
    try:
        data = safe_yaml(text, f"config file {path}")
        data = {} if data is None else data
        if not isinstance(data, dict):
            raise error(f"config file {path} must hold a mapping of option: value, got {type(data).__name__}")
        check_plain_values(data, f"config file {path}")
    except DfgenError as exc:
        if isinstance(exc, error):
            raise
        raise error(str(exc)) from None
    names = [key for key in data if not isinstance(key, str)]
    if names:
        raise error(f"config file {path}: option names must be text, got {names[0]!r}")
    return {key.replace("-", "_"): value for key, value in data.items()}


def refuse_unknown(names: Collection[str], known: Collection[str], where: str,
                   error: type[DfgenError] = DfgenError) -> None:
    """One line naming the first unknown option, the known ones nearest to it, and where the list of all is."""
    unknown = sorted(set(names) - set(known))
    if not unknown:
        return
    close = difflib.get_close_matches(unknown[0], sorted(known), n=3, cutoff=0.6)
    hint = f"; did you mean {' or '.join(close)}?" if close else ""
    more = f" (and {len(unknown) - 1} more: {', '.join(unknown[1:4])})" if len(unknown) > 1 else ""
    raise error(f"{where}: unknown option {unknown[0]!r}{hint}{more} (the options are those of --help, with _ for -)")
