"""The `distill` command line (`distill run`, `distill eval`): a thin layer over `distill.train` and
`distill.evaluate_checkpoint`."""

from __future__ import annotations

import json
from typing import Any

import click
import yaml

from dfgen.errors import run_cli
from distill.config import build_config


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="dfgen")
def cli() -> None:
    """distill: train DearKD vision transformers on dfgen shards (two-stage early knowledge distillation)."""


@cli.command()
@click.option("--shards", multiple=True,
              help="Training source: a dfgen dataset, an ImageFolder, or .tar shards (brace pattern, a::b list, a "
                   "directory of .tar); repeat to mix several.")
@click.option("--mix", help="Share of each --shards source in the stream, e.g. 0.5,0.5 [by size].")
@click.option("--fraction", help="Share of each source's images used, e.g. 0.1,1 (fixed subset) [1].")
@click.option("--val", help="Validation data: a source as --shards, or a flat image directory with --val-labels.")
@click.option("--val-labels", type=click.Path(), help='"FILE LABEL" lines (or LOC_val_solution.csv) for a flat --val.')
@click.option("--image-key", help="Plain WebDataset shards: the image's extension [png/jpg/jpeg/webp].")
@click.option("--label-key", help="Plain WebDataset shards: the label's extension [cls].")
@click.option("--model", help="Student: dearkd_tiny_patch16_224 (default), ..., dearkd_micro_patch4_32.")
@click.option("--model-kwargs", "model_kwargs", multiple=True, metavar="KEY=VALUE",
              help="More student arguments, e.g. prefix_logit=false; repeat for several.")
@click.option("--teacher", help="Teacher for stage 1: a name, or a dfgen dataset directory whose recorded teacher to "
              "use (e.g. to distill on real data) [the one named in the synthetic dataset.json].")
@click.option("--teacher-weights", type=click.Path(), help="Local teacher weights file (state dict).")
@click.option("--config", "config_path", type=click.Path(), help="YAML preset (configs/distill_*.yaml).")
@click.option("--epochs", type=click.IntRange(min=1), help="Total epochs [300].")
@click.option("--stage1-epochs", type=click.IntRange(min=0), help="Epochs with the teacher [250].")
@click.option("--batch-size", type=click.IntRange(min=1), help="Global batch, split over processes [256].")
@click.option("--lr", type=float, help="Learning rate per 512 images: x batch/512 [5e-4].")
@click.option("--hidden-weight", type=click.FloatRange(min=0), help="Weight beta of the hidden loss [1.0].")
@click.option("--align", help='Student block : teacher stage pairs, e.g. "4:s3" [a middle MHCA block : equal size].')
@click.option("--distillation", type=click.Choice(["hard", "soft"]), help="Teacher's argmax or KL at --distill-tau "
              "[hard].")
@click.option("--distill-tau", type=click.FloatRange(min=0, min_open=True), help="Soft distillation temperature [1].")
@click.option("--soft-labels", type=click.Choice(["online", "stored"]),
              help="Distillation target: the teacher on each batch, or the logits dfgen stored [online].")
@click.option("--stored-views/--no-stored-views", default=None, help="With --soft-labels stored: train on the crops "
              "whose logits dfgen stored (dfgen synthesize --soft-views), replayed exactly, instead of random crops "
              "labelled by the whole image's logits [on where the data stores them].")
@click.option("--repeats", type=click.IntRange(min=1), help="Repeated augmentation: uses of each image [1].")
@click.option("--num-classes", type=click.IntRange(min=1), help="[from dataset.json]")
@click.option("--in-chans", type=click.IntRange(min=1), help="[from dataset.json]")
@click.option("--seed", type=int, help="Seed [0].")
@click.option("--workers", type=click.IntRange(min=0), help="Loader processes per rank [0 on CPU, <=8 on GPU].")
@click.option("--ema/--no-ema", default=None, help="Keep an EMA of the weights [off].")
@click.option("--ema-decay", type=click.FloatRange(0, 1, max_open=True), help="EMA decay per step [0.99996].")
@click.option("--ema-warmup/--no-ema-warmup", default=None,
              help="Ramp the EMA decay up from 0 as 1-(1+step)^-2/3, capped at --ema-decay (short runs) [off].")
@click.option("--eval-every", type=click.IntRange(min=1), help="Epochs between validations; the last always [1].")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), help="[auto]")
@click.option("--precision", type=click.Choice(["auto", "fp32", "bf16", "fp16"]), help="[auto: bf16 on CUDA]")
@click.option("--out", help="Run directory (last.pt, best.pt, metrics.jsonl, curves.png) [runs/distill].")
@click.option("--resume", is_flag=True, default=None, help="Continue the run in --out exactly where it stopped.")
@click.option("--stop-after", type=click.IntRange(min=1), help="Leave after N epochs of this invocation.")
@click.option("--quiet", is_flag=True, default=None, help="No progress bars; one line per epoch.")
def run(config_path: str | None, shards: tuple[str, ...], model_kwargs: tuple[str, ...], **options) -> None:
    """Train a DearKD student: stage 1 with the teacher, stage 2 without (DDP under torchrun)."""
    from distill.train import train

    if not shards and config_path is None:
        raise click.UsageError("Missing option '--shards'.")
    config = build_config(config_path, shards=list(shards), model_kwargs=_key_values(model_kwargs), **options)
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
@click.option("--batch-size", type=click.IntRange(min=1), default=256, show_default=True)
@click.option("--workers", type=click.IntRange(min=0), help="Data loader processes [0 on CPU, 8 on GPU].")
@click.option("--ema", is_flag=True, help="Evaluate the EMA weights.")
def eval_(checkpoint: str, data: str, labels_file: str | None, image_key: str | None, label_key: str, device: str,
          batch_size: int, workers: int | None, ema: bool) -> None:
    """Top-1/top-5 of a checkpoint on DATA, printed as one JSON line {"top1", "top5", "n"} (percent)."""
    from distill.evaluation import evaluate_checkpoint

    result = evaluate_checkpoint(checkpoint, data, device=device, batch_size=batch_size, workers=workers, ema=ema,
                                 labels_file=labels_file, image_key=image_key, label_key=label_key)
    click.echo(json.dumps(result))


def _key_values(pairs: tuple[str, ...]) -> dict[str, Any] | None:
    """("prefix_logit=false", "locality_strength=2") -> {"prefix_logit": False, "locality_strength": 2}."""
    result = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise click.BadParameter(f"expected KEY=VALUE, got {pair!r}", param_hint="'--model-kwargs'")
        try:
            result[key.strip()] = yaml.safe_load(value) if value.strip() else None
        except (yaml.YAMLError, RecursionError):
            raise click.BadParameter(f"{pair!r:.80}: the value is not a YAML value (a number, true/false, text, a "
                                     "list)", param_hint="'--model-kwargs'") from None
    return result or None


def main(argv: list[str] | None = None) -> None:
    """Entry point: user errors become one line on stderr and exit 1 (usage errors 2), never a traceback."""
    run_cli(cli, "distill", argv, "Interrupted; rerun with --resume to continue from the last finished epoch.")
