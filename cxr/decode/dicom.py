"""DICOM radiographs: read, check the header, guard the pixel data, decode, grayscale pipeline.

The bytes travel one way.  :mod:`cxr.decode.image` recognises a DICOM file and hands it
here; :func:`read_dicom` refuses a deflate bomb and parses the dataset;
:func:`check_header` holds the header to what a grayscale radiograph is;
:func:`cxr.decode.guards.check_before_decode` holds the pixel data to the header;
the syntax's own pydicom plugin decodes the one frame (:mod:`cxr.decode.transfer_syntaxes`:
every syntax a PACS sends for chest films, bit-exact for the lossless ones); :func:`grayscale` applies PS3.4's Grayscale
Transformations: stored values -> Modality LUT (RescaleSlope/Intercept or Modality
LUT Sequence) -> VOI LUT (VOI LUT Sequence preferred, else Window Center/Width, else
the full range that BitsStored allows) -> MONOCHROME1 inversion.

pydicom converts element values lazily, so damaged elements raise (ValueError,
struct.error, KeyError, ...) wherever they are first read; all of those become
:class:`~cxr.errors.InvalidImageError` naming the exception.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from cxr.decode.guards import FrameSpec, check_before_decode, check_deflate_bomb
from cxr.decode.header import MAX_PIXELS, check_size, invalid_image
from cxr.decode.transfer_syntaxes import decode_stored, decoding_plugins
from cxr.decode.types import DecodedImage, DicomInfo, ImageFormat
from cxr.errors import InvalidImageError

if TYPE_CHECKING:
    from pydicom import Dataset


@dataclass(frozen=True)
class GrayscaleHeader:
    """The header of a DICOM that :func:`check_header` accepted as one grayscale frame.

    plugins: the decoding plugins its transfer syntax was judged to need, preferred first
    (:func:`~cxr.decode.transfer_syntaxes.decoding_plugins`), carried to the decoder so
    that the syntax is judged once.
    """

    photometric: str  # MONOCHROME1 or MONOCHROME2
    bits_stored: int
    signed: bool
    frame: FrameSpec
    plugins: tuple[str, ...] = ()


def read_dicom(data: bytes, *, header_only: bool = False) -> Dataset:
    """``pydicom.Dataset`` of Part 10 bytes; ``header_only`` stops before the pixel data."""
    import pydicom

    check_deflate_bomb(data)
    with invalid_image(lambda exc: f"corrupt or truncated DICOM ({len(data)} bytes): {exc}"):
        return pydicom.dcmread(io.BytesIO(data), stop_before_pixels=header_only)


def probe_dicom(source: bytes | Dataset) -> tuple[int, int, DicomInfo]:
    """(rows, columns, identifiers) of Part 10 bytes (parsed up to the pixel data) or a ``pydicom.Dataset``."""
    ds = read_dicom(source, header_only=True) if isinstance(source, (bytes, bytearray, memoryview)) else source
    with invalid_image(lambda exc: f"corrupt DICOM header ({type(exc).__name__}: {exc})"):
        rows, cols = ds.get("Rows"), ds.get("Columns")  # keyword lookup: values
        if rows is None or cols is None:
            raise InvalidImageError(f"DICOM (Modality {ds.get('Modality', '?')}) has no Rows/Columns: it is not an image")
        return int(rows), int(cols), dicom_info(ds)


def decode_dataset(ds: Dataset, *, max_pixels: int = MAX_PIXELS) -> DecodedImage:
    """The grayscale radiograph in a ``pydicom.Dataset`` (pixels float32 in [0, 1], 0 = black), or InvalidImageError."""
    with invalid_image(lambda exc: f"corrupt DICOM ({type(exc).__name__}: {exc})"):
        header = check_header(ds, max_pixels)
        check_before_decode(ds, header.frame, max_pixels)
        pixels = grayscale(_decode_frame(ds, header), ds, header)
        return DecodedImage(pixels.astype(np.float32), ImageFormat.DICOM, header.bits_stored, _spacing(ds),
                            dicom_info(ds))


def check_header(ds: Dataset, max_pixels: int = MAX_PIXELS) -> GrayscaleHeader:
    """Refuse a dataset that is not one grayscale frame of a supported bit depth and size."""
    tsuid = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
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
    check_size(rows, cols, "DICOM image", max_pixels)
    allocated = int(ds.get("BitsAllocated", 0) or 0)
    if allocated not in (8, 16):
        raise InvalidImageError(f"DICOM BitsAllocated {allocated} is not supported; grayscale radiographs use 8 or 16")
    bits = int(ds.get("BitsStored", allocated) or 0)
    if not 1 <= bits <= allocated:
        raise InvalidImageError(f"DICOM BitsStored {bits} is impossible with BitsAllocated {allocated}")
    signed = int(ds.get("PixelRepresentation", 0)) == 1
    # Judged here, once: a syntax nothing here decodes is named as such before any guard calls it corrupt.
    plugins = decoding_plugins(tsuid, bits)
    return GrayscaleHeader(photometric, bits, signed, FrameSpec(rows, cols, allocated, tsuid), plugins)


def _decode_frame(ds, header: GrayscaleHeader) -> np.ndarray:
    frame = header.frame  # decoded by the plugin judged in check_header (cxr.decode.transfer_syntaxes)
    stored = decode_stored(ds, frame.transfer_syntax, header.bits_stored, plugins=header.plugins)
    if stored.shape != (frame.rows, frame.cols):
        raise InvalidImageError(
            f"DICOM pixel data decoded to shape {stored.shape}; Rows/Columns say one {frame.rows}x{frame.cols} "
            "grayscale frame"
        )
    return stored


# ------------------------------------------------------------------ grayscale pipeline


def grayscale(stored: np.ndarray, ds, header: GrayscaleHeader) -> np.ndarray:
    """Stored values ``[H, W]`` -> float64 in ``[0, 1]``, 0 = black: Modality LUT, VOI, MONOCHROME1."""
    from pydicom.pixels import apply_modality_lut, apply_voi

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
        bits = header.bits_stored
        lo_stored, hi_stored = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if header.signed else (0, 2**bits - 1)
        ends = apply_modality_lut(np.array([lo_stored, hi_stored], dtype=stored.dtype), ds).astype(np.float64)
        lo, hi = float(ends.min()), float(ends.max())
        out = (values - lo) / (hi - lo) if hi > lo else np.zeros_like(values)
    if not np.isfinite(out).all():
        raise InvalidImageError(
            "DICOM grayscale pipeline gives NaN/Inf (Modality LUT, VOI LUT or window values); "
            "the header values are not usable"
        )
    out = np.clip(out, 0.0, 1.0)
    if header.photometric == "MONOCHROME1":  # MONOCHROME1: low values are white; flip to film convention
        out = 1.0 - out
    return out


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


def _first(value) -> float:
    try:
        return float(value[0])
    except TypeError:
        return float(value)


# ------------------------------------------------------------------ identifiers, spacing


def dicom_info(ds) -> DicomInfo:
    tsuid = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    return DicomInfo(
        sop_instance_uid=_str_or_none(ds.get("SOPInstanceUID")),
        sop_class_uid=_str_or_none(ds.get("SOPClassUID")),
        study_instance_uid=_str_or_none(ds.get("StudyInstanceUID")),
        series_instance_uid=_str_or_none(ds.get("SeriesInstanceUID")),
        modality=_str_or_none(ds.get("Modality")),
        photometric_interpretation=_str_or_none(str(ds.get("PhotometricInterpretation", "")).strip()),
        view_position=_str_or_none(ds.get("ViewPosition")),
        body_part=_str_or_none(ds.get("BodyPartExamined")),
        transfer_syntax=None if tsuid is None else str(tsuid),
    )


def _spacing(ds) -> tuple[float, float] | None:
    for keyword in ("PixelSpacing", "ImagerPixelSpacing"):
        value = ds.get(keyword)
        if value is not None and len(value) == 2:
            row, col = float(value[0]), float(value[1])
            if row > 0 and col > 0:
                return row, col
    return None


def _str_or_none(value) -> str | None:
    return None if value is None or str(value) == "" else str(value)
