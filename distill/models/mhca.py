"""Self-attention layers of the DearKD student: plain MHSA and MHCA.

MHCA (multi-head convolutional attention) adds a learned relative-position term to the attention logits of
patch tokens (Cordonnier et al., 2020, "On the relationship between self-attention and convolutional
layers"):

    A^h_ij = softmax_j( q_i^h . k_j^h / sqrt(d_h) + v^h . r_ij ),   r_ij = (||delta_ij||^2, dx, dy),

with ``delta_ij = p_j - p_i`` the offset between patch ``i`` and patch ``j`` on the patch grid (in grid
units, x = column, y = row) and ``v^h`` a learned 3-vector per head.  With ``v^h = alpha * (-1, 2 Dx, 2 Dy)``
the positional logit equals ``-alpha * ||delta - D||^2 + alpha * ||D||^2``, i.e. head ``h`` prefers the key
at offset ``D`` and, for large ``alpha``, behaves like one tap of a convolution kernel.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from timm.layers import Attention
from torch import nn

__all__ = ["MHSA", "MHCA", "local_offsets", "relative_position_features"]


def local_offsets(num_heads: int) -> list[tuple[int, int]]:
    """Distinct integer grid offsets ``(dx, dy)``, one per head, nearest to the centre first.

    Offsets are ordered by squared length; ties are broken by direction modulo pi (so that opposite
    offsets come in pairs) and then by angle.  9 heads give the 3x3 window; 12 heads the 3x3 window plus
    (2, 0), (-2, 0), (0, -2); 16 heads additionally (0, 2), (-2, -1), (2, 1), (-1, -2).
    """
    if num_heads < 1:
        raise ValueError(f"num_heads must be >= 1, got {num_heads}")
    # the disc of radius r holds more than num_heads lattice points, so the nearest ones are all in range
    r = math.isqrt(num_heads) + 1
    cands = [(dx, dy) for dx in range(-r, r + 1) for dy in range(-r, r + 1)]

    def key(o: tuple[int, int]) -> tuple[int, float, float]:
        ang = math.atan2(o[1], o[0])
        return (o[0] ** 2 + o[1] ** 2, round(ang % math.pi, 9), ang)

    return sorted(cands, key=key)[:num_heads]


def relative_position_features(grid_size: tuple[int, int]) -> torch.Tensor:
    """``r_ij = (||p_j - p_i||^2, x_j - x_i, y_j - y_i)`` for all pairs of patches, shape ``(N, N, 3)``.

    Patches are numbered row-major (``i = y * W + x``) as produced by ``PatchEmbed``'s flatten.
    """
    h, w = grid_size
    ys, xs = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    coords = torch.stack([xs.flatten(), ys.flatten()], dim=-1).float()  # (N, 2) as (x, y)
    delta = coords[None, :, :] - coords[:, None, :]  # delta[i, j] = p_j - p_i
    return torch.cat([delta.pow(2).sum(-1, keepdim=True), delta], dim=-1)


class MHSA(Attention):
    """timm's ``Attention`` (fused ``qkv``, ``proj``; the same state-dict names) with two additions the student needs.

    ``attn_bias(num_tokens)`` is an additive logit bias hook (``None`` here; MHCA's positional term), and setting
    ``record_attn = True`` makes the layer compute the softmax explicitly and keep the (detached) attention
    probabilities of the last call in ``last_attn`` (shape ``(B, heads, L, L)``); otherwise the fused
    ``F.scaled_dot_product_attention`` path runs (timm's ``fused_attn``) and nothing is stored.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int = 8,
        qkv_bias: bool = True,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
        **kwargs: Any,
    ) -> None:
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        super().__init__(dim, num_heads=num_heads, qkv_bias=qkv_bias, attn_drop=attn_drop, proj_drop=proj_drop,
                         **kwargs)
        self.record_attn = False
        self.last_attn: torch.Tensor | None = None

    def attn_bias(self, num_tokens: int) -> torch.Tensor | None:
        """Additive logit bias of shape ``(heads, L, L)``; ``None`` for plain self-attention."""
        return None

    def forward(
        self, x: torch.Tensor, attn_mask: torch.Tensor | None = None, is_causal: bool = False
    ) -> torch.Tensor:
        if is_causal:
            raise ValueError("the student's attention is not causal")
        b, n, _ = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # (B, heads, L, head_dim) each
        q, k = self.q_norm(q), self.k_norm(k)
        bias = self.attn_bias(n)
        if bias is not None:
            if attn_mask is not None:
                raise ValueError(f"{type(self).__name__} adds its own positional bias; it takes no attention mask")
            attn_mask = bias.to(q.dtype)  # SDPA wants the float mask in the query dtype (autocast)
        if self.record_attn or not self.fused_attn:
            logits = (q * self.scale) @ k.transpose(-2, -1)
            if attn_mask is not None:
                logits = logits.masked_fill(~attn_mask, float("-inf")) if attn_mask.dtype == torch.bool \
                    else logits + attn_mask
            attn = logits.softmax(dim=-1)
            if self.record_attn:
                self.last_attn = attn.detach()
            x = self.attn_drop(attn) @ v
        else:
            x = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask,
                                               dropout_p=self.attn_drop.p if self.training else 0.0)
        x = self.norm(x.transpose(1, 2).reshape(b, n, self.attn_dim))
        return self.proj_drop(self.proj(x))


