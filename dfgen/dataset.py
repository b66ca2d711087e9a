"""The on-disk dataset format that dfgen writes and everybody else reads: the file names, the shard and sidecar
names, the shard index, and `open_dataset`, which reads a dataset directory and checks it.

A dataset directory holds

- dataset.json: what the set is (kind, classes, image shape, how it was made);
- index.json: the wids shard index (each shard's url relative to the index, images, bytes, sha256);
- shards/shard-NNNNNN.tar: WebDataset tar shards, and beside each its sidecar shard-NNNNNN.json (the same figures
  and the shard's statistics), written once the tar is complete;
- config.json (a synthetic set only): the configuration the directory is being made with.
"""

from __future__ import annotations

import hashlib
import json
import tarfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from dfgen.errors import DfgenError

DATASET_FILE = "dataset.json"
INDEX_FILE = "index.json"
CONFIG_FILE = "config.json"  # written at the start of a synthesis: what the directory is being made with
SHARDS_DIR = "shards"
INDEX_KIND = "wids-shard-index-v1"
IMAGE_EXTS = ("png", "jpg", "jpeg", "webp")  # the image entries a sample may have, in the order they are looked for


def shard_name(shard: int) -> str:
    return f"shard-{shard:06d}"


def shard_paths(root: Path, shard: int) -> tuple[Path, Path]:
    """(tar, sidecar) of shard number `shard` of the dataset directory `root`."""
    base = Path(root) / SHARDS_DIR / shard_name(shard)
    return base.with_suffix(".tar"), base.with_suffix(".json")


def split_key(name: str) -> tuple[str, str]:
    """WebDataset's key/extension split of a tar member name: the key ends at the first dot of the base name."""
    slash = name.rfind("/") + 1
    dot = name.find(".", slash)
    return (name, "") if dot < 0 else (name[:dot], name[dot + 1 :])


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def read_sidecar(root: Path, shard: int) -> dict[str, Any] | None:
    """The sidecar of shard `shard`, or None where it is missing or unreadable (the shard is not done)."""
    _, side_path = shard_paths(root, shard)
    try:
        return json.loads(side_path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def build_index(sidecars: list[dict[str, Any]], name: str) -> dict[str, Any]:
    """The wids shard index of the shards the sidecars describe (urls relative to the index file)."""
    return {
        "__kind__": INDEX_KIND,
        "wids_version": 1,
        "name": name,
        "shardlist": [
            {"url": s["url"], "nsamples": s["count"], "filesize": s["bytes"], "sha256": s["sha256"]}
            for s in sorted(sidecars, key=lambda s: s["shard"])
        ],
    }


@dataclass(frozen=True)
class ShardInfo:
    """One shard as the index (or, after `with_sidecar_figures`, its sidecar) describes it; None: not given."""

    path: Path  # the tar
    count: int | None  # images
    bytes: int | None
    sha256: str | None

    @property
    def sidecar_path(self) -> Path:
        return self.path.with_suffix(".json")


@dataclass(frozen=True)
class DatasetInfo:
    """A dataset directory: its dataset.json and its shards in index order."""

    path: Path
    name: str  # the directory's name
    description: dict[str, Any]  # dataset.json
    shards: list[ShardInfo]

    @property
    def n(self) -> int:
        return sum(s.count or 0 for s in self.shards)

    @property
    def num_classes(self) -> int:
        return int(self.description["num_classes"])

    @property
    def classes(self) -> list[str] | None:
        """The class names dataset.json records, None where it records none."""
        names = self.description.get("classes")
        return [str(c) for c in names] if isinstance(names, list) else None

    @property
    def class_names(self) -> list[str]:
        """One name per class: the recorded ones where they fit, else the class indices."""
        names = self.classes
        if names is not None and len(names) == self.num_classes:
            return names
        return [str(i) for i in range(self.num_classes)]

    @property
    def image_size(self) -> tuple[int, int, int] | None:
        """(C, H, W) of the images, None where dataset.json does not give it."""
        size = self.description.get("image_size")
        return tuple(int(v) for v in size) if isinstance(size, list) and len(size) == 3 else None

    @property
    def in_chans(self) -> int:
        """Image channels: dataset.json's in_chans, else its image_size's first entry, else 3."""
        if "in_chans" in self.description:
            return int(self.description["in_chans"])
        size = self.description.get("image_size") or [3]
        return int(size[0])

    @property
    def synthetic(self) -> bool:
        return self.description.get("kind", "synthetic") != "real"

    @property
    def teacher(self) -> dict[str, Any] | None:
        """The teacher entry of a synthetic set (name, source, data_config), if any."""
        teacher = self.description.get("teacher")
        return teacher if isinstance(teacher, dict) else None

    @property
    def soft_k(self) -> int | None:
        """k of the stored top-k teacher logits ("soft_labels"), None when the set stores none."""
        soft = self.description.get("soft_labels")
        return int(soft["k"]) if isinstance(soft, dict) and soft.get("k") else None

    @property
    def soft_views(self) -> int:
        """Teacher-labelled crops stored per image (dfgen --soft-views), 0 when none."""
        soft = self.description.get("soft_labels")
        views = soft.get("views") if isinstance(soft, dict) else None
        return int(views["count"]) if isinstance(views, dict) and views.get("count") else 0


def _read_json(path: Path, what: str, hint: str) -> dict[str, Any]:
    if not path.is_file():
        raise DfgenError(f"{path} not found: {what}; {hint}")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError, OSError) as exc:
        raise DfgenError(f"{path} is not valid JSON ({exc}); {hint}") from exc
    if not isinstance(data, dict):
        raise DfgenError(f"{path} does not hold a JSON object; {hint}")
    return data


