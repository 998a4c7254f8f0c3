"""What an image file declares about its own origin, beside what latentsweep attributes it to.

:func:`declared` reads, from the bytes of one file and in this order of strength:

1. C2PA Content Credentials (``c2pa-python``): the signed manifest's generator, its ``c2pa.created``
   action's ``digitalSourceType``, and how the library validated it (state, signature, trust, hashes);
2. XMP: the IPTC ``Iptc4xmpExt:DigitalSourceType`` and ``xmp:CreatorTool``;
3. PNG text chunks written by generator front-ends (``parameters``, ``prompt``/``workflow``,
   ``Software``, ...);
4. EXIF: ``Software`` (0x0131), ``Make``/``Model``, and generation parameters in ``UserComment``.

A declaration is what the file says, not a finding: it never overrides the attribution, and
:func:`conflict` only flags where a confident attribution disagrees with it. Nothing here raises for
any input: broken or hostile metadata (truncated manifests, oversized XMP or text, zip bombs in
compressed PNG text, invalid UTF-8, garbage) is skipped and said in ``note``.

JPEG segments and PNG chunks are walked here rather than through Pillow's decoders: Pillow drops an
iTXt chunk with invalid UTF-8 without a word, refuses to open a PNG whose compressed text inflates past
its limit, and reads text placed after the image data only when decoding the pixels. Pillow still
parses EXIF (``Image.Exif``) and opens the other formats (WebP, TIFF, ...) for their XMP and EXIF. XMP
is parsed with :mod:`xml.etree.ElementTree` after a size cap and after refusing any DTD, so entity
expansion never happens (Pillow's ``getxmp`` needs defusedxml, which this project does not install).
See docs/provenance.md.
"""

from __future__ import annotations

import dataclasses
import io
import json
import mimetypes
import os
import re
import threading
import xml.etree.ElementTree as ElementTree
import zlib
from typing import Any

MiB = 1 << 20
MAX_XMP = MiB                # an XMP packet over this is ignored
MAX_TEXT = MiB               # a PNG text chunk (compressed or inflated) over this is ignored
MAX_TEXT_TOTAL = 8 * MiB     # all PNG text inflated for one file
MAX_TEXT_CHUNKS = 256        # PNG text chunks looked at in one file
MAX_EXIF = MiB               # an EXIF block over this is ignored
MAX_SEGMENTS = 100_000       # JPEG segments / PNG chunks walked in one file
MAX_C2PA_BYTES = 512 * MiB   # files larger than this are not handed to the C2PA validator
MAX_MANIFEST_JSON = 16 * MiB  # a manifest store whose JSON is larger is not parsed
C2PA_TIMEOUT_S = 10.0        # the C2PA read and validation of one file
MAX_FIELD = 200              # characters kept of a generator name
MAX_NOTE = 500               # characters kept of a note

IPTC_SOURCE_TYPES = "http://cv.iptc.org/newscodes/digitalsourcetype/"
CAPTURE_TYPES = frozenset({"digitalCapture", "computationalCapture"})
GENERATED_TYPES = frozenset({"trainedAlgorithmicMedia"})
A1111 = "AUTOMATIC1111 / stable-diffusion-webui"

_NS_IPTC_EXT = "http://iptc.org/std/Iptc4xmpExt/2008-02-29/"
_NS_XMP = "http://ns.adobe.com/xap/1.0/"
_NS_RDF = "http://www.w3.org/1999/02/22-rdf-syntax-ns#"
_XMP_APP1 = b"http://ns.adobe.com/xap/1.0/\x00"
_XMP_EXT_APP1 = b"http://ns.adobe.com/xmp/extension/\x00"
_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_SOURCE_TYPE_TOKEN = re.compile(r"[A-Za-z][A-Za-z0-9]{0,63}")
_DTD = re.compile(rb"<!(DOCTYPE|ENTITY)", re.IGNORECASE)
# Names in an EXIF Software field that are generators, not camera firmware or photo editors: with one
# of them a camera Make/Model is not taken as a declared capture.
_GENERATIVE_HINTS = ("stable diffusion", "stable-diffusion", "automatic1111", "comfyui", "invokeai",
                     "fooocus", "novelai", "midjourney", "dall-e", "dall·e", "firefly", "imagen",
                     "flux", "leonardo", "ideogram")
# PNG text keys worth inflating (others are skipped unread).
_PNG_KEYS = frozenset({"parameters", "prompt", "workflow", "Software", "Description", "Comment",
                       "XML:com.adobe.xmp", "invokeai_metadata", "invokeai_graph", "sd-metadata",
                       "Dream", "fooocus_scheme", "generation_data"})


