"""`dfgen report`: the click command, a thin layer over dfgen.report.make_report.

Registered in dfgen/cli.py with `cli.add_command(report)`; DfgenError becomes "Error: ..." there."""

from __future__ import annotations

from pathlib import Path

import click


@click.command()
@click.argument("datasets", nargs=-1, required=True, metavar="DATASETS...")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Report directory (created).")
@click.option("--pairs-per-class", type=click.IntRange(min=0), default=50, show_default=True,
              help="Same-class pairs per class for LPIPS.")
@click.option("--images-per-class", type=click.IntRange(min=2), default=64, show_default=True,
              help="Images sampled per class (decoded, fed to LPIPS and the teacher).")
@click.option("--lpips-net", type=click.Choice(["alex", "vgg", "squeeze", "none"]), default="alex",
              show_default=True, help="LPIPS backbone; none skips LPIPS.")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True,
              help="Decides the image sample and the pairs.")
@click.option("--teacher", default=None,
              help="Teacher to use instead of the one in dataset.json (needed for agreement on real datasets).")
@click.option("--teacher-weights", type=click.Path(dir_okay=False), default=None,
              help="Local weights file for the teacher (when its weights cannot be downloaded).")
@click.option("--judge", default=None, help="A second network synthesis did not use (e.g. one trained on real data; "
              "any teacher name form): its top-1 on the images and the feature diversity in its embedding, which the "
              "diversity losses did not optimise.")
@click.option("--judge-weights", type=click.Path(dir_okay=False), default=None, help="Weights file of the judge.")
@click.option("--judge-kwargs", default=None, metavar="MAPPING", help="Arguments of the judge's factory.")
@click.option("--judge-image-size", type=click.IntRange(min=1), default=None, help="The judge's input size.")
@click.option("--judge-mean", default=None, metavar="M1,M2,M3", help="The judge's normalization mean.")
@click.option("--judge-std", default=None, metavar="S1,S2,S3", help="The judge's normalization std.")
@click.option("--num-classes", type=click.IntRange(min=1), default=None,
              help="Class count of plain WebDataset shards (default: that of the dfgen datasets in the report).")
@click.option("--image-key", default=None, help="Image entry of plain WebDataset samples (default: png/jpg/jpeg/webp).")
@click.option("--label-key", default="cls", show_default=True, help="Integer label entry of plain WebDataset samples.")
@click.option("--quiet", is_flag=True, help="No progress output.")
def report(datasets, out, pairs_per_class, images_per_class, lpips_net, device, seed, teacher, teacher_weights,
           judge, judge_weights, judge_kwargs, judge_image_size, judge_mean, judge_std, num_classes, image_key,
           label_key, quiet) -> None:
    """Measure datasets (LPIPS diversity, teacher agreement, feature diversity, shard checks) and write
    OUT/report.json, a self-contained OUT/report.html and the plots. Several datasets are compared side
    by side: dfgen datasets (synthetic or exported real ones) and any labelled image set, an ImageFolder (one
    sub-folder of images per class) or plain WebDataset shards (a directory of .tar files or a brace pattern)."""
    from dfgen.folder_guard import Maker, hold_folder
    from dfgen.parsing import parse_floats, parse_kwargs
    from dfgen.report import make_report
    from dfgen.teachers import load_teacher

    if judge is None and any(v is not None for v in (judge_weights, judge_kwargs, judge_image_size, judge_mean,
                                                        judge_std)):
        raise click.UsageError("the --judge-* options need --judge NAME")
    judge_model = None if judge is None else load_teacher(
        judge, judge_weights, kwargs=parse_kwargs(judge_kwargs, "--judge-kwargs"), image_size=judge_image_size,
        mean=parse_floats(judge_mean, "--judge-mean"), std=parse_floats(judge_std, "--judge-std"),
        require_batchnorm=False)  # the judge only embeds and classifies
    # the report folder: refused if it holds a dataset, a run or files of the user's; a report replaces its own
    maker = Maker("dfgen", "report", "report", {"datasets": [str(Path(d).resolve()) for d in datasets]})
    with hold_folder(Path(out), maker, compare_config=False):
        result = make_report(
            [Path(d) for d in datasets],
            Path(out),
            pairs_per_class=pairs_per_class,
            images_per_class=images_per_class,
            lpips_net=None if lpips_net == "none" else lpips_net,
            device=device,
            seed=seed,
            teacher_weights=teacher_weights,
            teacher=teacher,
            quiet=quiet,
            judge=judge_model,
            num_classes=num_classes,
            image_key=image_key,
            label_key=label_key,
        )
    for entry in result["datasets"]:
        lp = (entry["lpips_intra_class"] or {}).get("mean")
        fd = (entry["feature_diversity"] or {}).get("mean")
        ag = entry["teacher_agreement"] or {}
        read = (f"{entry['shards']['checked']} shard(s) verified" if entry["shards"]["sha256_ok"]
                else f"read as {entry['source_format']}, no checksums")
        click.echo(
            f"{entry['name']}: {entry['images_scanned']} images, {read}, "
            f"LPIPS {_fmt(lp)}, feature diversity {_fmt(fd)}, teacher top-1 {_fmt(ag.get('top1'))}"
            f"{' (near chance)' if ag.get('near_chance') else ''}, "
            f"mean target prob {_fmt(ag.get('mean_target_prob'))}"
            + (f", judge top-1 {_fmt(entry['judge']['top1'])}, judge feature diversity "
               f"{_fmt(entry['judge']['feature_diversity'])}" if entry.get("judge") else "")
        )
    click.echo(f"wrote {Path(out) / 'report.html'}")


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"
