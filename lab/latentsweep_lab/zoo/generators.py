"""The generators: fixed random networks, seeded, in two families.

The fingerprint comes from how each generator forms its image, as in real models (Durall et al.,
"Watch your up-convolution", CVPR 2020): the spectrum of the output is what its last stages can make.
GAN-like: the content is reduced to a half-resolution "feature map" and the generator's own final
upsampling makes the full-resolution picture (transposed convolution, nearest, bilinear, pixel
shuffle: each with a fixed seeded kernel), plus the small output of a fixed random network.
Diffusion-like: the content plus noise is iteratively denoised for a few steps by a fixed random
network under a generator-specific noise schedule; each step smooths, and the last noise stays.
Every generator also has a rendering habit, as real models have a recognisable "look" (colour cues:
McCloskey and Albright, 2018): a seeded tone curve, saturation and white balance, scaled by
``habit`` (0 turns it off, leaving only the spectral traces).
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
UPSAMPLING_JITTER = 0.5  # how far a learned upsampling kernel is from a smooth one
PATTERN = 0.015      # amplitude of the periodic trace (about 4 grey levels)
GRAIN = 0.02         # amplitude of the residual noise of diffusion-like generators


@dataclass(frozen=True)
class Habit:
    """A generator's colour rendering: ``gamma`` tone curve, ``saturation`` around the luma,
    per-channel white-balance ``gains``. Drawn from the random seed; ``strength`` scales the departure from
    neutral (1, 1, (1, 1, 1))."""

    gamma: float
    saturation: float
    gains: tuple[float, float, float]

    @classmethod
    def draw(cls, rng: np.random.Generator, strength: float) -> "Habit":
        return cls(gamma=float(np.exp(strength * rng.uniform(-0.25, 0.25))),
                   saturation=float(np.exp(strength * rng.uniform(-0.3, 0.3))),
                   gains=tuple(float(g) for g in np.exp(strength * rng.uniform(-0.06, 0.06, 3))))

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        x = x.clamp(0, 1) ** self.gamma * torch.tensor(self.gains).view(1, 3, 1, 1)
        luma = (x * torch.tensor([0.2126, 0.7152, 0.0722]).view(1, 3, 1, 1)).sum(dim=1, keepdim=True)
        return luma + self.saturation * (x - luma)


class Generator:
    def __init__(self, spec: GeneratorSpec, habit: float = 1.0):
        torch.manual_seed(spec.seed)
        self.spec = spec
        self.habit = Habit.draw(np.random.default_rng(spec.seed), habit)
        self.net = (Upsampler(spec.kind) if spec.family == "gan" else Denoiser()).eval()
        # The generator's spectral signature: a fixed near-identity 3x3 filter per channel whose
        # taps sum to 1 (brightness kept), like the colour and sharpness habits of a real model.
        perturbation = torch.randn(3, 1, 3, 3)
        self.filter = FILTER_STRENGTH * (perturbation - perturbation.mean(dim=(2, 3), keepdim=True))
        self.filter[:, :, 1, 1] += 1
        # Upsampling leaves periodic traces (GAN checkerboards); iterative denoisers leave residual
        # noise of a characteristic colour and spectrum. Both are fixed per generator.
        period = {"tconv": 2, "nearest": 4, "bilinear": 8, "pixelshuffle": 2}.get(spec.kind, 1)
        self.up_kernel = self._upsampling_kernel()
        self.tile = PATTERN * torch.randn(1, 3, period, period) if spec.family == "gan" else None
        self.noise_filter = torch.randn(3, 1, 3, 3) / 3 if spec.family == "diffusion" else None

    def _upsampling_kernel(self) -> torch.Tensor | None:
        """Seeded kernels of the learned upsamplings: a transposed convolution's 4x4 kernel (uneven
        overlap gives checkerboards), or one 3x3 filter per sub-pixel position for pixel shuffle.
        Both keep brightness: the taps that reach each output pixel sum to 1."""
        if self.spec.kind == "tconv":
            bilinear = torch.tensor([0.25, 0.75, 0.75, 0.25])
            kernel = torch.outer(bilinear, bilinear) * (1 + UPSAMPLING_JITTER * torch.randn(3, 4, 4))
            for dy in range(2):
                for dx in range(2):
                    kernel[:, dy::2, dx::2] /= kernel[:, dy::2, dx::2].sum(dim=(1, 2), keepdim=True)
            return kernel[:, None]
        if self.spec.kind == "pixelshuffle":
            kernel = torch.zeros(12, 1, 3, 3)
            kernel[:, 0, 1, 1] = 1
            kernel += UPSAMPLING_JITTER * 0.25 * torch.randn(12, 1, 3, 3)
            return kernel / kernel.sum(dim=(2, 3), keepdim=True)
        return None

    def upsample(self, low: torch.Tensor) -> torch.Tensor:
        """The generator's final 2x upsampling of its (B, 3, h, w) feature map."""
        if self.spec.kind in ("nearest", "bilinear"):
            return F.interpolate(low, scale_factor=2, mode=self.spec.kind,
                                 **({"align_corners": False} if self.spec.kind == "bilinear" else {}))
        padded = F.pad(low, (1, 1, 1, 1), mode="replicate")
        if self.spec.kind == "tconv":
            full = F.conv_transpose2d(padded, self.up_kernel, stride=2, padding=1, groups=3)
            return full[..., 2:-2, 2:-2]
        return F.pixel_shuffle(F.conv2d(padded, self.up_kernel, groups=3), 2)

    @torch.no_grad()
    def render(self, content: np.ndarray, noise_seed: int) -> np.ndarray:
        """Content (H, W, 3) in [0, 1] -> uint8 image carrying this generator's fingerprint."""
        x = torch.from_numpy(np.ascontiguousarray(content)).permute(2, 0, 1)[None].float()
        if self.spec.family == "gan":
            low = F.avg_pool2d(x, 2)
            out = self.upsample(low) + RESIDUAL * self.net(F.avg_pool2d(low, 2) * 2 - 1)
        else:
            generator = torch.Generator().manual_seed(noise_seed)
            out = x.clone()
            for noise, strength in schedule(self.spec.kind):
                out = out + noise * torch.randn(out.shape, generator=generator)
                blurred = F.avg_pool2d(F.pad(out, (1, 1, 1, 1), mode="replicate"), 3, stride=1)
                out = 0.5 * (out + blurred) + strength * self.net(out * 2 - 1)
        out = F.conv2d(F.pad(self.habit.apply(out), (1, 1, 1, 1), mode="replicate"), self.filter, groups=3)
        if self.tile is not None:
            reps = (out.shape[-2] // self.tile.shape[-2] + 1, out.shape[-1] // self.tile.shape[-1] + 1)
            out = out + self.tile.repeat(1, 1, *reps)[..., :out.shape[-2], :out.shape[-1]]
        else:
            generator = torch.Generator().manual_seed(noise_seed + 1)
            noise = torch.randn(out.shape, generator=generator)
            out = out + GRAIN * F.conv2d(F.pad(noise, (1, 1, 1, 1), mode="reflect"), self.noise_filter, groups=3)
        return (out.clamp(0, 1)[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
