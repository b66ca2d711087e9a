"""The budget benchmark: student accuracy against synthesis cost, for the pixel mode, its levers and the amortized
generator mode.

    python -m benchmarks.budget [--quick | --standard | --full | --toy] [--dataset mnist|fashion]
        [--teacher digits_cnn|resnet18_digits|lenet5_bn_mnist|vgg_bn_mnist] [--points pixels gen-k10-w8 ...]
        [--students lenet5_half small_cnn dearkd_micro] [--out bench_out/budget]

The teacher is published.py's LeNet-5-BN on MNIST or Fashion-MNIST (trained on the real train split, cached by
recipe), or with --teacher one of the transfer matrix's four (transfer.py), given to dfgen as the user's own model.
Each *point* synthesizes the same number of images with `dfgen synthesize`; each student learns from them (LeNet-5-half
by plain KD under published.py's recipe and step budget, small_cnn under transfer.py's, DearKD micro through `distill
run`; benchmarks/budget_setups.py) and from as many real train images under the same recipe (the reference row, and
each point's `ratio_to_real`), and is tested on the real test split. Per point: teacher passes per image, teacher
forwards per image, generator FLOPs per image (all three counted by dfgen as it runs and read from dataset.json), total
FLOPs per image (the teacher's FLOPs per pass and per forward are measured here with torch's FLOP counter), synthesis
wall time, teacher agreement and the students' accuracy. The syntheses run side by side in one-thread processes in
one run, so their wall times compare as ratios on the same machine.

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

from benchmarks.budget_setups import STUDENTS, published_setup, student_job, transfer_setup
from benchmarks.jobs import Jobs, add_job_options, print_result
from benchmarks.phases import cached
from benchmarks.transfer import TEACHERS

DATASETS = {"mnist": "mnist", "fashion": "fashion-mnist", "fashion-mnist": "fashion-mnist"}  # --dataset: its key
POINTS = ["pixels", "gen-k5-w8", "gen-k10-w8", "gen-k20-w8", "gen-k30-w8", "gen-k10-w4", "gen-k10-w16"]
SIZES = {  # synthetic images per point, LeNet-5-half's KD steps, DearKD's epochs (published.py's at these sizes)
    "toy": {"n": 40, "kd_steps": 2, "limit": 300, "teacher_epochs": 1, "distill_epochs": 1},
    "quick": {"n": 500, "kd_steps": 2500, "distill_epochs": 10},
    "standard": {"n": 2000, "kd_steps": 7000, "distill_epochs": 40},
    "full": {"n": 24000, "kd_steps": 12000, "distill_epochs": None},
}
_PIXEL_KEYS = {"it": ("every_stage", int), "low": ("low_stages", int), "es": ("early_stop", float),
               "ew": ("early_stop_window", int), "lr": ("lr", float)}
_GENERATOR_KEYS = {"lr": ("gen_lr", float), "m": ("gen_meta_step", float), "z": ("gen_latent_lr", float),
                   "wu": ("gen_warmup_steps", int), "c": ("gen_chains", int), "bn": ("bn", float)}


def point_overrides(name: str, image_size: int = 28) -> dict[str, Any]:
    """dfgen.build_config overrides of a point's name (see the module's docstring) for a teacher of `image_size`."""
    match = re.fullmatch(r"pixels((?:-[a-z]+[0-9.e-]+?)*)", name)
    if match:
        return _settings(name, match.group(1), _PIXEL_KEYS, {"mode": "pixels"}, image_size)
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


def synthesize_job(out: Path, options: dict[str, Any]) -> dict[str, Any]:
    """One point's images (`options`: dfgen.build_config keywords), with what dfgen counted as it made them."""
    import dfgen

    start = time.perf_counter()
    dfgen.synthesize(dfgen.build_config(None, out=str(out), quiet=True, **options))
    description = json.loads((out / "dataset.json").read_text())
    return {"path": str(out), "seconds": round(time.perf_counter() - start, 1), "cost": description["cost"],
            "agreement": description["stats"]["agreement"], "schedule": description["schedule"]}


