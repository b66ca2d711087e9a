"""The transfer matrix: does the tool's data teach a student of another architecture, for teachers
nobody tuned for, with the defaults alone?

    python -m benchmarks.transfer [--n 1000] [--out bench_out/transfer] [--variants before upsample crops plain]
        [--mode generator]

Teachers of six families, each trained by the benchmarks on the real data they have (cached by a hash of the
recipe; benchmarks/real_training.py), handed to `dfgen synthesize` as the user's own model file with nothing but
`--teacher`, its weights, image size and normalization (no schedule, no loss weights, no flip setting):

    digits_cnn       the bundled digits CNN (32x32 scikit-learn digits)       `--teacher digits`
    resnet18_digits  a ResNet-18-style net on the same digits (a user's own teacher)
    lenet5_bn_mnist  LeNet-5 with BatchNorm on MNIST (28x28; a fixed-size teacher)
    vgg_bn_mnist     a VGG-style net with BatchNorm and a flatten-and-Linear head on MNIST (fixed size)
    resnet18_stock_digits     torchvision's resnet18 as users fine-tune it (7x7/2 stem, max-pool; one channel)
    mobilenetv3_stock_digits  timm's mobilenetv3_small_100 with in_chans=1 (benchmarks/stock_nets.py; random init)

Each teacher's N synthetic images teach two students of other families, tested on the real held-out split:
`small_cnn` (no BatchNorm) by plain KD with the teacher online and cutmix (benchmarks/kd_training.py, KD_STEPS
steps) and DearKD micro through `distill run` (the digits / MNIST presets sized for ~1,000 images); a third cell,
`small_cnn_kd_plain`, is what a user's own script does: the same KD with 2-px shifts only (no box mixing). The
reference row is the same student, the same teacher and the same number of steps on the real train split. The
targets: every data-free cell >= 85% of its reference (>= 70% under plain KD). `--variants` adds small_cnn cells for
other synthesis settings on the `--variant-teachers`: `before`, the previous defaults (the paper's loss form, flips
on, fixed reach 0.3 / margin 0.5; the old two-stage schedule cannot run on the fixed-size teachers, so the new one
is kept); `upsample` / `native`, the multi-resolution mode forced; `crops`, in-loop random-resized crops
(`--crop-min-scale 0.25`); `plain`, DeepInversion without the diversity terms. `--stored-soft-labels` adds DearKD
micro cells without the teacher (so without the hidden loss): from the logits stored on each whole image, and from
16 stored crops per image replayed exactly (FKD-style, `dfgen synthesize --soft-views`). `--mode generator` makes
every teacher's set in dfgen's generator mode instead (`--mode generator --gen-steps 30`: about a twentieth of the
pixel mode's teacher passes), beside the default sets in the same --out (the real rows are shared); each row
records the teacher passes per image dfgen counted.

Every phase is cached under --out (an interrupted run continues). Prints one JSON line last with the wall time of
each phase.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import torch

from benchmarks.jobs import Jobs, add_job_options, print_result
from benchmarks.phases import (
    NETS,
    SMALL_SET_DISTILL,
    SOFT_KEY,
    SOFT_TARGETS,
    STOCK_NETS,
    cached,
    distill_phase,
    kd_phase,
    since,
    synthesize_phase,
    teacher_phase,
)

ROOT = Path(__file__).resolve().parents[1]
KD_STEPS = 1000  # small_cnn by KD with cutmix (batch 128), the same budget for the synthetic and the real row
TARGET = 0.85
TARGET_PLAIN = 0.7  # plain KD (shifts only): no box mixing to widen a small synthetic set
TEACHERS: dict[str, dict[str, Any]] = {
    "digits_cnn": {"data": "digits", "factory": None},
    "resnet18_digits": {"data": "digits", "factory": "resnet18_small", "epochs": 30},
    "lenet5_bn_mnist": {"data": "mnist", "factory": "lenet5_bn", "epochs": 8},
    "vgg_bn_mnist": {"data": "mnist", "factory": "vgg_bn_small", "epochs": 5},
    "resnet18_stock_digits": {"data": "digits", "factory": "resnet18_stock", "epochs": 12, "nets": STOCK_NETS},
    "mobilenetv3_stock_digits": {"data": "digits", "factory": "mobilenetv3_stock", "epochs": 12, "nets": STOCK_NETS},
}
# DearKD micro for ~1,000 images: the digits preset's small-batch recipe at the data's own size (MNIST: soft
# distillation without RandAugment or cutmix), and the recipe's tag in its row files (a new recipe is a new row)
DISTILL = {
    "digits": (ROOT / "configs" / "distill_digits.yaml", {}, ""),
    "mnist": (ROOT / "configs" / "distill_mnist.yaml", SMALL_SET_DISTILL, f"-{SOFT_KEY}"),
}
VARIANTS: dict[str, dict[str, Any]] = {  # build_config keywords on top of the user's minimum
    "before": {"form": "paper", "flip": True, "ep_reach": 0.3, "margin": 0.5},
    "upsample": {"multires": "upsample"},
    "native": {"multires": "native"},
    "crops": {"crop_min_scale": 0.25},
    "plain": {"no_diversity": True},
}
# --stored-soft-labels: the same images (same seed) with the teacher's logits on 16 stored crops each, of the digits and
# MNIST presets' crop scale (0.6-1), for the FKD-style row that replays them (dfgen --soft-views)
STORED_VIEWS = {"soft_views": 16, "soft_view_min_scale": 0.6}
# the teacher-free rows' recipe: soft distillation (a hard target is the stored argmax, almost always the label) and no
# RandAugment or cutmix (they change the image, not its stored target): on 500 digits 79.8% against 28.7% under the
# preset's hard distillation, RandAugment and cutmix (docs/design.md): phases.py's SOFT_TARGETS, which published.py's
# DearKD rows use online too
# --mode: the synthesis settings of every teacher's set, and the prefix of its files (the default sets keep their names)
MODES: dict[str, tuple[dict[str, Any], str]] = {
    "pixels": ({"mode": "pixels"}, ""),
    "generator": ({"mode": "generator", "gen_steps": 30, "gen_width": 8}, "gen30-"),
}
TOY = {"n": 20, "schedule": "2", "kd_steps": 2, "teacher_epochs": 1,  # the whole path in seconds, for tests
       "distill": {"epochs": 1, "stage1_epochs": 1, "batch_size": 8, "eval_every": 1}}


def digits_data():
    from benchmarks.real_training import RealData
    from dfgen.zoo.digits import load_digits_split

    split = load_digits_split()
    as_bytes = [(images * 255).round().to(torch.uint8) for images in (split.train_images, split.test_images)]
    return RealData("digits", as_bytes[0], split.train_labels, as_bytes[1], split.test_labels)


def export_job(data: str, out: Path) -> dict[str, Any]:
    from dfgen.realdata import export_digits, export_real

    start = time.perf_counter()
    train, test = export_digits(out) if data == "digits" else export_real(data, out)
    return {"train": str(train), "test": str(test), "seconds": since(start)}


def teacher_job(key: str, cache: Path, epochs: int | None = None) -> dict[str, Any]:
    """The teacher's weights, normalization and real test accuracy (the bundled digits CNN as shipped)."""
    spec = TEACHERS[key]
    if spec["factory"] is None:
        from dfgen.teachers import load_teacher
        from dfgen.zoo.digits import evaluate

        start = time.perf_counter()
        teacher = load_teacher("digits")
        data = digits_data()
        acc = evaluate(teacher.model, data.test_images, data.test_labels, mean=teacher.mean, std=teacher.std)
        return {"teacher": "digits", "weights": None, "mean": list(teacher.mean), "std": list(teacher.std),
                "image_size": 32, "test_acc": acc, "seconds": since(start)}
    dataset = digits_data() if spec["data"] == "digits" else spec["data"]
    nets = spec.get("nets", NETS)
    trained = teacher_phase(spec["factory"], dataset, epochs or spec["epochs"], cache, nets)
    return {"teacher": f"{nets}:{spec['factory']}", "weights": trained["weights"], "mean": trained["mean"],
            "std": trained["std"], "image_size": 32 if spec["data"] == "digits" else 28,
            "test_acc": trained["test_acc"], "seconds": trained["seconds"]}


