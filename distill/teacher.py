"""The stage-1 teacher of a run: which one (--teacher NAME, the teacher a dfgen dataset directory records, or the one
the training data's dataset.json names), rebuilt through dfgen and checked against the student.

The teacher that made the data is rebuilt from its recorded spec (own factory, class count, image size,
normalization, weights file); --teacher-weights replaces the recorded file.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import torch
from timm.data import resolve_data_config
from torch import nn

from dfgen.dataset import DATASET_FILE, read_description
from distill.config import TrainConfig
from distill.errors import DistillError
from distill.models import DearKD
from distill.sources import Source
from distill.teacher_features import Pair, TeacherFeatures, resolve_pairs, teacher_stages


def load_stage1_teacher(cfg: TrainConfig, infos: list[Source], model: nn.Module, device: torch.device,
                        data_config: dict[str, Any]) -> tuple[TeacherFeatures, list[Pair], str]:
    """The teacher wrapped for stage 1 (logits and the aligned stage maps, the student's batches resized to the
    teacher's input size), the block/stage pairs of the hidden loss (DearKD students only; none when its weight is
    0), and the teacher's name (`.kd.model`'s input size is `features.input_size`)."""
    from dfgen.teachers import load_recorded_teacher, load_teacher  # looked up here: tests replace them

    name = cfg.teacher
    recorded = [i.teacher for i in infos if i.teacher and i.teacher.get("name")]
    if name is not None and (Path(name) / DATASET_FILE).is_file():
        # --teacher DIR: the teacher that made the dfgen dataset DIR, e.g. to distill on real data from it
        entry = read_description(name).get("teacher")
        if not isinstance(entry, dict) or not entry.get("name"):
            raise DistillError(f"{name}/{DATASET_FILE} records no teacher; give a teacher name")
        recorded, name = [entry, *recorded], entry["name"]
    if name is None:
        if not recorded:
            raise DistillError("stage 1 needs a teacher: give --teacher NAME (the training data's dataset.json names "
                               "none), or --stage1-epochs 0 to train without one")
        name = recorded[0]["name"]
    entry = next((t for t in recorded if t["name"] == name), None)
    teacher = load_recorded_teacher(entry, cfg.teacher_weights, device=device) if entry is not None \
        else load_teacher(name, cfg.teacher_weights, device=device)
    made_by = {i.teacher.get("weights_sha256") for i in infos if i.teacher and i.teacher.get("name") == name} - {None}
    if made_by and teacher.weights_sha256 not in made_by:
        print(f"Warning: teacher {name} has other weights than the one that made the synthetic data "
              f"(sha256 {teacher.weights_sha256[:12]}... vs {', '.join(h[:12] for h in made_by)}...)",
              file=sys.stderr, flush=True)
    if teacher.num_classes != model.num_classes:
        raise DistillError(f"teacher {name} has {teacher.num_classes} classes, the student {model.num_classes}")
    in_chans = (data_config.get("input_size") or resolve_data_config({}, model=model)["input_size"])[0]
    if teacher.in_chans != in_chans:
        raise DistillError(f"teacher {name} takes {teacher.in_chans}-channel images, the student {in_chans}")
    size = tuple(teacher.input_size[1:])
    pairs = []
    if cfg.hidden_weight > 0 and isinstance(model, DearKD):  # the hidden loss aligns DearKD's block tokens
        pairs = resolve_pairs(cfg.align, model, teacher_stages(teacher.model, (teacher.in_chans, *size)))
    elif cfg.align:
        raise DistillError(f"--align pairs DearKD blocks with teacher stages; {cfg.model} is not a DearKD student "
                           "(leave --align out)")
    features = TeacherFeatures(teacher.model, teacher.mean, teacher.std, tuple(data_config["mean"]),
                               tuple(data_config["std"]), [p.stage.name for p in pairs], input_size=size,
                               interpolation=teacher.interpolation)
    return features, pairs, name
