"""The bundled offline teacher: a small BatchNorm CNN trained on scikit-learn's handwritten digits.

Data: `sklearn.datasets.load_digits()` (1,797 greyscale 8x8 images, values 0..16, ships with
scikit-learn, so no network is needed), scaled to [0, 1] and upsampled to 32x32, one channel
(bilinear, align_corners=False, then clamped to [0, 1]).

Split (fixed, part of the benchmark contract):
`sklearn.model_selection.train_test_split(indices, test_size=0.25, random_state=0, stratify=labels)`
over the 1,797 images in `load_digits()` order, giving 1,347 training and 450 held-out test images.
The teacher is trained on the training part only; every reported accuracy is on the test part.

The model takes *normalized* input, `(x - DIGITS_MEAN) / DIGITS_STD` with x in [0, 1]; the constants
are the training-set pixel mean/std at 32x32, rounded to 4 decimals, and are also exposed through
`model.pretrained_cfg`, so `timm.data.resolve_model_data_config(model)` gives the right data config.

The weights ship as `digits_cnn.pt` next to this module (a plain state_dict). Reproduce them with

    python -m dfgen.zoo.digits_training --out digits_cnn.pt [--seed 0] [--epochs N]

(dfgen/zoo/digits_training.py), which prints the test accuracy and the file's sha256 as one JSON line.
"""

from __future__ import annotations

import io
import pickle
from pathlib import Path
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from dfgen.dataset import sha256_file
from dfgen.errors import DfgenError

DIGITS_RESOLUTION = 32
DIGITS_NUM_CLASSES = 10
# Training-split pixel statistics at 32x32 in [0, 1] (see _pixel_stats), frozen as literals so the
# data config never depends on recomputing them.
DIGITS_MEAN: tuple[float] = (0.3052,)
DIGITS_STD: tuple[float] = (0.3235,)

SPLIT_TEST_SIZE = 0.25
SPLIT_RANDOM_STATE = 0

# Bundled weights and their digest; regenerate both with `python -m dfgen.zoo.digits_training --out ...`.
BUNDLED_WEIGHTS = Path(__file__).with_name("digits_cnn.pt")
DIGITS_WEIGHTS_SHA256 = "0766a1ad1bc52d950e02801a384b3f9505aec7b3464fa45ffdf01373f4874ebe"

DEFAULT_EPOCHS = 30
# CPU float reductions are split per thread, so the bits of the result depend on the thread count:
# training pins it so the bundled file is reproducible on machines with any number of cores.
DEFAULT_TRAIN_THREADS = 2


class DigitsWeightsError(DfgenError, ValueError):
    """The digits teacher's weights file is missing, corrupted, not a checkpoint, or not this model's."""


class DigitsSplit(NamedTuple):
    """The fixed train/test split: images float32 (N, 1, 32, 32) in [0, 1], labels int64 (N,)."""

    train_images: torch.Tensor
    train_labels: torch.Tensor
    test_images: torch.Tensor
    test_labels: torch.Tensor


def load_digits_split() -> DigitsSplit:
    """Load scikit-learn's digits at 32x32 with the documented fixed split (deterministic)."""
    # Imported lazily: scikit-learn is only needed for the demo/tests, not to load the teacher.
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    images = torch.as_tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
    images = F.interpolate(
        images, size=(DIGITS_RESOLUTION, DIGITS_RESOLUTION), mode="bilinear", align_corners=False
    ).clamp_(0.0, 1.0)
    labels = torch.as_tensor(digits.target, dtype=torch.int64)
    train_idx, test_idx = train_test_split(
        list(range(len(labels))),
        test_size=SPLIT_TEST_SIZE,
        random_state=SPLIT_RANDOM_STATE,
        stratify=digits.target,
    )
    train_idx_t = torch.as_tensor(train_idx, dtype=torch.int64)
    test_idx_t = torch.as_tensor(test_idx, dtype=torch.int64)
    return DigitsSplit(
        train_images=images[train_idx_t].contiguous(),
        train_labels=labels[train_idx_t].contiguous(),
        test_images=images[test_idx_t].contiguous(),
        test_labels=labels[test_idx_t].contiguous(),
    )


class ConvBNAct(nn.Module):
    """3x3 conv (no bias: BN follows) -> BatchNorm2d -> ReLU."""

    def __init__(self, in_chs: int, out_chs: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_chs, out_chs, kernel_size=3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(out_chs)
        # Not in-place, so forward hooks on `bn` see its own output untouched.
        self.act = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv(x)))


