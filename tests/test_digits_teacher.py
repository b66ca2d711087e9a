"""The bundled offline digits teacher: fixed split, shipped weights, timm-like interface, safe loading."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import pytest
import torch
from torch import nn

pytest.importorskip("sklearn")

from dfgen.zoo import digits, digits_training  # noqa: E402
from dfgen.zoo.digits import (  # noqa: E402
    DIGITS_MEAN,
    DIGITS_STD,
    DIGITS_WEIGHTS_SHA256,
    DigitsNet,
    DigitsWeightsError,
    evaluate,
    load_digits_split,
    load_digits_teacher,
)


@pytest.fixture(scope="module")
def split() -> digits.DigitsSplit:
    return load_digits_split()


@pytest.fixture(scope="module")
def teacher() -> DigitsNet:
    return load_digits_teacher()


def _tensor_hash(t: torch.Tensor) -> str:
    return hashlib.sha256(t.contiguous().numpy().tobytes()).hexdigest()


def test_split_is_fixed(split: digits.DigitsSplit) -> None:
    assert split.train_images.shape == (1347, 1, 32, 32)
    assert split.test_images.shape == (450, 1, 32, 32)
    assert split.train_images.dtype == torch.float32 and split.train_labels.dtype == torch.int64
    assert split.train_labels.shape == (1347,) and split.test_labels.shape == (450,)
    assert float(split.train_images.min()) >= 0.0 and float(split.train_images.max()) <= 1.0
    # Stratified: each class holds a quarter of its images in the test part (+-1).
    train_counts = torch.bincount(split.train_labels, minlength=10)
    test_counts = torch.bincount(split.test_labels, minlength=10)
    assert int(test_counts.min()) >= 43 and int(test_counts.max()) <= 46
    assert (test_counts.float() / (train_counts + test_counts).float() - 0.25).abs().max() < 0.01
    again = load_digits_split()
    assert _tensor_hash(again.train_images[0]) == _tensor_hash(split.train_images[0])
    assert _tensor_hash(again.test_images[0]) == _tensor_hash(split.test_images[0])
    assert torch.equal(again.test_labels, split.test_labels)
    # Train and test are disjoint image sets (no held-out image leaks into training).
    train_hashes = {_tensor_hash(x) for x in split.train_images}
    assert sum(_tensor_hash(x) in train_hashes for x in split.test_images) <= 5  # rare exact duplicates


def test_mean_std_constants_match_training_split(split: digits.DigitsSplit) -> None:
    assert round(float(split.train_images.mean()), 4) == DIGITS_MEAN[0]
    assert round(float(split.train_images.double().std()), 4) == DIGITS_STD[0]


def test_bundled_teacher_sha_and_accuracy(teacher: DigitsNet, split: digits.DigitsSplit) -> None:
    assert hashlib.sha256(digits.BUNDLED_WEIGHTS.read_bytes()).hexdigest() == DIGITS_WEIGHTS_SHA256
    assert digits.BUNDLED_WEIGHTS.stat().st_size < 1_000_000
    assert not teacher.training
    assert evaluate(teacher, split.test_images, split.test_labels) >= 0.98


def test_timm_data_config(teacher: DigitsNet) -> None:
    timm_data = pytest.importorskip("timm.data")
    cfg = timm_data.resolve_model_data_config(teacher)
    assert tuple(cfg["input_size"]) == (1, 32, 32)
    assert tuple(cfg["mean"]) == DIGITS_MEAN
    assert tuple(cfg["std"]) == DIGITS_STD
    assert cfg["interpolation"] == "bilinear"


def test_interface_and_batchnorm(teacher: DigitsNet) -> None:
    bns = [m for m in teacher.modules() if isinstance(m, nn.BatchNorm2d)]
    convs = [m for m in teacher.modules() if isinstance(m, nn.Conv2d)]
    assert len(bns) == len(convs) == 5
    # Populated running statistics, not the untouched defaults (0 mean, 1 var).
    assert all(float(bn.running_mean.abs().sum()) > 0 and float(bn.running_var.min()) > 0 for bn in bns)
    assert not all(torch.allclose(bn.running_var, torch.ones_like(bn.running_var)) for bn in bns)
    x = torch.randn(3, 1, 32, 32)
    with torch.no_grad():
        feats = teacher.forward_features(x)
        emb = teacher.forward_head(feats, pre_logits=True)
        logits = teacher(x)
    assert feats.shape == (3, 128, 8, 8)
    assert emb.shape == (3, 128)
    assert logits.shape == (3, teacher.num_classes) and teacher.num_classes == 10
    assert torch.allclose(teacher.get_classifier()(emb), logits, atol=1e-5)
    assert isinstance(teacher.get_classifier(), nn.Linear)
    # feature_info names real modules with the documented channels and strides.
    shapes = {}
    hooks = [
        teacher.get_submodule(info["module"]).register_forward_hook(
            lambda _m, _i, out, name=info["module"]: shapes.__setitem__(name, tuple(out.shape))
        )
        for info in teacher.feature_info
    ]
    with torch.no_grad():
        teacher(x)
    for h in hooks:
        h.remove()
    for info in teacher.feature_info:
        side = 32 // info["reduction"]
        assert shapes[info["module"]] == (3, info["num_chs"], side, side)


def test_tampered_bundled_file_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    tampered = tmp_path / "digits_cnn.pt"
    shutil.copyfile(digits.BUNDLED_WEIGHTS, tampered)
    data = bytearray(tampered.read_bytes())
    data[len(data) // 2] ^= 0xFF  # flip one byte inside the tensor data
    tampered.write_bytes(bytes(data))
    monkeypatch.setattr(digits, "BUNDLED_WEIGHTS", tampered)
    with pytest.raises(DigitsWeightsError, match="sha256") as err:
        load_digits_teacher()
    assert str(tampered) in str(err.value)
    # The same check on request for a user-given path.
    with pytest.raises(DigitsWeightsError, match="sha256"):
        load_digits_teacher(tampered, expected_sha256=DIGITS_WEIGHTS_SHA256)


def test_user_path_loads_without_sha(tmp_path: Path, split: digits.DigitsSplit) -> None:
    copy = tmp_path / "mine.pt"
    shutil.copyfile(digits.BUNDLED_WEIGHTS, copy)
    model = load_digits_teacher(copy)
    assert evaluate(model, split.test_images[:100], split.test_labels[:100]) >= 0.95


@pytest.mark.parametrize(
    "content",
    [b"this is not a checkpoint\n", b"", b"PK\x03\x04 truncated zip"],
    ids=["text", "empty", "bad-zip"],
)
def test_non_checkpoint_is_refused(tmp_path: Path, content: bytes) -> None:
    bad = tmp_path / "bad.pt"
    bad.write_bytes(content)
    with pytest.raises(ValueError, match="not a PyTorch checkpoint") as err:
        load_digits_teacher(bad)
    assert isinstance(err.value, DigitsWeightsError)
    assert str(bad) in str(err.value)


def test_wrong_state_dict_and_missing_file_are_refused(tmp_path: Path) -> None:
    other = tmp_path / "other.pt"
    torch.save(nn.Linear(3, 4).state_dict(), other)
    with pytest.raises(DigitsWeightsError, match="not a digits teacher") as err:
        load_digits_teacher(other)
    assert str(other) in str(err.value)
    with pytest.raises(DigitsWeightsError, match="not found"):
        load_digits_teacher(tmp_path / "missing.pt")


class _Payload:
    """An arbitrary class: pickling it puts a code reference into the checkpoint."""


def test_checkpoint_with_code_is_refused(tmp_path: Path) -> None:
    evil = tmp_path / "evil.pt"
    torch.save({"stage1.0.conv.weight": _Payload()}, evil)
    with pytest.raises(DigitsWeightsError, match="refused") as err:
        load_digits_teacher(evil)
    assert str(evil) in str(err.value)


def test_training_is_deterministic_and_leaves_global_rng(split: digits.DigitsSplit) -> None:
    # One short epoch on a slice keeps this fast; full retraining is the CLI's job.
    small = digits.DigitsSplit(
        split.train_images[:128], split.train_labels[:128], split.test_images[:64], split.test_labels[:64]
    )
    torch.manual_seed(123)
    before = torch.get_rng_state()
    a = digits_training.train_digits_teacher(seed=5, epochs=1, split=small)
    assert torch.equal(torch.get_rng_state(), before)
    b = digits_training.train_digits_teacher(seed=5, epochs=1, split=small)
    c = digits_training.train_digits_teacher(seed=6, epochs=1, split=small)
    assert digits.state_dict_bytes(a) == digits.state_dict_bytes(b)
    assert digits.state_dict_bytes(a) != digits.state_dict_bytes(c)
    assert not a.training
