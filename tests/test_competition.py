"""Two-round synthesis (DeepInversion's ADI): the competition term against hand-computed values, its gradient, its
place in the objective, the configuration's checks, and `dfgen synthesize --competitor` end to end (deterministic,
different from a run without it, recorded in config.json, one-line errors for a competitor that does not fit)."""

import json
import math
from pathlib import Path

import pytest
import torch

import dfgen
from dfgen import losses as L
from dfgen.config import COMPETITION, LossWeights
from dfgen.errors import DfgenError
from dfgen.inversion import objective

SMALL = ["--teacher", "digits", "--schedule", "8:4,16:4", "--classes-per-batch", "5", "--images-per-class", "2",
         "--warmup", "1", "--quiet", "-n", "10"]

COMPETITOR = '''
import torch
from torch import nn


def student(num_classes=10, in_chans=1, width=4):
    torch.manual_seed(1)
    return nn.Sequential(nn.Conv2d(in_chans, width, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(),
                         nn.Linear(4 * width, num_classes))


def three_classes(**kwargs):
    return student(num_classes=3)
'''


def test_competition_loss_hand_computed():
    # p_teacher = (1/2, 1/2), p_student = (3/4, 1/4), m = (5/8, 3/8)
    kl_t = 0.5 * math.log(0.5 / 0.625) + 0.5 * math.log(0.5 / 0.375)
    kl_s = 0.75 * math.log(0.75 / 0.625) + 0.25 * math.log(0.25 / 0.375)
    expected = 1 - 0.5 * (kl_t + kl_s)
    value = L.competition_loss(torch.tensor([[0.0, 0.0]]), torch.tensor([[math.log(3.0), 0.0]]))
    assert value.item() == pytest.approx(expected, abs=1e-6)
    same = torch.randn(4, 10)
    assert L.competition_loss(same, same).item() == pytest.approx(1.0, abs=1e-6)
    apart = torch.tensor([[60.0, 0.0], [0.0, 60.0]])  # disjoint certainties: JS = ln 2, the smallest value
    assert L.competition_loss(apart, apart.flip(1)).item() == pytest.approx(1 - math.log(2), abs=1e-6)


def test_competition_gradient_pushes_the_views_apart():
    teacher = torch.tensor([[2.0, 0.0, -1.0]], dtype=torch.float64, requires_grad=True)
    student = torch.tensor([[1.0, 0.5, 0.0]], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(L.competition_loss, (teacher, student))
    before = L.competition_loss(teacher, student)
    before.backward()
    with torch.no_grad():  # a small step down the gradient raises the disagreement (lowers 1 - JS)
        after = L.competition_loss(teacher - 0.1 * teacher.grad, student - 0.1 * student.grad)
    assert after < before


def test_objective_adds_the_weighted_term_last():
    torch.manual_seed(0)
    logits, embedding = torch.randn(4, 10), torch.randn(4, 6)
    jittered, labels = torch.rand(4, 1, 8, 8), torch.tensor([0, 0, 1, 1])
    bn = [torch.tensor(0.3), torch.tensor(0.2)]
    student = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10))
    plain = objective(logits, embedding, bn, jittered, labels, LossWeights(form="paper"))
    weights = LossWeights(form="paper", competition=2.5)
    with_it = objective(logits, embedding, bn, jittered, labels, weights, competitor=student)
    term = L.competition_loss(logits, student(jittered))
    assert with_it["competition"].item() == pytest.approx(term.item(), abs=1e-7)
    assert with_it["total"].item() == pytest.approx((plain["total"] + 2.5 * term).item(), abs=1e-6)
    with pytest.raises(ValueError, match="competitor"):
        objective(logits, embedding, bn, jittered, labels, weights)


def test_configuration_checks():
    with pytest.raises(DfgenError, match="--competition needs --competitor"):
        dfgen.build_config(None, competition=1.0)
    with pytest.raises(DfgenError, match="--competitor-weights"):
        dfgen.build_config(None, competitor="student.py:student")
    with pytest.raises(DfgenError, match="--competitor-weights needs --competitor"):
        dfgen.build_config(None, competitor_weights="w.pt")
    with pytest.raises(DfgenError, match=">= 0"):
        dfgen.build_config(None, competitor="s.py:s", competitor_weights="w.pt", competition=-1.0)
    config = dfgen.build_config(None, competitor="s.py:s", competitor_weights="w.pt")
    assert config.losses.competition == COMPETITION
    assert config.content_fields()["losses"]["competition"] == COMPETITION
    # without a competitor nothing is added to the content: earlier output directories keep their fingerprint
    content = dfgen.build_config(None).content_fields()
    assert "competition" not in content["losses"] and "competitor" not in content


@pytest.fixture
def competitor(tmp_path):
    (tmp_path / "student.py").write_text(COMPETITOR)
    namespace: dict = {}
    exec(COMPETITOR, namespace)
    torch.save(namespace["student"]().state_dict(), tmp_path / "student.pt")
    return f"{tmp_path / 'student.py'}:student", tmp_path / "student.pt"


def test_synthesize_with_a_competitor_end_to_end(dfgen_cli, tmp_path, competitor):
    name, weights = competitor
    args = ["synthesize", *SMALL, "--competitor", name, "--competitor-weights", weights]
    outs = [tmp_path / "a", tmp_path / "b"]
    for out in outs:
        code, _, err = dfgen_cli([*args, "--out", out])
        assert code == 0, err
    code, _, err = dfgen_cli(["synthesize", *SMALL, "--out", tmp_path / "plain"])
    assert code == 0, err

    def shard_bytes(out: Path) -> bytes:
        return b"".join(p.read_bytes() for p in sorted((out / "shards").glob("*.tar")))

    assert shard_bytes(outs[0]) == shard_bytes(outs[1])  # same seed, same competitor -> same bytes
    assert shard_bytes(outs[0]) != shard_bytes(tmp_path / "plain")  # the term changes the images
    content = json.loads((outs[0] / "config.json").read_text())
    text = json.dumps(content)
    assert f'"competition": {COMPETITION}' in text and "competitor_weights_sha256" in text
    # a different competitor weight is a different configuration: refused without --overwrite
    code, _, err = dfgen_cli([*args, "--competition", "1", "--out", outs[0]])
    assert code != 0 and "--overwrite" in err


def test_a_competitor_that_does_not_fit_is_one_line(dfgen_cli, tmp_path, competitor):
    name, _ = competitor
    torch.save(_student(num_classes=3).state_dict(), tmp_path / "three.pt")
    code, _, err = dfgen_cli(["synthesize", *SMALL, "--competitor", name.replace(":student", ":three_classes"),
                              "--competitor-weights", tmp_path / "three.pt", "--out", tmp_path / "o"])
    assert code != 0 and "3" in err and "10 classes" in err and "Traceback" not in err


def _student(num_classes: int):
    namespace: dict = {}
    exec(COMPETITOR, namespace)
    return namespace["student"](num_classes=num_classes)
