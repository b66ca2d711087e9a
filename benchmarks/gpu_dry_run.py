"""`dfgen synthesize --dry-run`'s time estimate against a short real run of the same configuration: the dry
run's text (what the CLI prints) is read for its time and images/s, then the run is made and timed. By
default ResNet-50 with random weights (the cost does not depend on them), 4 batches of 32 classes x 4 images through
112:100,224:100 on this machine's GPU; flips and the diversity distances are given, so no start-up probe runs.

    python -m benchmarks.gpu_dry_run [--teacher resnet50] [--n 512] [--schedule 112:100,224:100] [--json OUT.json]
    python -m benchmarks.gpu_dry_run --cpu-smoke    # the same code on the CPU at toy size (the tests run it)
"""

from __future__ import annotations

import argparse
import re
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.gpu_common import device_facts, emit, interruptible, target_device
from dfgen.config import build_config
from dfgen.dry_run import describe_plan
from dfgen.synthesize import synthesize
from dfgen.teachers import load_teacher

UNITS = {"s": 1.0, "min": 60.0, "h": 3600.0, "days": 86400.0}
# --cpu-smoke: the bundled digits teacher, 2 batches of 2 classes x 2 images through a short 32 px schedule.
SMOKE = {"teacher": "digits", "n": 8, "schedule": "16:5,32:5", "classes_per_batch": 2, "images_per_class": 2,
         "flip": False, "ep_reach": 0.3, "margin": 0.5, "device": "cpu"}  # given, as in the GPU run: no probe


def parse_estimate(text: str) -> dict[str, Any]:
    """From the dry run's text: the busiest rank's estimated seconds (as printed; from its images and rate when the
    printed figure rounds to "~0 s"), the images/s per process, and the images of rank 0."""
    time_line = re.search(r"^time\s+~([\d.]+)\s*(s|min|h|days)\b", text, re.MULTILINE)
    rate = re.search(r"([\d.]+(?:e[+-]?\d+)?) images/s per process", text)
    rank0 = re.search(r"^rank 0\s+[\d,]+ shard\(s\), ([\d,]+) images", text, re.MULTILINE)
    if time_line is None or rate is None:
        raise ValueError(f"no time estimate in the dry run's text:\n{text}")
    images = int(rank0.group(1).replace(",", "")) if rank0 else None
    estimated = float(time_line.group(1)) * UNITS[time_line.group(2)]
    if estimated == 0 and images and float(rate.group(1)) > 0:  # "~0 s" is rounded away: the rate is exact
        estimated = images / float(rate.group(1))
    return {"estimated_s": estimated, "estimated_images_per_s": float(rate.group(1)), "rank0_images": images}


def check(options: dict[str, Any], random_init: bool = True, result: dict[str, Any] | None = None) -> dict[str, Any]:
    """The dry run's estimate for `options` (dfgen.build_config keywords), then the run itself, timed; put into
    `result` as they come (an interrupted run keeps the estimate)."""
    result = {} if result is None else result
    with tempfile.TemporaryDirectory() as tmp:
        config = build_config(None, **options, out=str(Path(tmp) / "out"), quiet=True)
        teacher = load_teacher(config.teacher, config.teacher_weights, pretrained=not random_init,
                               **config.teacher_options())
        start = time.perf_counter()
        text = describe_plan(config, teacher)
        dry_run_seconds = time.perf_counter() - start
        estimate = parse_estimate(text)
        result.update({"teacher": config.teacher, "random_weights": random_init, "n": config.n,
                       "schedule": options.get("schedule"), "dry_run_text": text.splitlines(),
                       "dry_run_seconds": dry_run_seconds, **estimate})
        start = time.perf_counter()
        measured = synthesize(config, teacher=teacher).seconds
        wall = time.perf_counter() - start
    ratio = measured / estimate["estimated_s"] if estimate["estimated_s"] else None  # "~0 s" is no estimate
    result.update({"measured_s": measured, "measured_wall_s": wall, "measured_images_per_s": config.n / measured,
                   "measured_over_estimated": ratio})
    return result


def main(argv: list[str] | None = None) -> None:
    started = time.perf_counter()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--teacher", default="resnet50")
    parser.add_argument("--n", type=int, default=512)
    parser.add_argument("--schedule", default="112:100,224:100")
    parser.add_argument("--classes-per-batch", type=int, default=32)
    parser.add_argument("--cpu-smoke", action="store_true", help="the same code on the CPU at toy size: the digits "
                        "teacher (its own weights), 8 images, 16:5,32:5 (a test of the code, not a figure)")
    parser.add_argument("--json", default=None, help="also write the result here")
    args = parser.parse_args(argv)
    if args.n < 1 or args.classes_per_batch < 1:
        parser.error("--n and --classes-per-batch must be >= 1")
    device = target_device("gpu_dry_run", args.cpu_smoke)
    if args.cpu_smoke:
        options, random_init = dict(SMOKE), False
    else:
        options = {"teacher": args.teacher, "n": args.n, "schedule": args.schedule, "device": "cuda",
                   "classes_per_batch": args.classes_per_batch, "images_per_class": 4, "flip": True, "ep_reach": 0.3,
                   "margin": 0.5}
        random_init = True
    result: dict[str, Any] = {"benchmark": "gpu_dry_run", "cpu_smoke": args.cpu_smoke, **device_facts(device)}
    interruptible(result, lambda r: check(options, random_init, result=r))
    emit(result, args.json, started)


if __name__ == "__main__":
    main()
