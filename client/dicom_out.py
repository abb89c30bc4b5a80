"""DetectionArrays as DICOM objects a PACS can store and display next to the source image.

Two outputs per study, both in the source's study, each in a new series:

* :func:`structured_report` — Comprehensive 3D SR with a TID 1500 Measurement Report:
  one TID 1410 planar ROI group per detection (closed POLYLINE in source pixels, coded
  finding, confidence, tracking identifier, algorithm identification).  The machine-
  readable result; the US interoperability advisory recommends it over secondary capture.
* :func:`presentation_state` — Grayscale Softcopy Presentation State: boxes and
  "Label 0.87" captions on a graphic layer, for viewers that do not render SR.

Coordinates: ``Detection.box_xyxy_px`` is in the ORIGINAL image's continuous pixel
frame (pixel ``i`` spans ``[i, i+1)``), which is exactly the frame of SR SCOORD and of
GSPS ``PIXEL`` units (top-left corner of the top-left pixel is ``0.0\\0.0``), so boxes
are written without any half-pixel shift.  Boxes are clipped to the image first.

The same detection gets the same tracking UID in the SR and in the GSPS (derived from
the source instance, the model and the detection's index), so a viewer can link a
drawn box to its SR measurement group.

No torch here: this module ships in the ``[client]`` extra.
"""

from __future__ import annotations

import logging

import hashlib
import math
from collections.abc import Sequence

import highdicom as hd
import numpy as np
import pydicom
from pydicom.sr.codedict import codes
from pydicom.uid import generate_uid

from cxr.client.results import Detection, StudyResult

__all__ = ["PRIVATE_SCHEME", "finding_code", "presentation_state", "structured_report"]

# Local coding scheme for findings without a code we could verify.  DICOM reserves
# designators starting with "99" for local schemes, so no receiver mistakes these for
# a standard code.
PRIVATE_SCHEME = "99CXR"
GRAPHIC_LAYER = "CXR_AI"  # a DICOM Code String: capitals, digits, underscore, <= 16 chars

# Every standard code below was checked against the DICOM content mapping resource as
# shipped in pydicom 3 (pydicom/sr/_concepts_dict.py, CIDs from _cid_dict.py); the
# comment names the CID that lists it.  Labels are compared case-, space- and
# underscore-insensitively (see _key), so "Pleural_Thickening" == "pleural thickening".
_VERIFIED: dict[str, tuple[str, str, str]] = {
    "effusion": ("60046008", "SCT", "Pleural effusion"),  # CID 645/8134
    "pleural effusion": ("60046008", "SCT", "Pleural effusion"),
    "pneumothorax": ("36118008", "SCT", "Pneumothorax"),  # CID 6105 abnormal lucency
    "mass": ("4147007", "SCT", "Mass"),  # CID 6104 abnormal opacity
    "nodule": ("27925004", "SCT", "Nodule"),  # CID 6104
    "infiltration": ("112121", "DCM", "Infiltrate"),  # CID 6104
    "infiltrate": ("112121", "DCM", "Infiltrate"),  # NIH's BBox_List spelling
    "lung opacity": ("112001", "DCM", "Opacity"),  # CID 6104
    "opacity": ("112001", "DCM", "Opacity"),
    "edema": ("19242006", "SCT", "Pulmonary edema"),  # CID 3700; NIH "Edema" is pulmonary
    "pulmonary edema": ("19242006", "SCT", "Pulmonary edema"),
    "fibrosis": ("112674009", "SCT", "Fibrosis"),  # CID 6335
    "pulmonary fibrosis": ("112674009", "SCT", "Fibrosis"),
    # A radiograph shows the pattern, not the disease: VinDr's "ILD" boxes mark it.
    "ild": ("112004", "DCM", "Abnormal interstitial pattern"),  # CID 6104/6106
    "calcification": ("112063", "DCM", "Abnormal calcifications"),  # CID 6101
    "no finding": ("111286", "DCM", "No abnormality"),  # CID 6030
}

