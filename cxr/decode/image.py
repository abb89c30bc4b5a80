"""Decode radiographs from PNG, JPEG, DICOM or raw pixel arrays.

Every decoder returns a :class:`DecodedImage` whose ``pixels`` are float32 ``[H, W]``
in ``[0, 1]`` with the display convention of a film: 0 is black (air), 1 is white
(bone).  The same function runs at training time and inside the Triton preprocess
model, so the two cannot drift apart.

The bytes travel one way: :func:`decode_image` recognises the format by its magic
bytes (:mod:`cxr.decode.header`) and hands a DICOM to :mod:`cxr.decode.dicom` (header
checks, then the pre-decode guards of :mod:`cxr.decode.guards`, then the PS3.4
grayscale pipeline); PNG and JPEG are decoded here, raw arrays too.
:func:`probe` reads what a study's header declares without decoding it (the client
checks a request with it before sending).

Anything that is not a readable grayscale radiograph raises
:class:`~cxr.errors.InvalidImageError` with a message naming what was received;
no other exception type escapes :func:`decode_image` for bad input.

Input policy (tests/data/hostile/MANIFEST.json lists one file per rule):

- Size is checked from the header before any pixel is decompressed: PNG IHDR,
  JPEG SOF, DICOM Rows/Columns and the codestream header of a compressed DICOM
  frame (which must agree with Rows/Columns); a deflated DICOM is inflated with a
  cap.  Above :data:`MAX_PIXELS` is refused as a possible decompression bomb.
  The checks on compressed DICOM live in :mod:`cxr.decode.guards`.
- An RLE Lossless frame is walked run by run before pydicom decodes it (pydicom
  expands each segment without a limit, up to 64x the encoded size): its header
  must list BitsAllocated/8 segments at increasing offsets inside the frame, and
  each segment must decode to Rows x Columns bytes (plus at most
  :data:`~cxr.decode.guards.RLE_SEGMENT_SLACK`), neither more nor less.
- A compressed single-frame DICOM whose offset tables split the pixel data into
  more than one frame is refused (pydicom would decode the extra frames unchecked).
- Grayscale stored as RGB (R = G = B, within JPEG chroma noise) is accepted as
  grayscale; true colour is refused with a message that says "colour".
- Palette PNGs are accepted when every used colour is grey, refused otherwise.
- Transparency (alpha channel or tRNS) is accepted only when every pixel is fully
  opaque, then dropped; any transparent pixel is refused (what is behind it is
  unknown).
- Float arrays with NaN/Inf, or results of the DICOM pipeline that are not finite
  (e.g. a NaN RescaleSlope), are refused.
"""

from __future__ import annotations

import io
import os
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from cxr.decode.dicom import decode_dataset, probe_dicom, read_dicom
from cxr.decode.guards import MAX_INFLATED_DICOM_BYTES
from cxr.decode.header import (JPEG_MAGIC, MAX_PIXELS, MIN_SIDE, PNG_MAGIC, STUDY_SUFFIXES, check_size, describe,
                               image_format, invalid_image, jpeg_size, png_size)
from cxr.decode.types import DecodedImage, ImageFormat, ImageHeader
from cxr.errors import InvalidImageError, MissingFileError

if TYPE_CHECKING:
    from pydicom import Dataset


# Grayscale stored as RGB (common for NIH PNGs and JPEG exports) has equal channels;
# JPEG chroma subsampling leaves a few grey levels of difference.
_MAX_CHANNEL_SPREAD = 12


_SIZE_FROM_HEADER = {ImageFormat.PNG: png_size, ImageFormat.JPEG: jpeg_size}


def probe(source: bytes | Dataset) -> ImageHeader:
    """The format and declared size of an encoded study or a ``pydicom.Dataset``, from its header alone.

    Never decodes pixels (DICOM bytes are parsed up to the pixel data, a deflated
    file inflated only under the cap); garbage raises InvalidImageError.  The size is
    not checked against the limits here: callers pass it to
    :func:`~cxr.decode.header.check_size`.
    """
    if _is_dataset(source):
        return ImageHeader(ImageFormat.DICOM, *probe_dicom(source))
    data = bytes(source)
    return _probe_bytes(data, image_format(data))


def _probe_bytes(data: bytes, fmt: ImageFormat) -> ImageHeader:
    """:func:`probe` of bytes whose format was already sniffed (by the caller, once)."""
    if fmt is ImageFormat.DICOM:
        return ImageHeader(fmt, *probe_dicom(data))
    return ImageHeader(fmt, *_SIZE_FROM_HEADER[fmt](data))


def _is_dataset(source: Any) -> bool:
    return type(source).__name__ in ("Dataset", "FileDataset")  # without importing pydicom


