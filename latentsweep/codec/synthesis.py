"""Synthesis transforms g_s: y_hat -> pixels. Used to train the codec and by the pixel-domain
baseline (the path the paper's method skips); attribution itself never runs them."""

from __future__ import annotations

import torch
from torch import nn

HIDDEN = 96


class Synthesis(nn.Module):
    """(C, H/16) -> (out_channels, H): four x2 upsamplings by sub-pixel convolution."""

    def __init__(self, in_channels: int, out_channels: int, hidden: int = HIDDEN):
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(in_channels, hidden, 3, padding=1), nn.LeakyReLU(0.1)]
        for stage in range(4):
            last = stage == 3
            width = out_channels if last else hidden
            layers += [nn.Conv2d(hidden, width * 4, 3, padding=1), nn.PixelShuffle(2)]
            if not last:
                layers.append(nn.LeakyReLU(0.1))
        self.layers = nn.Sequential(*layers)

    def forward(self, y_hat: torch.Tensor) -> torch.Tensor:
        return self.layers(y_hat)
