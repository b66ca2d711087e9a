"""Small networks for the 28x28 one-channel benchmarks (MNIST, Fashion-MNIST): the teachers of several families
and the literature's students. Each is a plain factory `name(num_classes=10, in_chans=1) -> nn.Module`, usable as a
user's model file:

    dfgen synthesize --teacher benchmarks/small_nets.py:lenet5_bn --teacher-kwargs '{num_classes: 10}' \\
        --teacher-weights W.pt --image-size 28 --mean 0.1307 --std 0.3081 ...

Teachers (BatchNorm after every convolution, as DeepInversion needs): lenet5_bn, resnet18_small, vgg_bn_small,
mobilenet_small. Students (no BatchNorm): lenet5_half (DAFL / ZSKD's student), small_cnn. The classifier is the
last nn.Linear of each (its input is the embedding dfgen's diversity losses use). Parameter counts are at 10
classes, one channel. The ResNet and MobileNet blocks are torchvision's."""

from __future__ import annotations

import torch
from torch import nn
from torchvision.models.mobilenetv2 import InvertedResidual
from torchvision.models.resnet import BasicBlock
from torchvision.ops.misc import Conv2dNormActivation


class FixedSize(nn.Module):
    """A network whose flattened head fixes its input size: a clear error for any other size."""

    def __init__(self, body: nn.Module, size: int = 28) -> None:
        super().__init__()
        self.body = body
        self.size = size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if tuple(x.shape[-2:]) != (self.size, self.size):
            raise ValueError(f"{type(self).__name__} takes {self.size}x{self.size} images, got "
                             f"{tuple(x.shape[-2:])}")
        return self.body(x)


class LeNet5(FixedSize):
    pass


class VGGSmall(FixedSize):
    pass


def _lenet5(channels: tuple[int, int, int, int], batch_norm: bool, num_classes: int, in_chans: int) -> nn.Module:
    c1, c2, c3, hidden = channels

    def conv(cin: int, cout: int, padding: int) -> list[nn.Module]:
        layers: list[nn.Module] = [nn.Conv2d(cin, cout, 5, padding=padding, bias=not batch_norm)]
        return layers + [nn.BatchNorm2d(cout)] * batch_norm + [nn.ReLU(inplace=True)]

    body = nn.Sequential(
        *conv(in_chans, c1, 2), nn.MaxPool2d(2),  # 28 -> 28 -> 14
        *conv(c1, c2, 0), nn.MaxPool2d(2),  # 14 -> 10 -> 5
        *conv(c2, c3, 0),  # 5 -> 1
        nn.Flatten(),
        nn.Linear(c3, hidden), nn.ReLU(inplace=True),
        nn.Linear(hidden, num_classes),
    )
    return LeNet5(body)


def lenet5_bn(num_classes: int = 10, in_chans: int = 1) -> nn.Module:
    """LeNet-5 as the data-free papers use it on MNIST (conv5x5 6, pad 2 -> max-pool -> conv5x5 16 -> max-pool ->
    conv5x5 120 on the 5x5 map -> fc 84 -> fc classes), with BatchNorm after each convolution; 28x28 only.
    61,848 parameters."""
    return _lenet5((6, 16, 120, 84), True, num_classes, in_chans)


def lenet5_half(num_classes: int = 10, in_chans: int = 1) -> nn.Module:
    """LeNet-5-half, the DAFL / ZSKD student: LeNet-5 with half the channels (3, 8, 60, fc 42), no BatchNorm;
    28x28 only. 15,738 parameters."""
    return _lenet5((3, 8, 60, 42), False, num_classes, in_chans)


class ResNetSmall(nn.Module):
    """ResNet-18 layout (BasicBlocks [2, 2, 2, 2], strides 1, 2, 2, 2) with a 3x3 stride-1 stem and no max-pool,
    for small images; global average pool, so any input size works."""

    def __init__(self, num_classes: int = 10, in_chans: int = 1, width: int = 8) -> None:
        super().__init__()
        self.stem = Conv2dNormActivation(in_chans, width, 3)
        stages, planes = [], width
        for index, out in enumerate((width, 2 * width, 4 * width, 8 * width)):
            stride = 1 if index == 0 else 2
            down = None
            if stride != 1 or planes != out:
                down = nn.Sequential(nn.Conv2d(planes, out, 1, stride, bias=False), nn.BatchNorm2d(out))
            stages.append(nn.Sequential(BasicBlock(planes, out, stride, down), BasicBlock(out, out)))
            planes = out
        self.stages = nn.Sequential(*stages)
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.fc = nn.Linear(planes, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(self.stages(self.stem(x))))


