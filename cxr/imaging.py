"""Decode radiographs from PNG, JPEG, DICOM or raw pixel arrays.

Every decoder returns a :class:`DecodedImage` whose ``pixels`` are float32 ``[H, W]``
in ``[0, 1]`` with the display convention of a film: 0 is black (air), 1 is white
(bone).  The same function runs at training time and inside the Triton preprocess
model, so the two cannot drift apart.

DICOM follows the standard's pixel pipeline (PS3.4 Grayscale Transformations):
stored values -> Modality LUT (RescaleSlope/Intercept or Modality LUT Sequence) ->
VOI LUT (VOI LUT Sequence preferred, else Window Center/Width, else the full range
that BitsStored allows) -> MONOCHROME1 inversion.

Anything that is not a readable grayscale radiograph raises
:class:`~cxr.errors.InvalidImageError` with a message naming what was received;
no other exception type escapes :func:`decode_image` for bad input.

Input policy (tests/data/hostile/MANIFEST.json lists one file per rule):

- Size is checked from the header before any pixel is decompressed: PNG IHDR,
  JPEG SOF, DICOM Rows/Columns and the codestream header of a compressed DICOM
  frame (which must agree with Rows/Columns); a deflated DICOM is inflated with a
  cap.  Above :data:`MAX_PIXELS` is refused as a possible decompression bomb.
  The checks on compressed DICOM live in :mod:`cxr.dicom_guards`.
- An RLE Lossless frame is walked run by run before pydicom decodes it (pydicom
  expands each segment without a limit, up to 64x the encoded size): its header
  must list BitsAllocated/8 segments at increasing offsets inside the frame, and
  each segment must decode to Rows x Columns bytes (plus at most
  :data:`~cxr.dicom_guards.RLE_SEGMENT_SLACK`), neither more nor less.
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
import math
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cxr.dicom_guards import (
    DEFLATED_TS,
    RLE_LOSSLESS_TS,
    check_deflate_bomb,
    check_rle_frame,
    codestream_size,
    first_frame,
    has_decoder,
    single_frame,
)
from cxr.errors import InvalidImageError

# Largest flat-panel detectors are ~4300 x 4300 (18.5 Mpx); 2x that is still a
# radiograph, anything above is a decompression bomb or not an X-ray.
MAX_PIXELS = 40_000_000
# A chest film smaller than this on either side carries no diagnostic content; it
# is also what stops 1x1 "images" from reaching the model.
MIN_SIDE = 8
# Cap on an inflated (Deflated Explicit VR Little Endian) DICOM: MAX_PIXELS at
# 16 bits plus generous room for the header.  pydicom would inflate without limit.
MAX_INFLATED_DICOM_BYTES = 2 * MAX_PIXELS + 16 * 1024 * 1024
# Grayscale stored as RGB (common for NIH PNGs and JPEG exports) has equal channels;
# JPEG chroma subsampling leaves a few grey levels of difference.
_MAX_CHANNEL_SPREAD = 12

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
JPEG_MAGIC = b"\xff\xd8\xff"


@dataclass(frozen=True)
class DicomInfo:
    """Non-PHI identifiers of a DICOM source, kept for results and SR references."""

    sop_instance_uid: str | None = None
    sop_class_uid: str | None = None
    study_instance_uid: str | None = None
    series_instance_uid: str | None = None
    modality: str | None = None
    photometric_interpretation: str | None = None
    view_position: str | None = None
    body_part: str | None = None
    transfer_syntax: str | None = None


@dataclass(frozen=True)
class DecodedImage:
    """A decoded radiograph.

    pixels: float32 ``[H, W]`` in ``[0, 1]``, 0 = black (air), 1 = white (bone).
    spacing_mm: (row, column) pixel spacing in mm, or ``None`` when unknown.
    """

    pixels: np.ndarray
    source_format: str
    bits_stored: int
    spacing_mm: tuple[float, float] | None = None
    dicom: DicomInfo | None = field(default=None, repr=False)

    @property
    def height(self) -> int:
        return int(self.pixels.shape[0])

    @property
    def width(self) -> int:
        return int(self.pixels.shape[1])


def _describe(data: bytes) -> str:
    return f"{len(data)} bytes starting with {data[:8]!r}"


def _check_size(h: int, w: int, what: str, max_pixels: int) -> None:
    if h * w > max_pixels:
        raise InvalidImageError(
            f"{what} is {w}x{h} = {h * w / 1e6:.1f} Mpx, above the {max_pixels / 1e6:.0f} Mpx limit "
            "(no radiograph is that large; refusing to decode a possible decompression bomb)"
        )
    if min(h, w) < MIN_SIDE:
        raise InvalidImageError(f"{what} is {w}x{h}; a radiograph needs at least {MIN_SIDE} pixels per side")


def read_source(source: bytes | bytearray | memoryview | str | os.PathLike) -> bytes:
    """Bytes of an image given as bytes or a file path."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        return bytes(source)
    path = Path(source)
    if not path.is_file():
        raise FileNotFoundError(f"no such image file: {path}")
    return path.read_bytes()


