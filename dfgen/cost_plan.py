"""What a run will cost, from its plan (for `--dry-run`): teacher passes, teacher forwards and generator FLOPs per
image, in the units that `dfgen synthesize` counts as it runs (dfgen.cost). The run's counted figures are the
reference; this is their prediction, exact for passes when nothing is resumed."""

from __future__ import annotations

from typing import Any

import torch

from dfgen.cost import measure_flops
from dfgen.generator import build_generator
from dfgen.inversion import NOISE_IMAGES
from dfgen.probe import needs_probe, probe_labels, probe_schedule

PROBE_FORWARDS = 3  # per probe image: the written images, their embedding, their mirror (dfgen.probe)


def planned_cost(run: Any) -> dict[str, float]:
    """Per image of a resolved run (dfgen.runplan.RunPlan): teacher passes, teacher forwards, generator FLOPs."""
    config, plan = run.config, run.plan
    passes, forwards, flops = 0, NOISE_IMAGES, 0
    if needs_probe(config.flip, config.effective_losses):
        probe = len(probe_labels(plan))
        passes += probe * sum(i for _, i in probe_schedule(run.schedule))
        forwards += PROBE_FORWARDS * probe
    forwards += plan.n * (1 + (config.soft_views if config.soft_topk else 0))
    if config.mode == "pixels":
        passes += plan.n * sum(i for _, i in run.schedule)
    else:
        g = config.generator
        first_batches = {plan.shard_batches(k)[0] for k in range(min(g.chains, plan.num_shards))}
        steps = {b: g.warmup_steps if b in first_batches else g.steps for b in range(plan.num_batches)}
        adapted = sum(len(plan.batch_range(b)) * s for b, s in steps.items())
        passes += adapted
        step_flops, emit_flops, parameters = generator_flops(run)
        flops = adapted * step_flops + plan.n * emit_flops + 3 * parameters * plan.num_batches
    return {"teacher_passes": passes / plan.n, "teacher_forwards": forwards / plan.n, "generator_flops": flops / plan.n}


def generator_flops(run: Any) -> tuple[int, int, int]:
    """(FLOPs of an adaptation step, of the emitting forward, per image; parameters) of the run's generator."""
    g, teacher = run.config.generator, run.teacher
    net = build_generator(0, teacher.num_classes, teacher.in_chans, teacher.resolution, tuple(teacher.mean),
                          tuple(teacher.std), g.latent, g.width)
    z = torch.zeros(2, g.latent, requires_grad=g.latent_lr > 0)
    labels = torch.zeros(2, dtype=torch.long)
    step = measure_flops(lambda: net(z, labels), backward=True) // 2
    emit = measure_flops(lambda: net(z, labels), backward=False) // 2
    return step, emit, sum(p.numel() for p in net.parameters())


def describe_cost(run: Any) -> str:
    """The `--dry-run` line."""
    cost = planned_cost(run)
    mode = f"generator, {run.config.generator.steps} steps a batch" if run.config.mode == "generator" else "pixels"
    generator = f", generator {cost['generator_flops'] / 1e6:.3g} MFLOP" if cost["generator_flops"] else ""
    bound = "at most " if run.config.early_stop else ""  # --early-stop: stages may end sooner
    return (f"cost         {bound}{cost['teacher_passes']:.4g} teacher passes and "
            f"{cost['teacher_forwards']:.3g} forwards "
            f"per image{generator} ({mode}; start-up included)")
