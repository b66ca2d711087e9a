"""One training epoch (DeiT's engine, a flat loop): the student's forward, its loss (DearKD's or plain KD), the
optimizer step, the schedule and EMA updates, and the epoch's loss terms summed over ranks. Evaluation is
`distill.evaluation`."""

from __future__ import annotations

import gc
import math
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from timm.utils import dispatch_clip_grad
from torch import nn
from tqdm.auto import tqdm

from distill.distributed import autocast
from distill.errors import DistillError
from distill.losses import dearkd_loss, distillation_target, kd_loss, mix_targets
from distill.pipeline import ShardHealth
from distill.teacher_features import Pair, TeacherFeatures, match_size


class StudentForward(nn.Module):
    """Makes `DearKD.forward_with_tokens` the module's forward, so DDP sees exactly one call per step (and syncs
    gradients) whether or not block tokens are wanted. Any other student's forward is its own (one tensor of
    logits, or a distilled ViT's two)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor, blocks: tuple[int, ...] = ()) -> tuple[Any, dict[int, torch.Tensor]]:
        if blocks:
            return self.model.forward_with_tokens(x, blocks)
        return self.model(x), {}


@dataclass
class EpochContext:
    """What a training epoch needs besides the data."""

    student: nn.Module  # StudentForward, DDP-wrapped under torchrun
    model: nn.Module  # the bare student (EMA source)
    optimizer: torch.optim.Optimizer
    scheduler: Any  # timm scheduler, stepped per update
    criterion: nn.Module
    device: torch.device
    amp_dtype: torch.dtype | None = None  # autocast dtype; None: fp32
    scaler: torch.amp.GradScaler | None = None
    mixup: Any = None  # distill.losses.PairedMixup or None
    stage: int = 1
    teacher: TeacherFeatures | None = None  # stage 1 online; None in stage 2 and with stored soft labels
    distillation: str = "hard"  # "hard" or "soft" (at tau)
    tau: float = 1.0
    aligners: nn.ModuleDict | None = None
    pairs: tuple[Pair, ...] = ()
    hidden_weight: float = 1.0
    health: ShardHealth | None = None  # counts the corrupt shards the loader workers report
    num_sources: int = 1
    clip_grad: float | None = None
    ema: Any = None  # timm ModelEmaV3 or None
    world_size: int = 1

    def drop_teacher(self) -> None:
        """Stage 2: the teacher's hooks go and its memory is freed (this context holds the run's only reference)."""
        self.teacher.remove_hooks()
        self.teacher = None
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()


def _sync_grads(module: nn.Module, world_size: int) -> None:
    """Average the aligners' gradients over ranks (they live outside the DDP-wrapped student, which lets stage 2
    drop them without re-wrapping the student)."""
    grads = [p.grad for p in module.parameters() if p.grad is not None]
    if world_size <= 1 or not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= world_size
    offset = 0
    for g in grads:
        g.copy_(flat[offset:offset + g.numel()].view_as(g))
        offset += g.numel()


def train_one_epoch(ctx: EpochContext, loader: Iterable, steps: int, num_updates: int, desc: str = "",
                    progress: bool = True) -> tuple[dict[str, Any], int]:
    """Train for one epoch of `steps` batches. Returns (mean loss terms over all ranks, lr, throughput, steps) and
    the updated number of optimizer updates."""
    stage1 = ctx.stage == 1
    hidden = stage1 and ctx.teacher is not None and ctx.aligners is not None  # the aligners need teacher maps
    blocks = tuple(sorted({p.block for p in ctx.pairs})) if hidden else ()
    ctx.student.train()
    if ctx.aligners is not None:
        ctx.aligners.train(bool(blocks))
    params = [p for group in ctx.optimizer.param_groups for p in group["params"]]
    sums: dict[str, torch.Tensor] = {}
    per_source = torch.zeros(ctx.num_sources, dtype=torch.float64)
    seen = done = 0
    bar = tqdm(total=steps, desc=desc, disable=not progress, leave=True, dynamic_ncols=True)
    start = time.perf_counter()
    for batch in loader:
        if ctx.health is not None:
            ctx.health.absorb(batch["bad"])
        per_source += torch.bincount(batch["source"], minlength=ctx.num_sources).double()
        images = batch["image"].to(ctx.device, non_blocking=True)
        labels = batch["label"].to(ctx.device, non_blocking=True)
        target, lam = labels, None
        if ctx.mixup is not None:
            images, target, lam = ctx.mixup.mix(images, labels)
        teacher_target = None
        if stage1 and ctx.teacher is not None:
            # the teacher labels the same (augmented, mixed) batch the student sees: DeiT distillation
            teacher_logits, maps = ctx.teacher(images)
            teacher_target = distillation_target(teacher_logits, ctx.distillation, ctx.tau)
        elif stage1:
            # stored soft labels: the teacher's logits on the unaugmented image or on the stored view the loader
            # replayed, mixed as the images are
            stored = batch["soft"].to(ctx.device, non_blocking=True)
            teacher_target = distillation_target(stored, ctx.distillation, ctx.tau)
            if lam is not None:
                teacher_target = mix_targets(teacher_target, lam)
        with autocast(ctx.device, ctx.amp_dtype):
            outputs, tokens = ctx.student(images, blocks)
            student_maps = [ctx.aligners[p.key](tokens[p.block]) for p in ctx.pairs] if blocks else []
        teacher_maps: list[torch.Tensor] = []
        if blocks:
            teacher_maps = [match_size(maps[p.stage.name], tuple(m.shape[-2:]))
                            for p, m in zip(ctx.pairs, student_maps, strict=True)]
        if isinstance(outputs, torch.Tensor):  # a one-head student: plain KD
            terms = kd_loss(outputs, target, ctx.criterion, teacher_target, ctx.distillation, ctx.tau)
        else:
            terms = dearkd_loss(outputs, target, ctx.criterion, teacher_target, student_maps, teacher_maps,
                                ctx.hidden_weight, ctx.distillation, ctx.tau)
        loss = terms["loss"]

        ctx.optimizer.zero_grad(set_to_none=True)
        scaler = ctx.scaler
        if scaler is not None and scaler.is_enabled():
            scaler.scale(loss).backward()
        else:
            loss.backward()
        if blocks:
            _sync_grads(ctx.aligners, ctx.world_size)
        if ctx.clip_grad:
            if scaler is not None and scaler.is_enabled():
                scaler.unscale_(ctx.optimizer)
            dispatch_clip_grad(params, ctx.clip_grad, mode="norm")
        if scaler is not None and scaler.is_enabled():
            scaler.step(ctx.optimizer)
            scaler.update()
        else:
            ctx.optimizer.step()
        num_updates += 1
        ctx.scheduler.step_update(num_updates=num_updates)
        if ctx.ema is not None:
            ctx.ema.update(ctx.model, step=num_updates)

        size = images.shape[0]
        for name, value in terms.items():
            sums[name] = sums.get(name, 0.0) + value.detach().float() * size
        seen += size
        done += 1
        bar.update(1)
        if ctx.device.type == "cpu" or done % 20 == 0:  # a host sync per step costs little on CPU only
            value = float(loss.detach())
            if not math.isfinite(value):
                raise DistillError(f"the training loss became {value} at update {num_updates}; lower --lr or "
                                   "set clip_grad in the config")
            bar.set_postfix(loss=f"{value:.4f}", lr=f"{ctx.optimizer.param_groups[0]['lr']:.2e}")
    bar.close()
    elapsed = time.perf_counter() - start

    names = sorted(sums)
    totals = torch.stack([sums[n] for n in names] + [torch.tensor(float(seen), device=ctx.device)]
                         + [c.to(ctx.device, torch.float32) for c in per_source])
    steps_done = torch.tensor([done], device=ctx.device)
    rank_steps = [done]
    if ctx.world_size > 1:
        dist.all_reduce(totals)
        gathered = [torch.zeros_like(steps_done) for _ in range(ctx.world_size)]
        dist.all_gather(gathered, steps_done)
        rank_steps = [int(s) for s in gathered]
    totals, per_source = totals[:len(names) + 1].cpu(), totals[len(names) + 1:].cpu()
    count = float(totals[-1])
    stats: dict[str, Any] = {f"loss_{n}" if n != "loss" else "loss": float(totals[i]) / max(count, 1.0)
                             for i, n in enumerate(names)}
    for name, value in stats.items():
        if not math.isfinite(value):
            raise DistillError(f"the training loss ({name}) became {value}; lower --lr or set clip_grad in the config")
    stats.update(lr=ctx.optimizer.param_groups[0]["lr"], images_per_s=count / max(elapsed, 1e-9),
                 epoch_seconds=elapsed, rank_steps=rank_steps)
    if ctx.num_sources > 1:  # the share of each --shards source in this epoch's images, as drawn
        stats["mix"] = [round(float(c) / max(float(per_source.sum()), 1.0), 4) for c in per_source]
    return stats, num_updates
