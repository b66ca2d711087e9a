"""Networks for the 32x32 RGB CIFAR-10 benchmark, sized for two CPU cores. Each is a plain factory
`name(num_classes=10, in_chans=3) -> nn.Module`, usable as a user's model file:

    dfgen synthesize --teacher benchmarks/cifar_nets.py:vgg8_bn --teacher-weights W.pt --image-size 32 \\
        --mean 0.4914,0.4822,0.4465 --std 0.247,0.2435,0.2616 ...

The teacher is VGG-8-BN (six conv3x3-BN-ReLU layers and two fully connected ones, BatchNorm after every convolution
as DeepInversion needs); the KD student is the same at half the width (the literature's smaller student of the same
family); the judge of the report is small_cnn (benchmarks/small_nets.py: another family without BatchNorm, trained
on real data, never inverted). Global average pooling, so any input size works. The classifier is the last
nn.Linear (its input is the embedding dfgen's diversity losses use)."""

from __future__ import annotations

from torch import nn
from torchvision.ops.misc import Conv2dNormActivation

from benchmarks.small_nets import small_cnn


class VGG8BN(nn.Module):
    """conv3x3-BN-ReLU stacks w, w, pool, 2w, 2w, pool, 4w, 4w, pool (32 -> 16 -> 8 -> 4), global average pool,
    fc 4w, fc classes."""

    def __init__(self, num_classes: int = 10, in_chans: int = 3, width: int = 32) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels = in_chans
        for out in (width, width, 0, 2 * width, 2 * width, 0, 4 * width, 4 * width, 0):
            if out == 0:
                layers.append(nn.MaxPool2d(2))
                continue
            layers.append(Conv2dNormActivation(channels, out, 3))
            channels = out
        self.features = nn.Sequential(*layers)
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Sequential(nn.Linear(channels, channels), nn.ReLU(inplace=True))
        self.fc = nn.Linear(channels, num_classes)

    def forward(self, x):
        return self.fc(self.head(self.pool(self.features(x))))


def vgg8_bn(num_classes: int = 10, in_chans: int = 3, width: int = 32) -> nn.Module:
    """The teacher: VGG-8-BN at width 32 (32-64-128 channels): 305,258 parameters at 10 classes."""
    return VGG8BN(num_classes, in_chans, width)


def vgg8_bn_half(num_classes: int = 10, in_chans: int = 3) -> nn.Module:
    """The KD student: VGG-8-BN at half the teacher's width (16-32-64 channels): 77,114 parameters."""
    return VGG8BN(num_classes, in_chans, 16)


def judge_cnn(num_classes: int = 10, in_chans: int = 3) -> nn.Module:
    """The report's judge: small_cnn on three channels (no BatchNorm, another family than the teacher)."""
    return small_cnn(num_classes, in_chans)
