"""The benchmark networks (benchmarks/small_nets.py) and training utilities (benchmarks/real_training.py,
benchmarks/kd_training.py) on a tiny separable task: shapes, parameter counts by hand, dfgen's view of them as
user models, the shift augmentation, exact determinism, the recipe cache and KD from a dataset directory."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from benchmarks import small_nets
from benchmarks.kd_training import cutmix_batch, kd_train, random_affine, real_subset
from benchmarks.real_training import (
    RealData,
    full_kwargs,
    load_trained,
    random_shift,
    resolve_factory,
    teacher_record,
    train_teacher,
)
from dfgen.errors import DfgenError
from dfgen.realdata import write_image_dataset

NETS = Path(__file__).resolve().parents[1] / "benchmarks" / "small_nets.py"


def squares(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Four classes: a bright 8x8 square in one quadrant of a dark, noisy 28x28 image."""
    generator = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 4
    images = torch.randint(0, 60, (n, 1, 28, 28), generator=generator, dtype=torch.uint8)
    for i, label in enumerate(labels.tolist()):
        top, left = 3 + 14 * (label // 2), 3 + 14 * (label % 2)
        images[i, 0, top:top + 8, left:left + 8] = 230
    return images, labels


@pytest.fixture(scope="module")
def toy() -> RealData:
    return RealData("squares", *squares(128, 0), *squares(64, 1))


@pytest.fixture(scope="module")
def toy_teacher(toy, tmp_path_factory) -> tuple[Path, float]:
    return train_teacher("lenet5_bn", toy, 3, 0, tmp_path_factory.mktemp("teachers"), kwargs={"num_classes": 4},
                         batch_size=32)


@pytest.mark.parametrize("name", small_nets.TEACHERS + small_nets.STUDENTS)
def test_every_network_classifies_28x28_and_teachers_alone_have_batchnorm(name):
    model = getattr(small_nets, name)(num_classes=7, in_chans=3).eval()
    assert model(torch.zeros(2, 3, 28, 28)).shape == (2, 7)
    has_bn = any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    assert has_bn == (name in small_nets.TEACHERS)
    assert isinstance([m for m in model.modules() if isinstance(m, torch.nn.Linear)][-1], torch.nn.Linear)


def test_parameter_counts_by_hand_and_fixed_size_networks():
    count = lambda model: sum(p.numel() for p in model.parameters())  # noqa: E731
    # LeNet-5-half: conv 1->3 (75 + 3), 3->8 (600 + 8), 8->60 (12000 + 60), fc 60->42 (2520 + 42), 42->10 (430)
    assert count(small_nets.lenet5_half()) == 78 + 608 + 12060 + 2562 + 430
    # LeNet-5-BN: bias-free convs + BN (2 per channel): 150 + 12, 2400 + 32, 48000 + 240; fc 10164, 850
    assert count(small_nets.lenet5_bn()) == 162 + 2432 + 48240 + 10164 + 850
    for name in ("lenet5_bn", "lenet5_half", "vgg_bn_small"):
        with pytest.raises(ValueError, match=r"takes 28x28 images, got \(32, 32\)"):
            getattr(small_nets, name)()(torch.zeros(1, 1, 32, 32))
    for name in ("resnet18_small", "mobilenet_small", "small_cnn"):
        assert getattr(small_nets, name)().eval()(torch.zeros(1, 1, 32, 32)).shape == (1, 10)


def test_dfgen_loads_the_teachers_as_user_models_and_refuses_the_students():
    from dfgen.teachers import load_teacher

    teacher = load_teacher(f"{NETS}:lenet5_bn", kwargs={"num_classes": 10}, image_size=28, mean="0.1307",
                           std="0.3081")
    assert (teacher.num_classes, teacher.input_size, teacher.mean) == (10, (1, 28, 28), (0.1307,))
    with pytest.raises(DfgenError, match="no BatchNorm2d"):
        load_teacher(f"{NETS}:lenet5_half", image_size=28)


def test_random_shift_moves_each_image_whole_and_fills_black():
    image = torch.zeros(1, 1, 5, 5)
    image[0, 0, 2, 2] = 1.0  # one lit pixel in the middle
    batch = image.repeat(64, 1, 1, 1)
    shifted = random_shift(batch, 1, torch.Generator().manual_seed(0))
    positions = {tuple(torch.nonzero(s[0]).flatten().tolist()) for s in shifted}
    assert positions == {(r, c) for r in (1, 2, 3) for c in (1, 2, 3)}  # all 9 offsets occur, nothing else
    assert torch.equal(shifted.sum(dim=(1, 2, 3)), torch.ones(64))
    corner = torch.zeros(1, 1, 3, 3)
    corner[0, 0, 0, 0] = 1.0
    moved = random_shift(corner.repeat(32, 1, 1, 1), 1, torch.Generator().manual_seed(1))
    assert set(moved.sum(dim=(1, 2, 3)).tolist()) == {0.0, 1.0}  # shifted off the edge: black comes in
    assert random_shift(batch, 0, torch.Generator()) is batch


def test_train_teacher_learns_caches_by_recipe_and_is_deterministic(toy, toy_teacher, tmp_path):
    weights, acc = toy_teacher
    assert acc >= 0.9
    record = teacher_record(weights)
    assert record["test_acc"] == acc and record["recipe"]["epochs"] == 3 and record["num_classes"] == 4
    assert record["image_size"] == [1, 28, 28] and len(record["mean"]) == 1
    again, acc_again = train_teacher("lenet5_bn", toy, 3, 0, weights.parent, kwargs={"num_classes": 4},
                                     batch_size=32, log=lambda line: pytest.fail(f"retrained: {line}"))
    assert (again, acc_again) == (weights, acc)
    fresh, fresh_acc = train_teacher("lenet5_bn", toy, 3, 0, tmp_path, kwargs={"num_classes": 4}, batch_size=32)
    assert fresh.name == weights.name and fresh_acc == acc
    first = torch.load(weights, weights_only=True)
    second = torch.load(fresh, weights_only=True)
    assert all(torch.equal(first[k], second[k]) for k in first)
    other, _ = train_teacher("lenet5_bn", toy, 1, 1, tmp_path, kwargs={"num_classes": 4}, batch_size=32)
    assert other.name != weights.name
    model = load_trained(weights)
    assert not model.training and model(torch.zeros(1, 1, 28, 28)).shape == (1, 4)


def test_kd_train_distills_from_tensors_and_a_dataset_directory(toy, toy_teacher, tmp_path):
    teacher = load_trained(toy_teacher[0])
    record = teacher_record(toy_teacher[0])
    mean, std = record["mean"], record["std"]
    test = (toy.test_images, toy.test_labels)
    lines: list[list[str]] = [[], []]
    accs = [kd_train("lenet5_half", teacher, (toy.train_images, toy.train_labels), test, 4, seed=3, mean=mean, std=std,
                     batch_size=32, lr=5e-3, student_kwargs={"num_classes": 4},
                     log=lambda line, i=i: lines[i].append(line.split(",")[0])) for i in range(2)]
    assert accs[0] == accs[1] and lines[0] == lines[1] and len(lines[0]) == 4  # the same losses, epoch by epoch
    assert accs[0] >= 0.9
    assert not teacher.training
    # a directory whose dataset.json carries the teacher's normalization, as dfgen synthesize writes it
    description = {"num_classes": 4, "teacher": {"data_config": {"mean": mean, "std": std}}}
    data = write_image_dataset(tmp_path / "synthetic", toy.train_images, toy.train_labels, description,
                               shard_size=64)
    from_dir = kd_train("lenet5_half", teacher, data, test, 4, seed=3, batch_size=32, lr=5e-3,
                        student_kwargs={"num_classes": 4})
    assert from_dir == accs[0]  # PNG round trip is lossless: the same run
    plain = write_image_dataset(tmp_path / "real", toy.train_images, toy.train_labels, {"num_classes": 4})
    with pytest.raises(ValueError, match="give mean and std"):
        kd_train("lenet5_half", teacher, plain, test, 1)
    assert json.loads((plain / "dataset.json").read_text())["kind"] == "real"


def test_cutmix_pastes_one_box_of_another_image_of_the_batch():
    n = 64
    pixels = torch.arange(n, dtype=torch.float32)[:, None, None, None].expand(n, 1, 28, 28).contiguous()
    mixed = cutmix_batch(pixels, torch.Generator().manual_seed(5))
    assert torch.equal(mixed, cutmix_batch(pixels, torch.Generator().manual_seed(5)))  # seeded
    shares = []
    for i in range(n):
        pasted = mixed[i, 0] != i
        assert len(mixed[i, 0][pasted].unique()) <= 1  # what is not its own comes from one partner
        if pasted.any():  # one axis-aligned box: its bounding box is all pasted, from one partner
            rows, cols = pasted.nonzero(as_tuple=True)
            assert pasted[rows.min():rows.max() + 1, cols.min():cols.max() + 1].all()
        shares.append(pasted.float().mean().item())
    assert 0.1 < sum(shares) / n < 0.6  # area ~ U(0, 1) clipped at the border: about a third on average
    assert max(shares) > 0.5 and min(shares) < 0.05


def test_random_affine_is_seeded_per_image_and_identity_at_zero():
    pixels = torch.rand(16, 1, 28, 28)
    assert torch.allclose(random_affine(pixels, torch.Generator(), degrees=0, scale=0, shear=0, max_shift=0),
                          pixels, atol=1e-5)
    warped = random_affine(pixels, torch.Generator().manual_seed(2))
    assert torch.equal(warped, random_affine(pixels, torch.Generator().manual_seed(2)))
    assert not torch.allclose(warped, pixels, atol=1e-2)
    # a centred bright square: rotation, zoom and shear keep its centre; the shift moves it by at most 2 px
    square = torch.zeros(64, 1, 28, 28)
    square[:, :, 10:18, 10:18] = 1
    moved = random_affine(square, torch.Generator().manual_seed(0))
    grid = torch.arange(28, dtype=torch.float32)
    mass = moved.sum(dim=(1, 2, 3))
    centre_y = (moved.sum(dim=(1, 3)) * grid).sum(1) / mass
    centre_x = (moved.sum(dim=(1, 2)) * grid).sum(1) / mass
    assert (centre_y - 13.5).abs().max() <= 2.3 and (centre_x - 13.5).abs().max() <= 2.3
    assert (centre_y - 13.5).abs().max() > 0.5  # the shifts are not all zero
    assert ((mass / 64) - 1).abs().max() < 0.3  # area changes by the zoom and shear only: (1 +- 0.1)^2


def test_kd_train_steps_budget_and_cutmix(toy, toy_teacher):
    teacher = load_trained(toy_teacher[0])
    record = teacher_record(toy_teacher[0])
    test = (toy.test_images, toy.test_labels)
    train = (toy.train_images, toy.train_labels)
    per_epoch = len(toy.train_labels) // 32
    lines: list[str] = []
    acc = kd_train("lenet5_half", teacher, train, test, 1, seed=3, mean=record["mean"], std=record["std"],
                   batch_size=32, steps=per_epoch + 2, cutmix=True, student_kwargs={"num_classes": 4},
                   log=lines.append)
    assert len(lines) == 2  # one full epoch, then the two steps left
    assert acc >= 0.5
    with_mix: list[str] = []
    kd_train("lenet5_half", teacher, train, test, 1, seed=3, mean=record["mean"], std=record["std"],
             batch_size=32, steps=2, cutmix=True, student_kwargs={"num_classes": 4}, log=with_mix.append)
    without: list[str] = []
    kd_train("lenet5_half", teacher, train, test, 1, seed=3, mean=record["mean"], std=record["std"],
             batch_size=32, steps=2, student_kwargs={"num_classes": 4}, log=without.append)
    assert with_mix[0].split(",")[0] != without[0].split(",")[0]  # the pasted boxes change what both nets see
    warped: list[str] = []
    kd_train("lenet5_half", teacher, train, test, 1, seed=3, mean=record["mean"], std=record["std"],
             batch_size=32, steps=2, cutmix=True, affine=True, student_kwargs={"num_classes": 4}, log=warped.append)
    assert warped[0].split(",")[0] != with_mix[0].split(",")[0]  # the affine warp replaces the integer shift


def test_real_subset_is_stratified_and_whole_at_one():
    images, labels = squares(400, 2)
    sub_images, sub_labels = real_subset(images, labels, 0.1, seed=0)
    assert sub_labels.bincount().tolist() == [10, 10, 10, 10] and len(sub_images) == 40
    assert real_subset(images, labels, 1.0)[0] is images


def test_recipe_kwargs_include_the_factory_defaults():
    expected = {"num_classes": 10, "in_chans": 1, "width": 8}
    assert full_kwargs(small_nets.resnet18_small, None) == expected
    assert full_kwargs(small_nets.resnet18_small, {"width": 8}) == expected
    assert full_kwargs(lambda depth=2, **options: None, {"scale": 0.5}) == {"depth": 2, "scale": 0.5}


def test_a_cached_teachers_recorded_small_nets_file_may_have_moved(tmp_path):
    gone = tmp_path / "old-checkout" / "benchmarks" / "small_nets.py"
    factory, name = resolve_factory(f"{gone}:lenet5_bn")
    assert factory is small_nets.lenet5_bn and name == "lenet5_bn"
    with pytest.raises(DfgenError, match="not found"):
        resolve_factory(f"{tmp_path / 'other.py'}:lenet5_bn")  # any other missing file is still an error
