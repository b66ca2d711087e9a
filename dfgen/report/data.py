"""Reading side of `dfgen report`: check every shard of a dataset (dfgen.dataset opens it) against its sidecar in
one streaming pass, and keep a deterministic per-class reservoir sample of *references* to images
(shard, byte offset, size), so that only the kept images are ever read again and decoded. Plain WebDataset shards
(no sidecars) are read the same way without the checksums; an ImageFolder's files are sampled from their list."""

from __future__ import annotations

import hashlib
import io
import random
import tarfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from dfgen.dataset import IMAGE_EXTS, DatasetInfo, ShardInfo, split_key
from dfgen.errors import DfgenError

_READ_CHUNK = 1 << 20
_TAR_BLOCK = 512


@dataclass(frozen=True)
class ImageRef:
    """Where one image's encoded bytes lie: enough to read it again without parsing the tar."""

    key: str
    label: int
    shard: Path
    offset: int
    size: int
    ext: str
    remedy: str = "rerun the synthesize command to remake the shard"  # what to do where it cannot be decoded


@dataclass
class ScanResult:
    """What the streaming pass found: the per-class samples and the shard checks."""

    samples: dict[int, list[ImageRef]]
    class_counts: list[int]
    images_scanned: int
    shards_checked: int
    bytes_on_disk: int
    seconds: float
    warnings: list[str] = field(default_factory=list)


class _HashingReader:
    """A read-only file wrapper that hashes and counts every byte tarfile pulls through it."""

    def __init__(self, handle: io.BufferedReader) -> None:
        self.handle = handle
        self.digest = hashlib.sha256()
        self.position = 0

    def read(self, size: int = -1) -> bytes:
        block = self.handle.read(size)
        self.digest.update(block)
        self.position += len(block)
        return block

    def drain(self) -> None:
        while self.read(_READ_CHUNK):
            pass


class Reservoir:
    """Per-class reservoir sampling (algorithm R): after any stream, each class keeps a uniform random
    subset of at most `k` of its items. Deterministic: one random.Random(seed) drawn in stream order."""

    def __init__(self, k: int, seed: int) -> None:
        self.k = k
        self.rng = random.Random(seed)
        self.kept: dict[int, list[Any]] = {}
        self.seen: dict[int, int] = {}

    def offer(self, label: int, item: Any) -> None:
        t = self.seen.get(label, 0)
        self.seen[label] = t + 1
        slots = self.kept.setdefault(label, [])
        if t < self.k:
            slots.append(item)
        else:
            j = self.rng.randrange(t + 1)
            if j < self.k:
                slots[j] = item


def scan_shards(
    dataset: DatasetInfo,
    images_per_class: int,
    seed: int,
    progress: Callable[[int, int], None] | None = None,
    image_key: str | None = None,
    label_key: str = "cls",
) -> ScanResult:
    """One streaming pass over every shard: verify size and sha256 against the sidecar (where the shard has one:
    plain WebDataset shards record none), count labels, and reservoir-sample `images_per_class` image references
    per class. Decodes no image. `image_key`: the image entry (None: the first of IMAGE_EXTS); `label_key`: the
    integer label's."""
    start = time.perf_counter()
    reservoir = Reservoir(images_per_class, seed)
    counts = [0] * dataset.num_classes
    scanned = 0
    total_bytes = 0
    warnings: list[str] = []
    for number, shard in enumerate(dataset.shards):
        size = shard.path.stat().st_size
        total_bytes += size
        if shard.bytes is not None and size != shard.bytes:
            raise DfgenError(
                f"shard {shard.path} is {size} bytes but its sidecar {shard.sidecar_path.name} says {shard.bytes}: "
                "truncated or changed; rerun the synthesize command to remake it"
            )
        found = _scan_one(shard, dataset.num_classes, reservoir, counts, image_key, label_key)
        scanned += found
        if shard.count is not None and found != int(shard.count):
            raise DfgenError(
                f"shard {shard.path} holds {found} images but its sidecar says {shard.count}; rerun the synthesize "
                "command to remake it"
            )
        if progress is not None:
            progress(number + 1, len(dataset.shards))
    samples = {label: sorted(refs, key=lambda r: r.key) for label, refs in sorted(reservoir.kept.items())}
    return ScanResult(samples, counts, scanned, len(dataset.shards), total_bytes, time.perf_counter() - start, warnings)


