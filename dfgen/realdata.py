"""Real image sets in dfgen's dataset format (dfgen.dataset), the reference side of every benchmark: the same
shards, index and dataset.json as a synthetic set, with `"kind": "real"`. Writing streams (one shard's raw
pixels in memory at a time, PNGs encoded as the tar is written); `read_image_dataset` reads any such set back."""

from __future__ import annotations

import datetime as _dt
import io
import itertools
import tarfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from dfgen import __version__
from dfgen.dataset import DATASET_FILE, IMAGE_EXTS, INDEX_FILE, SHARDS_DIR, build_index, open_dataset, split_key
from dfgen.errors import DfgenError
from dfgen.folder_guard import Maker, hold_folder, inspect_folder
from dfgen.shards import Sample, encode_image, image_key, write_json_atomic, write_shard


def write_image_stream(
    out: Path,
    samples: Iterable[tuple[np.ndarray, int]] | Iterable[tuple[np.ndarray, int, bytes]],
    description: dict[str, Any],
    shard_size: int = 1000,
    fmt: str = "png",
) -> Path:
    """Write (uint8 (C, H, W) array, label) pairs as shards + index.json + dataset.json, one shard at a time. A
    third item, the image already encoded in `fmt` (a source's JPEG file), is stored as it is instead of
    re-encoding the array. `out` must be empty or a set this function wrote (which it replaces); anything else is
    refused (dfgen.folder_guard)."""
    out = Path(out)
    maker = Maker("dfgen", "export", description.get("kind", "real"),
                  {key: description[key] for key in ("name", "source", "split") if key in description})
    with hold_folder(out, maker, compare_config=False):
        return _write_image_stream(out, samples, description, shard_size, fmt)


def _write_image_stream(out: Path, samples: Iterable[tuple[Any, ...]], description: dict[str, Any],
                        shard_size: int, fmt: str) -> Path:
    (out / SHARDS_DIR).mkdir(parents=True, exist_ok=True)
    stream: Iterator[tuple[Any, ...]] = iter(samples)
    sidecars: list[dict[str, Any]] = []
    counts: dict[int, int] = {}
    shape: tuple[int, ...] | None = None
    n = 0
    while chunk := list(itertools.islice(stream, shard_size)):
        for i, (pixels, label, *_) in enumerate(chunk, start=n):
            shape = shape or tuple(pixels.shape)
            if pixels.dtype != np.uint8 or tuple(pixels.shape) != shape or len(shape) != 3:
                raise DfgenError(f"image {i} is {pixels.dtype} {tuple(pixels.shape)}; every image must be uint8 "
                                 f"(C, H, W) of one shape ({shape})")
            counts[int(label)] = counts.get(int(label), 0) + 1
        encoded = (Sample(key=image_key(i), image=given[0] if given else encode_image(pixels, fmt),
                          label=int(label), meta={"index": i, "label": int(label)})
                   for i, (pixels, label, *given) in enumerate(chunk, start=n))
        sidecars.append(write_shard(out, len(sidecars), encoded, fmt,
                                    {"first_index": n, "last_index": n + len(chunk) - 1}))
        n += len(chunk)
    if shape is None:
        raise DfgenError(f"no images to write to {out}")
    _remove_stale_shards(out, len(sidecars))
    num_classes = int(description.get("num_classes", max(counts) + 1))
    dataset = {
        "kind": "real",
        "tool": "dfgen",
        "version": __version__,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "n": n,
        "num_classes": num_classes,
        "classes": [str(i) for i in range(num_classes)],
        "class_counts": [counts.get(c, 0) for c in range(num_classes)],
        "in_chans": int(shape[0]),
        "image_size": [int(v) for v in shape],
        "num_shards": len(sidecars),
        "shard_size": shard_size,
        "format": fmt,
        **description,
    }
    write_json_atomic(out / INDEX_FILE, build_index(sidecars, name=out.name))
    write_json_atomic(out / DATASET_FILE, dataset)
    return out


def _remove_stale_shards(out: Path, count: int) -> None:
    """A rewrite with fewer images must not leave the old run's later shards beside the new index."""
    for path in (out / SHARDS_DIR).glob("shard-*"):
        number = path.name.split(".")[0].removeprefix("shard-")
        if number.isdigit() and int(number) >= count:
            path.unlink()


def write_image_dataset(
    out: Path,
    images: torch.Tensor,
    labels: torch.Tensor,
    description: dict[str, Any],
    shard_size: int = 1000,
    fmt: str = "png",
) -> Path:
    """Write uint8 (N, C, H, W) images with int labels as shards + index.json + dataset.json."""
    if len(images) != len(labels):
        raise DfgenError(f"{len(images)} images but {len(labels)} labels")
    pairs = ((images[i].numpy(), int(labels[i])) for i in range(len(images)))
    return write_image_stream(out, pairs, description, shard_size, fmt)


