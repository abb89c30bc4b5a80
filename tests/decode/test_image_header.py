"""The header probe: format and declared size from headers alone, the same answer the
decoders act on, and one JPEG marker walker for JPEG files and JPEG-family DICOM frames."""

from __future__ import annotations

import io
import json
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pydicom
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from cxr.decode.guards import FRAME_GUARDS, codestream_size
from cxr.errors import InvalidImageError
from cxr.decode.header import invalid_image, jpeg_frame_size
from cxr.decode.image import decode_image, probe
from cxr.decode.types import ImageHeader

HOSTILE = Path(__file__).resolve().parents[1] / "data" / "hostile"
MANIFEST = json.loads((HOSTILE / "MANIFEST.json").read_text())
FUZZ = settings(deadline=None, derandomize=True, database=None, max_examples=400)


def _jpeg(h: int, w: int, **save) -> bytes:
    buf = io.BytesIO()
    Image.fromarray((np.arange(h * w) % 251).astype(np.uint8).reshape(h, w)).save(buf, format="JPEG", **save)
    return buf.getvalue()


def _chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


@pytest.mark.parametrize("entry", MANIFEST, ids=[e["file"] for e in MANIFEST])
def test_probe_agrees_with_the_decoder_on_every_corpus_file(entry):
    data = (HOSTILE / entry["file"]).read_bytes()
    try:
        header = probe(data)
    except InvalidImageError:
        with pytest.raises(InvalidImageError):  # what the probe refuses, the decoder refuses
            decode_image(data)
        return
    try:
        decoded = decode_image(data)
    except InvalidImageError:
        return  # damage behind an intact header: only the decoder can tell
    assert (header.height, header.width) == decoded.pixels.shape
    assert header.format.lower() == decoded.source_format
    if header.format == "DICOM":
        assert header.dicom == decoded.dicom


def test_probe_reads_headers_only():
    # a 400 Mpx PNG header with no pixel data, and files cut short after their headers
    assert probe((HOSTILE / "png_header_only_20000.png").read_bytes()) == ImageHeader("PNG", 20000, 20000)
    assert probe((HOSTILE / "jpeg_truncated.jpg").read_bytes())[:3] == ("JPEG", 128, 128)
    header = probe((HOSTILE / "dicom_truncated.dcm").read_bytes())
    assert header[:3] == ("DICOM", 64, 64) and header.dicom.sop_instance_uid


def test_probe_of_a_dataset_reads_the_same_header():
    ds = pydicom.dcmread(HOSTILE / "dicom_ok.dcm")
    assert probe(ds) == probe((HOSTILE / "dicom_ok.dcm").read_bytes())


@pytest.mark.parametrize("data,match", [
    (b"", "empty input"),
    (b"GIF89a", "unrecognised image format"),
    (b"\x89PNG\r\n\x1a\n", "corrupt PNG: no IHDR"),
    (b"\xff\xd8\xff\xe0\x00\x10JFIF\x00", "corrupt JPEG: no frame header"),
    (bytes(128) + b"DICM", "has no Rows/Columns: it is not an image"),
])
def test_probe_refuses_garbage(data, match):
    with pytest.raises(InvalidImageError, match=match):
        probe(data)


def test_png_whose_first_chunk_is_not_ihdr_is_refused_by_probe_and_decoder():
    # PNG requires IHDR first and libpng refuses anything else; Pillow alone accepted it,
    # so the server decoded what the client refused.  Now both refuse it, with one message.
    buf = io.BytesIO()
    Image.fromarray(np.zeros((16, 16), np.uint8)).save(buf, format="PNG")
    data = buf.getvalue()
    text_first = data[:8] + _chunk(b"tEXt", b"k\x00v") + data[8:]
    for call in (probe, decode_image):
        with pytest.raises(InvalidImageError, match="no IHDR header chunk right after the signature"):
            call(text_first)


@pytest.mark.parametrize("save", [{}, {"progressive": True}, {"quality": 30, "subsampling": 2}, {"dpi": (300, 300)}],
                         ids=["baseline", "progressive", "subsampled", "jfif-dpi"])
@pytest.mark.parametrize("h,w", [(8, 8), (61, 97), (1024, 8)])
def test_jpeg_walker_agrees_with_pillow(save, h, w):
    data = _jpeg(h, w, **save)
    assert jpeg_frame_size(data) == (h, w)
    assert Image.open(io.BytesIO(data)).size == (w, h)


def test_jpeg_family_dicom_frames_use_the_same_walker():
    from pydicom.encaps import generate_frames

    for name in ("dicom_ok_jpeg_baseline.dcm", "dicom_ok_jpegls.dcm", "dicom_jpeg_lossless_sv1.dcm",
                 "dicom_ok_j2k.dcm", "dicom_htj2k.dcm"):
        ds = pydicom.dcmread(HOSTILE / name)
        frame = next(generate_frames(ds.PixelData, number_of_frames=1))
        assert codestream_size(frame) == (ds.Rows, ds.Columns), name
        if frame[:2] == b"\xff\xd8":
            assert jpeg_frame_size(frame) == (ds.Rows, ds.Columns), name


