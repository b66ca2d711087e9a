"""Teachers trained on real MNIST / Fashion-MNIST for the published and transfer benchmarks, cached by a hash of
their recipe, and the functions the KD students share (factories, shifts, batches, the schedule; the normalization
and the evaluation are dfgen.zoo.digits').

Teacher recipe (`train_teacher`): SGD (Nesterov momentum 0.9, weight decay 5e-4) at batch 256 under torch's
one-cycle schedule (15% warm-up to `lr`, cosine to ~0, momentum cycled), cross-entropy, random shifts of up to
2 px with black fill (no flips: digits and garments have a handedness), inputs normalized by the train split's
own mean/std (MNIST 0.1307/0.3081, Fashion-MNIST 0.2860/0.3530), channels-last. Everything random comes from
`seed` (initial weights through a forked RNG, order and shifts through a private generator): the same call on the
same thread count gives the same weights. The result is a state dict beside a JSON record (recipe, accuracy on
the real test split, seconds, mean/std) under CACHE/<factory>-<dataset>-<hash>.pt; a rerun loads it.

    python -m benchmarks.real_training --dataset mnist --teachers lenet5_bn,resnet18_small --cache C
"""

from __future__ import annotations

import argparse
import hashlib
import inspect
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from dfgen.atomic import write_atomic
from dfgen.shards import write_json_atomic
from dfgen.zoo.digits import evaluate, normalize, unit_pixels

RECIPE_VERSION = 1
# Epochs that reach the accuracies in the README on 2 CPU cores (LeNet-5 is cheap; the others cost 4-10x an epoch).
DEFAULT_EPOCHS = {"lenet5_bn": 8, "resnet18_small": 5, "vgg_bn_small": 5, "mobilenet_small": 5}
Factory = Callable[..., nn.Module]
EVAL_BATCH = 1000  # images per forward pass when testing


@dataclass(frozen=True)
class RealData:
    """A named set's uint8 (N, C, H, W) images and int64 labels, both splits."""

    name: str
    train_images: torch.Tensor
    train_labels: torch.Tensor
    test_images: torch.Tensor
    test_labels: torch.Tensor

    def fingerprint(self) -> str:
        """The name and a hash of the contents, for the cache key (a tenth of a second on the full sets)."""
        digest = hashlib.sha256()
        for tensor in (self.train_images, self.train_labels, self.test_images, self.test_labels):
            digest.update(tensor.contiguous().numpy().tobytes())
        return f"{self.name}-{digest.hexdigest()[:12]}"


def real_data(name: str) -> RealData:
    """Both splits of real "mnist" or "fashion-mnist" (dfgen.real_sources)."""
    from dfgen.real_sources import canonical_name, read_real_splits

    splits = read_real_splits(name)
    return RealData(canonical_name(name), *splits["train"], *splits["test"])


def resolve_factory(spec: str | Factory) -> tuple[Factory, str]:
    """(factory, name): a callable, a name in benchmarks/small_nets.py, or dfgen's module:factory /
    path/to/file.py:factory."""
    if callable(spec):
        return spec, spec.__qualname__
    if ":" in spec:
        from dfgen.teachers import import_factory

        path, _, name = spec.rpartition(":")
        if Path(path).name == "small_nets.py" and not Path(path).exists():
            # a cached teacher recorded the small_nets.py of the checkout that trained it, since moved or deleted
            return resolve_factory(name)
        factory = import_factory(spec)
        return factory, spec.rpartition(":")[2]
    from benchmarks import small_nets

    if not callable(getattr(small_nets, spec, None)):
        known = ", ".join(small_nets.TEACHERS + small_nets.STUDENTS)
        raise ValueError(f"unknown network {spec!r}; benchmarks/small_nets.py has {known}")
    return getattr(small_nets, spec), spec


