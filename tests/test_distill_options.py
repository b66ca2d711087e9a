"""`distill run`'s options: one per TrainConfig field, timm's names, flags over the --config file (a YAML preset or a
run's own config.json), `none` for optional values, and one-line errors naming the option and what it accepts. The
configuration file reader is shared with dfgen (exponent numbers such as 5e-4 are numbers in both)."""

import dataclasses
from pathlib import Path

import pytest
import torch

from dfgen.config import build_config as synthesis_config
from dfgen.config_file import read_config_file
from distill import TrainConfig, build_config
from distill.cli import main, run
from distill.cli_options import given_options
from distill.errors import DistillError

ROOT = Path(__file__).resolve().parents[1]
PRESET = ROOT / "configs" / "distill_digits.yaml"


def parsed(*args) -> TrainConfig:
    """The configuration `distill run ARGS` trains with (parsed, not run)."""
    ctx = run.make_context("run", [str(a) for a in args])
    options = dict(ctx.params)
    return build_config(options.pop("config_path"), **given_options(options))


def test_every_field_has_an_option():
    options = {p.name for p in run.params}
    assert {f.name for f in dataclasses.fields(TrainConfig)} <= options


def test_timms_names_set_the_fields():
    cfg = parsed("--shards", "x", "--opt", "sgd", "--weight-decay", "1e-4", "--warmup-epochs", "0", "--min-lr", "0",
                 "--drop-path", "0.2", "--aa", "rand-m5-mstd0.5", "--mixup", "0", "--cutmix", "0.5", "--smoothing",
                 "0", "--reprob", "0.1", "--clip-grad", "5", "--img-size", "64", "-b", "32", "-j", "2", "--output",
                 "runs/x", "--model-ema", "--model-ema-decay", "0.9", "--aug-repeats", "3", "-vb", "8",
                 "--scale", "0.5", "1", "--opt-eps", "1e-6")
    assert (cfg.opt, cfg.weight_decay, cfg.warmup_epochs, cfg.min_lr, cfg.drop_path) == ("sgd", 1e-4, 0, 0.0, 0.2)
    assert (cfg.aa, cfg.mixup, cfg.cutmix, cfg.smoothing, cfg.reprob, cfg.clip_grad) == (
        "rand-m5-mstd0.5", 0.0, 0.5, 0.0, 0.1, 5.0)
    assert (cfg.img_size, cfg.batch_size, cfg.workers, cfg.out, cfg.ema, cfg.ema_decay) == (
        64, 32, 2, "runs/x", True, 0.9)
    assert (cfg.repeats, cfg.eval_batch_size, cfg.scale, cfg.opt_eps) == (3, 8, (0.5, 1.0), 1e-6)
    assert cfg.mix is None  # --mixup is the augmentation, not the real/synthetic mixing ratio
    both = parsed("--shards", "a", "--shards", "b", "--mix", "0.3,0.7", "--mixup", "0.2")
    assert (both.mix, both.mixup) == ([0.3, 0.7], 0.2)


def test_flags_override_the_file_and_none_clears_its_value():
    preset = build_config(PRESET, shards=["x"])
    assert (preset.aa, preset.ema, preset.cutmix) == ("rand-m6-mstd0.5-inc1-tweights", True, 1.0)
    cfg = parsed("--config", PRESET, "--shards", "x", "--aa", "none", "--no-ema", "--cutmix", "0", "--lr", "1e-3")
    assert (cfg.aa, cfg.ema, cfg.cutmix, cfg.lr) == (None, False, 0.0, 1e-3)
    assert cfg.epochs == preset.epochs and cfg.hflip == preset.hflip  # what no flag names stays the file's
    assert parsed("--config", PRESET, "--shards", "x").content() == preset.content()


