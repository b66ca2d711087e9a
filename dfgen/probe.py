"""The start-up probe: defaults derived from the teacher, so that one set of defaults fits teachers nobody tuned for.

At set-up (dfgen.runplan.set_up), a short *probe* inverts one batch with plain DeepInversion (no flips, no
diversity losses) and measures, on the teacher's own images:
- how often its prediction survives a mirror: flips are on ("auto") only where the teacher is mirror-invariant, and
  off, the safe setting, where the teacher's agreement with the probe's targets is near chance (dfgen.chance: a
  short trial schedule leaves the images noise, and a mirror test on noise says nothing about the teacher);
- the distance from each image to the nearest image of another class, in the normalised penultimate embedding the
  diversity losses use: the easy-positive reach and the triplet margin ("auto") are fractions of its median, so they
  mean the same on a small digits net that packs classes tightly and on a large ImageNet net whose classes sit far
  apart.
The probe is a pure function of (configuration, seed): every rank and every resume derive the same values, and the
values are recorded in config.json and dataset.json (docs/design.md)."""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from dfgen import losses as L
from dfgen.chance import describe_chance, near_chance
from dfgen.config import AUTO, LossWeights
from dfgen.inversion import EngineSettings, InversionEngine
from dfgen.plan import LabelPlan, derive_seed

PROBE_ITERATIONS = 100  # at most, spread over the stages like the schedule
PROBE_CLASSES = 16  # at most, images_per_class (>= 2) each
FLIP_KEEP_MIN = 0.9  # flips on when at least this share of the probe images keep their class when mirrored
# Reach and margin as fractions of the median nearest other-class distance of plain DeepInversion images. Chosen so
# the bundled digits teacher (median 0.84 on its probe under the paper's loss form) kept the values it was tuned
# with, 0.3 and 0.5; under the normalized form its probe images sit closer (median 0.57: reach 0.20, margin 0.34).
REACH_FRACTION = 0.357
MARGIN_FRACTION = 0.595
_STREAM_PROBE = 2  # plan.derive_seed stream of the probe batch


@dataclass(frozen=True)
class ProbeFigures:
    """What the probe measured (recorded in config.json / dataset.json)."""

    images: int
    iterations: int
    seconds: float
    agreement: float  # teacher top-1 == target on the probe images
    mirror_kept: float  # share whose top-1 is unchanged by a horizontal mirror
    mirror_prob_drop: float  # mean drop of the target probability under the mirror
    negative_distance: float  # median distance to the nearest image of another class
    positive_distance: float  # median distance to the nearest image of the same class


# What a plan (--dry-run) assumes instead of probing: the settings take values that do not change the cost.
STAND_IN = ProbeFigures(images=0, iterations=0, seconds=0.0, agreement=1.0, mirror_kept=1.0, mirror_prob_drop=0.0,
                        negative_distance=1.0, positive_distance=0.0)


def probe_schedule(schedule: list[tuple[int, int]], budget: int = PROBE_ITERATIONS) -> list[tuple[int, int]]:
    """The schedule scaled to at most `budget` iterations in all (each stage at least one)."""
    total = sum(iters for _, iters in schedule)
    scale = min(1.0, budget / total)
    return [(res, max(1, round(iters * scale))) for res, iters in schedule]


def probe_labels(plan: LabelPlan) -> torch.Tensor:
    """Up to PROBE_CLASSES classes (the first of the seed's class order) x images_per_class (>= 2) images."""
    classes = plan.round_order(0)[:min(PROBE_CLASSES, plan.num_classes)]
    per_class = max(2, plan.images_per_class)
    return torch.as_tensor(np.repeat(classes, per_class), dtype=torch.long)