# Names without a code we could verify stay local until someone checks SNOMED CT itself:
# * Atelectasis, Pneumonia, Consolidation, Emphysema, ...: their usual SNOMED CT codes
#   appear only in third-party code, in no DICOM dictionary installed here.
# * Cardiomegaly: DICOM's dictionary gives SCT 287272002 two meanings ("Cardiomegaly"
#   in CID 12248/12249, "Enlarged septal foramen of heart (disorder)" elsewhere), and the
#   often-quoted 8186001 is in no installed dictionary — ambiguous, so not used.
# VinDr's "Nodule/Mass" is deliberately not mapped to Nodule or Mass: it is neither.
_LOCAL: dict[str, str] = {
    "cardiomegaly": "CARDIOMEGALY",
    "atelectasis": "ATELECTASIS",
    "pneumonia": "PNEUMONIA",
    "consolidation": "CONSOLIDATION",
    "emphysema": "EMPHYSEMA",
    "hernia": "HERNIA",
    "pleural thickening": "PLEURAL_THICK",
    "aortic enlargement": "AORTIC_ENLARGE",
    "nodule/mass": "NODULE_MASS",
    "other lesion": "OTHER_LESION",
}

# Confidence concept: (111012, DCM, "Certainty of Finding") is what DICOM lists for CAD
# output confidence (CID 6048 "CAD Operating Point Axis Label"); CAD SR templates
# record it in percent, so the 0..1 score is written as 0..100 %.
_CERTAINTY = codes.DCM.CertaintyOfFinding
_PERCENT = codes.UCUM.Percent
# Procedure reported (TID 1500): the radiography entry of CID 100, the value set TID 1500
# names.  SCT 413815006 "Chest imaging" would say more, but DICOM's dictionary also
# gives that code the meaning "Imaging guidance" (CID 12246), so it is left out.
_PROCEDURES = (codes.LN.XRUnspecifiedBodyRegion,)

# Type 2 attributes highdicom reads with attribute access from the source; a real
# image missing one would otherwise fail with an AttributeError deep in highdicom.
_TYPE2_PATIENT_STUDY = (
    "PatientID", "PatientName", "PatientBirthDate", "PatientSex",
    "AccessionNumber", "StudyID", "StudyDate", "StudyTime", "ReferringPhysicianName",
)  # fmt: skip

log = logging.getLogger("cxr.client")


def _key(label: str) -> str:
    return " ".join(label.strip().replace("_", " ").split()).casefold()


def finding_code(label: str) -> hd.sr.CodedConcept:
    """The coded concept for a finding name from NIH ChestX-ray14, VinDr-CXR or RSNA.

    Verified SNOMED CT / DCM codes where known (see ``_VERIFIED``), otherwise a code in
    the local scheme :data:`PRIVATE_SCHEME` with the label as its meaning.  Never
    raises: an unknown or odd label (empty, > 64 chars, backslashes) gets a stable
    local code derived from its text.
    """
    key = _key(label)
    if key in _VERIFIED:
        value, scheme, meaning = _VERIFIED[key]
        return hd.sr.CodedConcept(value=value, scheme_designator=scheme, meaning=meaning)
    # CodeMeaning is LO: at most 64 characters and no backslash (the VR delimiter).
    meaning = " ".join(label.replace("\\", "/").split())[:64] or "Unknown finding"
    if key in _LOCAL:
        value = _LOCAL[key]
    else:  # CodeValue is SH (<= 16 chars): a digest keeps it short and stable
        value = "X" + hashlib.sha1(key.encode("utf-8")).hexdigest()[:12].upper()
    return hd.sr.CodedConcept(value=value, scheme_designator=PRIVATE_SCHEME, meaning=meaning)


