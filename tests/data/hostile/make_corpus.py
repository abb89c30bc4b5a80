"""Regenerate the hostile-input corpus: ``python tests/data/hostile/make_corpus.py``.

Every file is built here from fixed arrays and fixed bytes (no randomness without a
seed, no timestamps, fixed DICOM UIDs), so the output is byte-identical run to run
and a reviewer can read how each input was made.  ``MANIFEST.json`` lists each
file, what it is and the expected outcome of ``decode_image`` + ``preprocess``:
``"ok"`` or a fragment of the :class:`~cxr.errors.InvalidImageError` message.
Entries with ``"decoder"`` name a DICOM transfer syntax this environment may lack a
decoder for: without one the fragment is expected, with one the pixels must equal
``"reference"``.
"""

from __future__ import annotations

import io
import json
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate, generate_fragments
from pydicom.uid import UID, ExplicitVRLittleEndian

HERE = Path(__file__).resolve().parent
SIDE = 64
# A smooth 12-bit "film" and its 8-bit version: enough structure to compare pixels.
_yy, _xx = np.mgrid[0:SIDE, 0:SIDE]
FILM16 = ((_yy * 37 + _xx * 23) % 4096).astype(np.uint16)
FILM8 = (FILM16 >> 4).astype(np.uint8)

# Transfer syntaxes (pydicom.uid has the same constants; spelled out to be readable).
DEFLATED = "1.2.840.10008.1.2.1.99"
JPEG_BASELINE = "1.2.840.10008.1.2.4.50"
JPEG_EXTENDED = "1.2.840.10008.1.2.4.51"
JPEG_LOSSLESS_P14 = "1.2.840.10008.1.2.4.57"
JPEG_LOSSLESS_SV1 = "1.2.840.10008.1.2.4.70"
JPEG_LS_LOSSLESS = "1.2.840.10008.1.2.4.80"
J2K_LOSSLESS = "1.2.840.10008.1.2.4.90"
HTJ2K_LOSSLESS = "1.2.840.10008.1.2.4.201"
RLE_LOSSLESS = "1.2.840.10008.1.2.5"

MANIFEST: list[dict] = []


def add(name: str, data: bytes, what: str, expect: str, **extra) -> None:
    (HERE / name).write_bytes(data)
    MANIFEST.append({"file": name, "what": what, "expect": expect, **extra})


# ------------------------------------------------------------------------ helpers


def png(arr: np.ndarray | Image.Image, **kw) -> bytes:
    img = arr if isinstance(arr, Image.Image) else Image.fromarray(arr)
    buf = io.BytesIO()
    img.save(buf, format="PNG", **kw)
    return buf.getvalue()


def jpeg(img: Image.Image, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=95, **kw)
    return buf.getvalue()


def chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def png_gray8_header(width: int, height: int) -> bytes:
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))


