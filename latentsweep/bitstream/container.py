"""The ``.jai`` container: one coded image, what decodes it, and its entropy-coded streams.

Layout (integers little-endian; ``varint`` = unsigned LEB128; documented in docs/bitstreams.md, "The
container")::

    magic            8 bytes  b"\x8aLSJAI\r\n" (a high-bit byte and CR LF, as PNG does: a file mangled
                              by a 7-bit or newline-converting transfer fails here)
    format version   u8       2 (version 1, the same without flags and forensic field, is still read)
    flags            u8       bit 0: a forensic field follows the header; the other bits are 0
    header length    u16      H
    header           H bytes  varint height, varint width (the image; the latents cover it padded
                              to 64); u8-prefixed codec name (ASCII); u8-prefixed weights id; u8-prefixed
                              adapters id (empty: none); 8 bytes entropy-model id; 8 bytes source id
    forensic field   (flag bit 0) u16 length F; F bytes: u8 count, then per descriptor a u8-prefixed
                              name and version (ASCII), u16 dimension D, f32 low, f32 high, D bytes
                              of codes; u32 CRC-32 of the F bytes
    stream count     u8       S (4)
    S streams        each     u32 CRC-32 of the stream's decoded symbols (int32 LE), varint payload
                              length P (a multiple of 4), P bytes: the range coder's 32-bit words
    CRC-32           u32      of every byte before it

Ids are digests cut short: the weights id is the first 16 bytes of the checkpoint's SHA-256 (its ASCII
name where the digest is not hex, e.g. ``untrained-seed0``), the entropy-model id the first 8 bytes of
the SHA-256 of the coder's integer tables (``codec/coding.py``), the source id the first 8 bytes of
the SHA-256 of the input's version (ETag or mtime when it was compressed: a rerun skips an output whose
source id matches). Streams, in order: z_hat luma, z_hat chroma, residual_quant luma, residual_quant
chroma. The forensic field holds the original image's pixel descriptors, 8 bits a value
(``bitstream/forensic.py``): ingest fills the descriptor columns of a bitstream's row from it without
pixels. :func:`unpack` checks everything it can before any decoding: a truncated, corrupt or foreign
file is a :class:`BitstreamError`, never an exception of another type.
"""

from __future__ import annotations

import hashlib
import struct
import zlib
from dataclasses import dataclass, field

from latentsweep.errors import UsageError

MAGIC = b"\x8aLSJAI\r\n"
FORMAT_VERSION = 2
READ_VERSIONS = (1, 2)
FORENSIC_FLAG = 0x01
SUFFIX = ".jai"
STREAM_NAMES = ("z_hat luma", "z_hat chroma", "residual_quant luma", "residual_quant chroma")
MAX_SIDE = 1 << 20  # sanity bound on the header's size; the caller's max_pixels guard comes on top


class BitstreamError(UsageError):
    """A file that is not a complete, intact ``.jai`` bitstream this latentsweep can decode.

    ``error_type`` is the ingest error type: ``truncated``, ``too_large``, or ``bad_bitstream``."""

    def __init__(self, message: str, error_type: str = "bad_bitstream"):
        super().__init__(message)
        self.error_type = error_type

    def __reduce__(self):
        return type(self), (str(self), self.error_type)


@dataclass
class Stream:
    crc: int         # CRC-32 of the decoded symbols as int32: a decoder that derives other
    payload: bytes   # distributions than the encoder did finds out instead of returning garbage


@dataclass
class Descriptor:
    """One pixel descriptor as the forensic field stores it: value ``k`` of the vector is
    ``low + codes[k] * (high - low) / 255`` (``forensic.py``)."""
    version: str
    low: float   # float32, as stored
    high: float
    codes: bytes


@dataclass
class Bitstream:
    height: int
    width: int
    codec: str
    weights_id: bytes
    entropy_id: bytes
    adapters_id: bytes = b""
    source_id: bytes = bytes(8)
    streams: list[Stream] = field(default_factory=list)
    descriptors: dict[str, Descriptor] = field(default_factory=dict)  # the forensic field; empty: none


