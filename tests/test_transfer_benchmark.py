"""The transfer benchmark's whole path at toy size (benchmarks/transfer.py --toy) on the two digits teachers, which
need no downloaded data: teachers, synthesis with only what a user gives, both students, the real reference rows,
the matrix and its ratios, and the phase cache."""

from __future__ import annotations

import json

import torch

from benchmarks import phases, transfer


def test_toy_transfer_matrix_runs_the_whole_path_and_caches_each_phase(tmp_path, capsys):
    argv = ["--toy", "--out", str(tmp_path), "--teachers", "digits_cnn", "resnet18_digits", "--jobs", "1",
            "--stored-soft-labels", "--variant-teachers", "digits_cnn"]
    threads = torch.get_num_threads()
    result = transfer.main(argv)
    assert torch.get_num_threads() == threads  # the inline job pool gives the process its threads back
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1]) == result  # one JSON line, last
    assert result["n_images"] == transfer.TOY["n"] and set(result["matrix"]) == {"digits_cnn", "resnet18_digits"}
    for key, row in result["matrix"].items():
        assert row["schedule"] == "8:2,16:2,32:2"  # the default schedule's stages for a 32 px teacher
        assert row["flip"] in (True, False) and row["multires"] in ("native", "upsample")
        assert 0 < row["reach"] <= 2  # calibrated by the probe, not the fixed 0.3
        assert set(row["students"]) == {"small_cnn_kd", "small_cnn_kd_plain", "dearkd_micro"}
        for cell in row["students"].values():
            assert 0 <= cell["synthetic"] <= 1 and 0 < cell["real"] <= 1
            assert cell["ratio"] == round(cell["synthetic"] / cell["real"], 4)
        plain = json.loads((tmp_path / "toy20" / "results" / f"kd_plain_syn_{key}-plain2.json").read_text())
        assert plain["recipe"] == "kd-plain" and plain["acc"] == row["students"]["small_cnn_kd_plain"]["synthetic"]
        config = json.loads((tmp_path / "toy20" / f"syn_{key}" / "config.json").read_text())
        assert config["derived"]["flip"]["requested"] == "auto"  # the user gave no synthesis setting
    assert result["matrix"]["digits_cnn"]["teacher_acc"] > 0.95  # the bundled teacher as shipped
    stored = result["matrix"]["digits_cnn"]["students"]["dearkd_micro"]  # the teacher-free cells, variant teacher only
    assert 0 <= stored["synthetic_stored_soft_labels"] <= 1 and 0 <= stored["synthetic_stored_views"] <= 1
    assert len(stored["seconds_online_vs_stored"]) == 3
    assert "synthetic_stored_views" not in result["matrix"]["resnet18_digits"]["students"]["dearkd_micro"]
    views = json.loads((tmp_path / "toy20" / "views_digits_cnn" / "dataset.json").read_text())["soft_labels"]["views"]
    assert views["count"] == transfer.STORED_VIEWS["soft_views"]
    assert stored["stored_recipe"] == phases.SOFT_TARGETS
    config = json.loads((tmp_path / "toy20" / f"run_dearkd_views-{phases.SOFT_KEY}_digits_cnn" / "config.json")
                        .read_text())
    assert config["soft_labels"] == "stored" and config["distillation"] == "soft" and config["cutmix"] == 0
    assert not config["aa"]  # the teacher-free recipe: no RandAugment
    assert result["cells_meeting_target"].endswith("/6")  # 2 teachers x 3 students
    assert result["min_ratio"] == min(c["ratio"] for r in result["matrix"].values() for c in r["students"].values())
    again = transfer.main(argv)  # every phase cached: the same matrix
    assert again["matrix"] == result["matrix"]
    timed = [name for name in result["seconds"] if name != "total_this_invocation"]
    assert all(again["seconds"][name] == result["seconds"][name] for name in timed)


def test_generator_mode_makes_its_own_sets_beside_the_default_ones_and_shares_the_real_rows(tmp_path):
    argv = ["--toy", "--out", str(tmp_path), "--teachers", "digits_cnn", "--jobs", "1", "--no-dearkd"]
    pixels = transfer.main(argv)
    generator = transfer.main([*argv, "--mode", "generator"])
    assert (pixels["mode"], generator["mode"]) == ("pixels", "generator")
    configs = {name: json.loads((tmp_path / "toy20" / name / "config.json").read_text())["content"]
               for name in ("syn_digits_cnn", "syn_gen30-digits_cnn")}
    assert configs["syn_gen30-digits_cnn"]["mode"] == "generator"
    assert configs["syn_gen30-digits_cnn"]["generator"]["steps"] == 30
    assert "mode" not in configs["syn_digits_cnn"]  # the pixel mode, as the default sets were made
    row, default_row = generator["matrix"]["digits_cnn"], pixels["matrix"]["digits_cnn"]
    for name, result_row in (("syn_digits_cnn", default_row), ("syn_gen30-digits_cnn", row)):  # what dfgen counted
        cost = json.loads((tmp_path / "toy20" / name / "dataset.json").read_text())["cost"]["per_image"]
        assert result_row["teacher_passes_per_image"] == cost["teacher_passes"] > 0
    for cell, job in (("small_cnn_kd", "kd_real_digits_cnn"), ("small_cnn_kd_plain", "kd_plain_real_digits_cnn")):
        assert row["students"][cell]["real"] == default_row["students"][cell]["real"]
        assert generator["seconds"][job] == pixels["seconds"][job]  # the real rows come from the cache, run once
