"""--early-stop: a pixel-mode stage ends when its own windowed loss settles; the images stay a function of the
configuration and seed (rerun and world size), the counted teacher passes fall, bad values are one line."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import dfgen
from dfgen.config import SynthesisConfig
from dfgen.cost import counting
from dfgen.early_stop import StageStop
from dfgen.errors import DfgenError
from dfgen.inversion import EngineSettings, InversionEngine
from dfgen.loss_weights import synthesis_losses

ROOT = Path(__file__).resolve().parents[1]
# batches of 2 classes x 2 images, shards of 4; flips and the diversity distances given: no start-up probe
TINY = dict(teacher="digits", n=8, batch_size=4, shard_size=4, schedule="8:20,16:20", flip="off",
            losses={"ep_reach": 0.2, "margin": 0.34}, quiet=True)


def shard_bytes(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((out / "shards").glob("shard-*.tar"))}


def passes_per_image(out: Path) -> float:
    return json.loads((out / "dataset.json").read_text())["cost"]["per_image"]["teacher_passes"]


def stop_point(losses: list[float], tolerance: float, window: int) -> int | None:
    stop = StageStop(tolerance, window)
    for it, value in enumerate(losses):
        if stop.settled(it, torch.tensor(value)):
            return it + 1
    return None


def test_a_stage_stops_at_the_first_window_that_improves_too_little():
    falling = [100.0 * 0.9 ** i for i in range(40)]  # each window of 5 about 41% below the last
    assert stop_point(falling, 0.1, 5) is None
    # flat from iteration 10: windows 3 (10-14) and 2 (5-9) differ by far more than 1%, windows 4 and 3 not
    settling = falling[:10] + [falling[10]] * 30
    assert stop_point(settling, 0.01, 5) == 20
    assert stop_point([5.0, 4.0, 6.0, 7.0], 0.01, 2) == 4  # a window that gets worse settles too
    assert stop_point([-2.0, -2.0, -3.0, -3.0], 0.1, 2) is None  # negative losses: relative to |mean|
    assert stop_point([-2.0, -2.0, -3.0, -3.0, -3.1, -3.1], 0.1, 2) == 6


def test_the_engine_counts_only_the_iterations_it_ran(digits_teacher):
    t = digits_teacher
    settings = EngineSettings(schedule=[(8, 40), (16, 40)], weights=synthesis_losses(ep_reach=0.2, margin=0.34),
                              teacher_resolution=32, flip=False, log_every=0, soft_topk=0, early_stop=0.99,
                              early_stop_window=4)
    labels = torch.as_tensor([0, 0, 1, 1])
    with InversionEngine(t.model, t.mean, t.std, settings, torch.device("cpu")) as engine, counting() as cost:
        engine.invert(labels, seed=5)
    # every stage ends after its second window (no window improves by 99%): 4 images x 8 iterations x 2 stages,
    # then one forward of the 4 written images
    assert (cost.teacher_passes, cost.teacher_forwards) == (64, 4)


def test_early_stop_is_deterministic_world_size_independent_and_cheaper(tmp_path):
    args = dict(TINY, early_stop=0.05, early_stop_window=5)
    dfgen.synthesize(out=str(tmp_path / "one"), **args)
    for rank in (0, 1):
        dfgen.synthesize(out=str(tmp_path / "two"), rank=rank, world_size=2, **args)
    dfgen.synthesize(out=str(tmp_path / "full"), **TINY)
    one = shard_bytes(tmp_path / "one")
    assert len(one) == 2 and one == shard_bytes(tmp_path / "two")  # a rerun, spread over two ranks
    assert one != shard_bytes(tmp_path / "full")
    stopped, full = passes_per_image(tmp_path / "one"), passes_per_image(tmp_path / "full")
    # whole windows of each batch of 4: the 8 images' total is a multiple of 4 x 5
    assert full == 40 and stopped < full and (stopped * 8) % 20 == 0
    optimizer = json.loads((tmp_path / "one" / "dataset.json").read_text())["optimizer"]
    assert optimizer["early_stop"] == {"tolerance": 0.05, "window": 5}
    assert "early_stop" not in json.loads((tmp_path / "full" / "dataset.json").read_text())["optimizer"]


def test_off_by_default_and_absent_from_the_content():
    content = SynthesisConfig().content_fields()
    assert "early_stop" not in content and "early_stop_window" not in content
    assert SynthesisConfig(early_stop=0.01).content_fields()["early_stop"] == 0.01


@pytest.mark.parametrize("settings, message", [
    ({"early_stop": 0}, "--early-stop must be in (0, 1]"),
    ({"early_stop": -0.1}, "--early-stop must be in (0, 1]"),
    ({"early_stop": 1.0}, "below 1"),
    ({"early_stop": float("nan")}, "--early-stop must be a finite number"),
    ({"early_stop": "x"}, "--early-stop must be a number"),
    ({"early_stop": 0.01, "early_stop_window": 1}, "--early-stop-window must be in [2, inf)"),
    ({"early_stop": 0.01, "early_stop_window": 2.5}, "--early-stop-window must be a whole number"),
    ({"early_stop": 0.01, "mode": "generator"}, "--mode generator takes a fixed --gen-steps"),
])
def test_bad_values_are_refused(settings, message):
    with pytest.raises(DfgenError) as info:
        SynthesisConfig(**settings)
    assert message in str(info.value)


def test_the_cli_refuses_in_one_line(tmp_path):
    result = subprocess.run([sys.executable, "-m", "dfgen", "synthesize", "--teacher", "digits", "-n", "4", "--out",
                             str(tmp_path / "x"), "--early-stop", "2"], capture_output=True, text=True, cwd=ROOT)
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert "--early-stop must be" in result.stderr
