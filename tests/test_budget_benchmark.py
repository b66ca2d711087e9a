"""benchmarks/budget.py: the points' names say exactly which synthesis settings they run."""

import json

import pytest

from benchmarks.budget import main, parse_args, point_overrides


def test_point_names_map_to_settings():
    assert point_overrides("pixels") == {"mode": "pixels"}  # named: the default is chosen per teacher
    assert point_overrides("pixels-it50") == {"mode": "pixels", "schedule": "7:50,14:50,28:50"}
    assert point_overrides("gen-k5-w4-lr1e-3-m0.3-z0.01-wu20-c2") == {
        "mode": "generator", "gen_steps": 5, "gen_width": 4, "gen_lr": 0.001, "gen_meta_step": 0.3,
        "gen_latent_lr": 0.01, "gen_warmup_steps": 20, "gen_chains": 2}


@pytest.mark.parametrize("name", ["gen-k5", "gen-k5-w4-q3", "pixel"])
def test_unknown_points_are_refused(name, capsys):
    with pytest.raises(SystemExit):
        parse_args(["--points", name])
    assert "unknown" in capsys.readouterr().err


def test_pixel_levers_and_the_teachers_size():
    assert point_overrides("pixels-low50") == {"mode": "pixels", "schedule": "7:50,14:50,28:200"}
    assert point_overrides("pixels-es0.01-ew20") == {"mode": "pixels", "early_stop": 0.01, "early_stop_window": 20}
    assert point_overrides("pixels-it100-lr0.5") == {"mode": "pixels", "schedule": "7:100,14:100,28:100", "lr": 0.5}
    assert point_overrides("pixels-low10", 32) == {"mode": "pixels", "schedule": "8:10,16:10,32:200"}
    with pytest.raises(ValueError, match="unknown setting 'm'"):
        point_overrides("pixels-m0.5")


def test_teachers_and_students_are_checked(capsys):
    args = parse_args(["--teacher", "digits_cnn"])
    assert args.students == ["small_cnn"] and parse_args([]).students == ["lenet5_half"]
    assert parse_args(["--dataset", "fashion"]).dataset == "fashion"
    with pytest.raises(SystemExit):
        parse_args(["--teacher", "digits_cnn", "--students", "lenet5_half"])
    assert "lenet5_half takes 28 px images" in capsys.readouterr().err


def test_toy_run_on_a_transfer_teacher(tmp_path, capsys):
    """The whole path on the bundled digits teacher: each point's counted cost, its student against the same
    student taught on as many real images, and one JSON line last."""
    result = main(["--toy", "--teacher", "digits_cnn", "--points", "pixels-it2", "gen-k2-w4-wu2", "--jobs", "1",
                   "--out", str(tmp_path)])
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1]) == result
    real = result["real_reference"]
    assert real["images"] == 40 and 0 <= real["small_cnn"] <= 1
    flops = result["teacher_flops"]
    for name, point in result["points"].items():
        assert point["ratio_to_real"]["small_cnn"] == round(point["acc"] / real["small_cnn"], 4)
        total = point["teacher_passes_per_image"] * flops["pass"] + point["teacher_forwards_per_image"] * \
            flops["forward"] + point["generator_flops_per_image"]
        assert point["total_flops_per_image"] == round(total), name
    pixels, generator = result["points"]["pixels-it2"], result["points"]["gen-k2-w4-wu2"]
    assert generator["generator_flops_per_image"] > 0 == pixels["generator_flops_per_image"]
    assert (tmp_path / "digits_cnn-toy-n40" / "budget.png").is_file()