@dataclasses.dataclass(frozen=True)
class Declaration:
    """What one file declares about its origin. All ``None`` / ``False`` / empty: nothing declared."""

    generator: str | None = None        # software or generator named by the strongest source naming one
    source_type: str | None = None      # IPTC digital source type code, e.g. "trainedAlgorithmicMedia"
    declared_by: str | None = None      # strongest source that declared anything: c2pa | xmp | png-text | exif
    c2pa_state: str | None = None       # the library's validation_state: "Invalid", "Valid" or "Trusted"
    c2pa_signature_valid: bool | None = None  # the claim signature verified (None: not reported)
    c2pa_trusted: bool | None = None    # the signing certificate chains to a configured trust anchor
    c2pa_hashes_match: bool | None = None  # the content and assertion hashes match the manifest
    c2pa_failures: tuple[str, ...] = ()  # the validator's failure codes, e.g. "signingCredential.untrusted"
    camera: bool = False                # the declaration says a camera captured it
    note: str | None = None             # what was wrong with the metadata, if anything


# --- columns ------------------------------------------------------------------------------------

def to_columns(declaration: Declaration) -> dict[str, Any]:
    """``declaration`` as the columns of :data:`latentsweep.schema.DECLARED_FIELDS`."""
    return {
        "declared_generator": declaration.generator,
        "declared_source_type": declaration.source_type,
        "declared_by": declaration.declared_by,
        "c2pa_state": declaration.c2pa_state,
        "c2pa_signature_valid": declaration.c2pa_signature_valid,
        "c2pa_trusted": declaration.c2pa_trusted,
        "c2pa_hashes_match": declaration.c2pa_hashes_match,
        "c2pa_failures": ",".join(declaration.c2pa_failures) or None,
        "declared_camera": bool(declaration.camera),
        "provenance_note": declaration.note,
    }


def from_columns(columns: dict[str, Any]) -> Declaration:
    """The :class:`Declaration` a row's declared columns (:func:`to_columns`) hold."""
    return Declaration(
        generator=columns.get("declared_generator"), source_type=columns.get("declared_source_type"),
        declared_by=columns.get("declared_by"), c2pa_state=columns.get("c2pa_state"),
        c2pa_signature_valid=columns.get("c2pa_signature_valid"), c2pa_trusted=columns.get("c2pa_trusted"),
        c2pa_hashes_match=columns.get("c2pa_hashes_match"),
        c2pa_failures=tuple(filter(None, (columns.get("c2pa_failures") or "").split(","))),
        camera=bool(columns.get("declared_camera")), note=columns.get("provenance_note"))


# --- conflict -----------------------------------------------------------------------------------

def conflict(declaration: Declaration | None, attributed_label: str | None,
             attributed_is_generator: bool | None, confident: bool) -> str | None:
    """A short flag when a confident attribution disagrees with what the file declares, else None.

    Flags a declared camera capture attributed with confidence to a generator, and a declared
    ``trainedAlgorithmicMedia`` attributed with confidence to a camera or real class. An unconfident or
    unknown attribution, or a file that declares neither, is never flagged. The attribution stands
    either way: this only marks the row for a person to look at.
    """
    if declaration is None or not confident or attributed_is_generator is None:
        return None
    label = attributed_label or "?"
    by = declaration.declared_by or "?"
    if declaration.declared_by == "c2pa" and declaration.c2pa_state:
        by = f"c2pa, {declaration.c2pa_state}" + ("" if declaration.c2pa_trusted else ", untrusted")
    if declaration.camera and attributed_is_generator:
        return f"declared camera capture ({by}) but attributed to generator '{label}'"
    if declaration.source_type in GENERATED_TYPES and not attributed_is_generator:
        return f"declared {declaration.source_type} ({by}) but attributed to real class '{label}'"
    return None


# --- reading ------------------------------------------------------------------------------------

class _Found:
    """What the readers gather for one file, then folded into a Declaration."""

    def __init__(self) -> None:
        self.notes: list[str] = []
        self.xmp_packets: list[bytes] = []
        self.exif_blocks: list[bytes] = []
        self.png_texts: dict[str, str] = {}
        self.c2pa_container = False     # a C2PA store (JPEG APP11 JUMBF, PNG caBX) is in the file
        self.c2pa_truncated = False

    def note(self, text: str) -> None:
        if text not in self.notes:
            self.notes.append(text)


