"""Opening the data `distill` reads: what a `--shards` / `--val` argument names, validated and described.

A source is one of
- a dfgen dataset: a directory with dataset.json + index.json + shards/*.tar (dfgen.dataset opens and checks it);
- plain WebDataset shards: a brace pattern (`train-{000000..001281}.tar`), a `::`-separated list, one .tar file, or a
  directory of .tar files without dataset.json; `--num-classes` and the image / label keys say how to read them;
- an ImageFolder tree: one sub-directory of images per class (sorted names = class indices, ImageNet's train layout);
  for training its files are dealt into fixed chunks of mixed classes that are read like shards;
- a flat directory of images with a label file (ImageNet's validation layout), for evaluation.
"""

from __future__ import annotations

import csv
import io
import math
import os
import random
import tarfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import webdataset as wds
from PIL import Image

from dfgen.dataset import DATASET_FILE, IMAGE_EXTS, INDEX_FILE, DatasetInfo, damaged_shards, open_dataset
from dfgen.errors import DfgenError
from distill.errors import DistillError

FOLDER_EXTS = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".ppm", ".tif", ".tiff"}
CHUNK_SIZE = 1000  # files per chunk of an ImageFolder read for training (the size of a dfgen shard)
SUBSET_SEED = 0  # --fraction subsets are fixed, whatever the run's seed, so runs compare on the same images
_GREY_MODES = {"1", "L", "LA", "I", "I;16", "F"}


@dataclass
class Source:
    """A validated data source: where its images are and what it holds."""

    path: Path
    kind: str  # "shards" (dfgen), "webdataset", "imagefolder" or "flat"
    n: int
    num_classes: int | None = None
    in_chans: int | None = None
    image_size: tuple[int, int, int] | None = None
    urls: list[str] = field(default_factory=list)  # tar paths; an ImageFolder's chunks as "DIR#k"
    nsamples: list[int] = field(default_factory=list)
    dataset: DatasetInfo | None = None  # a dfgen dataset: its dataset.json and shards
    classes: list[str] | None = None
    files: list[str] = field(default_factory=list)  # imagefolder / flat: paths relative to `path`
    labels: list[int] = field(default_factory=list)  # imagefolder / flat: one per file
    chunks: list[list[int]] = field(default_factory=list)  # imagefolder: file indices of each url
    image_key: str | None = None  # None: the first of IMAGE_EXTS a sample has
    label_key: str = "cls"
    name: str = ""  # as the user gave it
    labels_file: str | None = None  # flat: the file its labels came from

    @property
    def teacher(self) -> dict[str, Any] | None:
        """The teacher entry of a synthetic set's dataset.json (name, source, data_config), if any."""
        return self.dataset.teacher if self.dataset else None

    @property
    def synthetic(self) -> bool:
        return self.dataset is not None and self.dataset.synthetic

    @property
    def soft_k(self) -> int | None:
        """k of the stored top-k teacher logits (dataset.json "soft_labels"), None when the set stores none."""
        return self.dataset.soft_k if self.dataset else None

    @property
    def soft_views(self) -> int:
        """Teacher-labelled crops stored per image (dfgen --soft-views), 0 when none."""
        return self.dataset.soft_views if self.dataset else 0


def open_source(spec: str | Path, allow_folder: bool = True, num_classes: int | None = None,
                image_key: str | None = None, label_key: str = "cls", labels_file: str | None = None,
                classes: list[str] | None = None, fraction: float = 1.0) -> Source:
    """Validate a source and describe it. `classes`: the training data's class names (an ImageFolder or label file
    whose names are all among them is indexed by them); `fraction`: keep that share of the images (whole shards, or
    per class for an ImageFolder), the same subset on every run."""
    text = str(spec)
    if not 0 < fraction <= 1:
        raise DistillError(f"--fraction must be in (0, 1], got {fraction} for {text}")
    if "{" in text or "::" in text or text.endswith(".tar"):
        info = _open_webdataset(text, wds.shardlists.expand_urls(text), num_classes, image_key, label_key)
        return _subset_shards(info, fraction)
    path = Path(text)
    if not path.exists():
        raise DistillError(f"dataset {path} not found")
    if not path.is_dir():
        raise DistillError(f"dataset {path} is neither a directory nor .tar shards (expected a dfgen dataset, an "
                           "ImageFolder or WebDataset shards)")
    if (path / DATASET_FILE).is_file() or (path / INDEX_FILE).is_file():
        return _subset_shards(_open_dfgen(path), fraction)
    entries = scan_dir(path)
    tars = [e.path for e in entries if e.is_file() and e.name.endswith(".tar")]
    if tars:
        return _subset_shards(_open_webdataset(text, tars, num_classes, image_key, label_key), fraction)
    if allow_folder and any(e.is_dir() and not e.name.startswith(".") for e in entries):
        return _open_folder(path, classes, fraction)
    if allow_folder and any(e.is_file() and Path(e.name).suffix.lower() in FOLDER_EXTS for e in entries):
        if not labels_file:
            raise DistillError(f"{path} holds images but no class folders; for ImageNet's flat validation layout "
                               "give the label file with --val-labels FILE")
        return _open_flat(path, labels_file, classes)
    what = "a dfgen dataset (dataset.json + index.json + shards/), WebDataset .tar shards" + (
        " or an ImageFolder" if allow_folder else "")
    raise DistillError(f"{path} is not {what}; make one with `dfgen synthesize` or `dfgen export-digits`")


