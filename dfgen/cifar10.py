"""Real CIFAR-10 from one of two offline sources (`dfgen export-real cifar10`):

- a .tar.gz of JPEG files laid out `<root>/train/<class>/<name>.jpg` and `<root>/test/<class>/<name>.jpg`, class
  folders named as CIFAR-10's classes (e.g. the `CIFAR-10-images` conversion, quality-75 JPEGs). It is read as
  one stream, never unpacked; the JPEG bytes are kept as they are.
- torchvision's `cifar-10-batches-py` folder (data_batch_1..5, test_batch): Python pickles of dicts holding
  numpy arrays, read with the unpickler that builds numpy arrays and nothing else.

The source is `--source PATH` (the archive, the batches folder, or a folder holding `cifar-10-batches-py`), else
$DFGEN_CIFAR10. Images are uint8 (3, 32, 32), labels 0..9 in CIFAR-10's order."""

from __future__ import annotations

import io
import os
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from dfgen.errors import DfgenError
from dfgen.real_sources import load_numpy_pickle

CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
SPLITS = ("train", "test")
SHAPE = (3, 32, 32)
ENV = "DFGEN_CIFAR10"
BATCHES_DIR = "cifar-10-batches-py"
BATCH_FILES = {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]}
ARCHIVE_NOTE = "the archive's JPEG files, stored as they are (lossy: close to, not equal to, CIFAR-10's arrays)"


@dataclass
class CifarSplit:
    """One split: uint8 (N, 3, 32, 32) pixels, int64 labels and, for the JPEG archive, each image's file bytes."""

    images: np.ndarray
    labels: np.ndarray
    jpegs: list[bytes] | None = None
    jpeg_quality: int | None = None  # the IJG quality whose tables every JPEG uses; None: mixed or non-standard


def source_path(source: str | Path | None = None) -> Path:
    """`source` if given, else $DFGEN_CIFAR10; there is no default location."""
    chosen = source or os.environ.get(ENV)
    if not chosen:
        raise DfgenError(f"cifar10 needs --source PATH (a CIFAR-10 JPEG .tar.gz or torchvision's {BATCHES_DIR} "
                         f"folder), or ${ENV} set to one")
    path = Path(chosen).resolve()
    if not path.exists():
        raise DfgenError(f"CIFAR-10 source {path} does not exist; give the .tar.gz of JPEGs or the {BATCHES_DIR} "
                         "folder")
    return path


def describe(path: Path) -> dict[str, Any]:
    """Where the images came from, for dataset.json."""
    if path.is_dir():
        return {"name": "cifar10", "path": str(path), "format": BATCHES_DIR,
                "files": BATCH_FILES, "pixels": "the pickles' uint8 arrays, written as PNG"}
    return {"name": "cifar10", "path": str(path), "format": "tar.gz of JPEG files",
            "layout": "<root>/{train,test}/<class>/<name>.jpg", "pixels": ARCHIVE_NOTE,
            "order": "by file name, then class (classes interleave, so --limit keeps every class)"}


def read_cifar10(source: str | Path | None = None, splits: tuple[str, ...] = SPLITS) -> dict[str, CifarSplit]:
    """{split: CifarSplit} from the source (`source_path`)."""
    for split in splits:
        if split not in SPLITS:
            raise DfgenError(f"unknown split {split!r}; choose train or test")
    path = source_path(source)
    if path.is_dir():
        folder = path / BATCHES_DIR if (path / BATCHES_DIR).is_dir() else path
        return {split: read_batches(folder, split) for split in splits}
    return read_jpeg_archive(path, splits)


# ------------------------------------------------------------------------------------------------- JPEG archive
def _archive_members(path: Path) -> Iterator[tuple[str, str, str, bytes]]:
    """(split, class, file name, bytes) for every .jpg below a train/ or test/ folder, in archive order."""
    try:
        with tarfile.open(path, "r|*") as tar:
            for member in tar:
                parts = member.name.split("/")
                if not member.isfile() or len(parts) < 3 or not parts[-1].lower().endswith((".jpg", ".jpeg")):
                    continue
                split, cls, name = parts[-3], parts[-2], parts[-1]
                if split not in SPLITS:
                    continue
                if cls not in CLASSES:
                    raise DfgenError(f"{path}: {member.name} is in an unknown class folder {cls!r}; expected one of "
                                     f"{', '.join(CLASSES)}")
                yield split, cls, name, tar.extractfile(member).read()
    except (OSError, EOFError, tarfile.TarError) as exc:
        raise DfgenError(f"cannot read {path} as a tar archive ({exc}); give the CIFAR-10 .tar.gz of JPEGs or "
                         f"the {BATCHES_DIR} folder") from None