def read_image_dataset(path: Path, limit: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """A dataset directory (synthetic or real) -> uint8 (N, C, H, W) images and int64 labels (the `.cls` entries),
    in index order. Meant for small sets (a few 10k images at 28-32 px)."""
    path = Path(path)
    dataset = open_dataset(path)
    images: list[np.ndarray] = []
    labels: list[int] = []
    for shard in dataset.shards:
        if limit is not None and len(images) >= limit:
            break
        url = shard.path
        try:
            with tarfile.open(url) as tar:
                members = sorted((m for m in tar.getmembers() if m.isfile()), key=lambda m: m.name)
                samples: dict[str, dict[str, bytes]] = {}
                for member in members:
                    key, ext = split_key(member.name)
                    samples.setdefault(key, {})[ext] = tar.extractfile(member).read()
        except (OSError, tarfile.TarError) as exc:
            raise DfgenError(f"cannot read shard {url} ({exc}); rerun the command that made {path}") from None
        for key in sorted(samples):
            sample = samples[key]
            ext = next((e for e in IMAGE_EXTS if e in sample), None)
            if ext is None or "cls" not in sample:
                raise DfgenError(f"sample {key} of {url} lacks an image or a .cls label")
            with Image.open(io.BytesIO(sample[ext])) as image:
                pixels = np.asarray(image)
            images.append(pixels[None] if pixels.ndim == 2 else pixels.transpose(2, 0, 1))
            labels.append(int(sample["cls"]))
    if not images:
        raise DfgenError(f"{path} holds no images")
    images, labels = images[:limit], labels[:limit]
    return torch.from_numpy(np.stack(images)), torch.tensor(labels, dtype=torch.int64)


def stratified_indices(labels: torch.Tensor, fraction: float, seed: int = 0) -> torch.Tensor:
    """A deterministic stratified subset: round(fraction x count) images of each class (at least one), drawn
    by a seeded permutation within the class, returned in the original order."""
    if not 0 < fraction <= 1:
        raise DfgenError(f"the train fraction must be in (0, 1], got {fraction}")
    generator = torch.Generator().manual_seed(seed)
    chosen = []
    for cls in torch.unique(labels).tolist():
        members = torch.nonzero(labels == cls).flatten()
        keep = max(1, round(fraction * len(members)))
        chosen.append(members[torch.randperm(len(members), generator=generator)[:keep]])
    return torch.cat(chosen).sort().values


def export_real(
    name: str,
    out: Path,
    train_fraction: float | None = None,
    limit: int | None = None,
    seed: int = 0,
    shard_size: int = 1000,
    fmt: str = "png",
    source: str | Path | None = None,
) -> list[Path]:
    """Write real MNIST, Fashion-MNIST or CIFAR-10 as OUT/train and OUT/test. `train_fraction` keeps a stratified
    deterministic share of the train split (seeded by `seed`); `limit` keeps the first N images of each split
    (after the fraction), for toy runs. `source`: CIFAR-10's archive or batches folder (dfgen.cifar10); CIFAR-10
    JPEGs are stored as they are (format jpg), whatever `fmt` says."""
    from dfgen.real_sources import CLASS_NAMES, canonical_name, read_real_splits, source_description

    cifar = name.strip().lower() in ("cifar10", "cifar-10")
    name = "cifar10" if cifar else canonical_name(name)
    if source is not None and not cifar:
        raise DfgenError(f"--source is for cifar10 only; {name} is found as `dfgen export-real --help` says")
    check_export_root(Path(out))
    if limit is not None and limit < 1:
        raise DfgenError(f"--limit must be a positive number of images, got {limit}")
    if train_fraction is not None and not 0 < train_fraction <= 1:
        raise DfgenError(f"--train-fraction must be in (0, 1], e.g. 0.01 for 1%, got {train_fraction}")
    parts: dict[str, tuple[torch.Tensor, torch.Tensor, list[bytes] | None]]
    if cifar:
        from dfgen import cifar10

        path = cifar10.source_path(source)
        splits = cifar10.read_cifar10(path)
        parts = {part: (torch.from_numpy(split.images), torch.from_numpy(split.labels), split.jpegs)
                 for part, split in splits.items()}
        origin, classes = cifar10.describe(path), cifar10.CLASSES
        if splits["train"].jpegs is not None:
            origin["jpeg_quality"] = {part: split.jpeg_quality for part, split in splits.items()}
    else:
        parts = {part: (images, labels, None) for part, (images, labels) in read_real_splits(name).items()}
        origin, classes = source_description(name), CLASS_NAMES[name]
    written = []
    for part, (images, labels, encoded) in parts.items():
        indices = torch.arange(len(labels))
        if part == "train" and train_fraction is not None and train_fraction < 1:
            indices = stratified_indices(labels, train_fraction, seed)
        indices = indices[:limit]
        description = {
            "name": name,
            "source": origin,
            "split": {"part": part, "source_n": len(labels), "train_fraction": train_fraction if part == "train"
                      else None, "fraction_seed": seed if part == "train" and train_fraction else None,
                      "limit": limit},
            "num_classes": 10,
            "classes": classes,
        }
        if encoded is None:
            pairs: Iterator[tuple[Any, ...]] = ((images[i].numpy(), int(labels[i])) for i in indices.tolist())
        else:
            pairs = ((images[i].numpy(), int(labels[i]), encoded[i]) for i in indices.tolist())
        written.append(write_image_stream(Path(out) / part, pairs, description, shard_size,
                                          "jpg" if encoded is not None else fmt))
    return written


def export_digits(out: Path) -> list[Path]:
    """scikit-learn's digits at 32x32, one channel, in the bundled teacher's fixed split."""
    from dfgen.zoo.digits import SPLIT_RANDOM_STATE, SPLIT_TEST_SIZE, load_digits_split

    check_export_root(Path(out))
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


def check_export_root(out: Path) -> None:
    """An export writes OUT/train and OUT/test: OUT itself must not be a dataset, a run or a report."""
    found = inspect_folder(out)
    if found.maker is not None:
        raise DfgenError(f"--out {out} holds {found.describe()}; an export writes OUT/train and OUT/test beside "
                         "other folders, not inside a dataset: choose another --out")
