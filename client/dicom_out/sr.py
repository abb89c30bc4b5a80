"""The machine-readable result: a Comprehensive 3D SR holding a TID 1500 Measurement Report."""

from __future__ import annotations

import logging

import highdicom as hd
import pydicom
from pydicom.sr.codedict import codes
from pydicom.uid import generate_uid

from cxr.client.dicom_out.findings import finding_code
from cxr.client.dicom_out.source import checked_source, closed_rectangle, tracking_id, tracking_uid
from cxr.client.dicom_out.viewers import check_for_viewers
from cxr.client.results import Detection, StudyResult

__all__ = ["structured_report"]

# Confidence concept: (111012, DCM, "Certainty of Finding") is what DICOM lists for CAD
# output confidence (CID 6048 "CAD Operating Point Axis Label"); CAD SR templates
# record it in percent, so the 0..1 score is written as 0..100 %.
_CERTAINTY = codes.DCM.CertaintyOfFinding
_PERCENT = codes.UCUM.Percent
# What a viewer shows as the finding's label: (121106, DCM, "Comment"), the concept OHIF and
# Cornerstone3D themselves write and read back as a measurement's label.  "Cardiomegaly 0.87",
# the GSPS caption's text, so both outputs name and score a finding the same way.
_COMMENT = codes.DCM.Comment
# Procedure reported (TID 1500): the radiography entry of CID 100, the value set TID 1500
# names.  SCT 413815006 "Chest imaging" would say more, but DICOM's dictionary also
# gives that code the meaning "Imaging guidance" (CID 12246), so it is left out.
_PROCEDURES = (codes.LN.XRUnspecifiedBodyRegion,)

log = logging.getLogger("cxr.client")

