"""Descriptors from latent tensors: global pooling over the valid (unpadded) area only.

``gap`` is the paper's global average pooling. ``gap+std`` (beyond the paper) appends the per-channel
standard deviation over the same area, so local artifacts that averaging hides still move the vector.
Vectors are float32; column order is fixed by :data:`~latentsweep.schema.FEATURE_SETS`
(:mod:`latentsweep.codec.layout` names the columns and their widths).
"""

from __future__ import annotations

import torch

def valid_mask(shape: torch.Size, valid: list[tuple[int, int]], device) -> torch.Tensor:
    """(B, 1, h, w) mask, 1 where a latent position lies inside its image's valid area."""
    batch, _, height, width = shape
    rows = torch.arange(height, device=device).view(1, height, 1)
    cols = torch.arange(width, device=device).view(1, 1, width)
    limits = torch.tensor(valid, device=device).view(batch, 2, 1, 1)
    return ((rows < limits[:, 0]) & (cols < limits[:, 1])).unsqueeze(1).float()


def pool(tensor: torch.Tensor, valid: list[tuple[int, int]], pooling: str = "gap") -> torch.Tensor:
    """(B, C, h, w) -> (B, C) or (B, 2C) float32, over ``valid[b] = (rows, cols)`` of each item."""
    x = tensor.float()
    mask = valid_mask(x.shape, valid, x.device)
    count = mask.sum(dim=(2, 3))
    mean = (x * mask).sum(dim=(2, 3)) / count
    if pooling == "gap":
        return mean
    centred = (x - mean[:, :, None, None]) * mask
    std = (centred.square().sum(dim=(2, 3)) / count).sqrt()
    return torch.cat([mean, std], dim=1)


def valid_latent_size(height: int, width: int, stride: int) -> tuple[int, int]:
    """Latent positions that see image content: ceil(size / stride)."""
    return -(-height // stride), -(-width // stride)
