"""The CIFAR-10 data-free benchmark, sized for two CPU cores.

    python -m benchmarks.cifar10 [--toy | --quick] [--source ARCHIVE] [--seeds 0 1] [--sets boundary plain generator]
        [--out bench_out/cifar10]

1. The teacher, VGG-8-BN at width 32 (benchmarks/cifar_nets.py), and the report's judge (a small CNN without
   BatchNorm) are trained on the real train split with crops and flips (benchmarks/cifar_teacher.py: cached by a
   hash of the recipe, resumed after an interruption). The real splits are exported once (`dfgen export-real
   cifar10`): the whole train split, 1% of it, and as many images as the synthetic sets hold.
2. `dfgen synthesize` inverts the teacher, given as the user's own model file: N images with the boundary-preserving
   losses (`boundary`), N without them (`plain`: DeepInversion alone), both in the pixel mode, and N in the
   generator mode (`generator`: `--mode generator --gen-steps K`, with the boundary losses; K is the tool's 30 at
   the default size, 10 at --quick); `--sets` picks some of them. The cost counters of each (teacher passes per
   image) come from its dataset.json.
3. Students, tested on the real 10k test split: VGG-8-BN at half width by plain KD with the teacher online (the same
   steps and augmentation on every row; each synthetic set once per `--seeds` seed), on each synthetic set,
   the real train split, 1% of it and N real images; DearKD micro through `distill run` at 32 px on each synthetic
   set and on the real train split and 1% of it at the same steps. Each set's ratios to the real rows (TARGETS).
4. `dfgen report` on the synthetic sets: teacher agreement, diversity, the judge's top-1 and diversity. A grid of
   the first set's images (boundary, else the next given), one row per class, as grid.png.

Every phase is cached under --out/<size>/results (the real data under --out/real, the trained networks under
--out/teachers), so an interrupted run continues. Prints one JSON line last; `seconds` gives the wall time per
phase. The archive holds quality-75 JPEGs of CIFAR-10: its figures are close to, not equal to, figures on
CIFAR-10's own arrays.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path
from typing import Any

import torch

from benchmarks.cifar10_phases import (
    JUDGE,
    KD_RECIPE,
    STUDENT,
    TEACHER,
    class_grid,
    distill_job,
    export_job,
    kd_job,
    report_job,
    synthesis_options,
    synthesize_job,
    trained_net,
)
from benchmarks.jobs import Jobs, add_job_options, print_result
from benchmarks.phases import SOFT_KEY, cached, dataset_size

ROOT = Path(__file__).resolve().parents[1]
ARCHIVE = ROOT.parent / "shared" / "data" / "cifar10-jpg.tar.gz"  # where a checkout beside the shared data finds it
# The published ResNet-34 -> ResNet-18 figures on CIFAR-10 (top-1 of the data-free student, synthesis + training time
# on GPUs): theirs, in a different and larger setting (a 21M-parameter teacher, 50,000 images, hundreds of epochs).
PUBLISHED = {
    "setting": "theirs: ResNet-34 teacher -> ResNet-18 student on CIFAR-10's own arrays, GPU hours (the "
               "Fast-Datafree README; SpaceshipNet its paper); not comparable in size with this benchmark",
    "DeepInversion-2k": {"top1": 0.9326, "hours": 42.1},
    "CMI": {"top1": 0.9484, "hours": 19.0},
    "Fast-10": {"top1": 0.9405, "hours": 0.28},
    "SpaceshipNet": {"top1": 0.9539, "hours": None},
}
JPEG_CAVEAT = ("the real data are quality-75 JPEGs of CIFAR-10 (close to, not equal to, its arrays): accuracies here "
               "stand beside published CIFAR-10 figures only with that caveat")
TARGETS = {"cnn_over_real_same_n": 0.85, "cnn_over_real_full": 0.9, "dearkd_over_real_same_steps": 0.85}
SIZES = {  # synthetic images per set, iterations per stage (8:, 16:, 32:), KD steps, DearKD epochs, networks' epochs
    "toy": {"n": 20, "iterations": 2, "kd_steps": 2, "distill_epochs": 1, "gen_steps": 2, "gen_warmup_steps": 2,
            "teacher_epochs": 1, "judge_epochs": 1, "limit": 300},
    "quick": {"n": 500, "iterations": 50, "kd_steps": 200, "distill_epochs": 6, "gen_steps": 10},
    "default": {"n": 2000, "iterations": 200, "kd_steps": 1000, "distill_epochs": 20, "gen_steps": 30},
}
NETWORK_EPOCHS = {"teacher_epochs": 6, "judge_epochs": 5}  # the real-data networks of --quick and the default
GEN_WIDTH = 8
SYNTHETIC = ("boundary", "plain", "generator")


def source_of(args: argparse.Namespace) -> str | None:
    """--source, else $DFGEN_CIFAR10, else the shared archive beside the checkout if it is there."""
    if args.source or os.environ.get("DFGEN_CIFAR10"):
        return args.source
    return str(ARCHIVE) if ARCHIVE.is_file() else None


def run(args: argparse.Namespace) -> dict[str, Any]:
    begin = time.perf_counter()
    settings = {**NETWORK_EPOCHS, "limit": None, **SIZES[args.size]}
    n, limit, source = args.n or settings["n"], settings["limit"], source_of(args)
    iterations = settings["iterations"]
    schedule = f"8:{iterations},16:{iterations},32:{iterations}"
    name = args.size + (f"-n{n}" if args.n else "")
    out = args.out / name
    results = out / "results"
    shared = args.out / ("real" + (f"-first{limit}" if limit else ""))
    networks = args.out / "teachers"  # the teacher and the judge, cached by recipe
    seeds = sorted(set(args.seeds))
    jobs = Jobs(args.jobs, args.threads)
    try:
        jobs.submit("teacher", cached, results / "teacher.json", trained_net, TEACHER, source,
                    settings["teacher_epochs"], networks, limit)
        jobs.submit("judge", cached, results / "judge.json", trained_net, JUDGE, source, settings["judge_epochs"],
                    networks, limit)
        real = cached(shared / "export.json", export_job, source, shared, {"real_1pct": 0.01}, limit)
        train_count = dataset_size(real["real_kd"])
        same_n = f"real_n{n}"
        fraction = min(1.0, n / train_count)
        if abs(fraction - 0.01) < 1e-9:  # N images are the 1% share: the same stratified draw
            real[same_n] = real["real_1pct"]
        else:
            real.update(cached(shared / f"export_{same_n}.json", export_job_fraction, source, shared, same_n,
                               fraction, limit))
        teacher = jobs.result("teacher")
        warmup = {"gen_warmup_steps": settings["gen_warmup_steps"]} if "gen_warmup_steps" in settings else {}
        sets = [key for key in SYNTHETIC if key in args.sets]
        modes = {"boundary": (False, None), "plain": (True, None),
                 "generator": (False, {"mode": "generator", "gen_steps": settings["gen_steps"],
                                       "gen_width": GEN_WIDTH, **warmup})}
        for key, (plain, mode) in ((key, modes[key]) for key in sets):
            jobs.submit(f"synthesize_{key}", cached, results / f"synthesize_{key}.json", synthesize_job, out / key,
                        synthesis_options(teacher, n, plain, schedule, mode))
        steps = args.kd_steps or settings["kd_steps"]
        kd_key = f"{KD_RECIPE}{steps}"
        real_rows = ["real_kd", "real_1pct"] + ([same_n] if real[same_n] != real["real_1pct"] else [])
        rows: list[tuple[str, int]] = [(key, 0) for key in real_rows]
        rows += [(key, seed) for key in sets for seed in seeds]
        train = {key: real[key] for key in ("real_kd", "real_1pct", same_n)}
        for key, seed in rows:
            if key in SYNTHETIC and key not in train:
                train[key] = jobs.result(f"synthesize_{key}")["path"]
            row = f"{key}-s{seed}"
            jobs.submit(f"kd_{row}", cached, results / f"{STUDENT}_{row}-{kd_key}.json", kd_job, teacher,
                        train[key], real["test"], steps, seed, out / "students" / f"{STUDENT}_{row}-{kd_key}.pt")
        synthetic = {key: jobs.result(f"synthesize_{key}") for key in sets}
        epochs = settings["distill_epochs"]
        distill_key = f"e{epochs}-{SOFT_KEY}"
        dearkd_rows = () if args.no_dearkd else (*sets, "real_kd", "real_1pct")
        for key in dearkd_rows:
            steps_like = n if key.startswith("real") else None
            jobs.submit(f"dearkd_{key}", cached, results / f"dearkd_micro_{key}-{distill_key}.json", distill_job,
                        out / f"run_dearkd_{key}-{distill_key}", train[key], real["test"],
                        synthetic[sets[0]]["path"], epochs, steps_like)
        judge = jobs.result("judge")
        jobs.submit("report", cached, results / "report.json", report_job, out / "report",
                    {key: synthetic[key]["path"] for key in sets}, judge)
        grid = class_grid(synthetic[sets[0]]["path"], out / "grid.png")
        kd = {f"{key}-s{seed}": jobs.result(f"kd_{key}-s{seed}") for key, seed in rows}
        kd.setdefault(f"{same_n}-s0", kd["real_1pct-s0"])  # N images are the 1% share: one row serves both
        dearkd = {key: jobs.result(f"dearkd_{key}")["acc"] for key in dearkd_rows}
        report = jobs.result("report")
        seconds = {name: jobs.result(name)["seconds"] for name in jobs.futures}
    finally:
        jobs.close()
    seconds["export"] = real["seconds"]
    seconds["total_this_invocation"] = round(time.perf_counter() - begin)
    students = summarize(kd, seeds, same_n, sets)
    return {
        "benchmark": "cifar10",
        "mode": args.size,
        "n_images": n,
        "sets": sets,
        "schedule": synthetic[sets[0]]["schedule"],
        "generator": {"gen_steps": settings["gen_steps"], "gen_width": GEN_WIDTH},
        "teacher": {"net": TEACHER, "epochs": teacher["epochs"], "test_acc": round(teacher["test_acc"], 4),
                    "train_seconds": teacher["train_seconds"], "per_class": teacher["per_class"]},
        "judge": {"net": JUDGE, "test_acc": round(judge["test_acc"], 4)},
        "student": STUDENT,
        "kd_steps": steps,
        "kd_recipe": KD_RECIPE,
        "seeds": seeds,
        "students": {STUDENT: students, "dearkd_micro": dearkd},
        "per_class": {row: result["per_class"] for row, result in kd.items()},
        "ratios": {key: ratios(key, students, dearkd, same_n) for key in sets},
        "targets": TARGETS,
        "cost": {key: synthetic[key]["cost"] for key in sets},
        "synthesis_seconds": {key: synthetic[key]["seconds"] for key in sets},
        "agreement": {key: report[key]["agreement"] for key in sets},
        "diversity": {key: report[key]["teacher_feature_diversity"] for key in sets},
        "judge_top1": {key: report[key]["judge_top1"] for key in sets},
        "judge_diversity": {key: report[key]["judge_feature_diversity"] for key in sets},
        "grid": grid,
        "published": PUBLISHED,
        "caveat": JPEG_CAVEAT,
        "seconds": seconds,
    }


def export_job_fraction(source: str | None, shared: Path, key: str, fraction: float,
                        limit: int | None) -> dict[str, Any]:
    """One more stratified share of the real train split (as many images as a synthetic set), beside the others."""
    result = export_job(source, shared, {key: fraction}, limit, whole=False)
    return {key: result[key]}


def summarize(kd: dict[str, dict[str, Any]], seeds: list[int], same_n: str, sets: list[str]) -> dict[str, Any]:
    """The KD student's rows: each synthetic set's top-1 per seed and their mean; the real rows' (seed 0)."""
    students: dict[str, Any] = {}
    for key in sets:
        accs = [kd[f"{key}-s{seed}"]["acc"] for seed in seeds]
        students[key] = {"seeds": accs, "mean": round(sum(accs) / len(accs), 4)}
    for key in ("real_kd", "real_1pct", same_n):
        students[key] = kd[f"{key}-s0"]["acc"]
    return students


