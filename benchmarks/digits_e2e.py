"""Digits end to end: what a ViT student learns from synthetic digits, tested on real
held-out digits. On 2 CPU cores: 20 to 27 minutes, depending on the machine's other load.

1. the bundled teacher's accuracy on the real held-out split (`teacher_acc`);
2. synthesize the same number of images with the same seed and budget twice: plain DeepInversion and with
   the boundary-preserving losses; `dfgen report` gives teacher agreement and intra-class diversity of both
   (`agreement`, `diversity`). A smaller third set uses the paper's literal, unbounded easy-positive loss at
   the same weights (`paper_ep_form`), measuring our one change to the paper's losses (the hinge with a reach,
   docs/design.md; both presets use it);
3. distill `dearkd_micro_patch4_32` on the boundary shards only and test it on the real held-out split
   (`student_synthetic_acc`); the ablation rows (`ablation`): the same student on the plain shards, the plain
   `deit_micro_patch4_32` control on the boundary shards, DearKD without the hidden loss, and DearKD trained on
   the real training split (`student_real_acc`).

The jobs run in `--jobs` processes of `--threads` threads each (two one-thread processes do ~1.4x the work of
one two-thread process on this machine's small models); the syntheses use the compiled teacher. Prints one JSON
line last.

    python -m benchmarks.digits_e2e [--out bench_out/digits] [-n 1000] [--epochs 40] [--jobs 2] [--no-compile]
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any

import torch

import distill
from benchmarks.jobs import Jobs, add_job_options
from dfgen.config import build_config as synthesis_config
from dfgen.dataset import INDEX_FILE, open_dataset
from dfgen.realdata import export_digits, write_image_dataset
from dfgen.report import make_report
from dfgen.synthesize import synthesize
from dfgen.teachers import load_teacher
from dfgen.zoo.digits import evaluate, load_digits_split

ROOT = Path(__file__).resolve().parents[1]
SYNTHESIS_PRESET = ROOT / "configs" / "digits.yaml"
DISTILL_PRESET = ROOT / "configs" / "distill_digits.yaml"

# name -> (student model, training data: a key of `data` in run(), overrides of the distill preset)
STUDENTS: dict[str, tuple[str, str, dict[str, Any]]] = {
    "dearkd_boundary": ("dearkd_micro_patch4_32", "boundary", {}),
    "dearkd_plain": ("dearkd_micro_patch4_32", "plain", {}),
    "deit_boundary": ("deit_micro_patch4_32", "boundary", {}),
    "dearkd_boundary_no_hidden": ("dearkd_micro_patch4_32", "boundary", {"hidden_weight": 0.0}),
    "dearkd_real_train": ("dearkd_micro_patch4_32", "real", {}),
}


def lpips_available() -> bool:
    home = Path(os.environ.get("TORCH_HOME", Path.home() / ".cache" / "torch"))
    return (home / "hub" / "checkpoints" / "alexnet-owt-7be5be79.pth").is_file()


def synthesize_job(out: Path, n: int, seed: int, schedule: str | None, compile_teacher: bool,
                   no_diversity: bool = False, unbounded_ep: bool = False) -> float:
    start = time.perf_counter()
    config = synthesis_config(SYNTHESIS_PRESET, n=n, seed=seed, out=str(out), schedule=schedule, quiet=True,
                              no_diversity=no_diversity, compile=compile_teacher)
    if unbounded_ep:
        config.losses.ep_reach = None  # the paper's -mean d(a, ep); None as an override would mean "not given"
    synthesize(config)
    return time.perf_counter() - start


def student_job(out: Path, shards: Path, val: Path, model: str, epochs: int | None,
                overrides: dict[str, Any]) -> dict[str, Any]:
    """The digits distill preset (teacher in stage 1) on `shards`; top-1 on `val` (EMA weights when the preset
    keeps an EMA)."""
    stage1 = None if epochs is None else max(1, round(epochs * 5 / 6))  # the paper's 250:50 split
    config = distill.build_config(DISTILL_PRESET, shards=[str(shards)], val=str(val), out=str(out), model=model,
                                  epochs=epochs, stage1_epochs=stage1, quiet=True, resume=True, eval_every=10,
                                  **overrides)
    start = time.perf_counter()
    distill.train(config)
    result = distill.evaluate_checkpoint(out / "last.pt", val, device="cpu", ema=config.ema)
    return {"top1": round(result["top1"], 2), "n": result["n"], "epochs": config.epochs,
            "train_images": open_dataset(shards).n,
            "stage1_epochs": config.stage1_epochs, "ema": config.ema, "seconds": round(time.perf_counter() - start)}


def synthetic_figures(entry: dict[str, Any]) -> dict[str, Any]:
    return {
        "agreement": entry["teacher_agreement"]["top1"],
        "mean_target_prob": round(entry["teacher_agreement"]["mean_target_prob"], 4),
        "feature_diversity": round(entry["feature_diversity"]["mean"], 4),
        "lpips": (entry.get("lpips_intra_class") or {}).get("mean"),
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    out, begin = args.out, time.perf_counter()
    teacher = load_teacher("digits")
    split = load_digits_split()
    teacher_acc = 100 * evaluate(teacher.model, split.test_images, split.test_labels)  # normalises itself
    real = out / "real"
    if not (real / "test" / INDEX_FILE).exists():
        export_digits(real)
    test, real_train = real / "test", real / "train"
    if args.real_train is not None:  # toy runs: the first N training digits
        real_train = out / f"real_train_{args.real_train}"
        pixels = (split.train_images[:args.real_train].clamp(0, 1) * 255).round().to(torch.uint8)
        write_image_dataset(real_train, pixels, split.train_labels[:args.real_train], {"num_classes": 10})
    data = {"boundary": out / "boundary", "plain": out / "plain", "paper_ep_form": out / "paper_ep_form",
            "real": real_train}
    paper_n = max(40, args.n // 5)  # agreement and diversity only: a fifth of the images is enough

    jobs = Jobs(args.jobs, args.threads)

    def submit_students(trained_on: str) -> None:
        for name, (model, data_name, overrides) in STUDENTS.items():
            if data_name == trained_on:
                jobs.submit(name, student_job, out / f"run_{name}", data[data_name], test, model, args.epochs,
                            overrides)

    try:
        # Longest first: the two syntheses the students wait for, the real-data student that waits for nothing.
        jobs.submit("synthesize_boundary", synthesize_job, data["boundary"], args.n, args.seed, args.schedule,
                    args.compile)
        jobs.submit("synthesize_plain", synthesize_job, data["plain"], args.n, args.seed, args.schedule,
                    args.compile, no_diversity=True)
        submit_students("real")
        jobs.result("synthesize_boundary")
        submit_students("boundary")
        jobs.result("synthesize_plain")
        submit_students("plain")
        jobs.submit("synthesize_paper_ep_form", synthesize_job, data["paper_ep_form"], paper_n, args.seed,
                    args.schedule, args.compile, unbounded_ep=True)
        students = {name: jobs.result(name) for name in STUDENTS}
        jobs.result("synthesize_paper_ep_form")
        seconds = {name: round(jobs.result(name)) for name in jobs.futures if name.startswith("synthesize")}
    finally:
        jobs.close()

    torch.set_num_threads(args.jobs * args.threads)
    start = time.perf_counter()
    report = make_report([data["boundary"], data["plain"], data["paper_ep_form"]], out / "report",
                         lpips_net="alex" if lpips_available() else None, quiet=True)
    seconds["report"] = round(time.perf_counter() - start)
    figures = {name: synthetic_figures(entry)
               for name, entry in zip(("boundary", "plain", "paper_ep_form"), report["datasets"], strict=True)}
    seconds.update({name: s["seconds"] for name, s in students.items()})
    seconds["total"] = round(time.perf_counter() - begin)
    synthesis = synthesis_config(SYNTHESIS_PRESET, n=args.n, schedule=args.schedule)
    student_synthetic_acc = students["dearkd_boundary"]["top1"]
    return {
        "benchmark": "digits_e2e",
        "n": args.n,
        "paper_ep_form_n": paper_n,
        "schedule": ",".join(f"{res}:{iters}" for res, iters in synthesis.schedule),
        "iterations_per_image": sum(iters for _, iters in synthesis.schedule),
        "student_epochs": students["dearkd_boundary"]["epochs"],
        "student_stage1_epochs": students["dearkd_boundary"]["stage1_epochs"],
        "student_ema": students["dearkd_boundary"]["ema"],
        "synthesis_compiled": args.compile,
        "jobs": args.jobs,
        "threads_per_job": args.threads,
        "teacher_acc": round(teacher_acc, 2),
        "agreement": {name: figures[name]["agreement"] for name in ("plain", "boundary", "paper_ep_form")},
        "diversity": {name: figures[name]["feature_diversity"] for name in ("plain", "boundary", "paper_ep_form")},
        "lpips": {name: figures[name]["lpips"] for name in ("plain", "boundary", "paper_ep_form")},
        "student_synthetic_acc": student_synthetic_acc,
        "student_real_acc": students["dearkd_real_train"]["top1"],
        "student_over_teacher": round(student_synthetic_acc / teacher_acc, 4),
        "ablation": {name: students[name]["top1"] for name in STUDENTS},
        "test_images": students["dearkd_boundary"]["n"],
        "real_train_images": students["dearkd_real_train"]["train_images"],
        "seconds": seconds,
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("bench_out/digits"))
    parser.add_argument("-n", type=int, default=1000, help="synthetic images per setting [1000]")
    parser.add_argument("--schedule", default=None, help="synthesis stages res:iters,... [the digits preset's]")
    parser.add_argument("--epochs", type=int, default=None, help="student epochs [the distill preset's]")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--real-train", type=int, default=None,
                        help="real training digits for the reference student [all 1347]")
    parser.add_argument("--compile", action=argparse.BooleanOptionalAction, default=True,
                        help="synthesize with the torch.compile'd teacher (~1.5x on CPU after a one-off compile) [on]")
    add_job_options(parser)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    result = run(parse_args(argv))
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
