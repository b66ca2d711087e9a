"""Tests for the DearKD students (distill.models): MHCA, variants, compile, attention distance, Aligner."""

from __future__ import annotations

import math
import os
import shutil
import time

import pytest
import timm
import torch
import torch.nn.functional as F

import distill  # noqa: F401  (registers the timm models)
from distill.models import (
    MHCA,
    MHSA,
    Aligner,
    DearKD,
    attention_distance,
    average_attention_distance,
    local_offsets,
    patch_distance_matrix,
)

MICRO = ("dearkd_micro_patch4_32", "deit_micro_patch4_32")


def _micro(name: str = "dearkd_micro_patch4_32", **kwargs) -> DearKD:
    """A micro student in distilled training, as `distill run` uses it (training mode gives both heads)."""
    torch.manual_seed(0)
    model = timm.create_model(name, in_chans=1, num_classes=10, **kwargs)
    model.set_distilled_training(True)
    return model


def _num_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# ------------------------------------------------------------------------------------------------- MHCA
def test_local_offsets_nearest_first_and_distinct() -> None:
    offs = local_offsets(12)
    assert len(set(offs)) == 12
    assert set(offs[:9]) == {(dx, dy) for dx in (-1, 0, 1) for dy in (-1, 0, 1)}  # the 3x3 window first
    assert all(dx * dx + dy * dy == 4 for dx, dy in offs[9:])  # then the nearest further offsets
    sq = [dx * dx + dy * dy for dx, dy in local_offsets(25)]
    assert sq == sorted(sq)


def _shift_layer(num_heads: int, head_dim: int, grid: tuple[int, int], alpha: float, **kw) -> MHCA:
    """MHCA with the content part off (q, k = 0) and identity value / output projections."""
    dim = num_heads * head_dim
    layer = MHCA(dim, num_heads, grid_size=grid, num_prefix_tokens=2, locality_strength=alpha, **kw)
    with torch.no_grad():
        layer.qkv.weight.zero_()
        layer.qkv.bias.zero_()
        layer.qkv.weight[2 * dim:].copy_(torch.eye(dim))  # v = x
        layer.proj.weight.copy_(torch.eye(dim))
        layer.proj.bias.zero_()
    return layer.eval()


def test_mhca_local_init_reproduces_fixed_shift() -> None:
    heads, hd, (gh, gw) = 12, 4, (7, 7)
    layer = _shift_layer(heads, hd, (gh, gw), alpha=20.0)
    layer.record_attn = True
    torch.manual_seed(0)
    x = torch.randn(2, 2 + gh * gw, heads * hd)
    out = layer(x)
    attn = layer.last_attn  # (B, heads, L, L)

    r = max(max(abs(dx), abs(dy)) for dx, dy in layer.offsets)  # interior: every offset stays on the grid
    checked = 0
    for h, (dx, dy) in enumerate(layer.offsets):
        sl = slice(h * hd, (h + 1) * hd)
        for y in range(r, gh - r):
            for xc in range(r, gw - r):
                i = 2 + y * gw + xc
                j = 2 + (y + dy) * gw + (xc + dx)
                assert attn[:, h, i, j].min() > 0.999, (h, (dx, dy), (y, xc))
                torch.testing.assert_close(out[:, i, sl], x[:, j, sl], atol=1e-3, rtol=0)
                checked += 1
    assert checked == heads * (gh - 2 * r) * (gw - 2 * r)
    # and the shift is not trivially the identity: offsets differ across heads
    assert len(set(layer.offsets)) == heads


def test_mhca_strict_formula_centre_head_ties_with_prefix_tokens() -> None:
    # documents why prefix_logit exists: with the pure formula r_ii = 0, so self and class/dist keys tie
    layer = _shift_layer(9, 4, (5, 5), alpha=20.0, prefix_logit=False)
    layer.record_attn = True
    layer(torch.randn(1, 2 + 25, 36))
    centre = layer.offsets.index((0, 0))
    i = 2 + 2 * 5 + 2
    row = layer.last_attn[0, centre, i]
    torch.testing.assert_close(row[[0, 1, i]], torch.full((3,), 1 / 3), atol=1e-4, rtol=0)


def test_mhca_positional_term_only_on_patch_pairs() -> None:
    layer = MHCA(24, 6, grid_size=(3, 4), num_prefix_tokens=2, locality_strength=1.0)
    bias = layer.attn_bias(14)
    assert bias.shape == (6, 14, 14)
    assert torch.all(bias[:, :2, :] == 0)  # class/dist queries: no positional term
    torch.testing.assert_close(bias[:, 2:, 2:], layer.positional_logits())
    # head (dx, dy): logit -alpha * ||delta - D||^2 + alpha * ||D||^2 on patch pairs
    for h, (dx, dy) in enumerate(layer.offsets):
        i, j = 2 + 1 * 4 + 1, 2 + 2 * 4 + 3  # p_i = (x=1, y=1), p_j = (x=3, y=2): delta = (2, 1)
        expect = -((2 - dx) ** 2 + (1 - dy) ** 2) + dx * dx + dy * dy
        assert bias[h, i, j].item() == pytest.approx(expect)


