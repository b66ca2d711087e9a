"""distill's data: the sources (ImageFolder, plain WebDataset shards, ImageNet's flat validation layout, fractions),
the training stream (class mixing, source mix, repeated augmentation), corrupt shards counted across workers and
ranks, and evaluation that reads only its own share."""

import json
import math
import shutil
from collections import Counter
from pathlib import Path

import pytest
import torch
import webdataset as wds

from dfgen.realdata import write_image_dataset
from distill import DistillError
from distill import data as data_module
from distill.data import FileEval, eval_dataset, probe_images
from distill.pipeline import BadShards, ShardHealth, StreamSettings, mixed_samples, train_loader
from distill.sources import open_source, read_label_file


def to_uint8(images):
    return (images.clamp(0, 1) * 255).round().to(torch.uint8)


def write_folder(dataset: Path, folder: Path, flat: bool = False) -> list[tuple[str, int]]:
    """The images of a dfgen dataset as PNG files: in class sub-folders, or flat (returns (file, label) pairs)."""
    written = []
    for url in open_source(dataset).urls:
        for sample in wds.tariterators.tarfile_samples([{"url": url}]):
            label = sample["cls"].decode()
            target = folder if flat else folder / label
            target.mkdir(parents=True, exist_ok=True)
            (target / f"{sample['__key__']}.png").write_bytes(sample["png"])
            written.append((f"{sample['__key__']}.png", int(label)))
    return written


@pytest.fixture(scope="module")
def split():
    from dfgen.zoo.digits import load_digits_split

    return load_digits_split()


@pytest.fixture(scope="module")
def digits_folder(digits, tmp_path_factory):
    root = tmp_path_factory.mktemp("folder")
    write_folder(digits / "train", root / "train")
    write_folder(digits / "test", root / "test")
    return root


@pytest.fixture(scope="module")
def by_class(split, tmp_path_factory):
    """320 digits sorted by class in shards of 32: each shard holds one class (dfgen shards hold a few batches)."""
    order = torch.argsort(split.train_labels, stable=True)
    keep = torch.cat([order[split.train_labels[order] == c][:32] for c in range(10)])
    root = tmp_path_factory.mktemp("by_class") / "data"
    return write_image_dataset(root, to_uint8(split.train_images[keep]), split.train_labels[keep],
                               {"num_classes": 10}, shard_size=32)


def settings(**overrides):
    values = dict(seed="0:0:rank0", batch_size=16, num_classes=10, mode="L", transform=lambda image: torch.zeros(1))
    values.update(overrides)
    return StreamSettings(**values)


# ------------------------------------------------------------------------------------------------ sources
def test_imagefolder_is_dealt_into_chunks_of_mixed_classes(digits_folder, monkeypatch):
    monkeypatch.setattr("distill.sources.CHUNK_SIZE", 16)
    info = open_source(digits_folder / "train")
    assert (info.kind, info.n, info.num_classes, info.in_chans, info.image_size) == ("imagefolder", 64, 10, 1,
                                                                                       (1, 32, 32))
    assert len(info.urls) == 4 and sorted(i for c in info.chunks for i in c) == list(range(64))
    assert all(len({info.labels[i] for i in chunk}) >= 5 for chunk in info.chunks)  # sorted files: 1-3 classes
    counts = Counter(info.labels)
    half = open_source(digits_folder / "train", fraction=0.5)
    assert half.n == 32  # half of the 64, spread over the classes: each keeps half its images, rounded either way
    assert all(math.floor(0.5 * n) <= Counter(half.labels)[c] <= math.ceil(0.5 * n) for c, n in counts.items())
    assert half.files == open_source(digits_folder / "train", fraction=0.5).files  # the same subset every run


def test_plain_webdataset_shards_by_pattern_list_or_directory(digits, tmp_path):
    shards = digits / "train" / "shards"
    pattern = str(shards / "shard-{000000..000001}.tar")
    info = open_source(pattern, num_classes=10)
    assert (info.kind, info.n, info.nsamples, info.in_chans) == ("webdataset", 64, [32, 32], 1)
    listed = open_source(f"{shards}/shard-000000.tar::{shards}/shard-000001.tar", num_classes=10)
    assert listed.urls == info.urls
    plain = tmp_path / "plain"
    plain.mkdir()
    for tar in shards.glob("*.tar"):
        shutil.copy(tar, plain / tar.name)
    assert open_source(plain, num_classes=10).n == 64
    assert open_source(pattern, num_classes=10, fraction=0.5).n == 32
    with pytest.raises(DistillError, match="carry no class count; pass --num-classes"):
        open_source(pattern)
    with pytest.raises(DistillError, match="has no label 'label'; its keys are cls, json, png"):
        open_source(pattern, num_classes=10, label_key="label")
    with pytest.raises(DistillError, match=r"1 of 3 shard\(s\) .* shard-000002.tar \(missing\)"):
        open_source(str(shards / "shard-{000000..000002}.tar"), num_classes=10)


