"""Synthesis speed on one GPU: the ImageNet preset (configs/imagenet_regnety16gf.yaml:
its loss weights, jitter, lr and the paper schedule 112:2000,224:2000) on a teacher with random weights (the cost
does not depend on them), bf16 and channels_last as `dfgen synthesize` runs on CUDA.

- One batch size through both stages, as in a real run: the largest that fits the whole schedule (its last stage
  takes the most memory), found by inverting one iteration per stage at sizes from --candidates down.
- Each stage timed apart inside one call (between the loop's log points, its only host syncs) after a warm-up call,
  eager and with --compile; the paper schedule's images/s from those times plus the batch's fixed cost.
- FLOP per image (the teacher's forward and backward to the input, counted by torch's FlopCounterMode), achieved
  TFLOP/s, model-FLOPs utilization against the card's dense bf16 peak (benchmarks/gpu_common.PEAKS) and against
  this card's measured bf16 matrix-product rate, peak memory, GPU-hours for 1.2M images.
- The naive fp32 loop of benchmarks/synth_speed.py (teacher weights requiring grad, no channels_last, a host sync
  per iteration) at the same batch, and at its own largest batch, reported apart. Both sides use the preset's loss
  form ("paper", the only one the naive loop implements) and its weights; the engine also runs the diversity terms
  the naive loop lacks, so the speed-up is not flattered.

    python -m benchmarks.gpu_speed [--teacher regnety_160] [--modes eager,compile] [--json OUT.json]
    python -m benchmarks.gpu_speed --teacher resnet50 --modes eager
    python -m benchmarks.gpu_speed --cpu-smoke      # the same code on the CPU at toy size (the tests run it)
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import sys
import time
from pathlib import Path
from typing import Any

import torch

from benchmarks.gpu_common import (
    device_facts,
    emit,
    flop_per_image_iteration,
    free_memory,
    interruptible,
    is_out_of_memory,
    largest_fitting,
    matmul_tflops,
    peak_gib,
    peak_tflops,
    reset_peak,
    schedule_figures,
    sync,
    target_device,
)
from benchmarks.synth_speed import naive_loop
from dfgen.config import LossWeights, build_config, format_schedule
from dfgen.inversion import EngineSettings, InversionEngine
from dfgen.parsing import parse_schedule
from dfgen.teachers import Teacher, load_teacher

PRESET = Path(__file__).resolve().parents[1] / "configs" / "imagenet_regnety16gf.yaml"
CANDIDATES = (2048, 1536, 1024, 768, 512, 384, 256, 192, 128, 96, 64, 32, 16, 8, 4)
MODES = ("eager", "compile")
# --cpu-smoke: the bundled digits teacher (32 px) at the paper's iteration counts, a few timed iterations.
SMOKE = {"teacher": "digits", "schedule": [(16, 2000), (32, 2000)], "candidates": (16, 8), "warmup": 1,
         "iterations": 2, "naive_iterations": 1, "matmul_size": 256}


def naive_weights(weights: LossWeights) -> LossWeights:
    """The engine's weights without the diversity terms, which the reference pattern lacks; the naive loop computes
    the paper form's terms only, so another form would compare different objectives."""
    if weights.form != "paper":
        raise SystemExit(f"gpu_speed: the naive loop implements the paper loss form; the preset uses {weights.form!r}")
    return dataclasses.replace(weights, ep=0.0, triplet=0.0)


def preset_settings(preset: Path, teacher: Teacher, device: torch.device,
                    schedule: list[tuple[int, int]] | None = None) -> EngineSettings:
    """The engine settings `dfgen synthesize --config PRESET` uses on `device` (bf16 and channels_last on CUDA)."""
    config = build_config(preset)
    flip = config.flip if isinstance(config.flip, bool) else True  # "auto" decides per teacher; the cost is the same
    return EngineSettings(
        schedule=schedule or config.schedule, weights=config.effective_losses, teacher_resolution=teacher.resolution,
        lr=config.lr, warmup=config.warmup, upsample=config.upsample, jitter_fraction=config.jitter_fraction,
        flip=flip, precision="bf16" if device.type == "cuda" else "fp32", channels_last=device.type == "cuda",
        output_resolution=teacher.resolution, soft_topk=config.soft_topk, log_every=0)