class DigitsNet(nn.Module):
    """Small BatchNorm CNN for 1x32x32 digits with a timm-like interface.

    stage1: conv 1->32, conv 32->32                (32x32, reduction 1)
    stage2: avgpool 2, conv 32->64, conv 64->64    (16x16, reduction 2)
    stage3: avgpool 2, conv 64->128                (8x8,   reduction 4)
    head:   global average pool -> 128-d embedding -> fc Linear(128, 10)

    Average (not max) pooling: gradients spread over the whole window, which makes inversion by
    gradient descent on the input smoother. Every conv is followed by BatchNorm2d, whose running
    statistics are what DeepInversion matches.
    """

    def __init__(self, num_classes: int = DIGITS_NUM_CLASSES, in_chans: int = 1) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.num_features = 128
        self.stage1 = nn.Sequential(ConvBNAct(in_chans, 32), ConvBNAct(32, 32))
        self.stage2 = nn.Sequential(nn.AvgPool2d(2), ConvBNAct(32, 64), ConvBNAct(64, 64))
        self.stage3 = nn.Sequential(nn.AvgPool2d(2), ConvBNAct(64, self.num_features))
        self.fc = nn.Linear(self.num_features, num_classes)
        # Same shape as timm's raw-model feature_info, so a trainer can hook e.g. the 8x8 map.
        self.feature_info: list[dict[str, Any]] = [
            {"module": "stage1", "num_chs": 32, "reduction": 1},
            {"module": "stage2", "num_chs": 64, "reduction": 2},
            {"module": "stage3", "num_chs": self.num_features, "reduction": 4},
        ]
        self.pretrained_cfg: dict[str, Any] = {
            "architecture": "dfgen_digits_cnn",
            "input_size": (in_chans, DIGITS_RESOLUTION, DIGITS_RESOLUTION),
            "mean": DIGITS_MEAN,
            "std": DIGITS_STD,
            "num_classes": num_classes,
            "interpolation": "bilinear",
            "crop_pct": 1.0,
            "first_conv": "stage1.0.conv",
            "classifier": "fc",
        }
        self.default_cfg = self.pretrained_cfg  # older timm versions read this name

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Normalized (N, 1, 32, 32) input -> last feature map (N, 128, 8, 8)."""
        return self.stage3(self.stage2(self.stage1(x)))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Feature map -> 128-d pooled embedding (pre_logits=True) or class logits."""
        x = x.mean(dim=(2, 3))
        return x if pre_logits else self.fc(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def get_classifier(self) -> nn.Linear:
        return self.fc


def normalize(
    images: torch.Tensor, mean: tuple[float, ...] = DIGITS_MEAN, std: tuple[float, ...] = DIGITS_STD
) -> torch.Tensor:
    """[0, 1] pixels -> the teacher's normalized input space."""
    m = torch.as_tensor(mean, dtype=images.dtype, device=images.device).view(1, -1, 1, 1)
    s = torch.as_tensor(std, dtype=images.dtype, device=images.device).view(1, -1, 1, 1)
    return (images - m) / s


def unit_pixels(images: torch.Tensor) -> torch.Tensor:
    """uint8 pixels (0..255) as float32 in [0, 1]; float images unchanged."""
    return images.float() / 255 if images.dtype == torch.uint8 else images


@torch.no_grad()
def evaluate(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    batch_size: int = 500,
    *,
    mean: Any = None,
    std: Any = None,
) -> float:
    """Top-1 accuracy of `model` on [0, 1] float or uint8 `images`, normalized with `mean`/`std` (default: the
    model's pretrained_cfg, else the digits constants)."""
    cfg = getattr(model, "pretrained_cfg", {})
    mean = cfg.get("mean", DIGITS_MEAN) if mean is None else mean
    std = cfg.get("std", DIGITS_STD) if std is None else std
    was_training = model.training
    model.eval()
    try:
        correct = 0
        for start in range(0, len(labels), batch_size):
            batch = normalize(unit_pixels(images[start : start + batch_size]), mean, std)
            correct += int((model(batch).argmax(dim=1) == labels[start : start + batch_size]).sum())
    finally:
        model.train(was_training)
    return correct / max(len(labels), 1)


def state_dict_bytes(model: nn.Module) -> bytes:
    """Serialize a state_dict to bytes that do not depend on the destination file name.

    (torch.save to a path names the archive after the file, so the same weights saved under two names
    would hash differently.)
    """
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    return buf.getvalue()


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if "Weights only load failed" in str(e):
            raise DigitsWeightsError(
                f"{path} holds objects other than tensors (possibly code) and was refused; "
                "use a plain state_dict saved with torch.save(model.state_dict(), path)"
            ) from None
        raise DigitsWeightsError(f"{path} is not a PyTorch checkpoint (cannot be read by torch.load)") from None
    except Exception as e:  # torch.load raises many types for garbage (KeyError, EOFError, RuntimeError...)
        raise DigitsWeightsError(
            f"{path} is not a PyTorch checkpoint (cannot be read by torch.load: {type(e).__name__})"
        ) from None
    # Accept the common wrappers {"state_dict": ...} / {"model": ...} around a plain state_dict.
    if isinstance(obj, dict):
        for key in ("state_dict", "model"):
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise DigitsWeightsError(f"{path} is a PyTorch file but not a state_dict of tensors")
    return obj


def load_digits_teacher(weights: str | Path | None = None, expected_sha256: str | None = None) -> DigitsNet:
    """Load the digits teacher in eval mode.

    With `weights=None` the bundled file is loaded and its sha256 must equal DIGITS_WEIGHTS_SHA256.
    A user-given file is checked only if `expected_sha256` is passed; it must be a DigitsNet state_dict.
    Every failure raises DigitsWeightsError (a ValueError) naming the file.
    """
    if weights is None:
        path = Path(BUNDLED_WEIGHTS)
        expected = expected_sha256 or DIGITS_WEIGHTS_SHA256
    else:
        path = Path(weights)
        expected = expected_sha256
    if not path.is_file():
        where = "the bundled digits teacher weights" if weights is None else "digits teacher weights"
        raise DigitsWeightsError(
            f"{where} {path} not found; regenerate them with `python -m dfgen.zoo.digits_training --out {path}`"
        )
    if expected is not None:
        actual = sha256_file(path)
        if actual != expected.lower():
            raise DigitsWeightsError(
                f"{path} has sha256 {actual}, expected {expected}: the file is corrupted or was replaced; "
                "reinstall dfgen or regenerate it with `python -m dfgen.zoo.digits_training --out ...`"
            )
    state = _read_state_dict(path)
    model = DigitsNet()
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        first = str(e).strip().splitlines()
        detail = first[1].strip() if len(first) > 1 else first[0] if first else ""
        raise DigitsWeightsError(f"{path} is not a digits teacher (DigitsNet) state_dict: {detail}") from None
    return model.eval()