def test_label_files_for_the_flat_validation_layout(tmp_path):
    caffe = tmp_path / "val.txt"
    caffe.write_text("ILSVRC2012_val_00000001.JPEG 65\nILSVRC2012_val_00000002.JPEG 970\n")
    assert read_label_file(caffe, None) == {"ILSVRC2012_val_00000001.JPEG": 65, "ILSVRC2012_val_00000002.JPEG": 970}
    kaggle = tmp_path / "LOC_val_solution.csv"
    kaggle.write_text("ImageId,PredictionString\nILSVRC2012_val_00000001,n01751748 1 2 3 4 n01751748 5 6 7 8\n"
                      "ILSVRC2012_val_00000002,n01440764 1 2 3 4\n")
    # WordNet ids map through the training classes when it names them, else in sorted order (ImageFolder's)
    assert read_label_file(kaggle, ["n00000001", "n01440764", "n01751748"]) == {
        "ILSVRC2012_val_00000001": 2, "ILSVRC2012_val_00000002": 1}
    assert read_label_file(kaggle, None) == {"ILSVRC2012_val_00000001": 1, "ILSVRC2012_val_00000002": 0}
    bare = tmp_path / "ground_truth.txt"
    bare.write_text("490\n361\n")
    with pytest.raises(DistillError, match="a line without a file name"):
        read_label_file(bare, None)


def test_flat_directory_needs_and_reads_a_label_file(digits, tmp_path):
    written = write_folder(digits / "test", tmp_path / "flat", flat=True)
    with pytest.raises(DistillError, match="no class folders; .* --val-labels FILE"):
        open_source(tmp_path / "flat")
    labels = tmp_path / "labels.txt"
    labels.write_text("".join(f"{Path(name).stem} {label}\n" for name, label in written[1:]))
    with pytest.raises(DistillError, match="no label for 1 of the 32 images"):
        open_source(tmp_path / "flat", labels_file=labels)
    labels.write_text("".join(f"{name} {label}\n" for name, label in written))
    info = open_source(tmp_path / "flat", labels_file=labels)
    assert info.kind == "flat" and info.n == 32
    assert sorted(zip(info.files, info.labels, strict=True)) == sorted(written)


# ------------------------------------------------------------------------------------------------ the stream
def class_entropy(labels: torch.Tensor) -> float:
    counts = torch.bincount(labels, minlength=10).double()
    p = counts[counts > 0] / counts.sum()
    return float(-(p * p.log2()).sum())


def test_interleaved_shards_and_a_large_buffer_mix_classes(by_class):
    from distill.config import TrainConfig

    assert (TrainConfig.shard_interleave, TrainConfig.shuffle_buffer) == (4, 8192)  # the defaults
    info = open_source(by_class)
    old = settings(interleave=1, shuffle_buffer=32)  # before: one shard at a time, a buffer the size of a shard
    new = settings(interleave=4, shuffle_buffer=1024)  # 32 shards' worth (the default 8192 saturates the same)
    entropies = {}
    for name, stream in (("old", old), ("new", new)):
        batches = list(train_loader([info], stream, steps=20, workers=0, known_bad=set()))
        entropies[name] = sum(class_entropy(b["label"]) for b in batches) / len(batches)
    # measured (seeds 0-2): 1.36-1.48 bits before, 2.63-2.78 after; 16 draws from 10 even classes average ~2.8
    assert entropies["old"] < 1.7 < 2.5 < entropies["new"], entropies


