"""Augmented references: processed copies of each labelled image, planned as items of their own.

A query has usually travelled (re-encoded, resized, blurred) and a reference has not, so the nearest
clean reference can be the wrong class. ``ingest --augment standard`` adds, for every labelled image,
:data:`COPIES` processed copies under the same label: the copies are items of the plan like any other
(ids, shards, resumption and versions work unchanged), named by their source's URI and the steps that
made them, ``URI#copy=resize-0.83-bicubic+jpeg-72-420``. The index groups a reference with its copies
by that name (:func:`source_ids`), so they count as one neighbour in a vote and leave one out together.

The recipe (docs/descriptors.md, "Augmented references"): each copy, drawn from a generator seeded by
its source's id and its number, is a resize (probability 0.3: factor 0.6-1.4, Pillow's bilinear,
bicubic or Lanczos), then a Gaussian blur (0.2: radius 0.3-1.2), then saved as JPEG (0.6: Pillow,
quality 60-98, 4:2:0 or 4:4:4 chroma), WebP (0.2: Pillow, quality 60-95) or PNG; a copy left
unprocessed by the draw is saved as JPEG. Only Pillow's implementations are used, so any other
library's resizers, encoders and edits stay available for held-out robustness measurements.
"""

from __future__ import annotations

import io
from collections.abc import Iterator

import numpy as np
import pyarrow as pa

from latentsweep.errors import UsageError
from latentsweep.schema import stable_id

RECIPES = ("none", "standard")
COPIES = 3        # copies of each labelled image in the standard recipe
COPY_MARK = "#copy="
RECIPE_SEED = 0x5EED_0001
KERNELS = ("bilinear", "bicubic", "lanczos")
SUBSAMPLING = {"420": 2, "444": 0}  # Pillow's subsampling codes
# what a copy can be made from: images (a .pt export or a .jai bitstream has no pixels to process)
PIXEL_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff", ".gif")


def check(recipe: str) -> None:
    if recipe not in RECIPES:
        raise UsageError(f"unknown --augment {recipe!r}: choose one of {', '.join(RECIPES)}")


def draw(source: str, number: int) -> str:
    """The steps of copy ``number`` of ``source`` (the part of its URI after :data:`COPY_MARK`)."""
    key = np.int64(stable_id(source)).view(np.uint64)
    rng = np.random.default_rng([RECIPE_SEED, int(key), number])
    steps = []
    if rng.random() < 0.3:
        steps.append(f"resize-{rng.uniform(0.6, 1.4):.2f}-{KERNELS[rng.integers(len(KERNELS))]}")
    if rng.random() < 0.2:
        steps.append(f"blur-{rng.uniform(0.3, 1.2):.2f}")
    kind = rng.random()
    if kind < 0.6 or (kind >= 0.8 and not steps):
        steps.append(f"jpeg-{rng.integers(60, 99)}-{'420' if rng.random() < 0.5 else '444'}")
    elif kind < 0.8:
        steps.append(f"webp-{rng.integers(60, 96)}")
    return "+".join(steps) or "png"


def copy_uris(uri: str, recipe: str) -> list[str]:
    """The URIs of ``uri``'s copies under ``recipe`` (none for a file without pixels); two draws with the
    same steps make one copy."""
    if recipe == "none" or not uri.lower().endswith(PIXEL_SUFFIXES):
        return []
    return list(dict.fromkeys(f"{uri}{COPY_MARK}{draw(uri, number)}" for number in range(COPIES)))


def split(uri: str) -> tuple[str, str | None]:
    """(the source's URI, the copy's steps) of a copy's URI; (``uri``, None) for any other."""
    source, mark, steps = uri.rpartition(COPY_MARK)
    if not mark or not source or not _valid(steps):
        return uri, None
    return source, steps


def _valid(steps: str) -> bool:
    try:
        for step in steps.split("+"):
            _parse(step)
    except (KeyError, ValueError):
        return False
    return True


def _parse(step: str) -> tuple[str, list[str]]:
    name, *args = step.split("-")
    arity = {"resize": 2, "blur": 1, "jpeg": 2, "webp": 1, "png": 0}[name]
    if len(args) != arity:
        raise ValueError(step)
    if name == "resize" and (args[1] not in KERNELS or not 0 < float(args[0]) <= 4):
        raise ValueError(step)
    if name == "blur":
        float(args[0])
    if name in ("jpeg", "webp") and not 1 <= int(args[0]) <= 100:
        raise ValueError(step)
    if name == "jpeg" and args[1] not in SUBSAMPLING:
        raise ValueError(step)
    return name, args


def process(image: np.ndarray, steps: str) -> bytes:
    """The file ``steps`` make of the RGB ``image``: real encoder output, decoded again as any input is."""
    from PIL import Image, ImageFilter

    picture = Image.fromarray(image)
    buffer = io.BytesIO()
    for step in steps.split("+"):
        name, args = _parse(step)
        if name == "resize":
            kernel = {"bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC, "lanczos": Image.LANCZOS}[args[1]]
            factor = float(args[0])
            picture = picture.resize((max(16, round(picture.width * factor)), max(16, round(picture.height * factor))),
                                     kernel)
        elif name == "blur":
            picture = picture.filter(ImageFilter.GaussianBlur(radius=float(args[0])))
        elif name == "jpeg":
            picture.save(buffer, "JPEG", quality=int(args[0]), subsampling=SUBSAMPLING[args[1]])
        elif name == "webp":
            picture.save(buffer, "WEBP", quality=int(args[0]))
        else:
            picture.save(buffer, "PNG")
    if not buffer.tell():
        picture.save(buffer, "PNG")
    return buffer.getvalue()


class WithCopies:
    """The listing's batches, each followed by the copies of its labelled images (same version, label
    and family as their source: a replaced source makes its copies fresh too); ``made`` counts them."""

    def __init__(self, batches: Iterator[pa.RecordBatch], recipe: str):
        self.batches, self.recipe, self.made = batches, recipe, 0

    def __iter__(self) -> Iterator[pa.RecordBatch]:
        for batch in self.batches:
            yield batch
            if self.recipe == "none":
                continue
            uris, labels = batch.column("uri").to_pylist(), batch.column("label").to_pylist()
            rows, copies = [], []
            for row, (uri, label) in enumerate(zip(uris, labels)):
                if label is not None:
                    made = copy_uris(uri, self.recipe)
                    rows += [row] * len(made)
                    copies += made
            if copies:
                self.made += len(copies)
                taken = batch.take(pa.array(rows, pa.int64()))
                position = taken.schema.get_field_index("uri")
                yield taken.set_column(position, taken.schema.field(position), pa.array(copies, pa.string()))


def originals(ids: np.ndarray, uris: list[str]) -> np.ndarray:
    """Which rows are originals, not processed copies (a bool mask)."""
    return source_ids(ids, uris) == np.asarray(ids, np.int64)


def source_ids(ids: np.ndarray, uris: list[str]) -> np.ndarray:
    """The id of each row's source: its own for an original, its source's (``schema.stable_id`` of the
    source URI) for a copy. A source whose id was replaced after a collision (ingest/plan.py) leaves
    its copies grouped under the collided id: one chance in 2**64 a pair."""
    sources = np.asarray(ids, np.int64).copy()
    for row, uri in enumerate(uris):
        if COPY_MARK in uri:
            source, steps = split(uri)
            if steps is not None:
                sources[row] = stable_id(source)
    return sources
