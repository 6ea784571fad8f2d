"""A compact ResNet-style classifier: logits (B, C), any receptive field.

View-based defenses (README.md, "View defenses": DS, Mask-DS, crop voting,
PatchCleanser) run an *ordinary* classifier many times per frame, so what
matters is a low cost per view, not locality. The network is a strided stem,
a few stages of basic residual blocks (3x3 + 3x3, a strided 1x1 shortcut
where the shape changes), global average pooling and one linear layer.

The layout is data (``config``), stored in the model record like the small
BagNets' so a checkpoint rebuilds the same module:
``stem``: [kernel, stride, channels]; ``stages``: [[channels, blocks, stride], ...].
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

# 28x28 (Fashion-MNIST): a stride-2 stem and 24-48-96 channels, about 3.6 M
# multiply-adds per view, so one frame's 666 PatchCleanser views take tens of
# ms in onnxruntime on 2 CPU cores (a stride-1 stem costs about 2x).
CNN28_CONFIG: dict[str, Any] = {"stem": [3, 2, 24], "stages": [[48, 1, 2], [96, 1, 2]]}
# 224x224 (ImageNet-sized frames): a stride-4 stem, then four stages.
CNN224_CONFIG: dict[str, Any] = {
    "stem": [5, 4, 32], "stages": [[32, 1, 1], [64, 1, 2], [128, 1, 2], [256, 1, 2]],
}


def default_config(input_size: Sequence[int]) -> dict[str, Any]:
    """The layout for an input size: small images get the 28x28 one, others the 224 one."""
    return dict(CNN28_CONFIG if max(input_size) <= 64 else CNN224_CONFIG)


def _conv_bn(cin: int, cout: int, kernel: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, kernel, stride=stride, padding=kernel // 2, bias=False),
        nn.BatchNorm2d(cout),
    )


class BasicBlock(nn.Module):
    """Two 3x3 convolutions and a shortcut (ResNet-18's block)."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = _conv_bn(cin, cout, 3, stride)
        self.conv2 = _conv_bn(cout, cout, 3, 1)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = _conv_bn(cin, cout, 1, stride)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.conv1(x))
        return self.relu(self.conv2(out) + self.shortcut(x))


class CompactCNN(nn.Module):
    """Ordinary classifier: (B, in_channels, H, W) -> logits (B, num_classes)."""

    def __init__(self, in_channels: int = 1, num_classes: int = 10,
                 config: dict[str, Any] | None = None) -> None:
        super().__init__()
        config = dict(config or CNN28_CONFIG)
        kernel, stride, width = (int(v) for v in config["stem"])
        stages = [[int(v) for v in stage] for stage in config["stages"]]
        self.config = {"stem": [kernel, stride, width], "stages": stages}
        layers: list[nn.Module] = [_conv_bn(in_channels, width, kernel, stride), nn.ReLU(inplace=True)]
        channels = width
        for out_channels, blocks, first_stride in stages:
            for index in range(blocks):
                layers.append(BasicBlock(channels, out_channels, first_stride if index == 0 else 1))
                channels = out_channels
        self.body = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(self.body(x)), 1))