def digest_id(digest: str) -> bytes:
    """A weights or adapters digest as stored: 16 bytes of a hex SHA-256, else its ASCII name."""
    try:
        raw = bytes.fromhex(digest)
    except ValueError:
        raw = b""
    return raw[:16] if len(raw) == 32 else digest.encode("ascii")[:255]


def describe_id(identifier: bytes) -> str:
    """An id for messages: hex of a digest, or the ASCII name."""
    return identifier.hex() if len(identifier) == 16 else identifier.decode("ascii", "replace")


def source_id(version: str | None) -> bytes:
    """8 bytes naming an input's version (ETag or mtime); zeros when unknown."""
    return hashlib.sha256(version.encode()).digest()[:8] if version else bytes(8)


def symbols_crc(symbols) -> int:
    import numpy as np

    return zlib.crc32(np.ascontiguousarray(symbols, dtype="<i4").tobytes())


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _short(data: bytes) -> bytes:
    if len(data) > 255:
        raise ValueError("a header field is longer than 255 bytes")
    return bytes([len(data)]) + data


def pack(bitstream: Bitstream) -> bytes:
    if len(bitstream.entropy_id) != 8 or len(bitstream.source_id) != 8:
        raise ValueError("entropy and source ids are 8 bytes")
    header = (_varint(bitstream.height) + _varint(bitstream.width) + _short(bitstream.codec.encode("ascii"))
              + _short(bitstream.weights_id) + _short(bitstream.adapters_id)
              + bitstream.entropy_id + bitstream.source_id)
    flags = FORENSIC_FLAG if bitstream.descriptors else 0
    parts = [MAGIC, struct.pack("<BBH", FORMAT_VERSION, flags, len(header)), header]
    if bitstream.descriptors:
        forensic = _pack_descriptors(bitstream.descriptors)
        parts += [struct.pack("<H", len(forensic)), forensic, struct.pack("<I", zlib.crc32(forensic))]
    parts.append(struct.pack("<B", len(bitstream.streams)))
    for stream in bitstream.streams:
        parts += [struct.pack("<I", stream.crc), _varint(len(stream.payload)), stream.payload]
    body = b"".join(parts)
    return body + struct.pack("<I", zlib.crc32(body))


def _pack_descriptors(descriptors: dict[str, Descriptor]) -> bytes:
    parts = [struct.pack("<B", len(descriptors))]
    for name, descriptor in descriptors.items():
        parts += [_short(name.encode("ascii")), _short(descriptor.version.encode("ascii")),
                  struct.pack("<Hff", len(descriptor.codes), descriptor.low, descriptor.high), descriptor.codes]
    return b"".join(parts)


class _Reader:
    def __init__(self, data: bytes, end: int):
        self.data, self.position, self.end = data, 0, end

    def take(self, size: int, what: str) -> bytes:
        if self.position + size > self.end:
            raise BitstreamError(f"truncated bitstream: it ends inside the {what}", "truncated")
        chunk = self.data[self.position:self.position + size]
        self.position += size
        return chunk

    def varint(self, what: str) -> int:
        value = 0
        for shift in range(0, 35, 7):
            byte = self.take(1, what)[0]
            value |= (byte & 0x7F) << shift
            if not byte & 0x80:
                return value
        raise BitstreamError(f"corrupt bitstream: the {what} is not a valid number")

    def short(self, what: str) -> bytes:
        return self.take(self.take(1, what)[0], what)