def _decode_jpeg(data: bytes, what: str) -> tuple[np.ndarray, dict]:
    """(uint8 (3, 32, 32) pixels, quantization tables) of one JPEG file."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            if image.format != "JPEG" or image.mode != "RGB" or image.size != SHAPE[1:]:
                raise DfgenError(f"{what} is a {image.format} {image.mode} {image.size[0]}x{image.size[1]} image; "
                                 "expected a 32x32 RGB JPEG")
            return np.asarray(image).transpose(2, 0, 1).copy(), image.quantization
    except DfgenError:
        raise
    except Exception as exc:  # PIL raises anything from OSError to SyntaxError on a damaged file
        raise DfgenError(f"{what} is not a readable JPEG ({type(exc).__name__})") from None


def read_jpeg_archive(path: Path, splits: tuple[str, ...] = SPLITS) -> dict[str, CifarSplit]:
    """The archive's splits, ordered by (file name, class) so the classes interleave; every image is decoded to
    check it (32x32 RGB JPEG) and its bytes kept."""
    found: dict[str, list[tuple[str, int, bytes]]] = {split: [] for split in splits}
    for split, cls, name, data in _archive_members(path):
        if split in found:
            found[split].append((name, CLASSES.index(cls), data))
    result = {}
    for split, entries in found.items():
        if not entries:
            raise DfgenError(f"{path} holds no {split}/<class>/*.jpg files; is it the CIFAR-10 JPEG archive?")
        entries.sort(key=lambda e: (e[0], e[1]))
        decoded = [_decode_jpeg(data, f"{path}: {split}/{CLASSES[c]}/{name}") for name, c, data in entries]
        images = np.stack([pixels for pixels, _ in decoded])
        labels = np.array([c for _, c, _ in entries], dtype=np.int64)
        tables = decoded[0][1]
        same = all(q == tables for _, q in decoded)
        quality = jpeg_quality(images[0], tables) if same else None
        result[split] = CifarSplit(images, labels, [data for _, _, data in entries], quality)
    return result


def jpeg_quality(pixels: np.ndarray, tables: dict) -> int | None:
    """The quality setting (1-100) whose standard quantization tables are `tables`, found by encoding `pixels`
    at each; None when no standard quality gives them."""
    image = Image.fromarray(pixels.transpose(1, 2, 0))
    for quality in range(1, 101):
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", quality=quality)
        with Image.open(buffer) as encoded:
            if encoded.quantization == tables:
                return quality
    return None


# ------------------------------------------------------------------------------------------------- batches
def read_batches(folder: Path, split: str) -> CifarSplit:
    """One split from torchvision's `cifar-10-batches-py` pickles, in the files' order."""
    images, labels = [], []
    for name in BATCH_FILES[split]:
        path = folder / name
        if not path.is_file():
            raise DfgenError(f"{path} is missing; --source must be torchvision's {BATCHES_DIR} folder (files "
                             "data_batch_1..5 and test_batch)")
        batch = load_numpy_pickle(path.read_bytes())
        if not isinstance(batch, dict):
            raise DfgenError(f"{path}: expected a dict with 'data' and 'labels', got {type(batch).__name__}")
        batch = {key.decode("latin1") if isinstance(key, bytes) else key: value for key, value in batch.items()}
        data, batch_labels = batch.get("data"), batch.get("labels")
        if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
            raise DfgenError(f"{path}: 'data' is not a uint8 (N, 3072) array")
        try:
            batch_labels = np.asarray(batch_labels if batch_labels is not None else [], dtype=np.int64)
        except (TypeError, ValueError):
            batch_labels = np.zeros(0, dtype=np.int64)
        if batch_labels.shape != (len(data),) or (len(data) and not 0 <= batch_labels.min() <= batch_labels.max() <= 9):
            raise DfgenError(f"{path}: 'labels' is not {len(data)} labels in 0..9")
        images.append(data.reshape(-1, *SHAPE))
        labels.append(batch_labels)
    return CifarSplit(np.concatenate(images), np.concatenate(labels))
