"""Synthesis speed on a GPU (SPEC section 6.3): timm regnety_160 with random weights (weights do not
change the cost), bf16, at 112 and 224, the largest batch that fits; images/s for the paper schedule
(2000 iterations at 112 + 2000 at 224), model-FLOPs utilisation against the card's dense bf16 peak,
peak memory, and the naive fp32 loop of benchmarks/synth_speed.py in the same run. One JSON line last.

    python benchmarks/gpu_speed.py [--iterations 20] [--peak-tflops 989]
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from dfgen.config import LossWeights
from dfgen.inversion import EngineSettings, InversionEngine
from dfgen.teachers import load_teacher

# Dense bf16 tensor-core peaks (TFLOP/s), by substring of the device name.
PEAKS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "A10G": 70.0, "V100": 125.0}


def flops_per_image_iteration(model, in_chans: int, resolution: int, device) -> float:
    """Forward + backward to the input, counted by torch's FlopCounterMode on a batch of 2."""
    from torch.utils.flop_counter import FlopCounterMode

    x = torch.randn(2, in_chans, resolution, resolution, device=device, requires_grad=True)
    with FlopCounterMode(display=False) as counter:
        model(x).float().sum().backward()
    return counter.get_total_flops() / 2


def rate(engine: InversionEngine, labels: torch.Tensor, iterations: int) -> float:
    """Image-iterations per second over `iterations` (after a warm-up call)."""
    engine.settings.schedule = [(engine.settings.schedule[0][0], iterations)]
    engine.invert(labels, 0)
    torch.cuda.synchronize()
    start = time.perf_counter()
    engine.invert(labels, 1)
    torch.cuda.synchronize()
    return labels.shape[0] * iterations / (time.perf_counter() - start)


def largest_batch(teacher, resolution: int, device, candidates=(1024, 768, 512, 384, 256, 192, 128, 64, 32)) -> int:
    for batch in candidates:
        settings = EngineSettings(schedule=[(resolution, 2)], weights=LossWeights.paper(), precision="bf16",
                                  log_every=0, channels_last=True)
        engine = InversionEngine(teacher.model, teacher.mean, teacher.std, settings, device)
        try:
            engine.invert(torch.arange(batch) // 4 % teacher.num_classes, 0)
            return batch
        except torch.cuda.OutOfMemoryError:
            pass
        finally:
            engine.probe.remove()
            torch.cuda.empty_cache()
    raise RuntimeError("not even the smallest batch fits")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--teacher", default="regnety_160")
    parser.add_argument("--iterations", type=int, default=20)
    parser.add_argument("--naive-batch", type=int, default=64)
    parser.add_argument("--peak-tflops", type=float, default=None)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("no CUDA device: this benchmark is for GPUs (benchmarks/synth_speed.py is the CPU one)")
    device = torch.device("cuda")
    name = torch.cuda.get_device_name()
    peak = args.peak_tflops or next((v for k, v in PEAKS.items() if k in name), None)
    teacher = load_teacher(args.teacher, pretrained=False, device=device)
    model = teacher.model.to(device)
    stages = {}
    for resolution in (112, 224):
        batch = largest_batch(teacher, resolution, device)
        torch.cuda.reset_peak_memory_stats()
        settings = EngineSettings(schedule=[(resolution, args.iterations)], weights=LossWeights.paper(),
                                  precision="bf16",
                                  log_every=0, channels_last=True)
        engine = InversionEngine(model, teacher.mean, teacher.std, settings, device)
        labels = torch.arange(batch) // 4 % teacher.num_classes
        r = rate(engine, labels, args.iterations)
        engine.probe.remove()
        flops = flops_per_image_iteration(model, teacher.in_chans, resolution, device)
        stages[resolution] = {"batch": batch, "img_it_per_s": round(r, 1), "flop_per_img_it": flops,
                              "tflops": round(r * flops / 1e12, 1),
                              "peak_mem_gib": round(torch.cuda.max_memory_allocated() / 2**30, 1)}
        print(json.dumps({"stage": resolution, **stages[resolution]}), flush=True)
    seconds_per_image = sum(2000 / stages[r]["img_it_per_s"] for r in (112, 224))
    flop_per_image = sum(2000 * stages[r]["flop_per_img_it"] for r in (112, 224))
    images_per_s = 1 / seconds_per_image

    # The naive fp32 loop (benchmarks/synth_speed.py) at 224, same run.
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location("synth_speed", Path(__file__).with_name("synth_speed.py"))
    synth_speed = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(synth_speed)
    model.float().to(memory_format=torch.contiguous_format)
    labels = (torch.arange(args.naive_batch) // 4 % teacher.num_classes).to(device)
    mean = teacher.mean
    run = lambda n: synth_speed.naive_loop(model, mean, teacher.std, labels, 224, n, LossWeights.paper(ep=0, triplet=0),  # noqa: E731
                                           device=device)
    run(2)
    torch.cuda.synchronize()
    start = time.perf_counter()
    run(args.iterations)
    torch.cuda.synchronize()
    naive_224 = args.naive_batch * args.iterations / (time.perf_counter() - start)
    result = {
        "benchmark": "gpu_speed", "device": name, "teacher": args.teacher, "precision": "bf16",
        "stages": stages, "paper_schedule_images_per_s": round(images_per_s, 3),
        "flop_per_image": flop_per_image,
        "mfu": round(images_per_s * flop_per_image / (peak * 1e12), 3) if peak else None, "peak_tflops": peak,
        "naive_fp32_img_it_per_s_224": round(naive_224, 1),
        "speedup_vs_naive_224": round(stages[224]["img_it_per_s"] / naive_224, 2),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