@pytest.mark.parametrize("cls", [MHSA, MHCA])
def test_record_path_matches_sdpa_path(cls: type) -> None:
    kw = {"grid_size": (4, 4), "num_prefix_tokens": 2} if cls is MHCA else {}
    torch.manual_seed(0)
    layer = cls(32, 4, **kw).eval()
    x = torch.randn(3, 18, 32)
    fast = layer(x)
    assert layer.last_attn is None  # nothing kept when not recording
    layer.record_attn = True
    slow = layer(x)
    torch.testing.assert_close(fast, slow, atol=1e-5, rtol=1e-5)
    assert layer.last_attn.shape == (3, 4, 18, 18)
    torch.testing.assert_close(layer.last_attn.sum(-1), torch.ones(3, 4, 18))


def test_gradients_reach_mhca_positional_parameters() -> None:
    model = _micro(drop_path_rate=0.1).train()
    x, y = torch.randn(4, 1, 32, 32), torch.randint(0, 10, (4,))
    for record in (False, True):  # both attention code paths
        model.zero_grad()
        for blk in model.blocks:
            blk.attn.record_attn = record
        cls_logits, dist_logits = model(x)
        (F.cross_entropy(cls_logits, y) + F.cross_entropy(dist_logits, y)).backward()
        layers = model.mhca_layers()
        assert len(layers) == 4
        for layer in layers:
            assert layer.pos_weight.grad is not None and layer.pos_weight.grad.abs().sum() > 0
            assert layer.prefix_logit.grad is not None and layer.prefix_logit.grad.abs().sum() > 0


# ------------------------------------------------------------------------------------------ model variants
@pytest.mark.parametrize(
    "name, reference, forward",
    [
        ("dearkd_tiny_patch16_224", 5.91e6, True),  # DeiT-Ti distilled
        ("dearkd_small_patch16_224", 22.4e6, True),  # DeiT-S distilled
        ("dearkd_base_patch16_224", 87.3e6, False),  # DeiT-B distilled (no forward: slow on CPU)
    ],
)
def test_imagenet_variants_param_count_and_shapes(name: str, reference: float, forward: bool) -> None:
    model = timm.create_model(name)
    assert isinstance(model, DearKD)
    assert abs(_num_params(model) - reference) / reference < 0.05
    assert len(model.blocks) == 12
    assert [isinstance(b.attn, MHCA) for b in model.blocks] == [True] * 8 + [False] * 4
    cfg = timm.data.resolve_model_data_config(model)
    assert cfg["input_size"] == (3, 224, 224)
    assert cfg["mean"] == timm.data.IMAGENET_DEFAULT_MEAN and cfg["std"] == timm.data.IMAGENET_DEFAULT_STD
    if forward:
        x = torch.randn(1, 3, 224, 224)
        with torch.no_grad():
            out = model.eval()(x)
        assert out.shape == (1, 1000)


@pytest.mark.parametrize("name", MICRO)
def test_micro_forward_train_eval(name: str) -> None:
    model = _micro(name)
    assert len(model.blocks) == 6
    n_mhca = 4 if name.startswith("dearkd") else 0
    assert [isinstance(b.attn, MHCA) for b in model.blocks] == [True] * n_mhca + [False] * (6 - n_mhca)
    x = torch.randn(5, 1, 32, 32)
    model.train()
    out = model(x)
    assert isinstance(out, tuple) and len(out) == 2
    assert out[0].shape == out[1].shape == (5, 10)
    model.eval()
    with torch.no_grad():
        avg = model(x)
        feats = model.forward_features(x)
        cls_logits = model.head(feats[:, 0])
        dist_logits = model.head_dist(feats[:, 1])
    assert isinstance(avg, torch.Tensor) and avg.shape == (5, 10)
    torch.testing.assert_close(avg, (cls_logits + dist_logits) / 2)
    assert feats.shape == (5, 2 + 64, model.embed_dim)
    assert model.forward_head(feats, pre_logits=True).shape == (5, model.embed_dim)
    cfg = timm.data.resolve_model_data_config(model)
    assert cfg["input_size"] == (1, 32, 32) and cfg["mean"] == (0.5,) and cfg["std"] == (0.5,)


def test_micro_param_counts_match_control() -> None:
    a, b = _micro("dearkd_micro_patch4_32"), _micro("deit_micro_patch4_32")
    extra = sum(layer.pos_weight.numel() + layer.prefix_logit.numel() for layer in a.mhca_layers())
    assert _num_params(a) == _num_params(b) + extra


