"""What every DICOM output takes from its source image: the check that a result belongs to
it, the box outline in its pixel frame, and the tracking identifiers that link one
detection across outputs (the SR's measurement group, the GSPS's drawn box)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pydicom
from pydicom.uid import generate_uid

from cxr.client.results import Detection, StudyResult

# Type 2 attributes highdicom reads with attribute access from the source; a real
# image missing one would otherwise fail with an AttributeError deep in highdicom.
_TYPE2_PATIENT_STUDY = (
    "PatientID", "PatientName", "PatientBirthDate", "PatientSex",
    "AccessionNumber", "StudyID", "StudyDate", "StudyTime", "ReferringPhysicianName",
)  # fmt: skip


def checked_source(source: pydicom.Dataset, result: StudyResult) -> pydicom.Dataset:
    """Refuse a result computed on another image; return a copy safe for highdicom.

    Raises ValueError if ``result`` does not belong to ``source`` (image size or
    SOPInstanceUID differ) or a box or score is not finite.  The copy has its own element
    mapping (elements and pixel data are shared, not duplicated) and gains empty values
    for missing type 2 patient/study attributes; the caller's dataset is not touched.
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


def closed_rectangle(box: Sequence[float], image_size: tuple[int, int]) -> np.ndarray:
    """``[5, 2]`` (column, row) corners TL, TR, BR, BL, TL of ``box`` clipped to the image.

    The first point is repeated: that is how both SR and GSPS spell a closed POLYLINE
    (SR SCOORD has no RECTANGLE graphic type).
    """
    height, width = image_size
    x1, x2 = sorted(min(max(float(v), 0.0), float(width)) for v in (box[0], box[2]))
    y1, y2 = sorted(min(max(float(v), 0.0), float(height)) for v in (box[1], box[3]))
    return np.array([[x1, y1], [x2, y1], [x2, y2], [x1, y2], [x1, y1]], dtype=np.float64)


def tracking_id(det: Detection, index: int) -> str:
    return f"{det.label[:48]} #{index + 1}"


def tracking_uid(source: pydicom.Dataset, result: StudyResult, index: int) -> str:
    """Deterministic, so the SR and the GSPS of one result share it per detection."""
    return generate_uid(
        entropy_srcs=[
            "cxr-triton-track", str(source.SOPInstanceUID), result.model_name, result.model_version, str(index)
        ]
    )


def shown_detections(result: StudyResult, min_score: float, limit: int) -> list[int]:
    """Indices of the detections at or above ``min_score``, the ``limit`` highest-scoring (results come best first)."""
    return [i for i, d in enumerate(result.detections) if d.score >= min_score][:limit]


def series_body_part(obj: pydicom.Dataset, source: pydicom.Dataset) -> None:
    """General Series Laterality is type 2C, required unless BodyPartExamined names an unpaired
    part (PS3.3 C.7.3.1); highdicom writes neither.  A chest film's body part is CHEST
    (unpaired); a paired one keeps the source's Laterality."""
    obj.BodyPartExamined = str(source.get("BodyPartExamined") or "").strip().upper() or "CHEST"
    if obj.BodyPartExamined != "CHEST" and str(source.get("Laterality") or "") in ("L", "R"):
        obj.Laterality = source.Laterality
