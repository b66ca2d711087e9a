"""A small class-conditional convolutional image generator for the amortized mode (dfgen.amortized).

latent z (+ one-hot class) -> linear -> C0 x S0 x S0 map -> [2x upsample, conv 3x3, BatchNorm, LeakyReLU]... ->
2x upsample, conv 3x3 to the image's channels -> sigmoid (pixels in [0, 1]) -> the teacher's normalisation.

It is sized by `width` (channels of the last hidden map; each map below it has twice the channels of the one above):
on a 28 px LeNet-5 teacher (about 0.42 M multiply-adds a forward) width 4 costs 0.1 M multiply-adds an image, width 8
0.3 M, width 16 1.1 M, so a generator can cost more than the teacher passes it saves (docs/design.md). The output is
always a valid image (sigmoid), so no clipping is needed. BatchNorm uses the batch's statistics (no running
statistics): a batch is made as a unit, a pure function of its seed."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

MAX_DOUBLINGS = 5  # 224 px from a 7x7 map
SMALLEST_MAP = 4


def doublings(resolution: int) -> int:
    """How many 2x upsamplings from the first map to `resolution`: as many as keep the first map >= 4 px."""
    count, size = 0, resolution
    while count < MAX_DOUBLINGS and size % 2 == 0 and size // 2 >= SMALLEST_MAP:
        count, size = count + 1, size // 2
    return count


class ImageGenerator(nn.Module):
    def __init__(self, num_classes: int, in_chans: int, resolution: int, mean: tuple[float, ...],
                 std: tuple[float, ...], latent: int = 32, width: int = 8) -> None:
        super().__init__()
        self.num_classes, self.latent, self.resolution = num_classes, latent, resolution
        ups = doublings(resolution)
        self.first = resolution // 2 ** ups
        if ups == 0:  # an odd or tiny size: one map at full size, no upsampling
            channels = [width]
        else:
            channels = [width * 2 ** (ups - 1 - i) for i in range(ups)]  # ..., 4w, 2w, w
        self.project = nn.Linear(latent + num_classes, channels[0] * self.first ** 2)
        self.project_norm = nn.BatchNorm2d(channels[0], track_running_stats=False)
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.Conv2d(channels[i], channels[i + 1], 3, padding=1, bias=False),
                          nn.BatchNorm2d(channels[i + 1], track_running_stats=False))
            for i in range(len(channels) - 1))
        self.to_image = nn.Conv2d(channels[-1], in_chans, 3, padding=1)
        self.upsample_last = ups > 0
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)

    def forward(self, z: Tensor, labels: Tensor) -> Tensor:
        """Images in the teacher's normalised space, (B, C, H, W), for latents (B, latent) and labels (B,)."""
        code = torch.cat([z, F.one_hot(labels, self.num_classes).to(z.dtype)], dim=1)
        x = self.project(code).view(z.shape[0], -1, self.first, self.first)
        x = F.leaky_relu(self.project_norm(x), 0.2)
        for block in self.blocks:
            x = F.leaky_relu(block(F.interpolate(x, scale_factor=2, mode="nearest")), 0.2)
        if self.upsample_last:
            x = F.interpolate(x, scale_factor=2, mode="nearest")
        pixels = torch.sigmoid(self.to_image(x))
        return (pixels - self.mean) / self.std


def build_generator(seed: int, num_classes: int, in_chans: int, resolution: int, mean: tuple[float, ...],
                    std: tuple[float, ...], latent: int, width: int) -> ImageGenerator:
    """A generator whose initial weights are a function of `seed` only (the process's random state is untouched)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return ImageGenerator(num_classes, in_chans, resolution, mean, std, latent, width)
