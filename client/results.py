"""What the detector answers for one study, as plain frozen dataclasses.

Boxes are ``xyxy`` in the ORIGINAL image's pixel grid (``0 <= x1 < x2 <= width``),
never in the model's letterboxed input; ``box_mm`` is the same box in millimetres
from the top-left corner when the study carries a pixel spacing.  Nothing here
holds patient data: a result is safe to log, store or send to a worklist.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Detection:
    """One finding: class name, confidence and where it is.

    box_xyxy_px: ``(x1, y1, x2, y2)`` in ORIGINAL image pixels.
    box_mm: the same box in mm from the top-left corner, or ``None`` when the pixel
    spacing is unknown (PNG/JPEG, pixels sent without spacing).
    """

    label: str
    score: float
    box_xyxy_px: tuple[float, float, float, float]  # ORIGINAL image pixels
    box_mm: tuple[float, float, float, float] | None = None

    def to_dict(self) -> dict:
        """JSON-ready: tuples become lists, numpy scalars become Python floats."""
        return {
            "label": self.label,
            "score": float(self.score),
            "box_xyxy_px": [float(v) for v in self.box_xyxy_px],
            "box_mm": None if self.box_mm is None else [float(v) for v in self.box_mm],
        }


@dataclass(frozen=True)
class StudyResult:
    """All detections of one image, sorted by descending score.

    image_size: ``(height, width)`` of the original image, the frame of every box.
    latency_ms: wall time the caller waited for this result, retries included.
    sop_instance_uid: the DICOM SOPInstanceUID of the source, ``None`` for non-DICOM.
    """

    detections: tuple[Detection, ...]
    model_name: str
    model_version: str
    image_size: tuple[int, int]  # (height, width) of the original image
    latency_ms: float
    sop_instance_uid: str | None = None

    def to_dict(self) -> dict:
        """JSON-ready dictionary (``json.dumps(result.to_dict())`` works as is)."""
        return {
            "sop_instance_uid": self.sop_instance_uid,
            "model_name": self.model_name,
            "model_version": self.model_version,
            "image_size": [int(self.image_size[0]), int(self.image_size[1])],
            "latency_ms": float(self.latency_ms),
            "detections": [d.to_dict() for d in self.detections],
        }
