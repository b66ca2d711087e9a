"""DearKD vision-transformer students, registered as timm models.

timm's distilled ViT (DeiT: a class and a distillation token, two heads); the first ``num_mhca_blocks`` blocks
use MHCA (relative-position convolutional attention, see ``mhca.py``), the rest plain MHSA, both subclasses of
timm's ``Attention`` inside timm's ``Block``.

Registered names (``import distill`` registers them, then ``timm.create_model(name, ...)``):

==========================  =====  =====  ======  =====  ======  =================================
name                        patch  dim    heads   depth  MHCA    use
==========================  =====  =====  ======  =====  ======  =================================
dearkd_tiny_patch16_224     16     192    12      12     1-8     DearKD-Ti
dearkd_small_patch16_224    16     384    12      12     1-8     DearKD-S
dearkd_base_patch16_224     16     768    16      12     1-8     DearKD-B
dearkd_micro_patch4_32      4      96     12      6      1-4     32x32 inputs (digits, tests)
deit_micro_patch4_32        4      96     12      6      none    DeiT control of the micro model
==========================  =====  =====  ======  =====  ======  =================================
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from typing import Any

import torch
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import trunc_normal_
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from timm.models.deit import VisionTransformerDistilled
from timm.models.vision_transformer import Block
from torch import nn

from distill.models.mhca import MHCA, MHSA

__all__ = ["Block", "DearKD"]

Logits = torch.Tensor | tuple[torch.Tensor, torch.Tensor]


class DearKD(VisionTransformerDistilled):
    """timm's distilled ViT (DeiT: class + distillation tokens, two heads) whose first ``num_mhca_blocks`` blocks
    use MHCA, the rest plain MHSA (both timm ``Attention`` subclasses in timm ``Block`` s).

    Output, as timm's distilled ViT: after ``set_distilled_training(True)``, in training mode ``forward`` returns
    ``(cls_logits, dist_logits)``; otherwise (eval mode, or not distilled training) their average (DeiT's distilled
    inference).  ``forward_features`` returns the normed tokens ``(B, 2 + N, D)`` (class, distillation, then the N
    patch tokens row-major), ``forward_head(x, pre_logits=False)`` maps them to logits (``pre_logits=True``: the
    average of the two normed prefix tokens).  ``forward_with_tokens`` additionally returns the patch tokens of
    chosen blocks for hidden distillation.  Gradient checkpointing, ``group_matcher``, ``forward_intermediates``
    and ``set_input_size`` (position-embedding resampling; the MHCA grids follow) are timm's.

    The state-dict names and the parameter order are those of the model before it was built on timm's ViT, so
    older checkpoints (and their optimizer state) load unchanged.
    """

    def __init__(
        self,
        *,
        global_pool: str = "token",
        depth: int = 12,
        num_mhca_blocks: int = 8,
        qkv_bias: bool = True,
        locality_strength: float = 1.0,
        prefix_logit: bool = True,
        attn_drop_rate: float = 0.0,
        proj_drop_rate: float = 0.0,
        **kwargs: Any,
    ) -> None:
        if global_pool != "token":
            raise ValueError(f"DearKD only supports global_pool='token', got {global_pool!r}")
        if not 0 <= num_mhca_blocks <= depth:
            raise ValueError(f"num_mhca_blocks must be in [0, depth={depth}], got {num_mhca_blocks}")
        if kwargs.get("dynamic_img_size") and num_mhca_blocks:
            raise ValueError("MHCA needs a fixed patch grid: dynamic_img_size is not supported with MHCA blocks")
        weight_init = kwargs.pop("weight_init", "")  # applied once the MHCA layers are in
        super().__init__(global_pool=global_pool, depth=depth, qkv_bias=qkv_bias, attn_drop_rate=attn_drop_rate,
                         proj_drop_rate=proj_drop_rate, norm_layer=partial(nn.LayerNorm, eps=1e-6),
                         block_fn=Block, attn_layer=MHSA, weight_init="skip", **kwargs)
        self.num_mhca_blocks = num_mhca_blocks
        for block in self.blocks[:num_mhca_blocks]:  # MHCA swapped into the first blocks
            block.attn = MHCA(self.embed_dim, block.attn.num_heads, qkv_bias=qkv_bias, attn_drop=attn_drop_rate,
                              proj_drop=proj_drop_rate, grid_size=self.grid_size,
                              num_prefix_tokens=self.num_prefix_tokens, locality_strength=locality_strength,
                              prefix_logit=prefix_logit)
        # parameter order of the pre-timm model (class, distillation token, position embedding), so the optimizer
        # state in its checkpoints lines up
        self._parameters["pos_embed"] = self._parameters.pop("pos_embed")
        self.weight_init_mode = weight_init
        if weight_init != "skip":
            self.init_weights(needs_reset=False)

    # ------------------------------------------------------------------------------------ init / timm API
    def init_weights(self, mode: str = "", needs_reset: bool = True) -> None:
        super().init_weights(mode, needs_reset=needs_reset)
        trunc_normal_(self.cls_token, std=0.02)  # DeiT's init, as before (timm's ViT starts it near zero)

    @property
    def grid_size(self) -> tuple[int, int]:
        """``(rows, cols)`` of the patch grid."""
        return tuple(self.patch_embed.grid_size)

    @property
    def patch_size(self) -> tuple[int, int]:
        return tuple(self.patch_embed.patch_size)

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        """Embeddings and the MHCA positional parameters are exempt from weight decay (as DeiT's
        position embedding): decay would pull ``v^h`` to zero, i.e. erode locality."""
        names = {"pos_embed", "cls_token", "dist_token"}
        names |= {n for n, _ in self.named_parameters() if n.endswith((".pos_weight", ".prefix_logit"))}
        return names

    def set_input_size(self, img_size: Any = None, patch_size: Any = None) -> None:
        """timm's resize (the position embedding is resampled); the MHCA layers take the new patch grid."""
        super().set_input_size(img_size=img_size, patch_size=patch_size)
        for layer in self.mhca_layers():
            layer.set_grid_size(self.grid_size)

    def mhca_layers(self) -> list[MHCA]:
        """The MHCA attention modules, in block order."""
        return [b.attn for b in self.blocks if isinstance(b.attn, MHCA)]

    # ----------------------------------------------------------------------------------------------- forward
    def forward_with_tokens(
        self, x: torch.Tensor, blocks: Sequence[int]
    ) -> tuple[Logits, dict[int, torch.Tensor]]:
        """Forward pass that also returns the patch tokens of the chosen blocks (for hidden distillation).

        Args:
            x: images ``(B, C, H, W)``.
            blocks: 0-based block indices (block ``k`` here is block ``k + 1`` in the paper's numbering;
                negative indices count from the end).  Unlike timm's ``forward_intermediates`` (which this
                builds on) this returns the logits too, so the trainer needs one pass for both losses.

        Returns:
            ``(logits, feats)``: ``logits`` exactly as ``forward`` returns them (tuple in distilled
            training, else the averaged tensor); ``feats[k]`` for every ``k`` in ``blocks`` (keyed by the index as
            given) is that block's output patch tokens, shape ``(B, N, D)``, row-major over the
            ``grid_size`` patch grid, taken before the final norm and without the two prefix tokens.
            ``distill.models.Aligner`` turns them into a ``(B, c, h, w)`` map.
        """
        depth = len(self.blocks)
        for k in blocks:
            if not -depth <= k < depth:
                raise IndexError(f"block index {k} out of range for depth {depth}")
        if not blocks:
            return self(x), {}
        taken = sorted({k % depth for k in blocks})
        x, tokens = self.forward_intermediates(x, indices=taken, output_fmt="NLC")
        by_block = dict(zip(taken, tokens, strict=True))
        return self.forward_head(x), {k: by_block[k % depth] for k in blocks}


