"""Synthetic image-formation recipes for training the adapters (``training/adapters.py``): the families
of traces a generator's last stages leave, implemented here from scratch with random parameters.

Every recipe is drawn from a continuous family, so the adapters learn formation traces in general,
not a list of classes:

- ``resample``: separable resampling by a random factor (x0.6 to x3.5) with a random kernel (a
  windowed sinc of random cut-off and lobes, a cubic of random ``a``, a B-spline of random order, a
  Gaussian of random width) and a random sampling-grid offset, as a resampling matrix built here.
- ``transposed``: zero insertion x2 or x3 and a random 2-D kernel per colour channel (a transposed
  convolution: the checkerboard traces of up-convolutions).
- ``blur``: a random Gaussian, box or anisotropic blur at the native resolution.
- ``noise``: Gaussian noise of a random level, white or low-passed.
- ``none``: the crop as it is (a camera-like class).

A recipe may chain a second, non-resampling step. The output is rounded to 8 bits. Deliberately
disjoint from every evaluation corpus: no Pillow, torch, scikit-image or scipy resizer (the
real-software corpus, ``zoo/software.py``) and none of the zoo's generator networks
(``zoo/generators.py``); numpy matrix products and 2-D correlations only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

KINDS = ("resample", "resample", "resample", "transposed", "blur", "noise", "none")


@dataclass
class Recipe:
    kind: str
    params: dict = field(default_factory=dict)
    then: "Recipe | None" = None

    def input_side(self, side: int) -> int:
        if self.kind == "resample":
            return max(8, int(round(side / self.params["factor"])))
        if self.kind == "transposed":
            return -(-side // self.params["factor"])
        return side


def _kernel(kind: str, params: dict):
    if kind == "sinc":
        lobes, cut = params["lobes"], params["cut"]
        return (lambda t: np.sinc(t * cut) * cut * np.sinc(t / lobes) * (np.abs(t) < lobes)), lobes
    if kind == "cubic":
        a = params["a"]

        def cubic(t):
            t = np.abs(t)
            return np.where(t <= 1, (a + 2) * t**3 - (a + 3) * t**2 + 1,
                            np.where(t < 2, a * t**3 - 5 * a * t**2 + 8 * a * t - 4 * a, 0.0))
        return cubic, 2
    if kind == "bspline":
        order = params["order"]

        def bspline(t):  # the centred B-spline of ``order`` (0: box) from its truncated-power form
            t = np.asarray(t, np.float64)
            n = order + 1
            total = np.zeros_like(t)
            for k in range(n + 1):
                total += (-1) ** k * math.comb(n, k) * np.maximum(t + n / 2 - k, 0) ** order
            return total / math.factorial(order) if order else np.where(np.abs(t) <= 0.5, 1.0, 0.0)
        return bspline, (order + 1) / 2
    sigma = params["sigma"]
    return (lambda t: np.exp(-0.5 * (t / sigma) ** 2)), 3 * sigma


def resampling_matrix(size_in: int, size_out: int, kernel: str, params: dict, offset: float) -> np.ndarray:
    """(size_out, size_in): row i samples the input at ``(i + 0.5) * size_in / size_out - 0.5 + offset``."""
    function, support = _kernel(kernel, params)
    ratio = size_in / size_out
    stretch = max(1.0, ratio)  # widen the kernel when shrinking (anti-aliasing)
    centres = (np.arange(size_out) + 0.5) * ratio - 0.5 + offset
    taps = np.arange(size_in)
    distance = (taps[None, :] - centres[:, None]) / stretch
    weights = np.where(np.abs(distance) <= support, function(distance), 0.0)
    # rows are normalised to sum to 1: near the borders the taps that fall outside are dropped
    sums = weights.sum(axis=1, keepdims=True)
    sums[np.abs(sums) < 1e-8] = 1.0
    return weights / sums


def random_recipe(rng: np.random.Generator, chain: bool = True) -> Recipe:
    kind = KINDS[rng.integers(len(KINDS))]
    params: dict = {}
    if kind == "resample":
        factor = float(np.exp(rng.uniform(math.log(1.1), math.log(3.5)))) if rng.random() < 0.8 \
            else float(rng.uniform(0.6, 0.95))
        kernel = ("sinc", "cubic", "bspline", "gauss")[rng.integers(4)]
        kernel_params = {"sinc": lambda: {"lobes": int(rng.integers(2, 5)), "cut": float(rng.uniform(0.6, 1.0))},
                         "cubic": lambda: {"a": float(rng.uniform(-1.0, -0.25))},
                         "bspline": lambda: {"order": int(rng.integers(0, 6))},
                         "gauss": lambda: {"sigma": float(rng.uniform(0.35, 1.0))}}[kernel]()
        params = {"factor": factor, "kernel": kernel, "kernel_params": kernel_params,
                  "offset": float(rng.choice([0.0, rng.uniform(-0.5, 0.5)]))}
    elif kind == "transposed":
        factor = int(rng.choice([2, 2, 3]))
        size = int(rng.integers(factor, 2 * factor + 2))
        kernel = rng.uniform(0.2, 1.0, (3, size, size)) + rng.normal(0, 0.3, (3, size, size))
        params = {"factor": factor, "kernel": kernel}
    elif kind == "blur":
        params = {"shape": ("gauss", "box", "aniso")[rng.integers(3)], "sigma": float(rng.uniform(0.5, 2.0)),
                  "angle": float(rng.uniform(0, math.pi))}
    elif kind == "noise":
        params = {"sigma": float(rng.uniform(1.0, 8.0)) / 255.0, "smooth": bool(rng.random() < 0.4)}
    then = None
    if chain and kind in ("resample", "transposed") and rng.random() < 0.35:
        then = random_recipe(rng, chain=False)
        while then.kind in ("resample", "transposed", "none"):
            then = random_recipe(rng, chain=False)
    return Recipe(kind, params, then)


def _correlate(image: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """Per-channel 2-D correlation with edge padding; ``kernel`` (kh, kw) or (3, kh, kw)."""
    kernels = kernel if kernel.ndim == 3 else np.repeat(kernel[None], image.shape[2], axis=0)
    kh, kw = kernels.shape[1:]
    padded = np.pad(image, ((kh // 2, kh - 1 - kh // 2), (kw // 2, kw - 1 - kw // 2), (0, 0)), mode="edge")
    out = np.zeros_like(image)
    for dy in range(kh):
        for dx in range(kw):
            out += padded[dy:dy + image.shape[0], dx:dx + image.shape[1]] * kernels[:, dy, dx]
    return out


def _blur_kernel(params: dict) -> np.ndarray:
    sigma = params["sigma"]
    radius = int(math.ceil(2.5 * sigma))
    y, x = np.mgrid[-radius:radius + 1, -radius:radius + 1].astype(np.float64)
    if params["shape"] == "box":
        kernel = ((np.abs(x) <= sigma) & (np.abs(y) <= sigma)).astype(np.float64)
    elif params["shape"] == "aniso":
        u = x * math.cos(params["angle"]) + y * math.sin(params["angle"])
        v = -x * math.sin(params["angle"]) + y * math.cos(params["angle"])
        kernel = np.exp(-0.5 * ((u / sigma) ** 2 + (v / (0.3 * sigma)) ** 2))
    else:
        kernel = np.exp(-0.5 * (x**2 + y**2) / sigma**2)
    return kernel / kernel.sum()


def apply(recipe: Recipe, image: np.ndarray, side: int, rng: np.random.Generator) -> np.ndarray:
    """float [0, 1] (s, s, 3) with ``s = recipe.input_side(side)`` -> float (side, side, 3)."""
    p = recipe.params
    if recipe.kind == "resample":
        matrix = resampling_matrix(image.shape[0], side, p["kernel"], p["kernel_params"], p["offset"])
        out = np.einsum("ij,jkc->ikc", matrix, image)
        out = np.einsum("ij,kjc->kic", matrix, out)
    elif recipe.kind == "transposed":
        factor, kernel = p["factor"], p["kernel"]
        sparse = np.zeros((image.shape[0] * factor, image.shape[1] * factor, 3))
        sparse[::factor, ::factor] = image
        # each output phase gets the kernel taps that land on it: normalise per phase (no DC shift)
        norm = _correlate(np.repeat(_mask(image.shape[:2], factor), 3, axis=2), kernel)
        out = _correlate(sparse, kernel) / np.maximum(norm, 1e-3)
    elif recipe.kind == "blur":
        out = _correlate(image, _blur_kernel(p))
    elif recipe.kind == "noise":
        noise = rng.normal(0, p["sigma"], image.shape)
        if p["smooth"]:
            noise = _correlate(noise, _blur_kernel({"shape": "gauss", "sigma": 0.7})) * 2
        out = image + noise
    else:
        out = image
    out = np.clip(out, 0.0, 1.0)
    if recipe.then is not None:
        out = apply(recipe.then, out, side, rng)
    return out


def _mask(shape: tuple[int, int], factor: int) -> np.ndarray:
    mask = np.zeros((shape[0] * factor, shape[1] * factor, 1))
    mask[::factor, ::factor] = 1.0
    return mask


def render(recipe: Recipe, photo: np.ndarray, side: int, rng: np.random.Generator) -> np.ndarray:
    """A random pixel-exact crop of ``photo`` (uint8) under a random square symmetry, through the
    recipe, rounded to uint8 (side, side, 3)."""
    crop_side = recipe.input_side(side)
    top = rng.integers(photo.shape[0] - crop_side + 1)
    left = rng.integers(photo.shape[1] - crop_side + 1)
    crop = np.rot90(photo[top:top + crop_side, left:left + crop_side], k=int(rng.integers(4)))
    if rng.random() < 0.5:
        crop = crop[:, ::-1]
    out = apply(recipe, crop.astype(np.float64) / 255.0, side, rng)
    if out.shape[:2] != (side, side):
        out = out[:side, :side]
    return (out * 255.0).round().astype(np.uint8)