def open_training_sets(paths: list[str], num_classes: int | None = None, image_key: str | None = None,
                       label_key: str = "cls", fractions: list[float] | None = None) -> list[Source]:
    """Open every --shards source; they must agree on classes and channels (synthetic + real mixes)."""
    if not paths:
        raise DistillError("no training data: give --shards DIR (a dfgen dataset, an ImageFolder or .tar shards)")
    fractions = fractions or [1.0] * len(paths)
    if len(fractions) != len(paths):
        raise DistillError(f"--fraction gives {len(fractions)} value(s) for {len(paths)} --shards source(s)")
    infos = [open_source(p, num_classes=num_classes, image_key=image_key, label_key=label_key, fraction=f)
             for p, f in zip(paths, fractions, strict=True)]
    for key in ("num_classes", "in_chans"):
        values = {getattr(i, key) for i in infos if getattr(i, key) is not None}
        if len(values) > 1:
            listed = ", ".join(f"{i.name}: {getattr(i, key)}" for i in infos)
            raise DistillError(f"the --shards sources disagree on {key} ({listed})")
    return infos


def _open_dfgen(path: Path) -> Source:
    try:
        dataset = open_dataset(path)
    except DfgenError as exc:
        raise DistillError(str(exc)) from None
    return Source(
        path=path, kind="shards", n=dataset.n, num_classes=dataset.num_classes, in_chans=dataset.in_chans,
        image_size=dataset.image_size, urls=[str(s.path.resolve()) for s in dataset.shards],
        nsamples=[s.count or 0 for s in dataset.shards], dataset=dataset, classes=dataset.classes, name=str(path),
    )


def _count_samples(url: str) -> int:
    """Images in a tar shard, from its member headers only (tarfile seeks past the data)."""
    keys = set()
    with tarfile.open(url, "r:") as tar:
        for member in tar:
            base = member.name.rsplit("/", 1)[-1]
            key, _, ext = base.partition(".")
            if member.isfile() and ext.lower() in IMAGE_EXTS:
                keys.add(member.name.rsplit("/", 1)[0] + "/" + key)
    return len(keys)


def _open_webdataset(spec: str, urls: list[str], num_classes: int | None, image_key: str | None,
                     label_key: str) -> Source:
    hint = "check the shard pattern"
    if any("://" in u or u.startswith("pipe:") for u in urls):
        raise DistillError(f"{spec}: distill reads local (or mounted) .tar shards only, not remote urls")
    urls = [str(Path(u).resolve()) for u in urls]
    damage = damaged_shards([Path(u) for u in urls], [None] * len(urls))
    if damage:
        raise DistillError(f"{spec}: {damage}; {hint}")
    if not num_classes:
        raise DistillError(f"{spec}: plain WebDataset shards carry no class count; pass --num-classes")
    with ThreadPoolExecutor(max_workers=min(16, len(urls))) as pool:  # header scans are I/O bound
        nsamples = list(pool.map(_count_samples, urls))
    if sum(nsamples) == 0:
        raise DistillError(f"{spec}: no images ({', '.join(IMAGE_EXTS)}) in {len(urls)} shard(s)")
    info = Source(path=Path(urls[0]).parent, kind="webdataset", n=sum(nsamples), num_classes=num_classes,
                       urls=urls, nsamples=nsamples, image_key=image_key, label_key=label_key, name=spec)
    sample_url = urls[nsamples.index(max(nsamples))]
    try:
        first = next(wds.tariterators.tarfile_samples([{"url": sample_url}]))
    except Exception as exc:  # a damaged tar: any read failure
        raise DistillError(f"{spec}: cannot read a sample of {sample_url} ({exc}); {hint}") from None
    key = image_key or next((k for k in first if k.lower() in IMAGE_EXTS), None)
    if key not in first:
        raise DistillError(f"{spec}: sample {first.get('__key__')} has no image under {key or '/'.join(IMAGE_EXTS)}; "
                           f"its keys are {', '.join(k for k in first if not k.startswith('__'))} (--image-key)")
    if label_key not in first:
        raise DistillError(f"{spec}: sample {first.get('__key__')} has no label {label_key!r}; its keys are "
                           f"{', '.join(k for k in first if not k.startswith('__'))} (--label-key)")
    info.in_chans, info.image_size = _image_shape(first[key])
    return info


