"""What the optimizer updates and how: the student with its aligners, timm's optimizer (AdamW by default, with the
learning rate scaled to the batch), the per-update cosine schedule, the fp16 loss scaler and the EMA of the student."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from timm.optim import create_optimizer_v2
from timm.scheduler import create_scheduler_v2
from timm.utils import ModelEmaV3
from torch import nn

from distill.config import TrainConfig
from distill.models import Aligner
from distill.teacher_features import Pair


class Trainable(nn.Module):
    """Student plus aligners: what the optimizer updates and the checkpoint stores."""

    def __init__(self, model: nn.Module, aligners: nn.ModuleDict) -> None:
        super().__init__()
        self.model = model
        self.aligners = aligners

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        own = getattr(self.model, "no_weight_decay", None)  # timm's convention; CNNs have none
        return {f"model.{n}" for n in own()} if callable(own) else set()


def make_aligners(pairs: list[Pair], model: nn.Module) -> nn.ModuleDict:
    """One aligner per pair (a DearKD student's; none for other students)."""
    return nn.ModuleDict({p.key: Aligner(model.embed_dim, p.stage.channels, tuple(model.grid_size)) for p in pairs})


@dataclass
class Optimization:
    """The optimizer and what steps with it; `state_dict` / `load_state_dict` are the checkpoint's part of them."""

    optimizer: torch.optim.Optimizer
    scheduler: Any  # timm scheduler, stepped per update
    scaler: torch.amp.GradScaler
    ema: ModelEmaV3 | None
    lr: float

    def state_dict(self) -> dict[str, Any]:
        return {"optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                "scaler": self.scaler.state_dict(), "ema": self.ema.module.state_dict() if self.ema else None}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        if self.ema is not None:
            self.ema.module.load_state_dict(state["ema"])


def build_optimization(cfg: TrainConfig, trainable: Trainable, steps_per_epoch: int,
                       amp_dtype: torch.dtype | None) -> Optimization:
    """timm's optimizer over the student and aligners (no weight decay on embeddings and MHCA's positional
    parameters), a cosine schedule over all epochs with warmup, stepped per update; --lr scaled by
    batch / lr_base_size."""
    lr = cfg.lr * cfg.batch_size / cfg.lr_base_size if cfg.lr_base_size else cfg.lr
    optimizer = create_optimizer_v2(trainable, opt=cfg.opt, lr=lr, weight_decay=cfg.weight_decay, eps=cfg.opt_eps)
    scheduler, _ = create_scheduler_v2(optimizer, sched="cosine", num_epochs=cfg.epochs, min_lr=cfg.min_lr,
                                       warmup_lr=cfg.warmup_lr, warmup_epochs=cfg.warmup_epochs,
                                       step_on_epochs=False, updates_per_epoch=steps_per_epoch)
    device_type = next(trainable.parameters()).device.type
    scaler = torch.amp.GradScaler(device_type, enabled=amp_dtype == torch.float16)
    ema = ModelEmaV3(trainable.model, decay=cfg.ema_decay, use_warmup=cfg.ema_warmup) if cfg.ema else None
    return Optimization(optimizer, scheduler, scaler, ema, lr)