def test_distilled_training_follows_timm_api() -> None:
    # timm's VisionTransformerDistilled: two heads apart only in distilled training mode, their mean otherwise
    model = timm.create_model("dearkd_micro_patch4_32", in_chans=1, num_classes=10).train()
    x = torch.randn(3, 1, 32, 32)
    assert not model.distilled_training
    averaged = model(x)
    assert isinstance(averaged, torch.Tensor) and averaged.shape == (3, 10)
    model.set_distilled_training(True)
    torch.manual_seed(1)  # no dropout / drop path at these defaults: the same numbers either way
    cls_logits, dist_logits = model(x)
    torch.testing.assert_close(averaged, (cls_logits + dist_logits) / 2)
    model.set_distilled_training(False)
    assert isinstance(model(x), torch.Tensor)


def test_forward_with_tokens() -> None:
    model = _micro().eval()
    x = torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        logits, feats = model.forward_with_tokens(x, blocks=[1, 3, -1])
        ref = model(x)
        tokens = model.forward_features(x)
    torch.testing.assert_close(logits, ref)
    assert sorted(feats) == [-1, 1, 3]
    assert all(f.shape == (2, 64, model.embed_dim) for f in feats.values())
    torch.testing.assert_close(model.norm(feats[-1]), tokens[:, 2:])  # last block's patch tokens, pre-norm
    model.train()
    logits, _ = model.forward_with_tokens(x, blocks=[0])
    assert isinstance(logits, tuple) and len(logits) == 2
    with pytest.raises(IndexError):
        model.forward_with_tokens(x, blocks=[6])


def test_timm_registry_kwargs_and_pretrained_error() -> None:
    names = set(timm.list_models("dearkd_*")) | set(timm.list_models("deit_micro*"))
    assert names >= {"dearkd_tiny_patch16_224", "dearkd_small_patch16_224", "dearkd_base_patch16_224",
                     *MICRO}
    model = timm.create_model("dearkd_micro_patch4_32", in_chans=3, num_classes=7, img_size=48,
                              drop_path_rate=0.2)
    assert model.grid_size == (12, 12)
    assert model.blocks[-1].drop_path1.drop_prob == pytest.approx(0.2)
    assert timm.data.resolve_model_data_config(model)["input_size"] == (3, 48, 48)
    assert model.eval()(torch.randn(1, 3, 48, 48)).shape == (1, 7)
    for name in ("dearkd_tiny_patch16_224", "deit_micro_patch4_32"):
        with pytest.raises(ValueError, match="No pretrained weights"):
            timm.create_model(name, pretrained=True)


def test_no_weight_decay_lists_positional_parameters() -> None:
    model = _micro()
    nwd = model.no_weight_decay()
    assert {"pos_embed", "cls_token", "dist_token", "blocks.0.attn.pos_weight"} <= nwd
    params = dict(model.named_parameters())
    assert nwd <= set(params)


# ------------------------------------------------------------------------------------------ torch.compile
def test_compile_fullgraph_matches_eager() -> None:
    # graph capture without graph breaks, forward and backward (no C++ toolchain needed)
    model = _micro().eval()
    x = torch.randn(4, 1, 32, 32)
    torch._dynamo.reset()
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True)
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), model(x), atol=1e-5, rtol=1e-5)
    model.train()
    cls_logits, dist_logits = compiled(x)
    (cls_logits.sum() + dist_logits.sum()).backward()
    assert model.blocks[0].attn.pos_weight.grad is not None


@pytest.mark.skipif(shutil.which(os.environ.get("CXX", "g++")) is None,
                    reason="torch.compile's inductor backend needs a C++ compiler (none found)")
@pytest.mark.skipif(os.environ.get("DISTILL_SKIP_INDUCTOR") == "1",
                    reason="DISTILL_SKIP_INDUCTOR=1: skipping the slow (~20-30 s cold) inductor compile")
def test_compile_inductor_matches_eager() -> None:
    # measured on 2 busy CPU cores: ~21-27 s with a cold inductor cache, ~2 s once the kernels are cached
    model = _micro().eval()
    x = torch.randn(4, 1, 32, 32)
    torch._dynamo.reset()
    compiled = torch.compile(model, fullgraph=True)
    t0 = time.perf_counter()
    with torch.no_grad():
        out = compiled(x)
    print(f"inductor compile + first call: {time.perf_counter() - t0:.1f} s")
    with torch.no_grad():
        torch.testing.assert_close(out, model(x), atol=1e-4, rtol=1e-4)


