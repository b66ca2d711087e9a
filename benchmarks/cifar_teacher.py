"""CIFAR-10 networks trained on the real train split for the CIFAR-10 benchmark: the teacher and the report's judge,
cached by a hash of their recipe, resumable after an interruption (a checkpoint after every epoch).

Recipe (`train_cifar`): SGD (Nesterov momentum 0.9, weight decay 5e-4) at batch 128 under torch's one-cycle
schedule (15% warm-up to `lr`, cosine to ~0), cross-entropy, the standard CIFAR augmentation (random crop of the
image padded by 4 black pixels, i.e. a random shift of up to 4 px, and a random horizontal flip), inputs normalized
by the train split's own per-channel mean/std, channels-last. Everything random comes from `seed`. The result is a
state dict beside a JSON record (the format of benchmarks/real_training.py, so `load_trained` and `teacher_record`
read it) under CACHE/<factory>-<data>-<hash>.pt; a rerun loads it; `<that>.partial.pt` holds the last finished
epoch while it trains.

    python -m benchmarks.cifar_teacher --epochs 7 --cache bench_out/cifar10/teachers [--source ARCHIVE]
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from benchmarks.kd_training import random_flip
from benchmarks.real_training import (
    EVAL_BATCH,
    Factory,
    RealData,
    batches,
    build_model,
    model_input,
    one_cycle,
    random_shift,
    recipe_cache_path,
    resolve_factory,
    save_atomic,
    sgd_recipe,
)
from dfgen.shards import write_json_atomic
from dfgen.zoo.digits import evaluate

NETS = Path(__file__).resolve().with_name("cifar_nets.py")
RECIPE_VERSION = 1
CROP_PAD = 4  # the standard CIFAR crop: pad 4, crop 32 = a shift of up to 4 px with black fill


def cifar_data(source: str | Path | None = None, limit: int | None = None) -> RealData:
    """Both splits of real CIFAR-10 (dfgen.cifar10: the JPEG archive, torchvision's batches folder or
    $DFGEN_CIFAR10); `limit`: the first that many images of each split (classes interleave in the archive's order)."""
    from dfgen import cifar10

    splits = cifar10.read_cifar10(source)
    tensors = [torch.from_numpy(array[:limit] if limit else array)
               for split in ("train", "test") for array in (splits[split].images, splits[split].labels)]
    return RealData("cifar10" + (f"-first{limit}" if limit else ""), *tensors)


def channel_mean_std(images: torch.Tensor) -> tuple[list[float], list[float]]:
    """Per-channel normalization from uint8 (N, C, H, W) training images, rounded to 4 places (CIFAR-10:
    0.4914/0.4822/0.4465 and 0.247/0.2435/0.2616 on the original arrays)."""
    pixels = images.float() / 255
    mean = pixels.mean(dim=(0, 2, 3))
    std = pixels.permute(1, 0, 2, 3).reshape(len(mean), -1).std(dim=1)
    return [round(v, 4) for v in mean.tolist()], [round(v, 4) for v in std.tolist()]


def train_cifar(
    factory_spec: str | Factory,
    data: RealData,
    epochs: int,
    seed: int,
    cache_dir: str | Path,
    *,
    kwargs: dict[str, Any] | None = None,
    lr: float = 0.1,
    batch_size: int = 128,
    weight_decay: float = 5e-4,
    log: Callable[[str], None] | None = None,
    weights_only_path: bool = False,
) -> tuple[Path, float]:
    """Train (or load from the cache, or resume) a classifier on `data`'s train split; returns (weights file,
    top-1 on its test split as a fraction). The recipe is in the module docstring. `weights_only_path`: only the
    weights file this recipe is cached under (and NaN), nothing trained."""
    factory, name = resolve_factory(factory_spec)
    model = build_model(factory, kwargs, seed)
    mean, std = channel_mean_std(data.train_images)
    recipe = sgd_recipe(RECIPE_VERSION, name, factory, kwargs, model, data, epochs=epochs, seed=seed, lr=lr,
                        batch_size=batch_size, weight_decay=weight_decay, augment=f"crop-pad{CROP_PAD}-flip")
    weights = recipe_cache_path(recipe, data.name, cache_dir)
    if weights_only_path:
        return weights, float("nan")
    record_path = weights.with_suffix(".json")
    if weights.is_file() and record_path.is_file():
        return weights, float(json.loads(record_path.read_text())["test_acc"])

    weights.parent.mkdir(parents=True, exist_ok=True)
    partial = weights.with_suffix(".partial.pt")
    generator = torch.Generator().manual_seed(seed)
    model = model.to(memory_format=torch.channels_last).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, nesterov=True, weight_decay=weight_decay)
    steps_per_epoch = max(1, len(data.train_labels) // batch_size)  # as batches() makes them
    schedule = one_cycle(optimizer, lr, epochs * steps_per_epoch)
    first, seconds = 0, 0.0
    if partial.is_file():  # an interrupted run: continue after its last finished epoch, bit for bit
        state = torch.load(partial, map_location="cpu", weights_only=True)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        schedule.load_state_dict(state["schedule"])
        generator.set_state(state["generator"])
        first, seconds = int(state["epoch"]), float(state["seconds"])
        if log is not None:
            log(f"{name} {data.name}: resuming after epoch {first}/{epochs}")
    for epoch in range(first, epochs):
        start, total = time.perf_counter(), 0.0
        for index in batches(len(data.train_labels), batch_size, generator):
            pixels = random_shift(data.train_images[index].float() / 255, CROP_PAD, generator)
            pixels = random_flip(pixels, generator)
            loss = F.cross_entropy(model(model_input(pixels, mean, std)), data.train_labels[index])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            total = total + loss.detach()  # summed on its device: one host read an epoch, in the log line
        seconds += time.perf_counter() - start
        save_atomic({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                      "schedule": schedule.state_dict(), "generator": generator.get_state(), "epoch": epoch + 1,
                      "seconds": seconds}, partial)
        if log is not None:
            probe = evaluate(model, data.test_images[:2000], data.test_labels[:2000], EVAL_BATCH, mean=mean, std=std)
            model.train()
            log(f"{name} {data.name} epoch {epoch + 1}/{epochs}: loss {float(total) / steps_per_epoch:.4f}, "
                f"test top-1 on 2,000 {probe:.4f}, {time.perf_counter() - start:.0f} s")
    test_acc = evaluate(model, data.test_images, data.test_labels, EVAL_BATCH, mean=mean, std=std)
    spec = factory_spec if isinstance(factory_spec, str) else name
    record = {"recipe": recipe, "factory_spec": spec, "test_acc": test_acc, "train_seconds": round(seconds, 1),
              "seconds_per_epoch": round(seconds / max(epochs, 1), 1), "threads": torch.get_num_threads(),
              "mean": mean, "std": std, "image_size": list(data.train_images.shape[1:]),
              "num_classes": int(data.train_labels.max()) + 1,
              "parameters": sum(p.numel() for p in model.parameters())}
    save_atomic({k: v.contiguous() for k, v in model.state_dict().items()}, weights)
    write_json_atomic(record_path, record)
    partial.unlink(missing_ok=True)
    return weights, test_acc


def images_per_second(factory_spec: str | Factory, batches_timed: int = 4, batch_size: int = 128) -> float:
    """Training speed of a network on random 32x32 RGB batches (forward, backward, step), for sizing epochs."""
    factory, _ = resolve_factory(factory_spec)
    model = factory().to(memory_format=torch.channels_last).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x = torch.randn(batch_size, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (batch_size,))
    for timed in (False, True):  # one untimed warm-up batch
        start = time.perf_counter()
        for _ in range(batches_timed if timed else 1):
            loss = F.cross_entropy(model(x), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return batches_timed * batch_size / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Train a CIFAR-10 network on the real train split; one JSON line.")
    parser.add_argument("--net", default="vgg8_bn", help="a factory of benchmarks/cifar_nets.py [vgg8_bn]")
    parser.add_argument("--epochs", type=int, default=7)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--source", default=None, help="the CIFAR-10 archive or batches folder [$DFGEN_CIFAR10]")
    parser.add_argument("--cache", type=Path, default=Path("bench_out/cifar10/teachers"))
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--speed", action="store_true", help="only measure training images per second")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.speed:
        print(json.dumps({"net": args.net, "train_images_per_second": round(images_per_second(f"{NETS}:{args.net}"),
                                                                           1)}))
        return
    data = cifar_data(args.source)
    weights, acc = train_cifar(f"{NETS}:{args.net}", data, args.epochs, args.seed, args.cache,
                               log=lambda line: print(line, flush=True))
    print(json.dumps({"net": args.net, "epochs": args.epochs, "test_acc": round(acc, 4), "weights": str(weights)}))


if __name__ == "__main__":
    main()
