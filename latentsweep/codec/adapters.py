"""SFMA adapters for a frozen codec: in its analysis transforms (the encoder), its synthesis transforms
(the decoder), or both.

After the SFMA of "Learned Image Compression for Deepfake Detection" (section
III): each adapter reads the features of one stage of a transform and adds two outputs to
them, ``x + SMA(x) + FMA(x)``:

- :class:`SpatialModulationAdapter` (SMA): convolutions in the spatial domain, ``conv1x1(ReLU(conv3x3(x)))``
  through a narrow bottleneck.
- :class:`FrequencyModulationAdapter` (FMA): ``irfft2(X * M)`` with ``X = rfft2(x)`` of each 8 x 8
  tile of the features (4 x 4 at H/16, :data:`TILES`: the same spectra whatever the image size) and the modulation
  map ``M = linear(ReLU(conv3x3(A)))`` made per frequency bin from the log-amplitude spectrum ``A``
  (``log|X|`` less its mean over the bins, so the map does not depend on the image's size or
  brightness): a convolution over neighbouring bins, ReLU, a linear map across channels.

The last layer of both (``SMA.out``, ``FMA.linear``) starts at zero, so a fresh adapter set leaves
the codec exactly as it was. Encoder adapters sit after the three residual attention units (``act1``,
``act2``, ``act3``) of the luma and the chroma analysis transforms (:data:`ENCODER_POINTS`); decoder
adapters after the first three upsampling stages of both synthesis transforms (:data:`DECODER_POINTS`, at
H/8, H/4 and H/2), where the decoded image's fine structure is made. They are attached with forward
hooks: the codec's own modules, state dict and checkpoint are untouched; the hyperprior and the entropy
coding never see an adapter, so decoder adapters leave the rate exactly as it was and the base decoder
decodes every bitstream an adapted encoder writes. Every image is adapted on its own (no batch
statistics), so its latents and pixels do not depend on what else is in its batch.

A set is named by its parts (:data:`PARTS`): ``decoder`` adapters (trained with the encoder frozen) change
decoded pixels only; ``encoder`` + ``decoder`` adapters change the latents as well, so their digest joins
the embedding space's (``weights.combined_digest``). None ship; ``lab/latentsweep_lab/training/adapters.py``
trains them.
"""

from __future__ import annotations

import torch
from torch import nn

from latentsweep.codec.analysis import HIDDEN
from latentsweep.codec.synthesis import HIDDEN as SYNTHESIS_HIDDEN

PARTS = ("encoder", "decoder")
ENCODER_POINTS = ("act1", "act2", "act3")   # after each residual attention unit, 128 channels
# after the activation that ends upsampling stages 1-3 of Synthesis.layers (96 channels at H/8, H/4, H/2)
DECODER_POINTS = {"up1": 4, "up2": 7, "up3": 10}
BRANCHES = ("luma", "chroma")
BOTTLENECK = 16
# FMA's FFT window per stage: the luma stages (H/2, H/4, H/8) and the first two chroma stages have sides
# that are multiples of 8 (images are padded to 64), the last chroma stage (H/16) multiples of 4; the
# decoder's stages (H/8 and finer) multiples of 8
TILES = {"luma": {"act1": 8, "act2": 8, "act3": 8}, "chroma": {"act1": 8, "act2": 8, "act3": 4}}
DECODER_TILE = 8


