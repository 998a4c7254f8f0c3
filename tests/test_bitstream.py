"""Bitstreams: the .jai container and its forensic field, rate against the model's estimate, exact
latents and pixels after decoding, refusal of damaged files (fuzzed), compress/decompress jobs on real
Ray, and bitstreams as an ingest source whose vectors equal those of the original images (the pixel
descriptors within their 8-bit quantisation)."""

from __future__ import annotations

import dataclasses
import os
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings as hypothesis_settings, strategies as st
from PIL import Image

from processes import local_env
from latentsweep import storage
from latentsweep.bitstream import container, forensic
from latentsweep.bitstream.codec import BitstreamCodec, bits_per_pixel
from latentsweep.bitstream.container import BitstreamError
from latentsweep.codec.embed import Embedder
from latentsweep.codec.settings import EmbedSettings
from latentsweep.compress import CodecJob, output_name, run as run_codec
from latentsweep.ingest.decode import Fetched
from latentsweep.ingest.run import IngestJob, run as run_ingest
from latentsweep.schema import DESCRIPTORS
from latentsweep_lab import photos

SELECTED = EmbedSettings(feature_set="selected", device="cpu")
FUZZ = hypothesis_settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@pytest.fixture(scope="module")
def codec():
    torch.set_num_threads(2)
    return BitstreamCodec(Embedder(EmbedSettings(device="cpu", descriptors=False)))


@pytest.fixture(scope="module")
def small(codec):
    """A 72x80 crop of a held-out photo and its bitstream."""
    image = np.ascontiguousarray(photos.load("rocket")[100:172, 200:280])
    return image, codec.compress(image, "v1")[0]


# ---- the container ----------------------------------------------------------------------------

def test_container_round_trip_and_layout(small):
    bitstream = container.unpack(small[1])
    assert (bitstream.height, bitstream.width, bitstream.codec) == (72, 80, "jpegai-bop")
    assert bitstream.source_id == container.source_id("v1") and bitstream.adapters_id == b""
    assert len(bitstream.streams) == 4 and container.pack(bitstream) == small[1]
    assert small[1][:8] == b"\x8aLSJAI\r\n" and small[1][8] == container.FORMAT_VERSION == 2
    assert small[1][9] == container.FORENSIC_FLAG
    assert struct.unpack("<I", small[1][-4:])[0] == zlib.crc32(small[1][:-4])
    assert forensic.versions(bitstream) == {name: version for name, (_, version) in DESCRIPTORS.items()}


# what docs/bitstreams.md ("The forensic field") says each descriptor costs, and the field's 7 bytes of framing
FIELD_BYTES = {"fingerprint": 275, "residual_spectrum": 62, "self_description": 562}


def test_forensic_field_bytes_per_descriptor_are_the_documented_ones(small):
    bitstream = container.unpack(small[1])
    bare = len(container.pack(dataclasses.replace(bitstream, descriptors={})))
    assert len(small[1]) - bare == 7 + sum(FIELD_BYTES.values()) == 906
    for name, (dimension, version) in DESCRIPTORS.items():
        alone = dataclasses.replace(bitstream, descriptors={name: bitstream.descriptors[name]})
        assert len(container.pack(alone)) - bare - 7 == FIELD_BYTES[name]
        assert FIELD_BYTES[name] == 1 + len(name) + 1 + len(version) + 2 + 8 + dimension  # the layout's sum


def test_forensic_field_holds_the_original_pixels_descriptors_to_8_bits(small):
    from latentsweep.descriptors import describe

    carried = forensic.carried(container.unpack(small[1]), DESCRIPTORS)
    for name, vector in describe(small[0]).items():
        step = (vector.max() - vector.min()) / 255
        assert np.abs(carried[name] - vector).max() <= step / 2 * 1.001, name
    flat = forensic.values(forensic.quantise("1", np.full(5, 0.25, np.float32)))
    assert np.array_equal(flat, np.full(5, 0.25, np.float32))


def version_1(data: bytes) -> bytes:
    """A file without a forensic field as latentsweep wrote it before the field (format version 1):
    the same bytes but the version and the CRC."""
    bitstream = container.unpack(data)
    body = container.pack(dataclasses.replace(bitstream, descriptors={}))[:-4]
    body = body[:8] + b"\x01" + body[9:]
    return body + struct.pack("<I", zlib.crc32(body))


