"""Synthesis speed: the engine's inner optimisation against a naive reference loop
with the public reference implementation's pattern (fp32, teacher parameters left requiring grad, no
channels_last, two-pass BN statistics, a host sync every iteration), same teacher, batch, resolution
and iteration count, interleaved in one run. Prints one JSON line last.

    python -m benchmarks.synth_speed [--iterations 20] [--repeats 5]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
import torch.nn.functional as F
from torch import nn

from dfgen.config import LossWeights
from dfgen.inversion import EngineSettings, InversionEngine, lr_at
from dfgen.teachers import load_teacher


def naive_loop(model: nn.Module, mean, std, labels: torch.Tensor, resolution: int, iterations: int,
               weights: LossWeights, seed: int = 0, warmup: int = 100, device="cpu") -> torch.Tensor:
    """The slow pattern, written here as the baseline (not the engine's code path). It draws its
    random numbers in the engine's order, so for the same seed it makes the same images (the test
    tests/test_fast_path.py checks that), and returns the final (normalised) images."""
    model.train(False)
    for p in model.parameters():
        p.requires_grad_(True)  # weight gradients computed and thrown away
    bn_losses: list[torch.Tensor] = []

    def hook(module, inputs, output):
        x = inputs[0]
        channels = x.shape[1]
        batch_mean = x.mean([0, 2, 3])
        batch_var = x.permute(1, 0, 2, 3).contiguous().view(channels, -1).var(1, unbiased=False)
        loss = torch.norm(module.running_mean - batch_mean, 2) + torch.norm(module.running_var - batch_var, 2)
        bn_losses.append(loss)

    classifier_input: list[torch.Tensor] = []
    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(labels.shape[0], len(mean), resolution, resolution, generator=generator)
    x = x.to(device).requires_grad_(True)
    optimizer = torch.optim.Adam([x], lr=0.25, betas=(0.5, 0.9), eps=1e-8)
    shift = resolution // 8
    shifts = torch.randint(-shift, shift + 1, (iterations, 2), generator=generator)
    flips = torch.rand(iterations, generator=generator) < 0.5
    for it in range(iterations):
        for group in optimizer.param_groups:
            group["lr"] = lr_at(it, iterations, 0.25, warmup)
        jittered = torch.roll(x, shifts=(int(shifts[it, 0]), int(shifts[it, 1])), dims=(2, 3))
        if flips[it]:
            jittered = torch.flip(jittered, dims=(3,))
        bn_losses.clear()
        classifier_input.clear()
        model.zero_grad()
        optimizer.zero_grad()
        logits = model(jittered)
        d1 = jittered[:, :, :, :-1] - jittered[:, :, :, 1:]
        d2 = jittered[:, :, :-1, :] - jittered[:, :, 1:, :]
        d3 = jittered[:, :, 1:, :-1] - jittered[:, :, :-1, 1:]
        d4 = jittered[:, :, :-1, :-1] - jittered[:, :, 1:, 1:]
        tv = torch.norm(d1) + torch.norm(d2) + torch.norm(d3) + torch.norm(d4)
        bn = weights.first_bn_multiplier * bn_losses[0] + sum(bn_losses[1:])
        l2 = torch.stack([torch.norm(img) for img in jittered]).mean()
        loss = F.cross_entropy(logits, labels) + weights.tv_l2 * tv + weights.l2 * l2 + weights.bn * bn
        loss.backward()
        optimizer.step()
        with torch.no_grad():  # per-channel clip, one channel at a time
            for c in range(len(mean)):
                x.data[:, c] = torch.clamp(x.data[:, c], -mean[c] / std[c], (1 - mean[c]) / std[c])
        print_value = loss.item()  # host sync every iteration, as the reference prints/logs
        del print_value
    for h in handles:
        h.remove()
    for p in model.parameters():
        p.requires_grad_(False)
    return x.detach()


def run_case(name: str, teacher_name: str, resolution: int, batch: int, iterations: int, repeats: int,
             pretrained: bool, compile_engine: bool = False) -> dict:
    teacher = load_teacher(teacher_name, pretrained=pretrained)
    classes = teacher.num_classes
    labels = (torch.arange(batch) // 2) % classes
    # Same objective for both: plain DeepInversion terms (the diversity terms cost little and the
    # naive reference has none).
    weights = LossWeights.paper(ep=0, triplet=0)
    settings = EngineSettings(schedule=[(resolution, iterations)], weights=weights, log_every=0, warmup=100,
                              compile=compile_engine)
    naive_times, engine_times = [], []
    with InversionEngine(teacher.model, teacher.mean, teacher.std, settings, torch.device("cpu")) as engine:
        engine.invert(labels, 0)  # warm-up both
        naive_loop(teacher.model, teacher.mean, teacher.std, labels, resolution, 2, weights)
        for r in range(repeats):
            start = time.perf_counter()
            naive_loop(teacher.model, teacher.mean, teacher.std, labels, resolution, iterations, weights, seed=r)
            naive_times.append(time.perf_counter() - start)
            start = time.perf_counter()
            engine.invert(labels, r)
            engine_times.append(time.perf_counter() - start)
    work = batch * iterations
    naive_rate = work / statistics.median(naive_times)
    engine_rate = work / statistics.median(engine_times)
    result = {"case": name, "compile": compile_engine, "resolution": resolution, "batch": batch,
              "iterations": iterations,
              "naive_img_it_per_s": round(naive_rate, 2), "engine_img_it_per_s": round(engine_rate, 2),
              "ratio": round(engine_rate / naive_rate, 3)}
    print(json.dumps(result), flush=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--compile", action="store_true", help="also time the engine with torch.compile")
    args = parser.parse_args()
    cases = [
        run_case("digits@32", "digits", 32, 40, args.iterations, args.repeats, pretrained=True),
        run_case("resnet18@64", "torchvision:resnet18", 64, 16, args.iterations, args.repeats, pretrained=False),
    ]
    ratio = statistics.geometric_mean([c["ratio"] for c in cases])
    compiled = []
    if args.compile:  # compilation (10-30 s) happens in the warm-up, outside the timed repeats
        compiled = [
            run_case("digits@32", "digits", 32, 40, args.iterations, args.repeats, True, compile_engine=True),
            run_case("resnet18@64", "torchvision:resnet18", 64, 16, args.iterations, args.repeats, False,
                     compile_engine=True),
        ]
    print(json.dumps({"benchmark": "synth_speed", "device": "cpu", "threads": torch.get_num_threads(),
                      "cases": cases, "ratio": round(ratio, 3), "compiled_cases": compiled}))


if __name__ == "__main__":
    main()
