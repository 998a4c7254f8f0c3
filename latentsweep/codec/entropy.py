"""Rate terms for training: a factorised density for z_hat and a Gaussian for the residual.

Simplification (documented in docs/codec.md): the factorised density is a per-channel discretised
logistic with a learned scale, not Balle's non-parametric density; the rate is estimated from the
likelihoods (no arithmetic coder), which is all that training and the reported bpp need.
"""

from __future__ import annotations

import math

import torch
from torch import nn

LIKELIHOOD_FLOOR = 1e-9
SCALE_FLOOR = 0.11


class FactorizedLogistic(nn.Module):
    """p(z_hat) per channel: a zero-mean logistic of learned scale, integrated over each bin."""

    def __init__(self, channels: int):
        super().__init__()
        self.log_scale = nn.Parameter(torch.zeros(channels))

    def likelihood(self, z_hat: torch.Tensor) -> torch.Tensor:
        scale = self.log_scale.exp().view(1, -1, 1, 1)
        upper = torch.sigmoid((z_hat + 0.5) / scale)
        lower = torch.sigmoid((z_hat - 0.5) / scale)
        return (upper - lower).clamp_min(LIKELIHOOD_FLOOR)


def gaussian_likelihood(values: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """P(v) for integer ``values`` under N(0, scale) integrated over [v - 0.5, v + 0.5]."""
    scale = scale.clamp_min(SCALE_FLOOR)
    half = 1.0 / math.sqrt(2.0)
    upper = 0.5 * torch.erfc(-(values + 0.5) / scale * half)
    lower = 0.5 * torch.erfc(-(values - 0.5) / scale * half)
    return (upper - lower).clamp_min(LIKELIHOOD_FLOOR)


def bits(likelihood: torch.Tensor) -> torch.Tensor:
    """Total bits per item of the batch."""
    return -torch.log2(likelihood).flatten(1).sum(dim=1)
