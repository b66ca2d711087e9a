"""Training the bundled digits teacher (dfgen.zoo.digits): augmentation, the training loop, BatchNorm
recalibration, and the command that reproduces the shipped weights file byte for byte:

    python -m dfgen.zoo.digits_training --out digits_cnn.pt [--seed 0] [--epochs N]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from dfgen.zoo.digits import (
    DEFAULT_EPOCHS,
    DEFAULT_TRAIN_THREADS,
    DIGITS_WEIGHTS_SHA256,
    DigitsNet,
    DigitsSplit,
    evaluate,
    load_digits_split,
    normalize,
    state_dict_bytes,
)


def _pixel_stats(images: torch.Tensor) -> tuple[float, float]:
    """Pixel mean/std of a set of [0, 1] images (how DIGITS_MEAN / DIGITS_STD were obtained)."""
    return float(images.mean()), float(images.std())


def _augment(images: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Random shift (+-3 px), scale (0.9..1.1) and rotation (+-10 deg) of [0, 1] images.

    Mild geometric jitter only: it regularizes the teacher (smoother, better-calibrated features invert
    to more natural images) without changing the pixel statistics that BN records.
    """
    n = images.shape[0]
    side = images.shape[-1]
    angle = (torch.rand(n, generator=gen) * 2 - 1) * math.radians(10.0)
    scale = 0.9 + 0.2 * torch.rand(n, generator=gen)
    shift = (torch.rand(n, 2, generator=gen) * 2 - 1) * (3.0 * 2.0 / side)  # pixels -> grid units
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack(
        [torch.stack([cos, -sin, shift[:, 0]], dim=1), torch.stack([sin, cos, shift[:, 1]], dim=1)], dim=1
    )
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    # Zero padding is the digits' own background, so shifted-in borders look like real data.
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


@torch.no_grad()
def _recalibrate_bn(model: DigitsNet, images: torch.Tensor, batch_size: int = 256) -> None:
    """Reset BN running stats to the exact population statistics of the clean training images.

    During training they are an exponential average over augmented batches of a moving network; the
    exact clean-data statistics are a better target for BN-statistics matching in inversion.
    """
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    saved = [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over all batches below
    model.train()
    for start in range(0, len(images), batch_size):
        model(normalize(images[start : start + batch_size]))
    for m, momentum in zip(bns, saved, strict=True):
        m.momentum = momentum
    model.eval()


def train_digits_teacher(
    seed: int = 0,
    epochs: int = DEFAULT_EPOCHS,
    batch_size: int = 64,
    lr: float = 3e-3,
    weight_decay: float = 5e-2,
    label_smoothing: float = 0.1,
    split: DigitsSplit | None = None,
    recalibrate_bn: bool = True,
    num_threads: int | None = DEFAULT_TRAIN_THREADS,
    log: Callable[[str], None] | None = None,
) -> DigitsNet:
    """Train the digits teacher on the training split, deterministically on CPU.

    All randomness (init, batch order, augmentation) comes from `seed`; the caller's global RNG state
    is left untouched. AdamW + per-step cosine with a short linear warm-up, label smoothing and mild
    geometric augmentation. Runs with `num_threads` torch threads (None: leave as is); the result is
    bit-identical for the same seed, thread count, torch build and CPU. Returns the model in eval mode.
    """
    split = split if split is not None else load_digits_split()
    images, labels = split.train_images, split.train_labels
    deterministic_before = torch.are_deterministic_algorithms_enabled()
    threads_before = torch.get_num_threads()
    torch.use_deterministic_algorithms(True)
    if num_threads is not None:
        torch.set_num_threads(num_threads)
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = DigitsNet()
            gen = torch.Generator().manual_seed(seed)
            opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
            steps_per_epoch = math.ceil(len(labels) / batch_size)
            total = epochs * steps_per_epoch
            warmup = min(steps_per_epoch, total)

            def lr_factor(step: int) -> float:
                if step < warmup:
                    return (step + 1) / warmup
                return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(total - warmup, 1)))

            sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_factor)
            model.train()
            for epoch in range(epochs):
                order = torch.randperm(len(labels), generator=gen)
                loss_sum = 0.0
                for start in range(0, len(labels), batch_size):
                    idx = order[start : start + batch_size]
                    x = normalize(_augment(images[idx], gen))
                    loss = F.cross_entropy(model(x), labels[idx], label_smoothing=label_smoothing)
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
                    sched.step()
                    loss_sum += float(loss.detach()) * len(idx)
                if log is not None:
                    log(f"epoch {epoch + 1}/{epochs} loss {loss_sum / len(labels):.4f}")
        if recalibrate_bn:
            _recalibrate_bn(model, images)
    finally:
        torch.use_deterministic_algorithms(deterministic_before)
        torch.set_num_threads(threads_before)
    model.eval()
    return model


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m dfgen.zoo.digits_training",
        description="Retrain the bundled digits teacher and write its weights (a plain state_dict).",
    )
    parser.add_argument("--out", required=True, type=Path, help="where to write the weights (.pt)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=DEFAULT_EPOCHS)
    parser.add_argument(
        "--threads",
        type=int,
        default=DEFAULT_TRAIN_THREADS,
        help="torch CPU threads for training (the weights' bits depend on it)",
    )
    parser.add_argument("--verbose", action="store_true", help="log the loss per epoch to stderr")
    args = parser.parse_args(argv)
    if args.epochs < 1:
        parser.error("--epochs must be >= 1")
    if args.threads < 1:
        parser.error("--threads must be >= 1")

    split = load_digits_split()
    t0 = time.perf_counter()
    log = (lambda msg: print(msg, file=sys.stderr, flush=True)) if args.verbose else None
    model = train_digits_teacher(seed=args.seed, epochs=args.epochs, split=split, num_threads=args.threads, log=log)
    seconds = time.perf_counter() - t0
    data = state_dict_bytes(model)
    out: Path = args.out
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, out)  # atomic: a killed run never leaves a half-written weights file
    sha = hashlib.sha256(data).hexdigest()
    result = {
        "out": str(out),
        "seed": args.seed,
        "epochs": args.epochs,
        "train_acc": round(evaluate(model, split.train_images, split.train_labels), 4),
        "test_acc": round(evaluate(model, split.test_images, split.test_labels), 4),
        "sha256": sha,
        "matches_bundled": sha == DIGITS_WEIGHTS_SHA256,
        "bytes": len(data),
        "train_seconds": round(seconds, 1),
        "threads": args.threads,
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