def ratios(key: str, students: dict[str, Any], dearkd: dict[str, float], same_n: str) -> dict[str, float | None]:
    """Synthetic set `key`'s rows over their real references (TARGETS)."""
    def share(a: float | None, b: float | None) -> float | None:
        return round(a / b, 4) if a is not None and b else None

    mean = students[key]["mean"]
    return {"cnn_over_real_same_n": share(mean, students[same_n]),
            "cnn_over_real_full": share(mean, students["real_kd"]),
            "dearkd_over_real_same_steps": share(dearkd.get(key), dearkd.get("real_kd"))}


def positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("bench_out/cifar10"))
    parser.add_argument("--source", default=None,
                        help="the CIFAR-10 JPEG archive or torchvision's cifar-10-batches-py folder [$DFGEN_CIFAR10, "
                             "else ../shared/data/cifar10-jpg.tar.gz]")
    size = parser.add_mutually_exclusive_group()
    parser.set_defaults(size="default")
    size.add_argument("--quick", dest="size", action="store_const", const="quick",
                      help="500 images of 50 iterations a stage, 200 KD steps (about 19 min on 2 quiet cores once "
                           "the teacher, the judge and the real data are cached)")
    size.add_argument("--toy", dest="size", action="store_const", const="toy",
                      help="300 real images, 20 synthetic, one-epoch networks: the path, for tests")
    parser.add_argument("-n", type=positive, default=None, help="synthetic images per set [2,000; --quick 500]")
    parser.add_argument("--kd-steps", type=positive, default=None,
                        help="the KD student's optimizer steps on every row [1,000; --quick 200]")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1],
                        help="KD student seeds of every synthetic set [0 1]")
    parser.add_argument("--sets", nargs="+", choices=SYNTHETIC, default=list(SYNTHETIC),
                        help="synthetic sets to make and teach from: boundary and plain (the pixel mode with and "
                             "without the boundary losses), generator (the generator mode, the tool's default at "
                             "32 px) [all three]")
    parser.add_argument("--no-dearkd", action="store_true", help="skip the DearKD micro student")
    add_job_options(parser)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    return print_result(run, parse_args(argv))


if __name__ == "__main__":
    torch.multiprocessing.set_start_method("spawn", force=True)
    main()
