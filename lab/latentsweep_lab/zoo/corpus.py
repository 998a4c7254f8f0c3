"""Write a zoo corpus: ``root/<generator>/<n>.png`` plus ``manifest.csv`` (uri, label, family)."""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from latentsweep_lab.zoo.content import content
from latentsweep_lab.zoo.generators import ZOO, Generator


@dataclass
class CorpusSettings:
    per_generator: int = 24
    size: int = 128
    seed: int = 0          # content seed: use another seed for held-out queries (new content)
    jpeg_quality: int | None = None  # re-compress every image (robustness variants)
    resize: float | None = None      # rescale every image by this factor after generation
    habit: float = 1.0               # strength of the generators' colour habits (0: spectral traces only)
    # image i of every generator renders the same content i (with habit=0 only formation traces
    # differ); otherwise each image has its own content instance
    shared_content: bool = False
    generators: tuple[str, ...] = tuple(spec.name for spec in ZOO)


def post_process(image: np.ndarray, settings: CorpusSettings) -> tuple[bytes, str]:
    from PIL import Image

    picture = Image.fromarray(image)
    if settings.resize:
        side = max(16, round(picture.width * settings.resize))
        picture = picture.resize((side, side), Image.BICUBIC)
    buffer = io.BytesIO()
    if settings.jpeg_quality:
        picture.save(buffer, "JPEG", quality=settings.jpeg_quality)
        return buffer.getvalue(), ".jpg"
    picture.save(buffer, "PNG")
    return buffer.getvalue(), ".png"


def content_index(index: int, number: int, shared: bool) -> int:
    """Which content image ``index`` of the corpus's generator ``number`` renders."""
    return index if shared else index * len(ZOO) + number


def make_corpus(root: str | Path, settings: CorpusSettings = CorpusSettings()) -> int:
    """Deterministic for a given ``settings``; returns the number of images written."""
    root = Path(root)
    specs = [spec for spec in ZOO if spec.name in settings.generators]
    generators = [Generator(spec, settings.habit) for spec in specs]
    cache: dict = {}
    lines = ["uri,label,family"]
    for index in range(settings.per_generator):
        for number, generator in enumerate(generators):
            # same kinds of content for every generator; each image its own content instance unless shared
            base = content(content_index(index, number, settings.shared_content), settings.size, settings.seed, cache)
            data, suffix = post_process(generator.render(base, noise_seed=settings.seed * 100_003 + index), settings)
            path = root / generator.spec.name / f"{index:05d}{suffix}"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
            lines.append(f"{generator.spec.name}/{path.name},{generator.spec.name},{generator.spec.family}")
    (root / "manifest.csv").write_text("\n".join(lines) + "\n")
    shared = (" Image i of every generator renders the same content (shared content)." if settings.shared_content
              else "")
    (root / "README.txt").write_text("SYNTHETIC corpus made by `latentsweep make-corpus`: fixed random "
                                     f"generator networks, not real generative models.{shared}\n")
    return settings.per_generator * len(generators)
