"""What a study's bytes say about themselves before any pixel is decoded.

The format (by magic bytes, never by file name), the size a PNG IHDR or JPEG SOF
declares, the limits that size is held to, and the one rule by which a decoder's
exception becomes :class:`~cxr.errors.InvalidImageError`.  Pure Python, no numpy,
no pydicom: the client, the server's decoders and the DICOM guards all import it,
and it imports none of them (only the leaf :mod:`cxr.decode.types`, for
:class:`~cxr.decode.types.ImageFormat`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

from cxr.decode.types import ImageFormat
from cxr.errors import InvalidImageError

# Largest flat-panel detectors are ~4300 x 4300 (18.5 Mpx); 2x that is still a
# radiograph, anything above is a decompression bomb or not an X-ray.
MAX_PIXELS = 40_000_000
# A chest film smaller than this on either side carries no diagnostic content; it
# is also what stops 1x1 "images" from reaching the model.
MIN_SIDE = 8

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
JPEG_MAGIC = b"\xff\xd8\xff"
DICOM_MAGIC, DICOM_MAGIC_AT = b"DICM", 128  # PS3.10: 128-byte preamble, then "DICM"
SNIFF_BYTES = DICOM_MAGIC_AT + len(DICOM_MAGIC)  # all that sniff_format reads of a file
# File names `cxr predict`, the soak and the NIH loader pick up from a folder.  Only a
# folder scan looks at names (a file named on the command line is read whatever its
# name); what a file is, is decided by its bytes.
STUDY_SUFFIXES = (".png", ".dcm", ".jpg", ".jpeg")


def describe(data: bytes) -> str:
    """A short, PHI-free description of unrecognised bytes for error messages."""
    return f"{len(data)} bytes starting with {data[:8]!r}"


def check_size(h: int, w: int, what: str, max_pixels: int = MAX_PIXELS) -> None:
    """Refuse a declared ``h`` x ``w`` above ``max_pixels`` or below :data:`MIN_SIDE` a side."""
    if h * w > max_pixels:
        raise InvalidImageError(
            f"{what} is {w}x{h} = {h * w / 1e6:.1f} Mpx, above the {max_pixels / 1e6:.0f} Mpx limit "
            "(no radiograph is that large; refusing to decode a possible decompression bomb)"
        )
    if min(h, w) < MIN_SIDE:
        raise InvalidImageError(f"{what} is {w}x{h}; a radiograph needs at least {MIN_SIDE} pixels per side")


@contextmanager
def invalid_image(message: Callable[[Exception], str]) -> Iterator[None]:
    """Any exception in the block becomes ``InvalidImageError(message(exc))``, chained.

    Decoders (Pillow, pydicom, numpy) raise OSError, SyntaxError, ValueError,
    struct.error, KeyError, ... for damaged data: all of them mean "this study".
    Two pass through unchanged: InvalidImageError (it already says what is wrong)
    and MemoryError (the host is short of memory: not the study's fault).
    """
    try:
        yield
    except (InvalidImageError, MemoryError):
        raise
    except Exception as exc:
        raise InvalidImageError(message(exc)) from exc


def sniff_format(data: bytes) -> ImageFormat | None:
    """PNG, JPEG or DICOM by magic bytes; None for anything else."""
    if data.startswith(PNG_MAGIC):
        return ImageFormat.PNG
    if data.startswith(JPEG_MAGIC):
        return ImageFormat.JPEG
    if data[DICOM_MAGIC_AT : DICOM_MAGIC_AT + 4] == DICOM_MAGIC:
        return ImageFormat.DICOM
    return None


def image_format(data: bytes) -> ImageFormat:
    """:func:`sniff_format`, refusing empty and unrecognised bytes."""
    if len(data) == 0:
        raise InvalidImageError("empty input (0 bytes): expected a PNG, JPEG or DICOM file")
    fmt = sniff_format(data)
    if fmt is None:
        raise InvalidImageError(
            f"unrecognised image format: expected PNG, JPEG or DICOM (Part 10), got {describe(data)}"
        )
    return fmt


def png_size(data: bytes) -> tuple[int, int]:
    """(height, width) from the IHDR chunk, which PNG puts first (bytes 12..24)."""
    if len(data) < 24 or data[12:16] != b"IHDR":
        raise InvalidImageError(
            f"corrupt PNG: no IHDR header chunk right after the signature, where every PNG has it; got {describe(data)}"
        )
    return int.from_bytes(data[20:24], "big"), int.from_bytes(data[16:20], "big")


# Start-of-frame markers, whose segment holds P, Y (rows), X (columns): baseline,
# extended (12-bit), progressive, lossless, hierarchical and arithmetic variants,
# DHP (0xDE, same layout) and JPEG-LS SOF55 (0xF7).
_SOF = frozenset({0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF, 0xDE, 0xF7})
_SOS = 0xDA
_STANDALONE = frozenset({0x01, *range(0xD0, 0xDA)})  # TEM, RSTn, SOI, EOI: no length field


def jpeg_frame_size(data: bytes) -> tuple[int, int] | None:
    """(rows, columns) of the last start-of-frame segment before the first scan, or None.

    One walker for every JPEG-family codestream (JPEG files, and the frames of JPEG
    Baseline / Extended / Lossless / JPEG-LS DICOM).  Segments are skipped by their
    length, so a thumbnail inside APP1 is never mistaken for the image; bytes between
    segments that are not a marker are skipped the way libjpeg and Pillow do.  The
    last SOF wins because that is the one Pillow allocates for.
    """
    size, pos, end = None, 2, len(data)
    while True:
        pos = data.find(b"\xff", pos)
        if pos < 0 or pos + 1 >= end:
            return size
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte before a marker
            pos += 1
        elif marker == 0x00 or marker in _STANDALONE:
            pos += 2
        elif marker == _SOS:
            return size
        else:
            if marker in _SOF and pos + 9 <= end:
                size = int.from_bytes(data[pos + 5 : pos + 7], "big"), int.from_bytes(data[pos + 7 : pos + 9], "big")
            pos += 2 + int.from_bytes(data[pos + 2 : pos + 4], "big")


def jpeg_size(data: bytes) -> tuple[int, int]:
    """(height, width) of a JPEG file from its frame header; refuses a JPEG without one."""
    size = jpeg_frame_size(data)
    if size is None:
        raise InvalidImageError(
            f"corrupt JPEG: no frame header (SOF marker) before the image data, so its size is unknown; "
            f"got {describe(data)}"
        )
    return size
