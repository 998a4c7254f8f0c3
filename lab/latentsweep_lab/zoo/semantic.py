"""The semantic retrieval corpus of the paper's first experiment (Table 1): each class is one source
photo under augmentation (crop, scale, flip, colour jitter), so retrieval has to find the same scene.

Written like the zoo: ``root/<photo>/<n>.png`` plus ``manifest.csv`` (uri, label, family="photo").
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from latentsweep_lab import photos

CLASSES = ("astronaut", "chelsea", "coffee", "rocket", "camera", "coins", "brick", "hubble_deep_field")


def augment(photo: np.ndarray, rng: np.random.Generator, size: int) -> np.ndarray:
    """A random crop (40-100% of the short side), resize to ``size``, flip and colour jitter."""
    from PIL import Image

    side = int(rng.uniform(0.4, 1.0) * min(photo.shape[:2]))
    top = rng.integers(photo.shape[0] - side + 1)
    left = rng.integers(photo.shape[1] - side + 1)
    crop = Image.fromarray(photo[top:top + side, left:left + side]).resize((size, size), Image.BICUBIC)
    image = np.asarray(crop, dtype=np.float64) / 255.0
    if rng.random() < 0.5:
        image = image[:, ::-1]
    grey = image.mean(axis=2, keepdims=True)
    image = grey + rng.uniform(0.7, 1.3) * (image - grey)                 # saturation
    image = (image - 0.5) * rng.uniform(0.8, 1.2) + 0.5 + rng.uniform(-0.08, 0.08)  # contrast, brightness
    return (np.clip(image, 0, 1) * 255).round().astype(np.uint8)


def make_semantic_corpus(root: str | Path, classes: int = 8, per_class: int = 24, size: int = 128,
                         seed: int = 0) -> int:
    """Deterministic for its arguments; returns the number of images written."""
    from PIL import Image

    if not 2 <= classes <= len(CLASSES):
        raise ValueError(f"classes must be between 2 and {len(CLASSES)}")
    root = Path(root)
    lines = ["uri,label,family"]
    for number, name in enumerate(CLASSES[:classes]):
        photo = photos.load(name)
        (root / name).mkdir(parents=True, exist_ok=True)
        for index in range(per_class):
            rng = np.random.default_rng([seed, number, index])
            Image.fromarray(augment(photo, rng, size)).save(root / name / f"{index:05d}.png")
            lines.append(f"{name}/{index:05d}.png,{name},photo")
    (root / "manifest.csv").write_text("\n".join(lines) + "\n")
    return classes * per_class
