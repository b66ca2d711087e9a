"""What a run's data is, independent of where it lies: `--resume` compares this, not absolute paths, so a dataset
staged to another disk (node-local scratch, a new mount point) continues its run, and a different one is refused.

A dfgen dataset is its index.json's shard hashes and counts; plain WebDataset shards their file names, sizes and
sample counts; an ImageFolder or a flat directory its file names, labels and classes. A `--fraction` subset is
fixed by the source (the same files wherever it lies), so it is part of what is compared.
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any

from distill.sources import Source

DATA_FIELDS = ("shards", "val", "val_labels")  # settings that name data by path, compared by identity instead


def source_identity(info: Source) -> str:
    """A hash of what `info` holds (see the module's description)."""
    content: dict[str, Any] = {"kind": info.kind, "n": info.n, "num_classes": info.num_classes,
                               "classes": info.classes}
    if info.kind == "shards" and info.dataset is not None:  # a dfgen dataset: its index's hashes
        content["shards"] = [[os.path.relpath(s.path, info.dataset.path), s.count, s.sha256 or s.bytes]
                             for s in info.dataset.shards]
    elif info.files:
        content["files"] = info.files
        content["labels"] = info.labels
    else:
        content["shards"] = [[os.path.basename(url), n, _size(url)]
                             for url, n in zip(info.urls, info.nsamples, strict=True)]
    return hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()


def run_data_identity(infos: list[Source], val: Source | None) -> dict[str, Any]:
    """The identity of a run's training sources (in order) and its validation data, as a checkpoint stores it."""
    return {"shards": [source_identity(i) for i in infos], "val": source_identity(val) if val else None}


def _size(url: str) -> int | None:
    try:
        return os.path.getsize(url)
    except OSError:
        return None
