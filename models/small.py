"""BagNets for small images (e.g. 28x28 grayscale Fashion-MNIST).

A stack of unpadded spatial convolutions fixes the receptive field; 1x1
convolutions after it add depth without widening it; the classifier runs
per cell like the big BagNets. Receptive field and stride follow from the
configuration (:func:`receptive_field`), never from a constant.
"""
from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import nn

from .bagnet import local_logits


def receptive_field(kernels: Sequence[int], strides: Sequence[int]) -> tuple[int, int]:
    """(r, s) of a stack of unpadded convolutions."""
    r, s = 1, 1
    for k, st in zip(kernels, strides):
        r += (k - 1) * s
        s *= st
    return r, s


def _conv_bn_relu(cin: int, cout: int, kernel: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, kernel, stride=stride, padding=0, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


class SmallBagNet(nn.Module):
    """Local-logit classifier with a small, configurable receptive field.

    ``spatial``: (kernel, stride, channels) per unpadded convolution;
    ``pointwise``: channels of the 1x1 convolutions that follow.
    """

    def __init__(
        self,
        in_channels: int = 1,
        num_classes: int = 10,
        spatial: Sequence[Sequence[int]] = ((3, 1, 32), (3, 1, 64)),
        pointwise: Sequence[int] = (128, 128),
    ) -> None:
        super().__init__()
        self.config: dict[str, Any] = {
            "in_channels": in_channels,
            "num_classes": num_classes,
            "spatial": [list(map(int, layer)) for layer in spatial],
            "pointwise": [int(c) for c in pointwise],
        }
        layers: list[nn.Module] = []
        channels = in_channels
        for kernel, stride, width in self.config["spatial"]:
            layers.append(_conv_bn_relu(channels, width, kernel, stride))
            channels = width
        for width in self.config["pointwise"]:
            layers.append(_conv_bn_relu(channels, width, 1, 1))
            channels = width
        self.body = nn.Sequential(*layers)
        self.fc = nn.Linear(channels, num_classes)

    @property
    def receptive_field(self) -> tuple[int, int]:
        spatial = self.config["spatial"]
        return receptive_field([k for k, _, _ in spatial], [s for _, s, _ in spatial])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return local_logits(self.body(x), self.fc)