def read_source(source: bytes | bytearray | memoryview | str | os.PathLike) -> bytes:
    """Bytes of an image given as bytes or a file path."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        return bytes(source)
    path = Path(source)
    if not path.is_file():
        raise MissingFileError(f"no such image file: {path}")
    return path.read_bytes()


def decode_image(source: Any, *, max_pixels: int = MAX_PIXELS, header: ImageHeader | None = None) -> DecodedImage:
    """Decode a radiograph from bytes, a path, a ``pydicom.Dataset`` or a pixel array.

    The format of bytes is recognised by content (PNG/JPEG magic, DICOM preamble),
    never by file name, once: the PNG/JPEG decoder is handed what was sniffed.
    ``header``: what :func:`probe` already read of these same bytes (the client's
    study keeps it), so neither the format nor the PNG/JPEG size is read again.
    """
    if isinstance(source, np.ndarray):
        return decode_pixels(source, max_pixels=max_pixels)
    if _is_dataset(source):
        return decode_dicom_dataset(source, max_pixels=max_pixels)
    data = read_source(source)
    fmt = image_format(data) if header is None else header.format
    if fmt is ImageFormat.DICOM:
        return decode_dicom_bytes(data, max_pixels=max_pixels)
    return _decode_pil(data, _probe_bytes(data, fmt) if header is None else header, max_pixels)


# --------------------------------------------------------------------------- PNG/JPEG


def _decode_pil(data: bytes, header: ImageHeader, max_pixels: int) -> DecodedImage:
    from PIL import Image

    fmt, h, w = header.format.display_name, header.height, header.width
    check_size(h, w, f"{fmt} image", max_pixels)  # before Pillow allocates anything (decompression bombs)
    with invalid_image(lambda exc: f"corrupt {fmt}: cannot read the header ({exc}); got {describe(data)}"):
        with warnings.catch_warnings():
            # Pillow warns from 89 Mpx on; our own, lower limit was checked above.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            try:
                img = Image.open(io.BytesIO(data), formats=[fmt])
            except Image.DecompressionBombError as exc:
                raise InvalidImageError(
                    f"{fmt} image above the pixel limit, refusing to decode a possible decompression bomb: {exc}"
                ) from exc
    if img.size != (w, h):
        # Pillow's marker parser is not the standard's (it reads JPGn segments as bare
        # markers), so a crafted file can show it another frame size than the one checked.
        raise InvalidImageError(
            f"corrupt {fmt}: its frame header declares {w}x{h} but Pillow reads {img.width}x{img.height} from it; "
            "refusing a file whose size is ambiguous (re-save it with a standard encoder)"
        )
    with invalid_image(lambda exc: f"truncated or corrupt {fmt} ({w}x{h}, {len(data)} bytes): {exc}"):
        img.load()
    with invalid_image(lambda exc: f"{fmt} with pixel mode {img.mode!r} cannot be read: {exc}"):
        return _pil_pixels(img, header.format)


def _pil_pixels(img, source: ImageFormat) -> DecodedImage:
    """Grayscale pixels of a loaded PIL image, applying the alpha and colour policy."""
    fmt, mode = source.display_name, img.mode
    if mode in ("LA", "RGBA", "PA") or "transparency" in img.info:
        alpha = img.getchannel("A") if mode in ("LA", "RGBA", "PA") else img.convert("RGBA").getchannel("A")
        lowest = alpha.getextrema()[0]
        if lowest < 255:
            n = int(np.count_nonzero(np.asarray(alpha) < 255))
            raise InvalidImageError(
                f"{fmt} with transparency ({mode}, {n} of {img.width * img.height} pixels not opaque) is not a "
                "radiograph: what lies behind transparent pixels is unknown; send an opaque grayscale image"
            )
        # fully opaque: the alpha channel carries nothing; drop it
        img = img.convert("L") if mode == "LA" else img.convert("RGB") if mode in ("RGBA", "PA") else img
        mode = img.mode
    if mode == "L":
        return DecodedImage(np.asarray(img, dtype=np.float32) / 255.0, source, 8)
    if mode in ("I;16", "I;16L", "I;16B", "I;16N"):
        arr = np.asarray(img).astype(np.float32)
        return DecodedImage(arr / 65535.0, source, 16)
    if mode == "I":  # 16-bit grayscale PNG as 32-bit ints in some Pillow versions
        arr = np.asarray(img)
        if arr.min() < 0 or arr.max() > 65535:
            raise InvalidImageError(f"{fmt} with 32-bit integer pixels outside 0..65535 is not supported")
        return DecodedImage(arr.astype(np.float32) / 65535.0, source, 16)
    if mode in ("RGB", "P"):
        rgb = np.asarray(img.convert("RGB"), dtype=np.uint8)
        spread = int((rgb.max(axis=2) - rgb.min(axis=2)).max())  # max >= min: no uint8 wrap-around
        if spread > _MAX_CHANNEL_SPREAD:
            what = "palette" if mode == "P" else "true-colour RGB"
            raise InvalidImageError(
                f"colour {fmt} ({what}, channels differ by up to {spread} grey levels) is not a radiograph; "
                "send the grayscale image"
            )
        return DecodedImage(rgb.mean(axis=2, dtype=np.float32) / 255.0, source, 8)
    raise InvalidImageError(
        f"{fmt} with pixel mode {mode!r} is not supported; expected 8- or 16-bit grayscale (L, I;16) "
        "or grayscale stored as RGB"
    )


# ------------------------------------------------------------------------ raw pixels


def check_pixel_array(array: Any, *, bits_stored: int | None = None, floats: bool = True,
                      max_pixels: int = MAX_PIXELS) -> tuple[np.ndarray, int]:
    """The rules raw pixels obey on both sides of the wire: ``(array [H, W], bits stored)``, or InvalidImageError.

    The client's request builder checks a caller's array with them before sending it,
    and :func:`decode_pixels` on the server after receiving it, so the two cannot
    disagree about what is a radiograph.  uint8 has 8 bits stored; uint16 has
    ``bits_stored`` (an integer in 1..16, default 16), which no value may exceed; float
    pixels (only with ``floats``: the wire carries uint16, so the client refuses them)
    must be finite and lie in [0, 1] (reported as 32 bits).  ``[H, W, 1]`` is taken as ``[H, W]``.
    """
    with invalid_image(lambda exc: f"pixels are not an array: {exc}"):  # ragged nested lists and the like
        arr = np.asarray(array)
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.ndim != 2:
        raise InvalidImageError(f"pixel array must be 2-D [H, W] grayscale, got shape {tuple(arr.shape)}")
    check_size(arr.shape[0], arr.shape[1], "pixel array", max_pixels)
    if arr.dtype == np.uint8:
        if bits_stored not in (None, 8):
            raise InvalidImageError(f"uint8 pixels have 8 bits stored, got bits_stored={bits_stored}")
        return arr, 8
    if arr.dtype == np.uint16:
        bits = 16 if bits_stored is None else bits_stored
        if isinstance(bits, bool) or not isinstance(bits, (int, np.integer)) or not 1 <= bits <= 16:
            raise InvalidImageError(f"bits_stored must be an integer in 1..16 for uint16 pixels, got {bits!r}")
        top = 2 ** int(bits) - 1
        if int(arr.max(initial=0)) > top:
            raise InvalidImageError(f"uint16 pixels reach {int(arr.max())}, above the {bits}-bit maximum {top}")
        return arr, int(bits)
    if not floats:
        raise InvalidImageError(f"pixel dtype {arr.dtype} is not supported; send uint8 or uint16 "
                                "(scale floats in [0, 1] with (x * 65535).round().astype(np.uint16))")
    if arr.dtype not in (np.float32, np.float64, np.float16):
        raise InvalidImageError(f"pixel dtype {arr.dtype} is not supported; send uint8, uint16 or float32 in [0, 1]")
    if not np.isfinite(arr).all():
        n_nan, n_inf = int(np.isnan(arr).sum()), int(np.isinf(arr).sum())
        raise InvalidImageError(f"float pixel array contains NaN or Inf ({n_nan} NaN, {n_inf} Inf values)")
    lo, hi = float(arr.min()), float(arr.max())
    if lo < 0.0 or hi > 1.0:
        raise InvalidImageError(f"float pixels must lie in [0, 1], got range [{lo:.4g}, {hi:.4g}]")
    return arr, 32


def decode_pixels(
    array: np.ndarray, *, bits_stored: int | None = None, spacing_mm: tuple[float, float] | None = None,
    max_pixels: int = MAX_PIXELS,
) -> DecodedImage:
    """Pixels a client decoded itself: uint8 / uint16 ``[H, W]``, or float ``[H, W]`` in [0, 1]
    (the rules: :func:`check_pixel_array`).  uint16 values are scaled by ``bits_stored`` (default 16).
    """
    arr, bits = check_pixel_array(array, bits_stored=bits_stored, max_pixels=max_pixels)
    if arr.dtype == np.uint8 or arr.dtype == np.uint16:
        pixels = arr.astype(np.float32) / float(2**bits - 1)
    else:
        pixels = arr.astype(np.float32)
    return DecodedImage(pixels, ImageFormat.ARRAY, bits, spacing_mm)


# ----------------------------------------------------------------------------- DICOM


def decode_dicom_bytes(data: bytes, *, max_pixels: int = MAX_PIXELS) -> DecodedImage:
    """Decode DICOM Part 10 bytes (see :mod:`cxr.decode.dicom` for the pipeline)."""
    return decode_dicom_dataset(read_dicom(data), max_pixels=max_pixels)


def decode_dicom_dataset(ds, *, max_pixels: int = MAX_PIXELS) -> DecodedImage:
    """Apply the DICOM grayscale pipeline to a ``pydicom.Dataset``."""
    return decode_dataset(ds, max_pixels=max_pixels)