def unpack(data: bytes, max_pixels: int | None = None) -> Bitstream:
    """Parse and check a whole file (magic, version, lengths, CRC, size guard); no decoding."""
    data = bytes(data)
    if not data or not data.startswith(MAGIC[:len(data)]):
        raise BitstreamError("not a latentsweep JPEG AI bitstream (no .jai magic)")
    if len(data) < len(MAGIC) + 8:
        raise BitstreamError(f"truncated bitstream: {len(data)} bytes", "truncated")
    version, flags, header_size = struct.unpack_from("<BBH", data, len(MAGIC))
    if version not in READ_VERSIONS:
        raise BitstreamError(f"bitstream format version {version}; this latentsweep reads versions "
                             f"{', '.join(map(str, READ_VERSIONS))}")
    flags = flags if version >= 2 else 0  # version 1 reserved the byte and ignored it
    if flags & ~FORENSIC_FLAG:
        raise BitstreamError(f"corrupt bitstream: unknown flags {flags:#04x}")
    (stored_crc,) = struct.unpack_from("<I", data, len(data) - 4)
    reader = _Reader(data, len(data) - 4)
    reader.take(len(MAGIC) + 4, "preamble")
    header = _Reader(reader.take(header_size, "header"), header_size)
    height, width = header.varint("image height"), header.varint("image width")
    codec, weights_id, adapters_id = header.short("codec name"), header.short("weights id"), header.short("adapters id")
    entropy_id, source = header.take(8, "entropy-model id"), header.take(8, "source id")
    descriptors = _unpack_descriptors(reader) if flags & FORENSIC_FLAG else {}
    streams = []
    (count,) = reader.take(1, "stream count")
    for index in range(count):
        (crc,) = struct.unpack("<I", reader.take(4, "stream header"))
        size = reader.varint("stream header")
        streams.append(Stream(crc, reader.take(size, f"stream {index}")))
    if zlib.crc32(data[:-4]) != stored_crc:
        # lengths that run past the end were reported as truncation above; anything else is damage
        raise BitstreamError("corrupt bitstream: CRC-32 mismatch (the file was damaged or altered)")
    if reader.position != reader.end or header.position != header.end:
        raise BitstreamError("corrupt bitstream: unexpected bytes after the streams or the header")
    try:
        codec_name = codec.decode("ascii")
    except UnicodeDecodeError:
        raise BitstreamError("corrupt bitstream: the codec name is not ASCII") from None
    if not (1 <= height <= MAX_SIDE and 1 <= width <= MAX_SIDE):
        raise BitstreamError(f"corrupt bitstream: image size {width}x{height}")
    if max_pixels is not None and height * width > max_pixels:
        raise BitstreamError(f"{width}x{height} = {width * height} pixels exceeds --max-pixels {max_pixels}",
                             "too_large")
    if any(len(stream.payload) % 4 for stream in streams):
        raise BitstreamError("corrupt bitstream: a stream's payload is not whole 32-bit words")
    return Bitstream(height, width, codec_name, weights_id, entropy_id, adapters_id, source, streams, descriptors)


def _unpack_descriptors(reader: _Reader) -> dict[str, Descriptor]:
    """The forensic field, its own CRC-32 checked first: damage there is named as such."""
    (size,) = struct.unpack("<H", reader.take(2, "forensic field"))
    payload = reader.take(size, "forensic field")
    (crc,) = struct.unpack("<I", reader.take(4, "forensic field"))
    if zlib.crc32(payload) != crc:
        raise BitstreamError("corrupt bitstream: the forensic field fails its CRC-32 (damaged or altered)")
    field_reader = _Reader(payload, size)
    descriptors = {}
    try:
        for _ in range(field_reader.take(1, "forensic field")[0]):
            name = field_reader.short("forensic field").decode("ascii")
            version = field_reader.short("forensic field").decode("ascii")
            dimension, low, high = struct.unpack("<Hff", field_reader.take(10, "forensic field"))
            descriptors[name] = Descriptor(version, low, high, field_reader.take(dimension, "forensic field"))
    except (BitstreamError, UnicodeDecodeError):  # inside a field whose CRC holds: its writer was broken
        raise BitstreamError("corrupt bitstream: the forensic field is malformed") from None
    if field_reader.position != size or len(descriptors) != payload[0]:
        raise BitstreamError("corrupt bitstream: the forensic field is malformed")
    return descriptors
