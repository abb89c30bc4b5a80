"""Masks for viewers and PACS: a DICOM Segmentation (BINARY) of a film, one segment per finding class.

A Mask R-CNN's result (``cxr_segment``; each :class:`~cxr.client.results.Detection` carries
its :class:`~cxr.client.results.Mask` on the film's own pixel grid) becomes one highdicom
Segmentation referencing the film: segment ``k`` is the union of the masks of the detections
of one finding class (score ``>= min_score``), coded with the same finding code as the SR
(:func:`~cxr.client.dicom_out.findings.finding_code`), its category "Morphologically abnormal
structure", its algorithm the model (AUTOMATIC, family Artificial Intelligence) and its own
display colour.  Films without an image plane (CR, and DX without one) get the plane viewers
need (:func:`~cxr.client.dicom_out.viewers.add_film_plane`); the object is checked with
:func:`~cxr.client.dicom_out.viewers.check_for_viewers` before it is returned.
"""

from __future__ import annotations

import highdicom as hd
import numpy as np
import pydicom
from pydicom.sr.codedict import codes

from cxr.client.dicom_out.findings import finding_code
from cxr.client.dicom_out.source import checked_source
from cxr.client.dicom_out.viewers import add_film_plane, check_for_viewers
from cxr.client.results import StudyResult

__all__ = ["SEGMENT_COLOURS", "segmentation"]

# CIELab display colours, one per segment in order (red, green, blue, yellow, magenta, cyan,
# orange, violet), repeated beyond eight classes.
SEGMENT_COLOURS = ((53.2, 80.1, 67.2), (87.7, -86.2, 83.2), (32.3, 79.2, -107.9), (97.1, -21.6, 94.5),
                   (60.3, 98.3, -60.8), (91.1, -48.1, -14.1), (74.9, 23.9, 78.9), (45.4, 78.8, -73.5))


def segmentation(
    source: pydicom.Dataset,
    result: StudyResult,
    *,
    min_score: float = 0.0,
    series_number: int = 9904,
    instance_number: int = 1,
    manufacturer: str = "cxr-triton",
) -> hd.seg.Segmentation:
    """The Segmentation of ``result``'s masks over ``source`` (BINARY, one segment per finding class).

    Classes are ordered by their best detection's score.  Raises ValueError when the result does
    not belong to ``source`` (as the SR writer does), when a detection that passes ``min_score``
    has no mask (a detector's result: call ``cxr_segment``) or a mask on another grid, and when
    no detection passes ``min_score`` (a Segmentation needs at least one segment).
    """
    source = checked_source(source, result)
    grid = (int(source.Rows), int(source.Columns))
    classes: dict[str, np.ndarray] = {}
    for det in sorted(result.detections, key=lambda d: -d.score):
        if det.score < min_score:
            continue
        if det.mask is None:
            raise ValueError(f"detection {det.label!r} ({det.score:.2f}) has no mask: a Segmentation needs a "
                             "segmentation model's result (DetectorClient(model_name='cxr_segment'))")
        if tuple(det.mask.image_size) != grid:
            raise ValueError(f"the mask of {det.label!r} is on a {det.mask.image_size} grid, the film is {grid}")
        pixels = classes.setdefault(det.label, np.zeros(grid, dtype=bool))
        pixels |= det.mask.full()
    if not classes:
        raise ValueError(f"no detection scores >= {min_score:.2f}: nothing to segment")
    algorithm = hd.AlgorithmIdentificationSequence(name=result.model_name[:64], version=result.model_version[:64],
                                                   family=codes.DCM.ArtificialIntelligence)
    descriptions = [
        hd.seg.SegmentDescription(
            segment_number=k, segment_label=label[:64], segmented_property_category=codes.SCT.MorphologicallyAbnormalStructure,
            segmented_property_type=finding_code(label), algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=algorithm, display_color=hd.color.CIELabColor(*SEGMENT_COLOURS[(k - 1) % len(SEGMENT_COLOURS)]))
        for k, label in enumerate(classes, start=1)
    ]
    seg = hd.seg.Segmentation(
        [source], np.stack(list(classes.values()), axis=-1)[None], hd.seg.SegmentationTypeValues.BINARY, descriptions,
        series_instance_uid=hd.UID(), series_number=series_number, sop_instance_uid=hd.UID(),
        instance_number=instance_number, manufacturer=manufacturer, manufacturer_model_name=result.model_name[:64],
        software_versions=result.model_version[:64],
        device_serial_number=(result.model_version or result.model_name or "unknown")[:64],  # type 1 in Enhanced General Equipment
        series_description=f"AI masks {result.model_name} {result.model_version}"[:64],
        omit_empty_frames=False,
    )
    _film_attributes(seg, source)
    add_film_plane(seg, source)
    check_for_viewers(seg, source)
    return seg


def _film_attributes(seg: hd.seg.Segmentation, source: pydicom.Dataset) -> None:
    """What the SEG takes from its film beyond highdicom's copy: Patient Orientation (General Image,
    type 2C for a film without a plane) and the body part (General Series: Laterality is type 2C,
    not needed for CHEST, an unpaired part; PS3.3 C.7.3.1), as the GSPS writer does."""
    if source.get("PatientOrientation") is not None:
        seg.PatientOrientation = source.PatientOrientation
    seg.BodyPartExamined = str(source.get("BodyPartExamined") or "").strip().upper() or "CHEST"
    if seg.BodyPartExamined != "CHEST" and str(source.get("Laterality") or "") in ("L", "R"):
        seg.Laterality = source.Laterality
