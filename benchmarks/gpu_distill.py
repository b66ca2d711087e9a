"""Training throughput of `distill run` on one GPU: DearKD-Ti against timm's
deit_tiny_distilled_patch16_224 at the same batch and precision, through distill's own training step
(`distill.engine.train_one_epoch`, the paper preset's recipe: AdamW, mixup/cutmix, label smoothing, EMA):

- stage 1 with the RegNetY-16GF teacher online (random weights: the cost does not depend on them; DearKD also runs
  its hidden loss through the aligner, DeiT has none),
- stage 1 with stored soft labels (`--soft-labels stored`: no teacher, targets from the batch),
- stage 2 (no teacher; the target: DearKD-Ti within 15% of DeiT-Ti).

The batch is made once and kept in pinned host memory, copied to the GPU every step as the loader's batches are,
so these figures are the model's side of a step; `--end-to-end-steps N` also runs `distill.train` itself on
WebDataset shards of JPEGs (decoding, RandAugment, the loader's workers) for stage 1 and stage 2 and reports the
images/s its metrics.jsonl logs, which shows whether the loader keeps up.

    python -m benchmarks.gpu_distill [--batch 256] [--precision bf16] [--end-to-end-steps 30] [--json OUT.json]
    python -m benchmarks.gpu_distill --cpu-smoke    # the same code on the CPU at toy size (the tests run it)
"""

from __future__ import annotations

import argparse
import io
import os
import sys
import tarfile
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import timm
import torch

from benchmarks.gpu_common import (
    device_facts,
    emit,
    interruptible,
    peak_gib,
    reset_peak,
    sync,
    target_device,
)
from distill.config import TrainConfig, build_config
from distill.engine import EpochContext, StudentForward, train_one_epoch
from distill.losses import PairedMixup, label_criterion
from distill.models import DearKD
from distill.optim import Trainable, make_aligners
from distill.student import create_student, student_names
from distill.teacher_features import TeacherFeatures, resolve_pairs, teacher_stages

PRESET = Path(__file__).resolve().parents[1] / "configs" / "distill_paper_300.yaml"
STUDENT, BASELINE, TEACHER = "dearkd_tiny_patch16_224", "deit_tiny_distilled_patch16_224", "regnety_160"
CASES = ("stage1_online", "stage1_stored", "stage2")
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": None}
# --cpu-smoke: the micro DearKD against timm's distilled DeiT built at the micro's size (so the two differ by MHCA
# alone, as DearKD-Ti and DeiT-Ti do), the bundled digits teacher online, a few steps.
SMOKE_MICRO = {"patch_size": 4, "embed_dim": 96, "depth": 6, "num_heads": 12}
SMOKE = {"student": "dearkd_micro_patch4_32", "baseline_kwargs": SMOKE_MICRO, "teacher": "digits",
         "num_classes": 10, "in_chans": 1, "img_size": 32, "batch": 4, "warmup": 1, "steps": 1, "precision": "fp32",
         "end_to_end": {"model": "dearkd_micro_patch4_32", "in_chans": 1, "img_size": 32, "shuffle_buffer": 4,
                        "workers": 0, "precision": "fp32", "ema": False}}


def build_model(name: str, num_classes: int, in_chans: int, img_size: int, drop_path: float,
                extra: dict[str, Any] | None = None) -> torch.nn.Module:
    """A DearKD student as `distill run` builds it, or any other timm distilled ViT (the baseline) the same way;
    `extra`: more keyword arguments for timm (the smoke run's micro baseline)."""
    if name in student_names():
        model = create_student(name, num_classes, in_chans, img_size, drop_path, extra)
    else:
        model = timm.create_model(name, pretrained=False, num_classes=num_classes, in_chans=in_chans,
                                  img_size=img_size, drop_path_rate=drop_path, **(extra or {}))
    model.set_distilled_training(True)
    return model


