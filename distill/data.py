"""Datasets for `distill`: opening and validating them, the resampled WebDataset training pipeline, the evaluation
readers, and the corrupt-shard handler.

A dataset is a directory in the SPEC section 3 format (dataset.json + index.json + shards/*.tar, as written by
`dfgen synthesize` or `dfgen export-digits`) or, for evaluation, an ImageFolder directory (one sub-directory of
images per class, sorted names = class indices: the ImageNet val layout).
"""

from __future__ import annotations

import io
import json
import math
import random
import sys
import tarfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
import webdataset as wds
from PIL import Image
from timm.data import create_transform
from timm.data.auto_augment import RandAugment
from torch.utils.data import DataLoader, IterableDataset, Subset, default_collate, get_worker_info

from distill.config import TrainConfig
from distill.errors import DistillError

IMAGE_EXTS = ("png", "jpg", "jpeg", "webp")
_FOLDER_EXTS = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".ppm", ".tif", ".tiff"}


@dataclass
class DatasetInfo:
    """A validated dataset: where its shards are and what it holds."""

    path: Path
    kind: str  # "shards" or "imagefolder"
    n: int
    num_classes: int | None = None
    in_chans: int | None = None
    image_size: tuple[int, int, int] | None = None
    urls: list[str] = field(default_factory=list)  # absolute shard paths (kind "shards")
    nsamples: list[int] = field(default_factory=list)
    description: dict[str, Any] = field(default_factory=dict)  # dataset.json

    @property
    def teacher(self) -> dict[str, Any] | None:
        """The teacher entry of a synthetic set's dataset.json (name, source, data_config), if any."""
        teacher = self.description.get("teacher")
        return teacher if isinstance(teacher, dict) else None


def open_dataset(path: str | Path, allow_folder: bool = True) -> DatasetInfo:
    """Validate a dataset directory (shards present, complete and tar files) and describe it."""
    path = Path(path)
    if not path.exists():
        raise DistillError(f"dataset {path} not found")
    if not path.is_dir():
        raise DistillError(f"dataset {path} is not a directory (expected dataset.json + index.json + shards/)")
    if (path / "dataset.json").is_file() or (path / "index.json").is_file():
        return _open_shards(path)
    if allow_folder:
        classes = sorted(d.name for d in path.iterdir() if d.is_dir() and not d.name.startswith("."))
        if classes:
            n = sum(1 for c in classes for f in (path / c).iterdir() if f.suffix.lower() in _FOLDER_EXTS)
            if n == 0:
                raise DistillError(f"ImageFolder {path} holds no images")
            return DatasetInfo(path=path, kind="imagefolder", n=n, num_classes=len(classes))
    what = "a dataset (dataset.json + index.json + shards/)" + (" or an ImageFolder" if allow_folder else "")
    raise DistillError(f"{path} is not {what}; make one with `dfgen synthesize` or `dfgen export-digits`")


def _read_json(path: Path, hint: str) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise DistillError(f"{path} not found; {hint}") from None
    except (json.JSONDecodeError, UnicodeDecodeError, OSError) as exc:
        raise DistillError(f"{path} is not readable JSON ({exc}); {hint}") from None
    if not isinstance(data, dict):
        raise DistillError(f"{path} does not hold a JSON object; {hint}")
    return data


def _open_shards(path: Path) -> DatasetInfo:
    hint = f"rebuild it with `dfgen index {path}` or rerun the dfgen command that made the dataset"
    description = _read_json(path / "dataset.json", hint)
    index = _read_json(path / "index.json", hint)
    shardlist = index.get("shardlist")
    if not isinstance(shardlist, list):
        raise DistillError(f"{path / 'index.json'} has no shardlist; {hint}")
    entries = [s for s in shardlist if isinstance(s, dict) and s.get("url")]
    n = sum(int(s.get("nsamples", 0)) for s in entries)
    if not entries or n == 0:
        raise DistillError(f"dataset {path} is empty (no shards or no images in index.json); {hint}")
    problems = []
    for entry in entries:
        shard = (path / entry["url"]).resolve()
        if not shard.is_file():
            problems.append(f"{entry['url']} (missing)")
        elif "filesize" in entry and shard.stat().st_size != int(entry["filesize"]):
            problems.append(f"{entry['url']} (truncated: {shard.stat().st_size} of {entry['filesize']} bytes)")
        elif not tarfile.is_tarfile(shard):
            problems.append(f"{entry['url']} (not a tar file)")
    if problems:
        listed = ", ".join(problems[:5]) + (" ..." if len(problems) > 5 else "")
        raise DistillError(f"{len(problems)} of {len(entries)} shard(s) of {path} are damaged: {listed}; {hint}")
    size = description.get("image_size")
    return DatasetInfo(
        path=path,
        kind="shards",
        n=n,
        num_classes=description.get("num_classes"),
        in_chans=description.get("in_chans"),
        image_size=tuple(int(v) for v in size) if isinstance(size, list) and len(size) == 3 else None,
        urls=[str((path / e["url"]).resolve()) for e in entries],
        nsamples=[int(e.get("nsamples", 0)) for e in entries],
        description=description,
    )