class MHCA(MHSA):
    """Multi-head convolutional attention: MHSA plus a per-head relative-position logit on patch pairs.

    Args:
        dim: token width.
        num_heads: number of heads; head ``h`` is initialised to attend to ``local_offsets(num_heads)[h]``.
        grid_size: ``(rows, cols)`` of the patch grid; the layer expects ``num_prefix_tokens + rows * cols``
            tokens with the prefix (class / distillation) tokens first.
        num_prefix_tokens: number of leading non-patch tokens.  They take no positional term: rows and
            columns of the logit matrix that involve them get no ``v^h . r_ij`` (see ``prefix_logit``).
        locality_strength: ``alpha`` of the local initialisation (ConViT uses 1); larger is more peaked.
        prefix_logit: if True (default), patch queries add a learned per-head scalar to their logits on
            the prefix keys.  It is needed because ``r_ii = 0`` makes the self key and the prefix keys tie
            under the pure formula (both get positional logit 0), so a centre head could never prefer
            itself over the class/distillation tokens.  It is initialised one unit step below the head's
            preferred offset, ``alpha * (||D_h||^2 - 1)``, i.e. the prefix keys start out as attractive
            as a grid neighbour of the target patch.  ``False`` gives the strict formula.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int = 8,
        qkv_bias: bool = True,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
        *,
        grid_size: tuple[int, int],
        num_prefix_tokens: int = 2,
        locality_strength: float = 1.0,
        prefix_logit: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(dim, num_heads, qkv_bias=qkv_bias, attn_drop=attn_drop, proj_drop=proj_drop, **kwargs)
        self.num_prefix_tokens = num_prefix_tokens
        self.offsets = local_offsets(num_heads)
        # v^h, one 3-vector per head, in the order of r_ij = (||delta||^2, dx, dy)
        self.pos_weight = nn.Parameter(torch.zeros(num_heads, 3))
        use_prefix_logit = prefix_logit and num_prefix_tokens > 0
        self.prefix_logit = nn.Parameter(torch.zeros(num_heads)) if use_prefix_logit else None
        self.set_grid_size(grid_size)
        self.reset_positional(locality_strength)

    def set_grid_size(self, grid_size: tuple[int, int]) -> None:
        """The patch grid the layer expects (``DearKD.set_input_size`` calls this when the image size changes)."""
        self.grid_size = (int(grid_size[0]), int(grid_size[1]))
        self.num_patches = self.grid_size[0] * self.grid_size[1]
        # derived from grid_size, so not saved in the state dict
        self.register_buffer("rel_pos", relative_position_features(self.grid_size).to(self.pos_weight.device),
                             persistent=False)

    def init_weights(self) -> None:
        """timm's ViT init calls this (after the linears): the local initialisation again."""
        self.reset_positional(self.locality_strength)

    @torch.no_grad()
    def reset_positional(self, locality_strength: float) -> None:
        """Local initialisation: ``v^h = alpha * (-1, 2 Dx_h, 2 Dy_h)`` with ``D_h`` the head's offset."""
        self.locality_strength = float(locality_strength)
        off = torch.tensor(self.offsets, dtype=self.pos_weight.dtype, device=self.pos_weight.device)
        v = torch.cat([-torch.ones(self.num_heads, 1, dtype=off.dtype, device=off.device), 2 * off], dim=1)
        self.pos_weight.copy_(self.locality_strength * v)
        if self.prefix_logit is not None:
            self.prefix_logit.copy_(self.locality_strength * (off.pow(2).sum(1) - 1))

    def positional_logits(self) -> torch.Tensor:
        """``v^h . r_ij`` for patch pairs, shape ``(heads, N, N)``."""
        return torch.einsum("ijc,hc->hij", self.rel_pos.to(self.pos_weight.dtype), self.pos_weight)

    def attn_bias(self, num_tokens: int) -> torch.Tensor:
        p, n, h = self.num_prefix_tokens, self.num_patches, self.num_heads
        if num_tokens != p + n:
            raise ValueError(f"MHCA built for {p} prefix + {n} patch tokens, got {num_tokens} tokens")
        pos = self.positional_logits()
        if p == 0:
            return pos
        if self.prefix_logit is not None:
            to_prefix = self.prefix_logit.view(h, 1, 1).expand(h, n, p)
        else:
            to_prefix = pos.new_zeros(h, n, p)
        patch_rows = torch.cat([to_prefix, pos], dim=2)  # patch queries: (heads, N, L)
        prefix_rows = pos.new_zeros(h, p, p + n)  # class/dist queries: content only
        return torch.cat([prefix_rows, patch_rows], dim=1)
