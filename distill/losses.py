"""The DearKD training loss (SPEC section 5).

Stage 1:  1/2 CE(class head, y) + 1/2 CE(distillation head, argmax teacher(x)) + beta * mean_pairs MSE(aligner(tokens),
          teacher map)  -- DeiT hard distillation plus the early hidden loss; y may be a mixup/cutmix soft target.
Stage 2:  no teacher: both heads learn the labels, 1/2 CE(class head, y) + 1/2 CE(distillation head, y), so the
          averaged inference keeps using two trained heads (our reading: the paper only says "CE").
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy
from torch import nn


def label_criterion(mixing: bool, smoothing: float) -> nn.Module:
    """timm's criterion for the labels: soft-target CE under mixup/cutmix (which already smooths the targets),
    label-smoothing CE otherwise."""
    if mixing:
        return SoftTargetCrossEntropy()
    if smoothing > 0:
        return LabelSmoothingCrossEntropy(smoothing=smoothing)
    return nn.CrossEntropyLoss()


def dearkd_loss(
    outputs: tuple[torch.Tensor, torch.Tensor],
    target: torch.Tensor,
    criterion: nn.Module,
    teacher_logits: torch.Tensor | None = None,
    student_maps: list[torch.Tensor] | None = None,
    teacher_maps: list[torch.Tensor] | None = None,
    hidden_weight: float = 1.0,
) -> dict[str, torch.Tensor]:
    """Loss terms for one batch; `teacher_logits=None` is stage 2. Returns `loss` (to back-propagate) and the
    unweighted terms `cls`, `dist` and (stage 1) `hidden`."""
    cls_logits, dist_logits = outputs
    terms = {"cls": criterion(cls_logits.float(), target)}
    if teacher_logits is None:
        terms["dist"] = criterion(dist_logits.float(), target)
        terms["loss"] = 0.5 * terms["cls"] + 0.5 * terms["dist"]
        return terms
    terms["dist"] = F.cross_entropy(dist_logits.float(), teacher_logits.argmax(dim=-1))
    loss = 0.5 * terms["cls"] + 0.5 * terms["dist"]
    if student_maps:
        pairs = zip(student_maps, teacher_maps, strict=True)
        hidden = torch.stack([F.mse_loss(s.float(), t.float()) for s, t in pairs])
        terms["hidden"] = hidden.mean()
        loss = loss + hidden_weight * terms["hidden"]
    terms["loss"] = loss
    return terms
