"""The log of a run: config.json, metrics.jsonl (one JSON line per epoch), summary.csv (the same epochs in timm's
columns) and curves.png in its directory, all written atomically; TensorBoard event files under tensorboard/ where
the `tensorboard` package is installed (nothing otherwise); and the lines it prints (what is trained on what, one
summary per epoch)."""

from __future__ import annotations

import csv
import dataclasses
import io
import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from dfgen.atomic import write_atomic
from distill.config import TrainConfig
from distill.sources import Source
from distill.teacher_features import Pair


def write_config(out: Path, cfg: TrainConfig) -> None:
    """config.json: every setting of the run, for a reader (--resume compares the checkpoint's copy)."""
    text = json.dumps(dataclasses.asdict(cfg), indent=1, sort_keys=True) + "\n"
    write_atomic(out / "config.json", lambda handle: handle.write(text.encode()))


def read_metrics(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def write_metrics(path: Path, records: list[dict[str, Any]]) -> None:
    """metrics.jsonl, and summary.csv beside it: both rewritten whole, so a resumed run's files hold each epoch
    once."""
    text = "".join(json.dumps(r) + "\n" for r in records)
    write_atomic(path, lambda handle: handle.write(text.encode()))
    write_summary(path.parent / SUMMARY_FILE, records)


SUMMARY_FILE = "summary.csv"
# timm's summary.csv columns (train.py: train_ + its training metrics, eval_ + its validation metrics, lr), from
# the metrics record's fields; the EMA's columns only in a run with an EMA
SUMMARY_COLUMNS = {"epoch": "epoch", "train_loss": "loss", "eval_loss": "val_loss", "eval_top1": "val_top1",
                   "eval_top5": "val_top5", "lr": "lr"}
EMA_COLUMNS = {"ema_eval_loss": "ema_val_loss", "ema_eval_top1": "ema_val_top1", "ema_eval_top5": "ema_val_top5"}


def write_summary(path: Path, records: list[dict[str, Any]]) -> None:
    """summary.csv: one row per epoch (epochs counted from 1, as in metrics.jsonl); the eval_ cells of an epoch
    without validation (--eval-every) are empty."""
    columns = dict(SUMMARY_COLUMNS)
    if any("ema_val_top1" in r for r in records):
        columns.update(EMA_COLUMNS)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(columns)
    for record in records:
        writer.writerow(["" if record.get(field) is None else record[field] for field in columns.values()])
    write_atomic(path, lambda handle: handle.write(buffer.getvalue().encode()))


class TensorBoardLog:
    """Each epoch's numbers as TensorBoard scalars, under RUN_DIR/tensorboard (`tensorboard --logdir RUN_DIR`)."""

    def __init__(self, writer: Any) -> None:
        self.writer = writer

    def add(self, record: dict[str, Any]) -> None:
        epoch = record["epoch"]
        for key, value in record.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool) and key != "epoch":
                group = "val" if "val_" in key else "train"
                self.writer.add_scalar(f"{group}/{key}", value, epoch)
        for block, distance in enumerate(record.get("attn_distance") or []):
            self.writer.add_scalar(f"attention_distance/block{block}", distance, epoch)
        self.writer.flush()  # a killed run keeps its epochs

    def close(self) -> None:
        self.writer.close()


