"""Counts, schedules, YAML presets and CLI overrides."""

from pathlib import Path

import pytest

from dfgen.config import SynthesisConfig, build_config
from dfgen.errors import DfgenError
from dfgen.parsing import parse_count, parse_schedule

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


@pytest.mark.parametrize("text,value", [("1.2M", 1_200_000), ("50k", 50_000), ("1000", 1000), ("2m", 2_000_000),
                                        (" 7 ", 7), (12, 12)])
def test_parse_count(text, value):
    assert parse_count(text) == value


@pytest.mark.parametrize("text", ["0", "-5", "abc", "1.5", "1.2G", "", "1e3", "0k"])
def test_parse_count_rejects(text):
    with pytest.raises(DfgenError, match="positive count|whole number"):
        parse_count(text)


def test_parse_schedule():
    assert parse_schedule("112:2000,224:2000") == [(112, 2000), (224, 2000)]
    assert parse_schedule("32:5") == [(32, 5)]
    for bad in ["112-2000", "112:0", "a:b", "", "112:2000,", "0:5"]:
        with pytest.raises(DfgenError, match="schedule"):
            parse_schedule(bad)


def test_presets_load_and_flags_override(tmp_path):
    paper = build_config(CONFIGS / "imagenet_regnety16gf.yaml")
    assert paper.teacher == "regnety_16gf"
    assert paper.schedule == [(112, 2000), (224, 2000)]
    assert (paper.losses.tv_l2, paper.losses.l2, paper.losses.bn, paper.losses.ep, paper.losses.triplet) == (
        1e-4, 1e-5, 5e-2, 50, 0.5)
    digits = build_config(CONFIGS / "digits.yaml", n="50", seed=3, ep=7.0)
    assert digits.teacher == "digits" and digits.n == 50 and digits.seed == 3 and digits.losses.ep == 7.0


def test_yaml_errors(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("teacher: digits\nbogus_option: 1\n")
    with pytest.raises(DfgenError, match="unknown option"):
        build_config(bad)
    bad.write_text("- a list\n")
    with pytest.raises(DfgenError, match="mapping"):
        build_config(bad)
    with pytest.raises(DfgenError, match="not found"):
        build_config(tmp_path / "missing.yaml")


def test_no_diversity_zeroes_only_the_diversity_weights():
    config = SynthesisConfig(no_diversity=True)
    assert config.effective_losses.ep == 0 and config.effective_losses.triplet == 0
    assert config.effective_losses.bn == config.losses.bn
    assert config.content_fields() != SynthesisConfig().content_fields()
    # run-only options do not change what is made
    assert SynthesisConfig(quiet=True, device="cpu").content_fields() == SynthesisConfig().content_fields()


def test_reach_margin_and_flip_values():
    import pytest

    from dfgen.config import LossWeights, SynthesisConfig, parse_flip
    from dfgen.errors import DfgenError

    assert LossWeights(ep_reach="auto", margin="AUTO").margin == "auto"
    assert LossWeights(ep_reach=None).ep_reach is None  # the unbounded form, from the API or YAML null
    assert LossWeights(ep_reach="0.25").ep_reach == 0.25
    assert LossWeights(ep_reach=3.0).ep_reach == 2.0  # distances are at most 2: adjusted with a note
    with pytest.raises(DfgenError, match="--ep 0"):
        LossWeights(ep_reach=0)
    with pytest.raises(DfgenError, match="number or auto"):
        LossWeights(margin="wide")
    with pytest.raises(DfgenError, match="loss form"):
        LossWeights(form="squared")
    assert [parse_flip(v) for v in ("on", "off", "auto", True, False)] == [True, False, "auto", True, False]
    with pytest.raises(DfgenError, match="on, off or auto"):
        parse_flip("sometimes")
    with pytest.raises(DfgenError, match="multires"):
        SynthesisConfig(multires="sideways")
