"""Saliency maps as DICOM Parametric Maps: one instance per explained finding, in one new series.

What a PACS stores and OHIF fuses over the film as a colour heat map (its Parametric Map
loader, cornerstone's adapters, copies each frame onto the source image it references, so the
map has the source's Rows x Columns and its plane; a map on another grid is refused there).

Pixels: the D-RISE map on the source's own grid (:meth:`~cxr.client.results.ExplainedResult.saliency_map`),
stored as 32-bit float (Float Pixel Data), scaled so that the map's median (its baseline: a
D-RISE map is ``E[similarity | pixel kept]``, which equals ``E[similarity]`` wherever the pixel
does not matter) is 0 and its maximum 1 (:func:`stored_map`); the Real World Value Mapping's
slope and intercept give back D-RISE's ``E[similarity | pixel kept]`` exactly (quantity DCM
130404 "Saliency", no units), and the VOI window spans stored 0 to 1.  Why scaled: OHIF 3.13.2
ignores a map's window and shows stored values 0..1 on its colour map (it multiplies them by
100 and fixes the window to 0..100, its opacity ramp starting transparent at 0); raw D-RISE
values sit in a narrow band (0.07-0.12 on a trained model) and showed as one faint, flat tint
(seen in the browser on the seg-demo model).  Scaled, the baseline is transparent and the
hottest pixel at the colour map's top, as the overlay PNG colours it.  Float, not 16-bit
integers: OHIF's loader refuses integer data ("Only works with 32 bit data, not 16"), and the
IOD allows both.

Geometry: the Parametric Map IOD (PS3.3 A.75) requires a Frame of Reference and the Pixel
Measures, Plane Position and Plane Orientation functional groups; a CR has no Frame of
Reference module, a DX has it only as "U" and neither has an Image Plane.  The form is the one
``cxr.client.dicom_out.viewers`` chose for every derived object of a film (client/README.md,
"Where OHIF and the standard pull apart") and OHIF was seen to fuse: the film's Frame of
Reference, or one of our own per film (:func:`~cxr.client.dicom_out.viewers.film_frame_of_reference`,
shared with its SEG), the film's pixel spacing, the identity orientation and a zero position.

highdicom 0.28.2 cannot build that map from a film: it derives each frame's dimension index
from the source's plane, and for a source without one it declares a "Frame Label" dimension but
writes no index value into the frames (the channel loop of ``_init_multiframe_image`` indexes
frames only for Segmentations), so its constructor fails ("Unexpected mismatch between dimension
index values ...").  Rather than patch highdicom, the map is built against
:func:`planar_reference`: a copy of the film that carries the plane above (Frame of Reference,
Image Position / Orientation, Pixel Spacing), so highdicom takes its ordinary patient-frame path
(one dimension, Image Position (Patient), one index value per frame).  The copy is only read by
highdicom; the film's bytes and UIDs are untouched and the map references the film itself.
:func:`~cxr.client.dicom_out.viewers.check_for_viewers` checks each map before it leaves.
"""

from __future__ import annotations

import highdicom as hd
import numpy as np
import pydicom
from pydicom.sr.codedict import codes

from cxr.client.dicom_out.source import checked_source, series_body_part, shown_detections
from cxr.client.dicom_out.viewers import FILM_ORIENTATION, check_for_viewers, film_frame_of_reference
from cxr.client.results import ExplainedResult

__all__ = ["STORED_MAX", "parametric_maps", "pixel_spacing", "planar_reference", "stored_map"]

STORED_MAX = 1.0  # the stored value of a map's maximum (its median is 0)
UNKNOWN_SPACING_MM = 1.0
CONTRAST = "NONE"  # value 4: the pixels are not the source's values combined (dciodvfy knows no QUANTITY)
FLAVOR = "STATIC"  # value 3 of Image Type: one projection film, not a VOLUME (highdicom's default)


def _serial(result) -> str:
    """Enhanced General Equipment's Device Serial Number (type 1): the model that made the map."""
    return f"{result.model_name} {result.model_version}"[:64]


def pixel_spacing(source: pydicom.Dataset) -> tuple[tuple[float, float], bool]:
    """(row, column) spacing in mm of the source's pixels and whether the source said so.

    PixelSpacing first (calibrated to the patient), then ImagerPixelSpacing (at the detector:
    what CR and DX carry), else 1 mm."""
    for keyword in ("PixelSpacing", "ImagerPixelSpacing"):
        value = source.get(keyword)
        if value is not None and len(value) == 2 and all(float(v) > 0 for v in value):
            return (float(value[0]), float(value[1])), True
    return (UNKNOWN_SPACING_MM, UNKNOWN_SPACING_MM), False


