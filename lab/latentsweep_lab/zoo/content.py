"""Shared content: the i-th image content is the same for every generator."""

from __future__ import annotations

import numpy as np

from latentsweep_lab import photos


def texture(rng: np.random.Generator, size: int) -> np.ndarray:
    """Procedural texture: a sum of random oriented sinusoids and smooth noise, RGB in [0, 1]."""
    y, x = np.mgrid[0:size, 0:size] / size
    image = np.zeros((size, size, 3))
    for _ in range(4):
        angle, frequency, phase = rng.uniform(0, np.pi), rng.uniform(1, 12), rng.uniform(0, 2 * np.pi)
        wave = np.sin(2 * np.pi * frequency * (x * np.cos(angle) + y * np.sin(angle)) + phase)
        image += wave[:, :, None] * rng.uniform(0, 1, 3)
    coarse = rng.normal(size=(size // 16 + 1, size // 16 + 1, 3))
    image += np.kron(coarse, np.ones((16, 16, 1)))[:size, :size] * 0.5
    image -= image.min()
    return image / max(image.max(), 1e-9)


def content(index: int, size: int, seed: int, photo_cache: dict) -> np.ndarray:
    """Content ``index`` of a corpus: a random crop, scale and flip of a bundled photo (3 in 4) or a
    procedural texture (1 in 4). Float RGB in [0, 1], (size, size, 3)."""
    from PIL import Image

    rng = np.random.default_rng([seed, index])
    if index % 4 == 3:
        return texture(rng, size)
    names = photos.names("all")
    name = names[rng.integers(len(names))]
    if name not in photo_cache:
        photo_cache[name] = photos.load(name)
    image = photo_cache[name]
    side = int(rng.uniform(0.35, 1.0) * min(image.shape[:2]))
    side = max(side, size // 2)
    top = rng.integers(image.shape[0] - side + 1)
    left = rng.integers(image.shape[1] - side + 1)
    crop = Image.fromarray(image[top:top + side, left:left + side]).resize((size, size), Image.BICUBIC)
    array = np.asarray(crop, dtype=np.float64) / 255.0
    return array[:, ::-1] if rng.random() < 0.5 else array
