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
:class:`~cxr.errors.InvalidImageError` with a message naming what was received.
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cxr.errors import InvalidImageError

# Largest flat-panel detectors are ~4300 x 4300 (18.5 Mpx); 2x that is still a
# radiograph, anything above is a decompression bomb or not an X-ray.
MAX_PIXELS = 40_000_000
# A chest film smaller than this on either side carries no diagnostic content; it
# is also what stops 1x1 "images" from reaching the model.
MIN_SIDE = 8
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
        img = Image.open(io.BytesIO(data), formats=[fmt])
    except Image.DecompressionBombError as exc:
        raise InvalidImageError(f"{fmt} image above the pixel limit, refusing to decode: {exc}") from exc
    except Exception as exc:
        raise InvalidImageError(f"corrupt {fmt}: cannot read the header ({exc}); got {_describe(data)}") from exc
    w, h = img.size
    _check_size(h, w, f"{fmt} image", max_pixels)
    try:
        img.load()
    except Exception as exc:  # PIL raises OSError, SyntaxError, zlib.error, ... for damaged data
        raise InvalidImageError(f"truncated or corrupt {fmt} ({w}x{h}, {len(data)} bytes): {exc}") from exc

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
    if mode == "LA":
        return DecodedImage(np.asarray(img.getchannel("L"), dtype=np.float32) / 255.0, fmt.lower(), 8)
    if mode in ("RGB", "RGBA", "P", "PA"):
        rgb = np.asarray(img.convert("RGB"), dtype=np.int16)
        spread = int((rgb.max(axis=2) - rgb.min(axis=2)).max())
        if spread > _MAX_CHANNEL_SPREAD:
            what = "palette" if mode in ("P", "PA") else mode
            raise InvalidImageError(
                f"colour {fmt} ({what}, channels differ by up to {spread} grey levels) is not a radiograph; "
                "send the grayscale image"
            )
        return DecodedImage(rgb.mean(axis=2).astype(np.float32) / 255.0, fmt.lower(), 8)
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
    arr = np.asarray(array)
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
            raise InvalidImageError("float pixel array contains NaN or Inf")
        lo, hi = float(arr.min()), float(arr.max())
        if lo < 0.0 or hi > 1.0:
            raise InvalidImageError(f"float pixels must lie in [0, 1], got range [{lo:.4g}, {hi:.4g}]")
        return DecodedImage(arr.astype(np.float32), "array", 32, spacing_mm)
    raise InvalidImageError(f"pixel dtype {arr.dtype} is not supported; send uint8, uint16 or float32 in [0, 1]")


# ----------------------------------------------------------------------------- DICOM


def decode_dicom_bytes(data: bytes, *, max_pixels: int = MAX_PIXELS) -> DecodedImage:
    import pydicom

    try:
        ds = pydicom.dcmread(io.BytesIO(data))
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
    """Apply the DICOM grayscale pipeline to a ``pydicom.Dataset``."""
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
    rows, cols = int(ds.get("Rows", 0)), int(ds.get("Columns", 0))
    _check_size(rows, cols, "DICOM image", max_pixels)
    bits = int(ds.get("BitsStored", ds.get("BitsAllocated", 16)))
    signed = int(ds.get("PixelRepresentation", 0)) == 1

    try:
        stored = ds.pixel_array
    except Exception as exc:
        text = str(exc)
        if tsuid is not None and tsuid.is_compressed and ("decod" in text.lower() or "plugin" in text.lower() or "handler" in text.lower()):
            raise InvalidImageError(
                f"DICOM transfer syntax {ts_name} cannot be decoded here: no decoder installed "
                "(install pylibjpeg with its plugins, or send uncompressed DICOM)"
            ) from exc
        raise InvalidImageError(f"truncated or corrupt DICOM pixel data ({cols}x{rows}, {ts_name}): {text}") from exc
    if stored.ndim != 2:
        raise InvalidImageError(f"DICOM pixel data has shape {stored.shape}; expected one grayscale frame")

    values = apply_modality_lut(stored, ds).astype(np.float64)
    if "VOILUTSequence" in ds:
        # LUT entries are indexed by integer input values; pydicom mis-indexes floats
        out = apply_voi(np.rint(values).astype(np.int64), ds).astype(np.float64)
        lut_bits = int(ds.VOILUTSequence[0].LUTDescriptor[2])
        out /= float(2**lut_bits - 1)
    elif "WindowCenter" in ds and "WindowWidth" in ds:
        function = str(ds.get("VOILUTFunction", "LINEAR")).strip().upper() or "LINEAR"
        out = _window(values, _first(ds.WindowCenter), _first(ds.WindowWidth), function)
    else:
        lo_stored, hi_stored = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2**bits - 1)
        ends = apply_modality_lut(np.array([lo_stored, hi_stored], dtype=stored.dtype), ds).astype(np.float64)
        lo, hi = float(ends.min()), float(ends.max())
        out = (values - lo) / (hi - lo) if hi > lo else np.zeros_like(values)
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