def batch_labels(batch: int, num_classes: int, per_class: int = 4) -> torch.Tensor:
    """The preset's batch layout: classes of `per_class` images each."""
    return (torch.arange(batch) // per_class) % num_classes


def engine_fits(teacher: Teacher, base: EngineSettings, batch: int, device: torch.device) -> bool:
    """Whether a batch passes one iteration of every stage (and the final teacher pass) without running out of
    memory."""
    settings = dataclasses.replace(base, schedule=[(r, 1) for r, _ in base.schedule], log_every=0, compile=False)
    try:
        with InversionEngine(teacher.model, teacher.mean, teacher.std, settings, device) as engine:
            engine.invert(batch_labels(batch, teacher.num_classes), 0)
        return True
    except Exception as exc:
        if not is_out_of_memory(exc):
            raise
        return False
    finally:
        free_memory(device)


def time_engine(teacher: Teacher, base: EngineSettings, batch: int, device: torch.device, compile_: bool,
                warmup: int, iterations: int) -> dict[str, Any]:
    """Seconds per iteration of each stage and the batch's fixed cost, from one call with `warmup + iterations`
    iterations per stage after a warm-up call (compilation, kernel choice, allocations)."""
    if warmup < 1 or iterations < 1 or iterations % warmup:
        raise ValueError("warm-up and timed iterations must be >= 1, the timed ones a multiple of the warm-up")
    stages = [r for r, _ in base.schedule]
    labels = batch_labels(batch, teacher.num_classes)
    settings = dataclasses.replace(base, schedule=[(r, warmup) for r in stages], log_every=0, compile=compile_)
    marks: list[tuple[str, int, float]] = []

    def on_log(stage: str, it: int, iters: int, terms: dict[str, float]) -> None:
        marks.append((stage, it, time.perf_counter()))

    with InversionEngine(teacher.model, teacher.mean, teacher.std, settings, device) as engine:
        start = time.perf_counter()
        engine.invert(labels, 0)
        sync(device)
        warm_seconds = time.perf_counter() - start
        engine.settings.schedule = [(r, warmup + iterations) for r in stages]
        engine.settings.log_every = warmup
        reset_peak(device)
        start = time.perf_counter()
        engine.invert(labels, 1, on_log)
        sync(device)
        total = time.perf_counter() - start
    stage_seconds = []
    per_stage = (warmup + iterations) // warmup
    for index in range(len(stages)):
        group = marks[index * per_stage:(index + 1) * per_stage]  # stages log in order, per_stage times each
        stage_seconds.append((group[-1][2] - group[0][2]) / iterations)
    fixed = max(0.0, total - sum((warmup + iterations) * t for t in stage_seconds))
    return {"compile": compile_, "stage_seconds": stage_seconds, "fixed_seconds": fixed,
            "warmup_call_seconds": warm_seconds, "peak_memory_gib": peak_gib(device)}


def naive_model(teacher: Teacher) -> torch.nn.Module:
    """A fresh fp32, contiguous copy of the teacher for the naive loop (it leaves hooks behind when it runs out of
    memory, and the engine turned the teacher channels_last)."""
    return copy.deepcopy(teacher.model).float().to(memory_format=torch.contiguous_format)


def naive_fits(teacher: Teacher, weights: LossWeights, resolution: int, batch: int, device: torch.device) -> bool:
    try:
        naive_loop(naive_model(teacher), teacher.mean, teacher.std, batch_labels(batch, teacher.num_classes).to(device),
                   resolution, 1, weights, device=device)
        return True
    except Exception as exc:
        if not is_out_of_memory(exc):
            raise
        return False
    finally:
        free_memory(device)


def time_naive(teacher: Teacher, weights: LossWeights, stages: list[int], batch: int, device: torch.device,
               warmup: int, iterations: int) -> dict[str, Any]:
    """Seconds per iteration of the naive loop at each stage's resolution (a call of `warmup` iterations first)."""
    model = naive_model(teacher)
    labels = batch_labels(batch, teacher.num_classes).to(device)
    reset_peak(device)
    stage_seconds = []
    for resolution in stages:
        naive_loop(model, teacher.mean, teacher.std, labels, resolution, warmup, weights, device=device)
        sync(device)
        start = time.perf_counter()
        naive_loop(model, teacher.mean, teacher.std, labels, resolution, iterations, weights, seed=1, device=device)
        sync(device)
        stage_seconds.append((time.perf_counter() - start) / iterations)
    del model
    free_memory(device)
    return {"batch": batch, "stage_seconds": stage_seconds, "peak_memory_gib": peak_gib(device)}


def benchmark(teacher: Teacher, device: torch.device, preset: Path = PRESET,
              schedule: list[tuple[int, int]] | None = None, modes: tuple[str, ...] = MODES,
              candidates: tuple[int, ...] = CANDIDATES, batch: int | None = None, warmup: int = 5,
              iterations: int = 20, naive: bool = True, naive_own_largest: bool = True, naive_iterations: int = 5,
              peak: float | None = None, result: dict[str, Any] | None = None) -> dict[str, Any]:
    """Every figure of the module's docstring for one teacher on `device` (a CPU works, for the tests), put into
    `result` as they are measured (an interrupted run keeps the ones it has)."""
    result = {} if result is None else result
    base = preset_settings(preset, teacher, device, schedule)
    naive_terms = naive_weights(base.weights)
    stages = [r for r, _ in base.schedule]
    flops = [flop_per_image_iteration(teacher.model, teacher.in_chans, r, device) for r in stages]
    tried: dict[int, bool] = {}
    if batch is None:
        batch, tried = largest_fitting(lambda b: engine_fits(teacher, base, b, device), candidates)
        if batch is None:
            raise SystemExit(f"not even a batch of {min(candidates)} fits the {stages[-1]}px stage of {teacher.name}")
    result.update({
        "teacher": teacher.name, "preset": preset.name, "precision": base.precision,
        "channels_last": base.channels_last, "schedule": format_schedule(base.schedule), "batch": batch,
        "batch_search": {str(b): ok for b, ok in tried.items()}, "flop_per_image_iteration": flops,
        "losses": {"engine": dataclasses.asdict(base.weights), "naive": dataclasses.asdict(naive_terms)},
        # the naive loop is "fp32" as the reference code runs it: cuDNN's convolutions use TF32 unless turned off
        "naive_tf32_convolutions": torch.backends.cudnn.allow_tf32,
        "timing": {"warmup_iterations": warmup, "timed_iterations": iterations}, "engine": {},
    })
    for mode in modes:
        timed = time_engine(teacher, base, batch, device, mode == "compile", warmup, iterations)
        timed.update(schedule_figures(batch, base.schedule, timed["stage_seconds"], timed["fixed_seconds"], flops,
                                      peak))
        result["engine"][mode] = timed
        print(f"engine {mode}: {timed['images_per_s']:.3g} images/s, MFU {timed['mfu']}", file=sys.stderr, flush=True)
    if naive:
        result["naive_fp32"] = naive_figures(teacher, base, naive_terms, stages, batch, device, candidates,
                                             naive_own_largest, naive_iterations, flops, peak)
        for key, figures in result["naive_fp32"].items():
            if figures.get("images_per_s"):
                result[f"speedup_vs_naive_{key}"] = {mode: e["images_per_s"] / figures["images_per_s"]
                                                     for mode, e in result["engine"].items()}
    return result


def naive_figures(teacher: Teacher, base: EngineSettings, weights: LossWeights, stages: list[int], batch: int,
                  device: torch.device, candidates: tuple[int, ...], own_largest: bool, iterations: int,
                  flops: list[float], peak: float | None) -> dict[str, Any]:
    """The naive loop at the engine's batch (`same_batch`, {"fits": false} if it does not) and at its own largest
    batch (`own_largest`)."""
    figures: dict[str, Any] = {}
    sizes = {"same_batch": batch if naive_fits(teacher, weights, stages[-1], batch, device) else None}
    if own_largest:
        smaller = tuple(b for b in candidates if b <= batch)
        sizes["own_largest"] = sizes["same_batch"] or \
            largest_fitting(lambda b: naive_fits(teacher, weights, stages[-1], b, device), smaller)[0]
    timed_by_size: dict[int, dict[str, Any]] = {}
    for key, size in sizes.items():
        if size is None:
            figures[key] = {"fits": False, "batch": batch if key == "same_batch" else None}
            continue
        if size not in timed_by_size:  # its own largest is the engine's batch when that fits: timed once
            timed = time_naive(teacher, weights, stages, size, device, warmup=2, iterations=iterations)
            timed.update(schedule_figures(size, base.schedule, timed["stage_seconds"], 0.0, flops, peak), fits=True)
            timed_by_size[size] = timed
            print(f"naive fp32 at batch {size}: {timed['images_per_s']:.3g} images/s", file=sys.stderr, flush=True)
        figures[key] = timed_by_size[size]
    return figures


def main(argv: list[str] | None = None) -> None:
    started = time.perf_counter()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--teacher", default="regnety_160", help="a timm/torchvision name, built with random weights")
    parser.add_argument("--preset", type=Path, default=PRESET)
    parser.add_argument("--schedule", default=None, help="override the preset's schedule, e.g. 112:2000,224:2000")
    parser.add_argument("--modes", default="eager,compile", help="eager, compile or both [eager,compile]")
    parser.add_argument("--batch", type=int, default=None, help="skip the search and use this batch")
    parser.add_argument("--candidates", default=",".join(map(str, CANDIDATES)))
    parser.add_argument("--warmup", type=int, default=5, help="untimed iterations per stage [5]")
    parser.add_argument("--iterations", type=int, default=20, help="timed iterations per stage, a multiple of "
                        "--warmup [20]")
    parser.add_argument("--naive-iterations", type=int, default=5)
    parser.add_argument("--no-naive", action="store_true")
    parser.add_argument("--no-naive-own-largest", action="store_true")
    parser.add_argument("--peak-tflops", type=float, default=None, help="the card's dense bf16 peak, if the table "
                        "does not know it")
    parser.add_argument("--cpu-smoke", action="store_true", help="the same code on the CPU at toy size: the bundled "
                        "digits teacher, a few iterations, eager only; --teacher, --schedule, --candidates and the "
                        "iteration counts are replaced (a test of the code, not a figure)")
    parser.add_argument("--json", default=None, help="also write the result here")
    args = parser.parse_args(argv)
    modes = tuple(m.strip() for m in args.modes.split(",") if m.strip())
    if not modes or set(modes) - set(MODES):
        parser.error(f"--modes takes {' and/or '.join(MODES)}, got {args.modes!r}")
    try:
        candidates = tuple(int(c) for c in args.candidates.split(","))
    except ValueError:
        parser.error(f"--candidates must be whole numbers separated by commas, got {args.candidates!r}")
    if args.warmup < 1 or args.iterations < args.warmup or args.iterations % args.warmup:
        parser.error(f"--iterations ({args.iterations}) must be a multiple of --warmup ({args.warmup}), both >= 1")
    schedule = parse_schedule(args.schedule) if args.schedule else None
    device = target_device("gpu_speed", args.cpu_smoke)
    facts = device_facts(device)
    peak, source = peak_tflops(facts["device"], args.peak_tflops)
    matmul_size = 8192
    if args.cpu_smoke:  # compiling on a CPU takes minutes: the smoke times the eager engine only
        teacher = load_teacher(SMOKE["teacher"], device=device)
        schedule, candidates, matmul_size = SMOKE["schedule"], SMOKE["candidates"], SMOKE["matmul_size"]
        args.warmup, args.iterations, args.naive_iterations = SMOKE["warmup"], SMOKE["iterations"], \
            SMOKE["naive_iterations"]
        modes = ("eager",)
        if args.batch is not None:
            args.batch = min(args.batch, max(candidates))
    else:
        teacher = load_teacher(args.teacher, pretrained=False, device=device)
    ceiling = matmul_tflops(device, matmul_size)
    result: dict[str, Any] = {"benchmark": "gpu_speed", "cpu_smoke": args.cpu_smoke, **facts,
                              "peak_bf16_tflops": peak, "peak_source": source,
                              "measured_bf16_matmul_tflops": ceiling,
                              "teacher_weights": "bundled" if args.cpu_smoke else "random"}
    interruptible(result, lambda r: benchmark(
        teacher, device, args.preset, schedule, modes, candidates, args.batch, args.warmup, args.iterations,
        not args.no_naive, not args.no_naive_own_largest, args.naive_iterations, peak, result=r))
    for figures in result.get("engine", {}).values():
        figures["fraction_of_measured_matmul"] = figures["achieved_tflops"] / ceiling
    emit(result, args.json, started)


if __name__ == "__main__":
    main()
