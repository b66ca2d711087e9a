"""`dfgen report`: measure synthetic (or real) datasets and write report.json, a self-contained
report.html and the plots as PNG files. Besides dfgen datasets it reads any labelled image set, an ImageFolder or
plain WebDataset shards (dfgen.report.sources), so synthetic and real sets stand side by side.

Python API::

    from dfgen.report import make_report
    report = make_report([Path("out/div"), Path("out/plain")], Path("report/"), lpips_net="alex")
    report["datasets"][0]["lpips_intra_class"]["mean"]

What is measured per dataset:

- ``lpips_intra_class``: {"mean", "per_class"}; per class the mean LPIPS distance over
  ``pairs_per_class`` distinct same-class pairs drawn (seeded) from the class's sample; "mean" is the
  mean over classes. Images are scaled to [-1, 1], grey replicated to 3 channels, and resized
  (bilinear) so that the shorter side is at least 64 px. Higher is more diverse.
- ``teacher_agreement``: {"top1", "mean_target_prob", "per_class_top1", "images", "chance_bound",
  "near_chance"}: the teacher named in dataset.json (for a real set, the one the synthetic sets beside it share)
  re-run on the decoded images of the sample; a top-1 near chance (dfgen.chance) is flagged and warned about.
- ``feature_diversity``: {"mean", "per_class"}: mean Euclidean distance between L2-normalized
  penultimate teacher features (input of the final linear layer) over all same-class pairs of the sample.
- class counts, image size, format, bytes on disk, shards checked (sha256 against the sidecars),
  images scanned and decoded, and timings with an estimate per 1,000 classes.

Scale: one streaming pass over the shards (sha256 and labels), per-class reservoir sampling of
``images_per_class`` references (deterministic from ``seed``), then only the kept images are read back
and decoded, one class at a time. Every dataset's shards are checked before any network (the LPIPS backbone, a
teacher) is loaded: a damaged shard is reported as such even where a network could not be loaded.
"""

from __future__ import annotations

import datetime as _dt
import math
import re
import sys
import time
from collections import Counter
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from dfgen import __version__
from dfgen.atomic import write_json_atomic
from dfgen.chance import chance_bound, describe_chance, near_chance
from dfgen.dataset import DatasetInfo
from dfgen.errors import DfgenError
from dfgen.report.html import grouped_bars, histogram, write_html
from dfgen.report.measure import GRID_IMAGES, estimate_cost, measure_dataset  # noqa: F401  (GRID_IMAGES: API)
from dfgen.report.metrics import LPIPS_NETS, load_lpips
from dfgen.report.sources import open_report_sets
from dfgen.report.teachers import TeacherCache, resolve_teacher, shared_teacher
from dfgen.teachers import Teacher

GRID_CLASSES = 48  # classes shown on the page (evenly spaced when there are more)


def _log(message: str, quiet: bool) -> None:
    if not quiet:
        print(message, file=sys.stderr, flush=True)


def _unique_names(datasets: list[DatasetInfo]) -> list[str]:
    seen: Counter[str] = Counter()
    names = []
    for d in datasets:
        seen[d.name] += 1
        names.append(d.name if seen[d.name] == 1 else f"{d.name}-{seen[d.name]}")
    return names


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name) or "dataset"


def grid_class_indices(num_classes: int, limit: int = GRID_CLASSES) -> list[int]:
    """All classes up to `limit`, otherwise `limit` evenly spaced ones (the same for equal class counts)."""
    if num_classes <= limit:
        return list(range(num_classes))
    return sorted({int(round(v)) for v in np.linspace(0, num_classes - 1, limit)})


