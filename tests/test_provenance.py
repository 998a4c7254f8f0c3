"""latentsweep.provenance: what a file declares about its origin (C2PA, XMP, PNG text, EXIF), and that
broken or hostile metadata becomes a note instead of an exception. Every file is made here."""

from __future__ import annotations

import datetime
import io
import json
import random
import struct
import time
import zlib

import c2pa                          # c2pa-python, a dependency; it requires cryptography
import pyarrow as pa
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from PIL import Image, PngImagePlugin

from latentsweep import provenance
from latentsweep.provenance import Declaration, conflict, declared, to_columns
from latentsweep.schema import DECLARED_FIELDS

IPTC = "http://cv.iptc.org/newscodes/digitalsourcetype/"
MANIFEST = {
    "claim_generator_info": [{"name": "latentsweep-test", "version": "0.1"}],
    "title": "generated.jpg",
    "assertions": [{"label": "c2pa.actions", "data": {"actions": [{
        "action": "c2pa.created",
        "softwareAgent": {"name": "Diffusor XL", "version": "2.1"},
        "digitalSourceType": IPTC + "trainedAlgorithmicMedia"}]}}],
}


# --- files made here ----------------------------------------------------------------------------

def _image(fmt: str, **save) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (48, 32), (140, 60, 200)).save(buffer, fmt, **save)
    return buffer.getvalue()


def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def _png_with(*chunks: bytes) -> bytes:
    """A PNG with ``chunks`` placed after the image data, just before IEND."""
    png = _image("PNG")
    iend = png.rindex(b"IEND") - 4
    return png[:iend] + b"".join(chunks) + png[iend:]


def _itxt(key: bytes, text: bytes, compressed: bool = False) -> bytes:
    return _chunk(b"iTXt", key + b"\x00" + bytes([int(compressed), 0]) + b"\x00\x00" + text)


def _xmp(source_type: str, tool: str | None = None, as_element: bool = False) -> bytes:
    ext = 'xmlns:Iptc4xmpExt="http://iptc.org/std/Iptc4xmpExt/2008-02-29/" xmlns:xmp="http://ns.adobe.com/xap/1.0/"'
    creator = f' xmp:CreatorTool="{tool}"' if tool else ""
    if as_element:
        body = (f'<rdf:Description rdf:about="" {ext}{creator}><Iptc4xmpExt:DigitalSourceType '
                f'rdf:resource="{IPTC}{source_type}"/></rdf:Description>')
    else:
        body = f'<rdf:Description rdf:about="" {ext}{creator} Iptc4xmpExt:DigitalSourceType="{IPTC}{source_type}"/>'
    return (b'<?xpacket begin="" id="W5M0MpCehiHzreSzNTczkc9d"?><x:xmpmeta xmlns:x="adobe:ns:meta/">'
            b'<rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">' + body.encode()
            + b'</rdf:RDF></x:xmpmeta><?xpacket end="w"?>')


def _exif(**tags: str) -> bytes:
    exif = Image.Exif()
    for tag, value in (("Software", 0x0131), ("Make", 0x010F), ("Model", 0x0110)):
        if tag in tags:
            exif[value] = tags[tag]
    return exif.tobytes()


def _segments(jpeg: bytes):
    """(offset, marker, length) of each JPEG segment up to the scan."""
    i = 2
    while i + 4 <= len(jpeg):
        marker, length = jpeg[i + 1], int.from_bytes(jpeg[i + 2:i + 4], "big")
        yield i, marker, length
        if marker == 0xDA:
            return
        i += 2 + length