def damaged_field(data: bytes) -> bytes:
    """``data`` with one code of its forensic field changed and the file's CRC made to match again:
    only the field's own CRC-32 can see it."""
    bitstream = container.unpack(data)
    name = next(iter(bitstream.descriptors))
    codes = bytes(bitstream.descriptors[name].codes)
    at = data.index(codes)
    body = data[:at] + bytes([codes[0] ^ 0x01]) + data[at + 1:-4]
    return body + struct.pack("<I", zlib.crc32(body))


def test_version_1_files_decode_without_a_field_and_damaged_fields_are_refused(codec, small):
    old = version_1(small[1])
    assert old[8] == 1 and container.unpack(old).descriptors == {}
    decoded, _ = codec.latents(old)
    expected, _ = codec.latents(small[1])
    assert all(torch.equal(decoded[name], expected[name]) for name in expected)
    with pytest.raises(BitstreamError, match="forensic field fails its CRC-32") as caught:
        container.unpack(damaged_field(small[1]))
    assert caught.value.error_type == "bad_bitstream"
    # a field whose CRC holds but whose vector has another dimension at this latentsweep's version
    other = container.unpack(small[1])
    other.descriptors["residual_spectrum"].codes = bytes(3)
    with pytest.raises(BitstreamError, match="residual_spectrum .* 3 values, not 32"):
        codec.latents(container.pack(other))


