"""Packaging: the timm floor in pyproject.toml is a timm that has everything dfgen and distill take from it.

The floor release is fetched with pip (from its cache or PyPI; skipped when neither can be reached), installed into a
scratch directory in front of the installed timm, and the code's timm names are imported from it and exercised."""

import ast
import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def timm_floor() -> str:
    specs = re.findall(r'"(timm[^"]*)"', (ROOT / "pyproject.toml").read_text())
    assert len(specs) == 1 and re.fullmatch(r"timm>=[\d.]+", specs[0]), f"expected one plain timm floor: {specs}"
    return specs[0].removeprefix("timm>=")


def timm_names() -> set[str]:
    """"module:name" for every `from timm... import name` and `timm.name` in dfgen/ and distill/."""
    names = set()
    for path in [*ROOT.glob("dfgen/**/*.py"), *ROOT.glob("distill/**/*.py")]:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "timm":
                names |= {f"{node.module}:{alias.name}" for alias in node.names}
            elif isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "timm":
                names.add(f"timm:{node.attr}")
    return names


SMOKE = """
import importlib, sys
import timm
assert timm.__version__ == sys.argv[1], timm.__version__
for entry in sys.argv[2:]:
    module, name = entry.split(":")
    getattr(importlib.import_module(module), name)
import torch
from distill.config import build_config
from distill.data import train_transform
from distill.models import DearKD
from distill.teacher_features import TeacherFeatures
from dfgen.teachers import load_teacher
model = timm.create_model("dearkd_micro_patch4_32", in_chans=1, num_classes=10)
model.set_distilled_training(True)
(cls, dist), tokens = model.forward_with_tokens(torch.rand(2, 1, 32, 32), [2])
teacher = load_teacher("digits")
features = TeacherFeatures(teacher.model, teacher.mean, teacher.std, (0.5,), (0.5,), ["stage3"])
logits, maps = features(torch.rand(2, 1, 32, 32))
assert logits.shape == (2, 10) and maps["stage3"].shape[-2:] == (8, 8)
data_config = {"input_size": (1, 32, 32), "mean": (0.5,), "std": (0.5,)}
for preset in ("distill_digits.yaml", "distill_paper_300.yaml"):
    train_transform(build_config("configs/" + preset), data_config)
print("ok")
"""


def test_the_timm_floor_has_what_the_code_takes_from_timm(tmp_path):
    floor = timm_floor()
    # timm.task appeared in 1.0.23, but until 1.0.24 its DistillationTeacher builds the teacher from a model name; the
    # wrapping of a module distill needs came in 1.0.25 (this test failed on 1.0.23 for that reason)
    assert floor == "1.0.25"
    names = timm_names()
    assert "timm.task.distillation:DistillationTeacher" in names and "timm:create_model" in names
    fetched = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:", "-q",
                              "-d", str(tmp_path / "wheel"), f"timm=={floor}"], capture_output=True, text=True,
                             timeout=120)
    if fetched.returncode != 0:
        pytest.skip(f"timm {floor} could not be fetched: {fetched.stderr.strip().splitlines()[-1:]}")
    with zipfile.ZipFile(next((tmp_path / "wheel").glob("timm-*.whl"))) as wheel:  # pure Python: unpacking installs
        wheel.extractall(tmp_path / "floor")
    env = {**os.environ, "PYTHONPATH": f"{tmp_path / 'floor'}{os.pathsep}{ROOT}", "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "-c", SMOKE, floor, *sorted(names)], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0 and result.stdout.strip().endswith("ok"), result.stderr[-3000:]