# ------------------------------------------------------------------------------------------------ registry
def _cfg(**kwargs: Any) -> dict[str, Any]:
    return {
        "url": "",
        "num_classes": 1000,
        "input_size": (3, 224, 224),
        "pool_size": None,
        "crop_pct": 0.875,
        "interpolation": "bicubic",
        "fixed_input_size": True,
        "mean": IMAGENET_DEFAULT_MEAN,
        "std": IMAGENET_DEFAULT_STD,
        "first_conv": "patch_embed.proj",
        "classifier": ("head", "head_dist"),
        "license": "apache-2.0",
        **kwargs,
    }


_cfg32 = partial(_cfg, num_classes=10, input_size=(3, 32, 32), crop_pct=1.0, mean=(0.5, 0.5, 0.5),
                 std=(0.5, 0.5, 0.5))

default_cfgs = generate_default_cfgs({
    "dearkd_tiny_patch16_224": _cfg(),
    "dearkd_small_patch16_224": _cfg(),
    "dearkd_base_patch16_224": _cfg(),
    "dearkd_micro_patch4_32": _cfg32(),
    "deit_micro_patch4_32": _cfg32(),
})


def _fit_cfg_to_model(model: DearKD) -> None:
    """Make the attached pretrained_cfg describe the model as built (img_size / in_chans overrides), so
    ``timm.data.resolve_model_data_config(model)`` gives a matching input size and per-channel mean/std."""
    cfg = dict(model.pretrained_cfg)
    in_chans = model.patch_embed.proj.in_channels
    cfg["input_size"] = (in_chans, *model.patch_embed.img_size)
    cfg["num_classes"] = model.num_classes
    for key in ("mean", "std"):
        vals = tuple(cfg[key])
        if len(vals) != in_chans:  # e.g. greyscale: use the channel average for every channel
            cfg[key] = (sum(vals) / len(vals),) * in_chans
    model.pretrained_cfg = model.default_cfg = cfg


