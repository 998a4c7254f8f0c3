"""Per-branch hyperprior, latent prediction and quantisation: y -> z_hat, psi, mu, scale, residuals.

As in the reference: z (C channels at H/64) from a hyper-encoder, rounded to int8 range -> z_hat;
a hyper-decoder gives psi (4C channels at H/32, one conditioning tensor per 2x2 phase); a scale
decoder gives the residual scales at H/16. Luma mean prediction goes phase by phase, each phase
conditioned on psi_k and the phases already decoded; chroma takes its mean from psi alone.
``residual_quant = round((y - mu) * gain)`` with a learned per-channel gain, ``residual =
residual_quant / gain``, ``y_hat = residual + mu``.

Simplification (documented): one shared context network for the four luma phases, fed psi_k, the
mean of the phases decoded so far and the phase index, instead of the reference's per-phase models.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from latentsweep.codec.layers import round_ste

Z_LIMIT = 127  # z_hat is stored as int8
# Phases of the 2x2 split of the H/16 grid, in decoding order (row, column).
PHASES = ((0, 0), (1, 1), (0, 1), (1, 0))


def _leaky_stack(channels: list[int], strides: list[int]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for index, stride in enumerate(strides):
        layers.append(nn.Conv2d(channels[index], channels[index + 1], 3, stride=stride, padding=1))
        if index < len(strides) - 1:
            layers.append(nn.LeakyReLU(0.1))
    return nn.Sequential(*layers)


class HyperEncoder(nn.Module):
    """|y| (C, H/16) -> z (C, H/64): five 3x3 convs, two of stride 2, LeakyReLU between."""

    def __init__(self, channels: int):
        super().__init__()
        self.layers = _leaky_stack([channels] * 6, [1, 1, 2, 1, 2])

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        return self.layers(y.abs())


class HyperDecoder(nn.Module):
    """z_hat (C, H/64) -> psi (4C, H/32)."""

    def __init__(self, channels: int):
        super().__init__()
        self.layers = nn.Sequential(
            nn.Conv2d(channels, channels, 3, padding=1), nn.LeakyReLU(0.1),
            nn.ConvTranspose2d(channels, 2 * channels, 4, stride=2, padding=1), nn.LeakyReLU(0.1),
            nn.Conv2d(2 * channels, 4 * channels, 3, padding=1))

    def forward(self, z_hat: torch.Tensor) -> torch.Tensor:
        return self.layers(z_hat)


class ScaleDecoder(nn.Module):
    """psi (4C, H/32) -> log of the residual scales (C, H/16)."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, psi: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pixel_shuffle(psi, 2))


class ContextModel(nn.Module):
    """mu_k from psi_k, the mean of the decoded phases, and the phase index."""

    def __init__(self, channels: int):
        super().__init__()
        self.layers = nn.Sequential(nn.Conv2d(2 * channels + 1, channels, 3, padding=1),
                                    nn.LeakyReLU(0.1), nn.Conv2d(channels, channels, 1))

    def forward(self, psi_k: torch.Tensor, decoded_mean: torch.Tensor, phase: int) -> torch.Tensor:
        index = psi_k.new_full((psi_k.shape[0], 1, *psi_k.shape[2:]), phase / (len(PHASES) - 1))
        return self.layers(torch.cat([psi_k, decoded_mean, index], dim=1))


class LatentPredictor(nn.Module):
    """Everything between y and y_hat for one branch; ``context=True`` for luma."""

    def __init__(self, channels: int, context: bool):
        super().__init__()
        self.hyper_encoder = HyperEncoder(channels)
        self.hyper_decoder = HyperDecoder(channels)
        self.scale_decoder = ScaleDecoder(channels)
        self.context_model = ContextModel(channels) if context else None
        self.log_gain = nn.Parameter(torch.zeros(channels))

    def quantise(self, y: torch.Tensor, mu: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        gain = self.log_gain.exp().view(1, -1, 1, 1)
        residual_quant = round_ste((y - mu) * gain)
        return residual_quant, residual_quant / gain

    def dequantise(self, residual_quant: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The decoder's side of :meth:`quantise`: the same ``residual_quant / gain``."""
        gain = self.log_gain.exp().view(1, -1, 1, 1)
        return residual_quant, residual_quant / gain

    def forward(self, y: torch.Tensor) -> dict[str, torch.Tensor]:
        z = self.hyper_encoder(y)
        z_hat = round_ste(z.clamp(-Z_LIMIT, Z_LIMIT))
        return {"y": y, "z": z, **self._from_z_hat(z_hat, lambda mu, rows, cols: self.quantise(y[:, :, rows, cols], mu))}

    def hyper(self, z_hat: torch.Tensor) -> dict[str, torch.Tensor]:
        """``z_hat`` -> ``{"psi": ..., "log_scale": ...}``: the hyper- and scale decoders, all that depends on
        ``z_hat`` alone (what an entropy decoder needs before the residuals)."""
        psi = self.hyper_decoder(z_hat)
        return {"psi": psi, "log_scale": self.scale_decoder(psi)}

    def decode(self, z_hat: torch.Tensor, residual_quant: torch.Tensor, psi: torch.Tensor | None = None,
               log_scale: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Entropy-decoded ``z_hat`` and ``residual_quant`` -> every tensor but ``y`` and ``z``, by the
        same operations as :meth:`forward` (the bitstream path: no analysis transform). ``psi`` and
        ``log_scale``: :meth:`hyper` of this very ``z_hat`` batch, when the caller has run it already."""
        hyper = None if psi is None else {"psi": psi, "log_scale": log_scale}
        return self._from_z_hat(z_hat, lambda mu, rows, cols: self.dequantise(residual_quant[:, :, rows, cols]),
                                hyper)

    def _from_z_hat(self, z_hat: torch.Tensor, quantised, hyper: dict | None = None) -> dict[str, torch.Tensor]:
        """``quantised(mu, rows, cols)`` gives (residual_quant, residual) of the positions ``rows, cols``;
        ``hyper``: :meth:`hyper` of ``z_hat``, computed here when None."""
        hyper = hyper or self.hyper(z_hat)
        psi, scale = hyper["psi"], hyper["log_scale"].exp()
        if self.context_model is None:
            mu = F.pixel_shuffle(psi, 2)
            residual_quant, residual = quantised(mu, slice(None), slice(None))
        else:
            mu, residual_quant, residual = self._predict_phases(psi, quantised)
        return {"z_hat": z_hat, "psi": psi, "mu": mu, "scale": scale,
                "residual_quant": residual_quant, "residual": residual, "y_hat": residual + mu}

    def _predict_phases(self, psi: torch.Tensor, quantised):
        channels = psi.shape[1] // len(PHASES)
        shape = (psi.shape[0], channels, 2 * psi.shape[2], 2 * psi.shape[3])
        mu, residual_quant, residual = (psi.new_zeros(shape) for _ in range(3))
        decoded_sum = torch.zeros_like(psi[:, :channels])
        for k, (row, col) in enumerate(PHASES):
            psi_k = psi[:, k * channels:(k + 1) * channels]
            mu_k = self.context_model(psi_k, decoded_sum / max(k, 1), k)
            quant_k, residual_k = quantised(mu_k, slice(row, None, 2), slice(col, None, 2))
            mu[:, :, row::2, col::2] = mu_k
            residual_quant[:, :, row::2, col::2] = quant_k
            residual[:, :, row::2, col::2] = residual_k
            decoded_sum = decoded_sum + residual_k + mu_k
        return mu, residual_quant, residual
