"""Teachers users actually have, end to end through the CLI: a torchvision ResNet-18 fine-tuned to 10 classes at
32x32, a model factory in the user's own file (one and three channels), class names, `dfgen teachers --check`,
one-line errors, the CIFAR-10 preset, and `distill` / `dfgen report` rebuilding the teacher from dataset.json.
All weights are random and saved by the tests (nothing can be downloaded here)."""

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torchvision
import webdataset as wds
from PIL import Image

import dfgen
from dfgen.errors import DfgenError
from dfgen.teachers import load_recorded_teacher, state_dict_sha256

ROOT = Path(__file__).resolve().parents[1]
CIFAR_MEAN, CIFAR_STD = "0.4914,0.4822,0.4465", "0.2023,0.1994,0.2010"
TINY = ["--schedule", "16:2,32:2", "--classes-per-batch", "2", "--images-per-class", "2", "--warmup", "1", "--quiet"]

FACTORY = '''
import torch
from torch import nn


class CifarNet(nn.Module):
    """A user's own small CIFAR-style CNN (3x3 stem, no max-pool)."""

    def __init__(self, num_classes=10, in_chans=3, width=8):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_chans, width, 3, padding=1, bias=False), nn.BatchNorm2d(width),
                                  nn.ReLU())
        self.body = nn.Sequential(nn.Conv2d(width, 2 * width, 3, stride=2, padding=1, bias=False),
                                  nn.BatchNorm2d(2 * width), nn.ReLU())
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.linear = nn.Linear(2 * width, num_classes)

    def forward(self, x):
        return self.linear(self.pool(self.body(self.stem(x))))


def make(num_classes=10, in_chans=3, width=8):
    torch.manual_seed(0)  # a deterministic init: every build of the factory gives the same model
    return CifarNet(num_classes, in_chans, width)


def broken(**kwargs):
    raise ValueError("depth 35 is not a ResNet")


def not_a_model(**kwargs):
    return "a string"


NOT_CALLABLE = 3
'''


def read_samples(out: Path) -> list[dict]:
    index = json.loads((out / "index.json").read_text())
    return list(wds.WebDataset([str(out / s["url"]) for s in index["shardlist"]], shardshuffle=False))


@pytest.fixture
def models_py(tmp_path):
    path = tmp_path / "code" / "models.py"
    path.parent.mkdir()
    path.write_text(FACTORY)
    return path


@pytest.fixture(scope="module")
def resnet18_file(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("weights") / "resnet18_cifar10.pt"
    torch.save(torchvision.models.resnet18(num_classes=10).state_dict(), path)
    return path


def own_weights(path: Path, **kwargs) -> Path:
    """Weights of the factory model, with BatchNorm statistics that are not the identity, saved by the test."""
    namespace: dict = {}
    exec(FACTORY, namespace)
    model = namespace["make"](**kwargs)
    torch.manual_seed(1)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.3, 0.3)
            module.running_var.uniform_(0.5, 1.5)
    torch.save({"state_dict": {f"model.{k}": v for k, v in model.state_dict().items()}}, path)  # Lightning shape
    return path


# --------------------------------------------------------------------------- 1. torchvision ResNet-18, 10 classes


@pytest.mark.parametrize("name", ["resnet18", "torchvision:resnet18"])
def test_resnet18_ten_classes_at_32_through_the_cli(dfgen_cli, tmp_path, resnet18_file, name):
    out = tmp_path / "out"
    args = ["synthesize", "--teacher", name, "--teacher-weights", resnet18_file, "--num-classes", "10",
            "--image-size", "32", "--mean", CIFAR_MEAN, "--std", CIFAR_STD, "-n", "4", "--out", out, *TINY]
    code, _, err = dfgen_cli(args)
    assert code == 0, err
    dataset = json.loads((out / "dataset.json").read_text())
    teacher = dataset["teacher"]
    assert dataset["num_classes"] == 10 and dataset["image_size"] == [3, 32, 32] and dataset["in_chans"] == 3
    assert teacher["source"] == ("timm:resnet18" if name == "resnet18" else "torchvision:resnet18")
    assert teacher["data_config"]["mean"] == [0.4914, 0.4822, 0.4465]
    assert teacher["data_config"]["std"] == [0.2023, 0.1994, 0.2010]
    assert teacher["spec"]["weights"] == str(resnet18_file.resolve()) and teacher["spec"]["num_classes"] == 10
    images = [Image.open(io.BytesIO(s["png"])) for s in read_samples(out)]
    assert len(images) == 4 and all(img.mode == "RGB" and img.size == (32, 32) for img in images)
    # the spec is part of the configuration: the same command resumes, another normalization is refused
    code, _, err = dfgen_cli(args)
    assert code == 0 and "nothing to do" in err
    changed = [*args[:-len(TINY)], *TINY]
    changed[changed.index("--mean") + 1] = "0.5,0.5,0.5"
    code, _, err = dfgen_cli(changed)
    assert code == 1 and "different configuration (differs in: mean)" in err
    # the recorded spec rebuilds the same teacher (what distill and the report do)
    rebuilt = load_recorded_teacher(teacher)
    assert rebuilt.weights_sha256 == teacher["weights_sha256"] and rebuilt.input_size == (3, 32, 32)
    assert list(rebuilt.mean) == teacher["data_config"]["mean"]


