"""The pixel-domain baseline (the paper's Figure 1a): the path the latent method skips.

Encode -> decode the latents back to pixels with the synthesis transforms -> YUV to RGB -> a
pixel-domain descriptor of the decoded image: per colour channel, the mean of the image and the log
energy of a fixed bank of high-pass filters (the usual forensic noise-residual statistics). The
descriptor is what a pixel-domain analysis would see, so the comparison with the latent path is one
of both accuracy and time per image.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from latentsweep.codec import colour
from latentsweep.codec.embed import Embedder

# 3x3 high-pass filters: first differences, diagonal, Laplacian and the period-2 checkerboard.
FILTER_BANK = torch.tensor([
    [[0, 0, 0], [0, -1, 1], [0, 0, 0]],
    [[0, 0, 0], [0, -1, 0], [0, 1, 0]],
    [[0, 0, 0], [0, -1, 0], [0, 0, 1]],
    [[0, 1, 0], [1, -4, 1], [0, 1, 0]],
    [[1, -1, 1], [-1, 1, -1], [1, -1, 1]],
], dtype=torch.float32)
DIMENSIONS = 3 * (1 + len(FILTER_BANK))


def describe(rgb: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) in [0, 1] -> (B, 18): channel means, then log mean square of each filter."""
    batch = rgb.shape[0]
    kernels = FILTER_BANK.to(rgb.device)[:, None].repeat(3, 1, 1, 1)  # 3 channels x 5 filters
    responses = F.conv2d(rgb, kernels, groups=3)
    energy = responses.square().mean(dim=(2, 3)).add(1e-8).log().view(batch, -1)
    return torch.cat([rgb.mean(dim=(2, 3)), energy], dim=1)


class PixelBaseline:
    """Reuses an :class:`Embedder`'s codec: the same encoder, plus the decoder the latent path skips."""

    def __init__(self, embedder: Embedder):
        self.embedder = embedder

    @torch.inference_mode()
    def embed(self, images: list[np.ndarray]) -> np.ndarray:
        """uint8 (H, W, 3) images of one size -> float32 (N, 18) descriptors of their decoded pixels."""
        out = []
        for start in range(0, len(images), self.embedder.settings.max_batch):
            chunk = images[start:start + self.embedder.settings.max_batch]
            tensors, sizes = self.embedder.exported(chunk)
            decoded = colour.yuv_to_rgb(self.embedder.model.reconstruct(tensors)).clamp(0, 1)
            height, width = sizes[0]
            out.append(describe(decoded[..., :height, :width].float()).cpu().numpy())
        return np.concatenate(out).astype(np.float32)
