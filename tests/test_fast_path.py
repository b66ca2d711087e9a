"""The engine's fast path makes the same images as the plain fp32 reference loop (same seed)."""

import pytest
import torch

from benchmarks import synth_speed
from dfgen.config import LossWeights
from dfgen.inversion import EngineSettings, InversionEngine

WEIGHTS = LossWeights.paper(ep=0, triplet=0)  # the reference loop: the paper form, no diversity terms


def quantise(x, mean, std):
    m, s = torch.tensor(mean).view(1, -1, 1, 1), torch.tensor(std).view(1, -1, 1, 1)
    return ((x * s + m).clamp(0, 1) * 255).round().to(torch.uint8)


@pytest.mark.parametrize("compile_engine", [False, True], ids=["eager", "compiled"])
def test_fast_path_matches_plain_fp32_loop(digits_teacher, compile_engine):
    t = digits_teacher
    labels = torch.arange(10).repeat_interleave(2)
    iterations = 8
    plain = synth_speed.naive_loop(t.model, t.mean, t.std, labels, 32, iterations, WEIGHTS, seed=7, warmup=2)
    settings = EngineSettings(schedule=[(32, iterations)], weights=WEIGHTS, warmup=2, log_every=0,
                              compile=compile_engine)
    with InversionEngine(t.model, t.mean, t.std, settings, torch.device("cpu")) as engine:
        fast = engine.invert(labels, seed=7).images
    reference = quantise(plain, t.mean, t.std)
    difference = (fast.int() - reference.int()).abs()
    # Float reassociation (BN statistics formula, fused kernels) changes gradients in the last bits, and
    # Adam's normalised steps carry that into a few pixels; measured: 99.6% identical (eager), 99.3%
    # (compiled), at most 2 and 4 levels of 255 apart.
    assert (difference == 0).float().mean().item() > 0.99
    assert difference.float().mean().item() < 0.02
    assert difference.max().item() <= 6