def load_model(teacher: dict[str, Any]) -> torch.nn.Module:
    from dfgen.teachers import load_teacher

    return load_teacher(teacher["teacher"], teacher["weights"], image_size=teacher["image_size"],
                        mean=teacher["mean"], std=teacher["std"]).model


def synthesis_options(teacher: dict[str, Any], n: int, settings: dict[str, Any] | None = None,
                      iterations: str | None = None) -> dict[str, Any]:
    """`dfgen synthesize` with only what a user must give: the teacher, its weights, size and normalization."""
    # shards of 200 images (packaging only): an interrupted run resumes at the last finished shard
    options: dict[str, Any] = {"teacher": teacher["teacher"], "n": n, "shard_size": 200 if n >= 400 else None}
    if teacher["weights"]:
        options.update(teacher_weights=teacher["weights"], image_size=teacher["image_size"], mean=teacher["mean"],
                       std=teacher["std"])
    options.update(settings or {})
    if iterations:  # toy runs only: the default schedule's stages, `iterations` each
        from dfgen.config import default_schedule

        stages = default_schedule(teacher["image_size"])
        options.update(schedule=",".join(f"{size}:{iterations}" for size, _ in stages), warmup=1)
    return options


def kd_job(teacher: dict[str, Any], train: str, test: str, steps: int) -> dict[str, Any]:
    """small_cnn by plain KD with the teacher online, `steps` optimizer steps with cutmix."""
    return kd_phase("small_cnn", load_model, teacher, train, test, steps, "kd-cutmix", cutmix=True)


