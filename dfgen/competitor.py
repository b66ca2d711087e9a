"""The competitor of two-round synthesis (DeepInversion's Adaptive DeepInversion, ADI): a student trained on a first
synthetic set, frozen, whose disagreement with the teacher the competition term (dfgen.losses.competition_loss)
seeks in the second round. It sees exactly the teacher's input (the same normalized, jittered view), so it must
take the teacher's size, channels and normalization and predict the same classes."""

from __future__ import annotations

import torch

from dfgen.errors import DfgenError
from dfgen.teachers import Teacher, load_teacher


def load_competitor(name: str, weights: str, teacher: Teacher) -> Teacher:
    """The competitor `name` (a model name or file.py:factory, as for the teacher) with its `weights` file, checked
    against `teacher`: one forward pass on the teacher's input shape must give the teacher's classes."""
    competitor = load_teacher(name, weights, device="cpu", require_batchnorm=False, image_size=teacher.resolution,
                              mean=list(teacher.mean), std=list(teacher.std))
    probe = torch.zeros(2, *teacher.input_size)
    try:
        with torch.no_grad():
            logits = competitor.model(probe)
    except Exception as exc:  # the user's model can raise anything
        raise DfgenError(f"the competitor {name} fails on the teacher's input {tuple(teacher.input_size)}: "
                         f"{type(exc).__name__}: {exc}".splitlines()[0]) from None
    if logits.ndim != 2 or logits.shape[1] != teacher.num_classes:
        raise DfgenError(f"the competitor {name} gives {tuple(logits.shape[1:])} outputs per image; the teacher "
                         f"predicts {teacher.num_classes} classes")
    return competitor
