"""What the detector answers for one study, as plain frozen dataclasses.

Boxes are ``xyxy`` in the ORIGINAL image's pixel grid (``0 <= x1 < x2 <= width``),
never in the model's letterboxed input; ``box_mm`` is the same box in millimetres
from the top-left corner when the study carries a pixel spacing.  An
:class:`ExplainedResult` (``explain`` instead of ``predict``) adds one saliency map per
detection.  Nothing here holds patient data: a result is safe to log, store or send to a
worklist.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from cxr.boxes import LetterboxRecord


@dataclass(frozen=True, eq=False)
class Mask:
    """One detection's binary mask on the ORIGINAL image's pixel grid (a Mask R-CNN's, ``cxr_segment``).

    rect: ``(x0, y0, x1, y1)``, the half-open rectangle holding the mask's pixels
    (``(0, 0, 0, 0)``: no pixel); crop: bool ``[y1 - y0, x1 - x0]``, the mask inside it;
    image_size: ``(height, width)`` of the image.  The wire form it comes from is
    :mod:`cxr.masks` (``CroppedMasks``); :meth:`full` gives the whole frame.
    """

    rect: tuple[int, int, int, int]
    crop: np.ndarray
    image_size: tuple[int, int]

    @property
    def area(self) -> int:
        """Pixels in the mask."""
        return int(np.count_nonzero(self.crop))

    def full(self) -> np.ndarray:
        """The mask as bool ``[height, width]``."""
        out = np.zeros(self.image_size, dtype=bool)
        x0, y0, x1, y1 = self.rect
        out[y0:y1, x0:x1] = self.crop
        return out

    def to_dict(self) -> dict:
        """Where it is and how big (the pixels are an array: :meth:`full`)."""
        return {"rect_xyxy_px": [int(v) for v in self.rect], "area_px": self.area}


@dataclass(frozen=True)
class Detection:
    """One finding: class name, confidence and where it is.

    box_xyxy_px: ``(x1, y1, x2, y2)`` in ORIGINAL image pixels.
    box_mm: the same box in mm from the top-left corner, or ``None`` when the pixel
    spacing is unknown (PNG/JPEG, pixels sent without spacing).
    mask: its :class:`Mask` when the model segments (``cxr_segment``), else ``None``
    (not part of equality: two detections are equal by label, score and boxes).
    """

    label: str
    score: float
    box_xyxy_px: tuple[float, float, float, float]  # ORIGINAL image pixels
    box_mm: tuple[float, float, float, float] | None = None
    mask: Mask | None = field(default=None, compare=False)

    def to_dict(self) -> dict:
        """JSON-ready: tuples become lists, numpy scalars become Python floats (``mask`` only when there is one)."""
        out = {
            "label": self.label,
            "score": float(self.score),
            "box_xyxy_px": [float(v) for v in self.box_xyxy_px],
            "box_mm": None if self.box_mm is None else [float(v) for v in self.box_mm],
        }
        if self.mask is not None:
            out["mask"] = self.mask.to_dict()
        return out


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


@dataclass(frozen=True, kw_only=True, eq=False)
class ExplainedResult(StudyResult):
    """A :class:`StudyResult` with one D-RISE saliency map per detection (``cxr_explain``).

    Everything that takes a StudyResult (the SR and GSPS builders, the annotated PNG)
    takes it as is; writers of maps (overlays, Parametric Map, Secondary Capture) look for
    this type.  saliency: ``[D, h, w]`` float32, map ``i`` explains ``detections[i]``, on
    the film as the model saw it (inside its letterbox, ``record.resized_shape``); values
    are D-RISE's ``E[similarity | pixel kept]`` in ``[0, 1]`` (higher: the finding
    depends more on that pixel).  :meth:`saliency_map` gives one on the ORIGINAL pixel
    grid.  masks / grid / seed: the D-RISE settings the server used.
    """

    saliency: np.ndarray
    record: LetterboxRecord
    masks: int
    grid: int
    seed: int
    method: str = "D-RISE"

    def saliency_map(self, index: int) -> np.ndarray:
        """Detection ``index``'s map ``[height, width]`` float32 on the ORIGINAL image grid
        (:func:`cxr.saliency.to_original`, the one implementation)."""
        from cxr.saliency import to_original

        if not 0 <= index < len(self.detections):
            raise IndexError(f"detection index {index} out of range: this result has {len(self.detections)} detections")
        return to_original(self.saliency[index], self.record)

    def to_dict(self) -> dict:
        """:meth:`StudyResult.to_dict` and how the maps were made (not the maps: they are arrays)."""
        return {**super().to_dict(), "saliency": {
            "method": self.method, "masks": self.masks, "grid": self.grid, "seed": self.seed,
            "maps": int(self.saliency.shape[0]), "map_shape": [int(v) for v in self.saliency.shape[1:]],
            "peak": [float(m.max()) for m in self.saliency]}}
