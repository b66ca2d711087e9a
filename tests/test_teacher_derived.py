"""Defaults derived from the teacher by the start-up probe (dfgen.probe): mirror flips only for mirror-invariant
teachers, the easy-positive reach and triplet margin from the teacher's own inter-class distance; the decisions are
recorded, reproducible, and reused on resume."""

import json

import pytest
import torch

from dfgen.chance import chance_bound, near_chance
from dfgen.config import AUTO, LossWeights
from dfgen.inversion import EngineSettings
from dfgen.plan import LabelPlan
from dfgen.probe import (
    MARGIN_FRACTION,
    REACH_FRACTION,
    ProbeFigures,
    apply_probe,
    describe_probe,
    flip_fallback,
    needs_probe,
    probe_labels,
    probe_schedule,
    run_probe,
)

SYMMETRIC = '''
from torch import nn

from dfgen.teachers import load_teacher


class MirrorInvariant(nn.Module):
    """The digits teacher made mirror-invariant by construction: f(x) = g(x) + g(mirror(x))."""

    def __init__(self):
        super().__init__()
        self.base = load_teacher("digits").model

    def forward(self, x):
        return self.base(x) + self.base(x.flip(3))


def make():
    return MirrorInvariant()
'''
DIGITS = ["--image-size", "32", "--mean", "0.3052", "--std", "0.3235"]
FAST = ["--schedule", "16:20,32:20", "--classes-per-batch", "10", "--images-per-class", "2", "--warmup", "2",
        "-n", "20", "--quiet"]


def figures(**changes):
    base = dict(images=32, iterations=100, seconds=1.0, agreement=1.0, mirror_kept=0.95, mirror_prob_drop=0.01,
                negative_distance=0.8, positive_distance=0.1)
    return ProbeFigures(**{**base, **changes})


def test_auto_values_come_from_the_probe_figures():
    weights = LossWeights(ep_reach=AUTO, margin=AUTO)
    flip, resolved = apply_probe(AUTO, weights, figures(mirror_kept=0.95, negative_distance=0.8), 10)
    assert flip is True
    assert resolved.ep_reach == round(REACH_FRACTION * 0.8, 3) and resolved.margin == round(MARGIN_FRACTION * 0.8, 3)
    flip, _ = apply_probe(AUTO, weights, figures(mirror_kept=0.5), 10)
    assert flip is False
    # explicit values are kept; a forced flip ignores the probe
    flip, resolved = apply_probe(False, LossWeights(ep_reach=0.2, margin=AUTO), figures(negative_distance=1.0), 10)
    assert flip is False and resolved.ep_reach == 0.2 and resolved.margin == round(MARGIN_FRACTION, 3)


def test_chance_bound_is_chance_plus_three_standard_errors():
    assert chance_bound(10, 20) == pytest.approx(0.1 + 3 * (0.1 * 0.9 / 20) ** 0.5)  # 0.301
    assert near_chance(0.30, 10, 20) and not near_chance(0.35, 10, 20)
    assert near_chance(0.13, 10, 640) and not near_chance(0.14, 10, 640)  # more images, a tighter bound
    assert not near_chance(0.05, 1000, 32) and near_chance(0.0, 1000, 32)  # 0.018 for 1000 classes
    assert not near_chance(None, 10, 20) and not near_chance(0.0, 10, 0)  # unknown: no claim


def test_a_probe_near_chance_falls_back_to_flips_off_and_says_why():
    weights = LossWeights(ep_reach=AUTO, margin=AUTO)
    mirror_invariant = dict(images=20, mirror_kept=1.0)
    flip, resolved = apply_probe(AUTO, weights, figures(agreement=0.1, **mirror_invariant), 10)
    assert flip is False and resolved.ep_reach == round(REACH_FRACTION * 0.8, 3)  # reach and margin still derived
    assert apply_probe(AUTO, weights, figures(agreement=0.6, **mirror_invariant), 10)[0] is True
    assert apply_probe(AUTO, weights, figures(agreement=0.1, **mirror_invariant), 1000)[0] is True  # 100x chance
    assert apply_probe(True, weights, figures(agreement=0.1, **mirror_invariant), 10)[0] is True  # asked: kept
    line = describe_probe(figures(agreement=0.1, **mirror_invariant), False, weights, 10, AUTO)
    assert "agreement 0.10, near chance (up to 0.30 for 10 classes on 20 images)" in line
    assert "its mirror test means nothing -> flips off (the safe setting" in line and "keep their class" not in line
    assert "near chance" in flip_fallback(AUTO, figures(agreement=0.1, **mirror_invariant), 10)
    assert flip_fallback(False, figures(agreement=0.1, **mirror_invariant), 10) is None
    assert flip_fallback(AUTO, figures(agreement=0.9, **mirror_invariant), 10) is None
    meaningful = describe_probe(figures(agreement=0.9), True, weights, 10, AUTO)
    assert "near chance" not in meaningful and "keep their class 95% -> flips on" in meaningful