def read_description(path: str | Path) -> dict[str, Any]:
    """dataset.json of the dataset directory `path`, checked to be dfgen's (a positive num_classes)."""
    root = Path(path)
    if not root.is_dir():
        raise DfgenError(f"{root} is not a directory; pass a dataset directory written by dfgen synthesize")
    description = _read_json(
        root / DATASET_FILE,
        f"{root} is not a complete dfgen dataset",
        "pass a directory written by dfgen synthesize or dfgen export-digits (an unfinished synthesis writes it "
        "when its last shard is done; rerun the synthesize command or dfgen index)",
    )
    if not isinstance(description.get("num_classes"), int) or description["num_classes"] < 1:
        raise DfgenError(f"{root / DATASET_FILE} has no positive 'num_classes'; it was not written by dfgen")
    return description


def open_dataset(path: str | Path) -> DatasetInfo:
    """Read dataset.json and index.json of a dataset directory and check every listed shard: present, of the size
    the index gives, a tar file. Raises DfgenError naming the file and what to do (one line)."""
    root = Path(path)
    description = read_description(root)
    rebuild = f"rebuild it with `dfgen index {root}`"
    index = _read_json(root / INDEX_FILE, "the shard index is missing", rebuild)
    shardlist = index.get("shardlist")
    if not isinstance(shardlist, list):
        raise DfgenError(f"{root / INDEX_FILE} has no shardlist; {rebuild}")
    shards = []
    for entry in shardlist:
        if not isinstance(entry, dict) or not entry.get("url"):
            raise DfgenError(f"{root / INDEX_FILE} has an entry without 'url'; {rebuild}")
        try:
            shards.append(ShardInfo(
                path=root / str(entry["url"]),
                count=int(entry["nsamples"]) if "nsamples" in entry else None,
                bytes=int(entry["filesize"]) if "filesize" in entry else None,
                sha256=str(entry["sha256"]) if "sha256" in entry else None,
            ))
        except (TypeError, ValueError):
            raise DfgenError(f"{root / INDEX_FILE}: the entry of {entry['url']} has a count or size that is not a "
                             f"number; {rebuild}") from None
    info = DatasetInfo(root, root.resolve().name, description, shards)
    if info.n == 0:
        raise DfgenError(f"dataset {root} is empty (no shards or no images in {INDEX_FILE}); {rebuild} or rerun the "
                         "dfgen command that made the dataset")
    _check_shard_files(info)
    return info


def damaged_shards(tars: list[Path], sizes: list[int | None]) -> str | None:
    """Which tar files are missing, not of their expected size (None: any size) or not tar files: one line naming the
    first few ("N of M shard(s) are damaged: NAME (missing), ..."), None when all are sound."""
    problems = []
    for tar, size in zip(tars, sizes, strict=True):
        if not tar.is_file():
            problems.append(f"{tar.name} (missing)")
        elif size is not None and tar.stat().st_size != size:
            problems.append(f"{tar.name} (truncated or changed: {tar.stat().st_size} of {size} bytes)")
        elif not tarfile.is_tarfile(tar):
            problems.append(f"{tar.name} (not a tar file)")
    if not problems:
        return None
    listed = ", ".join(problems[:5]) + (" ..." if len(problems) > 5 else "")
    return f"{len(problems)} of {len(tars)} shard(s) are damaged: {listed}"


def _check_shard_files(info: DatasetInfo) -> None:
    damage = damaged_shards([s.path for s in info.shards], [s.bytes for s in info.shards])
    if damage:
        raise DfgenError(f"{info.path}: {damage}; rerun the dfgen command that made the dataset to remake them")


def read_sidecars(info: DatasetInfo) -> list[dict[str, Any]]:
    """The sidecar of every shard, in index order, each checked to give sha256 and bytes and to agree with the
    index. A missing sidecar means the shard was never completed."""
    sidecars = []
    for shard in info.shards:
        sidecar = _read_json(
            shard.sidecar_path,
            f"the sidecar of {shard.path.name} is missing, so the shard was never completed",
            "rerun the synthesize command to remake the shard",
        )
        if "sha256" not in sidecar or "bytes" not in sidecar:
            raise DfgenError(f"{shard.sidecar_path} has no sha256/bytes; rerun the synthesize command to remake "
                             f"{shard.path.name}")
        for field, key in (("sha256", "sha256"), ("bytes", "bytes"), ("count", "count")):
            indexed = getattr(shard, field)
            if indexed is not None and key in sidecar and sidecar[key] != indexed:
                raise DfgenError(
                    f"{info.path / INDEX_FILE} does not match its shards ({shard.path.name} has another {key} in its "
                    f"sidecar {shard.sidecar_path.name}); rebuild it with `dfgen index {info.path}`"
                )
        sidecars.append(sidecar)
    return sidecars


def with_sidecar_figures(info: DatasetInfo) -> DatasetInfo:
    """`info` whose shards carry their sidecars' figures (bytes, sha256, count), each sidecar checked
    (read_sidecars): what a full check of the shards' contents compares against."""
    shards = [
        replace(shard, bytes=int(side["bytes"]), sha256=str(side["sha256"]),
                count=int(side["count"]) if side.get("count") is not None else None)
        for shard, side in zip(info.shards, read_sidecars(info), strict=True)
    ]
    return replace(info, shards=shards)
