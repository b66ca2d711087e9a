"""Teachers that only accept their training size (a LeNet-5 and a CIFAR-style flatten-and-Linear head):
resolutions are probed before synthesis, multi-resolution runs in "upsample" mode, and a failure in the teacher's
forward pass is one line naming the stage, size and layer. Random weights: only the path matters here."""

import json

import pytest
import torch

from dfgen.config import AUTO
from dfgen.errors import DfgenError
from dfgen.resolutions import accepted_resolutions, failing_layer, resolve_multires

MODELS = '''
import torch
from torch import nn


def lenet5_bn(num_classes=10):
    """LeNet-5 with BatchNorm: its third 5x5 convolution needs a 5x5 map, so 28x28 input only."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 6, 5, padding=2), nn.BatchNorm2d(6), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(6, 16, 5), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(16, 120, 5), nn.BatchNorm2d(120), nn.ReLU(), nn.Flatten(),
        nn.Linear(120, 84), nn.ReLU(), nn.Linear(84, num_classes))


def cifar_flatten(num_classes=10):
    """A CIFAR-style net whose head flattens a 8x8 map into a Linear layer: 32x32 input only."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(8 * 8 * 8, num_classes))


class Recorder(nn.Module):
    """Wraps a net and records the input sizes it was shown."""

    def __init__(self, net):
        super().__init__()
        self.net = net
        self.sizes = set()

    def forward(self, x):
        self.sizes.add(tuple(x.shape[-2:]))
        return self.net(x)


def recorded_lenet(num_classes=10):
    return Recorder(lenet5_bn(num_classes))


class BatchOfOne(nn.Module):
    """A user's bug: a reshape that only works for a batch of one, so the size probe passes and synthesis fails."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU())
        self.head = nn.Linear(4 * 28 * 28, 10)

    def forward(self, x):
        return self.head(self.features(x).view(1, -1))


def batch_of_one():
    torch.manual_seed(0)
    return BatchOfOne()
'''

FAST = ["--classes-per-batch", "5", "--images-per-class", "2", "--warmup", "1", "--quiet", "--flip", "off",
        "--ep-reach", "0.3", "--margin", "0.5"]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    path = tmp_path_factory.mktemp("user") / "models.py"
    path.write_text(MODELS)
    return path


def _load(models, name):
    from dfgen.teachers import load_teacher

    return load_teacher(f"{models}:{name}", None, image_size=28 if "lenet" in name or "batch" in name else 32)


def test_probe_reports_which_sizes_a_fixed_size_teacher_accepts(models):
    lenet = _load(models, "lenet5_bn")
    accepted = accepted_resolutions(lenet.model, 1, [14, 28, 56])
    assert accepted[28] is None
    assert "Conv2d" in accepted[14] and "8 (Conv2d)" in accepted[14]  # the third convolution, by name
    assert accepted[56] is not None and "Linear" in accepted[56]  # the map is larger than the Linear layer takes
    cifar = _load(models, "cifar_flatten")
    accepted = accepted_resolutions(cifar.model, 3, [16, 32])
    assert accepted[32] is None and "Linear" in accepted[16]


def test_multires_mode_is_chosen_from_the_probe():
    ok = {14: None, 28: None}
    rejects_low = {14: "layer 8 (Conv2d): ...", 28: None}
    schedule = [(14, 10), (28, 10)]
    assert resolve_multires(AUTO, schedule, 28, ok, "t") == "native"
    assert resolve_multires("upsample", schedule, 28, ok, "t") == "upsample"
    assert resolve_multires(AUTO, schedule, 28, rejects_low, "t") == "upsample"
    with pytest.raises(DfgenError, match=r"rejects the 14x14 stage .*--multires upsample"):
        resolve_multires("native", schedule, 28, rejects_low, "t")
    with pytest.raises(DfgenError, match=r"fails on its own input size 28x28 .*--image-size"):
        resolve_multires(AUTO, schedule, 28, {14: None, 28: "layer x"}, "t")