@pytest.fixture(scope="module")
def credentials():
    """A throw-away CA and an end-entity signing certificate under it (ES256), as C2PA wants them:
    the end entity is no CA, has digitalSignature and the emailProtection EKU."""
    now = datetime.datetime.now(datetime.timezone.utc)

    def certificate(subject, issuer, public_key, signing_key, ca):
        builder = (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer).public_key(public_key)
                   .serial_number(x509.random_serial_number())
                   .not_valid_before(now - datetime.timedelta(days=1))
                   .not_valid_after(now + datetime.timedelta(days=7))
                   .add_extension(x509.BasicConstraints(ca=ca, path_length=0 if ca else None), critical=True)
                   .add_extension(x509.KeyUsage(digital_signature=not ca, content_commitment=False,
                                                key_encipherment=False, data_encipherment=False,
                                                key_agreement=False, key_cert_sign=ca, crl_sign=ca,
                                                encipher_only=False, decipher_only=False), critical=True)
                   .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False))
        if not ca:
            builder = (builder.add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.EMAIL_PROTECTION]),
                                             critical=False)
                       .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                           signing_key.public_key()), critical=False))
        return builder.sign(signing_key, hashes.SHA256())

    def name(common):
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common),
                          x509.NameAttribute(NameOID.ORGANIZATION_NAME, "latentsweep tests")])

    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca = certificate(name("Throw-away test CA"), name("Throw-away test CA"), ca_key.public_key(), ca_key, True)
    leaf = certificate(name("Throw-away signer"), name("Throw-away test CA"), key.public_key(), ca_key, False)
    pem = serialization.Encoding.PEM
    return {"chain": leaf.public_bytes(pem) + ca.public_bytes(pem),
            "key": key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()),
            "ca": ca.public_bytes(pem).decode()}


def _signed(credentials, fmt: str, manifest: dict = MANIFEST) -> bytes:
    mime = {"JPEG": "image/jpeg", "PNG": "image/png"}[fmt]
    info = c2pa.C2paSignerInfo(c2pa.C2paSigningAlg.ES256, credentials["chain"], credentials["key"], None)
    out = io.BytesIO()
    with c2pa.Signer.from_info(info) as signer, c2pa.Builder(manifest) as builder:
        builder.sign(signer, mime, io.BytesIO(_image(fmt)), out)
    return out.getvalue()


@pytest.fixture(scope="module")
def signed(credentials):
    return {fmt: _signed(credentials, fmt) for fmt in ("JPEG", "PNG")}


# --- C2PA ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_a_c2pa_file_signed_outside_the_trust_list_reads_as_intact_but_untrusted(signed, fmt, tmp_path):
    path = tmp_path / f"generated.{fmt.lower()}"
    path.write_bytes(signed[fmt])
    found = declared(path.read_bytes(), path.name)
    assert found.declared_by == "c2pa"
    assert found.generator == "Diffusor XL 2.1"           # the created action's softwareAgent
    assert found.source_type == "trainedAlgorithmicMedia"
    assert found.c2pa_state == "Valid"                    # the library's state: intact, not trusted
    assert found.c2pa_trusted is False and "signingCredential.untrusted" in found.c2pa_failures
    assert found.c2pa_signature_valid is True and found.c2pa_hashes_match is True
    assert found.camera is False and found.note is None
    row = to_columns(found)
    table = pa.Table.from_pylist([row], schema=pa.schema(DECLARED_FIELDS))
    assert table.column("declared_by").to_pylist() == ["c2pa"]
    assert table.column("c2pa_state").to_pylist() == ["Valid"]
    assert table.column("c2pa_trusted").to_pylist() == [False]
    assert "signingCredential.untrusted" in table.column("c2pa_failures")[0].as_py()


def test_a_signer_under_a_given_trust_anchor_reads_as_trusted(signed, credentials):
    found = declared(signed["JPEG"], trust_anchors=credentials["ca"])
    assert found.c2pa_state == "Trusted" and found.c2pa_trusted is True and found.c2pa_failures == ()
    assert declared(signed["JPEG"]).c2pa_trusted is False  # the default context still trusts nobody


def test_a_claim_generator_and_a_capture_declared_in_c2pa(credentials):
    manifest = {"claim_generator_info": [{"name": "Lens Co. firmware", "version": "3"}],
                "assertions": [{"label": "c2pa.actions", "data": {"actions": [
                    {"action": "c2pa.created", "digitalSourceType": IPTC + "digitalCapture"}]}}]}
    found = declared(_signed(credentials, "JPEG", manifest))
    assert (found.declared_by, found.generator, found.source_type) == ("c2pa", "Lens Co. firmware 3",
                                                                      "digitalCapture")
    assert found.camera is True


