"""The forensic field of a ``.jai``: the original image's pixel descriptors, carried in the container.

A codec's latents keep little of how an image was formed; the classical descriptors of its pixels
keep much more, and decoding cannot bring them back (the decoder's pixels are the codec's, not the
generator's). So ``compress`` describes the original pixels (:func:`latentsweep.descriptors.describe`)
and stores every vector in the file, each named with its version (``schema.DESCRIPTORS``); ingesting
the bitstream fills those columns from the file, without pixels.

Each vector is quantised to 8 bits a value between its own minimum and maximum (two float32 a vector):
the descriptors' ranges differ by descriptor and version, and a scale per vector needs no table that
would have to change with them. The error is at most ``(high - low) / 510`` per value.
"""

from __future__ import annotations

import numpy as np

from latentsweep.bitstream.container import Bitstream, BitstreamError, Descriptor
from latentsweep.schema import DESCRIPTORS

LEVELS = 255


def quantise(version: str, vector: np.ndarray) -> Descriptor:
    vector = np.asarray(vector, np.float32)
    low, high = float(vector.min()), float(vector.max())
    step = (high - low) / LEVELS or 1.0  # a flat vector: every code 0
    codes = np.rint((vector - low) / step).clip(0, LEVELS).astype(np.uint8)
    return Descriptor(version, low, high, codes.tobytes())


def values(descriptor: Descriptor) -> np.ndarray:
    """The dequantised float32 vector."""
    codes = np.frombuffer(descriptor.codes, np.uint8).astype(np.float32)
    return (np.float32(descriptor.low) + codes * np.float32((descriptor.high - descriptor.low) / LEVELS)
            ).astype(np.float32)


def describe(image: np.ndarray, device) -> dict[str, Descriptor]:
    """The field of uint8 RGB ``image``: every descriptor of this latentsweep, at its version. A vector
    that is not finite everywhere is left out (its column stays NULL), as an 8-bit code cannot hold it."""
    from latentsweep.descriptors import describe as pixel_descriptors

    return {name: quantise(DESCRIPTORS[name][1], vector) for name, vector in pixel_descriptors(image, device).items()
            if np.isfinite(vector).all()}


def versions(bitstream: Bitstream) -> dict[str, str]:
    """``{descriptor: version}`` of the field (empty: the file has none)."""
    return {name: descriptor.version for name, descriptor in bitstream.descriptors.items()}


def current_versions() -> dict[str, str]:
    """What :func:`describe` writes: ``{descriptor: version}`` of this latentsweep."""
    return {name: version for name, (_, version) in DESCRIPTORS.items()}


def check(bitstream: Bitstream) -> None:
    """Refuse a field whose vector at this latentsweep's version of a descriptor has another dimension
    (its CRC holds, so what wrote it was not this format)."""
    for name, descriptor in bitstream.descriptors.items():
        dimension, version = DESCRIPTORS.get(name, (None, None))
        if descriptor.version == version and len(descriptor.codes) != dimension:
            raise BitstreamError(f"corrupt bitstream: the forensic field's {name} (version {version}) has "
                                 f"{len(descriptor.codes)} values, not {dimension}")


def carried(bitstream: Bitstream, columns) -> dict[str, np.ndarray]:
    """The dequantised vectors of ``columns`` the file carries at this latentsweep's versions; a
    descriptor of another version is left out (its column stays NULL: vectors of two versions never mix)."""
    return {name: values(bitstream.descriptors[name]) for name in columns
            if name in bitstream.descriptors and bitstream.descriptors[name].version == DESCRIPTORS[name][1]}
