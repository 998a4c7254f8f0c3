"""A real-software attribution benchmark: real photos, each image its own content, and each class's
fingerprint made by the resizer of a widely used library that none of us wrote. Benchmark data, not
product logic.

Why: the synthetic zoo gives each generator a colour habit that a global average picks up, and it
renders the content through networks written here. This corpus controls both. Content is a
pixel-exact crop of a photo bundled with scikit-image (random photo, random crop position, random
flip / 90-degree rotation: the eight symmetries of the square), drawn independently for every image
and with the same distribution for every class; there is **no resampling in the content step**
(resampling is itself a fingerprint). The only thing that differs between classes is the resampling
chain that takes the crop to the output side, as a generator's last upsampling stages make its
picture (Durall et al., "Watch your up-convolution", CVPR 2020). Labels are the classes, families are
the libraries. Each split also has a ``real`` class (family ``real``): the crop itself, untouched, so
that real-vs-generated is measured like any other label. (A crop only comes from photos it fits:
at 192 px the tuning split's ``page``, 191 px high, serves the resized classes only.)

A class's crop side is ``size / overall factor`` (``size`` a multiple of 24, so every factor below is
exact in pixels); the output is ``size`` x ``size`` (192 by default, a multiple of the codec's 64).
Floating-point resizers (torch, scikit-image, scipy) get values in [0, 1] and their outputs are
clipped and rounded to 8 bits; Pillow resizes the 8-bit image itself, as its users do.

TUNING split (``split="tuning"``): Pillow 13 and torch 2 only; content from
``photos.names("train")`` (the 14 photos the codec was trained on: astronaut, chelsea,
stereo_motorcycle, hubble_deep_field, retina, immunohistochemistry, camera, coins, brick, grass,
gravel, moon, cell, page). May be used for any tuning decision.

=================================  =======  ===========================================================
class                              library  chain (crop side at size 192)
=================================  =======  ===========================================================
pillow-nearest-x2                  pillow   Image.resize NEAREST, x2 (96 -> 192)
pillow-bilinear-x2                 pillow   Image.resize BILINEAR, x2 (96 -> 192)
pillow-bicubic-x2                  pillow   Image.resize BICUBIC (a = -0.5), x2 (96 -> 192)
pillow-lanczos-x1.5                pillow   Image.resize LANCZOS, x1.5 (128 -> 192)
torch-bilinear-aligned-x2          torch    F.interpolate bilinear, align_corners=True, x2 (96 -> 192)
torch-bicubic-x2                   torch    F.interpolate bicubic (a = -0.75), align_corners=False, x2
torch-nearest-x1.5                 torch    F.interpolate nearest, x1.5 (128 -> 192)
torch-area-x0.75-bilinear-x2       torch    F.interpolate area x0.75 (128 -> 96), then bilinear x2
real                               real     none: the 192 px crop itself, the untouched photo
=================================  =======  ===========================================================

HELD-OUT split (``split="held-out"``): other software (scikit-image 0.26 and scipy.ndimage 1.17,
neither used by any tuning class), other kernels (B-splines of orders 0-5, Gaussian anti-aliasing,
the corner-aligned grid of ``ndimage.zoom``) and other factors (x4/3, x1.6, x3); content from
``photos.HELD_OUT`` only (coffee, rocket, clock: photos the codec never saw, none of them in the
tuning split). Never used for any tuning decision: report it, do not tune on it.

=================================  =======  ===========================================================
class                              library  chain (crop side at size 192)
=================================  =======  ===========================================================
skimage-resize-o0-x1.5             skimage  transform.resize order=0 (nearest), x1.5 (128 -> 192)
skimage-resize-o1-x2               skimage  transform.resize order=1 (bilinear), x2 (96 -> 192)
skimage-resize-o3-x2               skimage  transform.resize order=3 (cubic spline), x2 (96 -> 192)
skimage-resize-o5-x1.33            skimage  transform.resize order=5 (quintic spline), x4/3 (144 -> 192)
skimage-rescale-aa-x0.75-o3-x2     skimage  transform.rescale order=1 anti_aliasing=True x0.75 (128 ->
                                            96), then rescale order=3 x2
scipy-zoom-o1-x2                   scipy    ndimage.zoom order=1, grid_mode=False (corners aligned), x2
scipy-zoom-o2-x1.6                 scipy    ndimage.zoom order=2, grid_mode=False, x1.6 (120 -> 192)
scipy-zoom-o4-x3                   scipy    ndimage.zoom order=4, grid_mode=False, x3 (64 -> 192)
real                               real     none: the 192 px crop itself, the untouched photo
=================================  =======  ===========================================================

``jpeg=(80, 95)``: every image is then saved by Pillow's JPEG encoder at a quality drawn per image,
uniformly in that range (4:2:0 chroma, Pillow's default), instead of PNG.

Deterministic for its settings: an image's content, and its JPEG quality, come from a generator
seeded by (seed, split, class number, index); another seed gives new content (held-out queries).
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np

from latentsweep_lab import photos


@dataclass(frozen=True)
class Step:
    """One resampling call: ``op`` names the library function, ``kernel`` its filter (a Pillow
    filter name, a torch mode, a spline order), ``scale`` the output side over the input side and
    ``options`` further keyword arguments as (name, value) pairs."""

    op: str  # "pillow", "torch", "skimage-resize", "skimage-rescale", "scipy-zoom"
    kernel: str | int
    scale: Fraction
    options: tuple[tuple[str, object], ...] = ()


@dataclass(frozen=True)
class SoftwareClass:
    name: str
    library: str  # the family
    steps: tuple[Step, ...]

    @property
    def factor(self) -> Fraction:
        total = Fraction(1)
        for step in self.steps:
            total *= step.scale
        return total

    def crop_side(self, size: int) -> int:
        side = Fraction(size) / self.factor
        if side.denominator != 1:
            raise ValueError(f"size {size} is not a whole number of pixels after {self.name}")
        return int(side)


X2, X1_5 = Fraction(2), Fraction(3, 2)
TUNING = (
    SoftwareClass("pillow-nearest-x2", "pillow", (Step("pillow", "NEAREST", X2),)),
    SoftwareClass("pillow-bilinear-x2", "pillow", (Step("pillow", "BILINEAR", X2),)),
    SoftwareClass("pillow-bicubic-x2", "pillow", (Step("pillow", "BICUBIC", X2),)),
    SoftwareClass("pillow-lanczos-x1.5", "pillow", (Step("pillow", "LANCZOS", X1_5),)),
    SoftwareClass("torch-bilinear-aligned-x2", "torch",
                  (Step("torch", "bilinear", X2, (("align_corners", True),)),)),
    SoftwareClass("torch-bicubic-x2", "torch", (Step("torch", "bicubic", X2, (("align_corners", False),)),)),
    SoftwareClass("torch-nearest-x1.5", "torch", (Step("torch", "nearest", X1_5),)),
    SoftwareClass("torch-area-x0.75-bilinear-x2", "torch",
                  (Step("torch", "area", Fraction(3, 4)),
                   Step("torch", "bilinear", X2, (("align_corners", False),)))),
)
HELD_OUT = (
    SoftwareClass("skimage-resize-o0-x1.5", "skimage", (Step("skimage-resize", 0, X1_5),)),
    SoftwareClass("skimage-resize-o1-x2", "skimage", (Step("skimage-resize", 1, X2),)),
    SoftwareClass("skimage-resize-o3-x2", "skimage", (Step("skimage-resize", 3, X2),)),
    SoftwareClass("skimage-resize-o5-x1.33", "skimage", (Step("skimage-resize", 5, Fraction(4, 3)),)),
    SoftwareClass("skimage-rescale-aa-x0.75-o3-x2", "skimage",
                  (Step("skimage-rescale", 1, Fraction(3, 4), (("anti_aliasing", True),)),
                   Step("skimage-rescale", 3, X2))),
    SoftwareClass("scipy-zoom-o1-x2", "scipy", (Step("scipy-zoom", 1, X2),)),
    SoftwareClass("scipy-zoom-o2-x1.6", "scipy", (Step("scipy-zoom", 2, Fraction(8, 5)),)),
    SoftwareClass("scipy-zoom-o4-x3", "scipy", (Step("scipy-zoom", 4, Fraction(3)),)),
)

# The untouched photo: the content crop itself, no resampling. Both splits end with it (each with its
# split's photos), so real-vs-generated is measured like any other label; being last, it leaves the
# other classes' numbers, hence their content draws, as they were.
REAL = SoftwareClass("real", "real", ())


@dataclass(frozen=True)
class Split:
    classes: tuple[SoftwareClass, ...]
    photos: tuple[str, ...]
    code: int  # part of every image's seed, so the splits never share a content draw


SPLITS = {"tuning": Split(TUNING + (REAL,), tuple(photos.names("train")), 1),
          "held-out": Split(HELD_OUT + (REAL,), tuple(photos.HELD_OUT), 2)}
SIZE_STEP = 24  # output sides must be multiples of this: every factor above is then exact


@dataclass
class SoftwareSettings:
    split: str = "tuning"             # "tuning" or "held-out" (never tune on it)
    per_class: int = 24
    size: int = 192                   # output side, a multiple of 24
    seed: int = 0                     # content seed: another seed = new content (held-out queries)
    jpeg: tuple[int, int] | None = None  # save as JPEG at a quality drawn per image in [low, high]


def content(split: str, number: int, index: int, side: int, seed: int, cache: dict) -> np.ndarray:
    """Content of image ``index`` of class ``number``: a pixel-exact ``side`` x ``side`` crop of a random
    photo of the split (drawn again among those it fits when it does not) at a random position, under one of the square's 8
    symmetries (flips, 90-degree rotations). uint8 (side, side, 3); no resampling."""
    chosen = SPLITS[split]
    rng = np.random.default_rng([seed, chosen.code, number, index])

    def load(name: str) -> np.ndarray:
        if name not in cache:
            cache[name] = photos.load(name)
        return cache[name]

    photo = load(chosen.photos[rng.integers(len(chosen.photos))])
    if side > min(photo.shape[:2]):  # drawn again among the photos the crop fits
        fitting = [name for name in chosen.photos if side <= min(load(name).shape[:2])]
        if not fitting:
            raise ValueError(f"a {side}-pixel crop fits none of the {split} photos: use a smaller size")
        photo = cache[fitting[rng.integers(len(fitting))]]
    top = rng.integers(photo.shape[0] - side + 1)
    left = rng.integers(photo.shape[1] - side + 1)
    crop = photo[top:top + side, left:left + side]
    crop = np.rot90(crop, k=int(rng.integers(4)))
    if rng.random() < 0.5:
        crop = crop[:, ::-1]
    return np.ascontiguousarray(crop)


def _to_uint8(values: np.ndarray) -> np.ndarray:
    return (np.clip(values, 0.0, 1.0) * 255).round().astype(np.uint8)


def resample(image: np.ndarray, step: Step) -> np.ndarray:
    """One step of a chain on a uint8 (h, w, 3) image -> uint8 (h * scale, w * scale, 3)."""
    height, width = (int(side * step.scale) for side in image.shape[:2])
    options = dict(step.options)
    if step.op == "pillow":
        from PIL import Image

        return np.asarray(Image.fromarray(image).resize((width, height), getattr(Image.Resampling, step.kernel)))
    values = image.astype(np.float64) / 255.0
    if step.op == "torch":
        import torch
        import torch.nn.functional as F

        tensor = torch.from_numpy(values).permute(2, 0, 1)[None]
        out = F.interpolate(tensor, size=(height, width), mode=step.kernel, **options)
        return _to_uint8(out[0].permute(1, 2, 0).numpy())
    if step.op == "skimage-resize":
        from skimage.transform import resize

        return _to_uint8(resize(values, (height, width), order=step.kernel, **options))
    if step.op == "skimage-rescale":
        from skimage.transform import rescale

        return _to_uint8(rescale(values, float(step.scale), order=step.kernel, channel_axis=2, **options))
    if step.op == "scipy-zoom":
        from scipy import ndimage

        zoom = (height / image.shape[0], width / image.shape[1], 1)
        return _to_uint8(ndimage.zoom(values, zoom, order=step.kernel, **options))
    raise ValueError(f"unknown resampling op {step.op!r}")


def render(software: SoftwareClass, crop: np.ndarray) -> np.ndarray:
    """The class's chain on a content crop."""
    image = crop
    for step in software.steps:
        image = resample(image, step)
    return image