def build_model(factory: Factory, kwargs: dict[str, Any] | None, seed: int) -> nn.Module:
    """The factory's model with initial weights drawn from `seed`, leaving the global RNG as it was."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return factory(**(kwargs or {}))


def mean_std(images: torch.Tensor) -> tuple[float, float]:
    """One-channel normalization from uint8 training images (rounded to 4 places: 0.1307/0.3081 on MNIST)."""
    pixels = images.float() / 255
    return round(pixels.mean().item(), 4), round(pixels.std().item(), 4)


def model_input(pixels: torch.Tensor, mean: Any, std: Any) -> torch.Tensor:
    """uint8 or [0, 1] float (N, C, H, W) -> the network's normalized input (dfgen's digits normalization),
    channels-last like the networks trained here."""
    return normalize(unit_pixels(pixels), mean, std).contiguous(memory_format=torch.channels_last)


def random_shift(pixels: torch.Tensor, max_shift: int, generator: torch.Generator) -> torch.Tensor:
    """Shift each image of a (N, C, H, W) batch by its own integer offset in [-max_shift, max_shift] on both axes,
    filling with 0 (black, the background of the 28x28 sets): translation without interpolation blur."""
    if max_shift == 0:
        return pixels
    n, _, h, w = pixels.shape
    padded = F.pad(pixels, (max_shift,) * 4)
    dy = torch.randint(0, 2 * max_shift + 1, (n,), generator=generator)
    dx = torch.randint(0, 2 * max_shift + 1, (n,), generator=generator)
    rows = (dy[:, None] + torch.arange(h))[:, :, None]  # (N, H, 1)
    cols = (dx[:, None] + torch.arange(w))[:, None, :]  # (N, 1, W)
    return padded.permute(0, 2, 3, 1)[torch.arange(n)[:, None, None], rows, cols].permute(0, 3, 1, 2)


def batches(n: int, batch_size: int, generator: torch.Generator) -> list[torch.Tensor]:
    """One epoch's shuffled index batches; an incomplete last batch is dropped (a BatchNorm batch of one image
    has no variance) unless it is the only one."""
    order = torch.randperm(n, generator=generator)
    full = max(1, n // batch_size)
    return [order[i * batch_size:(i + 1) * batch_size] for i in range(full)]


def one_cycle(optimizer: torch.optim.Optimizer, lr: float, steps: int) -> torch.optim.lr_scheduler.OneCycleLR:
    return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=steps, pct_start=0.15,
                                               anneal_strategy="cos", div_factor=10, final_div_factor=100)


def full_kwargs(factory: Factory, kwargs: dict[str, Any] | None) -> dict[str, Any]:
    """The factory's arguments with its defaults filled in, so {} and {"width": 8} name the same recipe."""
    try:
        bound = inspect.signature(factory).bind(**(kwargs or {}))
    except (TypeError, ValueError):  # no signature to read, or arguments it does not take (the build will say)
        return dict(kwargs or {})
    bound.apply_defaults()
    arguments = {}
    for key, value in bound.arguments.items():
        kind = bound.signature.parameters[key].kind
        if kind is inspect.Parameter.VAR_KEYWORD:
            arguments.update(value)
        elif kind is not inspect.Parameter.VAR_POSITIONAL:
            arguments[key] = value
    return arguments


def architecture_fingerprint(model: nn.Module) -> str:
    """The names and shapes of the model's parameters and buffers: a changed architecture misses the cache."""
    shapes = [(name, list(t.shape)) for name, t in model.state_dict().items()]
    return hashlib.sha256(json.dumps(shapes).encode()).hexdigest()[:12]


def recipe_cache_path(recipe: dict[str, Any], data_name: str, cache_dir: str | Path) -> Path:
    """CACHE/<factory>-<data>-<hash of the recipe>.pt: a changed recipe never reuses old weights."""
    key = hashlib.sha256(json.dumps(recipe, sort_keys=True, default=repr).encode()).hexdigest()[:16]
    return Path(cache_dir) / f"{recipe['factory']}-{data_name}-{key}.pt"


def sgd_recipe(version: int, name: str, factory: Factory, kwargs: dict[str, Any] | None, model: nn.Module,
               data: RealData, **settings: Any) -> dict[str, Any]:
    """What decides a trained network's weights under the benchmarks' SGD recipes (the cache key of
    `recipe_cache_path`): the recipe's version, the network, the data, and `settings` (epochs, seed, lr, ...)."""
    return {"recipe_version": version, "factory": name, "kwargs": full_kwargs(factory, kwargs),
            "architecture": architecture_fingerprint(model), "dataset": data.fingerprint(),
            "optimizer": "sgd-nesterov-0.9 one-cycle", **settings}


def save_atomic(state: dict[str, Any], path: Path) -> None:
    """torch.save to `path` whole or not at all (a killed run leaves no half-written weights)."""
    write_atomic(path, lambda f: torch.save(state, f))


