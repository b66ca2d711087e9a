"""Real image sets in the SPEC section 3 format, the reference side of every benchmark: the same
shards, index and dataset.json as a synthetic set, with `"kind": "real"`."""

from __future__ import annotations

import datetime as _dt
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dfgen import __version__
from dfgen.shards import Sample, build_index, encode_image, image_key, write_json_atomic, write_shard


def write_image_dataset(
    out: Path,
    images: torch.Tensor,
    labels: torch.Tensor,
    description: dict[str, Any],
    shard_size: int = 1000,
    fmt: str = "png",
) -> Path:
    """Write uint8 (N, C, H, W) images with int labels as shards + index.json + dataset.json."""
    out = Path(out)
    (out / "shards").mkdir(parents=True, exist_ok=True)
    n = int(images.shape[0])
    sidecars = []
    for shard in range(math.ceil(n / shard_size)):
        indices = range(shard * shard_size, min(n, (shard + 1) * shard_size))
        samples = [
            Sample(
                key=image_key(i),
                image=encode_image(images[i].numpy(), fmt),
                label=int(labels[i]),
                meta={"index": i, "label": int(labels[i])},
            )
            for i in indices
        ]
        sidecars.append(write_shard(out, shard, samples, fmt, {"first_index": indices.start,
                                                               "last_index": indices.stop - 1}))
    num_classes = int(description.get("num_classes", int(labels.max()) + 1))
    dataset = {
        "kind": "real",
        "tool": "dfgen",
        "version": __version__,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "n": n,
        "num_classes": num_classes,
        "classes": [str(i) for i in range(num_classes)],
        "class_counts": np.bincount(labels.numpy(), minlength=num_classes).tolist(),
        "in_chans": int(images.shape[1]),
        "image_size": [int(v) for v in images.shape[1:]],
        "num_shards": len(sidecars),
        "shard_size": shard_size,
        "format": fmt,
        **description,
    }
    write_json_atomic(out / "index.json", build_index(sidecars, name=out.name))
    write_json_atomic(out / "dataset.json", dataset)
    return out


def export_digits(out: Path) -> list[Path]:
    """scikit-learn's digits at 32x32, one channel, in the bundled teacher's fixed split."""
    from dfgen.zoo.digits import SPLIT_RANDOM_STATE, SPLIT_TEST_SIZE, load_digits_split

    split = load_digits_split()
    written = []
    for part, images, labels in (
        ("train", split.train_images, split.train_labels),
        ("test", split.test_images, split.test_labels),
    ):
        pixels = (images.clamp(0, 1) * 255).round().to(torch.uint8)
        description = {
            "source": "sklearn.datasets.load_digits, upsampled 8x8 -> 32x32 (bilinear)",
            "split": {"part": part, "test_size": SPLIT_TEST_SIZE, "random_state": SPLIT_RANDOM_STATE,
                      "stratify": True},
            "num_classes": 10,
        }
        written.append(write_image_dataset(Path(out) / part, pixels, labels, description))
    return written
