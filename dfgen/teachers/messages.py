"""Small text functions the teacher errors share: the first line of an exception, the first few keys of a list,
a tensor's shape."""

from __future__ import annotations

import torch

_SHOWN_KEYS = 4  # how many missing/unexpected keys an error names


def _shape(tensor: torch.Tensor) -> str:
    return "[" + ", ".join(str(s) for s in tensor.shape) + "]"


def _first_keys(keys: list[str]) -> str:
    more = f", ... ({len(keys)} in all)" if len(keys) > _SHOWN_KEYS else ""
    return ", ".join(keys[:_SHOWN_KEYS]) + more


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:200] if text else type(exc).__name__
