"""The generators: fixed random networks, seeded, in two families.

GAN-like: the content is reduced to a 1/4-resolution "latent", and a fixed random network upsamples
it back with a generator-specific final upsampling (transposed convolution, nearest + conv, bilinear
+ conv, pixel shuffle); the network's output is added as a small residual to a smooth upsampling, so
the picture is the content and the residual is the fingerprint.
Diffusion-like: the content plus noise is iteratively denoised for a few steps by a fixed random
network under a generator-specific noise schedule.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class GeneratorSpec:
    name: str
    family: str  # "gan" or "diffusion"
    kind: str    # upsampling kind (gan) or schedule kind (diffusion)
    seed: int


ZOO = (
    GeneratorSpec("gan-tconv", "gan", "tconv", 11),
    GeneratorSpec("gan-nearest", "gan", "nearest", 12),
    GeneratorSpec("gan-bilinear", "gan", "bilinear", 13),
    GeneratorSpec("gan-pixelshuffle", "gan", "pixelshuffle", 14),
    GeneratorSpec("dm-linear", "diffusion", "linear", 21),
    GeneratorSpec("dm-cosine", "diffusion", "cosine", 22),
    GeneratorSpec("dm-fewstep", "diffusion", "fewstep", 23),
)
RESIDUAL = 0.06


class Upsampler(nn.Module):
    def __init__(self, kind: str, channels: int = 32):
        super().__init__()
        self.kind = kind
        self.inp = nn.Conv2d(3, channels, 3, padding=1)
        self.ups = nn.ModuleList()
        for _ in range(2):
            if kind == "tconv":
                self.ups.append(nn.ConvTranspose2d(channels, channels, 4, stride=2, padding=1))
            elif kind == "pixelshuffle":
                self.ups.append(nn.Conv2d(channels, channels * 4, 3, padding=1))
            else:
                self.ups.append(nn.Conv2d(channels, channels, 3, padding=1))
        self.out = nn.Conv2d(channels, 3, 3, padding=1)

    def forward(self, low: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.inp(low))
        for layer in self.ups:
            if self.kind == "tconv":
                x = layer(x)
            elif self.kind == "pixelshuffle":
                x = F.pixel_shuffle(layer(x), 2)
            else:
                x = layer(F.interpolate(x, scale_factor=2, mode=self.kind,
                                        **({"align_corners": False} if self.kind == "bilinear" else {})))
            x = torch.relu(x)
        return torch.tanh(self.out(x))


class Denoiser(nn.Module):
    def __init__(self, channels: int = 24):
        super().__init__()
        self.layers = nn.Sequential(nn.Conv2d(3, channels, 3, padding=1), nn.ReLU(),
                                    nn.Conv2d(channels, channels, 3, padding=1), nn.ReLU(),
                                    nn.Conv2d(channels, 3, 3, padding=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.layers(x))


def schedule(kind: str) -> list[tuple[float, float]]:
    """(noise level, fingerprint strength) per denoising step, noisiest first."""
    if kind == "linear":
        return [(s, 0.03) for s in np.linspace(0.06, 0.0, 6)]
    if kind == "cosine":
        return [(0.06 * np.cos(np.pi / 2 * t) ** 2, 0.025) for t in np.linspace(0.0, 1.0, 8)]
    return [(s, 0.04) for s in (0.05, 0.02, 0.0)]


FILTER_STRENGTH = 0.25
PATTERN = 0.015      # amplitude of the periodic trace (about 4 grey levels)
GRAIN = 0.02         # amplitude of the residual noise of diffusion-like generators


class Generator:
    def __init__(self, spec: GeneratorSpec):
        torch.manual_seed(spec.seed)
        self.spec = spec
        self.net = (Upsampler(spec.kind) if spec.family == "gan" else Denoiser()).eval()
        # The generator's spectral signature: a fixed near-identity 3x3 filter per channel whose
        # taps sum to 1 (brightness kept), like the colour and sharpness habits of a real model.
        perturbation = torch.randn(3, 1, 3, 3)
        self.filter = FILTER_STRENGTH * (perturbation - perturbation.mean(dim=(2, 3), keepdim=True))
        self.filter[:, :, 1, 1] += 1
        # Upsampling leaves periodic traces (GAN checkerboards); iterative denoisers leave residual
        # noise of a characteristic colour and spectrum. Both are fixed per generator.
        period = {"tconv": 2, "nearest": 4, "bilinear": 8, "pixelshuffle": 2}.get(spec.kind, 1)
        self.tile = PATTERN * torch.randn(1, 3, period, period) if spec.family == "gan" else None
        self.noise_filter = torch.randn(3, 1, 3, 3) / 3 if spec.family == "diffusion" else None

    @torch.no_grad()
    def render(self, content: np.ndarray, noise_seed: int) -> np.ndarray:
        """Content (H, W, 3) in [0, 1] -> uint8 image carrying this generator's fingerprint."""
        x = torch.from_numpy(np.ascontiguousarray(content)).permute(2, 0, 1)[None].float()
        if self.spec.family == "gan":
            low = F.avg_pool2d(x, 4)
            smooth = F.interpolate(low, scale_factor=4, mode="bicubic", align_corners=False)
            detail = x - smooth
            out = smooth + 0.5 * detail + RESIDUAL * self.net(low * 2 - 1)
        else:
            generator = torch.Generator().manual_seed(noise_seed)
            out = x.clone()
            for noise, strength in schedule(self.spec.kind):
                out = out + noise * torch.randn(out.shape, generator=generator)
                blurred = F.avg_pool2d(F.pad(out, (1, 1, 1, 1), mode="replicate"), 3, stride=1)
                out = 0.5 * (out + blurred) + strength * self.net(out * 2 - 1)
        out = F.conv2d(F.pad(out, (1, 1, 1, 1), mode="replicate"), self.filter, groups=3)
        if self.tile is not None:
            reps = (out.shape[-2] // self.tile.shape[-2] + 1, out.shape[-1] // self.tile.shape[-1] + 1)
            out = out + self.tile.repeat(1, 1, *reps)[..., :out.shape[-2], :out.shape[-1]]
        else:
            generator = torch.Generator().manual_seed(noise_seed + 1)
            noise = torch.randn(out.shape, generator=generator)
            out = out + GRAIN * F.conv2d(F.pad(noise, (1, 1, 1, 1), mode="reflect"), self.noise_filter, groups=3)
        return (out.clamp(0, 1)[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
