"""Every value checked where it enters (flags, YAML presets, JSON files): type, range, finiteness, size limits for
what is allocated or looped over, depth and size limits for YAML; one line each, never a traceback."""

from __future__ import annotations

import errno
import itertools

import click
import pytest

from dfgen.config import SynthesisConfig, build_config
from dfgen.dry_run import rank_batches
from dfgen.errors import DfgenError, run_cli
from dfgen.outdir import read_claim
from dfgen.parsing import parse_kwargs
from dfgen.plan import LabelPlan

BASE = ["synthesize", "--teacher", "digits", "-n", "10", "--out"]


@pytest.mark.parametrize("flags, code, message", [
    (["--seed", "-1"], 1, "--seed must be in [0, "),
    (["--lr", "nan"], 1, "--lr must be a finite number"),
    (["--lr", "-1"], 1, "--lr must be in (0, inf)"),
    (["--bn", "inf"], 1, "--bn must be a finite number"),
    (["--mean", "nan,1,1"], 2, "must hold finite numbers"),
    (["--schedule", "100000:1"], 2, "resolution 100000 is larger than 4096 px"),
    (["--schedule", "16:10000000"], 2, "iterations 10000000 per stage exceed"),
    (["-n", "1000000M", "--dry-run"], 2, "more than the 1,000,000,000 dfgen plans for"),
    (["--teacher-kwargs", "{a: " * 40 + "1" + "}" * 40], 2, "nested deeper than 16 levels"),
])
def test_bad_flags_are_one_line(dfgen_cli, tmp_path, flags, code, message):
    status, _, err = dfgen_cli([*BASE, tmp_path / "out", *flags])
    assert status == code and message in err, err
    lines = err.strip().splitlines()  # click's usage lines (exit 2), then the one error
    assert "Traceback" not in err and lines[-1].startswith("Error: ") and message in lines[-1]
    assert not (tmp_path / "out").exists()


ALIAS_BOMB = """teacher_kwargs:
  a: &a [x, x, x, x, x, x, x, x, x, x]
  b: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a, *a]
  c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b, *b]
  d: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c, *c]
  e: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d, *d]
  f: [*e, *e, *e, *e, *e, *e, *e, *e, *e, *e]
"""


@pytest.mark.parametrize("text, message", [
    ("1: 2\n", "option names must be text, got 1"),
    ("lr: abc\n", "--lr must be a number, got 'abc'"),
    ("warmup: -5\n", "--warmup must be in [0, "),
    ("seed: 1.5\n", "--seed must be a whole number, got 1.5"),
    ("quiet: 'no'\n", "quiet must be true or false"),
    ("out: 5\n", "--out must be text, got 5"),
    ("losses: {bn: abc}\n", "--bn must be a number, got 'abc'"),
    ("losses: [1, 2]\n", "losses must be a mapping"),
    ("margin: 3\n", "--margin must be in [0, 2]"),
    ("schedule: [[16, x]]\n", "--schedule needs resolution:iterations pairs of whole numbers"),
    (ALIAS_BOMB, "holds more than 10,000 values (counting repeated YAML aliases)"),
    ("teacher_kwargs: " + "[" * 5000 + "]" * 5000 + "\n", "nested"),
])
def test_bad_presets_are_one_line(tmp_path, text, message):
    preset = tmp_path / "preset.yaml"
    preset.write_text(text)
    with pytest.raises(DfgenError) as excinfo:
        build_config(preset)
    assert message in str(excinfo.value) and "\n" not in str(excinfo.value)


def test_an_alias_bomb_in_teacher_kwargs_is_refused_without_expanding_it():
    with pytest.raises(DfgenError, match="more than 10,000 values"):
        parse_kwargs(ALIAS_BOMB.split("\n", 1)[1])
    assert parse_kwargs("{num_classes: 10, sizes: [1, [2, 3]]}") == {"num_classes": 10, "sizes": [1, [2, 3]]}


def test_good_values_pass_and_are_normalised():
    config = SynthesisConfig(seed=3, lr=1, warmup=0, schedule=[[8, 2.0], (16, 2)], losses={"bn": 1, "margin": "auto"})
    assert config.lr == 1.0 and isinstance(config.lr, float) and config.schedule == [(8, 2), (16, 2)]
    with pytest.raises(DfgenError, match="--jitter-fraction must be in"):
        SynthesisConfig(jitter_fraction=0.9)


def test_dry_run_counts_are_closed_form_and_match_the_batches():
    for n, shard_batches, world in itertools.product([1, 9, 10, 41, 100, 1000], [1, 2, 4], [1, 2, 3, 7]):
        plan = LabelPlan(n=n, num_classes=10, classes_per_batch=5, images_per_class=2, seed=0,
                         shard_size=10 * shard_batches)
        for rank in range(world):
            sizes = [len(plan.batch_range(b)) for k in plan.shards_for_rank(rank, world) for b in plan.shard_batches(k)]
            images, full, tail = rank_batches(plan, rank, world)
            assert (images, full * plan.batch_size + tail, full + bool(tail)) == (sum(sizes), sum(sizes), len(sizes))
    huge = LabelPlan(n=10**9, num_classes=10, classes_per_batch=5, images_per_class=2, seed=0, shard_size=1000)
    assert rank_batches(huge, 0, 1) == (10**9, 10**8, 0)  # instant: no loop over a hundred million batches


def test_a_damaged_config_json_is_one_line(tmp_path, dfgen_cli):
    out = tmp_path / "syn"
    (out / "shards").mkdir(parents=True)
    (out / "config.json").write_text('{"content": {"half')
    with pytest.raises(DfgenError) as excinfo:
        read_claim(out)
    assert "config.json cannot be read (not valid JSON)" in str(excinfo.value) and "--overwrite" in str(excinfo.value)
    code, _, err = dfgen_cli(["index", out])
    assert code == 1 and "cannot be read" in err and len(err.strip().splitlines()) == 1
    (out / "config.json").write_text("[" * 100000 + "]" * 100000)
    code, _, err = dfgen_cli(["index", out])
    assert code == 1 and "cannot be read" in err


def test_a_write_over_quota_or_on_a_read_only_disk_is_one_line(capsys):
    for number, words in ((errno.EDQUOT, "disk quota exceeded"), (errno.ENOSPC, "no space left"),
                          (errno.EROFS, "read-only")):
        @click.command()
        def write(number=number) -> None:
            raise OSError(number, "refused", "/data/out/shards/shard-000000.tar")

        with pytest.raises(SystemExit) as exited:
            run_cli(write, "dfgen", [], "interrupted")
        err = capsys.readouterr().err
        assert exited.value.code == 1 and words in err and "shard-000000.tar" in err
        assert len(err.strip().splitlines()) == 1


def test_an_edquot_while_writing_a_shard_is_a_disk_full_error(tmp_path, monkeypatch):
    from dfgen import shards
    from dfgen.shards import Sample

    def over_quota(path, write, replace=True):
        raise OSError(errno.EDQUOT, "Disk quota exceeded")

    monkeypatch.setattr(shards, "write_atomic", over_quota)
    sample = Sample(key="000000", image=b"png", label=0, meta={})
    with pytest.raises(DfgenError, match="disk full \\(or over quota\\) while writing shard-000000.tar"):
        shards.write_shard(tmp_path, 0, [sample], "png", {})
