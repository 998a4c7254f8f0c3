"""Post-processing conditions for the robustness tables: what happens to an image between the
generator and the analyst (WILD's processed half is built this way). Benchmark data, not product logic.

Each condition maps a uint8 RGB image to the bytes of the file an analyst would receive (JPEG and
WebP are real encoder output, decoded again by ingest as any file is). Everything uses Pillow's
implementations except the round trip through this project's own codec (analysis, quantisation,
synthesis), the SFMA paper's question of what learned compression does to forensic traces.
"""

from __future__ import annotations

import io
from typing import Callable

import numpy as np

CONDITIONS = ("jpeg95", "jpeg85", "jpeg75", "jpeg50", "webp80", "resize0.5", "resize1.5", "crop50",
              "blur1", "noise2", "codec")


def _save(image: np.ndarray, fmt: str, **options) -> tuple[bytes, str]:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, fmt, **options)
    return buffer.getvalue(), {"PNG": ".png", "JPEG": ".jpg", "WEBP": ".webp"}[fmt]


def _resized(image: np.ndarray, factor: float) -> np.ndarray:
    from PIL import Image

    height, width = image.shape[:2]
    size = (max(16, round(width * factor)), max(16, round(height * factor)))
    return np.asarray(Image.fromarray(image).resize(size, Image.BICUBIC))


def _centre_crop(image: np.ndarray, share: float = 0.5) -> np.ndarray:
    height, width = image.shape[:2]
    rows, cols = max(16, round(height * share)), max(16, round(width * share))
    top, left = (height - rows) // 2, (width - cols) // 2
    return image[top:top + rows, left:left + cols]


def _blurred(image: np.ndarray, sigma: float) -> np.ndarray:
    from PIL import Image, ImageFilter

    return np.asarray(Image.fromarray(image).filter(ImageFilter.GaussianBlur(radius=sigma)))


def _noisy(image: np.ndarray, sigma: float, seed: int) -> np.ndarray:
    noise = np.random.default_rng(seed).normal(0.0, sigma, image.shape)
    return np.clip(np.round(image + noise), 0, 255).astype(np.uint8)


def apply(condition: str, image: np.ndarray, seed: int = 0,
          round_trip: Callable[[np.ndarray], np.ndarray] | None = None) -> tuple[bytes, str]:
    """The file (bytes, suffix) of ``image`` after ``condition``. ``seed`` makes the noise of one image
    reproducible; ``round_trip`` (image -> decoded image) is needed by ``codec``."""
    if condition.startswith("jpeg"):
        return _save(image, "JPEG", quality=int(condition[4:]))
    if condition.startswith("webp"):
        return _save(image, "WEBP", quality=int(condition[4:]))
    if condition.startswith("resize"):
        return _save(_resized(image, float(condition[6:])), "PNG")
    if condition == "crop50":
        return _save(_centre_crop(image), "PNG")
    if condition == "blur1":
        return _save(_blurred(image, 1.0), "PNG")
    if condition == "noise2":
        return _save(_noisy(image, 2.0, seed), "PNG")
    if condition == "codec":
        if round_trip is None:
            raise ValueError("the codec condition needs a round_trip function (Embedder.round_trip)")
        return _save(round_trip(image), "PNG")
    raise ValueError(f"unknown condition {condition!r}: choose one of {', '.join(CONDITIONS)}")
