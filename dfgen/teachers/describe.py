"""`dfgen teachers --check`: what dfgen will use (weights, classes, input size, mean/std, classifier), whether a
forward pass gives one logit per class, and which of the default schedule's stage sizes the teacher accepts."""

from __future__ import annotations

import torch
from torch import nn

from dfgen.teachers.messages import _first_line
from dfgen.teachers.teacher import Teacher
from dfgen.teachers.validate import _module_name, classifier_of


def describe_teacher(teacher: Teacher) -> tuple[str, bool]:
    """The `dfgen teachers --check` text (what dfgen will use) and whether a forward pass at the input size
    gave one logit per class."""
    model = teacher.model
    bn = sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    params = sum(p.numel() for p in model.parameters())
    head = classifier_of(model)
    channels, height, width = teacher.input_size
    kind = "greyscale" if channels == 1 else "RGB" if channels == 3 else f"{channels}-channel"
    weights = teacher.spec.get("weights")
    lines = [
        f"teacher       {teacher.name} ({teacher.source})",
        f"weights       {weights or _default_weights(teacher)} "
        f"(sha256 {teacher.weights_sha256[:16]}...)",
        f"classes       {teacher.num_classes}",
        f"input size    {channels} x {height} x {width} ({kind} images)",
        f"mean          {', '.join(f'{v:.4g}' for v in teacher.mean)}",
        f"std           {', '.join(f'{v:.4g}' for v in teacher.std)}",
        f"interpolation {teacher.interpolation}",
        f"BatchNorm     {bn} BatchNorm2d layers",
        f"classifier    {_module_name(model, head) or 'linear'}: {head.in_features} -> {head.out_features} "
        f"(embedding {head.in_features})",
        f"parameters    {params:,}",
    ]
    param = next(model.parameters())
    try:
        with torch.no_grad():
            logits = model(torch.zeros(1, channels, height, width, device=param.device, dtype=param.dtype))
        shape = list(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
        ok = isinstance(logits, torch.Tensor) and tuple(logits.shape) == (1, teacher.num_classes)
        lines.append(f"forward       {'ok' if ok else 'UNEXPECTED'}: logits {shape} for a {height}x{width} input")
    except Exception as exc:  # the check exists to find this: say it, do not crash
        ok = False
        lines.append(f"forward       FAILED at {height}x{width}: {type(exc).__name__}: {_first_line(exc)}")
    lines.append("resolutions   " + describe_resolutions(teacher))
    return "\n".join(lines), ok


def describe_resolutions(teacher: Teacher) -> str:
    """Which of the default schedule's stage sizes the teacher accepts, and what multi-resolution synthesis will do
    about it."""
    from dfgen.config import default_schedule, format_schedule
    from dfgen.resolutions import accepted_resolutions

    size = teacher.resolution
    schedule = default_schedule(size)
    device = next(teacher.model.parameters()).device
    accepted = accepted_resolutions(teacher.model, teacher.in_chans, [r for r, _ in schedule], device)
    if accepted[size] is not None:
        return f"{size} REJECTED ({accepted[size]}): no schedule can run; pass --image-size with its training size"
    rejected = {res: why for res, why in accepted.items() if why is not None}
    if not rejected:
        return (f"{', '.join(map(str, sorted(accepted)))} accepted: the default schedule {format_schedule(schedule)} "
                "runs each stage natively")
    res, why = min(rejected.items())
    listed = ", ".join(map(str, sorted(rejected)))
    return (f"{size} accepted; {listed} rejected ({res}: {why}): stages below {size} are optimised at their size "
            f"and shown to the teacher upsampled to {size} (--multires upsample, chosen automatically)")


def _default_weights(teacher: Teacher) -> str:
    if not teacher.spec.get("pretrained", True):
        return "random init"
    if teacher.source.startswith("dfgen:"):
        return "bundled"
    return "the factory's own" if teacher.source.startswith("factory:") else "pretrained"