def _scan_one(shard: ShardInfo, num_classes: int, reservoir: Reservoir, counts: list[int], image_key: str | None,
              label_key: str) -> int:
    """Stream one tar; returns its number of images. Errors name the shard."""
    remedy = "rerun the synthesize command to remake it" if shard.sha256 else "rewrite the shard"
    found = 0
    data_end = 0
    pending: dict[str, Any] = {}

    def flush() -> None:
        nonlocal found
        if not pending:
            return
        key = pending.get("key")
        if "label" not in pending or "image" not in pending:
            images = image_key or "/.".join(IMAGE_EXTS)
            missing = f"label (.{label_key})" if "label" not in pending else f"image (.{images})"
            advice = ("the shard is not in dfgen's format" if shard.sha256
                      else "name its keys with --image-key / --label-key")
            raise DfgenError(f"shard {shard.path}: sample {key} has no {missing}; {advice}")
        label = pending["label"]
        if not 0 <= label < num_classes:
            raise DfgenError(
                f"shard {shard.path}: sample {key} has label {label}, outside the dataset's {num_classes} classes"
                + ("" if shard.sha256 else "; pass --num-classes")
            )
        counts[label] += 1
        found += 1
        offset, size, ext = pending["image"]
        reservoir.offer(label, ImageRef(key, label, shard.path, offset, size, ext, remedy))
        pending.clear()

    try:
        with open(shard.path, "rb") as handle:
            reader = _HashingReader(handle)
            with tarfile.open(fileobj=reader, mode="r|", bufsize=_READ_CHUNK) as archive:
                for member in archive:
                    if not member.isfile():
                        continue
                    key, ext = split_key(member.name)
                    if pending and pending.get("key") != key:
                        flush()
                    pending["key"] = key
                    data_end = max(data_end, member.offset_data + member.size)
                    if ext == label_key:
                        text = archive.extractfile(member).read()
                        try:
                            pending["label"] = int(text.decode().strip())
                        except (UnicodeDecodeError, ValueError):
                            raise DfgenError(
                                f"shard {shard.path}: {member.name} is not an integer label"
                            ) from None
                    elif ext.lower() == image_key if image_key else ext.lower() in IMAGE_EXTS:
                        pending["image"] = (member.offset_data, member.size, ext.lower())
            reader.drain()
    except DfgenError:
        raise
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise DfgenError(f"shard {shard.path} is truncated or not a tar file ({exc}); {remedy}") from exc
    # tarfile stops quietly at a truncated header; the data of the last member and the end-of-archive
    # blocks must all be there.
    padded_end = -(-data_end // _TAR_BLOCK) * _TAR_BLOCK
    if reader.position < padded_end + 2 * _TAR_BLOCK:
        raise DfgenError(
            f"shard {shard.path} is truncated (it ends before its last member's data and the end-of-archive "
            f"marker); {remedy}"
        )
    flush()  # the last sample, once the shard is known to be whole (a cut-off sample is a truncation)
    if shard.sha256 is not None and reader.digest.hexdigest() != shard.sha256:
        raise DfgenError(
            f"shard {shard.path}: sha256 does not match its sidecar {shard.sidecar_path.name} (the shard is damaged "
            "or was changed); rerun the synthesize command to remake it"
        )
    return found


def scan_files(files: list[tuple[Path, int]], num_classes: int, images_per_class: int, seed: int) -> ScanResult:
    """`scan_shards` for image files (an ImageFolder's, labels given): count labels and reservoir-sample references
    to `images_per_class` files per class in the list's order. Decodes no image; nothing to verify."""
    start = time.perf_counter()
    reservoir = Reservoir(images_per_class, seed)
    counts = [0] * num_classes
    total_bytes = 0
    for path, label in files:
        size = path.stat().st_size
        total_bytes += size
        counts[label] += 1
        reservoir.offer(label, ImageRef(path.name, label, path, 0, size, path.suffix.lstrip(".").lower(),
                                        "remove or replace the file"))
    samples = {label: sorted(refs, key=lambda r: str(r.shard)) for label, refs in sorted(reservoir.kept.items())}
    return ScanResult(samples, counts, len(files), 0, total_bytes, time.perf_counter() - start)


def decode_refs(refs: list[ImageRef], channels: int) -> list[np.ndarray]:
    """Read and decode the referenced images as uint8 (C, H, W) with `channels` (1 grey or 3 RGB)."""
    mode = "L" if channels == 1 else "RGB"
    by_shard: dict[Path, list[int]] = {}
    for i, ref in enumerate(refs):
        by_shard.setdefault(ref.shard, []).append(i)
    decoded: list[np.ndarray | None] = [None] * len(refs)
    for shard, positions in by_shard.items():
        with open(shard, "rb") as handle:
            for i in sorted(positions, key=lambda p: refs[p].offset):
                ref = refs[i]
                handle.seek(ref.offset)
                data = handle.read(ref.size)
                try:
                    image = Image.open(io.BytesIO(data))
                    image = image.convert(mode)
                except (UnidentifiedImageError, OSError, ValueError) as exc:
                    raise DfgenError(
                        f"{'shard ' if shard.suffix == '.tar' else ''}{shard}: image {ref.key}.{ref.ext} cannot be "
                        f"decoded ({exc}); {ref.remedy}"
                    ) from exc
                array = np.array(image, dtype=np.uint8)  # a writable copy, torch.from_numpy needs one
                decoded[i] = array[None] if array.ndim == 2 else array.transpose(2, 0, 1).copy()
    return [d for d in decoded if d is not None]
