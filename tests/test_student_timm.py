"""The DearKD student on timm's distilled ViT: checkpoints of the pre-timm model load, and what timm brings works
with MHCA (gradient checkpointing, resizing, layer-wise groups, intermediates). Any other timm model as a student:
plain KD through the real training path, input sizes and the resizes said at start-up, --pretrained and
--initial-checkpoint."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import timm
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from timm.data import resolve_data_config
from timm.optim import create_optimizer_v2

from distill import DistillError, build_config, evaluate_checkpoint, train
from distill.checkpoint import load_checkpoint, model_from_checkpoint
from distill.input_size import resumed_size, student_input_size
from distill.models import MHCA, DearKD
from distill.sources import open_source
from distill.student import create_student, default_size
from distill.student_weights import load_initial_checkpoint, load_pretrained
from distill.teacher_features import TeacherFeatures

PRE_TIMM = Path(__file__).parent / "data" / "student_pre_timm.pt"
DIGITS_PRESET = Path(__file__).resolve().parents[1] / "configs" / "distill_digits.yaml"


def _micro(**kwargs) -> DearKD:
    torch.manual_seed(0)
    return timm.create_model("dearkd_micro_patch4_32", in_chans=1, num_classes=10, **kwargs)


def test_a_checkpoint_of_the_pre_timm_student_loads_and_gives_its_logits() -> None:
    # saved by the DearKD of git 6ad4c7d (its own ViT): dim 8, 4 heads, 2 blocks (1 MHCA), 16x16 greyscale, 3 classes
    ckpt = load_checkpoint(PRE_TIMM)
    model = model_from_checkpoint(ckpt).eval()  # load_state_dict is strict: the same names and shapes
    assert [isinstance(b.attn, MHCA) for b in model.blocks] == [True, False]
    with torch.no_grad():
        logits = model(ckpt["probe_images"])
    torch.testing.assert_close(logits, ckpt["probe_logits"], atol=1e-6, rtol=0)


# counted on the pre-timm DearKD (git 6ad4c7d) at its default 10 classes for the micro models, num_classes=10 for the
# ImageNet ones: building on timm's ViT adds and drops no parameter
PRE_TIMM_PARAMS = {
    "dearkd_micro_patch4_32": 684_596,
    "deit_micro_patch4_32": 684_404,
    "dearkd_tiny_patch16_224": 5_529_044,
    "dearkd_small_patch16_224": 21_674_516,
    "dearkd_base_patch16_224": 85_816_084,
}


@pytest.mark.parametrize("name", sorted(PRE_TIMM_PARAMS))
def test_parameter_counts_are_the_pre_timm_ones(name: str) -> None:
    model = timm.create_model(name, num_classes=10)
    assert sum(p.numel() for p in model.parameters()) == PRE_TIMM_PARAMS[name]


def test_parameter_order_is_the_pre_timm_one() -> None:
    # the optimizer state of a checkpoint is indexed by parameter order: class token, distillation token, position
    # embedding first, as before
    names = [n for n, _ in _micro().named_parameters()]
    assert names[:3] == ["cls_token", "dist_token", "pos_embed"]
    assert names[3:5] == ["patch_embed.proj.weight", "patch_embed.proj.bias"]
    assert names[5:9] == ["blocks.0.norm1.weight", "blocks.0.norm1.bias", "blocks.0.attn.pos_weight",
                          "blocks.0.attn.prefix_logit"]
    assert names[-4:] == ["head.weight", "head.bias", "head_dist.weight", "head_dist.bias"]


def test_gradient_checkpointing_gives_the_same_logits_and_gradients() -> None:
    x, y = torch.randn(2, 1, 32, 32), torch.tensor([3, 7])
    grads = []
    for checkpointing in (False, True):
        model = _micro().train()
        model.set_distilled_training(True)
        model.set_grad_checkpointing(checkpointing)
        (cls_logits, dist_logits), tokens = model.forward_with_tokens(x, [1])
        (F.cross_entropy(cls_logits, y) + F.cross_entropy(dist_logits, y) + tokens[1].square().mean()).backward()
        grads.append({n: p.grad for n, p in model.named_parameters()})
    assert grads[0].keys() == grads[1].keys()
    for name, grad in grads[0].items():
        torch.testing.assert_close(grads[1][name], grad, atol=1e-6, rtol=1e-5, msg=name)


def test_set_input_size_resamples_and_moves_the_mhca_grids() -> None:
    model = _micro().eval()
    model.set_input_size(img_size=48)
    assert model.grid_size == (12, 12) and model.pos_embed.shape == (1, 2 + 144, 96)
    assert all(layer.grid_size == (12, 12) and layer.rel_pos.shape == (144, 144, 3) for layer in model.mhca_layers())
    assert model.mhca_layers()[0].positional_logits().shape == (12, 144, 144)
    assert model(torch.randn(1, 1, 48, 48)).shape == (1, 10)
    with pytest.raises(ValueError, match="dynamic_img_size"):
        _micro(dynamic_img_size=True)


def test_layer_decay_groups_and_intermediates_come_from_timm() -> None:
    model = _micro()
    optimizer = create_optimizer_v2(model, opt="adamw", lr=1e-3, weight_decay=0.05, layer_decay=0.5)
    scales = sorted({g["lr_scale"] for g in optimizer.param_groups})
    assert scales == [0.5**k for k in range(7, -1, -1)]  # stem, 6 blocks, head: 8 layer groups
    no_decay = {id(p) for g in optimizer.param_groups if g["weight_decay"] == 0 for p in g["params"]}
    assert id(model.blocks[0].attn.pos_weight) in no_decay and id(model.dist_token) in no_decay
    x = torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        maps = model.eval().forward_intermediates(x, indices=[1, 5], intermediates_only=True)
        _, tokens = model.forward_with_tokens(x, [1])
    assert [m.shape for m in maps] == [(2, 96, 8, 8)] * 2
    torch.testing.assert_close(maps[0].flatten(2).transpose(1, 2), tokens[1])


# ------------------------------------------------------------------------------------ any timm model as a student
TINY_RESNET = {"channels": [8, 16, 32, 64], "stem_width": 8}  # resnet10t's layout at a test's size


def _tiny_run(digits, out, **overrides):
    settings = dict(shards=[str(digits / "train")], val=str(digits / "test"), out=str(out), epochs=2,
                    stage1_epochs=1, batch_size=16, warmup_epochs=1, device="cpu", workers=0, quiet=True,
                    attn_images=8, shuffle_buffer=32, model="resnet10t", model_kwargs=TINY_RESNET)
    settings.update(overrides)
    return build_config(DIGITS_PRESET, **settings)


def test_a_cnn_student_learns_by_plain_kd_and_its_checkpoint_evaluates_as_logged(digits, tmp_path, capsys):
    out = tmp_path / "cnn"
    train(_tiny_run(digits, out))
    err = capsys.readouterr().err
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    # stage 1: labels and the teacher on the one head; stage 2: the labels alone; no DearKD term
    assert {"loss_cls", "loss_dist"} <= set(records[0]) and "loss_hidden" not in records[0]
    assert records[0]["loss"] == pytest.approx(0.5 * records[0]["loss_cls"] + 0.5 * records[0]["loss_dist"])
    assert "loss_dist" not in records[1] and records[1]["loss"] == records[1]["loss_cls"]
    assert all("attn_distance" not in r for r in records)
    assert "resnet10t (0.08M params, 1x32x32, 10 classes)" in err
    assert f"student input 32x32 px (the size of {digits / 'train'}'s images)" in err and "resize:" not in err
    ckpt = load_checkpoint(out / "last.pt")
    assert json.loads(ckpt["model_args"])["img_size"] == [32, 32]
    result = evaluate_checkpoint(out / "last.pt", digits / "test", device="cpu", batch_size=16)
    assert result["n"] == 32 and result["top1"] == pytest.approx(records[-1]["val_top1"])
    # stopped after one epoch and resumed: the same run, BatchNorm statistics included
    again = tmp_path / "again"
    train(_tiny_run(digits, again, stop_after=1))
    train(_tiny_run(digits, again, resume=True))
    resumed = load_checkpoint(again / "last.pt")
    for key, value in ckpt["model"].items():
        assert torch.equal(resumed["model"][key], value), key
    assert "student input 32x32 px (the resumed run's)" in capsys.readouterr().err


def test_a_resumed_run_keeps_the_size_it_was_built_at():
    assert resumed_size(json.dumps({"img_size": [32, 24]}), (224, 224)) == (32, 24)
    assert resumed_size(json.dumps({"img_size": 28}), (32, 32)) == (28, 28)
    # before the size followed the data, a run without --img-size recorded none and was built at the default
    assert resumed_size(json.dumps({"img_size": None}), (224, 224)) == (224, 224)


def test_a_distilled_deit_learns_from_the_teacher_on_its_distillation_head(digits, tmp_path, capsys):
    out = tmp_path / "deit"
    train(_tiny_run(digits, out, model="deit_tiny_distilled_patch16_224", model_kwargs={"depth": 1}, img_size=48,
                    epochs=1))
    err = capsys.readouterr().err
    record = json.loads((out / "metrics.jsonl").read_text())
    assert {"loss_cls", "loss_dist"} <= set(record) and "loss_hidden" not in record
    # every resize of the student's or the teacher's inputs is said at start-up
    assert "student input 48x48 px (--img-size)" in err
    assert f"resize: training images of {digits / 'train'} are 32x32, resized to 48x48 for the student" in err
    assert f"resize: validation images of {digits / 'test'} are 32x32, resized to 48x48 for the student" in err
    assert "resize: the teacher digits takes 32x32: the student's 48x48 batches are resized to 32x32 for it" in err
    assert "note: at 48x48 px the student has a 3x3 patch grid" in err
    student = model_from_checkpoint(load_checkpoint(out / "last.pt"))
    assert student.patch_embed.img_size == (48, 48) and student.head_dist.out_features == 10


def test_the_default_student_takes_the_datas_size(digits):
    # 32 px shards and no --model: a 32 px DearKD-Ti, not a 224 px one fed upsampled images
    sources = [open_source(digits / "train")]
    assert student_input_size(None, sources, default_size("dearkd_tiny_patch16_224")) == \
        ((32, 32), f"the size of {digits / 'train'}'s images")
    assert student_input_size(224, sources, (32, 32)) == ((224, 224), "--img-size")
    model = create_student("dearkd_tiny_patch16_224", 10, 1, (32, 32), 0.0)
    assert model.patch_embed.img_size == (32, 32)
    config = resolve_data_config({}, model=model)
    assert config["input_size"] == (1, 32, 32) and config["crop_pct"] == 1.0 and len(config["mean"]) == 1


def test_the_teacher_sees_its_own_size(digits_teacher):
    features = TeacherFeatures(digits_teacher.model, digits_teacher.mean, digits_teacher.std, (0.5,), (0.5,), [],
                               input_size=(32, 32))
    small = torch.rand(2, 1, 32, 32)
    large = F.interpolate(small, size=(64, 64), mode="bilinear", align_corners=False)
    back = F.interpolate(large, size=(32, 32), mode="bilinear", align_corners=False, antialias=True)
    torch.testing.assert_close(features(large)[0], features(back)[0])


def test_unknown_student_names_and_dearkd_only_options_are_one_line_errors(digits, tmp_path):
    with pytest.raises(DistillError, match=r"^unknown student model 'resnet_18'; did you mean resnet18") as info:
        create_student("resnet_18", 10, 1, 32, 0.0)
    assert "\n" not in str(info.value)
    with pytest.raises(DistillError, match="--align pairs DearKD blocks .* resnet10t is not a DearKD student"):
        train(_tiny_run(digits, tmp_path / "align", align="1:stage3"))


def _saved(model: torch.nn.Module, path: Path, **extra) -> Path:
    torch.save({"state_dict": model.state_dict(), **extra}, path)
    return path


def test_initial_checkpoint_loads_exactly_and_refuses_another_student(tmp_path):
    source = create_student("resnet10t", 10, 1, 32, 0.0, TINY_RESNET)
    torch.save({"model": source.state_dict(), "epoch": 3}, tmp_path / "last.pt")  # a distill checkpoint's layout
    save_file({f"module.{k}": v.contiguous() for k, v in source.state_dict().items()}, tmp_path / "ddp.safetensors")
    for path in (tmp_path / "last.pt", tmp_path / "ddp.safetensors"):
        torch.manual_seed(1)
        target = create_student("resnet10t", 10, 1, 32, 0.0, TINY_RESNET)
        load_initial_checkpoint(target, path)
        for key, value in source.state_dict().items():
            assert torch.equal(target.state_dict()[key], value), (path.name, key)
    other = create_student("resnet10t", 7, 1, 32, 0.0, TINY_RESNET)
    with pytest.raises(DistillError, match=r"do not fit the student .* wrong shape fc.bias \(10 stored, 7 expected\)"):
        load_initial_checkpoint(other, tmp_path / "last.pt")
    (tmp_path / "code.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(DistillError, match="does not load with weights_only=True"):
        load_initial_checkpoint(other, tmp_path / "code.pt")


def test_pretrained_weights_are_adapted_to_the_students_channels_classes_and_size(tmp_path):
    torch.manual_seed(0)
    rgb = create_student("resnet10t", 5, 3, None, 0.0, TINY_RESNET)
    student = create_student("resnet10t", 10, 1, 32, 0.0, TINY_RESNET)
    fresh_fc = {k: v.clone() for k, v in student.state_dict().items() if k.startswith("fc.")}
    adapted = load_pretrained(student, _saved(rgb, tmp_path / "rgb.pt"))
    assert adapted == ["conv1.0 from 3 to 1 channels", "fc newly initialised (5 -> 10 classes)"]
    state, source = student.state_dict(), rgb.state_dict()
    torch.testing.assert_close(state["conv1.0.weight"], source["conv1.0.weight"].sum(dim=1, keepdim=True))
    for key, value in source.items():
        if key.startswith("fc."):
            assert torch.equal(state[key], fresh_fc[key]), key
        elif key != "conv1.0.weight":
            assert torch.equal(state[key], value), key
    # a vision transformer at 224 px into a 32 px student: the position embedding is resampled to the 2x2 grid
    vit = create_student("deit_tiny_patch16_224", 10, 3, None, 0.0, {"depth": 1})
    small = create_student("deit_tiny_patch16_224", 10, 3, 32, 0.0, {"depth": 1})
    assert load_pretrained(small, _saved(vit, tmp_path / "vit.pt")) == []
    assert small.pos_embed.shape == (1, 1 + 4, 192)
    for key, value in vit.state_dict().items():
        if key != "pos_embed":
            assert torch.equal(small.state_dict()[key], value), key
    # timm's reader prefers the EMA weights a checkpoint holds
    ema = create_student("deit_tiny_patch16_224", 10, 3, None, 0.0, {"depth": 1})
    same = create_student("deit_tiny_patch16_224", 10, 3, None, 0.0, {"depth": 1})
    load_pretrained(same, _saved(vit, tmp_path / "vit_ema.pt", state_dict_ema=ema.state_dict()))
    assert all(torch.equal(same.state_dict()[k], v) for k, v in ema.state_dict().items())
    assert not torch.equal(ema.pos_embed, vit.pos_embed)


def test_pretrained_and_initial_checkpoint_reach_the_run(digits, tmp_path, capsys):
    rgb = create_student("resnet10t", 5, 3, None, 0.0, TINY_RESNET)
    weights = _saved(rgb, tmp_path / "rgb.pt")
    with pytest.raises(DistillError, match="--initial-checkpoint file .*missing.pt not found"):
        train(_tiny_run(digits, tmp_path / "a", initial_checkpoint=str(tmp_path / "missing.pt")))
    train(_tiny_run(digits, tmp_path / "b", pretrained=str(weights), epochs=1, stage1_epochs=1))
    err = capsys.readouterr().err
    assert (f"student weights from --pretrained {weights} (conv1.0 from 3 to 1 channels, fc newly initialised "
            "(5 -> 10 classes))") in err


def test_an_image_folder_sets_the_size_only_where_its_images_share_a_small_one(tmp_path):
    from PIL import Image

    def folder(name, sizes):
        for i, (w, h) in enumerate(sizes):
            (tmp_path / name / str(i % 2)).mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (w, h)).save(tmp_path / name / str(i % 2) / f"{i}.png")
        return [open_source(tmp_path / name)]

    assert student_input_size(None, folder("small", [(24, 20)] * 6), (224, 224)) == \
        ((20, 24), f"the size of {tmp_path / 'small'}'s images")
    assert student_input_size(None, folder("photos", [(40, 30), (30, 40)] * 3), (224, 224)) == \
        ((224, 224), f"the model's default; {tmp_path / 'photos'}'s images differ in size")
    assert student_input_size(None, folder("large", [(64, 64)] * 4), (32, 32)) == \
        ((32, 32), f"the model's default; {tmp_path / 'large'}'s images (64x64) are larger")


@pytest.mark.parametrize(("args", "message"), [
    (["--model", "resnet_18"], r"^Error: unknown student model 'resnet_18'; did you mean resnet18"),
    (["--model", "resnet10t", "--initial-checkpoint", "{tmp}/none.pt"],
     r"^Error: --initial-checkpoint file .* not found"),
    (["--model", "resnet10t", "--pretrained", "{tmp}/none.pt"], r"^Error: --pretrained file .* not found"),
    (["--model", "deit_tiny_patch16_224", "--img-size", "8"],
     r"^Error: deit_tiny_patch16_224 at 8x8 px has no patch \(16x16 px patches\); give --img-size 16 or more"),
    (["--model", "resnet10t", "--model-kwargs", "heads=3"],
     r"^Error: model_kwargs \{'heads': 3\}: resnet10t does not take them"),
])
def test_the_student_options_on_the_command_line_fail_in_one_line(digits, tmp_path, capsys, args, message):
    import re

    from distill.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["run", "--shards", str(digits / "train"), "--out", str(tmp_path / "out"), "--device", "cpu", "--quiet",
              *[a.format(tmp=tmp_path) for a in args]])
    err = capsys.readouterr().err
    assert exit_info.value.code == 1 and re.search(message, err) and len(err.strip().splitlines()) == 1, err
