"""The GPU benchmarks' CPU-testable parts (benchmarks/gpu_common.py, gpu_speed.py, gpu_check.sh): the peak table,
the MFU arithmetic and FLOP counts by hand, the batch search against a teacher that runs out of memory at the last
stage only, the result's shape from a tiny CPU run, and the clean refusal without CUDA."""

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from benchmarks import gpu_common, gpu_speed
from benchmarks.gpu_common import flop_per_image_iteration, largest_fitting, peak_tflops, schedule_figures

ROOT = Path(__file__).resolve().parents[1]
no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")


@pytest.mark.parametrize("name, peak", [
    ("NVIDIA H200", 989.5), ("NVIDIA H100 80GB HBM3", 989.5), ("NVIDIA H100 PCIe", 756.5), ("NVIDIA H100 NVL", None),
    ("NVIDIA A100-SXM4-80GB", 312.0), ("NVIDIA A100 80GB PCIe", 312.0), ("NVIDIA A10", 125.0), ("NVIDIA L4", 121.0),
    ("NVIDIA L40S", 362.05), ("Tesla V100-SXM2-16GB", None),
])
def test_peak_table_matches_card_names(name, peak):
    found, source = peak_tflops(name)
    assert found == peak
    assert ("datasheet" in source) == (peak is not None)


def test_given_peak_wins_and_must_be_positive():
    assert peak_tflops("NVIDIA H200", 700.0) == (700.0, "--peak-tflops")
    with pytest.raises(SystemExit, match="positive"):
        peak_tflops("NVIDIA H200", 0.0)


def test_schedule_figures_by_hand():
    # a batch of 100 through 112:2000 at 0.05 s and 224:2000 at 0.2 s an iteration, 1 s fixed: 501 s a batch
    f = schedule_figures(100, [(112, 2000), (224, 2000)], [0.05, 0.2], 1.0, [16e9, 64e9], 1000.0)
    assert f["seconds_per_batch"] == pytest.approx(501.0)
    assert f["images_per_s"] == pytest.approx(100 / 501)
    assert f["flop_per_image"] == pytest.approx(1.6e14)  # RegNetY-16GF's figure at 224 px
    assert f["achieved_tflops"] == pytest.approx(100 / 501 * 160)
    assert f["mfu"] == pytest.approx(100 / 501 * 160 / 1000)
    assert f["stage_tflops"] == pytest.approx([32.0, 32.0])
    assert f["gpu_hours_per_1_2m_images"] == pytest.approx(1.2e6 * 5.01 / 3600)
    assert schedule_figures(100, [(112, 2000), (224, 2000)], [0.05, 0.2], 1.0, [16e9, 64e9], None)["mfu"] is None
    # the speed target: 35% of an H200's 989.5 TFLOP/s at 1.6e14 FLOP an image is 2.16 images/s
    at_target = schedule_figures(1, [(224, 1)], [1.6e14 / (0.35 * 989.5e12)], 0.0, [1.6e14], 989.5)
    assert at_target["images_per_s"] == pytest.approx(2.165, abs=1e-3) and at_target["mfu"] == pytest.approx(0.35)
    with pytest.raises(ValueError):
        schedule_figures(1, [(112, 1), (224, 1)], [0.1], 0.0, [1.0, 1.0], None)


def test_flop_count_is_forward_and_input_backward_by_hand():
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4), nn.ReLU(),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 10)).eval()
    conv = 2 * 4 * 3 * 9 * 8 * 8  # multiply-adds of the 3x3 convolution over an 8x8 output, x2
    linear = 2 * 4 * 10
    # forward and the gradient to the input, once each; no weight gradients, and requires_grad is left as it was
    assert flop_per_image_iteration(model, 3, 8) == 2 * conv + 2 * linear
    assert all(p.requires_grad for p in model.parameters())


def test_largest_fitting_tries_from_the_top_and_stops_at_the_first_fit():
    assert largest_fitting(lambda b: b <= 100, (64, 128, 96, 256)) == (96, {256: False, 128: False, 96: True})
    assert largest_fitting(lambda b: False, (8, 4)) == (None, {8: False, 4: False})


class RunsOutAt(nn.Module):
    """The digits teacher, out of memory above `limit` batch x pixels (the last, larger stage fails first)."""

    def __init__(self, inner: nn.Module, limit: int) -> None:
        super().__init__()
        self.inner, self.limit = inner, limit

    def forward(self, x):
        if x.shape[0] * x.shape[-1] * x.shape[-2] > self.limit:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate (a stand-in)")
        return self.inner(x)


def test_batch_search_needs_the_last_stage_to_fit(digits_teacher):
    teacher = dataclasses.replace(digits_teacher, model=RunsOutAt(digits_teacher.model, limit=4 * 32 * 32))
    base = gpu_speed.preset_settings(gpu_speed.PRESET, teacher, torch.device("cpu"), [(16, 2000), (32, 2000)])
    assert base.weights.form == "paper" and base.flip and base.precision == "fp32"
    # a batch of 8 passes the 16px stage (8 x 256 pixels) but not the 32px one
    fits = lambda b: gpu_speed.engine_fits(teacher, base, b, torch.device("cpu"))  # noqa: E731
    assert largest_fitting(fits, (8, 4)) == (4, {8: False, 4: True})


