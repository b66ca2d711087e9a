"""Plain knowledge distillation (Hinton et al. 2015), the literature's way to test a data-free set: a student learns
a teacher's soft predictions on the synthetic images, then is tested on the real test split.

Recipe (`kd_train`): the teacher is online and frozen (eval mode: its BatchNorm running statistics) and sees the
same augmented batch as the student; loss = T^2 * KL(softmax(teacher / T) || softmax(student / T)) + ce_weight *
CE(student, label) (label: the synthesis target, or the real label); AdamW (lr 5e-3, weight decay 1e-4) at batch
128 under torch's one-cycle schedule (15% warm-up, cosine); random shifts of up to 2 px with black fill, no flips;
both networks take the teacher's normalization (its mean/std from the dataset.json teacher entry, or given).
`cutmix=True` pastes a random box of another image of the batch into each image (the box's area uniform in [0, 1])
before both networks see it: with the teacher online the pasted image is a new input with its own soft target, so a
small synthetic set covers more of the input space (on 1,000 MNIST images: 91.6% -> 94.4% at 700 steps, 96.7% at
2,100). `affine=True` replaces the integer shifts with random affine warps (rotation up to 15 degrees, zoom 0.9-1.1,
shear, the same 2 px shift; bilinear): with cutmix at 7,000 steps on those images 98.05% -> 98.26%. `flip=True`
mirrors each image left-right with probability 1/2 (natural images such as CIFAR-10's; never digits). Seeded: the
student's initial weights, the order, the shifts, warps and boxes all come from `seed`.

Training images come from a dfgen dataset directory (synthetic shards or `dfgen export-real`; all decoded into one
tensor: 24k images of 28x28 take 19 MB) or from tensors; `real_subset` gives the real-data reference rows (the
whole train split, or a stratified fraction such as 1%)."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from benchmarks.real_training import (
    EVAL_BATCH,
    Factory,
    batches,
    build_model,
    model_input,
    one_cycle,
    random_shift,
    resolve_factory,
)
from dfgen.zoo.digits import evaluate

Source = str | Path | list[str | Path] | tuple[torch.Tensor, torch.Tensor]  # a list: several sets, concatenated


def teacher_normalization(path: str | Path) -> tuple[tuple[float, ...], tuple[float, ...]] | None:
    """(mean, std) from a dataset.json teacher entry (what `dfgen synthesize` records), or None."""
    from dfgen.dataset import read_description

    config = (read_description(path).get("teacher") or {}).get("data_config") or {}
    if config.get("mean") and config.get("std"):
        return tuple(config["mean"]), tuple(config["std"])
    return None


def read_source(source: Source) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 (N, C, H, W) images and int64 labels from a dataset directory, a list of them (concatenated: a
    two-round synthetic set) or an (images, labels) pair."""
    if isinstance(source, list):
        parts = [read_source(part) for part in source]
        return torch.cat([images for images, _ in parts]), torch.cat([labels for _, labels in parts])
    if isinstance(source, (str, Path)):
        from dfgen.realdata import read_image_dataset

        return read_image_dataset(Path(source))
    images, labels = source
    if images.dtype != torch.uint8 or images.ndim != 4 or len(images) != len(labels):
        raise ValueError(f"expected uint8 (N, C, H, W) images and N labels, got {images.dtype} "
                         f"{tuple(images.shape)} and {len(labels)} labels")
    return images, labels.long()