def structured_report(
    source: pydicom.Dataset,
    result: StudyResult,
    *,
    series_number: int = 9901,
    instance_number: int = 1,
    manufacturer: str = "cxr-triton",
    device_observer_name: str = "cxr-triton",
) -> hd.sr.Comprehensive3DSR:
    """A TID 1500 Measurement Report of ``result`` on the image ``source``.

    One planar ROI group (TID 1410) per detection: an ``ImageRegion`` (closed POLYLINE,
    5 points, source pixel coordinates) referencing ``source``, the finding from
    :func:`finding_code`, the score as "Certainty of Finding" in %, a tracking
    identifier and the algorithm (``model_name`` / ``model_version``).  With no
    detections the report holds one image-level group (TID 1501) whose finding is
    (111286, DCM, "No abnormality"): "the model ran and found nothing" is stated,
    not implied by absence.

    Patient and study attributes are copied from ``source``; the StudyInstanceUID is
    kept, SeriesInstanceUID and SOPInstanceUID are new, and ``source`` is listed in the
    Current Requested Procedure Evidence Sequence.  The document is marked COMPLETE
    and UNVERIFIED: it is an algorithm's output, not a signed report.

    Raises ValueError if ``result`` does not belong to ``source`` (image size or
    SOPInstanceUID differ) or a box is not finite.
    """
    source = _checked_source(source, result)
    algorithm = hd.sr.AlgorithmIdentification(
        name=result.model_name, version=result.model_version, manufacturer=manufacturer
    )
    groups: list[
        hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations | hd.sr.MeasurementsAndQualitativeEvaluations
    ] = []
    region_source = hd.sr.SourceImageForRegion.from_source_image(source)
    for index, det in enumerate(result.detections):
        groups.append(
            hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
                tracking_identifier=hd.sr.TrackingIdentifier(
                    uid=_tracking_uid(source, result, index), identifier=_tracking_id(det, index)
                ),
                referenced_region=hd.sr.ImageRegion(
                    graphic_type=hd.sr.GraphicTypeValues.POLYLINE,
                    graphic_data=_closed_rectangle(det.box_xyxy_px, result.image_size),
                    source_image=region_source,
                ),
                finding_type=finding_code(det.label),
                algorithm_id=algorithm,
                measurements=[
                    hd.sr.Measurement(name=_CERTAINTY, value=_percent(det.score), unit=_PERCENT)
                ],
            )
        )
    if not groups:
        groups.append(
            hd.sr.MeasurementsAndQualitativeEvaluations(
                tracking_identifier=hd.sr.TrackingIdentifier(
                    uid=_tracking_uid(source, result, -1), identifier="No finding"
                ),
                finding_type=finding_code("No finding"),
                algorithm_id=algorithm,
                source_images=[hd.sr.SourceImageForMeasurementGroup.from_source_image(source)],
            )
        )
    device = hd.sr.DeviceObserverIdentifyingAttributes(
        # Same model, same device UID: a PACS can group every report of one model build.
        uid=generate_uid(entropy_srcs=["cxr-triton-device", result.model_name, result.model_version]),
        name=device_observer_name,
        manufacturer_name=manufacturer,
        model_name=result.model_name,
    )
    def measurement_report(library):
        return hd.sr.MeasurementReport(
            observation_context=hd.sr.ObservationContext(
                observer_device_context=hd.sr.ObserverContext(
                    observer_type=codes.DCM.Device, observer_identifying_attributes=device
                )
            ),
            procedure_reported=list(_PROCEDURES),
            imaging_measurements=groups,
            referenced_images=library,  # TID 1600 image library: what the report is about
        )

    try:
        report = measurement_report([source])
    except (AttributeError, ValueError, TypeError, IndexError) as exc:
        # highdicom's image library descriptors (TID 1603) need attributes that many
        # real CR files omit (ImagerPixelSpacing, PatientOrientation).  The library is
        # optional; the ROIs and the evidence still reference the source image.
        log.debug("image library entry skipped: %s", exc)
        report = measurement_report(None)
    return hd.sr.Comprehensive3DSR(
        evidence=[source],
        content=report[0],
        series_instance_uid=hd.UID(),
        series_number=series_number,
        sop_instance_uid=hd.UID(),
        instance_number=instance_number,
        manufacturer=manufacturer,
        is_complete=True,
        is_final=False,
        is_verified=False,
        series_description=f"AI findings {result.model_name} {result.model_version}"[:64],
    )


