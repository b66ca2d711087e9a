"""The amortized (generator) mode and the cost counter: counts against hand-computed cases, and the output
contracts (determinism, world-size independence, SIGKILL + resume, fingerprint) on the bundled digits teacher."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import dfgen
from dfgen.amortized import AmortizedEngine, ChainRunner, checkpoint_path, shards_for_rank
from dfgen.amortized_settings import AmortizedSettings
from dfgen.config import SynthesisConfig, config_fingerprint
from dfgen.cost import Cost, counting
from dfgen.cost_plan import planned_cost
from dfgen.errors import DfgenError
from dfgen.inversion import EngineSettings, InversionEngine
from dfgen.loss_weights import synthesis_losses
from dfgen.plan import LabelPlan
from dfgen.runplan import prepare

ROOT = Path(__file__).resolve().parents[1]
# Tiny: batches of 2 classes x 2 images, shards of 4 images; flips and the diversity distances given, so no start-up
# probe runs (its cost is tested apart).
GENERATOR = {"steps": 2, "warmup_steps": 3, "width": 2, "latent": 8, "chains": 2}
TINY = dict(teacher="digits", batch_size=4, shard_size=4, flip="off", losses={"ep_reach": 0.2, "margin": 0.34},
            mode="generator", generator=GENERATOR, quiet=True)


def shard_bytes(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((out / "shards").glob("shard-*.tar"))}


def labels_of(classes: list[int]) -> torch.Tensor:
    return torch.as_tensor(classes, dtype=torch.long)


def engine_settings(schedule: list[tuple[int, int]]) -> EngineSettings:
    weights = synthesis_losses(ep_reach=0.2, margin=0.34)
    return EngineSettings(schedule=schedule, weights=weights, teacher_resolution=32, flip=False, log_every=0,
                          soft_topk=0)


def test_pixel_engine_counts_its_passes(digits_teacher):
    t = digits_teacher
    settings = engine_settings([(8, 3), (16, 2), (32, 1)])
    with InversionEngine(t.model, t.mean, t.std, settings, torch.device("cpu")) as engine, counting() as cost:
        engine.invert(labels_of([0, 0, 1, 1]), seed=5)
    # 4 images x (3 + 2 + 1) optimisation steps, then one forward of the 4 written images
    assert (cost.teacher_passes, cost.teacher_forwards, cost.generator_flops) == (24, 4, 0)


def test_generator_chain_counts_its_passes_and_flops(digits_teacher):
    t = digits_teacher
    settings = AmortizedSettings(steps=2, warmup_steps=5, width=2, latent=8)
    with InversionEngine(t.model, t.mean, t.std, engine_settings([(32, 1)]), torch.device("cpu")) as inversion:
        engine = AmortizedEngine(inversion, t.num_classes, settings, seed=0, mean=t.mean, std=t.std)
        runner = ChainRunner(engine, engine.initial_state(0), batches=0)
        with counting() as outer, counting() as inner:
            runner.invert(labels_of([0, 0, 1, 1]), seed=1)  # the chain's first batch: warm-up steps
            runner.invert(labels_of([2, 2, 3, 3, 4, 4]), seed=2)
    assert engine.step_flops > engine.emit_flops > 0
    assert inner.teacher_passes == 4 * 5 + 6 * 2
    assert inner.teacher_forwards == 4 + 6
    expected = (4 * 5 + 6 * 2) * engine.step_flops + (4 + 6) * engine.emit_flops + 2 * 3 * engine.parameters
    assert inner.generator_flops == expected
    assert (outer.teacher_passes, outer.generator_flops) == (inner.teacher_passes, inner.generator_flops)


def test_generator_flops_follow_the_architecture(digits_teacher):
    """Width 2, latent 8 at 32 px: linear (8 + 10) -> 8 x 4 x 4; conv 8 -> 4 at 8 px; conv 4 -> 2 at 16 px; conv
    2 -> 1 at 32 px. Multiply-adds of the forward: 18*128 + 8*4*9*64 + 4*2*9*256 + 2*9*1024 = 57,600 (torch counts
    convolutions and matrix products; normalisation and activations are left out)."""
    t = digits_teacher
    with InversionEngine(t.model, t.mean, t.std, engine_settings([(32, 1)]), torch.device("cpu")) as inversion:
        engine = AmortizedEngine(inversion, t.num_classes, AmortizedSettings(width=2, latent=8), 0, t.mean, t.std)
    assert engine.emit_flops == 2 * 57_600


def test_generator_mode_is_deterministic_and_records_its_cost(tmp_path):
    a = dfgen.synthesize(n=8, out=str(tmp_path / "a"), **TINY)
    dfgen.synthesize(n=8, out=str(tmp_path / "b"), **TINY)
    assert a.complete and shard_bytes(tmp_path / "a") == shard_bytes(tmp_path / "b")
    assert len(shard_bytes(tmp_path / "a")) == 2
    description = json.loads((tmp_path / "a" / "dataset.json").read_text())
    assert description["mode"] == "generator" and description["generator"]["chains"] == 2
    cost = description["cost"]
    # two chains of one shard (one batch of 4) each: the warm-up batch's 3 steps; 16 noise images at start-up
    assert (cost["teacher_passes"], cost["teacher_forwards"]) == (2 * 4 * 3, 2 * 4 + 16)
    assert cost["per_image"]["teacher_passes"] == 3.0 and cost["generator_flops"] > 0 and cost["seconds"] > 0
    sidecar = json.loads((tmp_path / "a" / "shards" / "shard-000001.json").read_text())
    assert sidecar["cost"]["teacher_passes"] == 12 and sidecar["cost"]["per_image"]["teacher_passes"] == 3.0
    planned = planned_cost(prepare(SynthesisConfig(n=8, out=str(tmp_path / "c"), **TINY), log=False))  # --dry-run's
    assert planned["teacher_passes"] == 3.0 and planned["teacher_forwards"] == (8 + 16) / 8
    assert planned["generator_flops"] == pytest.approx(cost["per_image"]["generator_flops"], abs=0.1)


def test_world_size_does_not_change_the_images(tmp_path):
    args = dict(n=16, **TINY)  # 4 shards in 2 chains (0, 2) and (1, 3)
    dfgen.synthesize(out=str(tmp_path / "one"), **args)
    assert shards_for_rank(LabelPlan(16, 10, 2, 2, 0, 4), 2, 1, 2) == [1, 3]
    first = dfgen.synthesize(out=str(tmp_path / "two"), rank=0, world_size=2, **args)
    second = dfgen.synthesize(out=str(tmp_path / "two"), rank=1, world_size=2, **args)
    assert (first.shards_made, second.shards_made) == ([0, 2], [1, 3]) and second.complete
    assert shard_bytes(tmp_path / "one") == shard_bytes(tmp_path / "two")


def test_missing_checkpoint_is_replayed(tmp_path):
    args = dict(n=12, **{**TINY, "generator": {**GENERATOR, "chains": 1}})  # one chain of 3 shards
    out = tmp_path / "out"
    dfgen.synthesize(out=str(out), **args)
    reference = shard_bytes(out)
    for shard in (1, 2):
        (out / "shards" / f"shard-{shard:06d}.tar").unlink()
    checkpoint_path(out, 0, 0).unlink(missing_ok=True)  # shard 1 must be made from a replay of shard 0
    result = dfgen.synthesize(out=str(out), **args)
    assert result.shards_made == [1, 2] and shard_bytes(out) == reference
    assert [p.name for p in (out / "shards" / "chains").iterdir()] == ["chain-0000-shard-000002.pt"]


def test_sigkill_then_resume_is_identical(tmp_path):
    generator = {**GENERATOR, "chains": 1, "steps": 30}
    args = dict(n=16, **{**TINY, "generator": generator})
    dfgen.synthesize(out=str(tmp_path / "reference"), **args)
    out = tmp_path / "killed"
    code = (f"import dfgen; dfgen.synthesize(n=16, out={str(out)!r}, " +
            ", ".join(f"{k}={v!r}" for k, v in {**TINY, "generator": generator}.items()) + ")")
    proc = subprocess.Popen([sys.executable, "-c", code], env={**os.environ, "PYTHONPATH": str(ROOT)},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    first = out / "shards" / "shard-000000.json"
    deadline = time.time() + 600
    while not first.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert first.exists() and not (out / "dataset.json").exists(), "the kill came too late to test a resume"
    result = dfgen.synthesize(out=str(out), **args)
    assert 0 not in result.shards_made and result.complete
    assert shard_bytes(out) == shard_bytes(tmp_path / "reference")


def test_fingerprint_holds_the_mode_and_its_settings():
    pixels = SynthesisConfig(n=8, mode="pixels").content_fields()
    assert "mode" not in pixels and "generator" not in pixels  # pixel-mode directories keep their fingerprint
    generator = SynthesisConfig(n=8, mode="generator").content_fields()
    assert generator["mode"] == "generator" and generator["generator"]["steps"] == 30
    fingerprints = {config_fingerprint(SynthesisConfig(n=8, mode="generator", generator=g).content_fields())
                    for g in ({}, {"steps": 5}, {"width": 4}, {"chains": 2}, {"meta_step": 0.3})}
    assert len(fingerprints) == 5
    assert config_fingerprint(pixels) != config_fingerprint(generator)


@pytest.mark.parametrize("bad", [{"steps": 0}, {"meta_step": 0.0}, {"meta_step": 1.5}, {"chains": 0},
                                 {"lr": -1.0}])
def test_bad_generator_settings_are_refused(bad):
    with pytest.raises(DfgenError):
        SynthesisConfig(mode="generator", generator=bad)
    with pytest.raises(DfgenError, match="--mode"):
        SynthesisConfig(mode="latent")


def test_cost_record_per_image():
    cost = Cost(teacher_passes=30, teacher_forwards=12, generator_flops=900, seconds=1.5)
    record = cost.record(images=3)
    assert record["per_image"] == {"teacher_passes": 10.0, "teacher_forwards": 4.0, "generator_flops": 300.0,
                                   "seconds": 0.5}
    assert Cost.from_record(record) == cost


def test_generator_mode_has_its_own_bn_weight_unless_given():
    from dfgen.config import build_config

    def weight(**options):
        return prepare(build_config(None, teacher="digits", **options), log=False).config.losses.bn

    assert weight(mode="generator") == 10.0  # a grey teacher (colour teachers: tests/test_mode_choice.py)
    assert weight(mode="generator", bn=50.0) == 50.0
    assert weight() == 10.0 and weight(mode="pixels") == 100.0
    api = SynthesisConfig(teacher="digits", mode="generator")  # the API's config takes the mode's weight too ...
    assert prepare(api, log=False).config.losses.bn == 10.0
    assert not build_config(None, mode="generator", bn=100.0).mode_bn  # ... unless one is given


def test_processes_beyond_the_chains_are_told_they_have_no_work(tmp_path, capsys):
    args = dict(n=16, out=str(tmp_path / "o"), **TINY)  # 4 shards, 2 chains
    run = prepare(SynthesisConfig(rank=0, world_size=3, **args))
    note = ("generator mode: 1 of the 3 processes would have no work, since chains of shards go to processes whole "
            "and this run has 2 (--gen-chains 2, 4 shard(s)); to use them all give --gen-chains 3 or more (the chain "
            "count is part of the configuration, so the images change with it)")
    assert note in run.notes[-1] and f"note: {run.notes[-1]}" in capsys.readouterr().err
    assert not any("no work" in n for n in prepare(SynthesisConfig(rank=0, world_size=2, **args)).notes)
    fewer_shards = SynthesisConfig(**{**args, "n": 4, "rank": 0, "world_size": 2})  # one shard: one chain has work
    assert prepare(fewer_shards, log=False).notes[-1].endswith(
        "1 of the 2 processes would have no work, since chains of shards go to processes whole and this run has 1 "
        "(--gen-chains 2, 1 shard(s)); to use them all give at least 2 shards (a smaller --shard-size)")
    pixels = SynthesisConfig(**{**args, "mode": "pixels", "generator": None, "rank": 0, "world_size": 3})
    assert not any("no work" in n for n in prepare(pixels, log=False).notes)
