"""Building blocks of the JPEG AI BOP transforms, with the reference's attribute names."""

from __future__ import annotations

import torch
from torch import nn


def conv3x3(in_channels: int, out_channels: int, stride: int = 2) -> nn.Conv2d:
    """The reference's ``conv3x3``: 3x3, stride 2 by default, padding 1, with bias."""
    return nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=True)


def conv1x1(in_channels: int, out_channels: int) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, 1, bias=False)


def normalize(x: torch.Tensor) -> torch.Tensor:
    """Each analysis transform's first step: [0, 255] -> about [-1, 1]."""
    return (x - 127.5) / 128.0


class ResAU(nn.Module):
    """Residual attention unit: ``x * (1 + conv2(conv(relu6(x))))``.

    ``conv`` is a grouped 3x3 (stride 1, no bias), ``conv2`` a 1x1 (no bias), as in the reference.
    """

    def __init__(self, channels: int = 128, groups: int = 4):
        super().__init__()
        self.act = nn.ReLU6()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1, groups=groups, bias=False)
        self.conv2 = conv1x1(channels, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * (1 + self.conv2(self.conv(self.act(x))))


def round_ste(x: torch.Tensor) -> torch.Tensor:
    """Round in the forward pass, identity gradient in the backward pass (training only matters)."""
    return x + (torch.round(x) - x).detach()