def decode_image(source: Any, *, max_pixels: int = MAX_PIXELS) -> DecodedImage:
    """Decode a radiograph from bytes, a path, a ``pydicom.Dataset`` or a pixel array.

    The format of bytes is recognised by content (PNG/JPEG magic, DICOM preamble),
    never by file name.
    """
    if isinstance(source, np.ndarray):
        return decode_pixels(source, max_pixels=max_pixels)
    if type(source).__name__ in ("Dataset", "FileDataset"):
        return decode_dicom_dataset(source, max_pixels=max_pixels)
    data = read_source(source)
    if len(data) == 0:
        raise InvalidImageError("empty input (0 bytes): expected a PNG, JPEG or DICOM file")
    if data.startswith(PNG_MAGIC):
        return _decode_pil(data, "PNG", max_pixels)
    if data.startswith(JPEG_MAGIC):
        return _decode_pil(data, "JPEG", max_pixels)
    if len(data) >= 132 and data[128:132] == b"DICM":
        return decode_dicom_bytes(data, max_pixels=max_pixels)
    raise InvalidImageError(f"unrecognised image format: expected PNG, JPEG or DICOM (Part 10), got {_describe(data)}")


# --------------------------------------------------------------------------- PNG/JPEG


def _decode_pil(data: bytes, fmt: str, max_pixels: int) -> DecodedImage:
    from PIL import Image

    if fmt == "PNG" and len(data) >= 24 and data[12:16] == b"IHDR":
        # Check the declared size before PIL allocates anything (decompression bombs).
        _check_size(int.from_bytes(data[20:24], "big"), int.from_bytes(data[16:20], "big"), "PNG image", max_pixels)
    try:
        with warnings.catch_warnings():
            # Pillow warns from 89 Mpx on; our own, lower limit is checked right below.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data), formats=[fmt])
    except Image.DecompressionBombError as exc:
        raise InvalidImageError(
            f"{fmt} image above the pixel limit, refusing to decode a possible decompression bomb: {exc}"
        ) from exc
    except MemoryError:  # the host is short of memory: not the study's fault
        raise
    except Exception as exc:
        raise InvalidImageError(f"corrupt {fmt}: cannot read the header ({exc}); got {_describe(data)}") from exc
    w, h = img.size
    _check_size(h, w, f"{fmt} image", max_pixels)
    try:
        img.load()
    except MemoryError:  # the host is short of memory: not the study's fault
        raise
    except Exception as exc:  # PIL raises OSError, SyntaxError, zlib.error, ... for damaged data
        raise InvalidImageError(f"truncated or corrupt {fmt} ({w}x{h}, {len(data)} bytes): {exc}") from exc
    try:
        return _pil_pixels(img, fmt)
    except InvalidImageError:
        raise
    except MemoryError:  # the host is short of memory: not the study's fault
        raise
    except Exception as exc:  # a mode Pillow cannot convert; not a bug in the caller's data handling
        raise InvalidImageError(f"{fmt} with pixel mode {img.mode!r} cannot be read: {exc}") from exc


