"""benchmarks/budget.py: the points' names say exactly which synthesis settings they run."""

import pytest

from benchmarks.budget import parse_args, point_overrides


def test_point_names_map_to_settings():
    assert point_overrides("pixels") == {}
    assert point_overrides("pixels-it50") == {"schedule": "7:50,14:50,28:50"}
    assert point_overrides("gen-k5-w4-lr1e-3-m0.3-z0.01-wu20-c2") == {
        "mode": "generator", "gen_steps": 5, "gen_width": 4, "gen_lr": 0.001, "gen_meta_step": 0.3,
        "gen_latent_lr": 0.01, "gen_warmup_steps": 20, "gen_chains": 2}


@pytest.mark.parametrize("name", ["gen-k5", "gen-k5-w4-q3", "pixel"])
def test_unknown_points_are_refused(name, capsys):
    with pytest.raises(SystemExit):
        parse_args(["--points", name])
    assert "unknown" in capsys.readouterr().err
