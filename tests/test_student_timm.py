"""The DearKD student on timm's distilled ViT: checkpoints of the pre-timm model load, and what timm brings works
with MHCA (gradient checkpointing, resizing, layer-wise groups, intermediates)."""

from __future__ import annotations

from pathlib import Path

import pytest
import timm
import torch
import torch.nn.functional as F
from timm.optim import create_optimizer_v2

import distill  # noqa: F401  (registers the timm models)
from distill.checkpoint import load_checkpoint, model_from_checkpoint
from distill.models import MHCA, DearKD

PRE_TIMM = Path(__file__).parent / "data" / "student_pre_timm.pt"


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