# --------------------------------------------------------------------------- 2. the user's own factory file


@pytest.mark.parametrize(("channels", "mode"), [(1, "L"), (3, "RGB")])
def test_factory_file_one_and_three_channels(dfgen_cli, tmp_path, models_py, channels, mode):
    weights = own_weights(tmp_path / "own.ckpt", num_classes=4, in_chans=channels)
    names = tmp_path / "classes.txt"
    names.write_text("cat\ndog\nbird\nfish\n")
    out = tmp_path / "out"
    code, _, err = dfgen_cli(["synthesize", "--teacher", f"{models_py}:make", "--teacher-weights", weights,
                              "--teacher-kwargs", f"{{num_classes: 4, in_chans: {channels}}}", "--image-size", "32",
                              "--class-names", names, "-n", "6", "--out", out, *TINY])
    assert code == 0, err
    dataset = json.loads((out / "dataset.json").read_text())
    assert dataset["in_chans"] == channels and dataset["image_size"] == [channels, 32, 32]
    assert dataset["classes"] == ["cat", "dog", "bird", "fish"] and dataset["num_classes"] == 4
    assert dataset["teacher"]["source"] == f"factory:{models_py}:make"
    assert dataset["teacher"]["spec"]["kwargs"] == {"num_classes": 4, "in_chans": channels}
    assert len(dataset["teacher"]["data_config"]["mean"]) == channels  # ImageNet's, averaged for one channel
    samples = read_samples(out)
    images = [Image.open(io.BytesIO(s["png"])) for s in samples]
    assert len(images) == 6 and all(img.mode == mode and img.size == (32, 32) for img in images)
    assert sorted({s["cls"].decode() for s in samples}) == ["0", "1", "2", "3"]


def test_a_moved_factory_file_is_named_with_what_to_pass(dfgen_cli, tmp_path, models_py):
    weights = own_weights(tmp_path / "own.ckpt", num_classes=4, in_chans=1)
    out = tmp_path / "out"
    code, _, err = dfgen_cli(["synthesize", "--teacher", f"{models_py}:make", "--teacher-weights", weights,
                              "--teacher-kwargs", "{num_classes: 4, in_chans: 1}", "--image-size", "32", "-n", "4",
                              "--out", out, *TINY])
    assert code == 0, err
    teacher = json.loads((out / "dataset.json").read_text())["teacher"]
    assert load_recorded_teacher(teacher).num_classes == 4
    models_py.rename(models_py.with_name("moved.py"))
    with pytest.raises(DfgenError) as excinfo:
        load_recorded_teacher(teacher)
    assert str(excinfo.value) == (
        f"the teacher's model file recorded in dataset.json, {models_py.resolve()}, is not there (moved or deleted); "
        f"pass --teacher NEW/PATH/{models_py.name}:make --teacher-weights {Path(weights).resolve()}")