def test_jpeg_whose_size_pillow_reads_differently_is_refused_before_loading():
    # Pillow reads a JPGn (0xFFF0) segment as a bare marker and finds a frame header in its
    # payload; the standard walk skips the segment.  The size checked must be the size decoded.
    data = _jpeg(64, 96)
    at = data.index(b"\xff\xc0")
    at += 2 + int.from_bytes(data[at + 2 : at + 4], "big")
    payload = b"\x00\xff\xc0\x00\x0b\x08" + (3000).to_bytes(2, "big") * 2 + b"\x01\x01\x11\x00"
    crafted = data[:at] + b"\xff\xf0" + (len(payload) + 2).to_bytes(2, "big") + payload + data[at:]
    assert jpeg_frame_size(crafted) == (64, 96) and Image.open(io.BytesIO(crafted)).size == (3000, 3000)
    with pytest.raises(InvalidImageError, match="declares 96x64 but Pillow reads 3000x3000"):
        decode_image(crafted)


@FUZZ
@given(st.binary(max_size=600), st.sampled_from([b"\xff\xd8\xff", b"\xff\xd8"]))
def test_jpeg_walker_on_random_segments_returns_a_size_or_none(payload, soi):
    size = jpeg_frame_size(soi + payload)
    assert size is None or (len(size) == 2 and all(0 <= v < 65536 for v in size))


@FUZZ
@given(st.sampled_from([b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", bytes(128) + b"DICM", b""]), st.binary(max_size=400))
def test_probe_of_random_bytes_is_a_header_or_invalid_image(magic, payload):
    try:
        header = probe(magic + payload)
    except InvalidImageError as exc:
        assert str(exc)
    else:
        assert header.format in ("PNG", "JPEG", "DICOM") and header.height >= 0 and header.width >= 0


def test_invalid_image_converts_everything_but_memory_and_its_own_errors():
    with pytest.raises(InvalidImageError, match="bad: boom") as info:
        with invalid_image(lambda exc: f"bad: {exc}"):
            raise struct.error("boom")
    assert isinstance(info.value.__cause__, struct.error)  # the cause stays visible
    for passes in (MemoryError("host"), InvalidImageError("already says what is wrong")):
        with pytest.raises(type(passes)) as info:
            with invalid_image(lambda exc: "never used"):
                raise passes
        assert info.value is passes


@pytest.mark.parametrize("entry", [e for e in MANIFEST if e["expect"] == "ok" and "decoder" not in e],
                         ids=lambda e: e["file"])
def test_the_header_and_the_decoded_film_name_their_format_with_one_enum(entry):
    # the header said "PNG", the decoded film "png": two spellings of one thing
    from cxr.decode.types import ImageFormat

    data = (HOSTILE / entry["file"]).read_bytes()
    fmt = probe(data).format
    assert isinstance(fmt, ImageFormat) and decode_image(data).source_format is fmt


def test_image_format_takes_either_spelling_and_shows_one():
    from cxr.decode.types import ImageFormat

    assert ImageFormat("PNG") is ImageFormat("png") is ImageFormat.PNG
    assert ImageFormat.DICOM == "DICOM" == ImageFormat.DICOM == "dicom" and ImageFormat.PNG != "JPEG"
    assert {"jpeg": 1}[ImageFormat.JPEG] == 1 and ImageFormat.DICOM.display_name == "DICOM"
    assert decode_image(np.zeros((16, 16), np.uint8)).source_format is ImageFormat.ARRAY


@pytest.mark.parametrize("name", ["dicom_jpeg_lossless_sv1.dcm", "dicom_htj2k.dcm", "dicom_ok_jpegls.dcm"])
def test_syntaxes_without_a_guard_of_their_own_get_the_codestream_check(name):
    # also where no decoder is installed: the codestream is checked before any decoder is asked
    ds = pydicom.dcmread(HOSTILE / name)
    assert ds.file_meta.TransferSyntaxUID.keyword not in FRAME_GUARDS  # keyed by pydicom.uid names
    ds.Rows = ds.Rows // 2
    with pytest.raises(InvalidImageError, match=f"Rows/Columns say {ds.Columns}x{ds.Rows}"):
        decode_image(ds)


def test_the_bytes_travel_one_way():
    # header and guard modules are leaves: they never import the decoders that call them
    code = ("import sys, cxr.decode.guards; "
            "print(sorted(m for m in ('cxr.decode.image', 'cxr.decode.dicom', 'PIL', 'numpy') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
