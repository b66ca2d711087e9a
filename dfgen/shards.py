"""Writing shards: deterministic WebDataset tar shards written atomically, a sidecar stats file
per shard, and the check that says whether a shard is done. The names and the index are dfgen.dataset's."""

from __future__ import annotations

import errno
import io
import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import webdataset as wds
from PIL import Image

from dfgen.atomic import TMP_MARK, write_atomic, write_json_atomic
from dfgen.dataset import SHARDS_DIR, read_sidecar, sha256_file, shard_name, shard_paths
from dfgen.errors import DfgenError

__all__ = ["TMP_MARK", "write_json_atomic"]  # re-exported: the shard writers' atomic files (dfgen.atomic)

KEY_DIGITS = 9  # keys are zero-padded global indices: up to a billion images
_PIL_MODES = {1: "L", 2: "LA", 3: "RGB", 4: "RGBA"}


def image_key(index: int) -> str:
    return f"{index:0{KEY_DIGITS}d}"


def check_writable_channels(channels: int, fmt: str) -> None:
    if channels not in _PIL_MODES:
        raise DfgenError(f"cannot write {channels}-channel images; dfgen writes 1, 2, 3 or 4 channels")
    if fmt == "jpg" and channels not in (1, 3):
        raise DfgenError(f"JPEG cannot hold {channels}-channel images; use --format png")


def encode_image(pixels: np.ndarray, fmt: str = "png", quality: int = 95) -> bytes:
    """(C, H, W) uint8 -> encoded bytes; one channel is written as greyscale."""
    channels = pixels.shape[0]
    array = pixels[0] if channels == 1 else np.ascontiguousarray(pixels.transpose(1, 2, 0))
    image = Image.fromarray(array, mode=_PIL_MODES[channels]) if channels != 1 else Image.fromarray(array)
    buffer = io.BytesIO()
    if fmt == "png":
        image.save(buffer, format="PNG", compress_level=6)
    elif fmt == "jpg":
        image.save(buffer, format="JPEG", quality=quality)
    elif fmt == "webp":
        image.save(buffer, format="WEBP", quality=quality, method=4, lossless=False)
    else:
        raise DfgenError(f"unknown image format {fmt!r}")
    return buffer.getvalue()


@dataclass
class Sample:
    key: str
    image: bytes
    label: int
    meta: dict[str, Any]


def write_shard(out: Path, shard: int, samples: Iterable[Sample], ext: str, stats: dict[str, Any]) -> dict[str, Any]:
    """Write one shard atomically, then its sidecar. Returns the sidecar.

    The tar is deterministic (fixed mtime, owner and mode, sorted members), so the same samples give
    the same bytes. A failure (disk full included) leaves no shard and no sidecar behind."""
    tar_path, side_path = shard_paths(out, shard)
    count = 0

    def write_tar(handle) -> None:
        nonlocal count
        writer = wds.TarWriter(handle, user="", group="", mode=0o444, mtime=0, encoder=False)
        for sample in samples:
            writer.write(
                {
                    "__key__": sample.key,
                    ext: sample.image,
                    "cls": str(sample.label).encode(),
                    "json": json.dumps(sample.meta, sort_keys=True).encode(),
                }
            )
            count += 1
        writer.close()

    try:
        write_atomic(tar_path, write_tar)
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise DfgenError(
                f"disk full (or over quota) while writing {tar_path.name}; the shard was not marked done. Free space "
                "and rerun the same command to continue"
            ) from exc
        raise
    sidecar = {
        "shard": shard,
        "url": f"{SHARDS_DIR}/{tar_path.name}",
        "count": count,
        "bytes": tar_path.stat().st_size,
        "sha256": sha256_file(tar_path),
        **stats,
    }
    write_json_atomic(side_path, sidecar)
    return sidecar


def shard_done(out: Path, shard: int, expected_count: int | None = None) -> dict[str, Any] | None:
    """A shard is done when its tar and sidecar both exist and the tar's sha256 matches the sidecar."""
    tar_path, _ = shard_paths(out, shard)
    sidecar = read_sidecar(out, shard)
    if sidecar is None or not tar_path.is_file():
        return None
    if expected_count is not None and sidecar.get("count") != expected_count:
        return None
    if tar_path.stat().st_size != sidecar.get("bytes") or sha256_file(tar_path) != sidecar.get("sha256"):
        return None
    return sidecar


def remove_temporaries(out: Path, shards: Iterable[int] | None = None) -> int:
    """Remove temporary files a killed run left behind (only those of `shards`, if given, so that a
    rank never touches another rank's files in flight)."""
    shard_dir = Path(out) / SHARDS_DIR
    if not shard_dir.is_dir():
        return 0
    wanted = None if shards is None else {shard_name(k) for k in shards}
    removed = 0
    for path in shard_dir.iterdir():
        if TMP_MARK in path.name and (wanted is None or path.name.split(".")[0] in wanted):
            path.unlink(missing_ok=True)
            removed += 1
    return removed