def test_factory_module_on_pythonpath_python_api_and_report(dfgen_cli, tmp_path, models_py, monkeypatch):
    """`package.module:factory` form via the Python API; the report rebuilds the teacher from dataset.json (from
    another directory) and shows the class names."""
    monkeypatch.syspath_prepend(str(models_py.parent))
    weights = own_weights(tmp_path / "own.pt", num_classes=3, in_chans=1)
    out = tmp_path / "out"
    result = dfgen.synthesize(teacher="models:make", teacher_weights=str(weights),
                              teacher_kwargs={"num_classes": 3, "in_chans": 1}, image_size=16, mean=[0.5], std=[0.25],
                              class_names=["zero", "one", "two"], n=6, out=str(out), schedule="8:2,16:2",
                              classes_per_batch=3, images_per_class=2, warmup=1, quiet=True)
    assert result.complete
    monkeypatch.chdir(tmp_path / "code")
    code, _, err = dfgen_cli(["report", out, "--out", tmp_path / "report", "--lpips-net", "none",
                              "--images-per-class", "2"])
    assert code == 0, err
    report = json.loads((tmp_path / "report" / "report.json").read_text())["datasets"][0]
    assert report["classes"] == ["zero", "one", "two"] and set(report["class_counts"]) == {"zero", "one", "two"}
    assert report["teacher"]["weights_match"] is True and report["teacher_agreement"]["images"] == 6
    assert "zero" in (tmp_path / "report" / "report.html").read_text()


def test_factory_without_data_config_needs_image_size(dfgen_cli, tmp_path, models_py):
    code, _, err = dfgen_cli(["teachers", "--check", f"{models_py}:make"])
    assert code == 1 and "has no data config: pass --image-size" in err


# --------------------------------------------------------------------------- 3. one-line errors


@pytest.mark.parametrize(
    ("teacher", "extra", "code", "message"),
    [
        ("{dir}/nope.py:make", [], 1, r"Error: teacher factory file not found: .*nope.py"),
        ("{models}:mkae", [], 1, r"Error: .*models.py has no attribute 'mkae'; did you mean make\?"),
        ("{models}:NOT_CALLABLE", [], 1, r"Error: .*NOT_CALLABLE is not callable \(a int\)"),
        ("{models}:broken", ["--teacher-kwargs", "{depth: 35}"], 1,
         r"Error: teacher factory .*models.py:broken\(depth=35\) raised ValueError: depth 35 is not a ResNet"),
        ("{models}:not_a_model", [], 1, r"Error: teacher factory .* returned a str, not a torch.nn.Module"),
        ("{models}:make", ["--teacher-kwargs", "[1, 2]"], 2,
         r"Invalid value for '--teacher-kwargs': must be a mapping of argument: value"),
        ("{models}:make", ["--teacher-kwargs", "{width: 16}", "--teacher-weights", "{weights}"], 1,
         r"Error: weights in .* do not fit the model from .*: shape mismatch stem.0.weight \[8, 3, 3, 3\] in the file"),
        ("{models}:make", ["--teacher-kwargs", "{num_classes: 37}", "--teacher-weights", "{weights}"], 1,
         r"Error: checkpoint classifier has 10 classes \(linear.weight \[10, 16\]\) but the model from .* has 37"),
        ("resnet18", ["--teacher-weights", "{resnet18}", "--num-classes", "37"], 1,
         r"Error: checkpoint classifier has 10 classes \(fc.weight \[10, 512\]\) but --num-classes 37"),
        ("torchvision:resnet34", ["--teacher-weights", "{resnet18}"], 1,
         r"Error: weights in .* do not fit torchvision model resnet34 .*missing keys layer1.2.conv1.weight"),
        ("no_such_module:make", [], 1, r"Error: cannot import module 'no_such_module' .*PYTHONPATH"),
        ("{models}", [], 1, r"Error: --teacher .*models.py names a file: add the function or class"),
    ],
)
def test_bad_teachers_get_one_line(dfgen_cli, tmp_path, models_py, resnet18_file, teacher, extra, code, message):
    import re

    weights = own_weights(tmp_path / "own.pt")
    fill = {"{dir}": str(tmp_path), "{models}": str(models_py), "{weights}": str(weights),
            "{resnet18}": str(resnet18_file)}

    def filled(text):
        for key, value in fill.items():
            text = text.replace(key, value)
        return text

    for command in (["teachers", "--check", filled(teacher)],
                    ["synthesize", "--teacher", filled(teacher), "-n", "4", "--out", tmp_path / "out"]):
        got, _, err = dfgen_cli([*command, "--image-size", "32", *map(filled, extra)])
        assert got == code, err
        assert re.search(message, err), err
        lines = err.strip().splitlines()  # a usage error (exit 2) comes after click's usage lines
        assert "Traceback" not in err and lines[-1].startswith("Error: ") and (code == 2 or len(lines) == 1)
    assert not (tmp_path / "out").exists()


