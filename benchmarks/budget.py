"""The budget benchmark: student accuracy against synthesis cost, for the pixel mode and the amortized generator mode.

    python -m benchmarks.budget [--quick | --standard | --full] [--points pixels gen-k10-w8 ...]
        [--out bench_out/budget]

On MNIST's LeNet-5-BN teacher (benchmarks/published.py: trained on the real train split, cached by recipe), each
*point* synthesizes the same number of images with `dfgen synthesize` and teaches LeNet-5-half by plain KD (the
published benchmark's recipe and step budget) on them; each is tested on the real 10k test split. Per point: teacher
passes per image, teacher forwards per image, generator FLOPs per image (all three counted by dfgen as it runs and
read from dataset.json), total FLOPs per image (the teacher's FLOPs per pass and per forward are measured here with
torch's FLOP counter), synthesis wall time, teacher agreement and the student's accuracy. The syntheses run side by
side in one-thread processes in one run, so their wall times compare as ratios on the same machine.

Points are named: `pixels` (the default schedule) with optional suffixes `-itN` (N iterations in every stage of the
default schedule), `-lowN` (N iterations in its low-resolution stages, the last one as it is), `-esX` (early stop of a
stage at a relative improvement below X per window, `--early-stop`), `-ewN` (its window), `-lrX` (Adam's learning rate);
`gen-kK-wW` (generator mode, K adaptation steps per batch, width W) with optional suffixes `-lrX` (adaptation
learning rate), `-mX` (Reptile meta step), `-zX` (latent learning rate), `-wuN` (warm-up steps of a chain's first
batch), `-cN` (chains), `-bnX` (the BN statistics weight).

Generator points take the generator mode's BN weight (10) unless `-bnX` says otherwise.

Writes budget.png (accuracy against teacher passes per image) and prints one JSON line last, with its wall time.
--quick on a 2-core machine shared with other jobs (2026-12-06): the pixel set 1,250 s, each student 480-800 s, about
40 min in all with two jobs side by side; the figures are in docs/results.md ("Synthesis cost").
Every phase is cached under --out (results/*.json), so an interrupted run continues where it stopped."""

from __future__ import annotations

import argparse
import json
import re
import time
from pathlib import Path
from typing import Any

import torch

from benchmarks.jobs import Jobs, print_result
from benchmarks.phases import NETS, cached
from benchmarks.published import SETTINGS, export_job, kd_job, train_teacher_job

DATASETS = {"mnist": "mnist", "fashion": "fashion-mnist", "fashion-mnist": "fashion-mnist"}  # --dataset: its key
POINTS = ["pixels", "gen-k5-w8", "gen-k10-w8", "gen-k20-w8", "gen-k30-w8", "gen-k10-w4", "gen-k10-w16"]
SIZES = {  # synthetic images per point, LeNet-5-half's KD steps (published.py's budgets at these sizes)
    "toy": {"n": 40, "kd_steps": 2, "limit": 300, "teacher_epochs": 1},
    "quick": {"n": 500, "kd_steps": 2500},
    "standard": {"n": 2000, "kd_steps": 7000},
    "full": {"n": 24000, "kd_steps": 12000},
}
_PIXEL_KEYS = {"it": ("every_stage", int), "low": ("low_stages", int), "es": ("early_stop", float),
               "ew": ("early_stop_window", int), "lr": ("lr", float)}
_GENERATOR_KEYS = {"lr": ("gen_lr", float), "m": ("gen_meta_step", float), "z": ("gen_latent_lr", float),
                   "wu": ("gen_warmup_steps", int), "c": ("gen_chains", int), "bn": ("bn", float)}


def point_overrides(name: str, image_size: int = 28) -> dict[str, Any]:
    """dfgen.build_config overrides of a point's name (see the module's docstring) for a teacher of `image_size`."""
    match = re.fullmatch(r"pixels((?:-[a-z]+[0-9.e-]+?)*)", name)
    if match:
        return _settings(name, match.group(1), _PIXEL_KEYS, {}, image_size)
    match = re.fullmatch(r"gen-k(\d+)-w(\d+)((?:-[a-z]+[0-9.e-]+?)*)", name)
    if not match:
        raise ValueError(f"unknown point {name!r}: pixels[-itN][-lowN][-esX][-ewN][-lrX] or "
                         "gen-kK-wW[-lrX][-mX][-zX][-wuN][-cN][-bnX]")
    return _settings(name, match.group(3), _GENERATOR_KEYS,
                     {"mode": "generator", "gen_steps": int(match.group(1)), "gen_width": int(match.group(2))},
                     image_size)