def run_probe(model: torch.nn.Module, mean: tuple[float, ...], std: tuple[float, ...], settings: EngineSettings,
              plan: LabelPlan, device: torch.device, competitor: torch.nn.Module | None = None) -> ProbeFigures:
    """Invert the probe batch with plain DeepInversion, no flips, and measure it. A two-round run's `competitor`
    takes part, so the reach is measured on images made the way the run makes them."""
    start = time.perf_counter()
    weights = dataclasses.replace(settings.weights, ep=0.0, triplet=0.0, ep_reach=None, margin=0.0)
    probe_settings = dataclasses.replace(settings, weights=weights, flip=False, schedule=probe_schedule(
        settings.schedule), log_every=0, soft_topk=0, crop_min_scale=None)
    labels = probe_labels(plan)
    with InversionEngine(model, mean, std, probe_settings, device, competitor) as engine:
        result = engine.invert(labels, derive_seed(plan.seed, _STREAM_PROBE, 0))
        with torch.no_grad():
            normalised = (result.images.to(device).float() / 255 - engine.mean) / engine.std
            logits, embedding, _ = engine.probe(normalised)
            mirrored = engine.probe.model(normalised.flip(3))
    labels = labels.to(device)
    probs, mirrored_probs = logits.float().softmax(1), mirrored.float().softmax(1)
    target = probs.gather(1, labels[:, None]).squeeze(1)
    mirrored_target = mirrored_probs.gather(1, labels[:, None]).squeeze(1)
    distances = L.pairwise_distances(embedding)
    mining = L.mine(distances, labels)
    anchors = torch.arange(len(labels), device=device)
    negative = distances[anchors, mining.hard_negative][mining.has_negative]
    positive = distances[anchors, mining.easy_positive][mining.has_positive]
    return ProbeFigures(
        images=len(labels),
        iterations=sum(iters for _, iters in probe_settings.schedule),
        seconds=round(time.perf_counter() - start, 2),
        agreement=_round(probs.argmax(1).eq(labels).float().mean()),
        mirror_kept=_round(mirrored_probs.argmax(1).eq(probs.argmax(1)).float().mean()),
        mirror_prob_drop=_round((target - mirrored_target).mean()),
        negative_distance=_round(negative.median()) if negative.numel() else 0.0,
        positive_distance=_round(positive.median()) if positive.numel() else 0.0,
    )


def _round(value: torch.Tensor | float, digits: int = 4) -> float:
    return round(float(value), digits)


def needs_probe(flip: bool | str, weights: LossWeights) -> bool:
    """Whether any setting is left to the probe."""
    diversity = bool(weights.ep or weights.triplet)
    return flip == AUTO or (diversity and AUTO in (weights.ep_reach, weights.margin))


def probe_near_chance(figures: ProbeFigures, num_classes: int) -> bool:
    """Whether the probe's images are no better than guesses to the teacher (its figures then mean nothing)."""
    return figures.images > 0 and near_chance(figures.agreement, num_classes, figures.images)


def flip_fallback(requested: bool | str, figures: ProbeFigures | None, num_classes: int) -> str | None:
    """Why an "auto" flip fell back to off without asking the probe (agreement near chance); None otherwise."""
    if requested != AUTO or figures is None or not probe_near_chance(figures, num_classes):
        return None
    return (f"the probe's agreement {figures.agreement:.2f} is near chance "
            f"({describe_chance(num_classes, figures.images)}), so its mirror test means nothing: flips off, the safe "
            "setting")


def apply_probe(flip: bool | str, weights: LossWeights, figures: ProbeFigures | None,
                num_classes: int) -> tuple[bool, LossWeights]:
    """The flip decision and the loss weights with "auto" replaced by the probe's values. `num_classes`: the
    teacher's, what the probe's agreement is compared with (near chance: flips off)."""
    if figures is None:
        if needs_probe(flip, weights):
            raise ValueError("a setting is auto but no probe ran")
        resolved = weights
    else:
        scale = max(figures.negative_distance, 1e-3)
        resolved = dataclasses.replace(
            weights,
            ep_reach=round(REACH_FRACTION * scale, 3) if weights.ep_reach == AUTO else weights.ep_reach,
            margin=round(MARGIN_FRACTION * scale, 3) if weights.margin == AUTO else weights.margin,
        )
    if flip == AUTO:
        flip = not probe_near_chance(figures, num_classes) and figures.mirror_kept >= FLIP_KEEP_MIN
    return bool(flip), resolved


def describe_probe(figures: ProbeFigures, flip: bool, weights: LossWeights, num_classes: int,
                   requested_flip: bool | str = AUTO) -> str:
    """One log line: what the probe found and what it decided (and, near chance, that it decided nothing)."""
    near = probe_near_chance(figures, num_classes)
    agreement = f"agreement {figures.agreement:.2f}" + (
        f", near chance ({describe_chance(num_classes, figures.images)})" if near else "")
    if flip_fallback(requested_flip, figures, num_classes):
        mirror = ("its mirror test means nothing -> flips off (the safe setting; a longer --schedule lets the probe "
                  "decide)")
    else:
        mirror = f"mirrored images keep their class {figures.mirror_kept:.0%} -> flips {'on' if flip else 'off'}"
    return (f"probe: {figures.images} images x {figures.iterations} iterations in {figures.seconds:.1f}s; {agreement}; "
            f"{mirror}; nearest other-class distance {figures.negative_distance:.3f} -> reach {weights.ep_reach}, "
            f"margin {weights.margin}")


def figures_from_record(record: dict[str, Any] | None) -> ProbeFigures | None:
    if not record:
        return None
    return ProbeFigures(**{f.name: record[f.name] for f in dataclasses.fields(ProbeFigures)})