def make_context(cfg: TrainConfig, model: torch.nn.Module, case: str, teacher, device: torch.device,
                 precision: str, steps: int) -> EpochContext:
    """The EpochContext `distill.train` makes for `case` (teacher: a dfgen Teacher, used by stage1_online)."""
    from timm.data import resolve_data_config
    from timm.optim import create_optimizer_v2
    from timm.scheduler import create_scheduler_v2
    from timm.utils import ModelEmaV3

    stage = 2 if case == "stage2" else 1
    features, pairs = None, []
    if case == "stage1_online":
        data_config = resolve_data_config({}, model=model)
        size = (teacher.in_chans, *data_config["input_size"][1:])
        if isinstance(model, DearKD) and cfg.hidden_weight > 0:  # the hidden loss needs DearKD's block tokens
            pairs = resolve_pairs(cfg.align, model, teacher_stages(teacher.model, size))
        features = TeacherFeatures(teacher.model, teacher.mean, teacher.std, fit(data_config["mean"], size[0]),
                                   fit(data_config["std"], size[0]), [p.stage.name for p in pairs])
    aligners = make_aligners(pairs, model).to(device)
    trainable = Trainable(model, aligners)
    optimizer = create_optimizer_v2(trainable, opt=cfg.opt, lr=cfg.lr, weight_decay=cfg.weight_decay, eps=cfg.opt_eps)
    scheduler, _ = create_scheduler_v2(optimizer, sched="cosine", num_epochs=cfg.epochs, min_lr=cfg.min_lr,
                                       warmup_lr=cfg.warmup_lr, warmup_epochs=cfg.warmup_epochs,
                                       step_on_epochs=False, updates_per_epoch=steps)
    amp_dtype = DTYPES[precision]
    mixup = PairedMixup(mixup_alpha=cfg.mixup, cutmix_alpha=cfg.cutmix, prob=cfg.mixup_prob,
                        switch_prob=cfg.mixup_switch_prob, mode="batch", label_smoothing=cfg.smoothing,
                        num_classes=model.num_classes) if cfg.mixing else None
    return EpochContext(
        student=StudentForward(model), model=model, optimizer=optimizer, scheduler=scheduler,
        criterion=label_criterion(cfg.mixing, cfg.smoothing), device=device, amp_dtype=amp_dtype,
        scaler=torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16), mixup=mixup, stage=stage,
        teacher=features, distillation=cfg.distillation, tau=cfg.distill_tau, aligners=aligners if pairs else None,
        pairs=tuple(pairs), hidden_weight=cfg.hidden_weight, clip_grad=cfg.clip_grad,
        ema=ModelEmaV3(model, decay=cfg.ema_decay) if cfg.ema else None)


def fit(values, channels: int) -> tuple[float, ...]:
    """A model's per-channel normalization for `channels` (a 3-channel default averaged for one channel, as
    DearKD's own config is)."""
    values = tuple(float(v) for v in values)
    return values if len(values) == channels else (sum(values) / len(values),) * channels


def host_batch(batch: int, num_classes: int, in_chans: int, img_size: int, stored: bool, topk: int = 10,
               seed: int = 0) -> dict[str, Any]:
    """A batch as distill's loader delivers it: normalized images, labels, source indices, and for stored soft
    labels dense logits with -inf outside each image's top-k (pinned when a GPU is there)."""
    generator = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, num_classes, (batch,), generator=generator)
    soft = None
    if stored:
        soft = torch.full((batch, num_classes), float("-inf"))
        index = torch.randint(0, num_classes, (batch, topk), generator=generator)
        soft.scatter_(1, index, torch.randn(batch, topk, generator=generator))
        soft.scatter_(1, labels[:, None], 5.0)
    items = {"image": torch.randn(batch, in_chans, img_size, img_size, generator=generator), "label": labels,
             "source": torch.zeros(batch, dtype=torch.long), "soft": soft, "bad": None}
    if torch.cuda.is_available():
        items = {k: v.pin_memory() if isinstance(v, torch.Tensor) and k != "source" else v for k, v in items.items()}
    return items


def repeat_batch(items: dict[str, Any], steps: int) -> Iterator[dict[str, Any]]:
    for _ in range(steps):
        yield dict(items)


