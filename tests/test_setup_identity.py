"""`dfgen synthesize` on the digits preset, pinned byte for byte: the shard tars' sha256, the lines the command
prints (times masked), what config.json records of the start-up probe, and the `--dry-run` text (estimates
masked). Run set-up may be reorganised freely; what it writes and prints may not change.

The images are exact functions of the configuration on one kind of CPU; the figures were taken on x86-64 with
the project's torch, two threads."""

import dataclasses
import hashlib
import json
import re
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
# The preset, shrunk: 5 classes x 2 images a batch, 30 images in shards of 20 (25 asked: rounded to the batch, noted),
# a short schedule; reach and margin stay auto, so the start-up probe runs.
ARGS = ["synthesize", "--config", ROOT / "configs" / "digits.yaml", "-n", "30", "--schedule", "8:6,16:6",
        "--classes-per-batch", "5", "--images-per-class", "2", "--shard-size", "25", "--warmup", "2", "--quiet"]

BN_NOISE_LEVELS = [1.47134, 21.5478, 14.9342, 19.5138, 21.6181]  # each BN layer's loss on noise
SHARD_SHA256 = {
    "shard-000000.tar": "57cdd5f6646542eca935dcc695390590912d6c699338bb44a9d0b89b0f0bb39e",
    "shard-000001.tar": "c98475bd479f122f13b971ab61a9173bb90bbcd28dfd6d278ed03e973e014507",
}
RUN_LINES = [
    "note: --shard-size 25 is not a multiple of the batch size 10; using 20",
    "probe: 20 images x 12 iterations in <s>; agreement 0.15, near chance (up to 0.30 for 10 classes on 20 images); "
    "mirrored images keep their class 40% -> flips off; "
    "nearest other-class distance 0.413 -> reach 0.147, margin 0.245",
    "shard 0 done: 20 images, agreement 0.150, <s>",
    "shard 1 done: 10 images, agreement 0.000, <s>",
    "dataset complete: 30 images in 2 shard(s) at <out>",
]
RESUME_LINES = [
    "note: --shard-size 25 is not a multiple of the batch size 10; using 20",
    "all 2 shard(s) of this process are already done in <out>; nothing to do",
]
DERIVED = {
    "key": "40bacdf31b6f1140",
    "schedule": {"requested": "8:6,16:6", "value": "8:6,16:6"},
    "multires": "native",
    "accepted_resolutions": {"8": "ok", "16": "ok", "32": "ok"},
    "flip": {"requested": False, "value": False},
    "ep_reach": {"requested": "auto", "value": 0.147},
    "margin": {"requested": "auto", "value": 0.245},
    "probe": {"images": 20, "iterations": 12, "seconds": "<s>", "agreement": 0.15, "mirror_kept": 0.4,
              "mirror_prob_drop": 0.029, "negative_distance": 0.4126, "positive_distance": 0.6679},
    "bn_noise_levels": BN_NOISE_LEVELS,
}
DRY_RUN_LINES = [
    "teacher      digits (dfgen:digits), 10 classes, input (1, 32, 32)",
    "images       30 in 2 shard(s) of 20 (3 batches of 5 classes x 2)",
    "schedule     8:6,16:6 on cpu (fp32)",
    "probe        flips/reach/margin set to auto: decided at start by inverting 20 images for 12 iterations on each "
    "rank",
    "cost         20 teacher passes and 3.53 forwards per image (pixels; start-up included)",
    "rank 0       1 shard(s), 20 images",
    "rank 1       1 shard(s), 10 images",
    "rank 2       0 shard(s), 0 images",
    "disk         ~<x> (png; upper bound from noise-like images)",
    "time         ~<x> for the busiest rank (2 batches at ~<x> + probe <x>), <x> images/s per process",
    "basis        the run's batch of 10 timed for 4 iterations per stage after 2 warm-ups on cpu (fp32); random "
    "teacher weights (the cost does not depend on them)",
    "output       <out>",
    "[rank 0/3] note: --shard-size 25 is not a multiple of the batch size 10; using 20",
]

