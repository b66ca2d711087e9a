"""Bundled teachers that work offline (no model hub is needed): see `dfgen.zoo.digits`.

Names are re-exported lazily, so `python -m dfgen.zoo.digits_training` does not import the module twice.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "DIGITS_MEAN",
    "DIGITS_RESOLUTION",
    "DIGITS_STD",
    "DIGITS_WEIGHTS_SHA256",
    "DigitsNet",
    "DigitsSplit",
    "DigitsWeightsError",
    "evaluate",
    "load_digits_split",
    "load_digits_teacher",
}

__all__ = sorted(_EXPORTS | {"train_digits_teacher"})


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module("dfgen.zoo.digits"), name)
    if name == "train_digits_teacher":
        return getattr(importlib.import_module("dfgen.zoo.digits_training"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
