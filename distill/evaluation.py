"""Evaluation of a student: top-1/top-5 and cross-entropy of the averaged heads in one pass (the student and its EMA
together), summed over ranks, with a progress bar where asked (shown only on a terminal); the metrics record's
validation fields; and `distill eval` on a saved checkpoint."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from timm.data import resolve_data_config
from torch import nn
from tqdm.auto import tqdm

from distill.checkpoint import load_checkpoint, model_from_checkpoint
from distill.data import eval_loader, eval_transform, guarded
from distill.distributed import autocast, gather_objects
from distill.errors import DistillError
from distill.sources import check_labels, open_source


@torch.no_grad()
def evaluate(models: dict[str, nn.Module], loader: Iterable, device: torch.device,
             amp_dtype: torch.dtype | None = None, world_size: int = 1,
             skipped: dict[str, str] | None = None, progress: bool = False,
             desc: str = "evaluation") -> dict[str, dict[str, float]]:
    """Top-1 / top-5 accuracy (percent) and mean cross-entropy of the averaged heads of every model (e.g. the
    student and its EMA) in one pass over the data, summed over ranks: {name: {"top1", "top5", "loss", "n"}}.
    Batches are (images, labels) or, from `eval_loader`, (images, labels, unreadable images): those are left out
    of n and named in `skipped`. `progress`: a bar over the batches, on a terminal only."""
    modes = {name: model.training for name, model in models.items()}
    counts = {name: torch.zeros(4, dtype=torch.float64, device=device) for name in models}
    try:
        total = len(loader)  # type: ignore[arg-type]
    except TypeError:  # an iterable of unknown length
        total = None
    bar = tqdm(total=total, desc=desc, unit="batch", leave=False, dynamic_ncols=True,
               disable=None if progress else True)  # None: tqdm shows it only where stderr is a terminal
    try:
        for model in models.values():
            model.eval()
        for batch in guarded(loader, "evaluation"):
            bar.update()
            images, labels = batch[0], batch[1]
            if len(batch) > 2 and skipped is not None:
                skipped.update((item.name, item.reason) for item in batch[2])
            if images is None:
                continue
            images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
            for name, model in models.items():
                with autocast(device, amp_dtype):
                    logits = model(images)
                k = min(5, logits.shape[-1])
                hits = logits.float().topk(k, dim=-1).indices.eq(labels[:, None])
                loss = F.cross_entropy(logits.float(), labels, reduction="sum")
                counts[name] += torch.stack([hits[:, 0].sum(), hits.any(dim=-1).sum(),
                                             torch.tensor(labels.numel(), device=device), loss]).double()
    finally:
        bar.close()
        for name, model in models.items():
            model.train(modes[name])
    results = {}
    for name, count in counts.items():
        if world_size > 1:
            dist.all_reduce(count)
        n = int(count[2])
        results[name] = {"top1": 100.0 * float(count[0]) / max(n, 1), "top5": 100.0 * float(count[1]) / max(n, 1),
                         "loss": float(count[3]) / max(n, 1), "n": n}
    return results


def validate(model: nn.Module, ema: Any, loader: Iterable, device: torch.device, amp_dtype: torch.dtype | None,
             world_size: int = 1, max_bad_images: int = 10, progress: bool = False) -> dict[str, Any]:
    """The metrics record's validation fields: the student's top-1/top-5, loss and image count, its EMA's, and
    the images skipped as unreadable (all ranks'; more than `max_bad_images` stop the run)."""
    models = {"model": model, **({"ema": ema.module} if ema is not None else {})}
    skipped: dict[str, str] = {}
    results = evaluate(models, loader, device, amp_dtype, world_size, skipped, progress, "validation")
    for other in gather_objects(skipped, world_size):
        skipped.update(other)
    check_skipped(skipped, max_bad_images, results["model"]["n"])
    record = {"val_top1": results["model"]["top1"], "val_top5": results["model"]["top5"],
              "val_loss": results["model"]["loss"], "val_n": results["model"]["n"], "val_skipped": sorted(skipped)}
    if ema is not None:
        record.update(ema_val_top1=results["ema"]["top1"], ema_val_top5=results["ema"]["top5"],
                      ema_val_loss=results["ema"]["loss"])
    return record


def check_skipped(skipped: dict[str, str], limit: int, n: int) -> None:
    """Unreadable evaluation images: a warning naming them; an error past `limit`, or when none could be read."""
    if not skipped:
        return
    listed = ", ".join(sorted(skipped)[:5]) + (" ..." if len(skipped) > 5 else "")
    last = sorted(skipped)[-1]
    if n == 0:
        raise DistillError(f"none of the evaluation images could be read ({len(skipped)} unreadable: {listed}; "
                           f"{last}: {skipped[last]}); check the validation data")
    if len(skipped) > limit:
        raise DistillError(f"{len(skipped)} unreadable evaluation images ({listed}), more than the {limit} allowed "
                           f"(max_bad_images); {last}: {skipped[last]}. Fix or remove them")
    print(f"Warning: skipped {len(skipped)} unreadable evaluation image(s): {listed} ({last}: {skipped[last]})",
          file=sys.stderr, flush=True)


def evaluate_checkpoint(checkpoint: str | Path, data: str | Path, device: str = "auto", batch_size: int = 256,
                        workers: int | None = None, ema: bool = False, labels_file: str | None = None,
                        image_key: str | None = None, label_key: str = "cls",
                        max_bad_images: int = 10, progress: bool = False) -> dict[str, Any]:
    """Top-1/top-5 (percent) and image count of a checkpoint's student on a source (dfgen dataset, ImageFolder,
    .tar shards, or a flat directory with `labels_file`), with the student's own evaluation transform; inference
    averages the two heads. `progress`: a bar over the batches, on a terminal only."""
    ckpt = load_checkpoint(checkpoint)
    if device == "cuda" and not torch.cuda.is_available():
        raise DistillError("--device cuda was asked for, but no CUDA device is available; use --device cpu")
    dev = torch.device("cuda" if device == "cuda" or (device == "auto" and torch.cuda.is_available()) else "cpu")
    model = model_from_checkpoint(ckpt, ema=ema).to(dev)
    info = open_source(data, num_classes=model.num_classes, image_key=image_key, label_key=label_key,
                       labels_file=labels_file)
    if info.num_classes not in (None, model.num_classes):
        raise DistillError(f"{data} has {info.num_classes} classes, the checkpoint's student {model.num_classes}")
    check_labels(info, model.num_classes)
    in_chans = int(json.loads(ckpt["model_args"])["in_chans"])  # read by model_from_checkpoint: well-formed
    if info.kind == "shards" and info.in_chans not in (None, in_chans):
        raise DistillError(f"{data} holds {info.in_chans}-channel images, the checkpoint's student takes {in_chans}")
    workers = workers if workers is not None else (8 if dev.type == "cuda" else 0)
    loader = eval_loader(info, eval_transform(resolve_data_config({}, model=model)), in_chans, model.num_classes,
                         batch_size, workers)
    amp_dtype = torch.bfloat16 if dev.type == "cuda" else None
    skipped: dict[str, str] = {}
    result = evaluate({"model": model}, loader, dev, amp_dtype, skipped=skipped, progress=progress)["model"]
    check_skipped(skipped, max_bad_images, result["n"])
    return {k: result[k] for k in ("top1", "top5", "n")}