def planar_reference(source: pydicom.Dataset) -> pydicom.Dataset:
    """A copy of ``source`` (elements shared, not duplicated) that carries the film's plane: its Frame of
    Reference (:func:`~cxr.client.dicom_out.viewers.film_frame_of_reference`) and, where the film has
    none, Image Position (Patient) 0, the identity orientation and the film's pixel spacing."""
    spacing, _ = pixel_spacing(source)
    planar = pydicom.Dataset(dict(source.items()))
    if getattr(source, "file_meta", None) is not None:
        planar.file_meta = source.file_meta
    if not source.get("FrameOfReferenceUID"):
        planar.FrameOfReferenceUID = film_frame_of_reference(source)
        planar.PositionReferenceIndicator = ""
    if not (source.get("ImagePositionPatient") and source.get("ImageOrientationPatient")):
        planar.ImagePositionPatient = [0.0, 0.0, 0.0]
        planar.ImageOrientationPatient = list(FILM_ORIENTATION)
    if not source.get("PixelSpacing"):
        planar.PixelSpacing = list(spacing)
    if not source.get("SliceThickness"):
        planar.SliceThickness = 1.0  # read by highdicom for Pixel Measures (type 1C there); a projection has none
    return planar


def stored_map(saliency: np.ndarray) -> tuple[np.ndarray, float, float]:
    """``(stored, slope, intercept)``: the map scaled so that its median is 0 and its maximum
    :data:`STORED_MAX`, float32, and the affine mapping back (``map = stored * slope + intercept``)."""
    low, high = float(np.median(saliency)), float(np.max(saliency))
    slope = max(high - low, 1e-6) / STORED_MAX
    return ((saliency - low) / slope).astype(np.float32), slope, low


def _mapping(label: str, score: float, stored: np.ndarray, slope: float, intercept: float) -> hd.pm.RealWorldValueMapping:
    return hd.pm.RealWorldValueMapping(
        lut_label="DRISE",
        lut_explanation=f"D-RISE saliency of {label} {score:.2f}"[:64],
        unit=codes.UCUM.NoUnits,
        value_range=(float(stored.min()), float(stored.max())),
        slope=slope,
        intercept=intercept,
        quantity_definition=codes.DCM.Saliency,
    )


def parametric_maps(
    source: pydicom.Dataset,
    result: ExplainedResult,
    *,
    min_score: float = 0.0,
    max_maps: int = 9,
    series_number: int = 9903,
    manufacturer: str = "cxr-triton",
) -> list[hd.pm.ParametricMap]:
    """One Parametric Map per finding of ``result`` at or above ``min_score`` (the ``max_maps``
    highest-scoring), all in one new series of the source's study.

    Raises ValueError as :func:`~cxr.client.dicom_out.structured_report` does, or when ``result``
    carries no maps (a plain StudyResult: ``explain``, not ``predict``)."""
    if not isinstance(result, ExplainedResult):
        raise ValueError("a Parametric Map needs the saliency maps of an ExplainedResult (client.explain), "
                         f"got a {type(result).__name__}")
    source = checked_source(source, result)
    reference = planar_reference(source)
    spacing, known = pixel_spacing(source)
    series = hd.UID()
    maps = []
    for number, index in enumerate(shown_detections(result, min_score, max_maps), start=1):
        det = result.detections[index]
        stored, slope, intercept = stored_map(result.saliency_map(index))
        pm = hd.pm.ParametricMap(
            [reference], stored, series, series_number, hd.UID(), number, manufacturer,
            result.model_name[:64], result.model_version[:64], _serial(result), False,
            [_mapping(det.label, det.score, stored, slope, intercept)],
            voi_lut_transformations=[hd.VOILUTTransformation(window_center=STORED_MAX / 2, window_width=STORED_MAX)],
            content_label="DRISE_SALIENCY", derived_pixel_contrast=CONTRAST, image_flavor=FLAVOR,
            content_description=(f"{number}. {det.label} {det.score:.2f}: {result.method} "
                                 f"{result.masks} masks" + ("" if known else ", spacing unknown (1 mm)"))[:64],
            pixel_measures=hd.PixelMeasuresSequence(pixel_spacing=spacing, slice_thickness=1.0),
            content_qualification=hd.ContentQualificationValues.RESEARCH,
            series_description=f"AI saliency {result.model_name} {result.model_version}"[:64],
        )
        series_body_part(pm, source)
        check_for_viewers(pm, source)
        maps.append(pm)
    return maps