def test_the_probe_runs_only_when_something_is_auto():
    assert not needs_probe(True, LossWeights(ep_reach=0.3, margin=0.5))
    assert needs_probe(AUTO, LossWeights(ep_reach=0.3, margin=0.5))
    assert needs_probe(False, LossWeights(ep_reach=AUTO))
    assert not needs_probe(False, LossWeights(ep_reach=AUTO, ep=0.0, triplet=0.0))  # plain DeepInversion
    with pytest.raises(ValueError):
        apply_probe(AUTO, LossWeights(), None, 10)


def test_probe_batch_and_schedule():
    plan = LabelPlan(n=1000, num_classes=100, classes_per_batch=32, images_per_class=4, seed=3, shard_size=128)
    labels = probe_labels(plan)
    assert len(labels) == 16 * 4 and len(set(labels.tolist())) == 16
    assert labels.tolist() == sorted(labels.tolist(), key=labels.tolist().index)  # groups of 4
    assert probe_schedule([(112, 2000), (224, 2000)]) == [(112, 50), (224, 50)]
    assert probe_schedule([(16, 30), (32, 30)]) == [(16, 30), (32, 30)]  # within the budget: unchanged


def test_probe_is_deterministic(digits_teacher):
    plan = LabelPlan(n=100, num_classes=10, classes_per_batch=10, images_per_class=2, seed=0, shard_size=20)
    settings = EngineSettings(schedule=[(16, 10), (32, 10)], weights=LossWeights(), teacher_resolution=32, warmup=2)
    runs = [run_probe(digits_teacher.model, digits_teacher.mean, digits_teacher.std, settings, plan,
                      torch.device("cpu")) for _ in range(2)]
    first, second = ({k: v for k, v in vars(r).items() if k != "seconds"} for r in runs)
    assert first == second
    assert 0 <= first["mirror_kept"] <= 1 and 0 < first["negative_distance"] <= 2


@pytest.fixture(scope="module")
def symmetric_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("user") / "symmetric.py"
    path.write_text(SYMMETRIC)
    return path


def test_a_mirror_invariant_teacher_gets_flips_and_digits_do_not(dfgen_cli, tmp_path, symmetric_file):
    decisions = {}
    for name, teacher in (("symmetric", f"{symmetric_file}:make"), ("digits", "digits")):
        out = tmp_path / name
        extra = DIGITS if name == "symmetric" else []
        code, _, err = dfgen_cli(["synthesize", "--teacher", teacher, *extra, *FAST, "--out", out])
        assert code == 0, err
        assert "probe: 20 images x 40 iterations" in err
        config = json.loads((out / "config.json").read_text())
        dataset = json.loads((out / "dataset.json").read_text())
        derived = config["derived"]
        assert derived["flip"]["requested"] == "auto"
        assert derived["flip"]["value"] == config["content"]["flip"] == dataset["optimizer"]["flip"]
        assert dataset["derived"]["probe"] == derived["probe"]
        decisions[name] = derived
    assert decisions["symmetric"]["probe"]["mirror_kept"] == 1.0 and decisions["symmetric"]["flip"]["value"] is True
    assert decisions["digits"]["probe"]["mirror_kept"] < 0.9 and decisions["digits"]["flip"]["value"] is False
    assert "flips off" not in str(decisions["symmetric"])