def _pil_pixels(img, fmt: str) -> DecodedImage:
    """Grayscale pixels of a loaded PIL image, applying the alpha and colour policy."""
    mode = img.mode
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
        return DecodedImage(np.asarray(img, dtype=np.float32) / 255.0, fmt.lower(), 8)
    if mode in ("I;16", "I;16L", "I;16B", "I;16N"):
        arr = np.asarray(img).astype(np.float32)
        return DecodedImage(arr / 65535.0, fmt.lower(), 16)
    if mode == "I":  # 16-bit grayscale PNG as 32-bit ints in some Pillow versions
        arr = np.asarray(img)
        if arr.min() < 0 or arr.max() > 65535:
            raise InvalidImageError(f"{fmt} with 32-bit integer pixels outside 0..65535 is not supported")
        return DecodedImage(arr.astype(np.float32) / 65535.0, fmt.lower(), 16)
    if mode in ("RGB", "P"):
        rgb = np.asarray(img.convert("RGB"), dtype=np.uint8)
        spread = int((rgb.max(axis=2) - rgb.min(axis=2)).max())  # max >= min: no uint8 wrap-around
        if spread > _MAX_CHANNEL_SPREAD:
            what = "palette" if mode == "P" else "true-colour RGB"
            raise InvalidImageError(
                f"colour {fmt} ({what}, channels differ by up to {spread} grey levels) is not a radiograph; "
                "send the grayscale image"
            )
        return DecodedImage(rgb.mean(axis=2, dtype=np.float32) / 255.0, fmt.lower(), 8)
    raise InvalidImageError(
        f"{fmt} with pixel mode {mode!r} is not supported; expected 8- or 16-bit grayscale (L, I;16) "
        "or grayscale stored as RGB"
    )


# ------------------------------------------------------------------------ raw pixels


def decode_pixels(
    array: np.ndarray, *, bits_stored: int | None = None, spacing_mm=None, max_pixels: int = MAX_PIXELS
) -> DecodedImage:
    """Pixels a client decoded itself: uint8 / uint16 ``[H, W]``, or float ``[H, W]`` in [0, 1].

    uint16 values are scaled by ``bits_stored`` (default 16).
    """
    try:
        arr = np.asarray(array)
    except MemoryError:  # the host is short of memory: not the study's fault
        raise
    except Exception as exc:  # ragged nested lists and the like
        raise InvalidImageError(f"pixels are not an array: {exc}") from exc
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.ndim != 2:
        raise InvalidImageError(f"pixel array must be 2-D [H, W] grayscale, got shape {tuple(arr.shape)}")
    _check_size(arr.shape[0], arr.shape[1], "pixel array", max_pixels)
    if arr.dtype == np.uint8:
        return DecodedImage(arr.astype(np.float32) / 255.0, "array", 8, spacing_mm)
    if arr.dtype == np.uint16:
        bits = 16 if bits_stored is None else int(bits_stored)
        if not 1 <= bits <= 16:
            raise InvalidImageError(f"bits_stored must be in 1..16 for uint16 pixels, got {bits}")
        top = float(2**bits - 1)
        if arr.max(initial=0) > top:
            raise InvalidImageError(f"uint16 pixels reach {int(arr.max())}, above the {bits}-bit maximum {int(top)}")
        return DecodedImage(arr.astype(np.float32) / top, "array", bits, spacing_mm)
    if arr.dtype in (np.float32, np.float64, np.float16):
        if not np.isfinite(arr).all():
            n_nan, n_inf = int(np.isnan(arr).sum()), int(np.isinf(arr).sum())
            raise InvalidImageError(f"float pixel array contains NaN or Inf ({n_nan} NaN, {n_inf} Inf values)")
        lo, hi = float(arr.min()), float(arr.max())
        if lo < 0.0 or hi > 1.0:
            raise InvalidImageError(f"float pixels must lie in [0, 1], got range [{lo:.4g}, {hi:.4g}]")
        return DecodedImage(arr.astype(np.float32), "array", 32, spacing_mm)
    raise InvalidImageError(f"pixel dtype {arr.dtype} is not supported; send uint8, uint16 or float32 in [0, 1]")


# ----------------------------------------------------------------------------- DICOM


def decode_dicom_bytes(data: bytes, *, max_pixels: int = MAX_PIXELS) -> DecodedImage:
    import pydicom

    check_deflate_bomb(data, MAX_INFLATED_DICOM_BYTES)
    try:
        ds = pydicom.dcmread(io.BytesIO(data))
    except MemoryError:  # the host is short of memory: not the study's fault
        raise
    except Exception as exc:
        raise InvalidImageError(f"corrupt or truncated DICOM ({len(data)} bytes): {exc}") from exc
    return decode_dicom_dataset(ds, max_pixels=max_pixels)


def _first(value) -> float:
    try:
        return float(value[0])
    except TypeError:
        return float(value)


