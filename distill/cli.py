"""The `distill` command line (`distill run`, `distill eval`): a thin layer over `distill.train` and
`distill.evaluate_checkpoint`."""

from __future__ import annotations

import json

import click

from dfgen.errors import run_cli
from distill.cli_options import given_options, train_config_options
from distill.config import build_config


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="dfgen")
def cli() -> None:
    """distill: train DearKD vision transformers on dfgen shards (two-stage early knowledge distillation)."""


@cli.command(context_settings={"max_content_width": 120})
@click.option("--config", "config_path", type=click.Path(), help="YAML preset (configs/distill_*.yaml) or a run's "
              "config.json; options given here override it.")
@train_config_options
def run(config_path: str | None, **options) -> None:
    """Train a DearKD student: stage 1 with the teacher, stage 2 without (DDP under torchrun). Every setting of
    TrainConfig is an option (timm's train.py names where timm has one); `none` sets an optional value to None."""
    from distill.train import train

    if not options["shards"] and config_path is None:
        raise click.UsageError("Missing option '--shards'.")
    config = build_config(config_path, **given_options(options))
    if not config.shards:
        raise click.UsageError("Missing option '--shards' (or shards: in the --config file).")
    summary = train(config)
    if summary["rank"] == 0:
        click.echo(json.dumps({k: summary[k] for k in ("out", "epoch", "best_top1")}))


@cli.command("eval")
@click.option("--checkpoint", required=True, type=click.Path(), help="RUN_DIR/last.pt or best.pt.")
@click.option("--data", required=True, help="A dfgen dataset, an ImageFolder, .tar shards or a flat image directory.")
@click.option("--labels", "labels_file", type=click.Path(), help='"FILE LABEL" lines for a flat --data directory.')
@click.option("--image-key", help="Plain WebDataset shards: the image's extension [png/jpg/jpeg/webp].")
@click.option("--label-key", default="cls", show_default=True, help="Plain WebDataset shards: the label's extension.")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@click.option("-b", "--batch-size", type=click.IntRange(min=1), default=256, show_default=True)
@click.option("-j", "--workers", type=click.IntRange(min=0), help="Data loader processes [0 on CPU, 8 on GPU].")
@click.option("--ema", "--use-ema", "ema", is_flag=True, help="Evaluate the EMA weights.")
@click.option("--quiet", is_flag=True, help="No progress bar (it shows only on a terminal anyway).")
def eval_(checkpoint: str, data: str, labels_file: str | None, image_key: str | None, label_key: str, device: str,
          batch_size: int, workers: int | None, ema: bool, quiet: bool) -> None:
    """Top-1/top-5 of a checkpoint on DATA, printed as one JSON line {"top1", "top5", "n"} (percent)."""
    from distill.evaluation import evaluate_checkpoint

    result = evaluate_checkpoint(checkpoint, data, device=device, batch_size=batch_size, workers=workers, ema=ema,
                                 labels_file=labels_file, image_key=image_key, label_key=label_key,
                                 progress=not quiet)
    click.echo(json.dumps(result))


def main(argv: list[str] | None = None) -> None:
    """Entry point: user errors become one line on stderr and exit 1 (usage errors 2), never a traceback."""
    run_cli(cli, "distill", argv, "Interrupted; rerun with --resume to continue from the last finished epoch.")