def _create(variant: str, pretrained: bool = False, **kwargs: Any) -> DearKD:
    if pretrained:
        raise ValueError(f"No pretrained weights exist for {variant}: create it with pretrained=False "
                         "(or load a checkpoint with checkpoint_path=...).")
    model = build_model_with_cfg(DearKD, variant, pretrained=False, **kwargs)
    _fit_cfg_to_model(model)
    return model


@register_model
def dearkd_tiny_patch16_224(pretrained: bool = False, **kwargs: Any) -> DearKD:
    """DearKD-Ti: DeiT-Ti distilled backbone (dim 192) with 12 heads, MHCA in blocks 1-8."""
    args = dict(patch_size=16, embed_dim=192, depth=12, num_heads=12, num_mhca_blocks=8)
    return _create("dearkd_tiny_patch16_224", pretrained, **dict(args, **kwargs))


@register_model
def dearkd_small_patch16_224(pretrained: bool = False, **kwargs: Any) -> DearKD:
    """DearKD-S: DeiT-S distilled backbone (dim 384) with 12 heads, MHCA in blocks 1-8."""
    args = dict(patch_size=16, embed_dim=384, depth=12, num_heads=12, num_mhca_blocks=8)
    return _create("dearkd_small_patch16_224", pretrained, **dict(args, **kwargs))


@register_model
def dearkd_base_patch16_224(pretrained: bool = False, **kwargs: Any) -> DearKD:
    """DearKD-B: DeiT-B distilled backbone (dim 768) with 16 heads, MHCA in blocks 1-8."""
    args = dict(patch_size=16, embed_dim=768, depth=12, num_heads=16, num_mhca_blocks=8)
    return _create("dearkd_base_patch16_224", pretrained, **dict(args, **kwargs))


# micro: 32x32 inputs, patch 4 -> 8x8 grid.  Depth 6 keeps the 2:1 MHCA:MHSA ratio (4 + 2); 12 heads give
# the same offset set as DearKD-Ti/S (3x3 window + 3 offsets at distance 2).  Width 96 (0.68M params): a
# train step at batch 64 takes ~0.24 s on 2 CPU cores (dim 144 / 9 heads: ~0.32 s), so 30 epochs on 2k
# images take ~4 min.
_MICRO = dict(img_size=32, patch_size=4, embed_dim=96, depth=6, num_heads=12)


@register_model
def dearkd_micro_patch4_32(pretrained: bool = False, **kwargs: Any) -> DearKD:
    """Small DearKD for 32x32 inputs: dim 96, 12 heads, 6 blocks (4 MHCA + 2 MHSA)."""
    args = dict(_MICRO, num_mhca_blocks=4)
    return _create("dearkd_micro_patch4_32", pretrained, **dict(args, **kwargs))


@register_model
def deit_micro_patch4_32(pretrained: bool = False, **kwargs: Any) -> DearKD:
    """DeiT control of ``dearkd_micro_patch4_32``: identical, but every block is plain MHSA."""
    args = dict(_MICRO, num_mhca_blocks=0)
    return _create("deit_micro_patch4_32", pretrained, **dict(args, **kwargs))
