"""Real CIFAR-10: the JPEG archive read as a stream and the cifar-10-batches-py pickles, exported in the dataset
format and read back. The format tests use tiny sources written here; the test on the real archive skips when
it is absent."""

from __future__ import annotations

import io
import json
import os
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dfgen.cifar10 import CLASSES, read_cifar10
from dfgen.cli import main
from dfgen.dataset import open_dataset
from dfgen.errors import DfgenError
from dfgen.realdata import export_real, read_image_dataset

# beside the repository (../shared/data), or where $DFGEN_CIFAR10 points
REAL_ARCHIVE = Path(os.environ.get("DFGEN_CIFAR10")
                    or Path(__file__).resolve().parents[1].parent / "shared" / "data" / "cifar10-jpg.tar.gz")


def jpeg(pixels: np.ndarray, quality: int = 75) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels.transpose(1, 2, 0)).save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def decode(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as image:
        return np.asarray(image).transpose(2, 0, 1)


def write_archive(path: Path, per_class: dict[str, int]) -> dict[str, dict[tuple[str, str], bytes]]:
    """A tar.gz laid out cifar10/<split>/<class>/NNNN.jpg with random 32x32 RGB JPEGs (quality 75), members in
    shuffled order; returns {split: {(class, file name): bytes}}."""
    rng = np.random.default_rng(0)
    made: dict[str, dict[tuple[str, str], bytes]] = {split: {} for split in per_class}
    for split, count in per_class.items():
        for cls in CLASSES[:3]:
            for k in range(count):
                made[split][(cls, f"{k:04d}.jpg")] = jpeg(rng.integers(0, 256, size=(3, 32, 32), dtype=np.uint8))
    entries = [(split, cls, name, data) for split, files in made.items() for (cls, name), data in files.items()]
    order = rng.permutation(len(entries))
    with tarfile.open(path, "w:gz") as tar:
        for i in order:
            split, cls, name, data = entries[i]
            info = tarfile.TarInfo(f"cifar10/{split}/{cls}/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return made


def write_batches(folder: Path, n: int = 6, protocol: int = 2) -> dict[str, tuple[np.ndarray, list[int]]]:
    """A cifar-10-batches-py folder: five train batches of n images and a test batch of n, as dicts of bytes keys
    (as the original Python 2 pickles hold)."""
    rng = np.random.default_rng(1)
    folder.mkdir(parents=True)
    made = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        data = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
        labels = [int(v) for v in rng.integers(0, 10, size=n)]
        batch = {b"batch_label": name.encode(), b"data": data, b"labels": labels,
                 b"filenames": [f"{name}_{i}.png".encode() for i in range(n)]}
        (folder / name).write_bytes(pickle.dumps(batch, protocol=protocol))
        made[name] = (data, labels)
    return made


# ------------------------------------------------------------------------------------------------- JPEG archive
def test_archive_exports_jpeg_bytes_as_they_are_with_labels_classes_and_counts(tmp_path):
    made = write_archive(tmp_path / "c.tar.gz", {"train": 4, "test": 2})
    train, test = export_real("cifar10", tmp_path / "out", source=tmp_path / "c.tar.gz")
    for part, path, per_class in (("train", train, 4), ("test", test, 2)):
        info = json.loads((path / "dataset.json").read_text())
        assert info["classes"] == CLASSES and info["in_chans"] == 3 and info["image_size"] == [3, 32, 32]
        assert info["format"] == "jpg" and info["n"] == 3 * per_class
        assert info["class_counts"] == [per_class] * 3 + [0] * 7
        assert info["source"]["jpeg_quality"] == {"train": 75, "test": 75}
        assert info["source"]["path"] == str((tmp_path / "c.tar.gz").resolve())
        assert open_dataset(path).n == 3 * per_class
        # ordered by file name then class: the classes interleave
        expected = sorted(made[part].items(), key=lambda item: (item[0][1], CLASSES.index(item[0][0])))
        images, labels = read_image_dataset(path)
        assert labels.tolist() == [CLASSES.index(cls) for (cls, _), _ in expected]
        for image, (_, data) in zip(images, expected, strict=True):
            assert np.array_equal(image.numpy(), decode(data))
        with tarfile.open(next((path / "shards").glob("*.tar"))) as tar:
            stored = [tar.extractfile(m).read() for m in sorted(tar.getmembers(), key=lambda m: m.name)
                      if m.name.endswith(".jpg")]
        assert stored == [data for _, data in expected]  # the source's bytes, not re-encoded


def test_archive_limit_keeps_every_class_and_fraction_is_stratified(tmp_path):
    write_archive(tmp_path / "c.tar.gz", {"train": 4, "test": 2})
    train, test = export_real("cifar10", tmp_path / "out", source=tmp_path / "c.tar.gz", limit=3)
    assert read_image_dataset(test)[1].tolist() == [0, 1, 2]
    train, _ = export_real("cifar10", tmp_path / "half", source=tmp_path / "c.tar.gz", train_fraction=0.5)
    assert json.loads((train / "dataset.json").read_text())["class_counts"][:3] == [2, 2, 2]


def test_archive_with_an_unknown_class_a_damaged_jpeg_or_a_cut_gzip_is_refused(tmp_path):
    for name, data in (("cifar10/train/unicorn/0000.jpg", jpeg(np.zeros((3, 32, 32), np.uint8))),
                       ("cifar10/train/cat/0000.jpg", b"not a jpeg")):
        path = tmp_path / "bad.tar.gz"
        with tarfile.open(path, "w:gz") as tar:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        with pytest.raises(DfgenError, match="unknown class folder|not a readable JPEG"):
            read_cifar10(path)
    write_archive(tmp_path / "c.tar.gz", {"train": 2, "test": 1})
    (tmp_path / "cut.tar.gz").write_bytes((tmp_path / "c.tar.gz").read_bytes()[:-200])
    with pytest.raises(DfgenError, match="cannot read .*cut.tar.gz as a tar archive"):
        read_cifar10(tmp_path / "cut.tar.gz")


def test_cli_needs_a_source_and_says_so(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("DFGEN_CIFAR10", raising=False)
    with pytest.raises(SystemExit) as stop:
        main(["export-real", "cifar10", "--out", str(tmp_path / "out")])
    assert stop.value.code != 0
    err = capsys.readouterr().err
    assert "--source" in err and "DFGEN_CIFAR10" in err and len(err.strip().splitlines()) == 1
    write_archive(tmp_path / "c.tar.gz", {"train": 1, "test": 1})
    monkeypatch.setenv("DFGEN_CIFAR10", str(tmp_path / "c.tar.gz"))
    main(["export-real", "cifar10", "--out", str(tmp_path / "out")])
    assert open_dataset(tmp_path / "out" / "test").n == 3


# ------------------------------------------------------------------------------------------------- batches
def test_batches_folder_exports_pixels_and_labels_in_file_order(tmp_path):
    made = write_batches(tmp_path / "root" / "cifar-10-batches-py")
    train, test = export_real("cifar10", tmp_path / "out", source=tmp_path / "root")  # the torchvision root
    images, labels = read_image_dataset(train)
    expected = np.concatenate([made[f"data_batch_{i}"][0] for i in range(1, 6)]).reshape(-1, 3, 32, 32)
    assert np.array_equal(images.numpy(), expected)
    assert labels.tolist() == sum((made[f"data_batch_{i}"][1] for i in range(1, 6)), [])
    images, labels = read_image_dataset(test)
    assert np.array_equal(images.numpy(), made["test_batch"][0].reshape(-1, 3, 32, 32))
    info = json.loads((test / "dataset.json").read_text())
    assert info["format"] == "png" and info["classes"] == CLASSES and info["source"]["format"] == "cifar-10-batches-py"


class RunsACommand:
    def __reduce__(self):
        return (os.system, ("touch pwned",))


def test_batches_with_a_foreign_global_are_refused_before_it_runs(tmp_path, monkeypatch):
    folder = tmp_path / "cifar-10-batches-py"
    write_batches(folder)
    (folder / "test_batch").write_bytes(pickle.dumps({b"data": RunsACommand()}, protocol=2))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DfgenError, match="refusing to unpickle (posix|os|nt).system"):
        read_cifar10(folder, ("test",))
    assert not (tmp_path / "pwned").exists()


def test_batches_with_a_missing_file_or_bad_labels_are_refused(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    write_batches(folder)
    (folder / "data_batch_3").unlink()
    with pytest.raises(DfgenError, match="data_batch_3 is missing"):
        read_cifar10(folder, ("train",))
    bad = {b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 10]}
    (folder / "test_batch").write_bytes(pickle.dumps(bad, protocol=2))
    with pytest.raises(DfgenError, match="2 labels in 0..9"):
        read_cifar10(folder, ("test",))


# ------------------------------------------------------------------------------------------------- the real archive
@pytest.mark.skipif(not REAL_ARCHIVE.is_file(), reason=f"the CIFAR-10 JPEG archive is not at {REAL_ARCHIVE}")
def test_real_archive_has_cifar10s_split_and_exports_a_limited_set(tmp_path):
    train, test = export_real("cifar10", tmp_path / "out", source=REAL_ARCHIVE, limit=20)
    for path, part, source_n in ((train, "train", 50000), (test, "test", 10000)):
        info = json.loads((path / "dataset.json").read_text())
        assert info["split"]["source_n"] == source_n and info["source"]["jpeg_quality"][part] == 75
        assert info["n"] == 20 and info["class_counts"] == [2] * 10 and info["classes"] == CLASSES
        assert read_image_dataset(path)[0].shape == (20, 3, 32, 32)
