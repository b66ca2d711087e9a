"""The phases of the CIFAR-10 benchmark (benchmarks/cifar10.py) that differ from the 28x28 ones (benchmarks/phases.py):
the teacher and the judge trained on real CIFAR-10 (benchmarks/cifar_teacher.py), the real splits exported once,
synthesis with its cost counters, the half-width student by KD with per-class accuracy, DearKD micro at 32 px, the
report with the judge, and a grid of synthetic images per class. Each is a module-level function a `Jobs` pool can
run in another process and returns a JSON-able dict with its wall time in `seconds` (cached by `phases.cached`)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from benchmarks.cifar_teacher import NETS, cifar_data, train_cifar
from benchmarks.phases import SMALL_SET_DISTILL, distill_phase, since, synthesize_phase

ROOT = Path(__file__).resolve().parents[1]
DISTILL_PRESET = ROOT / "configs" / "distill_cifar10.yaml"
TEACHER = "vgg8_bn"
STUDENT = "vgg8_bn_half"
JUDGE = "judge_cnn"
# The KD recipe of every row, real or synthetic: the standard CIFAR augmentation (shift of up to 4 px, flip) and
# cutmix with the teacher online (a small synthetic set covers more of the input space; benchmarks/kd_training.py)
KD_RECIPE = "kd-shift4-flip-cutmix"
KD_AUGMENT = {"max_shift": 4, "flip": True, "cutmix": True, "affine": False}


def trained_net(factory: str, source: str | None, epochs: int, cache: Path, limit: int | None) -> dict[str, Any]:
    """A cifar_nets.py network trained on real CIFAR-10 (cached by its recipe, resumed if interrupted): its weights
    file, test accuracy, per-class test accuracy and normalization."""
    from benchmarks.real_training import teacher_record

    start = time.perf_counter()
    data = cifar_data(source, limit)
    weights, acc = train_cifar(f"{NETS}:{factory}", data, epochs, 0, cache)
    record = teacher_record(weights)
    model = load_net(factory, str(weights))
    per_class = per_class_accuracy(model, data.test_images, data.test_labels, record["mean"], record["std"])
    return {"weights": str(weights), "test_acc": acc, "per_class": per_class, "epochs": epochs,
            "mean": record["mean"], "std": record["std"], "train_seconds": record["train_seconds"],
            "seconds": since(start)}


def load_net(factory: str, weights: str) -> nn.Module:
    """A network trained by `train_cifar`, built from this checkout's cifar_nets.py (not the recorded path)."""
    from benchmarks.real_training import load_trained

    return load_trained(weights, f"{NETS}:{factory}")


@torch.no_grad()
def per_class_accuracy(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, mean: Any, std: Any,
                       batch_size: int = 1000) -> list[float]:
    """Top-1 of each class (in label order) on uint8 `images`."""
    from benchmarks.real_training import model_input

    model.eval()
    predicted = torch.cat([model(model_input(images[i:i + batch_size], mean, std)).argmax(1)
                           for i in range(0, len(labels), batch_size)])
    return [round((predicted[labels == c] == c).float().mean().item(), 4) if (labels == c).any() else 0.0
            for c in range(int(labels.max()) + 1)]


def export_job(source: str | None, out: Path, fractions: dict[str, float], limit: int | None,
               whole: bool = True) -> dict[str, Any]:
    """The real splits as dfgen datasets: the whole train split and test split under out/full (`whole`), and each
    stratified train fraction (`fractions`: row name -> share) under out/<row name>."""
    from dfgen.realdata import export_real

    start = time.perf_counter()
    result = {}
    if whole:
        export_real("cifar10", out / "full", limit=limit, source=source)
        result = {"real_kd": str(out / "full" / "train"), "test": str(out / "full" / "test")}
    for key, fraction in fractions.items():
        export_real("cifar10", out / key, train_fraction=fraction, limit=limit, source=source)
        result[key] = str(out / key / "train")
    return {**result, "seconds": since(start)}


def synthesis_options(teacher: dict[str, Any], n: int, plain: bool, schedule: str | None,
                      mode: dict[str, Any] | None = None, seed: int = 0) -> dict[str, Any]:
    """The tool's pixel-mode defaults for the teacher given as the user's own model file; `plain`: without the boundary
    losses (DeepInversion alone); `mode`: generator-mode overrides (`mode`, `gen_steps`, `gen_width`)."""
    return {"teacher": f"{NETS}:{TEACHER}", "teacher_weights": teacher["weights"], "image_size": 32,
            "mean": teacher["mean"], "std": teacher["std"], "n": n, "no_diversity": plain or None,
            "schedule": schedule, "seed": seed, **(mode or {"mode": "pixels"})}


