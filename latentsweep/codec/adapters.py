"""Adapters for the frozen analysis transforms: SFMA and a trace writer.

After the SFMA of "Learned Image Compression for Deepfake Detection" (section
III): each adapter reads the features of one stage of an analysis transform and adds two outputs to
them, ``x + SMA(x) + FMA(x)``:

- :class:`SpatialModulationAdapter` (SMA): convolutions in the spatial domain, ``conv1x1(ReLU(conv3x3(x)))``
  through a narrow bottleneck.
- :class:`FrequencyModulationAdapter` (FMA): ``irfft2(X * M)`` with ``X = rfft2(x)`` of each 8 x 8
  tile of the features (4 x 4 at H/16, :data:`TILES`: the same spectra whatever the image size) and the modulation
  map ``M = linear(ReLU(conv3x3(A)))`` made per frequency bin from the log-amplitude spectrum ``A``
  (``log|X|`` less its mean over the bins, so the map does not depend on the image's size or
  brightness): a convolution over neighbouring bins, ReLU, a linear map across channels.

The last layer of both (``SMA.out``, ``FMA.linear``) starts at zero, so a fresh adapter set leaves
the codec exactly as it was. Adapters sit after the three residual attention units (``act1``,
``act2``, ``act3``) of the luma and the chroma analysis transforms (:data:`POINTS`), attached with
forward hooks: the codec's own modules, state dict and checkpoint are untouched, and the decoder
(hyperprior, prediction, synthesis) never sees an adapter. Every image is adapted on its own (no
batch statistics), so its latents do not depend on what else is in its batch.

Trained under the codec's guard, the SFMA learned nothing measurable for attribution (docs/research.md,
"Adapters"). The :class:`TraceWriter` is ours: it detects the formation from the spectra FMA reads and
writes it into cheap channels of ``y`` as an offset, which the global average of ``2lat`` keeps.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
from torch import nn

from latentsweep.codec import pooling
from latentsweep.codec.analysis import HIDDEN
from latentsweep.codec.layout import CHROMA_CHANNELS, LUMA_CHANNELS, TENSOR_STRIDES

POINTS = ("act1", "act2", "act3")   # after each residual attention unit, 128 channels
BRANCHES = ("luma", "chroma")
BOTTLENECK = 16
# FMA's FFT window per stage: the luma stages (H/2, H/4, H/8) and the first two chroma stages have sides
# that are multiples of 8 (images are padded to 64), the last chroma stage (H/16) multiples of 4
TILES = {"luma": {"act1": 8, "act2": 8, "act3": 8}, "chroma": {"act1": 8, "act2": 8, "act3": 4}}
# the trace writer's input: luma act1's tile spectra averaged over the image's tiles, one per channel and bin
TRACE_FEATURES = HIDDEN * 8 * (8 // 2 + 1)
Y_CHANNELS = LUMA_CHANNELS + CHROMA_CHANNELS  # y of both branches, in 2lat's order (luma, then chroma)


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


class TraceWriter(nn.Module):
    """Formation-trace writer (ours, beyond the paper's SFMA): detects how the image was formed from the
    frozen luma encoder's first-stage features as FMA reads them (relative log-amplitude of 8 x 8 tile
    spectra), averaged over the image's tiles, and writes the detection into ``y`` as a constant offset
    ``amplitude * tanh(detector(spectra))`` on ``channels``: channels of ``y`` chosen in training for
    costing the frozen decoder little and carrying an offset through the quantiser
    (``train_trace.py``). A constant offset survives the global average of ``2lat``. The same offset also
    pulls each written channel's GAP(y) (over the image's valid area) the share ``pull`` of the way to
    ``centre``, its mean over the training photos: the content's own variation in those channels is noise
    around the code in ``2lat``, and pulling it in is cheaper for the decoder than a larger amplitude.

    The detector is linear on the spectra, z-scored by ``mean``/``std``; ``amplitude`` starts at zero, so a
    fresh writer leaves the codec as it was. ``read`` (a hook after luma ``act1``) detects, ``write``
    (hooks after each analysis transform) adds the offset: the luma transform runs before the chroma one.
    """

    def __init__(self, code: int):
        super().__init__()
        self.detector = nn.Linear(TRACE_FEATURES, code)
        self.register_buffer("mean", torch.zeros(TRACE_FEATURES))
        self.register_buffer("std", torch.ones(TRACE_FEATURES))
        self.register_buffer("channels", torch.arange(code))
        self.register_buffer("amplitude", torch.zeros(code))
        self.register_buffer("centre", torch.zeros(code))
        self.register_buffer("pull", torch.zeros(()))
        self.offsets: torch.Tensor | None = None  # (B, Y_CHANNELS) of the image batch being encoded

    @staticmethod
    def spectra(features: torch.Tensor, sizes: list[tuple[int, int]] | None = None) -> torch.Tensor:
        """Luma ``act1`` features (B, 128, H/2, W/2) -> (B, TRACE_FEATURES): tile spectra averaged over the
        tiles inside each image's valid area (``sizes``: its height and width in pixels before padding;
        None: every tile). A replicate-padded border is flat, and its spectra are not the image's."""
        _, amplitude = tile_spectra(features, 8)
        batch, _, height, width = features.shape
        amplitude = amplitude.reshape(batch, height // 8, width // 8, -1)  # a tile covers 16 x 16 pixels
        if sizes is None:
            return amplitude.mean(dim=(1, 2))
        inside = torch.zeros(batch, height // 8, width // 8, 1, device=features.device)
        for index, (rows, cols) in enumerate(sizes):
            inside[index, :max(1, rows // 16), :max(1, cols // 16)] = 1
        return (amplitude * inside).sum(dim=(1, 2)) / inside.sum(dim=(1, 2))

    def code(self, spectra: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.detector((spectra - self.mean) / self.std))

    def read(self, features: torch.Tensor, sizes: list[tuple[int, int]] | None = None) -> None:
        values = self.amplitude * self.code(self.spectra(features, sizes))
        self.offsets = values.new_zeros(len(values), Y_CHANNELS).index_copy(1, self.channels, values)

    def write(self, y: torch.Tensor, branch: str, sizes: list[tuple[int, int]] | None = None) -> torch.Tensor:
        offsets = self.offsets
        if self.pull > 0:
            start = first_channel(branch)
            ours = (self.channels >= start) & (self.channels < start + y.shape[1])
            valid = ([pooling.valid_latent_size(rows, cols, TENSOR_STRIDES["y"]) for rows, cols in sizes] if sizes
                     else [tuple(y.shape[2:])] * len(y))
            mean = pooling.pool(y, valid)[:, self.channels[ours] - start]
            offsets = offsets.index_add(1, self.channels[ours], -self.pull * (mean - self.centre[ours]))
        return add_to_y(y, offsets, branch)


def first_channel(branch: str) -> int:
    """Where ``branch``'s channels of ``y`` start in 2lat's order (luma, then chroma)."""
    return 0 if branch == "luma" else LUMA_CHANNELS


def add_to_y(y: torch.Tensor, offsets: torch.Tensor, branch: str) -> torch.Tensor:
    """``y`` of one branch (B, C, h, w) plus that branch's slice of ``offsets`` (B, Y_CHANNELS: luma, then
    chroma), constant over the image."""
    start = first_channel(branch)
    return y + offsets[:, start:start + y.shape[1], None, None].to(y.dtype)


class AdapterSet(nn.Module):
    """The adapters of both analysis transforms: the SFMA ``luma.act1``, ..., ``chroma.act3`` (``sfma``)
    and the :class:`TraceWriter` (``trace_code`` channels; 0: none)."""

    def __init__(self, hidden: int = BOTTLENECK, sfma: bool = True, trace_code: int = 0):
        super().__init__()
        if sfma:
            self.luma = nn.ModuleDict({point: SFMA(HIDDEN, hidden, TILES["luma"][point]) for point in POINTS})
            self.chroma = nn.ModuleDict({point: SFMA(HIDDEN, hidden, TILES["chroma"][point]) for point in POINTS})
        self.sfma = sfma
        self.trace = TraceWriter(trace_code) if trace_code else None
        self.enabled = True  # False: the hooks pass the features through (the base codec, for training)
        self.sizes: list[tuple[int, int]] | None = None  # the batch's sizes before padding (None: unpadded)

    @contextmanager
    def padded_from(self, sizes: list[tuple[int, int]]):
        """Forward passes inside the block are of a batch padded from ``sizes`` ((H, W) per image): the
        trace writer reads and pulls each image's valid area only. The hooks take no arguments, so the
        sizes are held for the block alone and cleared after it, even when a pass raises."""
        self.sizes = sizes
        try:
            yield
        finally:
            self.sizes = None

    def attach(self, codec) -> list:
        """Insert the adapters into ``codec``'s analysis transforms; returns the hook handles
        (``handle.remove()`` takes an adapter out again). The trace writer reads luma ``act1`` before
        the SFMA there changes it."""
        handles = []
        if self.trace is not None:
            handles.append(codec.luma_analysis.act1.register_forward_hook(self._reading))
            handles += [getattr(codec, f"{branch}_analysis").register_forward_hook(self._writing(branch))
                        for branch in BRANCHES]
        for branch in BRANCHES if self.sfma else ():
            analysis = getattr(codec, f"{branch}_analysis")
            for point, adapter in getattr(self, branch).items():
                handles.append(getattr(analysis, point).register_forward_hook(self._adding(adapter)))
        return handles

    def _reading(self, module, inputs, output):
        if self.enabled:
            self.trace.read(output, self.sizes)

    def _writing(self, branch: str):
        def hook(module, inputs, output):
            return self.trace.write(output, branch, self.sizes) if self.enabled else output
        return hook

    def _adding(self, adapter: SFMA):
        def hook(module, inputs, output):
            return adapter(output) if self.enabled else output
        return hook


def parameter_count(adapters: AdapterSet) -> int:
    return sum(p.numel() for p in adapters.parameters())
