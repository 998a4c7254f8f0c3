"""The JPEG quality estimated from quantisation tables: files of two independent encoders (Pillow's libjpeg
and simplejpeg's own libjpeg-turbo) at known qualities, tables no IJG quality makes, chroma subsampling,
inputs that are not JPEGs or are cut short, and the coarse quality bands."""

from __future__ import annotations

import io

import numpy as np
import pytest
import simplejpeg
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from latentsweep.descriptors import jpeg_quality
from latentsweep.descriptors.jpeg_quality import JpegQuality, estimate, ijg_table, quality_band

QUALITIES = (30, 50, 75, 85, 95)

# Annex K, table K.1, first two rows, written out here independently of the module.
ANNEX_K_LUMINANCE_ROWS = [16, 11, 10, 16, 24, 40, 51, 61, 12, 12, 14, 19, 26, 58, 60, 55]


def picture(height: int = 48, width: int = 64, seed: int = 0) -> np.ndarray:
    """A smooth gradient with noise: content does not matter, the tables do."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    base = np.stack([x * 255 / width, y * 255 / height, (x + y) * 127 / (width + height)], axis=-1)
    return np.clip(base + rng.normal(0, 20, base.shape), 0, 255).astype(np.uint8)


def pillow_jpeg(array: np.ndarray, **options) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, "JPEG", **options)
    return buffer.getvalue()


def segment_start(data: bytes, marker: bytes) -> int:
    """Offset of the first segment with ``marker`` (e.g. DQT b"\\xff\\xdb") in a JPEG's headers."""
    offset = 2
    while data[offset:offset + 2] != marker:
        offset += 2 + int.from_bytes(data[offset + 2:offset + 4], "big")
    return offset


def segments_end(data: bytes, marker: bytes) -> int:
    """Offset just after the last of the consecutive segments with ``marker``, from the first."""
    offset = segment_start(data, marker)
    while data[offset:offset + 2] == marker:
        offset += 2 + int.from_bytes(data[offset + 2:offset + 4], "big")
    return offset


def test_pillow_reads_tables_in_natural_order_and_quality_50_is_annex_k():
    tables = Image.open(io.BytesIO(pillow_jpeg(picture(), quality=50))).quantization
    assert list(tables[0][:16]) == ANNEX_K_LUMINANCE_ROWS
    assert tuple(tables[0]) == jpeg_quality.LUMINANCE == ijg_table(50)
    assert tuple(tables[1]) == jpeg_quality.CHROMINANCE == ijg_table(50, chrominance=True)


@pytest.mark.parametrize("quality", QUALITIES)
@pytest.mark.parametrize("subsampling", ["4:2:0", "4:4:4"])
def test_pillow_files_give_their_quality_exactly(quality, subsampling):
    result = estimate(pillow_jpeg(picture(), quality=quality, subsampling=subsampling))
    assert result == JpegQuality(quality=quality, exact=True, error=0.0, tables=2, subsampling=subsampling)


def test_every_pillow_quality_is_recovered_exactly():
    array = picture(16, 16)
    for quality in range(1, 101):
        result = estimate(pillow_jpeg(array, quality=quality))
        assert (result.quality, result.exact, result.error) == (quality, True, 0.0), quality


@pytest.mark.parametrize("quality", QUALITIES)
@pytest.mark.parametrize("subsampling", ["420", "444"])
def test_second_encoder_files_give_their_quality_exactly(quality, subsampling):
    # simplejpeg bundles its own libjpeg-turbo (TurboJPEG API), which scales with jpeg_set_quality like
    # Pillow's libjpeg: the same rounding, so the quality is recovered exactly, not within one.
    data = simplejpeg.encode_jpeg(picture(), quality=quality, colorsubsampling=subsampling)
    result = estimate(data)
    assert result.quality == quality
    assert result.exact and result.error == 0.0
    assert result.tables == 2
    assert result.subsampling == f"{subsampling[0]}:{subsampling[1]}:{subsampling[2]}"
    assert result.note is None


def test_every_second_encoder_quality_is_recovered_exactly():
    array = picture(16, 16)
    for quality in range(1, 101):
        result = estimate(simplejpeg.encode_jpeg(array, quality=quality, colorsubsampling="420"))
        assert (result.quality, result.exact, result.error) == (quality, True, 0.0), quality


def test_greyscale_has_one_table_and_no_subsampling():
    for data in (pillow_jpeg(picture()[:, :, 0], quality=60),
                 simplejpeg.encode_jpeg(picture()[:, :, :1].copy(), quality=60, colorspace="GRAY",
                                        colorsubsampling="Gray")):
        result = estimate(data)
        assert (result.quality, result.exact, result.tables, result.subsampling) == (60, True, 1, None)


def test_subsampling_is_reported():
    array = picture()
    assert estimate(pillow_jpeg(array, quality=80, subsampling="4:2:0")).subsampling == "4:2:0"
    assert estimate(pillow_jpeg(array, quality=80, subsampling="4:4:4")).subsampling == "4:4:4"
    assert estimate(pillow_jpeg(array, quality=80, subsampling="4:2:2")).subsampling == "4:2:2"
    # The labels are what Pillow's save accepts back: a reference re-saved the same way gets the same.
    assert estimate(pillow_jpeg(array, quality=80, subsampling=estimate(
        pillow_jpeg(array, quality=80, subsampling=2)).subsampling)).subsampling == "4:2:0"