def synthesize_job(out: Path, options: dict[str, Any]) -> dict[str, Any]:
    """`dfgen synthesize` (phases.synthesize_phase) and the cost counters it records (teacher passes per image)."""
    from dfgen.dataset import read_description

    result = synthesize_phase(out, options)
    cost = read_description(out).get("cost") or {}
    return {**result, "mode": options.get("mode", "pixels"), "cost": cost}


def kd_job(teacher: dict[str, Any], train: str, test: str, steps: int, seed: int, save_to: Path) -> dict[str, Any]:
    """The half-width student by plain KD with the teacher online, `steps` optimizer steps under KD_AUGMENT;
    top-1 and per-class top-1 on `test`."""
    from benchmarks.kd_training import kd_train, read_source

    start = time.perf_counter()
    save_to.parent.mkdir(parents=True, exist_ok=True)
    acc = kd_train(f"{NETS}:{STUDENT}", load_net(TEACHER, teacher["weights"]), train, test, 1, seed=seed,
                   steps=steps, mean=tuple(teacher["mean"]), std=tuple(teacher["std"]), save_to=save_to,
                   **KD_AUGMENT)
    from benchmarks.cifar_nets import vgg8_bn_half

    student = vgg8_bn_half()
    student.load_state_dict(torch.load(save_to, map_location="cpu", weights_only=True))
    images, labels = read_source(test)
    return {"acc": round(acc, 4), "steps": steps, "seed": seed, "recipe": KD_RECIPE,
            "per_class": per_class_accuracy(student, images, labels, teacher["mean"], teacher["std"]),
            "seconds": since(start)}


def distill_job(out: Path, train: str, test: str, teacher_from: str, epochs: int,
                steps_like: int | None = None) -> dict[str, Any]:
    """DearKD micro through `distill run` at 32 px (configs/distill_cifar10.yaml) with the small-set recipe of the
    28x28 benchmark for `epochs` (soft distillation at tau 4, no RandAugment or cutmix); the teacher the synthetic
    set `teacher_from` records, for the real rows too."""
    overrides = {**SMALL_SET_DISTILL, "epochs": epochs, "stage1_epochs": max(1, round(epochs * 5 / 6)),
                 "eval_every": epochs}
    return distill_phase(out, DISTILL_PRESET, overrides, train, test, teacher_from, steps_like)


def report_job(out: Path, sets: dict[str, str], judge: dict[str, Any]) -> dict[str, Any]:
    """`dfgen report` on the synthetic sets (name -> path) with the judge: teacher agreement, teacher-feature
    diversity, and the judge's top-1 and feature diversity."""
    from dfgen.report import make_report
    from dfgen.teachers import load_teacher

    start = time.perf_counter()
    model = load_teacher(f"{NETS}:{JUDGE}", judge["weights"], image_size=32, mean=judge["mean"], std=judge["std"],
                         require_batchnorm=False)
    report = make_report([Path(p) for p in sets.values()], out, lpips_net=None, quiet=True, judge=model)
    figures = {}
    for name, entry in zip(sets, report["datasets"], strict=True):
        figures[name] = {"agreement": round(entry["teacher_agreement"]["top1"], 4),
                         "teacher_feature_diversity": round(entry["feature_diversity"]["mean"], 4),
                         "judge_top1": round(entry["judge"]["top1"], 4),
                         "judge_feature_diversity": round(entry["judge"]["feature_diversity"], 4)}
    return {**figures, "seconds": since(start)}


def class_grid(dataset: str | Path, out: Path, per_class: int = 8, scale: int = 2) -> dict[str, Any]:
    """A PNG of a synthetic set's first `per_class` images of each class, one row per class (CIFAR-10's label
    order, named in the result top to bottom), each image enlarged `scale` times (nearest neighbour), 2 px gaps."""
    from PIL import Image

    from benchmarks.kd_training import read_source
    from dfgen.cifar10 import CLASSES

    images, labels = read_source(str(dataset))
    classes = int(labels.max()) + 1
    size, gap = images.shape[-1] * scale, 2
    grid = Image.new("RGB", (per_class * (size + gap) + gap, classes * (size + gap) + gap), (255, 255, 255))
    for row in range(classes):
        for column, index in enumerate(torch.nonzero(labels == row).flatten()[:per_class].tolist()):
            tile = Image.fromarray(images[index].permute(1, 2, 0).numpy()).resize((size, size), Image.NEAREST)
            grid.paste(tile, (gap + column * (size + gap), gap + row * (size + gap)))
    out.parent.mkdir(parents=True, exist_ok=True)
    grid.save(out)
    return {"path": str(out), "rows": CLASSES[:classes], "per_class": per_class}
