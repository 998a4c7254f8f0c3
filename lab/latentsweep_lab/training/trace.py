"""A code written into ``y``, priced: what the oracle bound (``benchmarks/bench_adapter_bound.py``) offsets
and measures.

Each channel of ``y`` is offset alone by its spread (the standard deviation of GAP(y) over crops of the
training photos) and priced by the unchanged decoder's PSNR drop and rate rise against the guard
(``drop / 0.5 dB + rise / 5%``); it is also measured how much of the offset reaches GAP(y_hat) through
the quantiser. The oracle writes a class code into the cheapest channels to bound what an encoder-side
change could give ``2lat`` (docs/research.md, "Adapters"); the trace writer that wrote a detected code
there is gone, replaced by the ``.jai`` forensic field.
"""

from __future__ import annotations

from contextlib import contextmanager

import numpy as np
import torch

from latentsweep.codec.layout import CHROMA_CHANNELS, LUMA_CHANNELS

BRANCHES = ("luma", "chroma")
Y_CHANNELS = LUMA_CHANNELS + CHROMA_CHANNELS  # y of both branches, in 2lat's order (luma, then chroma)


@contextmanager
def y_offset(model, offsets: torch.Tensor):
    """Add ``offsets`` (B, Y_CHANNELS: luma then chroma) to ``y`` of both branches inside the block."""
    def adding(branch: str):
        start = 0 if branch == "luma" else LUMA_CHANNELS

        def hook(module, inputs, output):
            return output + offsets[:, start:start + output.shape[1], None, None].to(output.dtype)
        return hook

    handles = [getattr(model, f"{branch}_analysis").register_forward_hook(adding(branch)) for branch in BRANCHES]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def quality(model, rgb: torch.Tensor, exported: dict[str, torch.Tensor] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """PSNR (dB) and estimated bits per pixel of the unchanged decoder, image by image (of ``exported``,
    ``rgb``'s latents, when given)."""
    from latentsweep.codec import colour

    exported = model.export(rgb) if exported is None else exported
    decoded = colour.yuv_to_rgb(model.reconstruct(exported)).clamp(0, 1)
    psnr = -10 * torch.log10((decoded - rgb).square().mean(dim=(1, 2, 3)).clamp_min(1e-12))
    return psnr, model.bits(exported) / (rgb.shape[2] * rgb.shape[3])


@torch.no_grad()
def channel_costs(model, rgb: torch.Tensor, spread: torch.Tensor, images_a_pass: int = 64) -> np.ndarray:
    """(Y_CHANNELS, 3) when one channel of ``y`` is offset by ``spread[channel]`` on the batch ``rgb``: the
    mean PSNR drop (dB), rate rise (fraction), and the share of the offset that reaches GAP(y_hat) through
    the quantiser (``survival``); several channels a pass, each on its own copy of the batch."""
    base = model.export(rgb)
    base_psnr, base_rate = (value.mean().item() for value in quality(model, rgb, base))
    base_pooled = pooled(base)
    costs = np.zeros((Y_CHANNELS, 3))
    per_pass = max(1, images_a_pass // len(rgb))
    for first in range(0, Y_CHANNELS, per_pass):
        channels = list(range(first, min(first + per_pass, Y_CHANNELS)))
        offsets = torch.zeros(len(channels), len(rgb), Y_CHANNELS)
        for block, channel in enumerate(channels):
            offsets[block, :, channel] = spread[channel]
        copies = rgb.repeat(len(channels), 1, 1, 1)
        with y_offset(model, offsets.flatten(0, 1)):
            exported = model.export(copies)
        psnr, rate = quality(model, copies, exported)
        moved = pooled(exported).reshape(len(channels), len(rgb), Y_CHANNELS) - base_pooled
        rows = slice(first, first + len(channels))
        costs[rows, 0] = base_psnr - psnr.reshape(len(channels), -1).mean(1).numpy()
        costs[rows, 1] = rate.reshape(len(channels), -1).mean(1).numpy() / base_rate - 1
        costs[rows, 2] = (moved[torch.arange(len(channels)), :, channels].mean(1) / spread[channels]).numpy()
    return costs


def guard_cost(costs: np.ndarray) -> np.ndarray:
    """A channel's price against the guard (0.5 dB, 5% rate): ``drop / 0.5 dB + max(rise, 0) / 5%``."""
    return costs[:, 0] / 0.5 + np.maximum(costs[:, 1], 0) / 0.05


def cheapest(costs: np.ndarray, count: int) -> np.ndarray:
    """The ``count`` channels that cost least against the guard."""
    return np.argsort(guard_cost(costs), kind="stable")[:count]


def pooled(exported: dict[str, torch.Tensor], tensor: str = "y_hat") -> torch.Tensor:
    """GAP of ``tensor`` of both branches (B, Y_CHANNELS), luma then chroma: for ``y_hat`` the ``2lat``
    vector, for ``y`` where the offsets land."""
    return torch.cat([exported[f"{tensor}_luma"].mean(dim=(2, 3)), exported[f"{tensor}_chroma"].mean(dim=(2, 3))], 1)