def train_teacher(
    factory_spec: str | Factory,
    dataset: str | RealData,
    epochs: int,
    seed: int,
    cache_dir: str | Path,
    *,
    kwargs: dict[str, Any] | None = None,
    lr: float = 0.1,
    batch_size: int = 256,
    weight_decay: float = 5e-4,
    max_shift: int = 2,
    log: Callable[[str], None] | None = None,
) -> tuple[Path, float]:
    """Train (or load from the cache) a classifier on the real train split; returns (weights file, top-1 on the
    real test split as a fraction). The recipe is in the module docstring; the JSON record beside the weights
    (`teacher_record`) holds mean/std, seconds and the recipe."""
    factory, name = resolve_factory(factory_spec)
    data = real_data(dataset) if isinstance(dataset, str) else dataset
    model = build_model(factory, kwargs, seed)
    mean, std = mean_std(data.train_images)
    recipe = sgd_recipe(RECIPE_VERSION, name, factory, kwargs, model, data, epochs=epochs, seed=seed, lr=lr,
                        batch_size=batch_size, weight_decay=weight_decay, max_shift=max_shift)
    weights = recipe_cache_path(recipe, data.name, cache_dir)
    record_path = weights.with_suffix(".json")
    if weights.is_file() and record_path.is_file():
        return weights, float(json.loads(record_path.read_text())["test_acc"])

    start = time.perf_counter()
    generator = torch.Generator().manual_seed(seed)
    model = model.to(memory_format=torch.channels_last).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, nesterov=True, weight_decay=weight_decay)
    steps_per_epoch = max(1, len(data.train_labels) // batch_size)  # as batches() makes them
    schedule = one_cycle(optimizer, lr, epochs * steps_per_epoch)
    for epoch in range(epochs):
        epoch_start, total = time.perf_counter(), 0.0
        for index in batches(len(data.train_labels), batch_size, generator):
            pixels = random_shift(data.train_images[index].float() / 255, max_shift, generator)
            loss = F.cross_entropy(model(model_input(pixels, mean, std)), data.train_labels[index])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            total += loss.item()
        if log is not None:
            log(f"{name} {data.name} epoch {epoch + 1}/{epochs}: loss {total / steps_per_epoch:.4f}, "
                f"{time.perf_counter() - epoch_start:.0f} s")
    seconds = time.perf_counter() - start
    test_acc = evaluate(model, data.test_images, data.test_labels, EVAL_BATCH, mean=mean, std=std)
    spec = factory_spec if isinstance(factory_spec, str) else name
    record = {"recipe": recipe, "factory_spec": spec, "test_acc": test_acc, "train_seconds": round(seconds, 1),
              "seconds_per_epoch": round(seconds / max(epochs, 1), 1), "threads": torch.get_num_threads(),
              "mean": [mean], "std": [std], "image_size": list(data.train_images.shape[1:]),
              "num_classes": int(data.train_labels.max()) + 1,
              "parameters": sum(p.numel() for p in model.parameters())}
    weights.parent.mkdir(parents=True, exist_ok=True)
    save_atomic({k: v.contiguous() for k, v in model.state_dict().items()}, weights)
    write_json_atomic(record_path, record)
    return weights, test_acc


def teacher_record(weights: str | Path) -> dict[str, Any]:
    """The JSON record written beside a trained teacher's weights."""
    return json.loads(Path(weights).with_suffix(".json").read_text())


def load_trained(weights: str | Path, factory_spec: str | Factory | None = None) -> nn.Module:
    """A teacher from `train_teacher`, in eval mode (weights read with weights_only=True); `factory_spec` overrides
    the recorded one (a file factory moved elsewhere)."""
    record = teacher_record(weights)
    recipe = record["recipe"]
    factory, _ = resolve_factory(factory_spec or record.get("factory_spec") or recipe["factory"])
    model = factory(**recipe["kwargs"])
    model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    return model.eval()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Train the benchmark teachers on real data; one JSON line each.")
    parser.add_argument("--dataset", required=True, choices=["mnist", "fashion-mnist"])
    parser.add_argument("--teachers", default="lenet5_bn,resnet18_small,vgg_bn_small,mobilenet_small")
    parser.add_argument("--epochs", type=int, default=None, help=f"epochs of every teacher [{DEFAULT_EPOCHS}]")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cache", type=Path, default=Path("bench_out/teachers"))
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    data = real_data(args.dataset)
    for name in args.teachers.split(","):
        epochs = args.epochs or DEFAULT_EPOCHS.get(name, 5)
        weights, acc = train_teacher(name, data, epochs, args.seed, args.cache, log=print)
        record = teacher_record(weights)
        print(json.dumps({"teacher": name, "dataset": data.name, "epochs": epochs, "test_acc": round(acc, 4),
                          "train_seconds": record["train_seconds"], "seconds_per_epoch": record["seconds_per_epoch"],
                          "threads": record["threads"], "parameters": record["parameters"], "weights": str(weights),
                          "mean": record["mean"], "std": record["std"]}), flush=True)


if __name__ == "__main__":
    main()
