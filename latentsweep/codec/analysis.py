"""The BOP analysis transforms g_a for luma and chroma, layer for layer as the reference names them.

Keeping ``conv1``, ``act1.conv``, ``act1.conv2``, ... lets a user who holds the reference weights load
them here (:func:`latentsweep.codec.weights.load_reference`).
"""

from __future__ import annotations

import torch
from torch import nn

from latentsweep.codec.layers import ResAU, conv1x1, conv3x3, normalize
from latentsweep.codec.layout import CHROMA_CHANNELS, LUMA_CHANNELS

HIDDEN = 128


class EncoderBOPPrim(nn.Module):
    """Luma analysis: Y (B, 1, H, W) in [0, 255] -> y_luma (B, 160, H/16, W/16)."""

    def __init__(self, hidden: int = HIDDEN, out_channels: int = LUMA_CHANNELS):
        super().__init__()
        self.conv1 = conv3x3(1, hidden)
        self.act1 = ResAU(hidden)
        self.conv2 = conv3x3(hidden, hidden)
        self.act2 = ResAU(hidden)
        self.conv3 = conv3x3(hidden, hidden)
        self.act3 = ResAU(hidden)
        self.conv4 = conv3x3(hidden, out_channels)
        self.conv5 = conv1x1(out_channels, out_channels)

    def forward(self, luma: torch.Tensor) -> torch.Tensor:
        x = self.act1(self.conv1(normalize(luma)))
        x = self.act2(self.conv2(x))
        x = self.act3(self.conv3(x))
        return self.conv5(self.conv4(x))


class EncoderBOPSec(nn.Module):
    """Chroma analysis: 12 channels (B, 12, H/2, W/2) in [0, 255] -> y_chroma (B, 96, H/16, W/16)."""

    def __init__(self, hidden: int = HIDDEN, out_channels: int = CHROMA_CHANNELS):
        super().__init__()
        self.conv1 = conv3x3(12, hidden)
        self.act1 = ResAU(hidden)
        self.conv2 = conv3x3(hidden, hidden)
        self.act2 = ResAU(hidden)
        self.conv3 = conv3x3(hidden, hidden)
        self.act3 = ResAU(hidden)
        self.conv5 = conv1x1(hidden, out_channels)

    def forward(self, chroma: torch.Tensor) -> torch.Tensor:
        x = self.act1(self.conv1(normalize(chroma)))
        x = self.act2(self.conv2(x))
        x = self.act3(self.conv3(x))
        return self.conv5(x)
