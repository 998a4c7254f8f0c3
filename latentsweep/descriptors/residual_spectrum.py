"""The classical baseline: the radially averaged power spectrum of the luma high-pass residual, in log
scale (the descriptor of classical resampling and GAN-spectrum forensics). An index z-scores it and
ranks by cosine, so a ``residual_spectrum`` index is the baseline exactly as the tables report it."""

from __future__ import annotations

import torch

from latentsweep.descriptors.residual import laplacian_residual, luma

BINS = 32


def describe(rgb: torch.Tensor) -> torch.Tensor:
    """uint8 (H, W, 3) -> (BINS,) log mean power per radial frequency band, 0 to Nyquist."""
    residual = laplacian_residual(luma(rgb), at_least=2)
    power = torch.fft.fft2(residual).abs().square()
    rows, cols = residual.shape
    fy = torch.fft.fftfreq(rows, device=rgb.device, dtype=torch.float64)[:, None]
    fx = torch.fft.fftfreq(cols, device=rgb.device, dtype=torch.float64)[None, :]
    band = (torch.hypot(fy, fx) / 0.5 * BINS).long().clamp(max=BINS - 1).flatten()
    total = torch.zeros(BINS, dtype=torch.float64, device=rgb.device).index_add_(0, band, power.flatten())
    count = torch.bincount(band, minlength=BINS).clamp(min=1)
    return torch.log(total / count + 1e-8)
