"""Which students `distill run` trains: a name resolved to a registered DearKD model, built through timm.

A student is a `distill.models.DearKD` (timm's distilled ViT with MHCA blocks) registered with timm by a module
listed in `STUDENT_MODULES`; a new student is a new `@register_model` function there (or a new module added to
the tuple), nothing here changes.
"""

from __future__ import annotations

import difflib
from typing import Any

import timm

from distill.errors import DistillError
from distill.models import DearKD

# the timm registry's module names whose models are students (timm.list_models(module=...)); other timm models
# are refused, as the trainer relies on DearKD's two heads and forward_with_tokens
STUDENT_MODULES = ("dearkd",)


def create_student(name: str, num_classes: int, in_chans: int, img_size: int | None, drop_path: float,
                   model_kwargs: dict[str, Any] | None = None) -> DearKD:
    """A registered DearKD student (`dearkd_*`, `deit_micro_patch4_32`) built through timm; `model_kwargs` go to its
    constructor (e.g. prefix_logit, locality_strength)."""
    if not timm.is_model(name):
        close = difflib.get_close_matches(name, timm.list_models(), n=4, cutoff=0.5)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise DistillError(f"unknown student model {name!r}{hint} (students: {', '.join(student_names())})")
    kwargs: dict[str, Any] = {**(model_kwargs or {}), "num_classes": num_classes, "in_chans": in_chans,
                              "drop_path_rate": drop_path}
    if img_size:
        kwargs["img_size"] = img_size
    try:
        model = timm.create_model(name, pretrained=False, **kwargs) if name in student_names() else None
    except TypeError as exc:  # an argument the student's constructor does not take
        raise DistillError(f"model_kwargs {model_kwargs}: {name} does not take them ({exc})") from None
    if not isinstance(model, DearKD):
        raise DistillError(f"{name} is not a DearKD student; use one of {', '.join(student_names())}")
    return model


def student_names() -> list[str]:
    """The registered student names, sorted."""
    return sorted({n for module in STUDENT_MODULES for n in timm.list_models(module=module)})