def declared(data: bytes, name: str = "", *, trust_anchors: str | None = None,
             c2pa_timeout_s: float = C2PA_TIMEOUT_S) -> Declaration:
    """What ``data`` (the bytes of one image file) declares about its origin. Never raises.

    ``name`` (the file's name or URI) only hints at the format when the bytes do not show it.
    ``trust_anchors``: PEM root certificates C2PA signers are trusted under; without them no signer
    is trusted and a signed file reads as ``Valid`` (intact, untrusted) at best.
    """
    try:
        return _declared(data, name, trust_anchors, c2pa_timeout_s)
    except Exception as error:  # the last guard: a reader's bug must not fail the row
        return Declaration(note=_cap(f"metadata not read: {type(error).__name__}: {error}", MAX_NOTE))


def _declared(data: Any, name: str, trust_anchors: str | None, timeout_s: float) -> Declaration:
    if isinstance(data, (bytearray, memoryview)):
        data = bytes(data)
    if not isinstance(data, bytes):
        return Declaration(note=f"not bytes: {type(data).__name__}")
    if not data:
        return Declaration(note="empty file")
    found = _Found()
    kind = _sniff(data)
    if kind == "jpeg":
        _walk_jpeg(data, found)
    elif kind == "png":
        _walk_png(data, found)
    else:
        _open_with_pillow(data, found)
        found.c2pa_container = b"c2pa" in data  # the manifest store's JUMBF label, in any container
    c2pa = _read_c2pa(data, _mime(kind, name), found, trust_anchors, timeout_s)
    return _fold(found, c2pa)


def _sniff(data: bytes) -> str | None:
    if data[:3] == b"\xff\xd8\xff":
        return "jpeg"
    if data[:8] == _PNG_MAGIC:
        return "png"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    if data[:4] in (b"II*\x00", b"MM\x00*"):
        return "tiff"
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return "gif"
    if data[4:8] == b"ftyp":
        brand = data[8:12]
        if brand in (b"avif", b"avis"):
            return "avif"
        if brand in (b"heic", b"heix", b"mif1", b"msf1", b"heim", b"heis"):
            return "heic"
    return None


def _mime(kind: str | None, name: str) -> str | None:
    known = {"jpeg": "image/jpeg", "png": "image/png", "webp": "image/webp", "tiff": "image/tiff",
             "gif": "image/gif", "avif": "image/avif", "heic": "image/heic"}
    if kind in known:
        return known[kind]
    guessed = mimetypes.guess_type(name or "")[0] if isinstance(name, str) else None
    return guessed  # None: the C2PA library detects the type from the bytes


# JPEG ---------------------------------------------------------------------------------------------

def _walk_jpeg(data: bytes, found: _Found) -> None:
    """Every segment before the scan: APP1 EXIF, XMP and extended XMP, APP11 JUMBF (C2PA)."""
    extended: dict[bytes, tuple[int, dict[int, bytes]]] = {}
    i, n, count = 2, len(data), 0
    while i + 4 <= n:
        if data[i] != 0xFF:
            found.note(f"JPEG marker expected at byte {i}: metadata after it not read")
            break
        marker = data[i + 1]
        if marker == 0xFF:           # fill byte
            i += 1
            continue
        if marker in (0x01, 0xD8) or 0xD0 <= marker <= 0xD7:
            i += 2
            continue
        if marker == 0xD9:
            break
        length = int.from_bytes(data[i + 2:i + 4], "big")
        end = i + 2 + length
        if length < 2:
            found.note(f"bad JPEG segment length at byte {i}: metadata after it not read")
            break
        if end > n:
            _past_the_end(found, marker == 0xEB and data[i + 4:i + 6] == b"JP", "an APP11 segment",
                          f"JPEG: a segment (marker 0x{marker:02X})")
            break
        payload = data[i + 4:end]
        if marker == 0xE1:
            if payload.startswith(b"Exif\x00"):
                found.exif_blocks.append(payload)
            elif payload.startswith(_XMP_APP1):
                found.xmp_packets.append(payload[len(_XMP_APP1):])
            elif payload.startswith(_XMP_EXT_APP1):
                _extended_xmp_part(payload[len(_XMP_EXT_APP1):], extended, found)
        elif marker == 0xEB and payload[:2] == b"JP":
            found.c2pa_container = True
        if marker == 0xDA:           # start of scan: the metadata segments are all before it
            break
        i = end
        count += 1
        if count > MAX_SEGMENTS:
            found.note(f"more than {MAX_SEGMENTS} JPEG segments: the rest not read")
            break
    for total, parts in extended.values():
        packet = bytearray(total)
        filled = 0
        for offset, part in parts.items():
            packet[offset:offset + len(part)] = part
            filled += len(part)
        if filled < total:
            found.note("extended XMP incomplete: ignored")
        else:
            found.xmp_packets.append(bytes(packet))