def teacher_flops(teacher: dict[str, Any]) -> dict[str, int]:
    """FLOPs of one image through the teacher: forward only, and forward + backward to the input (a pass)."""
    from benchmarks.transfer import load_model
    from dfgen.cost import measure_flops

    model = load_model(teacher).eval().requires_grad_(False)
    size = teacher["image_size"]
    x = torch.zeros(1, 1, size, size, requires_grad=True)
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
    limit, toy = size.get("limit"), args.size == "toy"
    results = args.out / "results"
    if args.teacher:
        setup = transfer_setup(args.teacher, n, args.out, results, toy)
    else:
        setup = published_setup(DATASETS[args.dataset], n, args.out, results, limit, size.get("teacher_epochs"))
    work = args.out / f"{setup.tag}{args.size}-n{n}"
    jobs = Jobs(args.jobs, args.threads)
    try:
        for name in args.points:  # syntheses first, side by side in the same run: their wall times compare
            jobs.submit(f"syn_{name}", cached, work / "results" / f"syn_{name}.json", synthesize_job, work / name,
                        setup.synthesis(n, point_overrides(name, setup.teacher["image_size"])))
        any_set = jobs.result(f"syn_{args.points[0]}")["path"]  # DearKD's real row takes the teacher a set records
        for student in args.students:  # the reference: as many real images, the same recipe
            key, job = student_job(setup, student, setup.real_n, any_set, work / f"run_{student}_real", kd_steps,
                                   size.get("distill_epochs"), toy)
            jobs.submit(f"{student}_real", cached, work / "results" / f"{student}_real-{key}.json", *job)
        for name in sorted(args.points, key=lambda p: p.startswith("pixels")):  # the slow pixel set's students last
            path = jobs.result(f"syn_{name}")["path"]
            for student in args.students:
                key, job = student_job(setup, student, path, path, work / f"run_{student}_{name}", kd_steps,
                                       size.get("distill_epochs"), toy)
                # LeNet-5-half's files keep their first names (earlier runs' caches)
                file = f"kd_{name}-{kd_steps}" if student == "lenet5_half" else f"{student}_{name}-{key}"
                jobs.submit(f"{student}_{name}", cached, work / "results" / f"{file}.json", *job)
        flops = teacher_flops(setup.teacher)
        real = {student: jobs.result(f"{student}_real")["acc"] for student in args.students}
        points = {name: point_figures(jobs, name, args.students, real, flops) for name in args.points}
        seconds = {name: jobs.result(name)["seconds"] for name in jobs.futures}
    finally:
        jobs.close()
    baseline = points.get("pixels")
    if baseline:
        for p in points.values():
            p["passes_vs_pixels"] = round(p["teacher_passes_per_image"] / baseline["teacher_passes_per_image"], 4)
            p["seconds_vs_pixels"] = round(p["synthesis_seconds"] / max(baseline["synthesis_seconds"], 1e-9), 4)
    png = work / "budget.png"
    plot(points, png, n, setup.title, args.students[0])
    return {"benchmark": "budget", "dataset": setup.data, "teacher": args.teacher or setup.teacher["teacher"],
            "size": args.size, "n_images": n, "kd_steps": kd_steps, "students": args.students,
            "teacher_acc": round(setup.teacher["test_acc"], 4), "teacher_flops": flops,
            "real_reference": {"images": n, **real}, "points": points, "png": str(png),
            "seconds": {**seconds, "total_this_invocation": round(time.perf_counter() - begin)}}


def point_figures(jobs: Jobs, name: str, students: list[str], real: dict[str, float],
                  flops: dict[str, int]) -> dict[str, Any]:
    """A point's cost (counted by dfgen, in dataset.json) and its students' accuracy, also as a ratio to the same
    student taught on as many real images; `acc` is the first student's."""
    syn = jobs.result(f"syn_{name}")
    per = syn["cost"]["per_image"]
    total = per["teacher_passes"] * flops["pass"] + per["teacher_forwards"] * flops["forward"] + \
        per["generator_flops"]
    accs = {student: jobs.result(f"{student}_{name}")["acc"] for student in students}
    return {"acc": accs[students[0]], "students": accs,
            "ratio_to_real": {s: round(acc / max(real[s], 1e-9), 4) for s, acc in accs.items()},
            "agreement": round(syn["agreement"], 4), "teacher_passes_per_image": per["teacher_passes"],
            "teacher_forwards_per_image": per["teacher_forwards"], "generator_flops_per_image": per["generator_flops"],
            "total_flops_per_image": round(total), "synthesis_seconds": syn["cost"]["seconds"],
            "synthesis_wall_seconds": syn["seconds"]}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("bench_out/budget"))
    parser.add_argument("--dataset", choices=sorted(DATASETS), default="mnist",
                        help="the teacher's data: its LeNet-5-BN teacher and real splits (published.py) [mnist]")
    parser.add_argument("--teacher", choices=sorted(TEACHERS), default=None,
                        help="a teacher of the transfer matrix (transfer.py) instead of --dataset's")
    parser.add_argument("--students", nargs="+", choices=STUDENTS, default=None,
                        help="students of each point and of the real reference [lenet5_half; --teacher: small_cnn]")
    size = parser.add_mutually_exclusive_group()
    parser.set_defaults(size="standard")
    for key in SIZES:
        size.add_argument(f"--{key}", dest="size", action="store_const", const=key,
                          help=f"{SIZES[key]['n']:,} images per point, {SIZES[key]['kd_steps']:,} KD steps")
    parser.add_argument("-n", type=int, default=None, help="synthetic images per point (overrides the size's)")
    parser.add_argument("--kd-steps", type=int, default=None, help="LeNet-5-half's KD steps (overrides the size's)")
    parser.add_argument("--points", nargs="+", default=POINTS, help=f"points to measure [{' '.join(POINTS)}]")
    add_job_options(parser)
    args = parser.parse_args(argv)
    args.students = args.students or (["small_cnn"] if args.teacher else ["lenet5_half"])
    if args.teacher and "lenet5_half" in args.students and TEACHERS[args.teacher]["data"] == "digits":
        parser.error(f"lenet5_half takes 28 px images; {args.teacher} is a 32 px digits teacher: use small_cnn")
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
