"""Pixel-domain descriptors computed in the ingest pass, beside the pooled latents.

The images are decoded for the codec anyway, so describing their pixels costs no extra read. Three
columns: ``fingerprint`` (this project's hand-made forensic descriptor, :mod:`.fingerprint`),
``self_description`` (learned prediction-error filters and a per-image self-description of their
residuals, :mod:`.self_description`; its weights are verified before use) and ``residual_spectrum``
(the classical baseline every table is compared with, :mod:`.residual_spectrum`).
Each is computed from one image alone, so a vector never depends on its batch. Rows read from ``.pt``
latents have no pixels: their descriptor cells are null, and an index over a descriptor refuses them.
Rows read from ``.jai`` bitstreams take the original pixels' descriptors from the file's forensic field
(``bitstream/forensic.py``), 8 bits a value; a file without one leaves them null.
"""

from __future__ import annotations

import numpy as np
import torch

from latentsweep.descriptors import fingerprint, residual_spectrum, self_description
from latentsweep.schema import DESCRIPTORS

# One function per column of schema.DESCRIPTORS (the contract: dimension and version per column).
_FUNCTIONS = {"fingerprint": fingerprint.describe, "residual_spectrum": residual_spectrum.describe,
              "self_description": self_description.describe}


def columns() -> dict[str, int]:
    """``{column: dimension}`` of the descriptors, in their fixed order."""
    return {name: dimension for name, (dimension, _) in DESCRIPTORS.items()}


@torch.inference_mode()
def describe(image: np.ndarray, device: torch.device | str = "cpu") -> dict[str, np.ndarray]:
    """uint8 (H, W, 3) -> ``{column: float32 (dim,)}``, computed on ``device``."""
    rgb = torch.from_numpy(np.require(image, np.uint8, ["C", "W"])).to(device)
    return {name: function(rgb).float().cpu().numpy() for name, function in _FUNCTIONS.items()}
