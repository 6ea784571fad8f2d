"""The official BagNet family (Brendel & Bethge, ICLR 2019), weight-compatible.

Same modules, names and shapes as the ``bagnets`` package, so official
ImageNet weights and PatchGuard's checkpoints load key for key (321 entries).
``forward`` returns local logits (B, H, W, C): the classifier ``fc`` applied
at every feature cell instead of after average pooling.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class Variant:
    """One member of the family: ``kernel3[i]`` blocks of stage i use a 3x3
    middle convolution, which sets the receptive field (the paper's r; s = 8)."""

    kernel3: tuple[int, int, int, int]
    receptive_field: int


# The family's one table: the builders below, the model registry and the
# checkpoint reader (which tells the variants apart by kernel shape) read it.
VARIANTS = {
    "bagnet9": Variant((1, 1, 0, 0), 9),
    "bagnet17": Variant((1, 1, 1, 0), 17),
    "bagnet33": Variant((1, 1, 1, 1), 33),
}
STRIDE = 8
STAGE_BLOCKS = (3, 4, 6, 3)
STAGE_STRIDES = (2, 2, 2, 1)


def local_logits(features: torch.Tensor, fc: nn.Linear) -> torch.Tensor:
    """Apply the classifier per cell: features (B, D, H, W) -> logits (B, H, W, C).

    The one place where the channel axis moves last.
    """
    return fc(features.permute(0, 2, 3, 1))


def crop_to(residual: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Crop the residual from the end to the block output's spatial size.

    Unpadded 3x3 convolutions shrink the block output; the official code
    drops the last rows/columns of the residual. Slicing to ``like``'s size
    traces to a static Slice and leaves the batch axis dynamic.
    """
    return residual[:, :, : like.shape[2], : like.shape[3]]


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(
        self,
        inplanes: int,
        planes: int,
        stride: int = 1,
        downsample: nn.Module | None = None,
        kernel_size: int = 1,
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, kernel_size, stride=stride, padding=0, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * self.expansion, kernel_size=1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        residual = x if self.downsample is None else self.downsample(x)
        return self.relu(out + crop_to(residual, out))


class BagNet(nn.Module):
    """ResNet-50-shaped BagNet; ``kernel3`` sets the receptive field."""

    # Built by setattr in __init__ (the official names); declared for the type checker.
    layer1: nn.Sequential
    layer2: nn.Sequential
    layer3: nn.Sequential
    layer4: nn.Sequential

    def __init__(self, kernel3: tuple[int, int, int, int], num_classes: int = 1000) -> None:
        super().__init__()
        self.inplanes = 64
        self.conv1 = nn.Conv2d(3, 64, kernel_size=1, stride=1, padding=0, bias=False)
        self.conv2 = nn.Conv2d(64, 64, kernel_size=3, stride=1, padding=0, bias=False)
        self.bn1 = nn.BatchNorm2d(64, momentum=0.001)
        self.relu = nn.ReLU(inplace=True)
        stages = zip((64, 128, 256, 512), STAGE_BLOCKS, STAGE_STRIDES, kernel3)
        for index, (planes, blocks, stride, k3) in enumerate(stages, start=1):
            setattr(self, f"layer{index}", self._make_stage(planes, blocks, stride, k3))
        self.fc = nn.Linear(512 * Bottleneck.expansion, num_classes)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def _make_stage(self, planes: int, blocks: int, stride: int, kernel3: int) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes * Bottleneck.expansion:
            downsample = nn.Sequential(
                nn.Conv2d(self.inplanes, planes * Bottleneck.expansion, 1, stride=stride, bias=False),
                nn.BatchNorm2d(planes * Bottleneck.expansion),
            )
        layers = []
        for i in range(blocks):
            kernel = 3 if i < kernel3 else 1
            if i == 0:
                layers.append(Bottleneck(self.inplanes, planes, stride, downsample, kernel))
                self.inplanes = planes * Bottleneck.expansion
            else:
                layers.append(Bottleneck(self.inplanes, planes, kernel_size=kernel))
        return nn.Sequential(*layers)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv2(self.conv1(x))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return local_logits(self.features(x), self.fc)


def bagnet9(num_classes: int = 1000) -> BagNet:
    """BagNet-9: receptive field 9 px, stride 8 (official ``bagnet8``)."""
    return BagNet(VARIANTS["bagnet9"].kernel3, num_classes)


def bagnet17(num_classes: int = 1000) -> BagNet:
    """BagNet-17: receptive field 17 px, stride 8 (official ``bagnet16``)."""
    return BagNet(VARIANTS["bagnet17"].kernel3, num_classes)


def bagnet33(num_classes: int = 1000) -> BagNet:
    """BagNet-33: receptive field 33 px, stride 8 (official ``bagnet32``)."""
    return BagNet(VARIANTS["bagnet33"].kernel3, num_classes)
