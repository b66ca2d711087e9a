"""Average attention distance per block (DearKD fig. 4, the ViT "mean attention distance")."""

from __future__ import annotations

import torch
from torch import nn

from distill.models.mhca import MHSA

__all__ = ["attention_distance", "average_attention_distance", "patch_distance_matrix"]


def _pair(v: int | tuple[int, int]) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else (int(v[0]), int(v[1]))


def patch_distance_matrix(
    grid_size: int | tuple[int, int], patch_size: int | tuple[int, int] = 1
) -> torch.Tensor:
    """Euclidean pixel distance between patch centres, ``(N, N)``, patches numbered row-major.

    Distance = grid offset scaled by the patch size along each axis (``patch_size = (ph, pw)``).
    """
    (gh, gw), (ph, pw) = _pair(grid_size), _pair(patch_size)
    ys, xs = torch.meshgrid(torch.arange(gh), torch.arange(gw), indexing="ij")
    pix = torch.stack([ys.flatten() * ph, xs.flatten() * pw], dim=-1).float()
    return torch.cdist(pix, pix)


def attention_distance(
    attn: torch.Tensor,
    grid_size: int | tuple[int, int],
    patch_size: int | tuple[int, int],
    num_prefix_tokens: int = 0,
) -> torch.Tensor:
    """Mean attention distance of one layer's attention probabilities.

    Args:
        attn: ``(B, heads, L, L)`` (or ``(heads, L, L)``) softmax probabilities, rows = queries,
            ``L = num_prefix_tokens + N``, prefix (class/distillation) tokens first.

    Returns:
        ``(B,)`` tensor (or a 0-d tensor for unbatched input): for each image, the mean over heads and patch
        queries of ``sum_j a_ij d_ij`` where ``a`` is the attention of a patch query over the *patch* keys,
        renormalised to sum to 1 (the mass on the prefix tokens has no spatial position and is dropped),
        and ``d_ij`` the pixel distance between the patch centres.
    """
    p = num_prefix_tokens
    a = attn[..., p:, p:].float()
    a = a / a.sum(dim=-1, keepdim=True).clamp_min(1e-12)
    dist = patch_distance_matrix(grid_size, patch_size).to(a.device)
    per_query = (a * dist).sum(dim=-1)  # (..., heads, N)
    return per_query.flatten(-2).mean(dim=-1)


def average_attention_distance(
    model: nn.Module, images: torch.Tensor, batch_size: int = 64
) -> list[float]:
    """Per-block average attention distance in pixels of ``model`` on ``images``.

    For every attention layer (MHSA or MHCA, in block order) the attention-weighted mean pixel distance
    between patch queries and patch keys (see ``attention_distance``: prefix-token queries are skipped and
    the patch-to-patch attention is renormalised over patch keys), averaged over heads, patch queries and
    images.  The model runs in eval mode (no dropout / drop path) under ``torch.no_grad()``; its (and every
    submodule's) train/eval mode and the layers' ``record_attn`` flags are restored afterwards.

    The model must expose ``patch_embed`` (timm ``PatchEmbed``: ``grid_size``, ``patch_size``) and
    ``num_prefix_tokens``, as ``DearKD`` does.
    """
    layers = [m for m in model.modules() if isinstance(m, MHSA)]
    if not layers:
        raise ValueError("model has no MHSA/MHCA attention layers")
    grid_size = tuple(model.patch_embed.grid_size)
    patch_size = tuple(model.patch_embed.patch_size)
    num_prefix = int(getattr(model, "num_prefix_tokens", 0))
    device = next(model.parameters()).device

    modes = [(m, m.training) for m in model.modules()]
    flags = [(m, m.record_attn) for m in layers]
    sums = torch.zeros(len(layers), dtype=torch.float64)
    count = 0
    try:
        model.eval()
        for m in layers:
            m.record_attn = True
        with torch.no_grad():
            for chunk in images.split(batch_size):
                model(chunk.to(device))
                for i, m in enumerate(layers):
                    d = attention_distance(m.last_attn, grid_size, patch_size, num_prefix)
                    sums[i] += d.double().sum().cpu()
                count += chunk.shape[0]
    finally:
        for m, flag in flags:
            m.record_attn = flag
            m.last_attn = None
        for m, mode in modes:
            m.training = mode
    return (sums / max(count, 1)).tolist()
