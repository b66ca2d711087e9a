"""The DearKD training loss.

Stage 1:  1/2 CE(class head, y) + 1/2 D(distillation head, teacher) + beta * mean_pairs MSE(aligner(tokens), teacher
          map), y may be a mixup/cutmix soft target. D is DeiT's hard distillation, CE against the teacher's argmax
          on the same augmented batch, or soft distillation, tau^2 KL(softmax(teacher / tau) || softmax(student / tau)).
Stage 2:  no teacher: both heads learn the labels, 1/2 CE(class head, y) + 1/2 CE(distillation head, y), so the
          averaged inference keeps using two trained heads (our reading: the paper only says "CE").

The teacher's side comes as per-sample target probabilities (`distillation_target`): from the teacher's logits on the
batch (online), or from stored logits mixed like the images (`mix_targets`; dfgen's stored top-k soft labels).

A student with one head (any other timm model) learns by plain KD (`kd_loss`): the same two terms on its one head,
1/2 CE(logits, y) + 1/2 D(logits, teacher), D hard or soft as above (Hinton's KD at weight 1/2, DeiT's single-head
distillation); stage 2: CE(logits, y).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from timm.data import Mixup
from timm.data.mixup import mixup_target
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


class PairedMixup(Mixup):
    """timm's Mixup / CutMix that also returns its lambda, so that other per-sample targets are mixed with the same
    lambda and the same pairing as the images (timm mixes sample i with sample B-1-i, the flipped batch)."""

    def mix(self, x: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, float | torch.Tensor]:
        assert len(x) % 2 == 0, "mixup/cutmix need an even batch"
        mixers = {"elem": self._mix_elem, "pair": self._mix_pair}
        lam = mixers.get(self.mode, self._mix_batch)(x)  # mixes x in place; a float, or (B, 1) per sample
        return x, mixup_target(target, self.num_classes, lam, self.label_smoothing), lam


def mix_targets(target: torch.Tensor, lam: float | torch.Tensor) -> torch.Tensor:
    """Per-sample target distributions mixed as timm mixes images: lam * t_i + (1 - lam) * t_(B-1-i)."""
    return target * lam + target.flip(0) * (1.0 - lam)


def distillation_target(teacher_logits: torch.Tensor, kind: str, tau: float = 1.0) -> torch.Tensor:
    """Target probabilities of the distillation head: one-hot of the teacher's argmax (hard) or softmax at the
    temperature (soft). Logits may hold -inf (classes outside stored top-k): they get probability 0."""
    logits = teacher_logits.float()
    if kind == "hard":
        return F.one_hot(logits.argmax(dim=-1), logits.shape[-1]).float()
    return torch.softmax(logits / tau, dim=-1)


def distillation_loss(dist_logits: torch.Tensor, target: torch.Tensor, kind: str, tau: float = 1.0) -> torch.Tensor:
    """Hard: CE against target probabilities (CE on the argmax when they are one-hot); soft: tau^2 KL(target ||
    softmax(student / tau)), batch mean."""
    if kind == "hard":
        return torch.sum(-target * F.log_softmax(dist_logits.float(), dim=-1), dim=-1).mean()
    log_student = F.log_softmax(dist_logits.float() / tau, dim=-1)
    return F.kl_div(log_student, target, reduction="batchmean") * tau * tau


def dearkd_loss(
    outputs: tuple[torch.Tensor, torch.Tensor],
    target: torch.Tensor,
    criterion: nn.Module,
    teacher_target: torch.Tensor | None = None,
    student_maps: list[torch.Tensor] | None = None,
    teacher_maps: list[torch.Tensor] | None = None,
    hidden_weight: float = 1.0,
    distillation: str = "hard",
    tau: float = 1.0,
) -> dict[str, torch.Tensor]:
    """Loss terms for one batch; `teacher_target=None` is stage 2. `teacher_target`: the distillation head's target
    probabilities (`distillation_target`). Returns `loss` (to back-propagate) and the unweighted terms `cls`, `dist`
    and (with maps) `hidden`."""
    cls_logits, dist_logits = outputs
    terms = {"cls": criterion(cls_logits.float(), target)}
    if teacher_target is None:
        terms["dist"] = criterion(dist_logits.float(), target)
        terms["loss"] = 0.5 * terms["cls"] + 0.5 * terms["dist"]
        return terms
    terms["dist"] = distillation_loss(dist_logits, teacher_target, distillation, tau)
    loss = 0.5 * terms["cls"] + 0.5 * terms["dist"]
    if student_maps:
        pairs = zip(student_maps, teacher_maps, strict=True)
        hidden = torch.stack([F.mse_loss(s.float(), t.float()) for s, t in pairs])
        terms["hidden"] = hidden.mean()
        loss = loss + hidden_weight * terms["hidden"]
    terms["loss"] = loss
    return terms


def kd_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    criterion: nn.Module,
    teacher_target: torch.Tensor | None = None,
    distillation: str = "hard",
    tau: float = 1.0,
) -> dict[str, torch.Tensor]:
    """Loss terms of a one-head student: `cls` (the labels) and, with a teacher, `dist`; `loss` their mean."""
    terms = {"cls": criterion(logits.float(), target)}
    if teacher_target is None:
        terms["loss"] = terms["cls"]
        return terms
    terms["dist"] = distillation_loss(logits, teacher_target, distillation, tau)
    terms["loss"] = 0.5 * terms["cls"] + 0.5 * terms["dist"]
    return terms
