"""`--dry-run`'s time estimate against a real run: estimate a small run with the dry run's calibration,
then make it, and compare the busiest rank's estimated time with the run's measured time (prepare, probe, shards,
index). Prints one JSON line last; exits 1 when the estimate is off by more than --tolerance.

    python -m benchmarks.dry_run_check --threads 1                        # CPU: digits, 2 batches of 40
    python -m benchmarks.dry_run_check --device cuda --teacher resnet50 --schedule 112:40,224:40 --batch-size 64 \
        --n 192 --random-init                                             # GPU (benchmarks/gpu_check.sh)
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

from dfgen.config import build_config
from dfgen.dry_run import calibrate, describe_basis, estimate_plan
from dfgen.runplan import set_up
from dfgen.synthesize import synthesize
from dfgen.teachers import load_teacher


def check(config_options: dict, random_init: bool = False) -> dict:
    """Estimate, then run, the configuration; returns the figures (seconds, ratio measured / estimated)."""
    with tempfile.TemporaryDirectory() as tmp:
        config = build_config(None, out=str(Path(tmp) / "out"), **config_options)
        teacher = load_teacher(config.teacher, config.teacher_weights, pretrained=not random_init,
                               **config.teacher_options())
        start = time.perf_counter()
        planned = set_up(config, teacher, log=False, probe=False)
        calibration = calibrate(planned)
        estimate = estimate_plan(planned, calibration)
        plan_seconds = time.perf_counter() - start
        result = synthesize(config, teacher=teacher)
    return {
        "teacher": config.teacher, "device": calibration.device, "precision": calibration.precision,
        "compile": config.compile, "n": config.n, "batch": calibration.real_batch,
        "schedule": ",".join(f"{r}:{i}" for r, i in planned.schedule),
        "estimated_s": round(estimate.busiest_seconds, 2), "probe_estimated_s": round(estimate.probe_seconds, 2),
        "measured_s": round(result.seconds, 2), "ratio": round(result.seconds / estimate.busiest_seconds, 3),
        "dry_run_s": round(plan_seconds, 2), "basis": describe_basis(calibration, random_init),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--teacher", default="digits")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--n", type=int, default=80)
    parser.add_argument("--schedule", default="16:30,32:30")
    parser.add_argument("--batch-size", type=int, default=40)
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--random-init", action="store_true")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (1 on a shared machine: timings with "
                        "more threads than free cores swing several-fold)")
    parser.add_argument("--tolerance", type=float, default=0.3, help="largest |measured / estimated - 1| [0.3]")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    figures = check({"teacher": args.teacher, "device": args.device, "n": args.n, "schedule": args.schedule,
                     "batch_size": args.batch_size, "precision": args.precision, "compile": args.compile or None,
                     "quiet": True, "log_every": 50}, args.random_init)
    figures["tolerance"] = args.tolerance
    figures["within"] = abs(figures["ratio"] - 1) <= args.tolerance
    print(json.dumps(figures), flush=True)
    sys.exit(0 if figures["within"] else 1)


if __name__ == "__main__":
    main()
