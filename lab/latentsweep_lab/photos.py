"""Natural photos that ship inside scikit-image, usable offline: codec training and the benchmark
corpus's content. Grey photos are replicated to RGB."""

from __future__ import annotations

import numpy as np

COLOUR = ("astronaut", "chelsea", "coffee", "rocket", "stereo_motorcycle", "hubble_deep_field",
          "retina", "immunohistochemistry")
GREY = ("camera", "coins", "clock", "brick", "grass", "gravel", "moon", "cell", "page")
# Held out from codec training, used to report its PSNR and rate.
HELD_OUT = ("coffee", "rocket", "clock")


def load(name: str) -> np.ndarray:
    """One photo as uint8 (H, W, 3)."""
    import skimage.data

    image = getattr(skimage.data, name)()
    if isinstance(image, tuple):  # stereo pairs
        image = image[0]
    image = np.asarray(image)
    if image.ndim == 2:
        image = np.repeat(image[:, :, None], 3, axis=2)
    return np.ascontiguousarray(image[:, :, :3].astype(np.uint8))


def names(split: str = "all") -> list[str]:
    everything = list(COLOUR + GREY)
    if split == "train":
        return [n for n in everything if n not in HELD_OUT]
    if split == "held_out":
        return list(HELD_OUT)
    return everything
