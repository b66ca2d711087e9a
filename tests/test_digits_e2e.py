"""The digits benchmark (benchmarks/digits_e2e.py) at a toy size, so it cannot rot unnoticed: every job
runs (two syntheses plus the paper-form set, five students, the report) in the two-process pool, and
the JSON line carries every figure the README's results table quotes."""

import json

from benchmarks import digits_e2e


def test_digits_e2e_toy_run(tmp_path, capsys):
    out = tmp_path / "bench"
    result = digits_e2e.main(["--out", str(out), "-n", "40", "--schedule", "16:2,32:2", "--epochs", "3",
                             "--real-train", "64", "--jobs", "2", "--no-compile"])

    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1]) == result
    assert result["teacher_acc"] >= 98.0  # the bundled teacher on the 450 real held-out digits
    assert result["test_images"] == 450 and result["real_train_images"] == 64
    assert (result["n"], result["paper_ep_form_n"], result["iterations_per_image"]) == (40, 40, 4)
    assert (result["student_epochs"], result["student_stage1_epochs"]) == (3, 2)
    assert result["synthesis_compiled"] is False
    assert set(result["ablation"]) == {"dearkd_boundary", "dearkd_plain", "deit_boundary",
                                       "dearkd_boundary_no_hidden", "dearkd_real_train"}
    for row in result["ablation"].values():
        assert 0.0 <= row <= 100.0
    assert result["student_synthetic_acc"] == result["ablation"]["dearkd_boundary"]
    assert result["student_real_acc"] == result["ablation"]["dearkd_real_train"]
    for name in ("plain", "boundary", "paper_ep_form"):
        assert 0.0 <= result["agreement"][name] <= 1.0
        assert result["diversity"][name] > 0.0
    # Each student ran its own recipe: the no-hidden ablation has no hidden loss, the real one saw real images.
    rows = {name: [json.loads(line) for line in (out / f"run_{name}" / "metrics.jsonl").open()]
            for name in result["ablation"]}
    assert all(len(r) == 3 for r in rows.values())
    assert "loss_hidden" in rows["dearkd_boundary"][0] and "loss_hidden" not in rows["dearkd_boundary_no_hidden"][0]
    assert json.loads((out / "plain" / "dataset.json").read_text())["diversity"] is False
    assert json.loads((out / "paper_ep_form" / "config.json").read_text())["content"]["losses"]["ep_reach"] is None