def _extended_xmp_part(body: bytes, extended: dict, found: _Found) -> None:
    """One APP1 segment of extended XMP: 32-byte GUID, full length, offset, then the part."""
    if len(body) < 40:
        found.note("extended XMP segment too short: ignored")
        return
    guid, total = body[:32], int.from_bytes(body[32:36], "big")
    offset, part = int.from_bytes(body[36:40], "big"), body[40:]
    if total > MAX_XMP:
        found.note(f"XMP over {MAX_XMP // MiB} MiB ignored")
        extended.pop(guid, None)
        return
    if offset + len(part) > total:
        found.note("extended XMP segment outside its declared length: ignored")
        return
    if guid not in extended and len(extended) >= 4:
        found.note("more than 4 extended XMP packets: the rest ignored")
        return
    extended.setdefault(guid, (total, {}))[1][offset] = part


# PNG ----------------------------------------------------------------------------------------------

def _walk_png(data: bytes, found: _Found) -> None:
    """Every chunk to IEND: tEXt, zTXt, iTXt (XMP among them), eXIf, caBX (C2PA)."""
    i, n, count, texts, inflated = 8, len(data), 0, 0, [0]
    while i + 8 <= n:
        length = int.from_bytes(data[i:i + 4], "big")
        kind = data[i + 4:i + 8]
        end = i + 8 + length
        if end > n:
            _past_the_end(found, kind == b"caBX", "the caBX chunk", f"PNG: the {_chunk_name(kind)} chunk")
            return
        body = data[i + 8:end]
        if kind in (b"tEXt", b"zTXt", b"iTXt"):
            texts += 1
            if texts > MAX_TEXT_CHUNKS:
                found.note(f"more than {MAX_TEXT_CHUNKS} PNG text chunks: the rest ignored")
            else:
                _png_text(kind, body, found, inflated)
        elif kind == b"eXIf":
            if length > MAX_EXIF:
                found.note(f"EXIF over {MAX_EXIF // MiB} MiB ignored")
            else:
                found.exif_blocks.append(body)
        elif kind == b"caBX":
            found.c2pa_container = True
        elif kind == b"IEND":
            return
        i = end + 4                  # the CRC
        count += 1
        if count > MAX_SEGMENTS:
            found.note(f"more than {MAX_SEGMENTS} PNG chunks: the rest not read")
            return
    found.note("truncated PNG: no IEND chunk")


def _past_the_end(found: _Found, c2pa: bool, container: str, part: str) -> None:
    """A JPEG segment or PNG chunk that runs past the end of the file: a truncated C2PA manifest when
    it is the C2PA container (``container``), else a truncated file (``part``)."""
    if c2pa:
        found.c2pa_container = found.c2pa_truncated = True
        found.note(f"truncated C2PA manifest ({container} runs past the end of the file)")
    else:
        found.note(f"truncated {part} runs past the end of the file")


def _chunk_name(kind: bytes) -> str:
    return kind.decode("latin-1") if re.fullmatch(rb"[A-Za-z]{4}", kind) else repr(kind)


def _png_text(kind: bytes, body: bytes, found: _Found, inflated: list[int]) -> None:
    chunk = kind.decode("ascii")
    key_raw, sep, rest = body.partition(b"\x00")
    if not sep or not 1 <= len(key_raw) <= 79:
        found.note(f"malformed PNG {chunk} chunk (no keyword)")
        return
    key = key_raw.decode("latin-1")
    if key not in _PNG_KEYS:
        return
    if len(body) > MAX_TEXT:
        what = "XMP" if key == "XML:com.adobe.xmp" else f'PNG text "{key}"'
        found.note(f"{what} over {MAX_TEXT // MiB} MiB ignored")
        return
    compressed = False
    if kind == b"tEXt":
        raw = rest
    elif kind == b"zTXt":
        if rest[:1] != b"\x00":
            found.note(f'unknown compression in PNG zTXt "{key}"')
            return
        raw, compressed = rest[1:], True
    else:  # iTXt: flag, method, language\0, translated keyword\0, text
        if len(rest) < 2:
            found.note(f'malformed PNG iTXt "{key}"')
            return
        flag, method = rest[0], rest[1]
        parts = rest[2:].split(b"\x00", 2)
        if len(parts) != 3:
            found.note(f'malformed PNG iTXt "{key}"')
            return
        raw = parts[2]
        if flag:
            if method != 0:
                found.note(f'unknown compression in PNG iTXt "{key}"')
                return
            compressed = True
    if compressed:
        raw = _inflate(raw, key, chunk, found, inflated)
        if raw is None:
            return
    if key == "XML:com.adobe.xmp":
        found.xmp_packets.append(raw)
        return
    if kind == b"iTXt":
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            found.note(f'invalid UTF-8 in PNG text "{key}": ignored')
            return
    else:
        text = raw.decode("latin-1")
    found.png_texts.setdefault(key, text)


