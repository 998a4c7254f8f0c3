"""The whole BOP codec: analysis + hyperprior/prediction per branch, rate terms, synthesis."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from latentsweep.codec import colour
from latentsweep.codec.analysis import EncoderBOPPrim, EncoderBOPSec
from latentsweep.codec.entropy import FactorizedLogistic, bits, gaussian_likelihood
from latentsweep.codec.hyperprior import LatentPredictor
from latentsweep.codec.layout import CHROMA_CHANNELS, LUMA_CHANNELS
from latentsweep.codec.synthesis import Synthesis
from latentsweep.schema import TENSORS


class BopCodec(nn.Module):
    """JPEG AI base operating point, as far as attribution needs it (see docs/codec.md for what differs)."""

    def __init__(self):
        super().__init__()
        self.luma_analysis = EncoderBOPPrim()
        self.chroma_analysis = EncoderBOPSec()
        self.luma_predictor = LatentPredictor(LUMA_CHANNELS, context=True)
        self.chroma_predictor = LatentPredictor(CHROMA_CHANNELS, context=False)
        self.luma_z_density = FactorizedLogistic(LUMA_CHANNELS)
        self.chroma_z_density = FactorizedLogistic(CHROMA_CHANNELS)
        self.luma_synthesis = Synthesis(LUMA_CHANNELS, 1)
        self.chroma_synthesis = Synthesis(CHROMA_CHANNELS, 2)

    def export(self, rgb: torch.Tensor) -> dict[str, torch.Tensor]:
        """RGB in [0, 1], (B, 3, H, W) with H, W multiples of 64 -> ``{"y_hat_luma": ..., ...}``."""
        luma_in, chroma_in = self.branch_inputs(rgb)
        out: dict[str, torch.Tensor] = {}
        for branch, tensors in (
            ("luma", self.luma_predictor(self.luma_analysis(luma_in))),
            ("chroma", self.chroma_predictor(self.chroma_analysis(chroma_in))),
        ):
            out.update({f"{name}_{branch}": tensors[name] for name in TENSORS})
        return out

    @staticmethod
    def branch_inputs(rgb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """RGB in [0, 1] -> the luma and chroma analysis transforms' inputs."""
        return colour.branch_inputs(colour.rgb_to_yuv(rgb) * 255.0)

    def reconstruct(self, exported: dict[str, torch.Tensor]) -> torch.Tensor:
        """y_hat of both branches -> YUV in [0, 1] (B, 3, H, W)."""
        luma = self.luma_synthesis(exported["y_hat_luma"])
        chroma = self.chroma_synthesis(exported["y_hat_chroma"])
        return torch.cat([luma, chroma], dim=1) / 255.0 + 0.5

    @torch.inference_mode()
    def pixels(self, exported: dict[str, torch.Tensor], height: int, width: int) -> np.ndarray:
        """The reconstruction of the first item's latents (exported or decoded from a bitstream) as uint8 RGB
        (height, width, 3) of its valid area: what a decoder shows a user."""
        rgb = colour.yuv_to_rgb(self.reconstruct(exported))[0, :, :height, :width]
        return (rgb.clamp(0, 1) * 255.0).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()

    def bits(self, exported: dict[str, torch.Tensor]) -> torch.Tensor:
        """Estimated bits per image of the batch (z_hat + quantised residuals, both branches)."""
        total = 0
        for branch, density in (("luma", self.luma_z_density), ("chroma", self.chroma_z_density)):
            total = total + bits(density.likelihood(exported[f"z_hat_{branch}"]))
            total = total + bits(gaussian_likelihood(exported[f"residual_quant_{branch}"],
                                                     exported[f"scale_{branch}"]))
        return total