def test_explicit_ijg_tables_are_exact_and_a_single_changed_value_is_not():
    array = picture()
    luminance, chrominance = list(ijg_table(80)), list(ijg_table(80, chrominance=True))
    result = estimate(pillow_jpeg(array, qtables=[luminance, chrominance]))
    assert (result.quality, result.exact, result.error) == (80, True, 0.0)
    luminance[10] += 1
    result = estimate(pillow_jpeg(array, qtables=[luminance, chrominance]))
    assert (result.quality, result.exact) == (80, False)
    assert result.error == pytest.approx(1 / 128)
    assert "not libjpeg's" in result.note


@pytest.mark.parametrize("tables", [
    [[37] * 64, [37] * 64],                                   # flat: no frequency weighting at all
    [list(range(1, 65)), list(range(64, 0, -1))],             # ramps, the chroma one reversed
    [[2] * 32 + [200] * 32, [200] * 32 + [2] * 32],           # halves
])
def test_custom_tables_far_from_ijg_are_not_exact(tables):
    data = pillow_jpeg(picture(), qtables=tables)
    assert [list(t) for t in Image.open(io.BytesIO(data)).quantization.values()] == tables  # natural order
    result = estimate(data)
    assert not result.exact
    assert result.error > 1.0
    assert 1 <= result.quality <= 100
    assert "not libjpeg's" in result.note


def test_other_encoders_tables_give_the_nearest_quality():
    # Pillow's presets are Photoshop's "Save for Web" tables, not IJG-scaled ones.
    for preset in ("web_low", "web_high", "maximum"):
        result = estimate(pillow_jpeg(picture(), quality=preset))
        assert not result.exact and result.error > 0
    assert estimate(pillow_jpeg(picture(), quality="web_low")).quality < estimate(
        pillow_jpeg(picture(), quality="web_high")).quality


def test_sixteen_bit_tables_are_noted():
    result = estimate(pillow_jpeg(picture(), qtables=[[300] * 64, [300] * 64]))
    assert not result.exact
    assert "16-bit" in result.note


def test_not_a_jpeg_gives_none():
    buffer = io.BytesIO()
    Image.fromarray(picture()).save(buffer, "PNG")
    rng = np.random.default_rng(3)
    for data in (buffer.getvalue(), b"", b"\xff", b"\xff\xd8", b"\xff\xd8\xff", rng.bytes(1000),
                 b"\xff\xd8\xff" + rng.bytes(1000), bytearray(b"GIF89a"), None, 42, "text"):
        assert estimate(data) is None


def test_truncated_files_never_raise():
    data = pillow_jpeg(picture(), quality=85)
    after_tables = segments_end(data, b"\xff\xdb")
    cuts = {"before DQT": segment_start(data, b"\xff\xdb"), "inside DQT": segment_start(data, b"\xff\xdb") + 20,
            "after DQT": after_tables, "inside SOF": segment_start(data, b"\xff\xc0") + 6}
    for name, cut in cuts.items():
        result = estimate(data[:cut])
        assert result is None or (isinstance(result, JpegQuality) and result.note), name
    # Cut before the frame header, Pillow cannot open it: no estimate.
    assert estimate(data[:after_tables]) is None
    # Cut inside the entropy-coded data, the headers are complete: the estimate stands (no pixel decoded).
    scan = segment_start(data, b"\xff\xda")
    assert estimate(data[:scan + 40]).quality == 85


def test_bytes_like_inputs_are_accepted():
    data = pillow_jpeg(picture(), quality=70)
    assert estimate(bytearray(data)).quality == estimate(memoryview(data)).quality == 70


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(position=st.integers(0, 10_000), replacement=st.binary(min_size=1, max_size=8),
       cut=st.integers(0, 10_000))
def test_corrupted_files_never_raise(position, replacement, cut):
    data = bytearray(pillow_jpeg(picture(16, 16), quality=75))
    position %= len(data)
    data[position:position + len(replacement)] = replacement
    result = estimate(bytes(data[:cut % (len(data) + 1)]))
    assert result is None or (isinstance(result, JpegQuality) and 1 <= result.quality <= 100)


@pytest.mark.parametrize("quality, width, band", [
    (85, 10, "q80-89"), (80, 10, "q80-89"), (89, 10, "q80-89"), (90, 10, "q90-100"), (100, 10, "q90-100"),
    (1, 10, "q1-9"), (9, 10, "q1-9"), (10, 10, "q10-19"), (97, 5, "q95-100"), (94, 5, "q90-94"),
    (85, 1, "q85"), (100, 1, "q100"), (50, 100, "q1-100"), (100, 100, "q1-100"), (99, 7, "q98-100"),
])
def test_quality_band(quality, width, band):
    assert quality_band(quality, width) == band


def test_quality_band_covers_every_quality_once_in_contiguous_bands():
    for width in (1, 3, 5, 7, 10, 25):
        labels = [quality_band(q, width) for q in range(1, 101)]
        assert labels == sorted(labels, key=labels.index)  # each band is one contiguous run
        for label in set(labels):
            low, _, high = label[1:].partition("-")
            members = [q for q, other in zip(range(1, 101), labels) if other == label]
            assert members == list(range(int(low), int(high or low) + 1))


@pytest.mark.parametrize("quality, width", [(0, 10), (101, 10), (50, 0), (True, 10), (50, False)])
def test_quality_band_refuses_out_of_range(quality, width):
    with pytest.raises(ValueError):
        quality_band(quality, width)
