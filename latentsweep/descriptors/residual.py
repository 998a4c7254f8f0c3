"""The luma high-pass residual both descriptors start from: what is left of an image once its smooth
content is removed, where resampling and other formation traces live."""

from __future__ import annotations

import torch
import torch.nn.functional as F

# ITU-R BT.601 luma weights.
LUMA = (0.299, 0.587, 0.114)
LAPLACIAN = ((0.0, 1.0, 0.0), (1.0, -4.0, 1.0), (0.0, 1.0, 0.0))


def luma(rgb: torch.Tensor) -> torch.Tensor:
    """uint8 (H, W, 3) -> float64 (H, W) luma in [0, 255]."""
    return rgb.double() @ torch.tensor(LUMA, dtype=torch.float64, device=rgb.device)


def laplacian_residual(plane: torch.Tensor, at_least: int = 1) -> torch.Tensor:
    """(H, W) -> (H', W') Laplacian of ``plane``, mirrored at the borders; sides shorter than
    ``at_least`` are first extended by mirroring (tiny images still give a full-size block)."""
    while min(plane.shape) < at_least:
        plane = torch.cat([plane, plane.flip(0)], 0) if plane.shape[0] < at_least else plane
        plane = torch.cat([plane, plane.flip(1)], 1) if plane.shape[1] < at_least else plane
    kernel = torch.tensor(LAPLACIAN, dtype=plane.dtype, device=plane.device)[None, None]
    padded = F.pad(plane[None, None], (1, 1, 1, 1), mode="replicate")
    return F.conv2d(padded, kernel)[0, 0]