def png_zero_bomb(side: int) -> bytes:
    """A real, complete PNG of side x side black pixels (zlib of zeros, ~1000:1)."""
    comp = zlib.compressobj(9)
    row = bytes(side + 1)  # filter byte 0 + pixels
    parts = [comp.compress(row * 500) for _ in range(side // 500)]
    parts.append(comp.compress(row * (side % 500)))
    parts.append(comp.flush())
    return png_gray8_header(side, side) + chunk(b"IDAT", b"".join(parts)) + chunk(b"IEND", b"")


def patch_sof(frame: bytes, marker: int, height: int, width: int, *, precision: int | None = None) -> bytes:
    """Rewrite the size (and precision) in a JPEG-family frame's first SOF``marker`` segment."""
    at = frame.index(bytes([0xFF, marker]))
    bits = frame[at + 4 : at + 5] if precision is None else bytes([precision])
    return frame[: at + 4] + bits + struct.pack(">HH", height, width) + frame[at + 9 :]


def dicom(pixels: np.ndarray | None = FILM16, *, ts: str = ExplicitVRLittleEndian, pixel_data: bytes | None = None,
          photometric: str = "MONOCHROME2", bits_allocated: int = 16, bits_stored: int = 12, uid_tail: str = "1",
          **extra) -> Dataset:
    """A CR dataset with fixed UIDs; ``pixel_data`` overrides the encoding of ``pixels``."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = UID(ts)
    ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1"
    ds.file_meta.MediaStorageSOPInstanceUID = f"1.2.826.0.1.3680043.10.1234.{uid_tail}"
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.1"
    ds.SOPInstanceUID = f"1.2.826.0.1.3680043.10.1234.{uid_tail}"
    ds.StudyInstanceUID = "1.2.826.0.1.3680043.10.1234.100"
    ds.SeriesInstanceUID = "1.2.826.0.1.3680043.10.1234.101"
    ds.Modality = "CR"
    if pixels is not None:
        ds.Rows, ds.Columns = pixels.shape[:2]
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = photometric
        ds.BitsAllocated, ds.BitsStored, ds.HighBit = bits_allocated, bits_stored, bits_stored - 1
        ds.PixelRepresentation = 0
        ds.PixelData = pixels.tobytes() if pixel_data is None else pixel_data
    for k, v in extra.items():
        setattr(ds, k, v)
    return ds


def dicom_bytes(ds: Dataset) -> bytes:
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def j2k_lossless(arr: np.ndarray) -> bytes:
    """A raw JPEG 2000 codestream (no JP2 boxes, reversible 5/3 wavelet) via Pillow/OpenJPEG."""
    img = Image.fromarray(arr)  # uint8 -> L, uint16 -> I;16
    buf = io.BytesIO()
    img.save(buf, format="JPEG2000", no_jp2=True, irreversible=False)
    return buf.getvalue()


def rle_frame(segments: list[bytes], *, count: int | None = None, offsets: list[int] | None = None) -> bytes:
    """An RLE Lossless frame (PS3.5 Annex G): the 64-byte header (segment count, then 15
    offsets) and the segments; ``count``/``offsets`` override the true values (a header that lies)."""
    if offsets is None:
        offsets = [64 + sum(len(s) for s in segments[:i]) for i in range(len(segments))]
    header = struct.pack("<L", len(segments) if count is None else count)
    header += struct.pack(f"<{len(offsets)}L", *offsets) + bytes(4 * (15 - len(offsets)))
    return header + b"".join(segments)


def rle_bomb_segment(n_bytes: int) -> bytes:
    """PackBits at its worst ratio: replicate runs of 2 bytes (0x81, value) that decode to
    128 bytes each, so ``n_bytes`` decode to 64 x ``n_bytes``."""
    return b"\x81\x00" * (n_bytes // 2)


def rle_bomb_dicom(rows: int, cols: int, segment_bytes: int, bits_allocated: int = 16, uid_tail: str = "13") -> bytes:
    """A single-frame RLE DICOM with valid header and offsets whose every segment expands
    to 64 x ``segment_bytes``, far past the Rows x Columns bytes a segment must hold."""
    frame = rle_frame([rle_bomb_segment(segment_bytes)] * (bits_allocated // 8))
    ds = dicom(np.zeros((rows, cols), np.uint8), ts=RLE_LOSSLESS, pixel_data=encapsulate([frame]),
               bits_allocated=bits_allocated, bits_stored=bits_allocated, uid_tail=uid_tail)
    return dicom_bytes(ds)


# Standard JPEG luminance DC Huffman table (ITU T.81 Table K.3): categories 0..11.
_DC_BITS = [0, 1, 5, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0]
_DC_VALS = list(range(12))


def jpeg_lossless_sv1(arr: np.ndarray) -> bytes:
    """8-bit lossless JPEG (ITU T.81 process 14, SOF3, predictor 1 = selection value 1).

    Written by hand because no encoder for it is installed here: T.81 H.1.2.1 says
    the first pixel is predicted by 2**(P-1), the rest of row 0 by the left
    neighbour, the first pixel of each later row by the pixel above.
    """
    h, w = arr.shape
    codes, code, k = {}, 0, 0
    for length, count in enumerate(_DC_BITS, start=1):  # canonical Huffman codes
        for _ in range(count):
            codes[_DC_VALS[k]] = (code, length)
            code, k = code + 1, k + 1
        code <<= 1
    x = arr.astype(np.int32)
    pred = np.empty_like(x)
    pred[0, 0] = 128
    pred[0, 1:] = x[0, :-1]
    pred[1:, 0] = x[:-1, 0]
    pred[1:, 1:] = x[1:, :-1]
    bits = []
    for d in (x - pred).ravel():
        d = int(d)
        s = abs(d).bit_length()
        c, n = codes[s]
        bits.append(format(c, f"0{n}b"))
        if s:
            bits.append(format(d if d >= 0 else d + (1 << s) - 1, f"0{s}b"))
    stream = "".join(bits)
    stream += "1" * (-len(stream) % 8)
    body = bytearray()
    for i in range(0, len(stream), 8):
        byte = int(stream[i : i + 8], 2)
        body.append(byte)
        if byte == 0xFF:
            body.append(0x00)  # byte stuffing
    sof = b"\xff\xc3" + struct.pack(">HBHHB", 11, 8, h, w, 1) + bytes([1, 0x11, 0])
    dht = b"\xff\xc4" + struct.pack(">H", 3 + 16 + len(_DC_VALS)) + b"\x00" + bytes(_DC_BITS) + bytes(_DC_VALS)
    sos = b"\xff\xda" + struct.pack(">HB", 8, 1) + bytes([1, 0x00, 1, 0, 0])
    return b"\xff\xd8" + sof + dht + sos + bytes(body) + b"\xff\xd9"


# ------------------------------------------------------------------------- corpus


def build() -> None:
    for old in HERE.iterdir():
        if old.name not in ("make_corpus.py", "__pycache__") and old.is_file():
            old.unlink()
    rng = np.random.default_rng(20240601)
    noise = (rng.random((128, 128)) * 255).astype(np.uint8)

    # --- not an image at all
    add("empty.bin", b"", "zero bytes", "empty input")
    add("text.txt", b"This is not a radiograph.\n", "plain text", "unrecognised image format")
    add("pdf.pdf", b"%PDF-1.7\n1 0 obj << /Type /Catalog >> endobj\ntrailer << /Root 1 0 R >>\n%%EOF\n",
        "PDF document", "unrecognised image format")
    add("zip.zip", b"PK\x05\x06" + bytes(18), "empty ZIP archive", "unrecognised image format")
    add("elf.bin", b"\x7fELF\x02\x01\x01" + bytes(57), "ELF executable header", "unrecognised image format")
    gif = io.BytesIO()
    Image.fromarray(FILM8).save(gif, format="GIF")
    add("grey.gif", gif.getvalue(), "real grayscale GIF (unsupported format)", "unrecognised image format")
    tif = io.BytesIO()
    Image.fromarray(FILM8).save(tif, format="TIFF")
    add("grey.tif", tif.getvalue(), "real grayscale TIFF (unsupported format)", "unrecognised image format")
    bmp = io.BytesIO()
    Image.fromarray(FILM8).save(bmp, format="BMP")
    add("grey.bmp", bmp.getvalue(), "real grayscale BMP (unsupported format)", "unrecognised image format")
    add("dicom_no_preamble.dcm", dicom_bytes(dicom())[132:],
        "DICOM dataset without the 128-byte preamble and DICM prefix", "unrecognised image format")

    # --- PNG
    add("png_ok_gray8.png", png(FILM8), "valid 8-bit grayscale PNG (control)", "ok")
    add("png_magic_only.png", b"\x89PNG\r\n\x1a\n", "PNG signature and nothing else", "corrupt PNG")
    good = png(noise)
    add("png_truncated.png", good[: len(good) // 2], "noisy 128x128 PNG cut in half", "truncated or corrupt PNG")
    idat = good.index(b"IDAT")
    bad_crc = bytearray(good)
    bad_crc[idat + 20] ^= 0xFF  # damage the compressed data; CRC no longer matches
    add("png_corrupt_idat.png", bytes(bad_crc), "PNG with one flipped byte in IDAT", "corrupt PNG")
    add("png_1x1.png", png(np.zeros((1, 1), np.uint8)), "1x1 PNG", "1x1; a radiograph needs at least 8")
    add("png_7x1000.png", png(np.zeros((1000, 7), np.uint8)), "7 px wide strip", "7x1000; a radiograph needs")
    add("png_ok_strip_8x4000.png", png(np.full((4000, 8), 200, np.uint8)), "8x4000 strip (extreme aspect)", "ok")
    add("png_header_only_20000.png", png_gray8_header(20000, 20000) + chunk(b"IEND", b""),
        "IHDR claims 20000x20000, no pixel data (header liar)", "decompression bomb")
    add("png_bomb_20000.png", png_zero_bomb(20000), "complete 20000x20000 black PNG (400 Mpx, zlib of zeros)",
        "decompression bomb")
    add("png_bomb_8000.png", png_zero_bomb(8000),
        "complete 8000x8000 black PNG: 64 Mpx, above our 40 Mpx limit but below Pillow's own bomb check",
        "decompression bomb")
    ztxt = zlib.compress(bytes(32 * 1024 * 1024), 9)
    p = png(FILM8)
    add("png_ztxt_bomb.png", p[:33] + chunk(b"zTXt", b"Comment\x00\x00" + ztxt) + p[33:],
        "valid PNG with a zTXt chunk inflating to 32 MB", "corrupt PNG")
    add("png_ok_16bit_constant.png", png(np.full((SIDE, SIDE), 40000, np.uint16)), "16-bit PNG, all one value", "ok")
    add("png_ok_16bit.png", png(FILM16 * 16), "16-bit grayscale PNG (control)", "ok")
    rgb = np.stack([FILM8, 255 - FILM8, np.full_like(FILM8, 30)], -1)
    add("png_rgb_colour.png", png(rgb), "true-colour RGB PNG", "colour PNG (true-colour RGB")
    add("png_ok_rgb_grey.png", png(np.stack([FILM8] * 3, -1)), "grayscale stored as RGB (R=G=B)", "ok")
    add("png_palette_colour.png", png(Image.fromarray(rgb).quantize(16)), "palette PNG with colour entries",
        "colour PNG (palette")
    add("png_ok_palette_grey.png", png(Image.fromarray(FILM8).convert("P")), "palette PNG, grey palette", "ok")
    rgba = np.dstack([np.stack([FILM8] * 3, -1), np.full_like(FILM8, 255)])
    add("png_ok_rgba_opaque_grey.png", png(rgba), "RGBA, grey and fully opaque (alpha dropped)", "ok")
    rgba_t = rgba.copy()
    rgba_t[:8, :8, 3] = 0
    add("png_rgba_transparent.png", png(rgba_t), "RGBA grey with a transparent corner", "transparency")
    la = np.dstack([FILM8, np.where(_yy < 4, 0, 255).astype(np.uint8)])
    add("png_la_transparent.png", png(Image.fromarray(la, mode="LA")), "gray+alpha with transparent rows",
        "transparency")
    add("png_trns_key.png", png(Image.fromarray(FILM8), transparency=int(FILM8[10, 10])),
        "8-bit gray with a tRNS key colour that occurs in the image", "transparency")
    add("png_bilevel.png", png(Image.fromarray(FILM8 > 128)), "1-bit black/white PNG", "pixel mode '1'")

    # --- JPEG
    gray_jpg = jpeg(Image.fromarray(FILM8))
    add("jpeg_ok_gray.jpg", gray_jpg, "valid grayscale JPEG (control)", "ok")
    add("jpeg_truncated.jpg", jpeg(Image.fromarray(noise))[:700], "noisy JPEG cut after 700 bytes",
        "truncated or corrupt JPEG")
    add("jpeg_soi_only.jpg", b"\xff\xd8\xff\xe0" + b"\x00" * 12, "JPEG start marker then zeros", "corrupt JPEG")
    add("jpeg_header_20000.jpg", patch_sof(gray_jpg, 0xC0, 20000, 20000),
        "grayscale JPEG whose SOF claims 20000x20000 (Pillow's own bomb limit)", "decompression bomb")
    add("jpeg_header_8000.jpg", patch_sof(gray_jpg, 0xC0, 8000, 8000),
        "grayscale JPEG whose SOF claims 8000x8000 (above ours, below Pillow's limit)", "decompression bomb")
    add("jpeg_rgb_colour.jpg", jpeg(Image.fromarray(rgb)), "true-colour JPEG", "colour JPEG")
    add("jpeg_ok_rgb_grey.jpg", jpeg(Image.fromarray(np.stack([FILM8] * 3, -1))), "grey image saved as YCbCr JPEG",
        "ok")
    add("jpeg_cmyk.jpg", jpeg(Image.fromarray(rgb).convert("CMYK")), "CMYK JPEG", "pixel mode 'CMYK'")

    # --- DICOM
    ok = dicom_bytes(dicom())
    add("dicom_ok.dcm", ok, "valid 12-bit MONOCHROME2 CR, Explicit VR LE (control)", "ok")
    add("dicom_preamble_only.dcm", bytes(128) + b"DICM", "preamble and DICM prefix, nothing else", "DICOM")
    add("dicom_truncated.dcm", ok[: len(ok) - 1000], "valid DICOM cut 1000 bytes short",
        "truncated or corrupt DICOM")
    add("dicom_truncated_header.dcm", ok[:300], "valid DICOM cut inside the header", "DICOM")
    add("dicom_no_pixeldata.dcm", dicom_bytes(dicom(None)), "CR dataset without PixelData", "without pixel data")
    add("dicom_rows_too_large.dcm", dicom_bytes(dicom(Rows=SIDE * 2)), "Rows twice what the pixel data holds",
        "truncated or corrupt DICOM pixel data")
    add("dicom_rows_too_small.dcm", dicom_bytes(dicom(Rows=SIDE // 2)), "Rows half what the pixel data holds",
        "truncated or corrupt DICOM pixel data")
    add("dicom_rows_20000.dcm", dicom_bytes(dicom(Rows=20000, Columns=20000)),
        "Rows/Columns claim 20000x20000 over 8 KB of pixels", "decompression bomb")
    add("dicom_bits_allocated_12.dcm", dicom_bytes(dicom(bits_allocated=12)), "BitsAllocated 12 (not 8/16)",
        "BitsAllocated 12")
    add("dicom_bits_stored_20.dcm", dicom_bytes(dicom(bits_stored=20)), "BitsStored 20 > BitsAllocated 16",
        "BitsStored 20 is impossible")
    add("dicom_multiframe.dcm", dicom_bytes(dicom(np.concatenate([FILM16, FILM16]), NumberOfFrames=2, Rows=SIDE)),
        "two-frame CR", "multi-frame")
    add("dicom_rgb.dcm", dicom_bytes(dicom(photometric="RGB")), "PhotometricInterpretation RGB",
        "PhotometricInterpretation RGB")
    add("dicom_samples3.dcm", dicom_bytes(dicom(SamplesPerPixel=3)), "MONOCHROME2 with SamplesPerPixel 3",
        "SamplesPerPixel 3")
    add("dicom_window_zero.dcm", dicom_bytes(dicom(WindowCenter=2048, WindowWidth=0)), "WindowWidth 0",
        "WindowWidth=0.0 is invalid")
    add("dicom_slope_inf.dcm", dicom_bytes(dicom(RescaleSlope="1e999", RescaleIntercept=0)),
        "RescaleSlope 1e999 (infinite)", "NaN/Inf")
    add("dicom_ok_deflated.dcm", dicom_bytes(dicom(ts=DEFLATED, uid_tail="2")),
        "Deflated Explicit VR Little Endian (pydicom inflates it)", "ok", reference="dicom_ok.dcm")
    big = dicom(np.zeros((SIDE, SIDE), np.uint16), ts=DEFLATED, uid_tail="3")
    big.add_new(0x00091010, "OB", bytes(100 * 1024 * 1024))  # private blob of zeros
    add("dicom_deflate_bomb.dcm", dicom_bytes(big), "deflated dataset inflating to 100 MB", "inflates to more than")

    add("dicom_ok_rle.dcm", dicom_bytes(_compressed(RLE_LOSSLESS)), "RLE Lossless (pydicom's native encoder)", "ok",
        reference="dicom_ok.dcm")
    j2k = j2k_lossless(FILM16)
    add("dicom_ok_j2k.dcm", dicom_bytes(dicom(ts=J2K_LOSSLESS, pixel_data=encapsulate([j2k]), uid_tail="5")),
        "JPEG 2000 Lossless (OpenJPEG via pylibjpeg)", "ok", reference="dicom_ok.dcm", decoder=J2K_LOSSLESS)
    add("dicom_ok_jpegls.dcm", dicom_bytes(_compressed(JPEG_LS_LOSSLESS)), "JPEG-LS Lossless (pyjpegls)", "ok",
        reference="dicom_ok.dcm", decoder=JPEG_LS_LOSSLESS)
    add("dicom_ok_jpeg_baseline.dcm",
        dicom_bytes(dicom(FILM8, ts=JPEG_BASELINE, pixel_data=encapsulate([gray_jpg]), bits_allocated=8,
                          bits_stored=8, uid_tail="6")),
        "JPEG Baseline (lossy) 8-bit", "ok", decoder=JPEG_BASELINE)
    add("dicom_jpeg_lossless_sv1.dcm",
        dicom_bytes(dicom(FILM8, ts=JPEG_LOSSLESS_SV1, pixel_data=encapsulate([jpeg_lossless_sv1(FILM8)]),
                          bits_allocated=8, bits_stored=8, uid_tail="7")),
        "JPEG Lossless SV1 (process 14), hand-encoded", "cannot be decoded here", decoder=JPEG_LOSSLESS_SV1,
        reference_png="png_ok_gray8.png")
    add("dicom_htj2k.dcm", dicom_bytes(dicom(ts=HTJ2K_LOSSLESS, pixel_data=encapsulate([j2k]), uid_tail="8")),
        "HTJ2K Lossless transfer syntax (codestream is Part 1 J2K, which HTJ2K decoders read)",
        "cannot be decoded here", decoder=HTJ2K_LOSSLESS, reference="dicom_ok.dcm")
    siz = j2k.index(b"\xff\x51")
    j2k_bomb = j2k[: siz + 6] + struct.pack(">II", 20000, 20000) + j2k[siz + 14 :]
    # Every compressed syntax the decoders now read: its codestream header is checked before any
    # decoder runs, so a header that claims 20000x20000 over a 64x64 dataset is refused unexpanded.
    add("dicom_htj2k_header_bomb.dcm",
        dicom_bytes(dicom(ts=HTJ2K_LOSSLESS, pixel_data=encapsulate([j2k_bomb]), uid_tail="18")),
        "HTJ2K frame whose SIZ claims 20000x20000 while Rows/Columns say 64x64", "decompression bomb")
    add("dicom_htj2k_size_mismatch.dcm",
        dicom_bytes(dicom(ts=HTJ2K_LOSSLESS, pixel_data=encapsulate([j2k]), Rows=32, Columns=128, uid_tail="19")),
        "HTJ2K frame 64x64 while Rows/Columns say 128x32", "Rows/Columns say 128x32")
    sv1 = jpeg_lossless_sv1(FILM8)
    for ts, tail, name in ((JPEG_LOSSLESS_SV1, "20", "sv1"), (JPEG_LOSSLESS_P14, "21", "p14")):
        add(f"dicom_jpeg_lossless_{name}_header_bomb.dcm",
            dicom_bytes(dicom(FILM8, ts=ts, pixel_data=encapsulate([patch_sof(sv1, 0xC3, 20000, 20000)]),
                              bits_allocated=8, bits_stored=8, uid_tail=tail)),
            f"JPEG Lossless ({name.upper()}) frame whose SOF3 claims 20000x20000 over a 64x64 dataset",
            "decompression bomb")
    extended = patch_sof(gray_jpg.replace(b"\xff\xc0", b"\xff\xc1", 1), 0xC1, 20000, 20000, precision=12)
    add("dicom_jpeg_extended_header_bomb.dcm",
        dicom_bytes(dicom(ts=JPEG_EXTENDED, pixel_data=encapsulate([extended]), uid_tail="22")),
        "12-bit JPEG Extended frame whose SOF1 claims 20000x20000 over a 64x64 dataset", "decompression bomb")
    jls = _first_fragment(_compressed(JPEG_LS_LOSSLESS).PixelData)
    add("dicom_jpegls_header_bomb.dcm",
        dicom_bytes(dicom(ts=JPEG_LS_LOSSLESS, pixel_data=encapsulate([patch_sof(jls, 0xF7, 20000, 20000)]),
                          uid_tail="23")),
        "JPEG-LS frame whose SOF55 claims 20000x20000 over a 64x64 dataset", "decompression bomb")
    add("dicom_j2k_header_bomb.dcm",
        dicom_bytes(dicom(ts=J2K_LOSSLESS, pixel_data=encapsulate([j2k_bomb]), uid_tail="9")),
        "JPEG 2000 frame whose SIZ claims 20000x20000 while Rows/Columns say 64x64", "decompression bomb")
    add("dicom_j2k_size_mismatch.dcm",
        dicom_bytes(dicom(ts=J2K_LOSSLESS, pixel_data=encapsulate([j2k]), Rows=32, Columns=128, uid_tail="10")),
        "JPEG 2000 frame 64x64 while Rows/Columns say 128x32", "Rows/Columns say 128x32")
    add("dicom_j2k_garbage.dcm",
        dicom_bytes(dicom(ts=J2K_LOSSLESS, pixel_data=encapsulate([b"\xff\x4f\xff\x51" + bytes(60)]), uid_tail="11")),
        "JPEG 2000 transfer syntax, frame is a SOC/SIZ marker then zeros", "DICOM")
    voi = dicom(uid_tail="12")
    lut = Dataset()
    lut.LUTDescriptor = [0, 0, 40]  # 2**16 entries announced, 40 bits per entry: nonsense
    lut.add_new(0x00283006, "OW", bytes(8))
    voi.VOILUTSequence = [lut]
    add("dicom_voi_lut_nonsense.dcm", dicom_bytes(voi), "VOI LUT with an impossible descriptor", "DICOM")

    # --- RLE Lossless: pydicom's pure-Python decoder expands a segment without a limit
    add("dicom_rle_bomb.dcm", rle_bomb_dicom(SIDE, SIDE, 2048),
        "RLE 64x64 16-bit, valid header; each 2 KB segment of 2-byte replicate runs expands to 128 KB "
        "(32x the 4096 bytes Rows x Columns allow, 64x its own size)", "RLE segment 1 expands past Rows×Columns")
    rle_ok = _first_fragment(_compressed(RLE_LOSSLESS).PixelData)
    seg2 = int.from_bytes(rle_ok[8:12], "little")
    add("dicom_rle_bad_header.dcm",
        dicom_bytes(dicom(ts=RLE_LOSSLESS, uid_tail="14",
                          pixel_data=encapsulate([rle_ok[:8] + struct.pack("<L", 1 << 30) + rle_ok[12:]]))),
        "RLE frame whose header puts segment 2 at byte 2**30, past the end of the frame", "segment offsets")
    add("dicom_rle_segment_count.dcm",
        dicom_bytes(dicom(ts=RLE_LOSSLESS, uid_tail="15", pixel_data=encapsulate([struct.pack("<L", 3) + rle_ok[4:]]))),
        "RLE header lists 3 segments for 16-bit grayscale (needs 2)", "lists 3 segments")
    add("dicom_rle_short_segment.dcm",
        dicom_bytes(dicom(ts=RLE_LOSSLESS, uid_tail="16", pixel_data=encapsulate([rle_ok[: seg2 + 40]]))),
        "RLE frame cut 40 bytes into segment 2: it decodes short of Rows x Columns", "RLE segment 2 decodes to only")
    add("dicom_rle_extra_frame.dcm",
        dicom_bytes(dicom(ts=RLE_LOSSLESS, uid_tail="17",
                          pixel_data=encapsulate([rle_ok, rle_frame([rle_bomb_segment(2048)] * 2)], has_bot=True))),
        "single-frame RLE whose Basic Offset Table adds a second frame, an RLE bomb (pydicom decodes extra "
        "frames)", "more than one frame")

    (HERE / "MANIFEST.json").write_text(json.dumps(MANIFEST, indent=1) + "\n")


def _first_fragment(pixel_data: bytes) -> bytes:
    fragments = generate_fragments(pixel_data)
    next(fragments)  # Basic Offset Table
    return next(fragments)


def _compressed(ts: str) -> Dataset:
    ds = dicom(uid_tail=ts.rsplit(".", 1)[-1] + "0")
    ds.compress(UID(ts), encoding_plugin="pyjpegls" if ts == JPEG_LS_LOSSLESS else "", generate_instance_uid=False)
    return ds


if __name__ == "__main__":
    build()
    total = sum(f.stat().st_size for f in HERE.iterdir() if f.is_file())
    print(f"{len(MANIFEST)} files, {total / 1e6:.2f} MB in {HERE}")