def measure_case(cfg: TrainConfig, name: str, case: str, teacher, device: torch.device, batch: int, precision: str,
                 warmup: int, steps: int, num_classes: int, in_chans: int, img_size: int,
                 extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Images/s and peak memory of `steps` training steps of `name` in `case`, after `warmup` untimed steps."""
    torch.manual_seed(0)
    model = build_model(name, num_classes, in_chans, img_size, cfg.drop_path, extra).to(device)
    ctx = make_context(cfg, model, case, teacher, device, precision, warmup + steps)
    items = host_batch(batch, num_classes, in_chans, img_size, stored=case == "stage1_stored")
    train_one_epoch(ctx, repeat_batch(items, warmup), warmup, 0, progress=False)
    sync(device)
    reset_peak(device)
    start = time.perf_counter()
    stats, _ = train_one_epoch(ctx, repeat_batch(items, steps), steps, warmup, progress=False)
    sync(device)
    seconds = time.perf_counter() - start
    if ctx.teacher is not None:
        ctx.teacher.remove_hooks()
    result = {"images_per_s": batch * steps / seconds, "step_seconds": seconds / steps,
              "peak_memory_gib": peak_gib(device), "hidden_loss": bool(ctx.pairs), "loss": stats["loss"],
              "parameters_m": sum(p.numel() for p in model.parameters()) / 1e6}
    del ctx, model
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return result


def measure_steps(teacher, device: torch.device, cfg: TrainConfig, batch: int, precision: str, warmup: int,
                  steps: int, student: str = STUDENT, baseline: str = BASELINE, num_classes: int = 1000,
                  in_chans: int = 3, img_size: int = 224, cases: tuple[str, ...] = CASES,
                  baseline_kwargs: dict[str, Any] | None = None,
                  results: dict[str, Any] | None = None) -> dict[str, Any]:
    """Every case for the student and the baseline, and the student/baseline images/s ratio per case (the
    target: at least 0.85 in stage 2), put into `results` as they are measured."""
    results = {} if results is None else results
    for case in cases:
        row: dict[str, Any] = {}
        results[case] = row  # filled in place: an interrupted run keeps the models it measured
        for name, extra in ((student, None), (baseline, baseline_kwargs)):
            row[name] = measure_case(cfg, name, case, teacher, device, batch, precision, warmup, steps, num_classes,
                                     in_chans, img_size, extra)
            print(f"{case} {name}: {row[name]['images_per_s']:.4g} images/s", file=sys.stderr, flush=True)
        row["ratio"] = row[student]["images_per_s"] / row[baseline]["images_per_s"]
    return results


def write_jpeg_shards(root: Path, samples: int, num_classes: int, size: int = 256, distinct: int = 64,
                      per_shard: int = 1000) -> None:
    """Plain WebDataset shards of `samples` JPEGs (smooth random images, `distinct` of them reused) with `cls`."""
    from PIL import Image

    generator = torch.Generator().manual_seed(0)
    encoded = []
    for _ in range(distinct):
        coarse = torch.rand(1, 3, 8, 8, generator=generator)
        image = torch.nn.functional.interpolate(coarse, size=(size, size), mode="bicubic", align_corners=False)
        image = (image + 0.05 * torch.randn(image.shape, generator=generator)).clamp(0, 1)
        pixels = (image[0].permute(1, 2, 0) * 255).round().to(torch.uint8).numpy()
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, format="JPEG", quality=90)
        encoded.append(buffer.getvalue())
    root.mkdir(parents=True, exist_ok=True)
    for shard, first in enumerate(range(0, samples, per_shard)):
        with tarfile.open(root / f"train-{shard:06d}.tar", "w") as tar:
            for index in range(first, min(samples, first + per_shard)):
                for ext, data in (("jpg", encoded[index % distinct]), ("cls", str(index % num_classes).encode())):
                    info = tarfile.TarInfo(f"{index:08d}.{ext}")
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))


def end_to_end(cfg_overrides: dict[str, Any], teacher_name: str, teacher_model: torch.nn.Module, batch: int,
               steps: int, num_classes: int = 1000, preset: Path = PRESET) -> dict[str, Any]:
    """`distill.train` for one stage-1 epoch (teacher online) and one stage-2 epoch on JPEG shards of
    `steps` batches; the images/s its metrics.jsonl logs per epoch (the first includes the warm-up)."""
    from distill.run_log import read_metrics
    from distill.train import train

    with tempfile.TemporaryDirectory() as tmp:
        shards, weights = Path(tmp) / "shards", Path(tmp) / "teacher.pth"
        write_jpeg_shards(shards, batch * steps, num_classes)
        torch.save(teacher_model.state_dict(), weights)
        config = build_config(preset, shards=[str(shards)], num_classes=num_classes, batch_size=batch, epochs=2,
                              stage1_epochs=1, teacher=teacher_name, teacher_weights=str(weights),
                              out=str(Path(tmp) / "run"), quiet=True, attn_images=0, **cfg_overrides)
        start = time.perf_counter()
        train(config)
        seconds = time.perf_counter() - start
        records = read_metrics(Path(tmp) / "run" / "metrics.jsonl")
    workers = config.workers if config.workers is not None else min(8, os.cpu_count() or 1)  # distill.train's rule
    return {"batch": batch, "steps_per_epoch": steps, "workers": workers, "seconds": seconds,
            "epochs": [{"stage": r["stage"], "images_per_s": r["images_per_s"], "epoch_seconds": r["epoch_seconds"]}
                       for r in records]}


def main(argv: list[str] | None = None) -> None:
    started = time.perf_counter()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=256, help="per GPU (the paper: 8 GPUs x 128) [256]")
    parser.add_argument("--precision", choices=tuple(DTYPES), default="bf16")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps per case [5]")
    parser.add_argument("--steps", type=int, default=30, help="timed steps per case [30]")
    parser.add_argument("--cases", default=",".join(CASES))
    parser.add_argument("--end-to-end-steps", type=int, default=0, help="also run distill.train on JPEG shards of "
                        "this many batches per epoch (0: not) [0]")
    parser.add_argument("--preset", type=Path, default=PRESET)
    parser.add_argument("--cpu-smoke", action="store_true", help="the same code on the CPU at toy size: the micro "
                        "DearKD against a micro-sized timm DeiT, the digits teacher, batch 4, fp32, 1 timed step, "
                        "end to end at 1 step if asked (a test of the code, not a figure)")
    parser.add_argument("--json", default=None, help="also write the result here")
    args = parser.parse_args(argv)
    cases = tuple(c.strip() for c in args.cases.split(",") if c.strip())
    if not cases or set(cases) - set(CASES):
        parser.error(f"--cases takes {', '.join(CASES)}, got {args.cases!r}")
    if args.batch < 2 or args.batch % 2 or args.warmup < 1 or args.steps < 1 or args.end_to_end_steps < 0:
        parser.error("--batch must be even (mixup pairs images) and >= 2, --warmup and --steps >= 1")
    device = target_device("gpu_distill", args.cpu_smoke)
    from dfgen.teachers import load_teacher

    cfg = build_config(args.preset)
    size = {"num_classes": 1000, "in_chans": 3, "img_size": 224}
    student, baseline_kwargs, teacher_name, e2e_overrides = STUDENT, None, TEACHER, {"precision": args.precision}
    if args.cpu_smoke:
        size = {k: SMOKE[k] for k in size}
        student, baseline_kwargs, teacher_name = SMOKE["student"], SMOKE["baseline_kwargs"], SMOKE["teacher"]
        args.batch, args.warmup, args.steps, args.precision = (SMOKE[k] for k in ("batch", "warmup", "steps",
                                                                                   "precision"))
        args.end_to_end_steps = min(args.end_to_end_steps, 1)
        e2e_overrides = SMOKE["end_to_end"]
        teacher = load_teacher(teacher_name, device=device)
    else:
        teacher = load_teacher(teacher_name, pretrained=False, device=device)
    result: dict[str, Any] = {
        "benchmark": "gpu_distill", "cpu_smoke": args.cpu_smoke, **device_facts(device), "student": student,
        "baseline": BASELINE, "baseline_kwargs": baseline_kwargs, "teacher": teacher_name,
        "teacher_weights": "bundled" if args.cpu_smoke else "random", "preset": args.preset.name, **size,
        "batch": args.batch, "precision": args.precision, "warmup_steps": args.warmup, "timed_steps": args.steps,
        "steps": {},
    }

    def fill(r: dict[str, Any]) -> None:
        measure_steps(teacher, device, cfg, args.batch, args.precision, args.warmup, args.steps, student=student,
                      cases=cases, baseline_kwargs=baseline_kwargs, results=r["steps"], **size)
        if args.end_to_end_steps:
            r["end_to_end"] = end_to_end(e2e_overrides, teacher_name, teacher.model, args.batch,
                                         args.end_to_end_steps, num_classes=size["num_classes"])

    interruptible(result, fill)
    emit(result, args.json, started)


if __name__ == "__main__":
    main()