class SpatialModulationAdapter(nn.Module):
    """``conv1x1(ReLU(conv3x3(x)))``: a rectified local filter bank, read back into the features."""

    def __init__(self, channels: int = HIDDEN, hidden: int = BOTTLENECK):
        super().__init__()
        self.conv = nn.Conv2d(channels, hidden, 3, padding=1)
        self.out = nn.Conv2d(hidden, channels, 1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(torch.relu(self.conv(x)))


class FrequencyModulationAdapter(nn.Module):
    """``irfft2(rfft2(x) * M)`` with ``M = linear(ReLU(conv3x3(A)))`` per bin, ``A`` the relative log-amplitude."""

    def __init__(self, channels: int = HIDDEN, hidden: int = BOTTLENECK, tile: int = 8):
        super().__init__()
        self.tile = tile
        self.conv = nn.Conv2d(channels, hidden, 3, padding=1)
        self.linear = nn.Linear(hidden, channels)
        nn.init.zeros_(self.linear.weight)
        nn.init.zeros_(self.linear.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, channels, height, width = x.shape
        tile = self.tile
        spectrum, amplitude = tile_spectra(x, tile)
        hidden = torch.relu(self.conv(amplitude))                       # (tiles, h, tile, tile/2+1)
        modulation = self.linear(hidden.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        out = torch.fft.irfft2(spectrum * modulation, s=(tile, tile), norm="ortho")
        out = out.reshape(batch, height // tile, width // tile, channels, tile, tile).permute(0, 3, 1, 4, 2, 5)
        return out.reshape(batch, channels, height, width).to(x.dtype)


def tile_spectra(x: torch.Tensor, tile: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``rfft2`` of every ``tile`` x ``tile`` tile of ``x`` (B, C, H, W) -> (B * tiles, C, tile, tile/2+1),
    tiles in row-major order per image, and its log-amplitude relative to its mean over the bins (the
    tile spectrum's shape, not its level)."""
    batch, channels, height, width = x.shape
    rows, cols = height // tile, width // tile
    tiles = (x.float().reshape(batch, channels, rows, tile, cols, tile).permute(0, 2, 4, 1, 3, 5)
             .reshape(batch * rows * cols, channels, tile, tile))
    spectrum = torch.fft.rfft2(tiles, norm="ortho")
    amplitude = torch.log(spectrum.abs() + 1e-3)
    return spectrum, amplitude - amplitude.mean(dim=(2, 3), keepdim=True)


class SFMA(nn.Module):
    """One adapter: ``x + SMA(x) + FMA(x)``."""

    def __init__(self, channels: int = HIDDEN, hidden: int = BOTTLENECK, tile: int = 8):
        super().__init__()
        self.spatial = SpatialModulationAdapter(channels, hidden)
        self.frequency = FrequencyModulationAdapter(channels, hidden, tile)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.spatial(x) + self.frequency(x)


class AdapterSet(nn.Module):
    """The SFMA of a codec's ``parts``: ``encoder.luma.act1``, ..., ``decoder.chroma.up3``."""

    def __init__(self, hidden: int = BOTTLENECK, parts: tuple[str, ...] = ("encoder",)):
        super().__init__()
        unknown = set(parts) - set(PARTS)
        if unknown or not parts:
            raise ValueError(f"adapter parts must be some of {', '.join(PARTS)}, not {', '.join(parts) or 'none'}")
        self.parts = tuple(part for part in PARTS if part in parts)
        if "encoder" in self.parts:
            self.encoder = nn.ModuleDict({branch: nn.ModuleDict({
                point: SFMA(HIDDEN, hidden, TILES[branch][point]) for point in ENCODER_POINTS}) for branch in BRANCHES})
        if "decoder" in self.parts:
            self.decoder = nn.ModuleDict({branch: nn.ModuleDict({
                point: SFMA(SYNTHESIS_HIDDEN, hidden, DECODER_TILE) for point in DECODER_POINTS}) for branch in BRANCHES})
        self.enabled = True  # False: the hooks pass the features through (the base codec, for training)

    def attach(self, codec) -> list:
        """Insert the adapters into ``codec``'s transforms; returns the hook handles (``handle.remove()``
        takes an adapter out again)."""
        handles = []
        for branch in BRANCHES:
            if "encoder" in self.parts:
                analysis = getattr(codec, f"{branch}_analysis")
                for point, adapter in self.encoder[branch].items():
                    handles.append(getattr(analysis, point).register_forward_hook(self._adding(adapter)))
            if "decoder" in self.parts:
                layers = getattr(codec, f"{branch}_synthesis").layers
                for point, adapter in self.decoder[branch].items():
                    handles.append(layers[DECODER_POINTS[point]].register_forward_hook(self._adding(adapter)))
        return handles

    def _adding(self, adapter: SFMA):
        def hook(module, inputs, output):
            return adapter(output) if self.enabled else output
        return hook


def parameter_count(adapters: AdapterSet) -> int:
    return sum(p.numel() for p in adapters.parameters())
