"""Benchmark: does DearKD's diversity loss raise intra-class diversity at equal teacher agreement?

Synthesizes two digits datasets from the bundled teacher with the same seed and budget, one with the
diversity losses (default weights) and one plain DeepInversion (--no-diversity), runs `dfgen report` on
both, and prints one JSON object on its last line with LPIPS, feature diversity and teacher agreement
of each. Targets: agreement >= 0.9 for both, LPIPS and feature diversity higher with
the diversity losses.

    python -m benchmarks.report_diversity --out bench_out/report_diversity [--n 500]

LPIPS needs torchvision's ImageNet backbone (alexnet-owt-7be5be79.pth for --lpips-net alex) in
$TORCH_HOME/hub/checkpoints/; on a machine without network and without that file the LPIPS figures are
null and "lpips_error" says which file to put where (feature diversity and agreement still run).

`--timing` instead measures the per-image costs at ImageNet scale on this machine (224x224 RGB PNGs,
a random-weight regnety_160 teacher and a random-weight AlexNet LPIPS backbone: weights do not change
the cost) and prints the estimated time per 1,000 classes of 1,200 images.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

import dfgen
from dfgen.errors import DfgenError
from dfgen.report import make_report


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=None, help="Working directory [a temporary one].")
    p.add_argument("--n", type=int, default=500, help="Images per dataset [500: 50 per class].")
    p.add_argument("--schedule", default="16:200,32:200", help="Synthesis schedule [16:200,32:200].")
    p.add_argument("--classes-per-batch", type=int, default=10)
    p.add_argument("--synth-images-per-class", type=int, default=4, help="Images of a class in a synthesis batch.")
    p.add_argument("--warmup", type=int, default=20, help="Warm-up iterations per stage [20].")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--lpips-net", default="alex", choices=["alex", "vgg", "squeeze", "none"])
    p.add_argument("--images-per-class", type=int, default=64, help="Report: images sampled per class.")
    p.add_argument("--pairs-per-class", type=int, default=50, help="Report: LPIPS pairs per class.")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--timing", action="store_true", help="Measure per-image costs at 224x224 instead.")
    p.add_argument("--timing-classes", type=int, default=4, help="--timing: classes in the 224 test set.")
    p.add_argument("--timing-images", type=int, default=24, help="--timing: images per class in the test set.")
    return p.parse_args()


def figures(entry: dict) -> dict:
    return {
        "lpips": (entry["lpips_intra_class"] or {}).get("mean"),
        "feature_diversity": (entry["feature_diversity"] or {}).get("mean"),
        "top1": (entry["teacher_agreement"] or {}).get("top1"),
        "mean_target_prob": (entry["teacher_agreement"] or {}).get("mean_target_prob"),
        "report_seconds": entry["timings"]["total_s"],
    }


def run_report(datasets: list[Path], out: Path, args: argparse.Namespace, **extra) -> tuple[dict, str | None]:
    """make_report; if the LPIPS backbone cannot be had offline, rerun without LPIPS and say why."""
    net = None if args.lpips_net == "none" else args.lpips_net
    kwargs = dict(pairs_per_class=args.pairs_per_class, images_per_class=args.images_per_class,
                  device=args.device, seed=args.seed, quiet=True, **extra)
    try:
        return make_report(datasets, out, lpips_net=net, **kwargs), None
    except DfgenError as exc:
        if "LPIPS backbone" not in str(exc):
            raise
        return make_report(datasets, out, lpips_net=None, **kwargs), str(exc)


def diversity(args: argparse.Namespace, work: Path) -> dict:
    made = {}
    for name, plain in (("diversity", False), ("no_diversity", True)):
        start = time.perf_counter()
        config = dfgen.SynthesisConfig(
            teacher="digits", n=args.n, out=str(work / name), schedule=args.schedule,
            classes_per_batch=args.classes_per_batch, images_per_class=args.synth_images_per_class,
            warmup=args.warmup, seed=args.seed, no_diversity=plain, device=args.device, quiet=True, mode="pixels",
        )
        dfgen.synthesize(config)
        made[name] = time.perf_counter() - start
    report, lpips_error = run_report([work / "diversity", work / "no_diversity"], work / "report", args)
    div, plain = (figures(e) for e in report["datasets"])

    def higher(key: str) -> bool | None:
        return None if div[key] is None or plain[key] is None else div[key] > plain[key]

    return {
        "benchmark": "report_diversity",
        "n": args.n,
        "schedule": args.schedule,
        "seed": args.seed,
        "lpips_net": None if lpips_error else args.lpips_net,
        "diversity": div,
        "no_diversity": plain,
        "lpips_higher_with_diversity": higher("lpips"),
        "feature_diversity_higher_with_diversity": higher("feature_diversity"),
        "agreement_ok": all(f["top1"] is not None and f["top1"] >= 0.9 for f in (div, plain)),
        "synthesis_seconds": made,
        "report": str(work / "report" / "report.html") if args.out else None,
        "lpips_error": lpips_error,
    }


def timing(args: argparse.Namespace, work: Path) -> dict:
    """Per-unit costs at 224x224 RGB with random weights; estimate for 1,000 classes x 1,200 images."""
    import torchvision

    from dfgen.realdata import write_image_dataset
    from dfgen.report.metrics import backbone_file
    from dfgen.teachers import load_teacher

    os.environ["TORCH_HOME"] = str(work / "torch_home")
    net = "alex" if args.lpips_net == "none" else args.lpips_net
    _, path = backbone_file(net)
    path.parent.mkdir(parents=True, exist_ok=True)
    builders = {"alex": torchvision.models.alexnet, "vgg": torchvision.models.vgg16,
                "squeeze": torchvision.models.squeezenet1_1}
    torch.save(builders[net]().state_dict(), path)  # random weights, same cost
    # Noise-like smooth images: PNG sizes close to DeepInversion output (it compresses poorly).
    generator = torch.Generator().manual_seed(0)
    c, m = args.timing_classes, args.timing_images
    coarse = torch.rand(c * m, 3, 56, 56, generator=generator)
    fine = torch.rand(c * m, 3, 224, 224, generator=generator)
    images = torch.nn.functional.interpolate(coarse, size=224, mode="bilinear") * 0.8 + fine * 0.2
    images = (images * 255).round().to(torch.uint8)
    labels = torch.arange(c).repeat_interleave(m)
    data = write_image_dataset(work / "imagenet_like", images, labels, {"num_classes": c}, shard_size=32)
    teacher = load_teacher("regnety_160", pretrained=False)
    report, lpips_error = run_report([data], work / "report", args, teacher=teacher)
    t = report["datasets"][0]["timings"]
    bytes_per_image = report["datasets"][0]["bytes_on_disk"] / (c * m)
    per_class = (1200 * t["scan_ms_per_image"] + args.images_per_class
                 * (t["decode_ms_per_image"] + t["teacher_ms_per_image"]) + args.pairs_per_class
                 * t["lpips_ms_per_pair"]) / 1e3
    return {
        "benchmark": "report_timing_224",
        "device": report["settings"]["device"],
        "threads": torch.get_num_threads(),
        "teacher": "regnety_160 (random weights)",
        "lpips_net": f"{net} (random backbone)",
        "bytes_per_image": bytes_per_image,
        "scan_ms_per_image": t["scan_ms_per_image"],
        "decode_ms_per_image": t["decode_ms_per_image"],
        "teacher_ms_per_image": t["teacher_ms_per_image"],
        "lpips_ms_per_pair": t["lpips_ms_per_pair"],
        "images_per_class": args.images_per_class,
        "pairs_per_class": args.pairs_per_class,
        "estimate_s_per_1000_classes_of_1200_images": 1000 * per_class,
        "estimate_h_per_1000_classes_of_1200_images": 1000 * per_class / 3600,
        "lpips_error": lpips_error,
    }


def main() -> None:
    args = parse_args()
    with tempfile.TemporaryDirectory(prefix="report_bench_") as tmp:
        work = args.out or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        result = timing(args, work) if args.timing else diversity(args, work)
    print(json.dumps({k: (round(v, 6) if isinstance(v, float) else v) for k, v in result.items()}))


if __name__ == "__main__":
    np.set_printoptions(precision=4)
    main()
