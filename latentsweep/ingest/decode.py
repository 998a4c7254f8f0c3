"""Bytes -> RGB uint8, or a classified error. Runs on the shard workers' fetch threads.

Every odd input becomes either a correct RGB image or a :class:`DecodeError` with a type:
``not_image``, ``truncated``, ``too_large`` (the ``max_pixels`` guard runs on the header, before any
pixel is decoded), ``too_small``, ``unreadable``. EXIF orientation is applied; grey, palette, alpha
(dropped), 16-bit and CMYK inputs are converted to RGB.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

import numpy as np

DEFAULT_MAX_PIXELS = 64_000_000
DEFAULT_MIN_SIDE = 16


class DecodeError(Exception):
    def __init__(self, error_type: str, message: str):
        super().__init__(message)
        self.error_type = error_type


def decode_image(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS,
                 min_side: int = DEFAULT_MIN_SIDE) -> np.ndarray:
    from PIL import Image, ImageOps, UnidentifiedImageError

    if not data:
        raise DecodeError("not_image", "empty file (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        raise DecodeError("not_image", "not a recognised image format") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        raise DecodeError("too_large", f"decompression bomb guard: {error}") from None
    except Exception as error:
        raise DecodeError(_classify(error), f"cannot open image: {error}") from None
    width, height = image.size
    if width * height > max_pixels:
        raise DecodeError("too_large", f"{width}x{height} = {width * height} pixels exceeds "
                                       f"--max-pixels {max_pixels}")
    if min(width, height) < min_side:
        raise DecodeError("too_small", f"{width}x{height} is below the minimum side of {min_side} pixels")
    try:
        image.load()
        image = ImageOps.exif_transpose(image)
        return _to_rgb(image)
    except Exception as error:
        raise DecodeError(_classify(error), f"cannot decode pixels: {type(error).__name__}: {error}") from None


def _classify(error: Exception) -> str:
    text = str(error).lower()
    return "truncated" if "truncated" in text or "broken" in text else "unreadable"


def _to_rgb(image) -> np.ndarray:
    mode = image.mode
    if mode in ("I;16", "I;16B", "I;16L", "I"):
        values = np.asarray(image, dtype=np.uint32 if mode == "I" else np.uint16).astype(np.float64)
        top = 65535.0 if values.max(initial=0) > 255 else 255.0
        grey = np.clip(np.round(values / top * 255.0), 0, 255).astype(np.uint8)
        return np.ascontiguousarray(np.repeat(grey[:, :, None], 3, axis=2))
    if mode == "F":
        values = np.asarray(image, dtype=np.float64)
        grey = np.clip(np.round(values * (255.0 if values.max(initial=0) <= 1.0 else 1.0)), 0, 255)
        return np.ascontiguousarray(np.repeat(grey.astype(np.uint8)[:, :, None], 3, axis=2))
    if mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode != "RGB":
        image = image.convert("RGB")  # L, LA, RGBA (alpha dropped), CMYK, YCbCr, 1, P
    return np.ascontiguousarray(np.asarray(image, dtype=np.uint8))


@dataclass
class Fetched:
    """One input after reading: an RGB image, or the bytes of exported latents (``.pt``, source
    ``latents``) or of a checked bitstream (``.jai``, source ``bitstream``), or the reason it failed
    (``error_type``)."""

    uri: str
    image: np.ndarray | None = None
    latents: bytes | None = None
    sha256: str | None = None
    width: int | None = None
    height: int | None = None
    source: str = "image"
    error_type: str = ""
    message: str = ""
    declared: dict | None = None  # what an image file declares about its origin (schema.DECLARED_FIELDS)


def fetch(uri: str, max_pixels: int = DEFAULT_MAX_PIXELS, min_side: int = DEFAULT_MIN_SIDE) -> Fetched:
    """Read one input and decode it. Failures of the item become its ``error_type``; failures of
    the set-up (the store down, no credentials on this node, a missing bucket) raise
    :class:`latentsweep.storage.StorageError`: the job stops and a rerun resumes."""
    import hashlib

    from latentsweep import provenance, storage
    from latentsweep.bitstream.container import BitstreamError
    from latentsweep.ingest import augment

    item = Fetched(uri)
    source, steps = augment.split(uri)
    try:
        data = storage.read_bytes(source)
        if steps is not None:  # a processed copy of a reference (ingest/augment.py): made here, from its source
            data = augment.process(decode_image(data, max_pixels, min_side), steps)
        item.sha256 = hashlib.sha256(data).hexdigest()
        if uri.lower().endswith(".pt"):
            item.source, item.latents = "latents", data
        elif uri.lower().endswith(".jai"):  # a bitstream: checked here, entropy-decoded by the encoder
            from latentsweep.bitstream import container

            header = container.unpack(data, max_pixels)
            if min(header.height, header.width) < min_side:
                raise DecodeError("too_small", f"{header.width}x{header.height} is below the minimum side of "
                                               f"{min_side} pixels")
            item.source, item.latents, item.height, item.width = "bitstream", data, header.height, header.width
        else:
            item.image = decode_image(data, max_pixels, min_side)
            item.height, item.width = item.image.shape[:2]
            item.declared = provenance.to_columns(provenance.declared(data, uri)) if steps is None else None
    except DecodeError as error:
        item.error_type, item.message = error.error_type, str(error)
    except BitstreamError as error:  # a truncated, corrupt or foreign .jai: truncated, bad_bitstream, too_large
        item.error_type, item.message = error.error_type, str(error)
    except storage.StorageError as error:
        if error.systemic:
            raise
        item.error_type, item.message = "unreadable", str(error)
    except Exception as error:  # permissions, vanished files
        item.error_type, item.message = "unreadable", storage.redact(f"{type(error).__name__}: {error}")
    return item