def presentation_state(
    source: pydicom.Dataset,
    result: StudyResult,
    *,
    min_score: float = 0.0,
    series_number: int = 9902,
    instance_number: int = 1,
    manufacturer: str = "cxr-triton",
) -> hd.pr.GrayscaleSoftcopyPresentationState:
    """A GSPS drawing each detection with ``score >= min_score`` over ``source``.

    On graphic layer ``CXR_AI``: one closed POLYLINE (5 points, PIXEL units) per box and
    one text object "Label 0.87" anchored at the box's top-left corner.  When no box
    passes ``min_score`` a single caption "No finding >= 0.50 (model version)" is
    placed in the top-left of the display, so an empty overlay is never mistaken for
    "the AI did not run".

    The source's Modality LUT and window (VOI) are copied by highdicom; MONOCHROME1
    sources get Presentation LUT Shape INVERSE, because a presentation state replaces
    the image's photometric interpretation and IDENTITY would show them inverted
    (dcmtk's dcmpstat does the same).

    Raises ValueError as :func:`structured_report` does.
    """
    source = _checked_source(source, result)
    kept = [(i, d) for i, d in enumerate(result.detections) if d.score >= min_score]
    graphics: list[hd.pr.GraphicObject] = []
    texts: list[hd.pr.TextObject] = []
    for index, det in kept:
        polygon = _closed_rectangle(det.box_xyxy_px, result.image_size)
        tracking = {"tracking_id": _tracking_id(det, index), "tracking_uid": _tracking_uid(source, result, index)}
        graphics.append(
            hd.pr.GraphicObject(
                graphic_type=hd.pr.GraphicTypeValues.POLYLINE,
                graphic_data=polygon,
                units=hd.pr.AnnotationUnitsValues.PIXEL,
                **tracking,
            )
        )
        texts.append(
            hd.pr.TextObject(
                text_value=f"{det.label} {det.score:.2f}",
                units=hd.pr.AnnotationUnitsValues.PIXEL,
                anchor_point=(float(polygon[0, 0]), float(polygon[0, 1])),
                anchor_point_visible=False,  # the caption sits on the corner it names
                **tracking,
            )
        )
    if not kept:
        texts.append(
            hd.pr.TextObject(
                text_value=f"No finding >= {min_score:.2f} ({result.model_name} {result.model_version})"[:1024],
                units=hd.pr.AnnotationUnitsValues.DISPLAY,
                bounding_box=(0.01, 0.01, 0.6, 0.05),
                text_justification=hd.pr.TextJustificationValues.LEFT,
            )
        )
    layer = hd.pr.GraphicLayer(layer_name=GRAPHIC_LAYER, order=1, description="cxr-triton AI detections")
    annotation = hd.pr.GraphicAnnotation(
        referenced_images=[source],
        graphic_layer=layer,
        graphic_objects=graphics or None,
        text_objects=texts,
    )
    inverse = source.get("PhotometricInterpretation") == "MONOCHROME1"
    gsps = hd.pr.GrayscaleSoftcopyPresentationState(
        referenced_images=[source],
        series_instance_uid=hd.UID(),
        series_number=series_number,
        sop_instance_uid=hd.UID(),
        instance_number=instance_number,
        manufacturer=manufacturer,
        manufacturer_model_name=result.model_name[:64],
        software_versions=result.model_version[:64],
        device_serial_number="",
        content_label=GRAPHIC_LAYER,
        content_description=f"AI detections, score >= {min_score:.2f}"[:64],
        graphic_annotations=[annotation],
        graphic_layers=[layer],
        presentation_lut_transformation=hd.PresentationLUTTransformation(
            presentation_lut_shape=(
                hd.PresentationLUTShapeValues.INVERSE if inverse else hd.PresentationLUTShapeValues.IDENTITY
            )
        ),
        series_description=f"AI overlay {result.model_name} {result.model_version}"[:64],
    )
    # General Series: Laterality is type 2C, required unless BodyPartExamined names an unpaired
    # part (PS3.3 C.7.3.1); highdicom writes neither.  A chest film's body part is CHEST
    # (unpaired); a paired one keeps the source's Laterality.
    gsps.BodyPartExamined = str(source.get("BodyPartExamined") or "").strip().upper() or "CHEST"
    if gsps.BodyPartExamined != "CHEST" and str(source.get("Laterality") or "") in ("L", "R"):
        gsps.Laterality = source.Laterality
    return gsps