def kd_plain_job(teacher: dict[str, Any], train: str, test: str, steps: int) -> dict[str, Any]:
    """small_cnn by plain KD with the teacher online, `steps` optimizer steps, 2-px shifts only."""
    return kd_phase("small_cnn", load_model, teacher, train, test, steps, "kd-plain")


def distill_job(out: Path, data: str, train: str, test: str, teacher_from: str,
                steps_like: int | None = None, toy: bool = False, soft_labels: str = "online") -> dict[str, Any]:
    """DearKD micro through `distill run`, the teacher the synthetic set records (for the real row too); with
    stored soft labels under SOFT_TARGETS."""
    preset, overrides, _ = DISTILL[data]
    recipe = SOFT_TARGETS if soft_labels == "stored" else {}
    overrides = {**overrides, **recipe, **(TOY["distill"] if toy else {}), "soft_labels": soft_labels}
    return distill_phase(out, preset, overrides, train, test, teacher_from, steps_like)


def run(args: argparse.Namespace) -> dict[str, Any]:
    begin = time.perf_counter()
    if args.toy:
        args.n = TOY["n"]
    kd_steps = TOY["kd_steps"] if args.toy else KD_STEPS
    kd = f"cutmix{kd_steps}"  # the KD recipe in the cached files' names: a new recipe is a new file
    iterations = TOY["schedule"] if args.toy else None
    out = args.out / (f"toy{args.n}" if args.toy else f"n{args.n}")
    results = out / "results"
    teachers = [key for key in TEACHERS if not args.teachers or key in args.teachers]
    variants = {key: args.variants for key in teachers if key in args.variant_teachers}
    mode_settings, prefix = MODES[args.mode]
    jobs = Jobs(args.jobs, args.threads)
    try:
        for key in teachers:
            jobs.submit(f"teacher_{key}", cached, results / f"teacher_{key}.json", teacher_job, key,
                        args.out / "teachers", TOY["teacher_epochs"] if args.toy else None)
        real = {data: cached(results / f"real_{data}.json", export_job, data, args.out / "real" / data)
                for data in sorted({TEACHERS[key]["data"] for key in teachers})}
        teacher = {key: jobs.result(f"teacher_{key}") for key in teachers}
        for key in teachers:
            jobs.submit(f"synthesize_{key}", cached, results / f"synthesize_{prefix}{key}.json", synthesize_phase,
                        out / f"syn_{prefix}{key}", synthesis_options(teacher[key], args.n, mode_settings, iterations))
        stored_rows = args.stored_soft_labels and not args.no_dearkd
        for key in teachers:
            if stored_rows and key in args.variant_teachers:
                jobs.submit(f"synthesize_views_{key}", cached, results / f"synthesize_views_{key}.json",
                            synthesize_phase, out / f"views_{key}",
                            synthesis_options(teacher[key], args.n, STORED_VIEWS, iterations))
        for key in teachers:  # the variants after every teacher's default set: the matrix comes first
            for variant in variants.get(key, []):
                jobs.submit(f"synthesize_{variant}_{key}", cached, results / f"synthesize_{variant}_{key}.json",
                            synthesize_phase, out / f"{variant}_{key}",
                            synthesis_options(teacher[key], args.n, VARIANTS[variant], iterations))
        for key in teachers:
            data, path = real[TEACHERS[key]["data"]], jobs.result(f"synthesize_{key}")["path"]
            jobs.submit(f"kd_syn_{key}", cached, results / f"kd_syn_{prefix}{key}-{kd}.json", kd_job, teacher[key],
                        path, data["test"], kd_steps)
            jobs.submit(f"kd_real_{key}", cached, results / f"kd_real_{key}-{kd}.json", kd_job, teacher[key],
                        data["train"], data["test"], kd_steps)
            rows = (("syn", path, f"{prefix}{key}", None), ("real", data["train"], key, args.n))  # real: shared
            for row, train, name, _ in rows:
                jobs.submit(f"kd_plain_{row}_{key}", cached, results / f"kd_plain_{row}_{name}-plain{kd_steps}.json",
                            kd_plain_job, teacher[key], train, data["test"], kd_steps)
            if not args.no_dearkd:
                tag = DISTILL[TEACHERS[key]["data"]][2]
                for row, train, name, steps_like in rows:
                    tagged = f"dearkd_{row}_{name}{tag}"
                    jobs.submit(f"dearkd_{row}_{key}", cached, results / f"{tagged}.json", distill_job,
                                out / f"run_{tagged}", TEACHERS[key]["data"], train, data["test"], path,
                                steps_like, args.toy)
                if stored_rows and key in args.variant_teachers:  # no teacher: no hidden loss
                    name = f"dearkd_stored-{SOFT_KEY}_{key}"  # the recipe in the name: a new one is a new row
                    jobs.submit(name, cached, results / f"{name}.json", distill_job, out / f"run_{name}",
                                TEACHERS[key]["data"], path, data["test"], path, None, args.toy, "stored")
                    views, name = jobs.result(f"synthesize_views_{key}")["path"], f"dearkd_views-{SOFT_KEY}_{key}"
                    jobs.submit(name, cached, results / f"{name}.json", distill_job, out / f"run_{name}",
                                TEACHERS[key]["data"], views, data["test"], views, None, args.toy, "stored")
        for key in teachers:
            for variant in variants.get(key, []):
                other = jobs.result(f"synthesize_{variant}_{key}")["path"]
                jobs.submit(f"kd_{variant}_{key}", cached, results / f"kd_{variant}_{key}-{kd}.json", kd_job,
                            teacher[key], other, real[TEACHERS[key]["data"]]["test"], kd_steps)
        matrix: dict[str, Any] = {}
        for key in teachers:
            syn = jobs.result(f"synthesize_{key}")
            cells = {"small_cnn_kd": {"synthetic": jobs.result(f"kd_syn_{key}")["acc"],
                                      "real": jobs.result(f"kd_real_{key}")["acc"]},
                     "small_cnn_kd_plain": {"synthetic": jobs.result(f"kd_plain_syn_{key}")["acc"],
                                            "real": jobs.result(f"kd_plain_real_{key}")["acc"]}}
            if not args.no_dearkd:
                cells["dearkd_micro"] = {"synthetic": jobs.result(f"dearkd_syn_{key}")["acc"],
                                         "real": jobs.result(f"dearkd_real_{key}")["acc"]}
            if stored_rows and key in args.variant_teachers:
                stored, online = jobs.result(f"dearkd_stored-{SOFT_KEY}_{key}"), jobs.result(f"dearkd_syn_{key}")
                views = jobs.result(f"dearkd_views-{SOFT_KEY}_{key}")
                cells["dearkd_micro"]["synthetic_stored_soft_labels"] = stored["acc"]
                cells["dearkd_micro"]["synthetic_stored_views"] = views["acc"]
                cells["dearkd_micro"]["seconds_online_vs_stored"] = [online["seconds"], stored["seconds"],
                                                                     views["seconds"]]
                cells["dearkd_micro"]["stored_recipe"] = SOFT_TARGETS
            for cell in cells.values():
                cell["ratio"] = round(cell["synthetic"] / max(cell["real"], 1e-9), 4)
            derived = syn["derived"] or {}
            matrix[key] = {"teacher_acc": round(teacher[key]["test_acc"], 4), "agreement": syn["agreement"],
                           "teacher_passes_per_image": (syn.get("cost") or {}).get("teacher_passes"),
                           "schedule": syn["schedule"], "flip": (derived.get("flip") or {}).get("value"),
                           "reach": (derived.get("ep_reach") or {}).get("value"),
                           "multires": derived.get("multires"), "students": cells,
                           "variants": {variant: {"agreement": jobs.result(f"synthesize_{variant}_{key}")["agreement"],
                                                  "small_cnn_kd": jobs.result(f"kd_{variant}_{key}")["acc"]}
                                        for variant in variants.get(key, [])}}
        seconds = {name: jobs.result(name)["seconds"] for name in jobs.futures}
    finally:
        jobs.close()
    cells = [(name, cell["ratio"]) for row in matrix.values() for name, cell in row["students"].items()]
    met = sum(ratio >= (TARGET_PLAIN if name == "small_cnn_kd_plain" else TARGET) for name, ratio in cells)
    seconds["total_this_invocation"] = round(time.perf_counter() - begin)
    return {"benchmark": "transfer", "n_images": args.n, "mode": args.mode, "matrix": matrix, "target_ratio": TARGET,
            "target_ratio_plain_kd": TARGET_PLAIN, "min_ratio": min(ratio for _, ratio in cells),
            "cells_meeting_target": f"{met}/{len(cells)}", "seconds": seconds}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("bench_out/transfer"))
    parser.add_argument("-n", "--n", type=int, default=1000, help="synthetic images per teacher [1000]")
    parser.add_argument("--teachers", nargs="*", choices=sorted(TEACHERS), help="a subset of the teachers")
    parser.add_argument("--variants", nargs="*", default=[], choices=sorted(VARIANTS),
                        help="other synthesis settings, small_cnn cells only")
    parser.add_argument("--stored-soft-labels", action="store_true",
                        help="also DearKD micro from the stored soft labels, no teacher (variant teachers): the "
                        "whole image's logits, and the same images synthesized again with 16 stored views each")
    parser.add_argument("--variant-teachers", nargs="*", default=["digits_cnn", "lenet5_bn_mnist"],
                        choices=sorted(TEACHERS), help="the teachers the variants run on [digits_cnn lenet5_bn_mnist]")
    parser.add_argument("--mode", choices=sorted(MODES), default="pixels",
                        help="synthesis mode of every teacher's set: the default pixels, or generator "
                        "(--mode generator --gen-steps 30) [pixels]")
    parser.add_argument("--no-dearkd", action="store_true", help="skip the DearKD micro column (the slow one)")
    parser.add_argument("--toy", action="store_true", help="20 images, 2 iterations a stage: the path, for tests")
    add_job_options(parser)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    return print_result(run, parse_args(argv))


if __name__ == "__main__":
    torch.multiprocessing.set_start_method("spawn", force=True)
    main()