def _spacing(ds) -> tuple[float, float] | None:
    for keyword in ("PixelSpacing", "ImagerPixelSpacing"):
        value = ds.get(keyword)
        if value is not None and len(value) == 2:
            row, col = float(value[0]), float(value[1])
            if row > 0 and col > 0:
                return row, col
    return None


def _window(x: np.ndarray, center: float, width: float, function: str) -> np.ndarray:
    """DICOM VOI window (PS3.3 C.11.2.1.2) mapped to [0, 1]."""
    if function == "SIGMOID":
        return 1.0 / (1.0 + np.exp(-4.0 * (x - center) / width))
    if function == "LINEAR_EXACT":
        return np.clip((x - center) / width + 0.5, 0.0, 1.0)
    # LINEAR: the standard's definition with its half-pixel offsets; width 1 is a threshold
    if width <= 1.0:
        return (x > center - 0.5).astype(np.float64)
    return np.clip((x - (center - 0.5)) / (width - 1.0) + 0.5, 0.0, 1.0)


def decode_dicom_dataset(ds, *, max_pixels: int = MAX_PIXELS) -> DecodedImage:
    """Apply the DICOM grayscale pipeline to a ``pydicom.Dataset``.

    pydicom converts element values lazily, so damaged elements raise (ValueError,
    struct.error, KeyError, ...) wherever they are first read; all of those become
    :class:`InvalidImageError` naming the exception.
    """
    try:
        return _decode_dicom_dataset(ds, max_pixels)
    except InvalidImageError:
        raise
    except MemoryError:  # the host is short of memory: not the study's fault
        raise
    except Exception as exc:
        raise InvalidImageError(f"corrupt DICOM ({type(exc).__name__}: {exc})") from exc