def test_the_decision_is_reused_on_resume_and_matches_a_fresh_run(dfgen_cli, tmp_path):
    out = tmp_path / "a"
    args = ["synthesize", "--teacher", "digits", *FAST, "--ep-reach", "auto", "--margin", "auto"]
    code, _, err = dfgen_cli([*args, "--out", out])
    assert code == 0 and "probe:" in err
    first = json.loads((out / "config.json").read_text())
    assert first["content"]["losses"]["ep_reach"] == first["derived"]["ep_reach"]["value"] != "auto"
    code, _, err = dfgen_cli([*args, "--out", out])  # finished: nothing to do, and no second probe
    assert code == 0 and "probe:" not in err and "nothing to do" in err
    code, _, err = dfgen_cli([*args, "--out", tmp_path / "b"])  # a fresh directory probes again: same decision
    assert code == 0
    second = json.loads((tmp_path / "b" / "config.json").read_text())
    assert second["content"] == first["content"]
    # forcing the values the probe chose gives the same configuration (and so the same images)
    d = first["derived"]
    forced = ["synthesize", "--teacher", "digits", *FAST, "--ep-reach", str(d["ep_reach"]["value"]),
              "--margin", str(d["margin"]["value"]), "--flip", "on" if d["flip"]["value"] else "off"]
    code, _, err = dfgen_cli([*forced, "--out", out])
    assert code == 0 and "different configuration" not in err


def test_a_trial_schedule_probes_at_chance_and_keeps_flips_off(dfgen_cli, tmp_path, symmetric_file):
    """A mirror-invariant teacher gets flips from a meaningful probe; five iterations leave noise, on which the mirror
    test says nothing: flips off, the reason printed and recorded."""
    args = ["synthesize", "--teacher", f"{symmetric_file}:make", *DIGITS, *FAST, "--schedule", "16:1"]
    code, _, err = dfgen_cli([*args, "--out", tmp_path / "trial"])
    assert code == 0, err
    derived = json.loads((tmp_path / "trial" / "config.json").read_text())["derived"]
    assert derived["probe"]["mirror_kept"] == 1.0  # the teacher is mirror-invariant: a meaningful probe says on
    assert derived["probe"]["agreement"] <= 0.30 and derived["flip"]["value"] is False
    assert "near chance" in derived["flip"]["reason"]
    assert "near chance (up to 0.30 for 10 classes on 20 images); its mirror test means nothing -> flips off" in err


def test_a_changed_configuration_is_refused_before_the_probe(dfgen_cli, tmp_path, monkeypatch):
    from dfgen import runplan

    out = tmp_path / "out"
    args = ["synthesize", "--teacher", "digits", *FAST, "--schedule", "16:2"]
    code, _, err = dfgen_cli([*args, "--out", out])
    assert code == 0 and "probe:" in err
    probed = []

    def probe_must_not_run(*args, **kwargs):
        probed.append(True)
        raise RuntimeError("the probe ran")

    monkeypatch.setattr(runplan, "run_probe", probe_must_not_run)
    code, _, err = dfgen_cli([*args, "--seed", "1", "--out", out])
    assert code == 1 and "different configuration (differs in: seed)" in err and not probed, err
    code, _, err = dfgen_cli([*args, "--ep", "0.5", "--out", out])  # a loss weight: known before the probe too
    assert code == 1 and "differs in: losses.ep)" in err and not probed, err
    code, _, err = dfgen_cli([*args, "--out", out])  # the same command: its recorded probe is reused
    assert code == 0 and "nothing to do" in err and not probed, err


def test_a_recorded_flip_decision_stands_on_resume(digits_teacher, monkeypatch):
    """A folder begun when a near-chance probe still decided flips on continues with flips on, as recorded."""
    import dataclasses

    from dfgen import runplan
    from dfgen.config import build_config

    config = build_config(None, teacher="digits", n=20, out="unused", schedule="16:1", classes_per_batch=10,
                          images_per_class=2, flip="auto")
    run = runplan.set_up(config, digits_teacher, log=False)
    assert run.flip is False and "near chance" in runplan.derived_record(run)["flip"]["reason"]
    monkeypatch.setattr(runplan, "run_probe", lambda *a, **k: pytest.fail("the recorded probe should be reused"))
    earlier = runplan.derived_record(run)
    earlier["flip"] = {"requested": "auto", "value": True}
    again = runplan.set_up(config, digits_teacher, recorded=earlier, log=False)
    assert again.flip is True and "reason" not in runplan.derived_record(again)["flip"]
    assert dataclasses.replace(again, flip=False).content() == run.content()  # only the flip differs