def open_tensorboard(out: Path) -> TensorBoardLog | None:
    """A TensorBoard log in `out`, or None where the `tensorboard` package is not installed (an optional extra:
    pip install 'dfgen[tensorboard]')."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    return TensorBoardLog(SummaryWriter(log_dir=str(out / "tensorboard")))


def plot_curves(records: list[dict[str, Any]], path: Path, stage1_epochs: int) -> None:
    """curves.png: loss terms, accuracy and the per-block attention distance over epochs."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [r["epoch"] for r in records]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    for key in ("loss", "loss_cls", "loss_dist", "loss_hidden"):
        points = [(r["epoch"], r[key]) for r in records if r.get(key) is not None]
        if points:
            axes[0].plot(*zip(*points, strict=True), marker=".", label=key)
    axes[0].set_title("training loss")
    for key in ("val_top1", "val_top5", "ema_val_top1"):
        points = [(r["epoch"], r[key]) for r in records if r.get(key) is not None]
        if points:
            axes[1].plot(*zip(*points, strict=True), marker=".", label=key)
    axes[1].set_title("validation accuracy (%)")
    dists = [r.get("attn_distance") for r in records]
    if dists and all(dists):
        for block in range(len(dists[0])):
            axes[2].plot(epochs, [d[block] for d in dists], label=f"block {block}")
    axes[2].set_title("average attention distance (px)")
    for ax in axes:
        ax.set_xlabel("epoch")
        if 0 < stage1_epochs < max(epochs, default=0):
            ax.axvline(stage1_epochs + 0.5, color="grey", linestyle=":", linewidth=1)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    fig.tight_layout()
    write_atomic(path, lambda handle: fig.savefig(handle, format="png", dpi=80))
    plt.close(fig)


def summary_line(r: dict[str, Any], epochs: int) -> str:
    """One line per epoch for the console."""
    terms = " ".join(f"{k.removeprefix('loss_')} {r[k]:.4f}" for k in ("loss_cls", "loss_dist", "loss_hidden")
                     if k in r)
    text = (f"epoch {r['epoch']}/{epochs} stage {r['stage']}: loss {r['loss']:.4f} ({terms}) lr {r['lr']:.2e} "
            f"{r['images_per_s']:.0f} img/s")
    if "mix" in r:
        text += " mix " + "/".join(f"{m:.2f}" for m in r["mix"])
    if r.get("bad_shards"):
        text += f" bad shards {r['bad_shards']}"
    if "val_top1" in r:
        text += f" val top1 {r['val_top1']:.2f}% top5 {r['val_top5']:.2f}%"
    if "ema_val_top1" in r:
        text += f" (EMA {r['ema_val_top1']:.2f}%)"
    if "attn_distance" in r:
        text += " attn " + "/".join(f"{d:.1f}" for d in r["attn_distance"])
    return text


def startup_line(cfg: TrainConfig, model: nn.Module, infos: list[Source], steps: int, world_size: int,
                 device: torch.device, lr: float, teacher_name: str | None, pairs: list[Pair]) -> str:
    """What the run trains: the student, the data, the schedule, the processes, the teacher and the aligned pairs."""
    in_chans, height, width = model.pretrained_cfg["input_size"]  # as built (distill.student.fit_data_config)
    sources = " + ".join(f"{i.name} ({i.kind}, {i.n})" for i in infos)
    stored = cfg.soft_labels == "stored"
    return (f"distill: {cfg.model} ({sum(p.numel() for p in model.parameters()) / 1e6:.2f}M params, "
            f"{in_chans}x{height}x{width}, {model.num_classes} classes)"
            f" on {sources}" + (f" mixed {'/'.join(f'{m:g}' for m in cfg.mix)}" if cfg.mix else "")
            + f", {steps} steps/epoch x {cfg.epochs} epochs (stage 1: {cfg.stage1_epochs}), batch "
            f"{cfg.batch_size} on {world_size} process(es), {device}, lr {lr:.2e}"
            + (f", teacher {teacher_name}" if teacher_name else "")
            + (", stored soft labels" if stored and cfg.stage1_epochs else "")
            + (f" ({max(i.soft_views for i in infos)} stored views per image)"
               if stored and cfg.stage1_epochs and cfg.stored_views and any(i.soft_views for i in infos) else "")
            + "".join(f", align block {p.block} <- {p.stage.name} ({p.stage.channels}x{p.stage.hw[0]}x"
                      f"{p.stage.hw[1]})" for p in pairs))