def test_factory_error_in_a_subprocess_has_no_traceback(tmp_path, models_py):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "-m", "dfgen", "teachers", "--check", f"{models_py}:broken"], env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.strip().startswith("Error: teacher factory") and len(result.stderr.strip().splitlines()) == 1


# --------------------------------------------------------------------------- 4. dfgen teachers


def test_teachers_lists_aliases(dfgen_cli):
    code, out, _ = dfgen_cli(["teachers"])
    assert code == 0
    assert "regnety_16gf" in out and "timm:regnety_160.deit_in1k" in out and "digits" in out
    assert "path/to/models.py:FACTORY" in out and "unprefixed NAME: timm" in out


def test_teachers_check_digits(dfgen_cli):
    code, out, _ = dfgen_cli(["teachers", "--check", "digits"])
    assert code == 0
    lines = dict(line.split(None, 1) for line in out.strip().splitlines())
    assert lines["teacher"] == "digits (dfgen:digits)"
    assert lines["classes"] == "10" and lines["input"] == "size    1 x 32 x 32 (greyscale images)"
    assert lines["mean"] == "0.3052" and lines["std"] == "0.3235"
    assert lines["BatchNorm"] == "5 BatchNorm2d layers" and lines["parameters"] == "140,458"
    assert lines["forward"].startswith("ok: logits [1, 10]")


def test_teachers_check_resnet18(dfgen_cli, resnet18_file):
    code, out, _ = dfgen_cli(["teachers", "--check", "torchvision:resnet18", "--teacher-weights", resnet18_file,
                              "--num-classes", "10", "--image-size", "32", "--mean", CIFAR_MEAN, "--std", CIFAR_STD])
    assert code == 0
    assert "teacher       torchvision:resnet18 (torchvision:resnet18)" in out
    assert f"weights       {resnet18_file.resolve()} (sha256 " in out
    assert "classes       10\n" in out and "input size    3 x 32 x 32 (RGB images)" in out
    assert "mean          0.4914, 0.4822, 0.4465" in out and "std           0.2023, 0.1994, 0.201" in out
    assert "BatchNorm     20 BatchNorm2d layers" in out and "parameters    11,181,642" in out
    assert "classifier    fc: 512 -> 10" in out and "forward       ok: logits [1, 10] for a 32x32 input" in out


def test_teachers_options_need_check(dfgen_cli):
    code, _, err = dfgen_cli(["teachers", "--num-classes", "10"])
    assert code == 2 and "--num-classes needs --check NAME" in err


# --------------------------------------------------------------------------- presets, fingerprint, distill


def test_cifar10_preset_with_an_own_resnet(dfgen_cli, tmp_path, models_py):
    preset = ROOT / "configs" / "cifar10_resnet34.yaml"
    config = dfgen.build_config(preset, teacher=f"{models_py}:make")
    assert (config.image_size, config.num_classes, config.schedule) == (32, 10, [(32, 2000)])
    assert config.classes_per_batch * config.images_per_class == 256 and config.lr == 0.05
    assert config.losses.bn == 10 and config.mean == [0.4914, 0.4822, 0.4465]
    code, _, err = dfgen_cli(["synthesize", "--config", preset, "--out", tmp_path / "o"])
    assert code == 2 and "Missing option '--teacher'" in err  # the preset names no teacher: never digits
    out = tmp_path / "cifar"
    code, _, err = dfgen_cli(["synthesize", "--config", preset, "--teacher", f"{models_py}:make", "-n", "4",
                              "--schedule", "32:2", "--batch-size", "4", "--images-per-class", "2", "--out", out,
                              "--quiet"])
    assert code == 0, err
    dataset = json.loads((out / "dataset.json").read_text())
    assert dataset["image_size"] == [3, 32, 32] and dataset["losses"]["bn"] == 10
    assert dataset["teacher"]["data_config"]["std"] == [0.2023, 0.1994, 0.2010]


def test_teacher_spec_is_part_of_the_fingerprint_only_when_set():
    plain = dfgen.SynthesisConfig()
    assert not {"teacher_kwargs", "num_classes", "mean", "use_ema", "class_names"} & set(plain.content_fields())
    spec = dfgen.SynthesisConfig(teacher_kwargs="{num_classes: 10}", mean="0.5", use_ema=True)
    assert spec.content_fields()["teacher_kwargs"] == {"num_classes": 10} and spec.content_fields()["mean"] == [0.5]
    with pytest.raises(DfgenError, match="--teacher-kwargs must be a mapping"):
        dfgen.SynthesisConfig(teacher_kwargs="just text")
    with pytest.raises(DfgenError, match="--mean must be a comma-separated list"):
        dfgen.SynthesisConfig(mean="a,b")


