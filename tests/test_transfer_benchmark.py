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