# -------------------------------------------------------------------------------------- attention distance
def test_patch_distance_matrix() -> None:
    d = patch_distance_matrix((2, 3), patch_size=(4, 2))  # rows are 4 px apart, columns 2 px
    assert d.shape == (6, 6)
    assert d[0, 1].item() == pytest.approx(2.0)
    assert d[0, 3].item() == pytest.approx(4.0)
    assert d[0, 5].item() == pytest.approx(math.hypot(4, 4))


def test_attention_distance_hand_built_map() -> None:
    # 3x3 grid, patch size 4, two prefix tokens.  Head 0: every patch attends to itself (distance 0).
    # Head 1: every patch puts 0.4 on itself, 0.4 on patch (0, 0) and 0.2 on the class token; after
    # renormalising over patch keys that is 0.5 / 0.5, so its distance is half the distance to (0, 0).
    n, p = 9, 2
    attn = torch.zeros(1, 2, p + n, p + n)
    attn[0, 0, p:, p:] = torch.eye(n)
    attn[0, 1, p:, 0] = 0.2
    attn[0, 1, p:, p] += 0.4
    attn[0, 1, p:, p:] += 0.4 * torch.eye(n)
    attn[0, :, :p, :] = 1.0 / (p + n)  # prefix queries: ignored
    grid_dists = [0, 1, 2, 1, math.sqrt(2), math.sqrt(5), 2, math.sqrt(5), math.sqrt(8)]  # to (0, 0)
    head1 = 0.5 * 4 * sum(grid_dists) / 9
    expect = (0.0 + head1) / 2
    assert attention_distance(attn, 3, 4, num_prefix_tokens=p).item() == pytest.approx(expect, rel=1e-6)


def test_attention_distance_2x2_neighbour() -> None:
    # 2x2 grid, patch size 16, no prefix: each query attends fully to its horizontal neighbour -> 16 px
    attn = torch.tensor([[0, 1, 0, 0], [1, 0, 0, 0], [0, 0, 0, 1], [0, 0, 1, 0]], dtype=torch.float)
    assert attention_distance(attn[None], (2, 2), 16).item() == pytest.approx(16.0)
    # diagonal neighbour -> 16 * sqrt(2)
    attn = torch.tensor([[0, 0, 0, 1], [0, 0, 1, 0], [0, 1, 0, 0], [1, 0, 0, 0]], dtype=torch.float)
    assert attention_distance(attn[None], (2, 2), 16).item() == pytest.approx(16 * math.sqrt(2))


def test_average_attention_distance_on_model_restores_state() -> None:
    model = _micro(locality_strength=10.0)
    model.train()
    model.blocks[0].eval()  # a submodule in a different mode must keep it
    images = torch.randn(10, 1, 32, 32)
    dists = average_attention_distance(model, images, batch_size=4)
    assert len(dists) == 6
    max_dist = 4 * math.hypot(7, 7)
    assert all(0.0 <= d <= max_dist for d in dists)
    # strongly local MHCA heads stay near their offset (<= its length, less at the border) vs global MHSA
    offsets = model.blocks[0].attn.offsets
    local_bound = 4 * sum(math.hypot(dx, dy) for dx, dy in offsets) / len(offsets)
    assert max(dists[:4]) < local_bound + 0.5 < min(dists[4:])
    assert model.training and not model.blocks[0].training and model.blocks[1].training
    assert all(not b.attn.record_attn and b.attn.last_attn is None for b in model.blocks)
    assert all(p.grad is None for p in model.parameters())


# -------------------------------------------------------------------------------------------------- Aligner
def test_aligner_shapes_and_resize() -> None:
    tokens = torch.randn(2, 64, 96, requires_grad=True)
    aligner = Aligner(96, 40)
    assert aligner.dw.groups == 96 and aligner.dw.kernel_size == (3, 3) and aligner.proj.kernel_size == (1, 1)
    assert aligner(tokens).shape == (2, 40, 8, 8)
    assert aligner(tokens, target_hw=(8, 8)).shape == (2, 40, 8, 8)
    out = aligner(tokens, target_hw=torch.Size([14, 14]))
    assert out.shape == (2, 40, 14, 14)
    out.mean().backward()
    assert tokens.grad is not None and tokens.grad.abs().sum() > 0
    rect = Aligner(96, 8, grid_size=(4, 16))
    assert rect(tokens, target_hw=(2, 8)).shape == (2, 8, 2, 8)
    with pytest.raises(ValueError):
        Aligner(96, 8)(torch.randn(1, 60, 96))


def test_aligner_on_model_features() -> None:
    model = _micro().eval()
    with torch.no_grad():
        _, feats = model.forward_with_tokens(torch.randn(2, 1, 32, 32), blocks=[2])
    aligner = Aligner(model.embed_dim, 24, grid_size=model.grid_size)
    assert aligner(feats[2], target_hw=(4, 4)).shape == (2, 24, 4, 4)