def open_training_sets(paths: list[str]) -> list[DatasetInfo]:
    """Open every --shards dataset; they must agree on classes and channels (synthetic + real mixes)."""
    if not paths:
        raise DistillError("no training data: give --shards DIR (a dataset made by dfgen)")
    infos = [open_dataset(p, allow_folder=False) for p in paths]
    for key in ("num_classes", "in_chans"):
        values = {getattr(i, key) for i in infos if getattr(i, key) is not None}
        if len(values) > 1:
            listed = ", ".join(f"{i.path}: {getattr(i, key)}" for i in infos)
            raise DistillError(f"the --shards datasets disagree on {key} ({listed})")
    return infos


# ------------------------------------------------------------------------------------------- corrupt shards
class ShardHealth:
    """Remembers the shards found corrupt while training: each is named in a warning once and never drawn again;
    more than `limit` of them stop the run (a dataset that bad needs fixing, not skipping)."""

    def __init__(self, limit: int, rank: int = 0, warn: Callable[[str], None] | None = None) -> None:
        self.limit = limit
        self.rank = rank
        self.bad: dict[str, str] = {}
        self.warn = warn or (lambda msg: print(msg, file=sys.stderr, flush=True))

    def report(self, url: str, exc: BaseException | str) -> None:
        if url in self.bad:
            return
        reason = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
        self.bad[url] = reason
        if len(self.bad) > self.limit:
            listed = ", ".join(Path(u).name for u in self.bad)
            raise DistillError(
                f"{len(self.bad)} corrupt shards ({listed}), more than the {self.limit} allowed; last: {url}: "
                f"{reason}. "
                "Check the dataset with `dfgen index DIR` and rerun the dfgen command that made it"
            )
        self.warn(f"Warning: [rank {self.rank}] skipping corrupt shard {url} ({reason}); "
                  f"{len(self.bad)} of at most {self.limit} skipped")


def _worker() -> tuple[int, int]:
    info = get_worker_info()
    return (info.id, info.num_workers) if info is not None else (0, 1)


def resampled_shards(urls: list[str], weights: list[int], seed: str, health: ShardHealth) -> Iterator[dict]:
    """Endless stream of {"url"} drawn with replacement, weighted by shard size, from a seed that is a function of
    (run seed, epoch, rank, worker): every rank draws its own shards, never runs dry (so all ranks take the same
    number of steps under DDP) and a resumed epoch draws the same ones. Corrupt shards are no longer drawn."""
    rng = random.Random(f"{seed}:worker{_worker()[0]}")
    known_bad = -1
    while True:
        if len(health.bad) != known_bad:
            known_bad = len(health.bad)
            good = [i for i, u in enumerate(urls) if u not in health.bad]
            if not good:
                raise DistillError("every training shard is corrupt; rerun the dfgen command that made them")
            cum = list(np.cumsum([max(weights[i], 1) for i in good]))
        yield {"url": urls[good[rng.choices(range(len(good)), cum_weights=cum)[0]]]}


def read_shards(src: Iterator[dict], health: ShardHealth) -> Iterator[dict]:
    """Samples of each shard (webdataset's tar reader); a shard that fails to read is reported and skipped."""
    for item in src:
        url = item["url"]
        try:
            yield from wds.tariterators.tarfile_samples([{"url": url}])
        except Exception as exc:  # tarfile, OSError, ValueError...: any read failure means a damaged shard
            health.report(url, exc)


def seeded_shuffle(src: Iterator[dict], bufsize: int, seed: str) -> Iterator[dict]:
    """webdataset's shuffle buffer with a reproducible per-worker generator."""
    rng = random.Random(f"{seed}:shuffle:worker{_worker()[0]}")
    return wds.filters.shuffle(bufsize, initial=bufsize, rng=rng)(src)


def decode_image(sample: dict, mode: str) -> Image.Image:
    ext = next((e for e in IMAGE_EXTS if e in sample), None)
    if ext is None:
        raise ValueError(f"sample {sample.get('__key__')} has no image ({', '.join(IMAGE_EXTS)})")
    with Image.open(io.BytesIO(sample[ext])) as image:
        return image.convert(mode)


def decode_samples(src: Iterator[dict], mode: str, transform: Callable, num_classes: int,
                   health: ShardHealth) -> Iterator[tuple[torch.Tensor, int]]:
    """Decode (as "L" for one channel, "RGB" otherwise) and augment; a bad sample marks its shard corrupt."""
    for sample in src:
        try:
            image = decode_image(sample, mode)
            label = int(sample["cls"])
            if not 0 <= label < num_classes:
                raise ValueError(f"label {label} outside 0..{num_classes - 1}")
        except Exception as exc:
            health.report(sample.get("__url__", "?"), f"sample {sample.get('__key__')}: {exc}")
            continue
        yield transform(image), label


def image_mode(in_chans: int) -> str:
    if in_chans not in (1, 3):
        raise DistillError(f"distill reads 1- or 3-channel images, the model wants {in_chans}")
    return "L" if in_chans == 1 else "RGB"