def real_subset(images: torch.Tensor, labels: torch.Tensor, fraction: float = 1.0,
                seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """The real-data reference: all of a train split, or a stratified deterministic `fraction` (0.01: 1%)."""
    if fraction >= 1:
        return images, labels
    from dfgen.realdata import stratified_indices

    keep = stratified_indices(labels, fraction, seed)
    return images[keep], labels[keep]


def cutmix_batch(pixels: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Each image of a (N, C, H, W) batch with a box from another image of the batch pasted in: box area a share
    u ~ U(0, 1) of the image (sides sqrt(u) times the image's), centre uniform, clipped at the border."""
    n, _, h, w = pixels.shape
    partner = torch.randperm(n, generator=generator)
    side = torch.rand(n, generator=generator).sqrt()
    cy = torch.randint(0, h, (n,), generator=generator)
    cx = torch.randint(0, w, (n,), generator=generator)
    half_h, half_w = (side * h / 2).long(), (side * w / 2).long()
    rows, cols = torch.arange(h), torch.arange(w)
    inside_rows = (rows[None] >= cy[:, None] - half_h[:, None]) & (rows[None] < cy[:, None] + half_h[:, None])
    inside_cols = (cols[None] >= cx[:, None] - half_w[:, None]) & (cols[None] < cx[:, None] + half_w[:, None])
    box = (inside_rows[:, :, None] & inside_cols[:, None, :])[:, None]  # (N, 1, H, W)
    return torch.where(box, pixels[partner], pixels)


def random_flip(pixels: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Each image of a (N, C, H, W) batch mirrored left-right with probability 1/2."""
    flip = torch.rand(len(pixels), generator=generator) < 0.5
    return torch.where(flip[:, None, None, None], pixels.flip(-1), pixels)


def random_affine(pixels: torch.Tensor, generator: torch.Generator, degrees: float = 15.0, scale: float = 0.1,
                  shear: float = 0.15, max_shift: int = 2) -> torch.Tensor:
    """Each image of a (N, C, H, W) batch under its own random affine map (bilinear, black fill): rotation in
    [-degrees, degrees], zoom in [1 - scale, 1 + scale], shear in [-shear, shear] and a shift of up to `max_shift`
    pixels on each axis. With the teacher online every warped image gets its own soft target."""
    n, _, h, w = pixels.shape
    angle = (torch.rand(n, generator=generator) * 2 - 1) * math.radians(degrees)
    zoom = 1 + (torch.rand(n, generator=generator) * 2 - 1) * scale
    skew = (torch.rand(n, generator=generator) * 2 - 1) * shear
    shift = (torch.rand(n, 2, generator=generator) * 2 - 1) * max_shift * 2 / torch.tensor([w, h])
    cos, sin = torch.cos(angle) / zoom, torch.sin(angle) / zoom  # the grid maps output to input: zoom divides
    theta = torch.stack([torch.stack([cos, skew - sin, shift[:, 0]], 1), torch.stack([sin, cos, shift[:, 1]], 1)], 1)
    grid = F.affine_grid(theta, list(pixels.shape), align_corners=False)
    return F.grid_sample(pixels, grid, padding_mode="zeros", align_corners=False)


def kd_train(
    student_factory: str | Factory,
    teacher_model: nn.Module,
    train_source: Source,
    test_source: Source,
    epochs: int,
    temperature: float = 4.0,
    seed: int = 0,
    *,
    mean: float | tuple[float, ...] | None = None,
    std: float | tuple[float, ...] | None = None,
    ce_weight: float = 0.0,
    lr: float = 5e-3,
    weight_decay: float = 1e-4,
    batch_size: int = 128,
    max_shift: int = 2,
    cutmix: bool = False,
    affine: bool = False,
    flip: bool = False,
    steps: int | None = None,
    student_kwargs: dict[str, Any] | None = None,
    log: Callable[[str], None] | None = None,
    save_to: str | Path | None = None,
) -> float:
    """Distill `student_factory` from `teacher_model` on `train_source` for `epochs` epochs; returns the student's
    top-1 (a fraction) on `test_source`. mean/std default to the train_source's dataset.json teacher entry.
    The recipe is in the module docstring. An epoch is one pass over the training images (a 1% subset needs
    proportionally more epochs for the same number of steps); `steps` instead stops after that many optimizer
    steps (the last epoch cut short), so rows on sets of different sizes get the same budget. `save_to` keeps the
    trained student's state dict (e.g. as the competitor of a second synthesis round)."""
    if mean is None or std is None:
        recorded = teacher_normalization(train_source) if isinstance(train_source, (str, Path)) else None
        if recorded is None:
            raise ValueError("no teacher normalization: give mean and std (the train source has no dataset.json "
                             "teacher entry)")
        mean, std = recorded
    images, labels = read_source(train_source)
    test_images, test_labels = read_source(test_source)
    factory, name = resolve_factory(student_factory)
    student = build_model(factory, student_kwargs, seed).to(memory_format=torch.channels_last).train()
    teacher_was_training = teacher_model.training
    teacher_model.eval()
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.AdamW(student.parameters(), lr=lr, weight_decay=weight_decay)
    steps_per_epoch = max(1, len(labels) // batch_size)  # as batches() makes them
    total_steps = steps if steps is not None else epochs * steps_per_epoch
    epochs = -(-total_steps // steps_per_epoch)
    schedule = one_cycle(optimizer, lr, total_steps)
    t2 = temperature * temperature
    try:
        for epoch in range(epochs):
            start, total = time.perf_counter(), 0.0
            for index in batches(len(labels), batch_size, generator)[:total_steps - epoch * steps_per_epoch]:
                pixels = images[index].float() / 255
                pixels = (random_affine(pixels, generator, max_shift=max_shift) if affine
                          else random_shift(pixels, max_shift, generator))
                pixels = random_flip(pixels, generator) if flip else pixels
                inputs = model_input(cutmix_batch(pixels, generator) if cutmix else pixels, mean, std)
                with torch.no_grad():
                    soft = F.log_softmax(teacher_model(inputs) / temperature, dim=1)
                logits = student(inputs)
                loss = t2 * F.kl_div(F.log_softmax(logits / temperature, dim=1), soft, reduction="batchmean",
                                     log_target=True)
                if ce_weight:
                    loss = loss + ce_weight * F.cross_entropy(logits, labels[index])
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                schedule.step()
                total += loss.item()
            if log is not None:
                log(f"kd {name} epoch {epoch + 1}/{epochs}: loss {total / steps_per_epoch:.4f}, "
                    f"{time.perf_counter() - start:.1f} s")
    finally:
        teacher_model.train(teacher_was_training)
    if save_to is not None:
        torch.save(student.state_dict(), save_to)
    return evaluate(student, test_images, test_labels, EVAL_BATCH, mean=mean, std=std)