@pytest.mark.parametrize("name,size,mean", [("lenet5_bn", 28, "0.13"), ("cifar_flatten", 32, "0.5")])
def test_fixed_size_teachers_synthesize_with_the_default_multires(dfgen_cli, tmp_path, models, name, size, mean):
    half = size // 2
    out = tmp_path / name
    code, _, err = dfgen_cli(["synthesize", "--teacher", f"{models}:{name}", "--image-size", size, "--mean", mean,
                              "--std", "0.3", "-n", 10, "--schedule", f"{half}:3,{size}:3", "--out", out, *FAST])
    assert code == 0, err
    config = json.loads((out / "config.json").read_text())
    assert config["content"]["multires"] == "upsample"
    derived = config["derived"]
    assert derived["multires"] == "upsample" and derived["accepted_resolutions"][str(size)] == "ok"
    assert derived["accepted_resolutions"][str(half)] != "ok"
    dataset = json.loads((out / "dataset.json").read_text())
    assert dataset["optimizer"]["multires"] == "upsample" and dataset["image_size"][1:] == [size, size]


def test_upsample_mode_shows_the_teacher_only_its_own_size(models):
    from dfgen.config import LossWeights
    from dfgen.inversion import EngineSettings, InversionEngine

    teacher = _load(models, "recorded_lenet")
    for multires, shown in (("upsample", {(28, 28)}), ("native", {(20, 20)})):
        settings = EngineSettings(schedule=[(20, 3), (28, 3)], weights=LossWeights(), teacher_resolution=28,
                                  multires=multires, warmup=1)
        with InversionEngine(teacher.model, teacher.mean, teacher.std, settings, torch.device("cpu")) as engine:
            teacher.model.sizes.clear()  # the engine measured BN noise levels at 28x28 on start-up; count from here
            if multires == "native":  # 20x20 gives LeNet a 2x2 map before its 5x5 convolution
                with pytest.raises(Exception, match=r"20px stage \(input 20x20\) at layer net.8 \(Conv2d\)"):
                    engine.invert(torch.arange(4) % 10, seed=0)
            else:
                result = engine.invert(torch.arange(4) % 10, seed=0)
                assert result.images.shape == (4, 1, 28, 28)
        assert teacher.model.sizes == shown


def test_a_forward_failure_during_synthesis_is_one_line_naming_stage_and_layer(dfgen_cli, tmp_path, models):
    args = ["synthesize", "--teacher", f"{models}:batch_of_one", "--image-size", "28", "-n", 10,
            "--schedule", "28:2", *FAST]
    code, _, err = dfgen_cli([*args, "--out", tmp_path / "o"])  # normalized form: fails measuring BN noise levels
    assert code == 1
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert "the teacher failed on the start-up noise batch (16 images 28x28" in err and "layer head (Linear)" in err
    code, _, err = dfgen_cli([*args, "--loss-form", "paper", "--out", tmp_path / "p"])  # no noise batch: a stage
    assert code == 1
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert "the teacher failed in the 28px stage (input 28x28) at layer head (Linear)" in err
    assert "dfgen teachers --check" in err


def test_failing_layer_names_the_innermost_module(models):
    teacher = _load(models, "lenet5_bn")
    layer, exc = failing_layer(teacher.model, torch.zeros(1, 1, 8, 8))
    assert layer == "4 (Conv2d)" and isinstance(exc, RuntimeError)  # 8 -> 4 after the first pool: too small for 5x5
    assert failing_layer(teacher.model, torch.zeros(1, 1, 28, 28)) == (None, None)


def test_teachers_check_lists_the_accepted_sizes(dfgen_cli, models):
    code, out, _ = dfgen_cli(["teachers", "--check", f"{models}:lenet5_bn", "--image-size", "28"])
    assert code == 0
    line = next(line for line in out.splitlines() if line.startswith("resolutions"))
    assert "28 accepted; 7, 14 rejected (7: layer 4 (Conv2d)" in line and "upsample" in line
    code, out, _ = dfgen_cli(["teachers", "--check", "digits"])
    assert "8, 16, 32 accepted: the default schedule 8:200,16:200,32:200" in out


def test_no_schedule_can_work_below_the_teachers_minimum(dfgen_cli, tmp_path, models):
    code, _, err = dfgen_cli(["synthesize", "--teacher", f"{models}:lenet5_bn", "--image-size", "20", "-n", 10,
                              "--schedule", "20:2", "--out", tmp_path / "o", *FAST])
    assert code == 1 and "fails on its own input size 20x20" in err and "--image-size" in err
    assert "Traceback" not in err


def test_teachers_check_shows_no_schedule_below_the_minimum(dfgen_cli, models):
    code, out, _ = dfgen_cli(["teachers", "--check", f"{models}:lenet5_bn", "--image-size", "20"])
    assert code == 1 and "20 REJECTED" in out