def _checked_source(source: pydicom.Dataset, result: StudyResult) -> pydicom.Dataset:
    """Refuse a result computed on another image; return a copy safe for highdicom.

    The copy has its own element mapping (elements and pixel data are shared, not
    duplicated) and gains empty values for missing type 2 patient/study attributes;
    the caller's dataset is not touched.
    """
    rows, columns = int(source.Rows), int(source.Columns)
    if tuple(result.image_size) != (rows, columns):
        raise ValueError(
            f"result.image_size is {tuple(result.image_size)} (height, width) but the source image is "
            f"{rows}x{columns} (Rows x Columns); boxes must be in the source's pixel grid — "
            "pass the DICOM the detections were computed on"
        )
    if result.sop_instance_uid is not None and result.sop_instance_uid != source.SOPInstanceUID:
        raise ValueError(
            f"result.sop_instance_uid is {result.sop_instance_uid!r} but the source's SOPInstanceUID is "
            f"{source.SOPInstanceUID!r}; refusing to attach findings to another image"
        )
    for det in result.detections:
        if len(det.box_xyxy_px) != 4 or not all(math.isfinite(float(v)) for v in det.box_xyxy_px):
            raise ValueError(f"detection {det.label!r} has box {det.box_xyxy_px!r}; expected 4 finite xyxy pixels")
        if not math.isfinite(float(det.score)):
            raise ValueError(f"detection {det.label!r} has score {det.score!r}; expected a number in 0..1")
    missing = [k for k in _TYPE2_PATIENT_STUDY if k not in source]
    if not missing:
        return source
    patched = pydicom.Dataset(dict(source.items()))  # copy.copy would share the mapping
    if getattr(source, "file_meta", None) is not None:
        patched.file_meta = source.file_meta
    for keyword in missing:
        setattr(patched, keyword, "")
    return patched


def _closed_rectangle(box: Sequence[float], image_size: tuple[int, int]) -> np.ndarray:
    """``[5, 2]`` (column, row) corners TL, TR, BR, BL, TL of ``box`` clipped to the image.

    The first point is repeated: that is how both SR and GSPS spell a closed POLYLINE
    (SR SCOORD has no RECTANGLE graphic type).
    """
    height, width = image_size
    x1, x2 = sorted(min(max(float(v), 0.0), float(width)) for v in (box[0], box[2]))
    y1, y2 = sorted(min(max(float(v), 0.0), float(height)) for v in (box[1], box[3]))
    return np.array([[x1, y1], [x2, y1], [x2, y2], [x1, y2], [x1, y1]], dtype=np.float64)


def _percent(score: float) -> float:
    # DS holds 16 characters; 4 decimals of a percent is far below model resolution.
    return round(min(max(float(score), 0.0), 1.0) * 100.0, 4)


def _tracking_id(det: Detection, index: int) -> str:
    return f"{det.label[:48]} #{index + 1}"


def _tracking_uid(source: pydicom.Dataset, result: StudyResult, index: int) -> str:
    """Deterministic, so the SR and the GSPS of one result share it per detection."""
    return generate_uid(
        entropy_srcs=[
            "cxr-triton-track", str(source.SOPInstanceUID), result.model_name, result.model_version, str(index)
        ]
    )
