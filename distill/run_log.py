"""The log of a run directory: metrics.jsonl (one JSON line per epoch) and curves.png, both written atomically."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from distill.checkpoint import write_atomic


def read_metrics(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def write_metrics(path: Path, records: list[dict[str, Any]]) -> None:
    text = "".join(json.dumps(r) + "\n" for r in records)
    write_atomic(path, lambda handle: handle.write(text.encode()))


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