def test_mix_weights_and_repeated_samples(by_class, digits):
    infos = [open_source(by_class), open_source(digits / "train")]
    stream = mixed_samples(infos, settings(mix=(0.2, 0.8)), BadShards())
    sources = [next(stream)["source"] for _ in range(2000)]
    assert sources.count(0) / 2000 == pytest.approx(0.2, abs=0.03)
    by_size = mixed_samples(infos, settings(), BadShards())  # no --mix: by size, 320 : 64
    assert [next(by_size)["source"] for _ in range(2000)].count(0) / 2000 == pytest.approx(320 / 384, abs=0.03)
    repeated = mixed_samples(infos[:1], settings(repeats=3, interleave=1), BadShards())
    keys = [next(repeated)["key"] for _ in range(30)]
    assert all(keys[i] == keys[i + 1] == keys[i + 2] for i in range(0, 30, 3)) and len(set(keys)) == 10


def test_shard_health_names_each_shard_once_and_sums_ranks():
    warnings = []
    health = ShardHealth(limit=2, rank=0, warn=warnings.append)
    health.absorb([("/d/shards/a.tar", "bad header"), ("/d/shards/a.tar", "bad header")])
    assert len(warnings) == 1 and "a.tar" in warnings[0] and "1 of at most 2" in warnings[0]
    health.merge([{"/d/shards/a.tar": "x"}, {"/d/shards/b.tar": "y"}])  # rank 1 found b.tar
    assert sorted(health.bad) == ["/d/shards/a.tar", "/d/shards/b.tar"]
    with pytest.raises(DistillError, match=r"3 corrupt shards \(a.tar, b.tar, c.tar\), more than the 2 allowed"):
        health.merge([{}, {"/d/shards/c.tar": "z"}])


# ------------------------------------------------------------------------------------------------ evaluation
def test_each_rank_and_worker_reads_whole_shards_of_its_own(by_class, monkeypatch):
    info = open_source(by_class)
    opened = []
    read = wds.tariterators.tarfile_samples

    def recording(urls):
        opened.append(Path(urls[0]["url"]).name)
        return read(urls)

    monkeypatch.setattr(data_module.wds.tariterators, "tarfile_samples", recording)
    labels = {}
    for rank in range(2):
        opened.clear()
        dataset = eval_dataset(info, lambda image: torch.zeros(1), 1, 10, rank=rank, world_size=2)
        labels[rank] = [label for _, label in dataset]
        assert opened == [f"shard-{k:06d}.tar" for k in range(rank, 10, 2)]
    assert sorted(labels[0] + labels[1]) == sorted(c for c in range(10) for _ in range(32))
    assert set(labels[0]) == {0, 2, 4, 6, 8}  # one class per shard here: rank 0 has shards 0, 2, ...


def test_probe_takes_a_strided_subset(digits_folder):
    info = open_source(digits_folder / "test")
    transform = data_module.eval_transform({"input_size": (1, 32, 32), "mean": (0.5,), "std": (0.5,)})
    probe = probe_images(info, transform, 1, 8)
    wanted = [(k * 32) // 8 for k in range(8)]
    assert torch.equal(probe, torch.stack([FileEval(info, transform, "L")[i][0] for i in wanted]))
    # files are sorted by class: the first 8 hold 2-3 classes, the strided 8 most of the 10
    assert len({info.labels[i] for i in wanted}) >= 6 > 3 >= len({info.labels[i] for i in range(8)})


# ------------------------------------------------------------------------------------------------ a mixed run
def test_real_imagefolder_mixed_with_a_dfgen_set_trains_and_logs_the_mix(digits, digits_folder, tmp_path, capsys):
    from distill import build_config, train

    preset = Path(__file__).resolve().parents[1] / "configs" / "distill_digits.yaml"
    out = tmp_path / "run"
    config = build_config(preset, shards=[str(digits_folder / "train"), str(digits / "train")], mix="0.1,0.9",
                          fraction="0.5,0.5", val=str(digits_folder / "test"), out=str(out), epochs=1,
                          stage1_epochs=1, batch_size=16, device="cpu", workers=0, quiet=True, attn_images=8,
                          shuffle_buffer=32)
    train(config)
    record = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()][0]
    real = open_source(digits_folder / "train", fraction=0.5).n  # half of the images, spread over the classes
    assert record["rank_steps"] == [(real + 32) // 16] and record["val_n"] == 32 and "loss_hidden" in record
    # 64 draws of a 0.1 share (by size it would be ~0.5); the ratio itself is checked on 2,000 draws above
    assert sum(record["mix"]) == pytest.approx(1.0) and record["mix"][0] < 0.3
    err = capsys.readouterr().err
    assert f"{digits_folder / 'train'} (imagefolder, {real}) + {digits / 'train'} (shards, 32) mixed 0.1/0.9" in err
    assert " mix 0." in err and "teacher digits" in err
