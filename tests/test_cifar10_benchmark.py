"""The CIFAR-10 benchmark at toy size on a tiny CIFAR-style JPEG archive written here (benchmarks/cifar10.py
--toy): every row in the last JSON line, the cost counters, the grid, and a rerun served from the phase cache with a
removed row recomputed to the same figure; the teacher's training resumed after an interruption, bit for bit."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from benchmarks import cifar10
from benchmarks.cifar_teacher import NETS, train_cifar
from benchmarks.real_training import RealData
from dfgen.cifar10 import CLASSES


def write_archive(path: Path, train: int = 6, test: int = 3) -> None:
    """cifar10/<split>/<class>/NNNN.jpg, 32x32 RGB quality-75 JPEGs whose colour depends on the class."""
    rng = np.random.default_rng(0)
    with tarfile.open(path, "w:gz") as tar:
        for split, count in (("train", train), ("test", test)):
            for c, cls in enumerate(CLASSES):
                for k in range(count):
                    base = np.array([25 * c, 255 - 25 * c, (80 * c) % 256], dtype=np.int64)[:, None, None]
                    pixels = np.clip(base + rng.integers(-40, 40, size=(3, 32, 32)), 0, 255).astype(np.uint8)
                    buffer = io.BytesIO()
                    Image.fromarray(pixels.transpose(1, 2, 0)).save(buffer, format="JPEG", quality=75)
                    info = tarfile.TarInfo(f"cifar10/{split}/{cls}/{k:04d}.jpg")
                    info.size = buffer.tell()
                    tar.addfile(info, io.BytesIO(buffer.getvalue()))


@pytest.fixture(scope="module")
def archive(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("cifar") / "tiny-cifar10.tar.gz"
    write_archive(path)
    return path


def test_toy_benchmark_reports_every_row_and_resumes_from_its_cache(archive, tmp_path, capsys):
    argv = ["--toy", "--source", str(archive), "--out", str(tmp_path), "--jobs", "1", "--seeds", "0", "1"]
    result = cifar10.main(argv)
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1]) == result
    toy = cifar10.SIZES["toy"]
    assert result["n_images"] == toy["n"] and result["kd_steps"] == toy["kd_steps"]
    assert result["schedule"] == "8:2,16:2,32:2" and result["seeds"] == [0, 1]
    student = result["students"]["vgg8_bn_half"]
    assert set(student) == {"boundary", "plain", "generator", "real_kd", "real_1pct", "real_n20"}
    for key in cifar10.SYNTHETIC:
        assert len(student[key]["seeds"]) == 2
        assert student[key]["mean"] == pytest.approx(sum(student[key]["seeds"]) / 2, abs=1e-4)
    assert set(result["students"]["dearkd_micro"]) == {"boundary", "plain", "generator", "real_kd", "real_1pct"}
    assert all(0 <= acc <= 1 for acc in result["students"]["dearkd_micro"].values())
    assert set(result["per_class"]) == {"boundary-s0", "boundary-s1", "plain-s0", "plain-s1", "generator-s0",
                                        "generator-s1", "real_kd-s0", "real_1pct-s0", "real_n20-s0"}
    assert all(len(accs) == 10 for accs in result["per_class"].values())
    assert len(result["teacher"]["per_class"]) == 10
    # every synthetic set's cost from its dataset.json: all 20 images, each through the teacher a few times
    for key in cifar10.SYNTHETIC:
        cost = result["cost"][key]
        assert cost["per_image"]["teacher_passes"] > 0
        assert cost["teacher_passes"] / cost["per_image"]["teacher_passes"] == pytest.approx(20, rel=1e-3)
        assert set(result["judge_top1"]) == set(result["agreement"]) == set(cifar10.SYNTHETIC)
    assert result["published"]["Fast-10"] == {"top1": 0.9405, "hours": 0.28} and "JPEG" in result["caveat"]
    assert set(result["ratios"]) == set(cifar10.SYNTHETIC)
    assert all(set(ratios) == set(result["targets"]) for ratios in result["ratios"].values())
    mean, real_n = student["generator"]["mean"], student["real_n20"]
    assert result["ratios"]["generator"]["cnn_over_real_same_n"] == (round(mean / real_n, 4) if real_n else None)
    assert {"teacher", "judge", "synthesize_generator", "kd_boundary-s1", "dearkd_real_kd", "report",
            "export"} <= set(result["seconds"])
    # one row per class, 8 images of 64 px (2x) with 2 px gaps; each row's first tile is drawn (not the white canvas)
    with Image.open(result["grid"]["path"]) as grid:
        assert grid.size == (8 * 66 + 2, 10 * 66 + 2)
        pixels = np.asarray(grid)
    assert result["grid"]["rows"] == CLASSES
    assert all((pixels[2 + 66 * row:66 * (row + 1), 2:66] != 255).any() for row in range(10))

    # a rerun is served from the cache; a removed row is computed again to the same figure
    row_file = next((tmp_path / "toy" / "results").glob("vgg8_bn_half_boundary-s1-*.json"))
    row_file.unlink()
    again = cifar10.main(argv)
    assert again["students"] == result["students"] and again["cost"] == result["cost"]
    assert json.loads(row_file.read_text())["acc"] == result["students"]["vgg8_bn_half"]["boundary"]["seeds"][1]
    assert again["seconds"]["teacher"] == result["seconds"]["teacher"]  # the cached phase, not a second training

    # one set alone (the tool's default mode at 32 px): its rows, from the same cache
    alone = cifar10.main([*argv, "--sets", "generator"])
    assert alone["sets"] == ["generator"] and set(alone["ratios"]) == {"generator"}
    assert alone["students"]["vgg8_bn_half"]["generator"] == student["generator"]
    assert set(alone["students"]["vgg8_bn_half"]) == {"generator", "real_kd", "real_1pct", "real_n20"}
    assert set(alone["cost"]) == {"generator"}


def test_teacher_training_resumes_after_an_interruption_to_the_same_weights(tmp_path):
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (40, 3, 32, 32), dtype=torch.uint8, generator=generator)
    labels = torch.arange(40) % 10
    data = RealData("tiny", images[:32], labels[:32], images[32:], labels[32:])
    planned, _ = train_cifar(f"{NETS}:vgg8_bn_half", data, 2, 0, tmp_path / "whole", batch_size=8,
                             weights_only_path=True)
    assert not planned.exists()  # the cache path alone: nothing trained
    whole, _ = train_cifar(f"{NETS}:vgg8_bn_half", data, 2, 0, tmp_path / "whole", batch_size=8)
    assert whole == planned
    other, _ = train_cifar(f"{NETS}:vgg8_bn_half", data, 3, 0, tmp_path / "whole", batch_size=8,
                           weights_only_path=True)
    assert other != whole  # another recipe, another cache entry

    def stop_after_first_epoch(line: str) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_cifar(f"{NETS}:vgg8_bn_half", data, 2, 0, tmp_path / "cut", batch_size=8, log=stop_after_first_epoch)
    assert not list((tmp_path / "cut").glob("*[!l].pt")) and len(list((tmp_path / "cut").glob("*.partial.pt"))) == 1
    resumed, _ = train_cifar(f"{NETS}:vgg8_bn_half", data, 2, 0, tmp_path / "cut", batch_size=8)
    assert resumed.name == whole.name and not list((tmp_path / "cut").glob("*.partial.pt"))
    first = torch.load(whole, weights_only=True)
    second = torch.load(resumed, weights_only=True)
    assert all(torch.equal(first[key], second[key]) for key in first)