def test_foreign_versions_and_damaged_files_are_refused_with_a_reason(codec, small):
    data = small[1]
    with pytest.raises(BitstreamError, match="no .jai magic"):
        codec.latents(b"\x89PNG\r\n\x1a\n" + data[8:])
    newer = bytearray(data)
    newer[8] = 3
    with pytest.raises(BitstreamError, match="format version 3"):
        codec.latents(bytes(newer))
    with pytest.raises(BitstreamError, match="truncated") as caught:
        codec.latents(data[:40])
    assert caught.value.error_type == "truncated"
    flipped = bytearray(data)
    flipped[len(data) // 2] ^= 0x10
    with pytest.raises(BitstreamError, match="CRC-32"):
        codec.latents(bytes(flipped))
    with pytest.raises(BitstreamError, match="max-pixels") as caught:
        codec.latents(data, max_pixels=1000)
    assert caught.value.error_type == "too_large"
    # a well-formed file made with other weights, or with adapters: refused, saying what to pass
    other = container.unpack(data)
    other.weights_id = bytes(16)
    with pytest.raises(BitstreamError, match="--weights"):
        codec.latents(container.pack(other))
    other = container.unpack(data)
    other.adapters_id = b"\x01" * 16
    with pytest.raises(BitstreamError, match="adapters"):
        codec.latents(container.pack(other))


@FUZZ
@given(cut=st.integers(min_value=0, max_value=10_000))
def test_fuzz_truncation(codec, small, cut):
    data = small[1]
    with pytest.raises(BitstreamError):
        codec.latents(data[:cut % len(data)])


@FUZZ
@given(edits=st.lists(st.tuples(st.integers(0, 10_000), st.integers(1, 255)), min_size=1, max_size=4),
       insert=st.booleans())
def test_fuzz_corruption(codec, small, edits, insert):
    data = bytearray(small[1])
    for position, value in edits:
        if insert:
            data.insert(position % len(data), value)
        else:
            data[position % len(data)] ^= value
    assume(bytes(data) != small[1])  # two flips of one byte can cancel
    with pytest.raises(BitstreamError):
        codec.latents(bytes(data))


@hypothesis_settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(stream=st.integers(0, 3), words=st.lists(st.integers(0, 2**32 - 1), max_size=64))
def test_fuzz_garbage_streams_with_valid_crc(codec, small, stream, words):
    """A file whose container is intact (right lengths, right CRC) but whose coded words are garbage:
    the range decoder or the symbols' checksum refuses it, never returns wrong latents."""
    bitstream = container.unpack(small[1])
    bitstream.streams[stream].payload = np.array(words, "<u4").tobytes()
    with pytest.raises(BitstreamError):
        codec.latents(container.pack(bitstream))


@FUZZ
@given(data=st.binary(max_size=300))
def test_fuzz_foreign_bytes(codec, data):
    with pytest.raises(BitstreamError):
        codec.latents(container.MAGIC[:len(data) % 9] + data)


# ---- rate and exactness on the held-out photos ------------------------------------------------

def test_held_out_rate_exact_latents_and_pixels(codec):
    """Measured bpp (the whole file, without the forensic field: a constant apart from the latents) within
    3% of the model's estimate on every held-out photo; the decoded latents equal the model's own to the
    bit; decompressed pixels equal its reconstruction."""
    model = codec.model
    for name in photos.HELD_OUT:
        image = photos.load(name)
        height, width = image.shape[:2]
        data, tensors = codec.compress(image, "v1", descriptors=False)
        with torch.inference_mode():
            estimated = model.bits(tensors).item() / (height * width)
        measured = bits_per_pixel(data, height, width)
        assert abs(measured / estimated - 1) < 0.03, (name, measured, estimated)
        decoded, _ = codec.latents(data)
        assert set(decoded) == {f"{t}_{b}" for t in ("z_hat", "psi", "mu", "scale", "residual_quant", "residual",
                                                     "y_hat") for b in ("luma", "chroma")}
        for key, value in decoded.items():
            assert torch.equal(value, tensors[key]), (name, key)
        if name == "clock":  # the synthesis on the smallest photo (seconds on 2 cores)
            assert np.array_equal(codec.decompress(data), model.pixels(tensors, height, width))


def test_a_file_the_float32_levels_miss_is_decoded_again_at_the_float64_levels(codec, small):
    """The decoder's first levels come from the float32 log-scales; where one misses the encoder's level,
    the residuals fail their checksum and the file is decoded again at the float64 levels, to the very
    symbols of a decoding that got every level right."""
    from latentsweep.bitstream import coding

    with torch.inference_mode():  # as latents_batch runs
        parsed = codec._decode_z(small[1], None, False)
        hyper = codec._hyper([parsed[1]])
        [expected] = codec._decode_residuals([parsed], hyper)
        log_scale = hyper["luma"]["log_scale"].clone()
        level = coding.level_of(log_scale[0, 0, 0, 0].double().numpy())
        far = coding.SCALE_MAX if level < coding.SCALE_LEVELS // 2 else coding.SCALE_MIN  # another level
        log_scale[0, 0, 0, 0] = float(np.log(far))
        missed = {**hyper, "luma": {**hyper["luma"], "log_scale": log_scale}}
        rough = {branch: coding.level_of(missed[branch]["log_scale"].double().numpy())[0] for branch in missed}
        assert isinstance(codec._decode_residual(parsed, rough), BitstreamError)
        [again] = codec._decode_residuals([parsed], missed)
    assert set(again) == set(expected) and all(torch.equal(again[name], expected[name]) for name in expected)


DECODE_ELSEWHERE = """
import sys, numpy as np, torch
torch.set_num_threads(1)
from latentsweep.bitstream.codec import BitstreamCodec
from latentsweep.codec.embed import Embedder
from latentsweep.codec.settings import EmbedSettings
codec = BitstreamCodec(Embedder(EmbedSettings(device="cpu", descriptors=False)))
tensors, _ = codec.latents(open(sys.argv[1], "rb").read())
np.save(sys.argv[2], tensors["y_hat_luma"].numpy())
"""


def test_another_process_decodes_the_same_latents(codec, small, tmp_path):
    """Distributions come from integers only: a fresh process with another thread count decodes the
    file (its symbol checksums pass) to the latents of this one."""
    (tmp_path / "a.jai").write_bytes(small[1])
    subprocess.run([sys.executable, "-c", DECODE_ELSEWHERE, str(tmp_path / "a.jai"), str(tmp_path / "y.npy")],
                   check=True, env=local_env(), timeout=120)
    here, _ = codec.latents(small[1])
    np.testing.assert_allclose(np.load(tmp_path / "y.npy"), here["y_hat_luma"].numpy(), atol=1e-6)


# ---- names ------------------------------------------------------------------------------------

def test_output_names_keep_relative_path_and_stem():
    root = storage.Location.parse("/data/src")
    assert output_name(root, "/data/src/a/b/x.y.png", ".jai") == "a/b/x.y.jai"
    assert output_name(root, "/data/src/top.webp", ".jai") == "top.jai"
    assert output_name(root, "/elsewhere/p.png", ".jai") == "_external/elsewhere/p.jai"
    bucket = storage.Location.parse("s3://b/corpus")
    assert output_name(bucket, "s3://b/corpus/sd/1.png", ".jai") == "sd/1.jai"
    assert output_name(bucket, "s3://other/k/1.png", ".jai") == "_external/other/k/1.jai"


# ---- the jobs and ingest, on Ray ----------------------------------------------------------------

@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("bitstream-corpus") / "src"
    (root / "sd" / "night").mkdir(parents=True)
    (root / "gan").mkdir()
    Image.fromarray(photos.load("coffee")[:96, :128]).save(root / "sd" / "night" / "a.png")
    Image.fromarray(photos.load("rocket")[:80, :72]).save(root / "sd" / "b.jpg", quality=92)
    Image.fromarray(photos.load("astronaut")[:64, :112]).save(root / "gan" / "c.webp", lossless=True)
    Image.fromarray(photos.load("chelsea")[:70, :90]).save(root / "gan" / "c.png")  # c.webp's stem: a clash
    (root / "gan" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 20)
    return root


def test_compress_resume_decompress_and_ingest_bitstreams(corpus, tmp_path, ray_session, codec):
    bits, pngs = tmp_path / "bits", tmp_path / "png"
    summary = run_codec(CodecJob("compress", str(corpus), str(bits), device="cpu", quiet=True))
    assert summary.inputs == 5 and summary.written == 3
    assert summary.errors == {"name_clash": 1, "not_image": 1}
    files = sorted(str(p.relative_to(bits)) for p in bits.rglob("*") if p.is_file())
    assert files == ["gan/c.jai", "sd/b.jai", "sd/night/a.jai"]  # relative path and stem kept
    before = {name: (bits / name).stat().st_mtime_ns for name in files}

    # resume: a rerun keeps every valid output; a changed input and a damaged output are redone
    Image.fromarray(photos.load("coffee")[:96, :128][::-1].copy()).save(corpus / "sd" / "night" / "a.png")
    (bits / "sd" / "b.jai").write_bytes((bits / "sd" / "b.jai").read_bytes()[:-9])
    again = run_codec(CodecJob("compress", str(corpus), str(bits), device="cpu", quiet=True))
    assert (again.written, again.already_done) == (2, 1)
    assert (bits / "gan" / "c.jai").stat().st_mtime_ns == before["gan/c.jai"]
    assert (bits / "sd" / "night" / "a.jai").stat().st_mtime_ns != before["sd/night/a.jai"]
    assert not list(bits.rglob(".tmp-*")) and not (bits / "_lock").exists()

    # the files written by a Ray actor decode here to this process's own latents of the originals
    for name, original in (("sd/night/a.jai", corpus / "sd" / "night" / "a.png"), ("gan/c.jai", None)):
        decoded, header = codec.latents((bits / name).read_bytes())
        if original is not None:
            image = np.asarray(Image.open(original).convert("RGB"))
            own, _ = codec.embedder.exported([image])
            assert (header.height, header.width) == image.shape[:2]
            for key in ("z_hat_luma", "residual_quant_chroma"):
                assert torch.equal(decoded[key], own[key])

    # decompress: PNGs under the same relative names, the model's reconstruction of the latents (made
    # in an actor with one thread: float sums in another order may move a pixel by one level)
    decompressed = run_codec(CodecJob("decompress", str(bits), str(pngs), device="cpu", quiet=True))
    assert decompressed.written == 3 and not decompressed.errors
    out = np.asarray(Image.open(pngs / "sd" / "night" / "a.png")).astype(int)
    tensors, header = codec.latents((bits / "sd" / "night" / "a.jai").read_bytes())
    expected = codec.model.pixels(tensors, header.height, header.width).astype(int)
    assert out.shape == expected.shape and np.abs(out - expected).max() <= 1
    assert (out != expected).mean() < 0.01
    again = run_codec(CodecJob("decompress", str(bits), str(pngs), device="cpu", quiet=True))
    assert (again.written, again.already_done) == (0, 3)

    # ingest: the bitstreams as a source, against the original images; beside them the same file as
    # version 1 wrote it (no field), one whose field records another residual_spectrum version, and one
    # whose field was damaged
    (bits / "sd" / "junk.jai").write_bytes(b"not a bitstream")
    coded = (bits / "sd" / "b.jai").read_bytes()
    (bits / "sd" / "old.jai").write_bytes(version_1(coded))
    stale = container.unpack(coded)
    stale.descriptors["residual_spectrum"].version = "0"
    (bits / "sd" / "stale.jai").write_bytes(container.pack(stale))
    (bits / "sd" / "damaged.jai").write_bytes(damaged_field(coded))
    run_ingest(IngestJob(str(bits), str(tmp_path / "emb-bits"), SELECTED, shard_size=8, quiet=True))
    run_ingest(IngestJob(str(corpus), str(tmp_path / "emb-img"), SELECTED, shard_size=8, quiet=True))
    rows_bits, errors_bits = _rows(tmp_path / "emb-bits", bits)
    rows_img, _ = _rows(tmp_path / "emb-img", corpus)
    assert sorted(rows_bits) == ["gan/c", "sd/b", "sd/night/a", "sd/old", "sd/stale"]
    assert errors_bits == {"sd/junk": "bad_bitstream", "sd/damaged": "bad_bitstream"}
    assert all(rows_bits[key][name] is not None for key in ("gan/c", "sd/b", "sd/night/a") for name in DESCRIPTORS)
    assert all(rows_bits["sd/old"][name] is None for name in DESCRIPTORS)
    assert rows_bits["sd/stale"]["residual_spectrum"] is None and rows_bits["sd/stale"]["fingerprint"] is not None
    for key, row in rows_bits.items():
        image_row = rows_img["gan/c.png" if key == "gan/c" else {"sd/old": "sd/b", "sd/stale": "sd/b"}.get(key, key)]
        assert row["source"] == "bitstream" and image_row["source"] == "image"
        for name in DESCRIPTORS:  # from the field: the original pixels' descriptors, to 8 bits a value
            if row[name] is not None:
                ingested = np.asarray(image_row[name], np.float32)
                step = (ingested.max() - ingested.min()) / 255
                np.testing.assert_allclose(row[name], ingested, rtol=0, atol=step / 2 * 1.001 + 1e-5,
                                           err_msg=f"{key} {name}")
        assert (row["width"], row["height"]) == (image_row["width"], image_row["height"])
        assert (row["codec"], row["weights_digest"]) == (image_row["codec"], image_row["weights_digest"])
        for column in ("y_hat_luma", "y_hat_chroma", "residual_luma", "residual_chroma",
                       "residual_quant_luma", "residual_quant_chroma"):
            np.testing.assert_allclose(row[column], image_row[column], atol=1e-5, err_msg=f"{key} {column}")


def test_compress_keeps_an_output_only_with_the_forensic_field_it_would_write(small, tmp_path):
    """Resume: a file without the field is redone by a run that writes one, and the other way round."""
    from latentsweep.compress import CodecWorker

    source, target = tmp_path / "a.png", str(tmp_path / "out" / "a.jai")
    Image.fromarray(small[0]).save(source)
    version = storage.info(str(source)).version
    workers = {field: CodecWorker("compress", None, "cpu", 1, 10**6, 16, False, descriptors=field)
               for field in (True, False)}
    for field, status in ((True, "written"), (True, "done"), (False, "written"), (False, "done"), (True, "written")):
        assert workers[field].one(str(source), version, target)["status"] == status, (field, status)
        assert bool(container.unpack(Path(target).read_bytes()).descriptors) == field


def _rows(out: Path, root: Path) -> tuple[dict, dict]:
    """Embedding rows by relative path without suffix (a suffix kept where two stems clash), errors."""
    location = storage.Location.parse(str(out))
    embeddings = storage.read_table(location.join("embeddings")).to_pylist()
    errors = storage.read_table(location.join("errors")).to_pylist()
    stems = [os.path.splitext(os.path.relpath(row["uri"], root))[0] for row in embeddings]
    rows = {}
    for stem, row in zip(stems, embeddings):
        key = os.path.relpath(row["uri"], root) if stems.count(stem) > 1 else stem
        rows[key] = row
    return rows, {os.path.splitext(os.path.relpath(e["uri"], root))[0]: e["error_type"] for e in errors}


def test_feature_set_all_is_refused_for_bitstreams_saying_why(small):
    from latentsweep.ingest.encode import Encoder

    encoder = Encoder(EmbedSettings(feature_set="all", device="cpu", descriptors=False))
    item = Fetched("x.jai", latents=small[1], source="bitstream", width=80, height=72)
    encoder.encode([item])
    assert item.error_type == "bad_bitstream"
    assert "y_luma, z_luma, y_chroma, z_chroma" in item.message and "--feature-set selected" in item.message


def test_a_batch_of_bitstreams_of_several_sizes_decodes_as_one_at_a_time_and_as_the_images(codec):
    """One ingest batch of bitstreams of three padded sizes (one of them a lone file): the vectors equal
    those of each file ingested alone to the bit, and those of ingesting the original images to 1e-5."""
    from latentsweep.ingest.encode import Encoder

    crops = [photos.load("rocket")[:72, :80], photos.load("coffee")[:96, :128], photos.load("clock")[:130, :70],
             photos.load("rocket")[100:172, 200:280], photos.load("chelsea")[:200, :150],
             photos.load("coffee")[40:240, 10:160]]
    crops = [np.ascontiguousarray(crop) for crop in crops]
    files = [codec.compress(crop, "v1")[0] for crop in crops]
    encoder = Encoder(SELECTED)

    def bitstreams() -> list[Fetched]:
        return [Fetched(f"{i}.jai", latents=data, source="bitstream", height=crop.shape[0], width=crop.shape[1])
                for i, (data, crop) in enumerate(zip(files, crops))]

    items = bitstreams()
    together = encoder.encode(items)
    assert not any(item.error_type for item in items), [item.message for item in items]
    for i, item in enumerate(bitstreams()):
        alone = encoder.encode([item])
        for column, values in together.items():
            assert np.array_equal(values[i], alone[column][0]), (i, column)
    images = [Fetched(f"{i}.png", image=crop, height=crop.shape[0], width=crop.shape[1])
              for i, crop in enumerate(crops)]
    from_images = encoder.encode(images)
    for column in encoder.embedder.columns:  # not the pixel descriptors, which a bitstream lacks
        np.testing.assert_allclose(together[column], from_images[column], atol=1e-5, err_msg=column)
    # the codec's own batch: every decoded tensor, not only the pooled ones, as one at a time; a file
    # whose residuals fail their checksum is refused in its place, and its batch decodes without it
    damaged = container.unpack(files[0])
    damaged.streams[2].payload = damaged.streams[2].payload[::-1]
    *decoded, refused = codec.latents_batch([*files, container.pack(damaged)])
    assert isinstance(refused, BitstreamError)
    for data, (tensors, _) in zip(files, decoded):
        alone, _ = codec.latents(data)
        assert all(torch.equal(tensors[name], alone[name]) for name in alone)


def test_an_ingest_of_bitstreams_only_refuses_feature_sets_they_cannot_give(small, tmp_path):
    """--feature-set all over a source of .jai files only: exit 2 and one line saying why and what to
    use, before anything is written. A source that also holds images keeps the per-item error rows."""
    from processes import refused_before_writing, run_command

    source = tmp_path / "bits"
    (source / "sd").mkdir(parents=True)
    (source / "a.jai").write_bytes(small[1])
    (source / "sd" / "b.JAI").write_bytes(small[1])
    out = tmp_path / "out"
    command = [sys.executable, "-m", "latentsweep", "ingest", str(source), "--out", str(out), "--device", "cpu",
               "--feature-set", "all", "--quiet"]
    said = refused_before_writing(command, out)
    assert "every input" in said and "y_luma, z_luma" in said and "--feature-set selected or 2lat" in said
    Image.fromarray(photos.load("chelsea")[:64, :80]).save(source / "c.png")
    planned = run_command(command + ["--dry-run"])
    assert planned.returncode == 0, planned.stderr[-2000:]


def test_compress_command_line_and_s3(s3_env, ray_session):
    """compress s3:// -> s3:// through the command (in this process, on the tests' Ray): exit code 1
    with a line naming the bad input, the bitstream under its relative name, nothing else written;
    ``--no-descriptors`` leaves the file without a forensic field."""
    import io

    from typer.testing import CliRunner

    from latentsweep.cli import app

    client, bucket = s3_env["client"], s3_env["bucket"]
    buffer = io.BytesIO()
    Image.fromarray(photos.load("chelsea")[:64, :80]).save(buffer, format="PNG")
    client.put_object(Bucket=bucket, Key="src/cat/one.png", Body=buffer.getvalue())
    client.put_object(Bucket=bucket, Key="src/cat/bad.png", Body=b"not an image")
    result = CliRunner().invoke(app, ["compress", "-q", f"s3://{bucket}/src", "--out", f"s3://{bucket}/bits",
                                      "--device", "cpu", "--no-descriptors"])
    assert result.exit_code == 1, result.output
    assert "cat/bad.png: not_image" in result.stderr and "written=1" in result.stdout
    data = client.get_object(Bucket=bucket, Key="bits/cat/one.jai")["Body"].read()
    assert container.unpack(data).width == 80 and not container.unpack(data).descriptors
    keys = [item["Key"] for item in client.list_objects_v2(Bucket=bucket, Prefix="bits/").get("Contents", [])]
    assert keys == ["bits/cat/one.jai"]