def _decode_dicom_dataset(ds, max_pixels: int) -> DecodedImage:
    from pydicom.pixels import apply_modality_lut, apply_voi

    tsuid = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    ts_name = f"{tsuid.name} ({tsuid})" if tsuid is not None else "unknown"
    if "PixelData" not in ds:
        sop = ds.get("SOPClassUID")
        raise InvalidImageError(
            f"DICOM without pixel data (SOP Class {getattr(sop, 'name', sop) or 'unknown'}) is not an image"
        )
    photometric = str(ds.get("PhotometricInterpretation", "")).strip()
    if photometric not in ("MONOCHROME1", "MONOCHROME2"):
        raise InvalidImageError(
            f"DICOM with PhotometricInterpretation {photometric or '(missing)'} is not a radiograph; "
            "expected MONOCHROME1 or MONOCHROME2"
        )
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if frames != 1:
        raise InvalidImageError(f"multi-frame DICOM ({frames} frames) is not a single radiograph")
    samples = int(ds.get("SamplesPerPixel", 1) or 1)
    if samples != 1:
        raise InvalidImageError(f"DICOM {photometric} with SamplesPerPixel {samples}; a grayscale image has 1")
    rows, cols = int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0)
    _check_size(rows, cols, "DICOM image", max_pixels)
    allocated = int(ds.get("BitsAllocated", 0) or 0)
    if allocated not in (8, 16):
        raise InvalidImageError(f"DICOM BitsAllocated {allocated} is not supported; grayscale radiographs use 8 or 16")
    bits = int(ds.get("BitsStored", allocated) or 0)
    if not 1 <= bits <= allocated:
        raise InvalidImageError(f"DICOM BitsStored {bits} is impossible with BitsAllocated {allocated}")
    signed = int(ds.get("PixelRepresentation", 0)) == 1

    compressed = tsuid is not None and tsuid.is_compressed and tsuid != DEFLATED_TS
    if compressed and tsuid == RLE_LOSSLESS_TS:
        # pydicom's RLE decoder expands each segment fully before checking its length.
        frame = b"".join(single_frame(ds, ts_name, "RLE pixel data"))
        check_rle_frame(frame, rows, cols, allocated)
        del frame  # pydicom extracts its own copy
    elif compressed:
        single_frame(ds, ts_name, "compressed pixel data")
        # The decoders allocate what the codestream says, not what Rows/Columns say.
        frame = first_frame(ds.PixelData)
        declared = None if frame is None else codestream_size(frame)
        if declared is not None:
            _check_size(declared[0], declared[1], f"compressed DICOM frame ({ts_name})", max_pixels)
            if declared != (rows, cols):
                raise InvalidImageError(
                    f"compressed DICOM frame is {declared[1]}x{declared[0]} but Rows/Columns say {cols}x{rows}"
                )
    else:
        need, have = rows * cols * allocated // 8, len(ds.PixelData)
        if have not in (need, need + 1):  # one pad byte makes an odd length even
            raise InvalidImageError(
                f"truncated or corrupt DICOM pixel data: {have} bytes, but Columns x Rows x BitsAllocated = "
                f"{cols}x{rows}x{allocated} bits need {need} (cut short, or wrong Rows/Columns)"
            )

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # pydicom warns, then guesses, on inconsistent headers
            stored = ds.pixel_array
    except MemoryError:  # the host is short of memory: not the study's fault
        raise
    except Exception as exc:
        text = str(exc)
        if compressed and not has_decoder(tsuid):
            raise InvalidImageError(
                f"DICOM transfer syntax {ts_name} cannot be decoded here: no decoder installed "
                "(install pylibjpeg with its plugins, or send uncompressed DICOM)"
            ) from exc
        raise InvalidImageError(f"truncated or corrupt DICOM pixel data ({cols}x{rows}, {ts_name}): {text}") from exc
    if stored.shape != (rows, cols):
        raise InvalidImageError(
            f"DICOM pixel data decoded to shape {stored.shape}; Rows/Columns say one {rows}x{cols} grayscale frame"
        )

    with np.errstate(invalid="ignore", over="ignore"):
        values = apply_modality_lut(stored, ds).astype(np.float64)
    if not np.isfinite(values).all():
        raise InvalidImageError(
            f"DICOM Modality LUT gives NaN/Inf (RescaleSlope={ds.get('RescaleSlope')}, "
            f"RescaleIntercept={ds.get('RescaleIntercept')}); the header values are not usable"
        )
    if "VOILUTSequence" in ds:
        # LUT entries are indexed by integer input values; pydicom mis-indexes floats
        out = apply_voi(np.rint(values).astype(np.int64), ds).astype(np.float64)
        lut_bits = int(ds.VOILUTSequence[0].LUTDescriptor[2])
        out /= float(2**lut_bits - 1)
    elif "WindowCenter" in ds and "WindowWidth" in ds:
        function = str(ds.get("VOILUTFunction", "LINEAR")).strip().upper() or "LINEAR"
        center, width = _first(ds.WindowCenter), _first(ds.WindowWidth)
        if not (math.isfinite(center) and math.isfinite(width) and width > 0):
            raise InvalidImageError(
                f"DICOM window WindowCenter={center} WindowWidth={width} is invalid (width must be a positive number)"
            )
        out = _window(values, center, width, function)
    else:
        lo_stored, hi_stored = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2**bits - 1)
        ends = apply_modality_lut(np.array([lo_stored, hi_stored], dtype=stored.dtype), ds).astype(np.float64)
        lo, hi = float(ends.min()), float(ends.max())
        out = (values - lo) / (hi - lo) if hi > lo else np.zeros_like(values)
    if not np.isfinite(out).all():
        raise InvalidImageError(
            "DICOM grayscale pipeline gives NaN/Inf (Modality LUT, VOI LUT or window values); "
            "the header values are not usable"
        )
    out = np.clip(out, 0.0, 1.0)
    if photometric == "MONOCHROME1":  # MONOCHROME1: low values are white; flip to film convention
        out = 1.0 - out

    info = DicomInfo(
        sop_instance_uid=_str_or_none(ds.get("SOPInstanceUID")),
        sop_class_uid=_str_or_none(ds.get("SOPClassUID")),
        study_instance_uid=_str_or_none(ds.get("StudyInstanceUID")),
        series_instance_uid=_str_or_none(ds.get("SeriesInstanceUID")),
        modality=_str_or_none(ds.get("Modality")),
        photometric_interpretation=photometric,
        view_position=_str_or_none(ds.get("ViewPosition")),
        body_part=_str_or_none(ds.get("BodyPartExamined")),
        transfer_syntax=None if tsuid is None else str(tsuid),
    )
    return DecodedImage(out.astype(np.float32), "dicom", bits, _spacing(ds), info)


def _str_or_none(value) -> str | None:
    return None if value is None or str(value) == "" else str(value)
