"""The data of a run (its training sets checked against the configuration, the batch per process, loader workers),
evaluation data, the attention probe's images, the student's transforms, and the epoch length.

Sources are opened in `distill.sources` (dfgen datasets, WebDataset shards, ImageFolders, ImageNet's flat validation
layout); the training stream is `distill.pipeline`.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
import webdataset as wds
from PIL import Image
from timm.data import create_transform
from timm.data.auto_augment import RandAugment
from torch.utils.data import DataLoader, Dataset, IterableDataset, Subset

from dfgen.dataset import IMAGE_EXTS
from distill import pipeline
from distill.config import TrainConfig
from distill.errors import DistillError
from distill.pipeline import decode_image, parse_label, worker_slot
from distill.sources import Source, check_labels, open_source, open_training_sets

__all__ = ["Unreadable", "eval_loader", "eval_transform", "image_mode", "probe_images", "steps_per_epoch",
           "train_transform"]


@dataclass
class RunData:
    """The opened training and validation data of a run."""

    infos: list[Source]
    val: Source | None
    num_classes: int
    in_chans: int


def open_run_data(cfg: TrainConfig) -> RunData:
    """Open the --shards sources and --val, with the class count and channel count they give (or the config's);
    refuses stored soft labels where the data holds none."""
    infos = open_training_sets(cfg.shards, cfg.num_classes, cfg.image_key, cfg.label_key, cfg.fraction)
    num_classes = cfg.num_classes or next((i.num_classes for i in infos if i.num_classes), None)
    if not num_classes:
        raise DistillError("the training data gives no class count (no dataset.json); pass --num-classes")
    in_chans = cfg.in_chans or next((i.in_chans for i in infos if i.in_chans), 3)
    classes = next((i.classes for i in infos if i.classes), None)
    val = None
    if cfg.val:
        val = open_source(cfg.val, num_classes=num_classes, image_key=cfg.image_key, label_key=cfg.label_key,
                          labels_file=cfg.val_labels, classes=classes)
        if val.num_classes not in (None, num_classes):
            raise DistillError(f"--val {val.name} has {val.num_classes} classes, the training data {num_classes}")
        check_labels(val, num_classes)
    if cfg.soft_labels == "stored" and cfg.stage1_epochs > 0:
        for info in infos:
            if info.synthetic and info.soft_k is None:
                raise DistillError(f"{info.name} holds no stored soft labels (its dataset.json has no soft_labels); "
                                   "re-synthesize it with a dfgen that stores them, or use --soft-labels online")
        if not any(i.soft_k for i in infos):
            raise DistillError(f"--soft-labels stored: none of {', '.join(i.name for i in infos)} holds stored soft "
                               "labels; give a synthetic dataset made with them, or use --soft-labels online")
    return RunData(infos, val, int(num_classes), int(in_chans))


def rank_batch_size(cfg: TrainConfig, world_size: int) -> int:
    """Each process's share of --batch-size."""
    if cfg.batch_size % world_size:
        raise DistillError(f"--batch-size {cfg.batch_size} is not divisible by the {world_size} processes")
    rank_batch = cfg.batch_size // world_size
    if cfg.mixing and rank_batch % 2:
        raise DistillError(f"mixup/cutmix need an even batch per process, got {rank_batch}")
    return rank_batch


def loader_workers(workers: int | None, device: torch.device) -> int:
    """--workers if given, else none on CPU and up to 8 per process (the node's cores shared) on GPUs."""
    if workers is not None:
        return workers
    if device.type != "cuda":
        return 0
    return min(8, max(1, (os.cpu_count() or 1) // max(1, int(os.environ.get("LOCAL_WORLD_SIZE", 1)))))


def image_mode(in_chans: int) -> str:
    if in_chans not in (1, 3):
        raise DistillError(f"distill reads 1- or 3-channel images, the model wants {in_chans}")
    return "L" if in_chans == 1 else "RGB"


# ------------------------------------------------------------------------------------------- evaluation data
@dataclass(frozen=True)
class Unreadable:
    """An evaluation image that could not be read or decoded: skipped, counted and named (`name`: its path, or
    shard:key), travelling in the batch in place of the image."""

    name: str
    reason: str


def _reason(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:200] if text else type(exc).__name__


def collate_readable(items: list[Any]) -> tuple[torch.Tensor | None, torch.Tensor | None, list[Unreadable]]:
    """(images, labels, the unreadable ones) of an evaluation batch; images and labels None if none was readable."""
    good = [item for item in items if not isinstance(item, Unreadable)]
    bad = [item for item in items if isinstance(item, Unreadable)]
    if not good:
        return None, None, bad
    images, labels = zip(*good, strict=True)
    return torch.stack(images), torch.tensor(labels), bad


def _shard_samples(info: Source, url: str) -> Iterator[tuple[str, bytes | None, Any]]:
    for sample in wds.tariterators.tarfile_samples([{"url": url}]):
        key = info.image_key or next((e for e in sample if e.lower() in IMAGE_EXTS), None)
        yield sample.get("__key__", "?"), sample.get(key) if key else None, sample.get(info.label_key)


class ShardEval(IterableDataset):
    """Every image of a sharded source once. Shard j belongs to part j % (ranks x workers): each rank and each of its
    DataLoader workers reads whole shards of its own and nothing else, so counts can simply be summed."""

    def __init__(self, info: Source, transform: Callable, mode: str, num_classes: int, rank: int = 0,
                 world_size: int = 1) -> None:
        self.info, self.transform, self.mode, self.num_classes = info, transform, mode, num_classes
        self.rank, self.world_size = rank, world_size

    def __iter__(self) -> Iterator[tuple[torch.Tensor, int] | Unreadable]:
        worker, workers = worker_slot()
        parts, part = self.world_size * workers, self.rank * workers + worker
        for url in self.info.urls[part::parts]:
            samples = _shard_samples(self.info, url)
            index = 0
            while True:
                try:
                    key, data, label = next(samples)
                except StopIteration:
                    break
                except Exception as exc:  # the tar itself fails: the rest of this shard is lost, counted once
                    yield Unreadable(f"{url} (from sample {index})", _reason(exc))
                    break
                index += 1
                try:
                    image = decode_image(data, self.mode)
                except Exception as exc:
                    yield Unreadable(f"{url}:{key}", _reason(exc))
                    continue
                try:
                    target = parse_label(label, self.num_classes)
                except Exception as exc:  # a wrong label is not a damaged image: a wrong answer key stops the run
                    raise DistillError(f"sample {key} of {url} in the evaluation data: {_reason(exc)}; it does not "
                                       f"fit the {self.num_classes} classes of the training data") from None
                yield self.transform(image), target


class FileEval(Dataset):
    """The images of an ImageFolder or of a flat directory with a label file."""

    def __init__(self, info: Source, transform: Callable, mode: str) -> None:
        self.info, self.transform, self.mode = info, transform, mode

    def __len__(self) -> int:
        return len(self.info.files)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int] | Unreadable:
        path = self.info.path / self.info.files[i]
        try:
            with Image.open(path) as image:
                image = image.convert(self.mode)
        except (OSError, ValueError, Image.DecompressionBombError) as exc:  # unreadable, undecodable, not an image
            return Unreadable(str(path), _reason(exc))
        return self.transform(image), self.info.labels[i]


def eval_dataset(info: Source, transform: Callable, in_chans: int, num_classes: int, rank: int = 0,
                 world_size: int = 1) -> Dataset:
    mode = image_mode(in_chans)
    if info.files:
        return Subset(FileEval(info, transform, mode), list(range(rank, len(info.files), world_size)))
    return ShardEval(info, transform, mode, num_classes, rank, world_size)


def eval_loader(info: Source, transform: Callable, in_chans: int, num_classes: int, batch_size: int,
                workers: int, rank: int = 0, world_size: int = 1) -> DataLoader:
    """Batches of (images, labels, unreadable images skipped) of this rank's share of `info`; with workers, a batch
    that takes longer than pipeline.LOADER_TIMEOUT_S is an error instead of a hang."""
    dataset = eval_dataset(info, transform, in_chans, num_classes, rank, world_size)
    return DataLoader(dataset, batch_size=batch_size, num_workers=workers, shuffle=False,
                      pin_memory=torch.cuda.is_available(), collate_fn=collate_readable,
                      timeout=pipeline.LOADER_TIMEOUT_S if workers else 0)


def guarded(loader: Iterable, what: str) -> Iterator[Any]:
    """The loader's batches; its worker timeout becomes a one-line error saying where the run stood."""
    try:
        yield from loader
    except RuntimeError as exc:
        if "timed out" not in str(exc):
            raise
        raise DistillError(f"the {what} data loader delivered no batch for {pipeline.LOADER_TIMEOUT_S:g} s: a read "
                           "is stuck (an unresponsive mount or disk?); check the data's storage, then rerun with "
                           "--resume") from None


def probe_images(info: Source, transform: Callable, in_chans: int, count: int) -> torch.Tensor | None:
    """A fixed batch of evaluation-transformed images for the attention-distance probe: `count` images evenly
    strided over the whole source (the first ones of an ImageFolder are all one class), fewer where some do not
    read (None if none does)."""
    if count <= 0:
        return None
    mode = image_mode(in_chans)
    wanted = sorted({(k * info.n) // count for k in range(min(count, info.n))})
    if info.files:  # an unreadable image is the training loop's (or validation's) to report: take fewer
        items = [FileEval(info, transform, mode)[i] for i in wanted]
        images = [item[0] for item in items if not isinstance(item, Unreadable)]
        return torch.stack(images) if images else None
    images, start, position = [], 0, 0
    for url, n in zip(info.urls, info.nsamples, strict=True):
        inside = [i - start for i in wanted[position:] if i < start + n]
        start += n
        if not inside:
            continue
        position += len(inside)
        try:  # a damaged training shard is the training loop's to report: just take fewer images
            for j, (_, data, _) in enumerate(_shard_samples(info, url)):
                if j in inside:
                    images.append(transform(decode_image(data, mode)))
                if j >= inside[-1]:
                    break
        except Exception:
            continue
    return torch.stack(images) if images else None


# ------------------------------------------------------------------------------------------- transforms
def train_transform(cfg: TrainConfig, data_config: dict[str, Any]) -> Callable:
    """timm's training transform (random resized crop, flip, RandAugment, normalize, random erasing), made with the
    student's data config, so it works for any channel count (one-element mean/std for greyscale)."""
    transform = create_transform(
        tuple(data_config["input_size"]),
        is_training=True,
        scale=cfg.scale,
        ratio=cfg.ratio,
        hflip=cfg.hflip,
        color_jitter=cfg.color_jitter or None,
        auto_augment=cfg.aa or None,
        interpolation=cfg.train_interpolation,
        mean=tuple(data_config["mean"]),
        std=tuple(data_config["std"]),
        re_prob=cfg.reprob,
        re_mode=cfg.remode,
        re_count=cfg.recount,
    )
    for t in getattr(transform, "transforms", []):
        if not isinstance(t, RandAugment):
            continue
        for op in t.ops:
            if op.name.startswith("Posterize"):
                # at the top magnitude timm's PosterizeIncreasing keeps 0 bits, which recent Pillow (13 here) refuses
                # (ValueError mid-epoch); 9.99 keeps 1 bit, the strongest setting Pillow accepts
                op.magnitude_max = min(op.magnitude_max or 10, 9.99)
            if cfg.aa_fill is not None:
                # timm fills what rotations/shears/translations uncover with the normalization mean (grey); on
                # digits the background is black, and grey borders are a cue the real test images never show
                op.kwargs["fillcolor"] = (int(cfg.aa_fill),) * int(data_config["input_size"][0])
    return transform


def view_transform(cfg: TrainConfig, data_config: dict[str, Any]) -> Callable:
    """The training transform for an image that is already a stored view (dfgen --soft-views): its crop and flip were
    replayed from the sample, so the random-resized crop only resizes (the whole image, scale and ratio 1) and no
    flip follows; RandAugment, erasing and normalization stay, as FKD keeps its other augmentations."""
    return train_transform(dataclasses.replace(cfg, scale=(1.0, 1.0), ratio=(1.0, 1.0), hflip=0.0), data_config)


def eval_transform(data_config: dict[str, Any]) -> Callable:
    """timm's evaluation transform from the student's own (teacher-independent) data config."""
    return create_transform(
        tuple(data_config["input_size"]),
        is_training=False,
        interpolation=data_config.get("interpolation", "bicubic"),
        mean=tuple(data_config["mean"]),
        std=tuple(data_config["std"]),
        crop_pct=data_config.get("crop_pct", 1.0),
        crop_mode=data_config.get("crop_mode", "center"),
    )


def steps_per_epoch(infos: list[Source], batch_size: int) -> int:
    """An epoch is one pass worth of images over all --shards sources (at least one step)."""
    return max(1, math.floor(sum(i.n for i in infos) / batch_size))