def _image_shape(data: bytes) -> tuple[int, tuple[int, int, int]]:
    """(channels distill reads it with, (C, H, W)) of one encoded image: 1 for greyscale modes, else 3."""
    with Image.open(io.BytesIO(data)) as image:
        chans = 1 if image.mode in _GREY_MODES else 3
        return chans, (chans, image.height, image.width)


def _first_shape(path: Path, files: list[str], tries: int = 100) -> tuple[int, tuple[int, int, int]]:
    """`_image_shape` of the first of `files` that reads: an unreadable image is skipped (and named) when it is met
    in training or evaluation, not at the start; an error only if none of the first `tries` reads."""
    failures = []
    for name in files[:tries]:
        try:
            return _image_shape((path / name).read_bytes())
        except (OSError, ValueError, Image.DecompressionBombError) as exc:
            failures.append(f"{name}: {str(exc).splitlines()[0][:120] if str(exc) else type(exc).__name__}")
    raise DistillError(f"none of the first {len(failures)} images of {path} can be read ({failures[-1]}); check its "
                       "files")


def _subset_shards(info: Source, fraction: float) -> Source:
    if fraction >= 1:
        return info
    count = max(1, round(fraction * len(info.urls)))
    keep = sorted(random.Random(SUBSET_SEED).sample(range(len(info.urls)), count))
    info.urls = [info.urls[i] for i in keep]
    info.nsamples = [info.nsamples[i] for i in keep]
    info.n = sum(info.nsamples)
    return info


@dataclass(frozen=True)
class DirEntry:
    """A directory entry with its kind looked up once (os.DirEntry's lookups raise on a symbolic-link loop)."""

    name: str
    path: str
    dir: bool
    file: bool

    def is_dir(self) -> bool:
        return self.dir

    def is_file(self) -> bool:
        return self.file


def scan_dir(path: Path) -> list[DirEntry]:
    """The entries of a directory by name; a symbolic-link loop or an unlistable directory is a one-line error."""
    try:
        found = list(os.scandir(path))
    except OSError as exc:
        raise DistillError(f"cannot list {path} ({exc.strerror or exc})") from None
    entries = []
    for entry in found:
        try:
            entries.append(DirEntry(entry.name, entry.path, entry.is_dir(), entry.is_file()))
        except OSError as exc:  # ELOOP: a link that points (through others) back at itself
            raise DistillError(f"{entry.path}: {exc.strerror or exc} (a symbolic link loop?); remove or fix the "
                               "link") from None
    return sorted(entries, key=lambda e: e.name)


def subset_counts(sizes: list[int], fraction: float) -> list[int]:
    """How many images of each class a `fraction` subset keeps: round(fraction x total) in all, spread over the
    classes in proportion to their sizes (largest remainders first), so small folders get the share asked for."""
    total = max(1, round(fraction * sum(sizes)))
    exact = [fraction * n for n in sizes]
    counts = [math.floor(x) for x in exact]
    by_remainder = sorted(range(len(sizes)), key=lambda c: (-(exact[c] - counts[c]), c))
    for c in by_remainder[:max(0, total - sum(counts))]:
        counts[c] += 1
    return [min(count, n) for count, n in zip(counts, sizes, strict=True)]


def check_labels(info: Source, num_classes: int) -> None:
    """Every label of a file-based source (ImageFolder, flat directory with a label file) is a class of the model;
    a one-line error naming the first file that is not (it would count as a wrong answer)."""
    for name, label in zip(info.files, info.labels, strict=True):
        if not 0 <= label < num_classes:
            where = f" ({info.labels_file})" if info.labels_file else ""
            raise DistillError(f"{info.path / name} has label {label}{where}, outside the {num_classes} classes "
                               f"(0..{num_classes - 1}); fix the label file or the class count")


