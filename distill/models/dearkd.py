"""DearKD vision-transformer students, registered as timm models.

DeiT backbone with a class and a distillation token and two heads; the first ``num_mhca_blocks`` blocks use
MHCA (relative-position convolutional attention, see ``mhca.py``), the rest plain MHSA.

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
from timm.layers import DropPath, Mlp, PatchEmbed, trunc_normal_
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from torch import nn

from distill.models.mhca import MHCA, MHSA

__all__ = ["Block", "DearKD"]

Logits = torch.Tensor | tuple[torch.Tensor, torch.Tensor]


class Block(nn.Module):
    """Pre-norm transformer block; ``attn`` is an ``MHSA`` or ``MHCA`` instance."""

    def __init__(
        self,
        dim: int,
        attn: MHSA,
        mlp_ratio: float = 4.0,
        proj_drop: float = 0.0,
        drop_path: float = 0.0,
        norm_layer: type[nn.Module] = nn.LayerNorm,
    ) -> None:
        super().__init__()
        self.norm1 = norm_layer(dim)
        self.attn = attn
        self.drop_path1 = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = norm_layer(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act_layer=nn.GELU, drop=proj_drop)
        self.drop_path2 = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path1(self.attn(self.norm1(x)))
        return x + self.drop_path2(self.mlp(self.norm2(x)))


class DearKD(nn.Module):
    """DeiT-style ViT with class + distillation tokens whose first ``num_mhca_blocks`` blocks use MHCA.

    Output, as timm's distilled ViT: after ``set_distilled_training(True)``, in training mode ``forward`` returns
    ``(cls_logits, dist_logits)``; otherwise (eval mode, or not distilled training) their average (DeiT's distilled
    inference).  ``forward_features`` returns the normed tokens ``(B, 2 + N, D)`` (class, distillation, then the N
    patch tokens row-major), ``forward_head(x, pre_logits=False)`` maps them to logits (``pre_logits=True``: the
    average of the two normed prefix tokens).  ``forward_with_tokens`` additionally returns the patch tokens of
    chosen blocks for hidden distillation.
    """

    num_prefix_tokens = 2  # class + distillation token

    def __init__(
        self,
        img_size: int | tuple[int, int] = 224,
        patch_size: int = 16,
        in_chans: int = 3,
        num_classes: int = 1000,
        global_pool: str = "token",
        embed_dim: int = 192,
        depth: int = 12,
        num_heads: int = 12,
        num_mhca_blocks: int = 8,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        locality_strength: float = 1.0,
        prefix_logit: bool = True,
        drop_rate: float = 0.0,
        pos_drop_rate: float = 0.0,
        proj_drop_rate: float = 0.0,
        attn_drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
    ) -> None:
        super().__init__()
        if global_pool != "token":
            raise ValueError(f"DearKD only supports global_pool='token', got {global_pool!r}")
        if not 0 <= num_mhca_blocks <= depth:
            raise ValueError(f"num_mhca_blocks must be in [0, depth={depth}], got {num_mhca_blocks}")
        self.num_classes = num_classes
        self.global_pool = global_pool
        self.num_features = self.head_hidden_size = self.embed_dim = embed_dim
        self.num_mhca_blocks = num_mhca_blocks
        self.distilled_training = False  # set_distilled_training(True) to train the two heads apart (timm's API)
        norm_layer = partial(nn.LayerNorm, eps=1e-6)

        self.patch_embed = PatchEmbed(img_size=img_size, patch_size=patch_size, in_chans=in_chans,
                                      embed_dim=embed_dim)
        self.grid_size: tuple[int, int] = tuple(self.patch_embed.grid_size)
        self.patch_size: tuple[int, int] = tuple(self.patch_embed.patch_size)
        num_patches = self.patch_embed.num_patches
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.dist_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        # absolute position embedding as in DeiT (covers the two prefix tokens too)
        self.pos_embed = nn.Parameter(torch.zeros(1, num_patches + self.num_prefix_tokens, embed_dim))
        self.pos_drop = nn.Dropout(pos_drop_rate)

        dpr = torch.linspace(0, drop_path_rate, depth).tolist()  # stochastic depth decay rule
        blocks = []
        for i in range(depth):
            if i < num_mhca_blocks:
                attn: MHSA = MHCA(embed_dim, num_heads, qkv_bias=qkv_bias, attn_drop=attn_drop_rate,
                                  proj_drop=proj_drop_rate, grid_size=self.grid_size,
                                  num_prefix_tokens=self.num_prefix_tokens,
                                  locality_strength=locality_strength, prefix_logit=prefix_logit)
            else:
                attn = MHSA(embed_dim, num_heads, qkv_bias=qkv_bias, attn_drop=attn_drop_rate,
                            proj_drop=proj_drop_rate)
            blocks.append(Block(embed_dim, attn, mlp_ratio=mlp_ratio, proj_drop=proj_drop_rate,
                                drop_path=dpr[i], norm_layer=norm_layer))
        self.blocks = nn.Sequential(*blocks)
        self.norm = norm_layer(embed_dim)
        self.head_drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(embed_dim, num_classes) if num_classes > 0 else nn.Identity()
        self.head_dist = nn.Linear(embed_dim, num_classes) if num_classes > 0 else nn.Identity()
        self._init_weights()

    # ------------------------------------------------------------------------------------ init / timm API
    def _init_weights(self) -> None:
        trunc_normal_(self.pos_embed, std=0.02)
        trunc_normal_(self.cls_token, std=0.02)
        trunc_normal_(self.dist_token, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        # MHCA's positional parameters are initialised in MHCA itself (local init), nothing to redo here

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        """Embeddings and the MHCA positional parameters are exempt from weight decay (as DeiT's
        position embedding): decay would pull ``v^h`` to zero, i.e. erode locality."""
        names = {"pos_embed", "cls_token", "dist_token"}
        names |= {n for n, _ in self.named_parameters() if n.endswith((".pos_weight", ".prefix_logit"))}
        return names

    @torch.jit.ignore
    def get_classifier(self) -> tuple[nn.Module, nn.Module]:
        return self.head, self.head_dist

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        if global_pool is not None and global_pool != "token":
            raise ValueError("DearKD only supports global_pool='token'")
        self.num_classes = num_classes
        self.head = nn.Linear(self.embed_dim, num_classes) if num_classes > 0 else nn.Identity()
        self.head_dist = nn.Linear(self.embed_dim, num_classes) if num_classes > 0 else nn.Identity()

    @torch.jit.ignore
    def set_distilled_training(self, enable: bool = True) -> None:
        """Training-mode forward returns ``(cls, dist)`` logits when enabled (timm's ``VisionTransformerDistilled``)."""
        self.distilled_training = enable

    def mhca_layers(self) -> list[MHCA]:
        """The MHCA attention modules, in block order."""
        return [b.attn for b in self.blocks if isinstance(b.attn, MHCA)]

    # ----------------------------------------------------------------------------------------------- forward
    def _embed(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x)
        b = x.shape[0]
        x = torch.cat([self.cls_token.expand(b, -1, -1), self.dist_token.expand(b, -1, -1), x], dim=1)
        return self.pos_drop(x + self.pos_embed)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Images ``(B, C, H, W)`` -> normed tokens ``(B, 2 + N, D)``."""
        return self.norm(self.blocks(self._embed(x)))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> Logits:
        """Tokens from ``forward_features`` -> ``(cls, dist)`` logits in distilled training, else their mean."""
        x_cls, x_dist = x[:, 0], x[:, 1]
        if pre_logits:
            return (x_cls + x_dist) / 2
        x_cls = self.head(self.head_drop(x_cls))
        x_dist = self.head_dist(self.head_drop(x_dist))
        if self.distilled_training and self.training:
            return x_cls, x_dist
        return (x_cls + x_dist) / 2

    def forward(self, x: torch.Tensor) -> Logits:
        return self.forward_head(self.forward_features(x))

    def forward_with_tokens(
        self, x: torch.Tensor, blocks: Sequence[int]
    ) -> tuple[Logits, dict[int, torch.Tensor]]:
        """Forward pass that also returns the patch tokens of the chosen blocks (for hidden distillation).

        Args:
            x: images ``(B, C, H, W)``.
            blocks: 0-based block indices (block ``k`` here is block ``k + 1`` in the paper's numbering;
                negative indices count from the end).  Unlike timm's ``forward_intermediates`` (which this
                model does not implement) this returns the logits too, so the trainer needs one pass for both
                losses.

        Returns:
            ``(logits, feats)``: ``logits`` exactly as ``forward`` returns them (tuple in distilled
            training, else the averaged tensor); ``feats[k]`` for every ``k`` in ``blocks`` (keyed by the index as
            given) is that block's output patch tokens, shape ``(B, N, D)``, row-major over the
            ``grid_size`` patch grid, taken before the final norm and without the two prefix tokens.
            ``distill.models.Aligner`` turns them into a ``(B, c, h, w)`` map.
        """
        depth = len(self.blocks)
        wanted: dict[int, list[int]] = {}
        for k in blocks:
            if not -depth <= k < depth:
                raise IndexError(f"block index {k} out of range for depth {depth}")
            wanted.setdefault(k % depth, []).append(k)
        x = self._embed(x)
        feats: dict[int, torch.Tensor] = {}
        for i, blk in enumerate(self.blocks):
            x = blk(x)
            for k in wanted.get(i, ()):
                feats[k] = x[:, self.num_prefix_tokens:]
        return self.forward_head(self.norm(x)), feats


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