def resnet18_small(num_classes: int = 10, in_chans: int = 1, width: int = 8) -> nn.Module:
    """ResNet-18-style, base width 8 (8-16-32-64 channels): 176,258 parameters (701,178 at width 16, which costs
    2.6x the time an epoch); any input size."""
    return ResNetSmall(num_classes, in_chans, width)


def vgg_bn_small(num_classes: int = 10, in_chans: int = 1) -> nn.Module:
    """VGG-style: conv3x3-BN-ReLU stacks 16, 16, pool, 32, 32, pool, 64, 64, pool (28 -> 14 -> 7 -> 3), flatten,
    fc 256, fc classes; 28x28 only. 222,298 parameters."""
    layers: list[nn.Module] = []
    channels = in_chans
    for width in (16, 16, "pool", 32, 32, "pool", 64, 64, "pool"):
        if width == "pool":
            layers.append(nn.MaxPool2d(2))
            continue
        layers.append(Conv2dNormActivation(channels, width, 3))
        channels = width
    head = [nn.Flatten(), nn.Linear(channels * 3 * 3, 256), nn.ReLU(inplace=True), nn.Linear(256, num_classes)]
    return VGGSmall(nn.Sequential(*layers, *head))


class MobileNetSmall(nn.Module):
    """MobileNetV2-style: 3x3 stride-2 stem (as MobileNetV2's), inverted residual blocks (1x1 expand, 3x3
    depthwise, 1x1 linear projection, BatchNorm throughout, ReLU6), 1x1 conv to 256, global average pool, fc;
    any input size."""

    # (expand ratio, channels, blocks, first stride), as MobileNetV2's table, shortened for 28x28: 14 -> 7 -> 4
    SETTING = ((1, 16, 1, 1), (4, 24, 2, 2), (4, 32, 2, 1), (4, 64, 2, 2))

    def __init__(self, num_classes: int = 10, in_chans: int = 1, last: int = 256) -> None:
        super().__init__()
        layers: list[nn.Module] = [Conv2dNormActivation(in_chans, 16, 3, stride=2, activation_layer=nn.ReLU6)]
        channels = 16
        for expand, out, blocks, stride in self.SETTING:
            for block in range(blocks):
                layers.append(InvertedResidual(channels, out, stride if block == 0 else 1, expand))
                channels = out
        layers.append(Conv2dNormActivation(channels, last, 1, activation_layer=nn.ReLU6))
        self.features = nn.Sequential(*layers)
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.fc = nn.Linear(last, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(self.features(x)))


def mobilenet_small(num_classes: int = 10, in_chans: int = 1) -> nn.Module:
    """MobileNetV2-style (blocks of 16, 24, 32, 64 channels; 28 -> 14 -> 7 -> 4): 96,362 parameters; any size."""
    return MobileNetSmall(num_classes, in_chans)


def small_cnn(num_classes: int = 10, in_chans: int = 1) -> nn.Module:
    """A plain CNN student without BatchNorm, unlike every teacher here: conv3x3 16, max-pool, conv3x3 32,
    max-pool, adaptive average pool to 4x4 (so 28 and 32 px both work), fc 64, fc classes. 38,282 parameters."""
    return nn.Sequential(
        nn.Conv2d(in_chans, 16, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(2),
        nn.AdaptiveAvgPool2d(4), nn.Flatten(),
        nn.Linear(32 * 4 * 4, 64), nn.ReLU(inplace=True),
        nn.Linear(64, num_classes),
    )


TEACHERS = ("lenet5_bn", "resnet18_small", "vgg_bn_small", "mobilenet_small")
STUDENTS = ("lenet5_half", "small_cnn")
