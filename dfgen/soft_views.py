"""Soft labels for K fixed augmented views of each written image (FKD / SRe2L style relabelling).

The teacher's logits on the whole image are a stale target for a student that trains on random crops of it: a crop
that cuts a digit's stroke away is not the digit the teacher saw. So besides the whole image, dfgen can store the
teacher's top-k logits on K random-resized crops (and, where flips are on, mirror images) of it, each with its box.
`distill run --soft-labels stored` then replays one of those crops exactly and learns its stored logits, so the target
matches what the student sees without the teacher at training time.

A view is (top, left, height, width, flip) in pixels of the written image; the crop is resized back to the image's
size with bilinear interpolation (what distill's PIL replay does for an upscaling). The boxes come from the batch's
generator after the inversion, so a batch's views, like its images, are a function of its seed only.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Generator, Tensor, nn

RATIO = (3 / 4, 4 / 3)  # aspect ratio range of the crops, log-uniform (timm's and torchvision's default)


def draw_view_boxes(generator: Generator, n: int, views: int, size: int, min_scale: float,
                    flip: bool) -> Tensor:
    """(n, views, 5) int64 boxes (top, left, height, width, flip): area fraction uniform in [min_scale, 1], aspect
    ratio log-uniform in RATIO (clipped to the image), position uniform; flip a fair coin when on, else 0."""
    u = torch.rand(n, views, 5, generator=generator, dtype=torch.float64)
    area = (min_scale + (1.0 - min_scale) * u[..., 0]) * size * size
    log_low, log_high = math.log(RATIO[0]), math.log(RATIO[1])
    ratio = torch.exp(log_low + (log_high - log_low) * u[..., 1])
    width = torch.sqrt(area * ratio).round().clamp(1, size).long()
    height = torch.sqrt(area / ratio).round().clamp(1, size).long()
    top = (u[..., 2] * (size - height + 1)).floor().long()
    left = (u[..., 3] * (size - width + 1)).floor().long()
    flips = (u[..., 4] < 0.5).long() if flip else torch.zeros_like(top)
    return torch.stack([top, left, height, width, flips], dim=-1)


def crop_views(images: Tensor, boxes: Tensor) -> Tensor:
    """(n * views, C, H, W): each image's views, cropped, resized back to H x W (bilinear) and mirrored where
    flagged. `images` (n, C, H, W) float; `boxes` (n, views, 5)."""
    size = images.shape[-2:]
    out = []
    for image, image_boxes in zip(images, boxes, strict=True):
        for top, left, height, width, flip in image_boxes.tolist():
            view = image[None, :, top:top + height, left:left + width]
            if (height, width) != tuple(size):
                view = F.interpolate(view, size=size, mode="bilinear", align_corners=False)
            out.append(view.flip(3) if flip else view)
    return torch.cat(out)


@torch.no_grad()
def view_logits(model: nn.Module, normalised: Tensor, boxes: Tensor, chunk: int = 256) -> Tensor:
    """(n, views, classes) teacher logits on each image's views; `normalised` is what the teacher takes."""
    n, views = boxes.shape[:2]
    crops = crop_views(normalised, boxes)
    logits = torch.cat([model(crops[i:i + chunk]).float() for i in range(0, len(crops), chunk)])
    return logits.view(n, views, -1)


def soft_label_record(topk: int, num_classes: int, views: int, min_scale: float, flip: bool) -> dict:
    """dataset.json's "soft_labels": what each sample stores for distill --soft-labels stored."""
    record: dict = {"k": min(topk, num_classes), "of": "teacher logits on the written image"}
    if views:
        record["views"] = {"count": views, "min_scale": min_scale, "ratio": [round(r, 4) for r in RATIO],
                           "flip": bool(flip), "resize": "bilinear",
                           "of": "teacher logits on each crop (top, left, height, width, flip) resized to the image"}
    return record