def encode(image: np.ndarray, jpeg_quality: int | None) -> tuple[bytes, str]:
    from PIL import Image

    buffer = io.BytesIO()
    if jpeg_quality is None:
        Image.fromarray(image).save(buffer, "PNG")
        return buffer.getvalue(), ".png"
    Image.fromarray(image).save(buffer, "JPEG", quality=jpeg_quality)
    return buffer.getvalue(), ".jpg"


def make_software_corpus(root: str | Path, settings: SoftwareSettings = SoftwareSettings()) -> int:
    """``root/<class>/<n>.png`` (or ``.jpg``), ``manifest.csv`` (uri, label, family) and ``README.txt``.
    Deterministic for ``settings``; returns the number of images written."""
    if settings.split not in SPLITS:
        raise ValueError(f"split must be one of {', '.join(SPLITS)}")
    if settings.size <= 0 or settings.size % SIZE_STEP:
        raise ValueError(f"size must be a positive multiple of {SIZE_STEP}")
    if settings.jpeg is not None and not 1 <= settings.jpeg[0] <= settings.jpeg[1] <= 100:
        raise ValueError("jpeg must be a (low, high) range of qualities within 1-100")
    root = Path(root)
    split = SPLITS[settings.split]
    cache: dict = {}
    lines = ["uri,label,family"]
    for number, software in enumerate(split.classes):
        folder = root / software.name
        folder.mkdir(parents=True, exist_ok=True)
        side = software.crop_side(settings.size)
        for index in range(settings.per_class):
            image = render(software, content(settings.split, number, index, side, settings.seed, cache))
            assert image.shape == (settings.size, settings.size, 3), (software.name, image.shape)
            quality = None
            if settings.jpeg is not None:
                low, high = settings.jpeg
                quality = int(np.random.default_rng([settings.seed, split.code, number, index, 1]).integers(
                    low, high + 1))
            data, suffix = encode(image, quality)
            path = folder / f"{index:05d}{suffix}"
            path.write_bytes(data)
            lines.append(f"{folder.name}/{path.name},{software.name},{software.library}")
    (root / "manifest.csv").write_text("\n".join(lines) + "\n")
    (root / "README.txt").write_text(readme(settings))
    return settings.per_class * len(split.classes)