def _settings(name: str, suffixes: str, keys: dict[str, tuple[str, type]], overrides: dict[str, Any],
              image_size: int) -> dict[str, Any]:
    from dfgen.config import default_schedule

    for key, value in re.findall(r"-([a-z]+)([0-9.e]+(?:-[0-9]+)?)", suffixes):
        if key not in keys:
            raise ValueError(f"unknown setting {key!r} in point {name!r}")
        field, kind = keys[key]
        overrides[field] = kind(value)
    stages = default_schedule(image_size)
    if "every_stage" in overrides:  # N iterations in every stage of the default schedule
        every = overrides.pop("every_stage")
        stages = [(size, every) for size, _ in stages]
    if "low_stages" in overrides:  # N iterations in every stage but the last
        low = overrides.pop("low_stages")
        stages = [(size, low) for size, _ in stages[:-1]] + stages[-1:]
    if stages != default_schedule(image_size):
        overrides["schedule"] = ",".join(f"{size}:{iterations}" for size, iterations in stages)
    return overrides


def synthesize_job(out: Path, teacher: dict[str, Any], n: int, overrides: dict[str, Any],
                   dataset: str = "mnist") -> dict[str, Any]:
    """One point's images, with the tool's defaults for this teacher given as the user's own model file."""
    import dfgen

    start = time.perf_counter()
    config = dfgen.build_config(None, teacher=f"{NETS}:{SETTINGS[dataset]['teacher']}",
                                teacher_weights=teacher["weights"], image_size=28, mean=teacher["mean"],
                                std=teacher["std"], n=n, out=str(out), quiet=True, **overrides)
    dfgen.synthesize(config)
    description = json.loads((out / "dataset.json").read_text())
    return {"path": str(out), "seconds": round(time.perf_counter() - start, 1), "cost": description["cost"],
            "agreement": description["stats"]["agreement"], "schedule": description["schedule"]}


def teacher_flops(teacher: dict[str, Any]) -> dict[str, int]:
    """FLOPs of one image through the teacher: forward only, and forward + backward to the input (a pass)."""
    from benchmarks.real_training import load_trained
    from dfgen.cost import measure_flops

    model = load_trained(teacher["weights"]).eval().requires_grad_(False)
    x = torch.zeros(1, 1, 28, 28, requires_grad=True)
    return {"forward": measure_flops(lambda: model(x), backward=False),
            "pass": measure_flops(lambda: model(x), backward=True)}