def test_a_capture_edited_with_generated_media_in_c2pa_is_no_declared_camera(credentials):
    manifest = {"claim_generator_info": [{"name": "Editor", "version": "9"}],
                "assertions": [{"label": "c2pa.actions", "data": {"actions": [
                    {"action": "c2pa.created", "digitalSourceType": IPTC + "digitalCapture"},
                    {"action": "c2pa.edited", "digitalSourceType": IPTC + "trainedAlgorithmicMedia",
                     "softwareAgent": {"name": "Generative Fill"}}]}}]}
    found = declared(_signed(credentials, "JPEG", manifest))
    assert found.source_type == "digitalCapture" and found.camera is False and found.note is None


def test_pixels_changed_after_signing_read_as_invalid_with_a_hash_mismatch(signed):
    jpeg = bytearray(signed["JPEG"])
    offset, _, length = list(_segments(bytes(jpeg)))[-1]  # the start of scan; its data runs to EOI
    scan = offset + 2 + length
    middle = scan + (len(jpeg) - 2 - scan) // 2
    jpeg[middle] = 0x00 if jpeg[middle] != 0x00 else 0x01
    found = declared(bytes(jpeg))
    assert found.declared_by == "c2pa" and found.c2pa_state == "Invalid"
    assert found.c2pa_hashes_match is False and "assertion.dataHash.mismatch" in found.c2pa_failures


