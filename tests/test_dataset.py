"""The dataset format's one reader: a written set opens to what was written, and every kind of damage is one line
naming the file."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from dfgen.dataset import (
    DATASET_FILE,
    INDEX_FILE,
    DatasetInfo,
    build_index,
    open_dataset,
    read_description,
    read_sidecars,
    sha256_file,
    shard_paths,
    split_key,
    with_sidecar_figures,
)
from dfgen.errors import DfgenError
from dfgen.realdata import read_image_dataset, write_image_dataset
from distill.errors import DistillError
from distill.sources import open_source


@pytest.fixture
def written(tmp_path: Path) -> tuple[Path, torch.Tensor, torch.Tensor]:
    """20 grey 6x5 images of 3 classes in shards of 8 (8 + 8 + 4)."""
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (20, 1, 6, 5), dtype=torch.uint8, generator=generator)
    labels = torch.arange(20) % 3
    root = write_image_dataset(tmp_path / "set", images, labels, {"num_classes": 3, "classes": ["a", "b", "c"]},
                               shard_size=8)
    return root, images, labels


def _error(call, *args) -> str:
    with pytest.raises(DfgenError) as caught:
        call(*args)
    message = str(caught.value)
    assert "\n" not in message
    return message


def test_a_written_set_opens_to_what_was_written(written):
    root, images, labels = written
    info = open_dataset(root)
    assert (info.n, info.num_classes, info.in_chans, info.image_size) == (20, 3, 1, (1, 6, 5))
    assert info.class_names == ["a", "b", "c"] and info.name == "set" and not info.synthetic
    assert [s.path for s in info.shards] == [shard_paths(root, k)[0] for k in range(3)]
    assert [s.count for s in info.shards] == [8, 8, 4]
    for shard in info.shards:
        assert shard.bytes == shard.path.stat().st_size and shard.sha256 == sha256_file(shard.path)
    sidecars = read_sidecars(info)
    assert [s["url"] for s in sidecars] == [f"shards/shard-00000{k}.tar" for k in range(3)]
    assert build_index(sidecars, name="set") == json.loads((root / INDEX_FILE).read_text())  # the index round trip
    assert with_sidecar_figures(info) == info  # index and sidecars agree
    pixels, read_labels = read_image_dataset(root)
    assert torch.equal(pixels, images) and torch.equal(read_labels, labels)


def test_description_fallbacks_and_recorded_fields(tmp_path):
    info = DatasetInfo(tmp_path, "x", {"num_classes": 2, "image_size": [3, 4, 4], "classes": ["only one"],
                                       "teacher": {"name": "digits"},
                                       "soft_labels": {"k": 5, "views": {"count": 4}}}, [])
    assert info.in_chans == 3 and info.class_names == ["0", "1"] and info.classes == ["only one"]
    assert info.synthetic and info.teacher == {"name": "digits"} and (info.soft_k, info.soft_views) == (5, 4)
    bare = DatasetInfo(tmp_path, "x", {"kind": "real", "num_classes": 2}, [])
    assert (bare.in_chans, bare.image_size, bare.teacher, bare.soft_k, bare.soft_views) == (3, None, None, None, 0)


def test_split_key_is_webdatasets():
    assert split_key("000000003.png") == ("000000003", "png")
    assert split_key("dir.v1/000000003.soft.npy") == ("dir.v1/000000003", "soft.npy")
    assert split_key("README") == ("README", "")


def test_missing_truncated_and_foreign_shards_are_listed_in_one_line(written):
    root, _, _ = written
    tar = shard_paths(root, 1)[0]
    size = tar.stat().st_size
    tar.write_bytes(tar.read_bytes()[:1024])
    message = _error(open_dataset, root)
    assert message == (f"{root}: 1 of 3 shard(s) are damaged: shard-000001.tar (truncated or changed: 1024 of {size} "
                       "bytes); rerun the dfgen command that made the dataset to remake them")
    tar.write_bytes(np.random.default_rng(0).integers(0, 256, size, dtype=np.uint8).tobytes())
    assert "shard-000001.tar (not a tar file)" in _error(open_dataset, root)
    tar.unlink()
    shard_paths(root, 2)[0].unlink()
    assert "2 of 3 shard(s)" in _error(open_dataset, root)
    with pytest.raises(DistillError, match=r"shard-000001.tar \(missing\), shard-000002.tar \(missing\)"):
        open_source(root)  # distill reads through the same checks


def test_sidecars_missing_or_disagreeing_with_the_index(written):
    root, _, _ = written
    info = open_dataset(root)
    _, sidecar = shard_paths(root, 0)
    record = json.loads(sidecar.read_text())
    sidecar.write_text(json.dumps({**record, "sha256": "0" * 64}))
    assert _error(read_sidecars, info) == (
        f"{root / INDEX_FILE} does not match its shards (shard-000000.tar has another sha256 in its sidecar "
        f"shard-000000.json); rebuild it with `dfgen index {root}`")
    sidecar.write_text(json.dumps({**record, "count": 7}))
    assert "has another count" in _error(read_sidecars, info)
    sidecar.write_text(json.dumps({k: v for k, v in record.items() if k != "bytes"}))
    assert "has no sha256/bytes" in _error(with_sidecar_figures, info)
    sidecar.unlink()
    assert "the sidecar of shard-000000.tar is missing" in _error(read_sidecars, info)
    assert open_dataset(root).n == 20  # readers that need only the index do not need the sidecars


def test_dataset_and_index_files_are_checked(written, tmp_path):
    root, _, _ = written
    assert "is not a directory" in _error(open_dataset, root / "nowhere")
    index = json.loads((root / INDEX_FILE).read_text())
    (root / INDEX_FILE).write_text(json.dumps({**index, "shardlist": [{"nsamples": 8}]}))
    assert "has an entry without 'url'" in _error(open_dataset, root)
    (root / INDEX_FILE).write_text(json.dumps({**index, "shardlist": [{"url": "shards/x.tar", "nsamples": "many"}]}))
    assert "the entry of shards/x.tar has a count or size that is not a number" in _error(open_dataset, root)
    (root / INDEX_FILE).write_text(json.dumps({**index, "shardlist": []}))
    assert f"dataset {root} is empty" in _error(open_dataset, root)
    (root / INDEX_FILE).write_text("{not json")
    assert "is not valid JSON" in _error(open_dataset, root)
    (root / INDEX_FILE).unlink()
    assert "the shard index is missing; rebuild it with `dfgen index" in _error(open_dataset, root)
    description = json.loads((root / DATASET_FILE).read_text())
    (root / DATASET_FILE).write_text(json.dumps({**description, "num_classes": 0}))
    assert "has no positive 'num_classes'" in _error(read_description, root)
    (root / DATASET_FILE).write_text("[1, 2]")
    assert "does not hold a JSON object" in _error(open_dataset, root)
    (root / DATASET_FILE).unlink()
    assert f"{root / DATASET_FILE} not found: {root} is not a complete dfgen dataset" in _error(open_dataset, root)