def _class_index(names: list[str], classes: list[str] | None) -> dict[str, int]:
    """Class name -> index: by the training data's class list when it names them all, else sorted order."""
    if classes and all(n in classes for n in names):
        return {n: classes.index(n) for n in names}
    return {n: i for i, n in enumerate(sorted(names))}


def _open_folder(path: Path, classes: list[str] | None, fraction: float) -> Source:
    names = [e.name for e in scan_dir(path) if e.is_dir() and not e.name.startswith(".")]
    index = _class_index(names, classes)
    per_class = [[f"{name}/{e.name}" for e in scan_dir(path / name)
                  if e.is_file() and Path(e.name).suffix.lower() in FOLDER_EXTS] for name in names]
    counts = subset_counts([len(found) for found in per_class], fraction) if fraction < 1 else None
    files, labels = [], []
    rng = random.Random(SUBSET_SEED)
    for c, (name, found) in enumerate(zip(names, per_class, strict=True)):
        if counts is not None:
            found = sorted(rng.sample(found, counts[c]))
        files += found
        labels += [index[name]] * len(found)
    if not files:
        raise DistillError(f"ImageFolder {path} holds no images ({', '.join(sorted(FOLDER_EXTS))})")
    order = list(range(len(files)))
    random.Random(SUBSET_SEED).shuffle(order)  # chunks of mixed classes, fixed for the folder
    chunks = [sorted(order[i:i + CHUNK_SIZE]) for i in range(0, len(order), CHUNK_SIZE)]
    in_chans, size = _first_shape(path, files)
    # indexed by the training data's class list, a folder may hold only some of the classes: no count to check then
    num_classes = len(names) if max(labels) < len(names) else None
    return Source(path=path, kind="imagefolder", n=len(files), num_classes=num_classes,
                       in_chans=in_chans, image_size=size, urls=[f"{path}#{k}" for k in range(len(chunks))],
                       nsamples=[len(c) for c in chunks], classes=names, files=files, labels=labels, chunks=chunks,
                       name=str(path))


def read_label_file(labels_file: str | Path, classes: list[str] | None) -> dict[str, int]:
    """{file name or stem: class index} from "FILE LABEL" lines (space, tab or comma separated; LABEL an index from 0
    or a class name such as a WordNet id) or Kaggle's LOC_val_solution.csv ("ImageId,PredictionString")."""
    path = Path(labels_file)
    if not path.is_file():
        raise DistillError(f"label file {path} not found")
    rows = []
    try:
        with open(path, newline="") as handle:
            for line in csv.reader(handle, delimiter="," if path.suffix.lower() == ".csv" else " ",
                                   skipinitialspace=True):
                fields = [f for part in line for f in part.split()]
                if len(fields) >= 2 and fields[0] != "ImageId":
                    rows.append((fields[0], fields[1]))
                elif len(fields) == 1:
                    raise DistillError(f"{path}: a line without a file name ({fields[0]!r}); write \"FILE LABEL\" "
                                       "lines (the devkit's bare ILSVRC ids are in another class order)")
    except (UnicodeDecodeError, csv.Error) as exc:
        raise DistillError(f"label file {path} is not text of \"FILE LABEL\" lines ({exc})") from None
    if not rows:
        raise DistillError(f"{path} holds no \"FILE LABEL\" lines")
    names = sorted({label for _, label in rows if not label.lstrip("-").isdigit()})
    index = _class_index(names, classes) if names else {}
    table = {}
    for name, label in rows:
        table[name] = int(label) if label.lstrip("-").isdigit() else index[label]
    return table


def _open_flat(path: Path, labels_file: str, classes: list[str] | None) -> Source:
    table = read_label_file(labels_file, classes)
    files = [e.name for e in scan_dir(path) if e.is_file() and Path(e.name).suffix.lower() in FOLDER_EXTS]
    labels, missing = [], []
    for name in files:
        label = table.get(name, table.get(Path(name).stem))
        if label is None:
            missing.append(name)
        labels.append(label)
    if missing:
        raise DistillError(f"{labels_file} gives no label for {len(missing)} of the {len(files)} images in {path} "
                           f"(first: {missing[0]})")
    in_chans, size = _first_shape(path, files)
    return Source(path=path, kind="flat", n=len(files), num_classes=None, in_chans=in_chans, image_size=size,
                  files=files, labels=labels, name=str(path), labels_file=str(labels_file))
