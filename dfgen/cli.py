"""The `dfgen` command line: a thin layer over the Python API."""

from __future__ import annotations

from pathlib import Path

import click

from dfgen.config import build_config, parse_count, parse_schedule
from dfgen.errors import DfgenError, run_cli


def _count(ctx, param, value):
    if value is None:
        return None
    try:
        return parse_count(value)
    except DfgenError as exc:
        raise click.BadParameter(str(exc).replace("--n must be", "must be")) from None


def _schedule(ctx, param, value):
    if value is None:
        return None
    try:
        return parse_schedule(value)
    except DfgenError as exc:
        raise click.BadParameter(str(exc)) from None


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="dfgen")
def cli() -> None:
    """dfgen: data-free synthetic datasets from a trained CNN (DeepInversion + DearKD diversity losses)."""


@cli.command()
@click.option("--teacher", help="Teacher: digits, regnety_16gf, or a timm / torchvision model name.")
@click.option("--n", "-n", "n", callback=_count, help="Number of images: 1000, 50k, 1.2M (-n under torchrun).")
@click.option("--out", type=click.Path(file_okay=False), help="Output directory.")
@click.option("--config", "config_path", type=click.Path(), help="YAML preset (configs/*.yaml); flags override it.")
@click.option("--teacher-weights", type=click.Path(), help="Local weights file (state dict; timm or torchvision keys).")
@click.option("--batch-size", type=click.IntRange(min=1), help="Images per batch (K classes x M images).")
@click.option("--schedule", callback=_schedule, help="Stages res:iters,... [default: HALF:2000,FULL:2000].")
@click.option("--classes-per-batch", type=click.IntRange(min=1), help="Classes in a batch [default: min(C, 32)].")
@click.option("--images-per-class", type=click.IntRange(min=1), help="Images of each class in a batch [4].")
@click.option("--seed", type=int, help="Seed: images are functions of (seed, batch index) [0].")
@click.option("--shard-size", type=click.IntRange(min=1), help="Images per shard, a multiple of the batch size.")
@click.option("--format", "format_", type=click.Choice(["png", "jpg", "webp"]), help="Image format [png].")
@click.option("--quality", type=click.IntRange(1, 100), help="JPEG/WebP quality [95].")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), help="Device [auto].")
@click.option("--precision", type=click.Choice(["auto", "fp32", "bf16", "fp16"]), help="[auto: bf16 on CUDA].")
@click.option("--lr", type=float, help="Adam learning rate [0.25].")
@click.option("--warmup", type=click.IntRange(min=0), help="Warm-up iterations per stage [100].")
@click.option("--tv-l2", type=float, help="Weight of the L2 total variation [1e-4].")
@click.option("--tv-l1", type=float, help="Weight of the L1 total variation [0].")
@click.option("--l2", type=float, help="Weight of the L2 image prior [1e-5].")
@click.option("--bn", type=float, help="Weight of the BatchNorm statistics loss [5e-2].")
@click.option("--first-bn-multiplier", type=float, help="Multiplier of the first BN layer [10].")
@click.option("--ep", type=float, help="Weight of the easy-positive diversity loss [50].")
@click.option("--triplet", type=float, help="Weight of the boundary triplet loss [0.5].")
@click.option("--margin", type=float, help="Triplet margin [0.5].")
@click.option("--ep-reach", type=float, help="Distance at which the easy-positive push stops [0.3].")
@click.option("--no-diversity", is_flag=True, default=None, help="Plain DeepInversion (ep = triplet = 0).")
@click.option("--flip/--no-flip", default=None, help="Random horizontal flips in the jitter [on]; turn off for "
              "classes a mirror changes (digits, text).")
@click.option("--overwrite", is_flag=True, default=None, help="Replace an output directory made differently.")
@click.option("--rank", type=click.IntRange(min=0), help="This process's rank (without torchrun).")
@click.option("--world-size", type=click.IntRange(min=1), help="Number of processes (without torchrun).")
@click.option("--dry-run", is_flag=True, help="Print the plan and a time estimate; write nothing.")
@click.option("--random-init", is_flag=True, help="Random teacher weights (speed tests only).")
@click.option("--log-every", type=click.IntRange(min=1), help="Iterations between loss reads [50].")
@click.option("--compile", "compile_", is_flag=True, default=None, help="torch.compile the teacher and losses.")
@click.option("--quiet", is_flag=True, default=None, help="No progress bar; one log line per shard.")
def synthesize(config_path, batch_size, format_, compile_, dry_run, random_init, **options) -> None:
    """Invert a teacher into a synthetic dataset of WebDataset shards (resumable)."""
    from dfgen.synthesize import describe_plan
    from dfgen.synthesize import synthesize as run_synthesis

    options["format"], options["compile"] = format_, compile_
    if batch_size is not None:
        options.update(_split_batch(batch_size, options.get("classes_per_batch"), options.get("images_per_class")))
    config = build_config(config_path, **options)
    for name, flag in (("out", "--out"), ("teacher", "--teacher"), ("n", "-n")):
        if config_path is None and options.get(name) is None:  # a preset may supply them, else they are required
            raise click.UsageError(f"Missing option '{flag}' (or a --config preset that sets it).")
    teacher = None
    if random_init:
        from dfgen.teachers import load_teacher

        teacher = load_teacher(config.teacher, None, pretrained=False)
    if dry_run:
        click.echo(describe_plan(config, teacher))
        return
    run_synthesis(config, teacher=teacher)


def _split_batch(batch_size: int, classes: int | None, per_class: int | None) -> dict[str, int]:
    """--batch-size fixes K x M: derive whichever of the two is missing."""
    per_class = per_class or (batch_size // classes if classes else 4)
    if classes is None:
        classes = batch_size // per_class
    if classes * per_class != batch_size or classes < 1:
        raise click.BadParameter(
            f"{batch_size} is not classes-per-batch x images-per-class ({classes} x {per_class})",
            param_hint="--batch-size",
        )
    return {"classes_per_batch": classes, "images_per_class": per_class}


@cli.command("export-digits")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Writes OUT/train and OUT/test.")
def export_digits(out: str) -> None:
    """Write scikit-learn's real digits (the bundled teacher's fixed split) as two datasets."""
    from dfgen.realdata import export_digits as run_export

    for path in run_export(Path(out)):
        click.echo(f"wrote {path}")


@cli.command()
@click.argument("out", type=click.Path(exists=True, file_okay=False))
def index(out: str) -> None:
    """Rebuild and validate OUT/index.json and OUT/dataset.json (sha256 against the sidecars)."""
    from dfgen.indexing import rebuild_index

    click.echo(rebuild_index(Path(out)))


from dfgen.report_cli import report  # noqa: E402  (defined beside its implementation)

cli.add_command(report)


def main(argv: list[str] | None = None) -> None:
    """Entry point: user errors become one line on stderr and a non-zero exit, never a traceback."""
    run_cli(cli, "dfgen", argv, "Interrupted; rerun the same command to continue where it stopped.")
