"""The JPEG quality a query was saved at, estimated from its quantisation tables.

A JPEG file carries the quantisation tables (DQT segments) its encoder used. Encoders built on the IJG
library (libjpeg, libjpeg-turbo, mozjpeg only when told to use the Annex K tables; Pillow, OpenCV,
torchvision, ImageMagick and most web software) make them with ``jpeg_set_quality``: the standard tables of the JPEG standard,
Annex K (K.1 luminance, K.2 chrominance), scaled for a quality ``q`` in 1..100 by

    scale = 5000 // q   if q < 50   else   200 - 2 * q
    value = clamp((base * scale + 50) // 100, 1, 255)

(the 255 cap is libjpeg's ``force_baseline``: 8-bit tables, which every one of those encoders asks for).
:func:`estimate` reads the file's tables with Pillow, without decoding pixels, and returns the IJG quality
whose scaled tables are nearest to them.

Distance: the mean absolute difference between the file's table values and the scaled standard tables,
over all 64 values of every table in the file (the table of the first component, luma, against K.1, any
other table against K.2). Ties are broken by the smaller largest difference, then by the higher quality.
``exact`` says the file's tables are libjpeg's tables for that quality value for value; other encoders
(Photoshop, camera firmware, mozjpeg's default tables, hand-made tables) give the nearest IJG quality
with ``exact=False`` and the distance as ``error``: the caller decides whether that is near enough.

What it is for: comparing a JPEG query with references processed at the same quality (and the same
chroma subsampling), grouped coarsely with :func:`quality_band`.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
from PIL import JpegImagePlugin

# JPEG standard (ITU-T T.81), Annex K, tables K.1 and K.2, in natural (row-major) order.
LUMINANCE = (
    16, 11, 10, 16, 24, 40, 51, 61,
    12, 12, 14, 19, 26, 58, 60, 55,
    14, 13, 16, 24, 40, 57, 69, 56,
    14, 17, 22, 29, 51, 87, 80, 62,
    18, 22, 37, 56, 68, 109, 103, 77,
    24, 35, 55, 64, 81, 104, 113, 92,
    49, 64, 78, 87, 103, 121, 120, 101,
    72, 92, 95, 98, 112, 100, 103, 99,
)
CHROMINANCE = (
    17, 18, 24, 47, 99, 99, 99, 99,
    18, 21, 26, 66, 99, 99, 99, 99,
    24, 26, 56, 99, 99, 99, 99, 99,
    47, 66, 99, 99, 99, 99, 99, 99,
    *(99,) * 32,
)

# Pillow's JpegImagePlugin.get_sampling codes, as the labels Pillow's save(subsampling=...) also accepts.
_SAMPLING_LABELS = {0: "4:4:4", 1: "4:2:2", 2: "4:2:0"}


@dataclass(frozen=True)
class JpegQuality:
    """What :func:`estimate` found in a JPEG's quantisation tables.

    ``quality``: the IJG quality (1-100) whose scaled standard tables are nearest to the file's.
    ``exact``: the file's tables are libjpeg's tables for ``quality``, every value.
    ``error``: the mean absolute difference between the file's tables and those at ``quality``
    (0.0 when exact).
    ``tables``: how many quantisation tables the file defines (1 for greyscale, usually 2 for colour).
    ``subsampling``: the chroma subsampling, ``"4:4:4"``, ``"4:2:2"`` or ``"4:2:0"`` (from Pillow's
    ``JpegImagePlugin.get_sampling``; the labels Pillow's ``save(subsampling=...)`` accepts); None for
    greyscale and CMYK files, other layouts, or a Pillow without ``get_sampling``.
    ``note``: why the estimate may mislead (tables not IJG's, values above the baseline cap); None when
    there is nothing to say.
    """

    quality: int
    exact: bool
    error: float
    tables: int
    subsampling: str | None = None
    note: str | None = None


def ijg_scale(quality: int) -> int:
    """libjpeg's percentage scale factor for ``quality`` (clamped to 1..100, as libjpeg does)."""
    quality = min(max(int(quality), 1), 100)
    return 5000 // quality if quality < 50 else 200 - 2 * quality


def ijg_table(quality: int, chrominance: bool = False) -> tuple[int, ...]:
    """The 64 values (natural order) of libjpeg's baseline table for ``quality``: K.1, or K.2 when
    ``chrominance``."""
    scale = ijg_scale(quality)
    base = CHROMINANCE if chrominance else LUMINANCE
    return tuple(min(max((value * scale + 50) // 100, 1), 255) for value in base)


# (100 qualities, 2 roles: luminance, chrominance, 64 values), row q - 1 for quality q.
_QUALITIES = np.arange(1, 101)
_SCALED = np.array([[ijg_table(q, False), ijg_table(q, True)] for q in _QUALITIES], dtype=np.int64)


def estimate(data: bytes) -> JpegQuality | None:
    """The IJG quality nearest to the quantisation tables of the JPEG ``data``.

    None when ``data`` is not a JPEG Pillow can open (PNG, garbage, empty, a file cut short inside its
    headers) or defines no quantisation table; never raises. Only the headers are read: no pixel is
    decoded, so a file whose scan data are cut short still gets its estimate.
    """
    try:
        data = bytes(data)
        if not data.startswith(b"\xff\xd8\xff"):
            return None
        # The plugin class directly rather than Image.open: the same header parser, without trying other
        # formats and without the decompression-bomb check (no pixels are decoded here).
        image = JpegImagePlugin.JpegImageFile(io.BytesIO(data))
        try:
            quantization = dict(image.quantization or {})
            layer = list(getattr(image, "layer", None) or [])
            get_sampling = getattr(JpegImagePlugin, "get_sampling", None)
            sampling = get_sampling(image) if get_sampling is not None else None
        finally:
            image.close()
        return _estimate(quantization, layer, _SAMPLING_LABELS.get(sampling))
    except Exception:  # any input: a malformed file is "no estimate", never an error of the caller
        return None


def _estimate(quantization: dict[int, list[int]], layer: list[tuple[int, int, int, int]],
              subsampling: str | None) -> JpegQuality | None:
    ids = sorted(table_id for table_id, values in quantization.items() if len(values) == 64)
    if not ids:
        return None
    # The luma table is the one the first component uses (Pillow's layer: id, h, v, table); else id 0.
    luma_id = layer[0][3] if layer and layer[0][3] in ids else ids[0]
    values = np.array([quantization[table_id] for table_id in ids], dtype=np.int64)  # (n, 64)
    roles = np.array([0 if table_id == luma_id else 1 for table_id in ids])
    difference = np.abs(_SCALED[:, roles, :] - values[None])  # (100, n, 64)
    mean = difference.mean(axis=(1, 2))
    largest = difference.max(axis=(1, 2))
    best = int(np.lexsort((-_QUALITIES, largest, mean))[0])
    exact = bool(largest[best] == 0)
    notes = []
    if not exact:
        notes.append("the tables are not libjpeg's scaled standard tables (another encoder or custom "
                     "tables): the nearest IJG quality")
    if int(values.max()) > 255:
        notes.append("values above 255 (16-bit tables, not baseline)")
    return JpegQuality(quality=int(_QUALITIES[best]), exact=exact, error=float(mean[best]),
                       tables=len(ids), subsampling=subsampling, note="; ".join(notes) or None)


def quality_band(quality: int, width: int = 10) -> str:
    """A coarse label for grouping references by JPEG quality: ``"q80-89"`` for 80..89 with ``width=10``.

    Bands start at multiples of ``width`` and are clipped to 1..100: ``q1-9``, ``q10-19``, ...,
    ``q80-89``, and 100 joins the band below it rather than forming one of its own (``q90-100``). A band
    of one quality is labelled ``"q85"`` (``width=1``). Raises ValueError for a quality outside 1..100
    or a width below 1.
    """
    if isinstance(quality, bool) or isinstance(width, bool):
        raise ValueError("quality and width are integers, not booleans")
    quality, width = int(quality), int(width)
    if not 1 <= quality <= 100:
        raise ValueError(f"quality must be in 1..100, got {quality}")
    if width < 1:
        raise ValueError(f"width must be at least 1, got {width}")
    low = quality // width * width
    if low == 100 and width > 1:
        low -= width
    high = min(low + width - 1, 100)
    if high == 99 and width > 1:
        high = 100
    low = max(low, 1)
    return f"q{low}" if low == high else f"q{low}-{high}"
