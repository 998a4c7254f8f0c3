"""BT.709 colour conversion and the packing of the two branch inputs (facts: docs/jpegai-bop.md)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

# Luma and chroma need H, W multiples of 16; the hyperprior (z at H/64) and the 2x2 phase split of
# the luma latent need 64. Inputs are padded to this and pooling only looks at the valid area.
ALIGNMENT = 64


def rgb_to_yuv(rgb: torch.Tensor) -> torch.Tensor:
    """RGB in [0, 1] (B, 3, H, W) -> YUV in [0, 1], BT.709 as in the JPEG AI reference."""
    r, g, b = rgb[:, 0:1], rgb[:, 1:2], rgb[:, 2:3]
    y = 0.2126 * r + 0.7152 * g + 0.0722 * b
    u = (b - y) / 1.8556 + 0.5
    v = (r - y) / 1.5748 + 0.5
    return torch.cat([y, u, v], dim=1)


def yuv_to_rgb(yuv: torch.Tensor) -> torch.Tensor:
    """The exact inverse of :func:`rgb_to_yuv` (used by the synthesis / pixel-domain path)."""
    y, u, v = yuv[:, 0:1], yuv[:, 1:2], yuv[:, 2:3]
    r = y + (v - 0.5) * 1.5748
    b = y + (u - 0.5) * 1.8556
    g = (y - 0.2126 * r - 0.0722 * b) / 0.7152
    return torch.cat([r, g, b], dim=1)


def branch_inputs(yuv255: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """YUV in [0, 255] (B, 3, H, W) -> luma input (B, 1, H, W), chroma input (B, 12, H/2, W/2).

    Chroma = 4 channels of ``pixel_unshuffle(Y, 2)`` (luma support) + 8 of ``pixel_unshuffle(UV, 2)``
    (4:4:4 input).
    """
    luma = yuv255[:, 0:1]
    chroma = torch.cat([F.pixel_unshuffle(luma, 2), F.pixel_unshuffle(yuv255[:, 1:3], 2)], dim=1)
    return luma, chroma


def padded_size(height: int, width: int, alignment: int = ALIGNMENT) -> tuple[int, int]:
    return -(-height // alignment) * alignment, -(-width // alignment) * alignment


def pad(rgb: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Replicate-pad (B, C, h, w) on the bottom/right to (height, width)."""
    bottom, right = height - rgb.shape[-2], width - rgb.shape[-1]
    if bottom == 0 and right == 0:
        return rgb
    return F.pad(rgb, (0, right, 0, bottom), mode="replicate")