_Group = hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations | hd.sr.MeasurementsAndQualitativeEvaluations


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
    :func:`~cxr.client.dicom_out.finding_code`, the score as "Certainty of Finding" in %
    with the same polyline as its INFERRED FROM source, a caption "Cardiomegaly 0.87"
    (:func:`caption`, as a "Comment"), a tracking identifier and the algorithm
    (``model_name`` / ``model_version``).  That shape is what OHIF hydrates into boxes
    listed by name and score (:mod:`~cxr.client.dicom_out.viewers` checks it).  With no
    detections the report holds one planar group over the whole image whose finding is
    (111286, DCM, "No abnormality"), captioned "No finding (model version)": "the model
    ran and found nothing" is stated, not implied by absence (a TID 1501 image-level group
    would say it too, but OHIF fails on groups without coordinates).

    Patient and study attributes are copied from ``source``; the StudyInstanceUID is
    kept, SeriesInstanceUID and SOPInstanceUID are new, and ``source`` is listed in the
    Current Requested Procedure Evidence Sequence.  The document is marked COMPLETE
    and UNVERIFIED: it is an algorithm's output, not a signed report.

    Raises ValueError if ``result`` does not belong to ``source`` (image size or
    SOPInstanceUID differ) or a box is not finite.
    """
    source = checked_source(source, result)
    algorithm = hd.sr.AlgorithmIdentification(
        name=result.model_name, version=result.model_version, manufacturer=manufacturer
    )
    region_source = hd.sr.SourceImageForRegion.from_source_image(source)
    groups: list[_Group] = [
        _roi_group(source, result, index, det, algorithm, region_source) for index, det in enumerate(result.detections)
    ]
    if not groups:
        groups.append(_no_finding_group(source, result, algorithm, region_source))
    device = hd.sr.DeviceObserverIdentifyingAttributes(
        # Same model, same device UID: a PACS can group every report of one model build.
        uid=generate_uid(entropy_srcs=["cxr-triton-device", result.model_name, result.model_version]),
        name=device_observer_name,
        manufacturer_name=manufacturer,
        model_name=result.model_name,
    )
    sr = hd.sr.Comprehensive3DSR(
        evidence=[source],
        content=_measurement_report(source, groups, device)[0],
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
    check_for_viewers(sr)  # what OHIF needs to hydrate the boxes, kept true by every change here
    return sr


def _roi_group(
    source: pydicom.Dataset,
    result: StudyResult,
    index: int,
    det: Detection,
    algorithm: hd.sr.AlgorithmIdentification,
    region_source: hd.sr.SourceImageForRegion,
) -> hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations:
    """TID 1410 for detection ``index``: its box as a closed polyline, finding, score, tracking, caption.

    The box is written twice, by value: as the group's Image Region (TID 1410) and as an
    INFERRED FROM child of the score, in the shape TID 300 gives a measurement's source
    (TID 320 coordinates).  OHIF's SR reader (Cornerstone3D's adapters in OHIF 3.13.2) takes
    a group's *first NUM* as the holder of the coordinates it hydrates: with the score
    beside the region only, "track measurements" loads none.  TID 1419, which holds a
    planar ROI's measurements, is extensible (PS3.16), so the child is allowed there;
    highdicom's builder refuses it (stricter than the standard), hence it is added after
    building.  So is the caption, a CONTAINS TEXT "Comment" (TID 1410 is extensible too):
    OHIF lists it as the measurement's label, the only place its panel shows the score.
    """
    polygon = closed_rectangle(det.box_xyxy_px, result.image_size)
    group = hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(
            uid=tracking_uid(source, result, index), identifier=tracking_id(det, index)
        ),
        referenced_region=hd.sr.ImageRegion(
            graphic_type=hd.sr.GraphicTypeValues.POLYLINE, graphic_data=polygon, source_image=region_source
        ),
        finding_type=finding_code(det.label),
        algorithm_id=algorithm,
        measurements=[hd.sr.Measurement(name=_CERTAINTY, value=_percent(det.score), unit=_PERCENT)],
    )
    items = group[0].ContentSequence
    (score,) = (item for item in items if item.ValueType == "NUM")
    score.ContentSequence = [
        hd.sr.CoordinatesForMeasurement(
            graphic_type=hd.sr.GraphicTypeValues.POLYLINE, graphic_data=polygon, source_image=region_source
        )
    ]
    items.append(
        hd.sr.TextContentItem(name=_COMMENT, value=caption(det), relationship_type=hd.sr.RelationshipTypeValues.CONTAINS)
    )
    return group


def caption(det: Detection) -> str:
    """What a viewer labels a finding with: "Cardiomegaly 0.87" (the GSPS draws the same text)."""
    return f"{det.label} {det.score:.2f}"


def _no_finding_group(
    source: pydicom.Dataset,
    result: StudyResult,
    algorithm: hd.sr.AlgorithmIdentification,
    region_source: hd.sr.SourceImageForRegion,
) -> hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations:
    """TID 1410 over the whole image, finding "No abnormality": the model looked at all of it and found nothing.

    An image-level group (TID 1501) would say the same without a region, but OHIF 3.13.2's
    SR viewport fails on any group without coordinates ("Cannot read properties of undefined
    (reading 'ReferencedSOPSequence')"): a radiologist opening the report of a normal film
    would get an error.  The region is the film's outline, captioned "No finding (model version)".
    """
    group = hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=tracking_uid(source, result, -1), identifier="No finding"),
        referenced_region=hd.sr.ImageRegion(
            graphic_type=hd.sr.GraphicTypeValues.POLYLINE,
            graphic_data=closed_rectangle((0.0, 0.0, *reversed(result.image_size)), result.image_size),
            source_image=region_source,
        ),
        finding_type=finding_code("No finding"),
        algorithm_id=algorithm,
    )
    group[0].ContentSequence.append(
        hd.sr.TextContentItem(
            name=_COMMENT,
            value=f"No finding ({result.model_name} {result.model_version})",
            relationship_type=hd.sr.RelationshipTypeValues.CONTAINS,
        )
    )
    return group


def _measurement_report(
    source: pydicom.Dataset, groups: list[_Group], device: hd.sr.DeviceObserverIdentifyingAttributes
) -> hd.sr.MeasurementReport:
    """TID 1500 observed by ``device``, with ``source`` in its image library when highdicom can describe it."""

    def report(library: list[pydicom.Dataset] | None) -> hd.sr.MeasurementReport:
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
        return report([source])
    except (AttributeError, ValueError, TypeError, IndexError) as exc:
        # highdicom's image library descriptors (TID 1603) need attributes that many
        # real CR files omit (ImagerPixelSpacing, PatientOrientation).  The library is
        # optional; the ROIs and the evidence still reference the source image.
        log.debug("image library entry skipped: %s", exc)
        return report(None)


def _percent(score: float) -> float:
    # DS holds 16 characters; 4 decimals of a percent is far below model resolution.
    return round(min(max(float(score), 0.0), 1.0) * 100.0, 4)
