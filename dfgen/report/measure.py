"""Measuring one dataset of a report from its scan: per class, decode the sampled images, run LPIPS over sampled
pairs and the teacher (and the judge) over every image, draw the class's grid; and what 1,000 classes would cost."""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from dfgen.dataset import DatasetInfo
from dfgen.report.data import ScanResult, decode_refs
from dfgen.report.html import grid_image
from dfgen.report.metrics import (
    TeacherRunner,
    aggregate,
    lpips_distances,
    mean_pairwise_distance,
    sample_pairs,
    to_float,
)
from dfgen.report.teachers import data_config
from dfgen.teachers import Teacher

GRID_IMAGES = 16  # images shown per class on the page


def measure_dataset(
    info: DatasetInfo,
    name: str,
    scan: ScanResult,
    teacher: Teacher | None,
    lpips_model: torch.nn.Module | None,
    device: torch.device,
    pairs_per_class: int,
    seed: int,
    grid_dir: Path,
    grid_classes: set[int],
    quiet: bool,
    judge: Teacher | None = None,
) -> tuple[dict[str, Any], dict[str, Path], list[float]]:
    """Per class: decode the sample, run LPIPS over sampled pairs and the teacher (and the judge) over every
    image."""
    names = info.class_names
    lpips_values: dict[int, list[float]] = {}
    feature_values: dict[int, list[float]] = {}
    top1_values: dict[int, list[float]] = {}
    target_probs: list[float] = []
    predicted_ok = 0
    shapes: Counter[str] = Counter()
    grids: dict[str, Path] = {}
    decoded = pairs_done = 0
    decode_s = lpips_s = teacher_s = 0.0
    runner = judge_runner = None
    judged_ok, judge_features = 0, {}
    if teacher is not None:
        mean, std = data_config(info, teacher)
        runner = TeacherRunner(teacher, mean, std, device)
    if judge is not None:  # a network synthesis never used: its own normalization
        judge_runner = TeacherRunner(judge, judge.mean, judge.std, device)
    try:
        bar = tqdm(scan.samples.items(), total=len(scan.samples), desc=f"{name}: measure", unit="class",
                   disable=quiet, dynamic_ncols=True)
        for label, refs in bar:
            start = time.perf_counter()
            arrays = decode_refs(refs, 1 if info.in_chans <= 2 else 3)  # LA -> grey, RGBA -> RGB
            images = to_float(arrays)
            decode_s += time.perf_counter() - start
            decoded += len(arrays)
            shapes.update("x".join(str(v) for v in a.shape) for a in arrays)
            if lpips_model is not None:
                start = time.perf_counter()
                pairs = sample_pairs(len(images), pairs_per_class, seed, label)
                lpips_values[label] = lpips_distances(lpips_model, images, pairs, device)
                pairs_done += len(pairs)
                lpips_s += time.perf_counter() - start
            if runner is not None:
                start = time.perf_counter()
                outputs = runner.run(images, [label] * len(images))
                correct = (outputs.predicted == label).float()
                top1_values[label] = correct.tolist()
                predicted_ok += int(correct.sum())
                target_probs.extend(outputs.target_prob.tolist())
                distance = mean_pairwise_distance(outputs.features)
                if distance is not None:
                    feature_values[label] = [distance]
                teacher_s += time.perf_counter() - start
            if judge_runner is not None:
                outputs = judge_runner.run(images, [label] * len(images))
                judged_ok += int((outputs.predicted == label).sum())
                distance = mean_pairwise_distance(outputs.features)
                if distance is not None:
                    judge_features[label] = [distance]
            if label in grid_classes:
                path = grid_dir / f"class-{label:05d}.png"
                grid_image(arrays[:GRID_IMAGES]).save(path, optimize=True)
                grids[names[label]] = path
            del images, arrays  # at most one class's decoded sample is held at a time
    finally:
        for each in (runner, judge_runner):
            if each is not None:
                each.close()

    entry: dict[str, Any] = {
        "lpips_intra_class": None,
        "teacher_agreement": None,
        "feature_diversity": None,
        "decoded_sizes": dict(shapes),
        "images_decoded": decoded,
    }
    if lpips_model is not None:
        entry["lpips_intra_class"] = {**aggregate(lpips_values, names), "pairs": pairs_done}
    if runner is not None:
        per_class_top1 = aggregate(top1_values, names)["per_class"]
        entry["teacher_agreement"] = {
            "top1": predicted_ok / len(target_probs) if target_probs else None,
            "mean_target_prob": float(np.mean(target_probs)) if target_probs else None,
            "per_class_top1": per_class_top1,
            "images": len(target_probs),
        }
        entry["feature_diversity"] = {
            **aggregate(feature_values, names),
            "metric": "mean Euclidean distance of L2-normalized penultimate features over all same-class pairs",
        }
    if judge_runner is not None:
        entry["judge"] = {
            "name": judge.name,
            "top1": judged_ok / decoded if decoded else None,
            "feature_diversity": aggregate(judge_features, names)["mean"],
            "per_class_feature_diversity": aggregate(judge_features, names)["per_class"],
            "metric": "the judge's top-1 on the images and the same feature diversity in its embedding",
        }
    entry["timings"] = {"decode_s": decode_s, "lpips_s": lpips_s, "teacher_s": teacher_s,
                        "lpips_pairs": pairs_done}
    return entry, grids, target_probs


def estimate_cost(scan: ScanResult, entry: dict[str, Any], num_classes: int, images_per_class: int,
              pairs_per_class: int) -> dict[str, Any]:
    """Per-unit costs of this run and what 1,000 classes of the same kind would take on this device."""
    t = entry["timings"]
    decoded = max(1, entry["images_decoded"])
    per_image_scan = scan.seconds / max(1, scan.images_scanned)
    per_image_decode = t["decode_s"] / decoded
    per_image_teacher = t["teacher_s"] / decoded if entry["teacher_agreement"] else 0.0
    per_pair_lpips = t["lpips_s"] / t["lpips_pairs"] if t["lpips_pairs"] else 0.0
    images_per_class_on_disk = scan.images_scanned / max(1, num_classes)
    per_class = (images_per_class_on_disk * per_image_scan
                 + images_per_class * (per_image_decode + per_image_teacher)
                 + pairs_per_class * per_pair_lpips)
    return {
        "scan_ms_per_image": 1e3 * per_image_scan,
        "decode_ms_per_image": 1e3 * per_image_decode,
        "teacher_ms_per_image": 1e3 * per_image_teacher,
        "lpips_ms_per_pair": 1e3 * per_pair_lpips,
        "estimate_s_per_1000_classes": 1000 * per_class,
        "estimate_note": (f"{images_per_class_on_disk:.0f} images per class on disk scanned, {images_per_class} "
                          f"decoded, {pairs_per_class} LPIPS pairs, at this dataset's image size, on this device"),
    }
