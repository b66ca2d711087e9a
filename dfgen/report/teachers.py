"""The teachers a report re-runs: the one a dataset.json records (rebuilt from its spec) or one given by name,
loaded once for all datasets, checked against the recorded weights hash, with the normalization the dataset used."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from dfgen.dataset import DatasetInfo
from dfgen.errors import DfgenError
from dfgen.teachers import Teacher, load_recorded_teacher, load_teacher


class TeacherCache:
    """Loads each (teacher source, weights) once for all datasets of a report."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.loaded: dict[tuple[str, str | None], Teacher] = {}

    def get(self, source: str, weights: str | Path | None) -> Teacher:
        key = (source, None if weights is None else str(weights))
        if key not in self.loaded:
            self.loaded[key] = load_teacher(source, weights, device=self.device)
        return self.loaded[key]

    def recorded(self, entry: dict[str, Any], weights: str | Path | None) -> Teacher:
        """The teacher a dataset.json entry describes, rebuilt from its spec (factory, options, weights file)."""
        key = (json.dumps(entry.get("spec") or entry.get("source"), sort_keys=True),
               None if weights is None else str(weights))
        if key not in self.loaded:
            self.loaded[key] = load_recorded_teacher(entry, weights, device=self.device)
        return self.loaded[key]


def shared_teacher(infos: list[DatasetInfo]) -> dict[str, Any] | None:
    """The teacher entry that every set recording one records alike (the same spec and weights), None where no set
    records one or they differ: what a real set beside synthetic ones is measured with."""
    recorded = [info.teacher for info in infos if info.teacher and info.teacher.get("source")]
    identities = {json.dumps([entry.get("spec") or entry.get("source"), entry.get("weights_sha256"),
                              entry.get("data_config")], sort_keys=True) for entry in recorded}
    return recorded[0] if len(identities) == 1 else None


def resolve_teacher(
    info: DatasetInfo,
    teacher: str | Teacher | None,
    teacher_weights: str | Path | None,
    cache: TeacherCache,
) -> tuple[Teacher | None, dict[str, Any], list[str]]:
    """The teacher to re-run on a dataset, its description for report.json, and warnings."""
    recorded = info.teacher
    warnings: list[str] = []
    if isinstance(teacher, Teacher):
        model = teacher
    elif teacher is not None:
        model = cache.get(teacher, teacher_weights)
    elif recorded and recorded.get("source"):
        model = cache.recorded(recorded, teacher_weights)
    else:
        return None, {"source": None, "note": "no teacher in dataset.json (real data); pass --teacher NAME"}, []
    if model.num_classes < info.num_classes:
        raise DfgenError(
            f"teacher {model.name} has {model.num_classes} classes but {info.path} has {info.num_classes}; "
            "pass the teacher the dataset was made for with --teacher"
        )
    expected = (recorded or {}).get("weights_sha256")
    match = None if expected is None else expected == model.weights_sha256
    if match is False:
        warnings.append(
            f"the teacher's weights (sha256 {model.weights_sha256[:12]}...) are not those the dataset was made with "
            f"({str(expected)[:12]}...); agreement and features are measured with other weights. Pass "
            "--teacher-weights FILE with the original weights"
        )
    description = {"name": model.name, "source": model.source, "weights_sha256": model.weights_sha256,
                   "recorded_weights_sha256": expected, "weights_match": match}
    return model, description, warnings


def data_config(info: DatasetInfo, teacher: Teacher) -> tuple[list[float], list[float]]:
    """Normalization as dataset.json's teacher data config says (the teacher's own when absent)."""
    recorded = info.teacher or {}
    config = (recorded or {}).get("data_config") or {}
    if recorded and recorded.get("source") == teacher.source and config.get("mean") and config.get("std"):
        return [float(v) for v in config["mean"]], [float(v) for v in config["std"]]
    return list(teacher.mean), list(teacher.std)