def plot(points: dict[str, dict[str, Any]], path: Path, n: int, title: str, student: str = "LeNet-5-half") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for name, p in points.items():
        ax.scatter(p["teacher_passes_per_image"], 100 * p["acc"], color="C0" if name.startswith("pixels") else "C1")
        ax.annotate(name, (p["teacher_passes_per_image"], 100 * p["acc"]), fontsize=7, xytext=(3, 3),
                    textcoords="offset points")
    ax.set_xscale("log")
    ax.set_xlabel("teacher passes per image (forward + backward to the input)")
    ax.set_ylabel(f"{student} top-1 on the real test split (%)")
    ax.set_title(f"{title}, {n:,} synthetic images per point")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def run(args: argparse.Namespace) -> dict[str, Any]:
    begin = time.perf_counter()
    size = SIZES[args.size]
    n = args.n or size["n"]
    kd_steps = args.kd_steps or size["kd_steps"]
    limit = size.get("limit")
    dataset = DATASETS[args.dataset]
    results = args.out / "results"
    # MNIST's files keep their first names (earlier runs' caches); another set's carry its name
    tag = "" if dataset == "mnist" else f"{dataset}-"
    first = "" if not limit else f"-first{limit}"
    work = args.out / f"{tag}{args.size}-n{n}"
    jobs = Jobs(args.jobs, args.threads)
    try:
        epochs = size.get("teacher_epochs", SETTINGS[dataset]["teacher_epochs"])
        teacher = cached(results / f"{tag}teacher{first}.json", train_teacher_job, SETTINGS[dataset]["teacher"],
                         dataset, epochs, args.out / "teachers", limit)
        real = cached(results / f"{tag}real{first}.json", export_job, dataset, args.out / f"{tag}real{first}", limit)
        for name in args.points:  # syntheses first, side by side in the same run: their wall times compare
            jobs.submit(f"syn_{name}", cached, work / "results" / f"syn_{name}.json", synthesize_job, work / name,
                        teacher, n, point_overrides(name), dataset)
        for name in sorted(args.points, key=lambda p: p.startswith("pixels")):  # the slow pixel set's student last
            path = jobs.result(f"syn_{name}")["path"]
            jobs.submit(f"kd_{name}", cached, work / "results" / f"kd_{name}-{kd_steps}.json", kd_job, teacher, path,
                        real["test"], kd_steps)
        flops = teacher_flops(teacher)
        points = {}
        for name in args.points:
            syn, kd = jobs.result(f"syn_{name}"), jobs.result(f"kd_{name}")
            per = syn["cost"]["per_image"]
            total = per["teacher_passes"] * flops["pass"] + per["teacher_forwards"] * flops["forward"] + \
                per["generator_flops"]
            points[name] = {"acc": kd["acc"], "agreement": round(syn["agreement"], 4),
                            "teacher_passes_per_image": per["teacher_passes"],
                            "teacher_forwards_per_image": per["teacher_forwards"],
                            "generator_flops_per_image": per["generator_flops"],
                            "total_flops_per_image": round(total),
                            "synthesis_seconds": syn["cost"]["seconds"], "synthesis_wall_seconds": syn["seconds"]}
        seconds = {name: jobs.result(name)["seconds"] for name in jobs.futures}
    finally:
        jobs.close()
    baseline = points.get("pixels")
    if baseline:
        for p in points.values():
            p["passes_vs_pixels"] = round(p["teacher_passes_per_image"] / baseline["teacher_passes_per_image"], 4)
            p["seconds_vs_pixels"] = round(p["synthesis_seconds"] / max(baseline["synthesis_seconds"], 1e-9), 4)
    png = work / "budget.png"
    plot(points, png, n, f"{dataset}, {SETTINGS[dataset]['teacher']} teacher")
    return {"benchmark": "budget", "dataset": dataset, "size": args.size, "n_images": n, "kd_steps": kd_steps,
            "teacher_acc": round(teacher["test_acc"], 4), "teacher_flops": flops, "points": points, "png": str(png),
            "seconds": {**seconds, "total_this_invocation": round(time.perf_counter() - begin)}}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("bench_out/budget"))
    parser.add_argument("--dataset", choices=sorted(DATASETS), default="mnist",
                        help="the teacher's data: its LeNet-5-BN teacher and real splits (published.py) [mnist]")
    size = parser.add_mutually_exclusive_group()
    parser.set_defaults(size="standard")
    for key in SIZES:
        size.add_argument(f"--{key}", dest="size", action="store_const", const=key,
                          help=f"{SIZES[key]['n']:,} images per point, {SIZES[key]['kd_steps']:,} KD steps")
    parser.add_argument("-n", type=int, default=None, help="synthetic images per point (overrides the size's)")
    parser.add_argument("--kd-steps", type=int, default=None, help="LeNet-5-half's KD steps (overrides the size's)")
    parser.add_argument("--points", nargs="+", default=POINTS, help=f"points to measure [{' '.join(POINTS)}]")
    parser.add_argument("--jobs", type=int, default=2, help="processes running jobs side by side [2]")
    parser.add_argument("--threads", type=int, default=1, help="threads per process [1]")
    args = parser.parse_args(argv)
    for name in args.points:
        try:
            point_overrides(name)
        except ValueError as exc:
            parser.error(str(exc))
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    return print_result(run, parse_args(argv))


if __name__ == "__main__":
    torch.multiprocessing.set_start_method("spawn", force=True)
    main()