def test_exponent_numbers_are_numbers_in_both_tools(tmp_path):
    text = "lr: 5e-4\nopt_eps: 1e-8\nmin_lr: 1E-6\nshards: [x]\n"
    (tmp_path / "d.yaml").write_text(text)
    data = read_config_file(tmp_path / "d.yaml")
    assert data["lr"] == 5e-4 and isinstance(data["lr"], float) and data["opt_eps"] == 1e-8
    assert data["min_lr"] == 1e-6
    cfg = build_config(tmp_path / "d.yaml")
    assert (cfg.lr, cfg.opt_eps) == (5e-4, 1e-8)
    (tmp_path / "s.yaml").write_text("teacher: digits\nlr: 5e-2\nbn: 1e-2\n")
    synthesis = synthesis_config(tmp_path / "s.yaml")
    assert (synthesis.lr, synthesis.losses.bn) == (5e-2, 1e-2)
    (tmp_path / "q.yaml").write_text("lr: '5e-4'\nname: 1e3x\n")  # quoted text stays text
    assert read_config_file(tmp_path / "q.yaml") == {"lr": "5e-4", "name": "1e3x"}


@pytest.mark.parametrize(("text", "message"), [
    ("shards: [x]\nmixupp: 0.5\n", r"config file .*: unknown option 'mixupp'; did you mean mixup"),
    ("shards: [x]\nlr: fast\n", "lr must be a number, got 'fast'"),
    ("shards: [x]\nsmoothing: 1.5\n", r"smoothing must be in \[0, 1\), got 1.5"),
    ("shards: [x]\nopt: adamz\n", "opt must be one of timm's optimizers .* got 'adamz'"),
    ("shards: [x]\nremode: fancy\n", "remode must be one of pixel, rand, const, got 'fancy'"),
    ("shards: 5\n", "shards must be a list of sources"),
    ("shards: [x]\nepochs: [1, 2]\n", "epochs must be a number, got \\[1, 2\\]"),
])
def test_bad_file_values_are_one_line(tmp_path, capsys, text, message):
    import re

    (tmp_path / "bad.yaml").write_text(text)
    with pytest.raises(SystemExit) as exit_info:
        main(["run", "--config", str(tmp_path / "bad.yaml"), "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert exit_info.value.code == 1, err
    assert err.startswith("Error: ") and len(err.strip().splitlines()) == 1 and re.search(message, err), err
    assert not (tmp_path / "o").exists()


def test_a_runs_config_json_reruns_the_run(digits, tmp_path, capsys):
    first, again = tmp_path / "first", tmp_path / "again"
    main(["run", "--config", str(PRESET), "--shards", str(digits / "train"), "--epochs", "1", "--stage1-epochs", "0",
          "-b", "16", "--opt-eps", "1e-7", "--lr", "5e-4", "-j", "0", "--device", "cpu", "--quiet", "--attn-images",
          "0", "--output", str(first)])
    main(["run", "--config", str(first / "config.json"), "--out", str(again)])
    a = torch.load(first / "last.pt", weights_only=True)
    b = torch.load(again / "last.pt", weights_only=True)
    assert TrainConfig.from_json(b["config"]).content() == TrainConfig.from_json(a["config"]).content()
    assert TrainConfig.from_json(b["config"]).opt_eps == 1e-7
    assert all(torch.equal(a["state_dict"][k], b["state_dict"][k]) for k in a["state_dict"])
    capsys.readouterr()
    with pytest.raises(SystemExit):  # into its own directory only with --resume
        main(["run", "--config", str(first / "config.json")])
    assert capsys.readouterr().err.startswith(f"Error: {first} already holds a run (last.pt); pass --resume")


def test_a_run_shorter_than_the_default_stage1_keeps_dearkds_share(capsys, tmp_path):
    assert build_config(epochs=12).stage1_epochs == 10  # 250/300 of 12
    assert "--stage1-epochs 10" in capsys.readouterr().err
    assert build_config(epochs=1).stage1_epochs == 1
    assert build_config(epochs=300).stage1_epochs == 250  # the default run is untouched
    assert build_config(epochs=12, stage1_epochs=0).stage1_epochs == 0  # a given stage 1 stands
    preset = tmp_path / "p.yaml"
    preset.write_text("epochs: 6\n")
    assert build_config(preset).stage1_epochs == 5
    with pytest.raises(DistillError, match="must be between 0 and --epochs"):
        build_config(epochs=3, stage1_epochs=5)  # given, and out of range: refused as before
