"""The phases the data-free benchmarks (published.py, transfer.py) share: a teacher trained on real data,
`dfgen synthesize`, a student by plain KD with the teacher online, DearKD through `distill run`. Each is a
module-level function a `Jobs` pool can run in another process; each returns a JSON-able dict with its wall time
in `seconds`, which `cached` keeps under the run's results folder so an interrupted run continues."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from torch import nn

NETS = Path(__file__).resolve().with_name("small_nets.py")  # given to dfgen as the user's own model file
STOCK_NETS = NETS.with_name("stock_nets.py")  # ImageNet architectures as users fine-tune them on small images

# Soft distillation at tau 4 without RandAugment or cutmix: on MNIST's 1,000 boundary images DearKD micro learned
# 90.05% with the teacher online under it against 82.17% under hard distillation with RandAugment and cutmix, and the
# stored soft labels want it (those augmentations change an image, not its stored target; docs/design.md).
SOFT_TARGETS = {"distillation": "soft", "distill_tau": 4.0, "aa": "", "cutmix": 0.0}
SOFT_KEY = "soft4-noaa-nocutmix"  # in the result files' names: rows of the earlier recipe are not reused
# DearKD micro on ~1,000 28x28 images (configs/distill_mnist.yaml is sized for 24,000): the digits preset's
# small-batch schedule with the soft targets above
SMALL_SET_DISTILL = {"epochs": 40, "stage1_epochs": 33, "batch_size": 16, "lr": 7e-4, "ema_decay": 0.998,
                     "warmup_epochs": 2, "eval_every": 40, **SOFT_TARGETS}


def cached(path: Path, compute: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """The JSON result at `path`, computing and saving it first if absent (phases survive interruptions)."""
    if path.is_file():
        return json.loads(path.read_text())
    result = compute(*args, **kwargs)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result))
    return result


def since(start: float) -> int:
    return round(time.perf_counter() - start)


def dataset_size(path: str | Path) -> int:
    """The number of images a dfgen dataset directory holds."""
    from dfgen.dataset import open_dataset

    return open_dataset(path).n


def teacher_phase(factory: str, data: Any, epochs: int, cache: Path, nets: Path = NETS) -> dict[str, Any]:
    """A network of the model file `nets` (small_nets.py) trained on real data (a set name or a RealData; cached by
    its recipe, real_training.py): its weights file, test accuracy and normalization."""
    from benchmarks.real_training import teacher_record, train_teacher

    start = time.perf_counter()
    weights, acc = train_teacher(f"{nets}:{factory}", data, epochs, seed=0, cache_dir=cache)
    record = teacher_record(weights)
    return {"weights": str(weights), "test_acc": acc, "mean": record["mean"], "std": record["std"],
            "seconds": since(start)}


def synthesize_phase(out: Path, options: dict[str, Any]) -> dict[str, Any]:
    """`dfgen synthesize` into `out` with `options` (dfgen.build_config keywords), quietly; the set's schedule,
    teacher agreement and the settings the start-up probe derived."""
    import dfgen
    from dfgen.dataset import read_description

    start = time.perf_counter()
    dfgen.synthesize(dfgen.build_config(None, out=str(out), quiet=True, **options))
    description = read_description(out)
    return {"path": str(out), "schedule": description["schedule"], "agreement": description["stats"]["agreement"],
            "derived": description.get("derived"), "cost": description.get("cost", {}).get("per_image"),
            "seconds": since(start)}


def kd_phase(student: str, load: Callable[[dict[str, Any]], nn.Module], teacher: dict[str, Any],
             train: str | list[str], test: str, steps: int, recipe: str, save_to: str | None = None,
             **augment: bool) -> dict[str, Any]:
    """The small_nets.py `student` by plain KD from the teacher `load(teacher)` builds, online, for `steps`
    optimizer steps (kd_training.py; `augment`: its cutmix / affine switches, `recipe` names them in the result);
    `train` may list several sets; `save_to` keeps the student's weights."""
    from benchmarks.kd_training import kd_train

    start = time.perf_counter()
    acc = kd_train(f"{NETS}:{student}", load(teacher), train, test, 1, steps=steps, mean=tuple(teacher["mean"]),
                   std=tuple(teacher["std"]), save_to=save_to, **augment)
    return {"acc": round(acc, 4), "steps": steps, "recipe": recipe, "weights": save_to, "seconds": since(start)}


def same_steps(config: Any, images: int, steps_like: int) -> None:
    """A real row with as many steps as a run on `steps_like` images: a larger set trains on a seeded share of
    its images (`--fraction`) for the same epochs, a smaller one for more epochs (the same stage split)."""
    if images > steps_like:
        config.fraction = [round(steps_like / images, 6)]
        return
    ratio = config.stage1_epochs / config.epochs
    config.epochs = max(1, round(config.epochs * steps_like / images))
    config.stage1_epochs = round(config.epochs * ratio)
    config.eval_every = config.epochs


def distill_phase(out: Path, preset: Path, overrides: dict[str, Any], train: str, test: str, teacher_from: str,
                  steps_like: int | None = None) -> dict[str, Any]:
    """DearKD through `distill run` under `preset` and `overrides` (the teacher the synthetic set `teacher_from`
    records, for real data too), resumed if interrupted; its top-1 on `test` (EMA weights where the preset keeps
    them). `steps_like`: as many steps as on that many images (`same_steps`)."""
    import distill

    start = time.perf_counter()
    config = distill.build_config(preset, shards=[train], val=test, out=str(out), teacher=teacher_from, quiet=True,
                                  resume=True, **overrides)
    if steps_like:
        same_steps(config, dataset_size(train), steps_like)
    distill.train(config)
    result = distill.evaluate_checkpoint(out / "last.pt", test, device="cpu", ema=config.ema)
    return {"acc": round(result["top1"] / 100, 4), "epochs": config.epochs, "seconds": since(start)}
