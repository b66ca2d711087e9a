"""The Teacher record (a frozen classifier and its data config) and the weights' format-independent digest."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn


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
