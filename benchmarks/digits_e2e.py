"""Digits end to end (SPEC section 6.1): what a ViT student learns from synthetic digits, tested on
real held-out digits. On 2 CPU cores, <= 20 minutes.

1. the bundled teacher's accuracy on the real test split;
2. synthesize with plain DeepInversion and with the diversity losses (same seed, same budget);
3. report feature diversity (and LPIPS when its backbone file is present) and teacher agreement;
4. distill a DearKD micro student, and the plain DeiT micro control, on the synthetic shards (made
   with the diversity losses) only;
5. evaluate on the real test split; the same DearKD student trained on the real train split is the
   reference.

    python benchmarks/digits_e2e.py [--out bench_out/digits] [-n 1000] [--epochs 40]

Prints one JSON line last.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch

import distill
from dfgen.config import build_config as synthesis_config
from dfgen.realdata import export_digits
from dfgen.report import make_report
from dfgen.synthesize import synthesize
from dfgen.teachers import load_teacher
from dfgen.zoo.digits import evaluate, load_digits_split

ROOT = Path(__file__).resolve().parents[1]


def lpips_available() -> bool:
    home = Path(os.environ.get("TORCH_HOME", Path.home() / ".cache" / "torch"))
    return (home / "hub" / "checkpoints" / "alexnet-owt-7be5be79.pth").is_file()


def student(out: Path, shards: Path, val: Path, model: str, epochs: int | None) -> dict:
    """The digits distill preset (teacher in stage 1) on `shards`; top-1 on `val`."""
    stage1 = None if epochs is None else round(epochs * 5 / 6)
    config = distill.build_config(ROOT / "configs" / "distill_digits.yaml", shards=[str(shards)], val=str(val),
                                  out=str(out), model=model, epochs=epochs, stage1_epochs=stage1, quiet=True,
                                  resume=True)
    start = time.perf_counter()
    distill.train(config)
    result = distill.evaluate_checkpoint(out / "last.pt", val, device="cpu")
    return {"top1": round(result["top1"], 2), "n": result["n"], "seconds": round(time.perf_counter() - start)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("bench_out/digits"))
    parser.add_argument("-n", type=int, default=1000)
    parser.add_argument("--epochs", type=int, default=None, help="student epochs [the preset's]")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    out, begin = args.out, time.perf_counter()
    timings: dict[str, float] = {}

    teacher = load_teacher("digits")
    split = load_digits_split()
    teacher_acc = evaluate(teacher.model, split.test_images, split.test_labels)  # normalises itself
    real = out / "real"
    if not (real / "test" / "index.json").exists():
        export_digits(real)

    synthetic = {}
    for name, no_diversity in (("diversity", False), ("plain", True)):
        start = time.perf_counter()
        config = synthesis_config(ROOT / "configs" / "digits.yaml", n=args.n, seed=args.seed, out=str(out / name),
                                  no_diversity=no_diversity, quiet=True)
        synthesize(config)
        synthetic[name] = out / name
        timings[f"synthesize_{name}"] = round(time.perf_counter() - start)

    report = make_report([synthetic["diversity"], synthetic["plain"]], out / "report",
                         lpips_net="alex" if lpips_available() else None, quiet=True)
    figures = {}
    for name, entry in zip(("diversity", "plain"), report["datasets"], strict=True):
        figures[name] = {
            "agreement": entry["teacher_agreement"]["top1"],
            "mean_target_prob": round(entry["teacher_agreement"]["mean_target_prob"], 4),
            "feature_diversity": round(entry["feature_diversity"]["mean"], 4),
            "lpips": (entry.get("lpips_intra_class") or {}).get("mean"),
        }

    test = real / "test"
    students = {
        "dearkd_synthetic_diversity": student(out / "run_dearkd_div", synthetic["diversity"], test,
                                              "dearkd_micro_patch4_32", args.epochs),
        "deit_synthetic_diversity": student(out / "run_deit_div", synthetic["diversity"], test,
                                            "deit_micro_patch4_32", args.epochs),
        "dearkd_real_train": student(out / "run_dearkd_real", real / "train", test, "dearkd_micro_patch4_32",
                                     args.epochs),
    }
    result = {
        "benchmark": "digits_e2e",
        "n": args.n,
        "threads": torch.get_num_threads(),
        "teacher_test_top1": round(100 * teacher_acc, 2),
        "synthetic": figures,
        "students_real_test_top1": {k: v["top1"] for k, v in students.items()},
        "student_over_teacher": round(students["dearkd_synthetic_diversity"]["top1"] / (100 * teacher_acc), 4),
        "seconds": {**timings, **{k: v["seconds"] for k, v in students.items()},
                    "total": round(time.perf_counter() - begin)},
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
