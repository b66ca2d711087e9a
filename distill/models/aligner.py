"""Aligner for early hidden distillation: maps student tokens to a teacher stage map."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from timm.layers import LayerNorm2d
from torch import nn

__all__ = ["Aligner"]


class Aligner(nn.Module):
    """Maps student patch tokens to a teacher feature map.

    ``(B, l = h * w, d)`` tokens -> reshape to ``(B, d, h, w)`` -> depthwise 3x3 conv -> LayerNorm over
    channels -> ReLU -> 1x1 conv to ``out_channels`` (the teacher's channel count ``c``).

    Args:
        in_dim: student token width ``d``.
        out_channels: teacher channel count ``c``.
        grid_size: ``(h, w)`` of the student patch grid; ``None`` infers a square grid from ``l``.
    """

    def __init__(self, in_dim: int, out_channels: int, grid_size: tuple[int, int] | None = None) -> None:
        super().__init__()
        self.grid_size = tuple(grid_size) if grid_size is not None else None
        self.dw = nn.Conv2d(in_dim, in_dim, kernel_size=3, padding=1, groups=in_dim)
        self.norm = LayerNorm2d(in_dim)
        self.act = nn.ReLU(inplace=True)
        self.proj = nn.Conv2d(in_dim, out_channels, kernel_size=1)

    def _grid(self, num_tokens: int) -> tuple[int, int]:
        if self.grid_size is not None:
            h, w = self.grid_size
        else:
            h = w = math.isqrt(num_tokens)
        if h * w != num_tokens:
            raise ValueError(f"{num_tokens} tokens do not form a {h}x{w} grid; pass grid_size")
        return h, w

    def forward(
        self, tokens: torch.Tensor, target_hw: tuple[int, int] | torch.Size | None = None
    ) -> torch.Tensor:
        """``tokens (B, l, d)`` -> ``(B, c, h, w)``; bilinearly resized to ``target_hw`` (the teacher map's
        spatial size) when that is given and differs from the student grid."""
        b, n, d = tokens.shape
        h, w = self._grid(n)
        x = tokens.transpose(1, 2).reshape(b, d, h, w)
        x = self.proj(self.act(self.norm(self.dw(x))))
        if target_hw is not None and tuple(target_hw) != (h, w):
            x = F.interpolate(x, size=tuple(target_hw), mode="bilinear", align_corners=False)
        return x