def _inflate(raw: bytes, key: str, chunk: str, found: _Found, inflated: list[int]) -> bytes | None:
    """At most MAX_TEXT bytes out of a zlib stream; a larger result (a bomb) is refused unread."""
    budget = min(MAX_TEXT, MAX_TEXT_TOTAL - inflated[0])
    if budget <= 0:
        found.note(f"compressed PNG text past {MAX_TEXT_TOTAL // MiB} MiB in all: the rest ignored")
        return None
    inflater = zlib.decompressobj()
    try:
        out = inflater.decompress(raw, budget + 1)
    except zlib.error:
        found.note(f'corrupt compressed PNG {chunk} "{key}": ignored')
        return None
    inflated[0] += len(out)
    if len(out) > budget or inflater.unconsumed_tail:
        if budget < MAX_TEXT:
            found.note(f"compressed PNG text past {MAX_TEXT_TOTAL // MiB} MiB in all: the rest ignored")
        else:
            found.note(f'PNG {chunk} "{key}" inflates past {MAX_TEXT // MiB} MiB: ignored')
        return None
    if not inflater.eof:
        found.note(f'truncated compressed PNG {chunk} "{key}": ignored')
        return None
    return out


# Other formats through Pillow ---------------------------------------------------------------------

def _open_with_pillow(data: bytes, found: _Found) -> None:
    """XMP and EXIF of the formats Pillow opens without decoding pixels (WebP, TIFF, GIF, ...)."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as image:
            xmp = image.info.get("xmp")
            exif = image.info.get("exif")
            if exif is None and image.format in ("TIFF", "MPO"):
                exif = image.getexif().tobytes()
    except Image.DecompressionBombError as error:
        found.note(_cap(f"image header refused: {error}", 160))
        xmp = exif = None
    except Exception as error:
        found.note(_cap(f"not a recognised image format ({type(error).__name__})", 160))
        xmp = exif = None
    if isinstance(xmp, str):
        xmp = xmp.encode("utf-8", "replace")
    if isinstance(xmp, (bytes, bytearray)) and xmp:
        found.xmp_packets.append(bytes(xmp))
    elif isinstance(xmp, (bytes, bytearray)) or xmp is None:
        packet = _scan_xmp_packet(data, found)
        if packet is not None:
            found.xmp_packets.append(packet)
    if isinstance(exif, (bytes, bytearray)) and exif:
        if len(exif) > MAX_EXIF:
            found.note(f"EXIF over {MAX_EXIF // MiB} MiB ignored")
        else:
            found.exif_blocks.append(bytes(exif))


def _scan_xmp_packet(data: bytes, found: _Found) -> bytes | None:
    """An XMP packet found as text in a container this module does not walk (HEIF, AVIF, ...)."""
    start = data.find(b"<x:xmpmeta")
    if start < 0:
        return None
    opening = data.find(b">", start, start + 4096)
    if opening > 0 and data[opening - 1:opening] == b"/":
        return data[start:opening + 1]  # an empty <x:xmpmeta .../>
    end = data.find(b"</x:xmpmeta>", start, start + MAX_XMP + 64)
    if end < 0:
        found.note(f"XMP over {MAX_XMP // MiB} MiB ignored" if data.find(b"</x:xmpmeta>", start) > 0
                   else "unterminated XMP packet ignored")
        return None
    return data[start:end + len(b"</x:xmpmeta>")]


# XMP ----------------------------------------------------------------------------------------------

def _read_xmp(packet: bytes, found: _Found) -> tuple[str | None, str | None]:
    """(DigitalSourceType code, CreatorTool) of one XMP packet."""
    if len(packet) > MAX_XMP:
        found.note(f"XMP over {MAX_XMP // MiB} MiB ignored")
        return None, None
    if _DTD.search(packet):
        found.note("XMP with a DTD or entity declaration ignored")
        return None, None
    packet = packet.strip(b"\x00 \t\r\n")
    start = packet.find(b"<x:xmpmeta")
    if start < 0:
        start = packet.find(b"<rdf:RDF")
    if start > 0:
        packet = packet[start:]
    end = packet.rfind(b">")
    try:
        root = ElementTree.fromstring(packet[:end + 1])
    except (ElementTree.ParseError, ValueError, RecursionError):
        found.note("malformed XMP ignored")
        return None, None
    source = tool = None
    dst, ct = f"{{{_NS_IPTC_EXT}}}DigitalSourceType", f"{{{_NS_XMP}}}CreatorTool"
    resource = f"{{{_NS_RDF}}}resource"
    for element in root.iter():
        value = element.attrib.get(dst)
        if value is None and element.tag == dst:
            value = element.attrib.get(resource) or (element.text or "")
        if value and value.strip() and source is None:
            source = _source_type(value, found, "XMP")
        value = element.attrib.get(ct)
        if value is None and element.tag == ct:
            value = element.text or ""
        if value and value.strip() and tool is None:
            tool = _cap(value.strip(), MAX_FIELD)
    return source, tool


def _source_type(value: Any, found: _Found, where: str) -> str | None:
    """The IPTC code (its URI's last path segment) of a declared digital source type."""
    if not isinstance(value, str):
        return None
    code = value.strip().rstrip("/").rsplit("/", 1)[-1]
    if not _SOURCE_TYPE_TOKEN.fullmatch(code):
        found.note(_cap(f"unrecognised digital source type in {where}: {value.strip()!r}", 160))
        return None
    return code


# EXIF ---------------------------------------------------------------------------------------------

def _read_exif(block: bytes, found: _Found) -> tuple[str | None, str | None, str | None]:
    """(generator, Make, Model) of one EXIF block: Software, or A1111 parameters in UserComment."""
    from PIL import Image

    try:
        exif = Image.Exif()
        exif.load(block)
        software, make, model = (_text(exif.get(tag)) for tag in (0x0131, 0x010F, 0x0110))
        comment = None
        if 0x8769 in exif:
            comment = _user_comment(exif.get_ifd(0x8769).get(0x9286))
    except Exception as error:
        found.note(_cap(f"unreadable EXIF ignored ({type(error).__name__})", 160))
        return None, None, None
    generator = A1111 if comment and "Steps:" in comment and "Sampler:" in comment else software
    return generator, make, model


def _user_comment(value: Any) -> str | None:
    """EXIF UserComment: an 8-byte character code, then the text (A1111 writes UTF-16 there)."""
    if isinstance(value, str):
        return value
    if not isinstance(value, bytes) or len(value) < 8:
        return None
    code, body = value[:8], value[8:8 + 2 * MAX_TEXT]
    if code.startswith(b"UNICODE"):
        for encoding in ("utf-16-be", "utf-16-le"):
            text = body.decode(encoding, "replace")
            if "Steps:" in text:
                return text
        return None
    return body.decode("latin-1")


def _text(value: Any) -> str | None:
    if isinstance(value, bytes):
        value = value.decode("latin-1")
    if not isinstance(value, str):
        return None
    value = value.replace("\x00", "").strip()
    return _cap(value, MAX_FIELD) if value else None


# C2PA ---------------------------------------------------------------------------------------------

_contexts: dict[tuple[int, str | None], Any] = {}
_contexts_lock = threading.Lock()


def _c2pa_context(c2pa: Any, trust_anchors: str | None) -> Any:
    """A Context that never goes to the network (no remote manifests, no OCSP) and trusts only
    ``trust_anchors``; one per process and trust list."""
    key = (os.getpid(), trust_anchors)
    with _contexts_lock:
        if key not in _contexts:
            settings: dict[str, Any] = {"verify": {"verify_trust": True, "remote_manifest_fetch": False,
                                                   "ocsp_fetch": False}}
            if trust_anchors:
                settings["trust"] = {"trust_anchors": trust_anchors}
            _contexts[key] = c2pa.Context(c2pa.Settings.from_dict(settings))
        return _contexts[key]


def _read_c2pa(data: bytes, mime: str | None, found: _Found, trust_anchors: str | None,
               timeout_s: float) -> dict | None:
    """The manifest store as the library reports it (parsed JSON), or None with a note if broken."""
    try:
        import c2pa
    except Exception as error:
        if found.c2pa_container:
            found.note(f"C2PA manifest not read: c2pa-python unavailable ({type(error).__name__})")
        return None
    if len(data) > MAX_C2PA_BYTES:
        found.note(f"file over {MAX_C2PA_BYTES // MiB} MiB: C2PA not validated")
        return None
    try:
        context = _c2pa_context(c2pa, trust_anchors)
    except Exception as error:
        found.note(_cap(f"C2PA settings refused, manifest not read: {error}", 200))
        return None
    box: dict[str, Any] = {}

    def work() -> None:
        try:
            reader = c2pa.Reader.try_create(mime, io.BytesIO(data), None, context)
            if reader is not None:
                with reader:
                    box["json"] = reader.json()
        except BaseException as error:  # handed to the caller's thread
            box["error"] = error

    worker = threading.Thread(target=work, name="provenance-c2pa", daemon=True)
    try:
        worker.start()
    except RuntimeError:             # no thread to be had: read here, without the time limit
        work()
    else:
        worker.join(timeout_s)
    if worker.is_alive():
        found.note(f"C2PA validation did not finish in {timeout_s:g} s: not reported")
        return None
    error = box.get("error")
    if error is not None:
        kind = type(error).__name__.lstrip("_").removeprefix("C2pa")
        if kind == "RemoteManifest" or "remote" in str(error).lower():
            found.note("C2PA manifest is remote: not fetched")
            return None
        if not found.c2pa_container:
            return None              # no manifest in the file: what the library says is about the
                                     # container (unsupported, damaged), which the notes above cover
        if not found.c2pa_truncated:
            found.note(_cap(f"C2PA manifest unreadable: {error}", 240))
        return None
    text = box.get("json")
    if text is None:
        if found.c2pa_container and not found.c2pa_truncated:
            found.note("C2PA data present but no manifest store found")
        return None
    if len(text) > MAX_MANIFEST_JSON:
        found.note(f"C2PA manifest store over {MAX_MANIFEST_JSON // MiB} MiB ignored")
        return None
    try:
        store = json.loads(text)
    except (ValueError, RecursionError):
        found.note("C2PA manifest store is not valid JSON")
        return None
    return store if isinstance(store, dict) else None


def _c2pa_fields(store: dict, found: _Found) -> dict[str, Any]:
    """Generator, source type and validation of the active manifest of a manifest store."""
    manifests = store.get("manifests")
    active = manifests.get(store.get("active_manifest")) if isinstance(manifests, dict) else None
    if not isinstance(active, dict):
        active = {}
        found.note("C2PA manifest store without an active manifest")
    agent = source = None
    algorithmic_edit = False         # an action other than the creation declares algorithmic media
    for assertion in _dicts(active.get("assertions")):
        label = assertion.get("label")
        if not isinstance(label, str) or not label.startswith("c2pa.actions"):
            continue
        data = assertion.get("data")
        for action in _dicts(data.get("actions") if isinstance(data, dict) else None):
            created = action.get("action") == "c2pa.created"
            code = action.get("digitalSourceType")
            code = _source_type(code, found, "C2PA") if isinstance(code, str) and code else None
            if code and (source is None or created):
                source = code
            if code and not created and ("algorithmic" in code.lower() or code == "compositeSynthetic"):
                algorithmic_edit = True
            if created and agent is None:
                agent = _agent_name(action.get("softwareAgent"))
    generator = agent
    if generator is None:
        for info in _dicts(active.get("claim_generator_info")):
            generator = _agent_name(info)
            if generator:
                break
    if generator is None:
        generator = _text(active.get("claim_generator"))

    results = store.get("validation_results")
    active_results = results.get("activeManifest") if isinstance(results, dict) else None
    if isinstance(active_results, dict):
        failures = _codes(active_results.get("failure"))
        successes = _codes(active_results.get("success"))
    else:  # only the flat list: it holds the failures
        failures, successes = _codes(store.get("validation_status")), []
    state = store.get("validation_state")
    state = state if isinstance(state, str) else None

    if any(code.startswith("claimSignature.") or code in ("signingCredential.invalid",
           "signingCredential.revoked", "signingCredential.expired") for code in failures):
        signature = False
    elif "claimSignature.validated" in successes or state in ("Valid", "Trusted"):
        signature = True
    else:
        signature = None
    if "signingCredential.trusted" in successes or state == "Trusted":
        trusted = True
    elif any(code.startswith("signingCredential.") for code in failures) or state in ("Valid", "Invalid"):
        trusted = False
    else:
        trusted = None
    if any(code.endswith(".mismatch") or code.endswith(".missing") for code in failures
           if code.startswith("assertion.")):
        hashes = False
    elif any(code.endswith(".match") for code in successes) or state in ("Valid", "Trusted"):
        hashes = True
    else:
        hashes = None
    return {"generator": generator, "source_type": source, "algorithmic_edit": algorithmic_edit,
            "c2pa_state": state,
            "c2pa_signature_valid": signature, "c2pa_trusted": trusted, "c2pa_hashes_match": hashes,
            "c2pa_failures": tuple(dict.fromkeys(failures))[:12]}


def _dicts(value: Any) -> list[dict]:
    return [item for item in value if isinstance(item, dict)] if isinstance(value, list) else []


def _codes(value: Any) -> list[str]:
    return [item["code"][:80] for item in _dicts(value) if isinstance(item.get("code"), str)]


def _agent_name(agent: Any) -> str | None:
    """A softwareAgent or claim_generator_info entry: a string, or {"name", "version"}."""
    if isinstance(agent, str):
        return _text(agent)
    if isinstance(agent, dict):
        name, version = _text(agent.get("name")), _text(agent.get("version"))
        if name:
            return _cap(f"{name} {version}" if version else name, MAX_FIELD)
    return None


# Folding ------------------------------------------------------------------------------------------

def _png_generator(texts: dict[str, str]) -> str | None:
    """The front-end that wrote these PNG text chunks, by the keys each one writes."""
    if _is_comfy(texts.get("prompt"), "class_type") or _is_comfy(texts.get("workflow"), "nodes"):
        return "ComfyUI"
    if any(key in texts for key in ("invokeai_metadata", "invokeai_graph", "sd-metadata", "Dream")):
        return "InvokeAI"
    if "fooocus_scheme" in texts:
        return "Fooocus"
    if "parameters" in texts:
        return A1111
    return _text(texts.get("Software"))


def _is_comfy(text: str | None, marker: str) -> bool:
    if not text:
        return False
    try:
        value = json.loads(text)
    except (ValueError, RecursionError):
        return False
    if not isinstance(value, dict):
        return False
    if marker == "nodes":
        return isinstance(value.get("nodes"), list)
    return any(isinstance(node, dict) and "class_type" in node for node in value.values())


def _looks_generative(generator: str | None) -> bool:
    return bool(generator) and (generator in ("ComfyUI", "InvokeAI", "Fooocus", A1111)
                                or any(hint in generator.lower() for hint in _GENERATIVE_HINTS))


def _fold(found: _Found, store: dict | None) -> Declaration:
    """The sources, strongest first, into one Declaration."""
    sources: list[tuple[str, str | None, str | None]] = []  # (source, generator, source type)
    c2pa_fields: dict[str, Any] = {}
    algorithmic_edit = False
    if store is not None:
        c2pa_fields = _c2pa_fields(store, found)
        algorithmic_edit = c2pa_fields.pop("algorithmic_edit")
        sources.append(("c2pa", c2pa_fields.pop("generator"), c2pa_fields.pop("source_type")))
    xmp_source = xmp_tool = None
    for packet in found.xmp_packets:
        source, tool = _read_xmp(packet, found)
        xmp_source, xmp_tool = xmp_source or source, xmp_tool or tool
    if xmp_source or xmp_tool:
        sources.append(("xmp", xmp_tool, xmp_source))
    png = _png_generator(found.png_texts)
    if png:
        sources.append(("png-text", png, None))
    exif_generator = make = model = None
    for block in found.exif_blocks:
        generator, block_make, block_model = _read_exif(block, found)
        exif_generator = exif_generator or generator
        make, model = make or block_make, model or block_model
    if exif_generator or make or model:
        sources.append(("exif", exif_generator, None))

    generator = next((g for _, g, _ in sources if g), None)
    source_type = next((s for _, _, s in sources if s), None)
    if source_type is not None:
        camera = source_type in CAPTURE_TYPES and not algorithmic_edit
    else:
        camera = bool(make or model) and not _looks_generative(generator)
    note = "; ".join(found.notes) or None
    return Declaration(generator=generator, source_type=source_type,
                       declared_by=sources[0][0] if sources else None, camera=camera,
                       note=_cap(note, MAX_NOTE) if note else None, **c2pa_fields)


def _cap(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[:limit - 3] + "..."