def test_cpu_smoke_runs_the_whole_benchmark_and_prints_one_json_line_last(tmp_path, capsys):
    gpu_speed.main(["--cpu-smoke", "--peak-tflops", "1", "--json", str(tmp_path / "r.json")])
    printed = capsys.readouterr().out.strip().splitlines()[-1]
    r = json.loads(printed)
    assert r == json.loads((tmp_path / "r.json").read_text())
    assert r["cpu_smoke"] and r["device"] == "cpu" and r["teacher"] == "digits" and r["wall_s"] > 0
    assert r["batch"] == 16 and r["batch_search"] == {"16": True} and r["schedule"] == "16:2000,32:2000"
    # the same loss form and weights on both sides, the engine adding only the diversity terms
    engine, naive = r["losses"]["engine"], r["losses"]["naive"]
    assert engine["form"] == naive["form"] == "paper" and naive["ep"] == naive["triplet"] == 0 < engine["ep"]
    assert {k: v for k, v in engine.items() if k not in ("ep", "triplet")} == \
        {k: v for k, v in naive.items() if k not in ("ep", "triplet")}
    flops = r["flop_per_image_iteration"]
    assert flops[1] == pytest.approx(4 * flops[0], rel=0.05)  # 4x the pixels
    eager = r["engine"]["eager"]
    assert set(r["engine"]) == {"eager"} and min(eager["stage_seconds"]) > 0 and eager["fixed_seconds"] >= 0
    assert eager["images_per_s"] == pytest.approx(16 / (2000 * sum(eager["stage_seconds"]) + eager["fixed_seconds"]),
                                                  rel=2e-3)
    assert eager["mfu"] == pytest.approx(eager["achieved_tflops"], rel=2e-3)  # against a peak of 1 TFLOP/s
    naive_run = r["naive_fp32"]["same_batch"]
    assert naive_run["fits"] and naive_run["batch"] == 16 and r["naive_fp32"]["own_largest"] == naive_run
    assert r["speedup_vs_naive_same_batch"]["eager"] == pytest.approx(
        eager["images_per_s"] / naive_run["images_per_s"], rel=2e-3)
    assert "interrupted" not in r


def test_naive_comparison_needs_the_paper_form():
    from dfgen.config import LossWeights

    assert gpu_speed.naive_weights(LossWeights.paper()).ep == 0
    with pytest.raises(SystemExit, match="paper loss form"):
        gpu_speed.naive_weights(LossWeights())


def test_interrupted_run_keeps_what_it_measured():
    def fill(r):
        r["first"] = 1
        raise KeyboardInterrupt

    r = gpu_common.interruptible({"benchmark": "x"}, fill)
    assert r["first"] == 1 and "SIGINT" in r["interrupted"]


@pytest.mark.parametrize("args, message", [
    (["--modes", "fast"], "--modes"), (["--warmup", "5", "--iterations", "7"], "multiple"),
    (["--candidates", "8,x"], "--candidates"),
])
def test_gpu_speed_rejects_bad_arguments(args, message, capsys):
    with pytest.raises(SystemExit) as exc:
        gpu_speed.main(args)
    assert exc.value.code == 2 and message in capsys.readouterr().err


@no_cuda
def test_gpu_speed_refuses_without_cuda():
    with pytest.raises(SystemExit) as exc:
        gpu_speed.main([])
    assert isinstance(exc.value.code, str) and "no CUDA GPU" in exc.value.code and "\n" not in exc.value.code


@no_cuda
def test_gpu_check_refuses_without_cuda(tmp_path):
    env = {**os.environ, "PYTHON": sys.executable, "OUT": str(tmp_path / "out")}
    done = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_check.sh")], env=env, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 1
    assert done.stderr.strip().count("\n") == 0 and "no CUDA GPU" in done.stderr
    assert not (tmp_path / "out").exists()  # nothing written


def test_merge_collects_each_sections_status_and_result(tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    (work / "device.json").write_text(json.dumps({"device": "NVIDIA H200"}))
    (work / "speed.status").write_text(json.dumps({"rc": 0, "seconds": 40, "limit_s": 100}))
    (work / "speed.json").write_text(json.dumps({"batch": 768}))
    (work / "tests.status").write_text(json.dumps({"rc": 1, "seconds": 9, "limit_s": 60}))
    (work / "tests.log").write_text("\n".join(f"line {i}" for i in range(9)))
    gpu_common.main(["merge", str(work), str(tmp_path / "all.json")])
    merged = json.loads((tmp_path / "all.json").read_text())
    assert merged["device"] == "NVIDIA H200" and merged["benchmark"] == "gpu_check"
    assert merged["sections"]["speed"] == {"rc": 0, "seconds": 40, "limit_s": 100, "result": {"batch": 768}}
    assert merged["sections"]["tests"]["log_tail"] == [f"line {i}" for i in range(4, 9)]