def _json_safe(value: Any) -> Any:
    """NaN/inf are not JSON: write them as null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    return value


def _write_json(path: Path, data: Any) -> None:
    write_json_atomic(path, _json_safe(data), sort_keys=False, allow_nan=False)


def make_report(
    datasets: list[Path],
    out: Path,
    pairs_per_class: int = 50,
    images_per_class: int = 64,
    lpips_net: str | None = "alex",
    device: str = "auto",
    seed: int = 0,
    teacher_weights: str | Path | None = None,
    teacher: str | Teacher | None = None,
    grid_classes: int = GRID_CLASSES,
    quiet: bool = False,
    judge: Teacher | None = None,
    num_classes: int | None = None,
    image_key: str | None = None,
    label_key: str = "cls",
) -> dict[str, Any]:
    """Measure one or more dataset directories and write `out/report.json`, `out/report.html` and the
    plots (`out/*.png`, per-class grids under `out/grids/`). Returns the content of report.json.

    datasets: dfgen datasets (`dfgen synthesize`, `dfgen export-*`), and any labelled image set beside them: an
        ImageFolder (one sub-folder of images per class) or plain WebDataset shards (a directory of .tar files, one
        .tar, a brace pattern), read as distill reads them (dfgen.report.sources).
    pairs_per_class: same-class pairs per class for LPIPS (all pairs when the sample has fewer).
    images_per_class: images sampled (reservoir, seeded) per class; the teacher runs on all of them.
    lpips_net: "alex", "vgg", "squeeze", or None / "none" to skip LPIPS.
    device: "auto", "cpu" or "cuda".
    seed: decides the image sample and the pairs.
    teacher_weights: local weights file for the teacher named in dataset.json (or for `teacher`).
    teacher: a teacher name (or a loaded Teacher) to use instead of dataset.json's. A real set records no teacher:
        beside synthetic sets that all record one teacher it is measured with theirs, alone it needs this.
    judge: a second network (dfgen.teachers.load_teacher) that synthesis did not use, e.g. one trained on real
        data: its top-1 on the images and the feature diversity in its embedding, which the diversity losses did
        not optimise (the teacher-feature figure can be gamed by the loss that optimises it).
    num_classes: the class count of plain WebDataset shards, which record none (default: that of the dfgen sets).
    image_key, label_key: the sample entries of plain shards holding the image (default: the first of png, jpg,
        jpeg, webp) and the integer label.

    User errors (missing dataset.json, damaged shards, LPIPS backbone not available offline, ...)
    raise DfgenError with a message that names the file."""
    from dfgen.runtime import resolve_device

    start_all = time.perf_counter()
    if not datasets:
        raise DfgenError("give at least one dataset directory")
    if pairs_per_class < 0:
        raise DfgenError(f"--pairs-per-class must be >= 0, got {pairs_per_class}")
    if images_per_class < 2:
        raise DfgenError(f"--images-per-class must be >= 2 (pairs need two images), got {images_per_class}")
    if seed < 0:
        raise DfgenError(f"--seed must be >= 0, got {seed}")
    if lpips_net in (None, "none"):
        lpips_net = None
    elif lpips_net not in LPIPS_NETS:
        raise DfgenError(f"--lpips-net must be one of {', '.join(LPIPS_NETS)} or none, got {lpips_net!r}")
    torch_device = resolve_device(device, 0)

    # every dataset.json / index.json / sidecar error, and every folder that is no image set, before any work
    sets = open_report_sets(list(datasets), num_classes, image_key, label_key)
    borrowed = shared_teacher([s.info for s in sets]) if teacher is None else None
    measured_by_shared = [borrowed is not None and s.info.teacher is None for s in sets]
    # a real set (no teacher recorded) is measured with the teacher the synthetic sets share
    infos = [replace(s.info, description={**s.info.description, "teacher": borrowed}) if shared else s.info
             for s, shared in zip(sets, measured_by_shared, strict=True)]
    names = _unique_names(infos)
    # The data first (cheap, and its errors say which shard to remake), then the networks (downloads, memory).
    scans = []
    for each, name in zip(sets, names, strict=True):
        what = (f"listing {len(each.files)} files" if each.source_format == "imagefolder"
                else f"{'checking' if each.verified else 'reading'} {len(each.info.shards)} shard(s)")
        _log(f"{name}: {what} and sampling {images_per_class} images per class", quiet)
        scans.append(each.scan(images_per_class, seed))
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    lpips_model = load_lpips(lpips_net, torch_device) if lpips_net else None
    cache = TeacherCache(torch_device)

    entries: list[dict[str, Any]] = []
    all_grids: dict[str, dict[str, Path]] = {}
    probs_by_name: dict[str, list[float]] = {}
    for info, each, shared, name, scan in zip(infos, sets, measured_by_shared, names, scans, strict=True):
        started = time.perf_counter() - scan.seconds
        model, teacher_entry, warnings = resolve_teacher(info, teacher, teacher_weights, cache)
        if shared:
            teacher_entry["shared_from"] = "the teacher the synthetic sets of this report record (the set records none)"
        for warning in warnings:
            _log(f"warning: {name}: {warning}", False)
        recorded_counts = info.description.get("class_counts")
        if isinstance(recorded_counts, list) and recorded_counts != scan.class_counts:
            warnings.append("class counts in the shards differ from dataset.json's class_counts")
            _log(f"warning: {name}: {warnings[-1]}", False)
        grid_dir = out / "grids" / _slug(name)
        grid_dir.mkdir(parents=True, exist_ok=True)
        measured, grids, probs = measure_dataset(
            info, name, scan, model, lpips_model, torch_device, pairs_per_class, seed, grid_dir,
            set(grid_class_indices(info.num_classes, grid_classes)), quiet, judge,
        )
        all_grids[name] = grids
        if model is not None:
            probs_by_name[name] = probs
        meta = info.description
        entry = {
            "name": name,
            "path": str(info.path),
            "kind": meta.get("kind"),
            "source_format": each.source_format,
            "teacher": teacher_entry,
            "diversity": meta.get("diversity"),
            "derived": meta.get("derived"),
            "seed": meta.get("seed"),
            "schedule": meta.get("schedule"),
            "synthesis_cost": meta.get("cost"),  # teacher passes, generator FLOPs, wall time (dfgen.cost)
            "n": scan.images_scanned,
            "num_classes": info.num_classes,
            "classes": info.class_names,
            "class_counts": dict(zip(info.class_names, scan.class_counts, strict=True)),
            "in_chans": info.in_chans,
            "image_size": "x".join(str(v) for v in meta.get("image_size", [])) or None,
            "format": meta.get("format"),
            "bytes_on_disk": scan.bytes_on_disk,
            "shards": {"count": len(info.shards), "checked": scan.shards_checked,
                       "sha256_ok": True if each.verified else None},  # None: no checksums recorded
            "images_scanned": scan.images_scanned,
            **{k: v for k, v in measured.items() if k != "timings"},
            "grids": {cls: str(p.relative_to(out)) for cls, p in grids.items()},
            "warnings": warnings,
        }
        _mark_chance(entry, model, name)
        timings = {"scan_s": scan.seconds, **measured["timings"], "total_s": time.perf_counter() - started}
        timings.update(estimate_cost(scan, {**measured, "timings": timings}, info.num_classes, images_per_class,
                                 pairs_per_class))
        entry["timings"] = timings
        entries.append(entry)
        lp = (entry["lpips_intra_class"] or {}).get("mean")
        agreement = (entry["teacher_agreement"] or {}).get("top1")
        passes = ((meta.get("cost") or {}).get("per_image") or {}).get("teacher_passes")
        where = f"{len(info.shards)} shard(s) verified" if each.verified else f"{each.source_format}, not verified"
        _log(f"{name}: {scan.images_scanned} images ({where}); LPIPS "
             f"{'-' if lp is None else f'{lp:.4f}'}, teacher top-1 {'-' if agreement is None else f'{agreement:.3f}'}"
             f"{'' if passes is None else f', made with {passes:.4g} teacher passes an image'}"
             f" ({timings['total_s']:.1f}s)", quiet)

    plots = _plots(out, entries, probs_by_name)
    report = {
        "tool": "dfgen report",
        "version": __version__,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "settings": {"pairs_per_class": pairs_per_class, "images_per_class": images_per_class,
                     "lpips_net": lpips_net, "device": str(torch_device), "seed": seed,
                     "teacher": teacher.source if isinstance(teacher, Teacher) else teacher,
                     "teacher_weights": None if teacher_weights is None else str(teacher_weights),
                     "judge": None if judge is None else judge.source},
        "datasets": entries,
        "plots": {key: str(path.relative_to(out)) for key, path in plots.items()},
    }
    if len(entries) > 1:
        report["comparison"] = {
            key if key != "judge" else f"judge_{field}": {e["name"]: (e.get(key) or {}).get(field) for e in entries}
            for key, field in (("lpips_intra_class", "mean"), ("feature_diversity", "mean"),
                               ("teacher_agreement", "top1"), ("teacher_agreement", "mean_target_prob"),
                               ("judge", "feature_diversity"), ("judge", "top1"))
        }
    report["seconds"] = time.perf_counter() - start_all
    write_html(report, out, plots, all_grids)
    _write_json(out / "report.json", report)
    _log(f"wrote {out / 'report.html'} and {out / 'report.json'}", quiet)
    return _json_safe(report)


def _mark_chance(entry: dict[str, Any], model: Teacher | None, name: str) -> None:
    """Flag a teacher agreement near chance (dfgen.chance): the teacher does not recognise the images as their
    classes, so what is measured in its embedding describes noise."""
    agreement = entry["teacher_agreement"]
    if model is None or not agreement:
        return
    agreement["chance_bound"] = chance_bound(model.num_classes, agreement["images"])
    agreement["near_chance"] = near_chance(agreement["top1"], model.num_classes, agreement["images"])
    if agreement["near_chance"]:
        entry["warnings"].append(
            f"teacher top-1 agreement {agreement['top1']:.3f} is near chance "
            f"({describe_chance(model.num_classes, agreement['images'])}): the teacher does not recognise these images "
            "as their classes, so the feature diversity describes noise")
        _log(f"warning: {name}: {entry['warnings'][-1]}", False)


def _plots(out: Path, entries: list[dict[str, Any]], probs_by_name: dict[str, list[float]]) -> dict[str, Path]:
    """The plots; classes on the x axis are those of the first dataset (datasets compared share them)."""
    classes = max((e["classes"] for e in entries), key=len)
    plots: dict[str, Path] = {}

    def series(get) -> dict[str, list[float | None]]:
        return {e["name"]: [get(e).get(c) if get(e) else None for c in classes] for e in entries}

    plots["class_counts"] = grouped_bars(out / "class_counts.png", "Images per class", "images", classes,
                                         series(lambda e: e["class_counts"]), integer=True)
    if any(e["lpips_intra_class"] for e in entries):
        plots["lpips_per_class"] = grouped_bars(
            out / "lpips_per_class.png", "Intra-class LPIPS (higher is more diverse)", "LPIPS", classes,
            series(lambda e: (e["lpips_intra_class"] or {}).get("per_class")))
    if any(e["feature_diversity"] for e in entries):
        plots["feature_diversity_per_class"] = grouped_bars(
            out / "feature_diversity_per_class.png", "Intra-class teacher feature diversity", "mean distance",
            classes, series(lambda e: (e["feature_diversity"] or {}).get("per_class")))
    if probs_by_name:
        plots["teacher_target_prob"] = histogram(
            out / "teacher_target_prob.png", "Teacher's probability of the target class", "p(target)",
            probs_by_name)
    return plots