def test_a_jpeg_cut_inside_its_c2pa_segment_gives_a_note(signed):
    jpeg = signed["JPEG"]
    offset, _, length = next(s for s in _segments(jpeg) if s[1] == 0xEB)
    found = declared(jpeg[:offset + length // 2])
    assert "truncated C2PA manifest" in found.note
    assert found.declared_by is None and found.c2pa_state is None


def test_a_png_cut_inside_its_c2pa_chunk_gives_a_note(signed):
    png = signed["PNG"]
    start = png.index(b"caBX") - 4
    length = int.from_bytes(png[start:start + 4], "big")
    found = declared(png[:start + 8 + length // 2])
    assert "truncated C2PA manifest" in found.note and found.declared_by is None


def test_damaged_c2pa_files_never_raise(signed):
    """Cuts every 500 bytes through the manifest, and bytes flipped at random in it."""
    rng = random.Random(7)
    for fmt, data in signed.items():
        for cut in range(0, len(data), 500):
            assert isinstance(declared(data[:cut]), Declaration)
        for _ in range(60):
            damaged = bytearray(data)
            for _ in range(rng.randint(1, 8)):
                damaged[rng.randrange(len(damaged))] = rng.randrange(256)
            found = declared(bytes(damaged))
            assert isinstance(found, Declaration)
            assert found.declared_by != "c2pa" or found.c2pa_state in ("Valid", "Invalid")


def test_a_remote_manifest_is_not_fetched(credentials):
    info = c2pa.C2paSignerInfo(c2pa.C2paSigningAlg.ES256, credentials["chain"], credentials["key"], None)
    out = io.BytesIO()
    with c2pa.Signer.from_info(info) as signer, c2pa.Builder(MANIFEST) as builder:
        builder.set_no_embed()
        builder.set_remote_url("http://127.0.0.1:9/manifest.c2pa")  # loopback discard port
        builder.sign(signer, "image/jpeg", io.BytesIO(_image("JPEG")), out)
    found = declared(out.getvalue())
    assert found.note == "C2PA manifest is remote: not fetched" and found.declared_by is None


def test_a_c2pa_read_past_its_time_limit_gives_a_note(signed, monkeypatch):
    def slow(*args, **kwargs):
        time.sleep(1.0)
        return None

    monkeypatch.setattr(c2pa.Reader, "try_create", slow)
    started = time.monotonic()
    found = declared(signed["JPEG"], c2pa_timeout_s=0.1)
    assert time.monotonic() - started < 0.9
    assert "did not finish" in found.note and found.declared_by is None


# --- XMP ----------------------------------------------------------------------------------------

def test_xmp_digital_source_type_in_a_jpeg():
    found = declared(_image("JPEG", xmp=_xmp("trainedAlgorithmicMedia", tool="Firefly Image 3")), "a.jpg")
    assert (found.declared_by, found.source_type, found.generator) == ("xmp", "trainedAlgorithmicMedia",
                                                                      "Firefly Image 3")
    assert found.camera is False and found.note is None


def test_xmp_digital_capture_as_an_element_in_a_png_declares_a_camera():
    found = declared(_png_with(_itxt(b"XML:com.adobe.xmp", _xmp("digitalCapture", as_element=True))))
    assert (found.declared_by, found.source_type, found.camera) == ("xmp", "digitalCapture", True)


def test_xmp_in_a_webp_read_through_pillow():
    found = declared(_image("WEBP", xmp=_xmp("compositeWithTrainedAlgorithmicMedia")))
    assert (found.declared_by, found.source_type) == ("xmp", "compositeWithTrainedAlgorithmicMedia")


def test_xmp_of_5_mib_is_ignored_with_a_note():
    huge = _xmp("trainedAlgorithmicMedia").replace(b"</rdf:RDF>", b" " * (5 << 20) + b"</rdf:RDF>")
    found = declared(_png_with(_itxt(b"XML:com.adobe.xmp", huge)))
    assert "XMP over 1 MiB ignored" in found.note and found.source_type is None


def test_extended_xmp_of_5_mib_in_a_jpeg_is_ignored_with_a_note():
    total, guid, jpeg = 5 << 20, b"0" * 32, _image("JPEG", xmp=_xmp("digitalCapture"))
    segments = []
    for offset in range(0, total, 65000):
        part = b" " * min(65000, total - offset)
        body = b"http://ns.adobe.com/xmp/extension/\x00" + guid + struct.pack(">II", total, offset) + part
        segments.append(b"\xff\xe1" + struct.pack(">H", len(body) + 2) + body)
    found = declared(jpeg[:2] + b"".join(segments) + jpeg[2:])
    assert "XMP over 1 MiB ignored" in found.note
    assert found.source_type == "digitalCapture"         # the main packet is still read


def test_xmp_with_an_entity_declaration_is_refused():
    bomb = (b'<?xml version="1.0"?><!DOCTYPE x [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;&a;&a;&a;">]>'
            b'<x:xmpmeta xmlns:x="adobe:ns:meta/">&b;</x:xmpmeta>')
    found = declared(_png_with(_itxt(b"XML:com.adobe.xmp", bomb)))
    assert "DTD" in found.note and found.declared_by is None


# --- PNG text -----------------------------------------------------------------------------------

def test_automatic1111_parameters_in_a_png():
    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", "a lighthouse at dusk\nSteps: 20, Sampler: Euler a, CFG scale: 7, Seed: 1")
    found = declared(_image("PNG", pnginfo=info), "00001.png")
    assert (found.declared_by, found.generator) == ("png-text", provenance.A1111)
    assert found.source_type is None and found.camera is False and found.note is None


def test_a_comfyui_prompt_in_a_png_even_after_the_image_data():
    prompt = {"3": {"class_type": "KSampler", "inputs": {"seed": 1}},
              "9": {"class_type": "SaveImage", "inputs": {}}}
    found = declared(_png_with(_chunk(b"tEXt", b"prompt\x00" + json.dumps(prompt).encode())))
    assert (found.declared_by, found.generator) == ("png-text", "ComfyUI")


def test_a_compressed_comfyui_workflow_in_an_itxt_chunk():
    workflow = json.dumps({"nodes": [{"id": 1, "type": "KSampler"}], "links": []}).encode()
    found = declared(_png_with(_itxt(b"workflow", zlib.compress(workflow), compressed=True)))
    assert found.generator == "ComfyUI" and found.note is None


def test_invalid_utf8_in_a_png_itxt_chunk_gives_a_note():
    found = declared(_png_with(_itxt(b"parameters", b"a cat \xff\xfe\xc3 Steps: 20")))
    assert 'invalid UTF-8 in PNG text "parameters"' in found.note
    assert found.declared_by is None and found.generator is None


@pytest.mark.parametrize("chunk", ["zTXt", "iTXt"])
def test_a_compressed_text_chunk_that_inflates_to_64_mib_is_refused(chunk):
    deflater = zlib.compressobj(9)
    bomb = b"".join(deflater.compress(b"\x00" * (1 << 20)) for _ in range(64)) + deflater.flush()
    assert len(bomb) < 128 * 1024
    if chunk == "zTXt":
        body = _chunk(b"zTXt", b"parameters\x00\x00" + bomb)
    else:
        body = _itxt(b"parameters", bomb, compressed=True)
    started = time.monotonic()
    found = declared(_png_with(body))
    assert time.monotonic() - started < 2.0
    assert f'PNG {chunk} "parameters" inflates past 1 MiB: ignored' in found.note
    assert found.generator is None


def test_a_png_text_chunk_over_1_mib_is_ignored():
    found = declared(_png_with(_chunk(b"tEXt", b"parameters\x00" + b"x" * (2 << 20))))
    assert 'PNG text "parameters" over 1 MiB ignored' in found.note and found.generator is None


# --- EXIF ---------------------------------------------------------------------------------------

def test_exif_software_names_the_generator():
    found = declared(_image("JPEG", exif=_exif(Software="Adobe Photoshop 25.0")))
    assert (found.declared_by, found.generator, found.camera) == ("exif", "Adobe Photoshop 25.0", False)


def test_exif_make_and_model_declare_a_camera():
    found = declared(_image("JPEG", exif=_exif(Make="Canon", Model="Canon EOS R5", Software="Firmware 1.8.1")))
    assert (found.declared_by, found.camera) == ("exif", True)
    assert found.generator == "Firmware 1.8.1" and found.note is None


def test_a_generator_in_exif_software_is_no_camera():
    found = declared(_image("JPEG", exif=_exif(Make="Canon", Software="Stable Diffusion XL")))
    assert found.camera is False


def test_a1111_parameters_in_a_jpeg_user_comment():
    exif = Image.Exif()
    exif.get_ifd(0x8769)[0x9286] = b"UNICODE\x00" + "a cat\nSteps: 30, Sampler: DPM++ 2M".encode("utf-16-be")
    found = declared(_image("JPEG", exif=exif.tobytes()))
    assert (found.declared_by, found.generator) == ("exif", provenance.A1111)


def test_the_strongest_source_wins():
    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", "Steps: 20, Sampler: Euler")
    info.add_itxt("XML:com.adobe.xmp", _xmp("trainedAlgorithmicMedia").decode())
    png = _image("PNG", pnginfo=info, exif=_exif(Make="Canon"))
    found = declared(png)
    assert found.declared_by == "xmp" and found.source_type == "trainedAlgorithmicMedia"
    assert found.generator == provenance.A1111           # XMP names none: the next source that does
    assert found.camera is False                         # a declared generated source type wins


# --- garbage ------------------------------------------------------------------------------------

def test_random_bytes_and_an_empty_file_give_notes():
    assert declared(b"").note == "empty file"
    found = declared(random.Random(3).randbytes(4096), "x.jpg")
    assert "not a recognised image format" in found.note and found.declared_by is None
    assert "truncated" in declared(_image("JPEG")[:10]).note


def test_nothing_declared_is_all_empty():
    found = declared(_image("PNG"))
    assert found == Declaration()
    assert to_columns(found)["declared_camera"] is False


# --- conflict -----------------------------------------------------------------------------------

def test_conflict_flags_only_a_confident_disagreement():
    camera = Declaration(source_type="digitalCapture", declared_by="xmp", camera=True)
    generated = Declaration(source_type="trainedAlgorithmicMedia", declared_by="c2pa", c2pa_state="Valid",
                            c2pa_trusted=False)
    assert conflict(camera, "sdxl", True, True) == "declared camera capture (xmp) but attributed to generator 'sdxl'"
    assert conflict(generated, "camera", False, True) == (
        "declared trainedAlgorithmicMedia (c2pa, Valid, untrusted) but attributed to real class 'camera'")
    assert conflict(camera, "real", False, True) is None      # they agree
    assert conflict(generated, "sdxl", True, True) is None
    assert conflict(camera, "sdxl", True, False) is None      # not confident: no flag
    assert conflict(camera, None, None, True) is None         # open set / unknown
    assert conflict(Declaration(), "sdxl", True, True) is None
    assert conflict(Declaration(source_type="compositeWithTrainedAlgorithmicMedia"), "real", False, True) is None
    assert conflict(None, "sdxl", True, True) is None


def test_the_columns_match_the_schema():
    names = [field.name for field in pa.schema(DECLARED_FIELDS)]
    assert names[:3] == ["declared_generator", "declared_source_type", "declared_by"]
    assert {"c2pa_state", "declared_camera", "provenance_note"} <= set(names)
    assert set(to_columns(Declaration())) == set(names)
    assert pa.schema(DECLARED_FIELDS).field("declared_camera").type == pa.bool_()