CALLS = {"pillow": ("PIL.Image.resize", "filter"), "torch": ("torch.nn.functional.interpolate", "mode"),
         "skimage-resize": ("skimage.transform.resize", "order"),
         "skimage-rescale": ("skimage.transform.rescale", "order"), "scipy-zoom": ("scipy.ndimage.zoom", "order")}


def describe(step: Step) -> str:
    """The call a step makes, e.g. ``scipy.ndimage.zoom(order=1) x2``."""
    function, kernel = CALLS[step.op]
    options = "".join(f", {name}={value}" for name, value in step.options)
    return f"{function}({kernel}={step.kernel}{options}) x{step.scale}"


def readme(settings: SoftwareSettings) -> str:
    split = SPLITS[settings.split]
    classes = "\n".join(
        f"  {software.name} ({software.library}): crop {software.crop_side(settings.size)} px, then "
        + (", then ".join(describe(step) for step in software.steps) or "nothing (the untouched photo)")
        for software in split.classes)
    jpeg = (f"Every image then saved by Pillow's JPEG encoder at a quality drawn per image in "
            f"{settings.jpeg[0]}-{settings.jpeg[1]}." if settings.jpeg else "Saved as PNG (lossless).")
    warning = ("HELD-OUT split: never use it for a tuning decision (features, parameters, thresholds)."
               if settings.split == "held-out" else "TUNING split: may be used for tuning decisions.")
    return (f"Real-software attribution corpus made by `latentsweep make-corpus --kind software` "
            f"(lab/latentsweep_lab/zoo/software.py), split {settings.split}, seed {settings.seed}.\n"
            f"{warning}\n\n"
            "Content: real photos bundled with scikit-image, each image its own pixel-exact crop (random "
            "photo, position, flip and 90-degree rotation; no resampling), same distribution for every "
            f"class. Photos: {', '.join(split.photos)}.\n"
            "Fingerprint: each class is a resampling chain of real, widely used software to "
            f"{settings.size}x{settings.size} px. These are resizers, not generative models.\n"
            f"{jpeg}\n\nClasses (label = class, family = library):\n{classes}\n")