_SECONDS = re.compile(r"\d+(\.\d+)?s\b")


def _masked(text: str, out: Path) -> list[str]:
    """The lines, with times (1.2s) and the output directory masked: the only things that vary between runs."""
    return [_SECONDS.sub("<s>", line.replace(str(out), "<out>")) for line in text.splitlines()]


def _masked_estimate(text: str, out: Path) -> list[str]:
    """The dry run's lines with the measured figures (sizes, times, rates) masked, and the timed batches told as the
    full one (a loaded machine times two smaller ones instead); the plan itself stays."""
    text = text.replace(str(out), "<out>")
    text = re.sub(r"batches of 4 and 8 timed for (.*), extrapolated along a line to the run's 10 \(.*?\)",
                  r"the run's batch of 10 timed for \1", text)
    text = re.sub(r"~\S+ (B|KB|MB|GB|TB|s|min|h|days)\b", "~<x>", text)
    text = re.sub(r"probe \S+ (s|min|h|days)\)", "probe <x>)", text)
    return re.sub(r"\S+ images/s", "<x> images/s", text).splitlines()


@pytest.fixture
def two_threads():
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(threads)


def test_digits_run_writes_and_prints_the_same_bytes(dfgen_cli, tmp_path, two_threads):
    out = tmp_path / "digits"
    code, stdout, stderr = dfgen_cli([*ARGS, "--out", out])
    assert code == 0, stderr
    shards = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted((out / "shards").glob("*.tar"))}
    derived = json.loads((out / "config.json").read_text())["derived"]
    derived["probe"]["seconds"] = "<s>"
    code, resume_out, resume_err = dfgen_cli([*ARGS, "--out", out])
    assert code == 0, resume_err
    assert shards == SHARD_SHA256
    assert _masked(stdout + stderr, out) == RUN_LINES
    assert _masked(resume_out + resume_err, out) == RESUME_LINES
    assert derived == DERIVED


def test_digits_dry_run_prints_the_same_plan(dfgen_cli, tmp_path, two_threads):
    out = tmp_path / "digits"
    code, stdout, stderr = dfgen_cli([*ARGS, "--out", out, "--dry-run", "--world-size", "3"])
    assert code == 0, stderr
    assert _masked_estimate(stdout + stderr, out) == DRY_RUN_LINES
    assert not out.exists()


def test_set_up_returns_a_finished_frozen_run_and_reuses_a_recorded_probe(digits_teacher, monkeypatch):
    from dfgen import runplan
    from dfgen.config import build_config
    from dfgen.probe import MARGIN_FRACTION, STAND_IN

    config = build_config(ROOT / "configs" / "digits.yaml", n=20, out="unused", schedule="8:2,16:2",
                          classes_per_batch=5, images_per_class=2)
    run = runplan.set_up(config, digits_teacher, log=False)
    assert run.flip is False and run.probe.images == 20 and len(run.noise_levels) == 5
    assert isinstance(run.weights.ep_reach, float) and isinstance(run.weights.margin, float)  # no "auto" left
    with pytest.raises(dataclasses.FrozenInstanceError):
        run.flip = True

    def no_probe(*args, **kwargs):
        raise AssertionError("the recorded probe should have been reused")

    monkeypatch.setattr(runplan, "run_probe", no_probe)
    again = runplan.set_up(config, digits_teacher, recorded=runplan.derived_record(run), log=False)
    assert (again.probe, again.weights, again.noise_levels) == (run.probe, run.weights, run.noise_levels)
    assert again.content() == run.content()
    planned = runplan.set_up(config, digits_teacher, log=False, probe=False)  # the dry run's: stand-in values
    assert planned.probe == STAND_IN
    assert planned.weights.margin == round(MARGIN_FRACTION * STAND_IN.negative_distance, 3)
    changed = dataclasses.replace(config, seed=1)  # another request: the record is not its probe
    with pytest.raises(AssertionError, match="should have been reused"):
        runplan.set_up(changed, digits_teacher, recorded=runplan.derived_record(run), log=False)