def test_class_names_files(tmp_path):
    from dfgen.parsing import read_class_names

    as_json = tmp_path / "names.json"
    as_json.write_text(json.dumps({"1": "b", "0": "a"}))
    assert read_class_names(as_json) == ["a", "b"]
    as_list = tmp_path / "list.json"
    as_list.write_text('["x", "y"]')
    assert read_class_names(as_list) == ["x", "y"]
    repeated = tmp_path / "rep.txt"
    repeated.write_text("a\nb\na\n")
    with pytest.raises(DfgenError, match="must be distinct; repeated: a"):
        read_class_names(repeated)


def test_wrong_number_of_class_names(dfgen_cli, tmp_path, resnet18_file):
    names = tmp_path / "names.txt"
    names.write_text("a\nb\n")
    code, _, err = dfgen_cli(["synthesize", "--teacher", "resnet18", "--teacher-weights", resnet18_file,
                              "--class-names", names, "-n", "4", "--out", tmp_path / "out", *TINY])
    assert code == 1 and "--class-names has 2 names but teacher resnet18 has 10 classes" in err


def test_distill_rebuilds_the_own_teacher_from_dataset_json(tmp_path, models_py, monkeypatch):
    """distill's stage-1 teacher is the factory model named in dataset.json, with its kwargs and weights."""
    import timm

    import distill  # noqa: F401  (registers the students)
    from distill.config import build_config
    from distill.sources import open_source
    from distill.teacher import load_stage1_teacher as _load_teacher

    weights = own_weights(tmp_path / "own.pt", num_classes=4, in_chans=1)
    out = tmp_path / "syn"
    dfgen.synthesize(teacher=os.path.relpath(models_py) + ":make", teacher_weights=str(weights),
                     teacher_kwargs={"num_classes": 4, "in_chans": 1}, image_size=32, n=4, out=str(out),
                     schedule="32:2", classes_per_batch=2, images_per_class=2, warmup=1, quiet=True)
    monkeypatch.chdir(tmp_path)  # the relative factory path was resolved when it was recorded
    student = timm.create_model("dearkd_micro_patch4_32", num_classes=4, in_chans=1)
    cfg = build_config(shards=[str(out)], device="cpu")
    features, pairs, name = _load_teacher(cfg, [open_source(out)], student, torch.device("cpu"),
                                          {"mean": (0.5,), "std": (0.5,)})
    assert name.endswith("models.py:make") and pairs
    recorded = json.loads((out / "dataset.json").read_text())["teacher"]
    assert state_dict_sha256(features.kd.model) == recorded["weights_sha256"]
    logits, maps = features(torch.rand(2, 1, 32, 32))
    assert logits.shape == (2, 4) and maps


def test_teacher_options_from_a_yaml_preset(dfgen_cli, tmp_path, models_py):
    preset = tmp_path / "mine.yaml"
    preset.write_text(f"teacher: {models_py}:make\nteacher_kwargs: {{num_classes: 3, in_chans: 1}}\nimage_size: 16\n"
                      "mean: [0.5]\nstd: 0.25\nn: 4\nschedule: '16:2'\nclasses_per_batch: 2\nimages_per_class: 2\n")
    config = dfgen.build_config(preset)
    assert config.teacher_kwargs == {"num_classes": 3, "in_chans": 1} and config.std == [0.25]
    code, _, err = dfgen_cli(["synthesize", "--config", preset, "--out", tmp_path / "out", "--quiet"])
    assert code == 0, err
    assert json.loads((tmp_path / "out" / "dataset.json").read_text())["image_size"] == [1, 16, 16]
    preset.write_text(preset.read_text().replace("teacher_kwargs: {num_classes: 3, in_chans: 1}",
                                                 "teacher_kwargs: [3, 1]"))
    code, _, err = dfgen_cli(["synthesize", "--config", preset, "--out", tmp_path / "bad"])
    assert code == 1 and err.startswith("Error: --teacher-kwargs must be a mapping") and len(err.splitlines()) == 1