def _seed_numpy(worker_id: int) -> None:
    # torch seeds `random` and itself per worker, not numpy (RandAugment and Mixup draw from numpy)
    np.random.seed(torch.initial_seed() % 2**32)


def train_loader(infos: list[DatasetInfo], transform: Callable, in_chans: int, num_classes: int, batch_size: int,
                 steps: int, seed: str, shuffle_buffer: int, workers: int, health: ShardHealth) -> wds.WebLoader:
    """One epoch of `steps` batches of `batch_size` (this rank's share) from resampled shards."""
    urls = [u for i in infos for u in i.urls]
    weights = [w for i in infos for w in i.nsamples]
    pipeline = wds.DataPipeline(
        partial(resampled_shards, urls, weights, seed, health),
        partial(read_shards, health=health),
        partial(seeded_shuffle, bufsize=max(1, shuffle_buffer), seed=seed),
        partial(decode_samples, mode=image_mode(in_chans), transform=transform, num_classes=num_classes,
                health=health),
        wds.batched(batch_size, collation_fn=default_collate, partial=False),
    )
    loader = wds.WebLoader(pipeline, batch_size=None, num_workers=workers, worker_init_fn=_seed_numpy,
                           pin_memory=torch.cuda.is_available())
    return loader.with_epoch(steps)


# ------------------------------------------------------------------------------------------- evaluation data
class ShardEval(IterableDataset):
    """Every image of a sharded dataset once, in order; image i goes to rank i % world_size (and DataLoader
    worker), so ranks evaluate disjoint parts and counts can simply be summed."""

    def __init__(self, info: DatasetInfo, transform: Callable, mode: str, rank: int = 0, world_size: int = 1,
                 limit: int | None = None) -> None:
        self.info, self.transform, self.mode = info, transform, mode
        self.rank, self.world_size, self.limit = rank, world_size, limit

    def __iter__(self) -> Iterator[tuple[torch.Tensor, int]]:
        worker, workers = _worker()
        parts, part = self.world_size * workers, self.rank * workers + worker
        index = 0
        for url in self.info.urls:
            try:
                for sample in wds.tariterators.tarfile_samples([{"url": url}]):
                    if self.limit is not None and index >= self.limit:
                        return
                    if index % parts == part:
                        yield self.transform(decode_image(sample, self.mode)), int(sample["cls"])
                    index += 1
            except DistillError:
                raise
            except Exception as exc:
                raise DistillError(f"corrupt shard {url} in evaluation data ({exc}); rerun the dfgen command that "
                                   "made it") from None


def _pil_loader(path: str, mode: str) -> Image.Image:
    with Image.open(path) as image:
        return image.convert(mode)


def eval_dataset(info: DatasetInfo, transform: Callable, in_chans: int, rank: int = 0, world_size: int = 1,
                 limit: int | None = None) -> torch.utils.data.Dataset:
    mode = image_mode(in_chans)
    if info.kind == "shards":
        return ShardEval(info, transform, mode, rank, world_size, limit)
    from torchvision.datasets import ImageFolder

    try:
        folder = ImageFolder(str(info.path), transform=transform, loader=partial(_pil_loader, mode=mode))
    except (FileNotFoundError, RuntimeError) as exc:  # e.g. a class directory without images
        raise DistillError(f"ImageFolder {info.path}: {exc}") from None
    indices = range(min(len(folder), limit) if limit is not None else len(folder))
    return Subset(folder, list(indices[rank::world_size]))


def eval_loader(info: DatasetInfo, transform: Callable, in_chans: int, batch_size: int, workers: int, rank: int = 0,
                world_size: int = 1, limit: int | None = None) -> DataLoader:
    dataset = eval_dataset(info, transform, in_chans, rank, world_size, limit)
    return DataLoader(dataset, batch_size=batch_size, num_workers=workers, shuffle=False,
                      pin_memory=torch.cuda.is_available())


def probe_images(info: DatasetInfo, transform: Callable, in_chans: int, count: int) -> torch.Tensor | None:
    """A fixed batch of evaluation-transformed images (the attention-distance probe)."""
    if count <= 0:
        return None
    if info.kind != "shards":
        images = [x for x, _ in eval_dataset(info, transform, in_chans, limit=count)]
        return torch.stack(images) if images else None
    images = []
    for url, n in zip(info.urls, info.nsamples, strict=True):
        one = DatasetInfo(path=info.path, kind="shards", n=n, urls=[url], nsamples=[n])
        try:  # a damaged training shard is the training loop's to report: just take images from the next one
            images += [x for x, _ in ShardEval(one, transform, image_mode(in_chans), limit=count - len(images))]
        except DistillError:
            continue
        if len(images) >= count:
            break
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


def steps_per_epoch(infos: list[DatasetInfo], batch_size: int) -> int:
    """An epoch is one pass worth of images over all --shards datasets (at least one step)."""
    return max(1, math.floor(sum(i.n for i in infos) / batch_size))
