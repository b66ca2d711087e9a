"""Stock ImageNet architectures as users fine-tune them on small images: the library's network with only its first
convolution swapped for the images' channels (7x7 stride-2 stem and max-pool kept, so a 32-px input is 8x8 after
the stem and 1x1 in the last stage). Random init (nothing is downloaded); a plain factory
`name(num_classes=10, in_chans=1) -> nn.Module`, usable as a user's model file:

    dfgen synthesize --teacher benchmarks/stock_nets.py:resnet18_stock --teacher-kwargs '{num_classes: 10}' \\
        --teacher-weights W.pt --image-size 32 --mean M --std S ..."""

from __future__ import annotations

import torch
from torch import nn


def resnet18_stock(num_classes: int = 10, in_chans: int = 1) -> nn.Module:
    """torchvision's resnet18 with a 7x7/2 stem of `in_chans` channels, max-pool kept: 11.2M parameters."""
    import torchvision

    torch.manual_seed(0)  # a deterministic init: every build gives the same model
    model = torchvision.models.resnet18(weights=None, num_classes=num_classes)
    model.conv1 = nn.Conv2d(in_chans, 64, kernel_size=7, stride=2, padding=3, bias=False)
    return model


def mobilenetv3_stock(num_classes: int = 10, in_chans: int = 1) -> nn.Module:
    """timm's mobilenetv3_small_100 (3x3/2 stem, squeeze-excite, hard-swish; 32 px -> 1x1 at the last stage) with
    `in_chans` input channels: 1.5M parameters."""
    import timm

    torch.manual_seed(0)
    return timm.create_model("mobilenetv3_small_100", pretrained=False, num_classes=num_classes, in_chans=in_chans)


TEACHERS = ("resnet18_stock", "mobilenetv3_stock")
