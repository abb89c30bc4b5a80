"""Detection postprocessing: per-class NMS, score threshold, top-k, un-letterbox.

The detector (PyTorch, ONNX, TensorRT) returns raw candidate detections in the
``S x S`` letterbox frame, padded to a fixed count with a valid-count per image.
:func:`postprocess` turns one image's candidates into final detections in ORIGINAL
image pixels (and mm when the pixel spacing is known).  Evaluation, the in-process
baselines and the Triton postprocess model all call it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

import numpy as np

from cxr.boxes import LetterboxRecord, as_boxes, box_iou, valid_boxes
from cxr.errors import InvalidOptionError

if TYPE_CHECKING:
    from cxr.masks import CroppedMasks


@dataclass(frozen=True)
class PostprocessConfig:
    """Thresholds of :func:`postprocess`; serving overrides them per request."""

    score_threshold: float = 0.05  # low: keeps the full PR/FROC curve; serving raises it
    iou_threshold: float = 0.5  # per-class NMS, torchvision's default for Faster R-CNN
    max_detections: int = 100  # per image, after NMS (COCO's maxDets)

    def __post_init__(self) -> None:
        if not 0.0 <= self.score_threshold <= 1.0:
            raise InvalidOptionError(f"score_threshold must be in [0, 1], got {self.score_threshold}")
        if not 0.0 < self.iou_threshold <= 1.0:
            raise InvalidOptionError(f"iou_threshold must be in (0, 1], got {self.iou_threshold}")
        if self.max_detections < 0:
            raise InvalidOptionError(f"max_detections must be >= 0, got {self.max_detections}")

    def to_dict(self) -> dict:
        return asdict(self)

    def replace(self, **overrides) -> PostprocessConfig:
        """A copy with the given fields changed (``None`` values are ignored)."""
        values = self.to_dict()
        values.update({k: v for k, v in overrides.items() if v is not None})
        return PostprocessConfig(**values)


@dataclass(frozen=True)
class DetectionArrays:
    """Final detections of one image.

    boxes: float32 ``[N, 4]`` xyxy in ORIGINAL image pixels; scores: float32 ``[N]``
    sorted descending; labels: int64 ``[N]`` model class ids (1-based);
    boxes_mm: float32 ``[N, 4]`` xyxy in mm from the top-left corner, or None;
    masks: a Mask R-CNN's binary masks of the N detections in ORIGINAL pixels
    (:class:`cxr.masks.CroppedMasks`), or None for a detector.
    """

    boxes: np.ndarray
    scores: np.ndarray
    labels: np.ndarray
    boxes_mm: np.ndarray | None = None
    masks: CroppedMasks | None = None

    def __len__(self) -> int:
        return int(self.scores.shape[0])

    @classmethod
    def empty(cls) -> DetectionArrays:
        return cls(np.zeros((0, 4), np.float32), np.zeros((0,), np.float32), np.zeros((0,), np.int64))


def nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float) -> np.ndarray:
    """Greedy NMS, the rule of ``torchvision.ops.nms``: drop boxes whose IoU with a kept
    box is > ``iou_threshold``.

    Returns indices of kept boxes in descending score order; equal scores keep the
    lower index first (torchvision's CPU kernel sorts stably, giving the same order).
    """
    boxes = as_boxes(boxes)
    order = np.argsort(-np.asarray(scores, dtype=np.float32), kind="stable")
    if order.size == 0:
        return order.astype(np.int64)
    # The IoU is computed in float32, as in torchvision's kernel, and compared with the
    # threshold in float64, as there: in float32, 0.3 rounds up and an IoU of 3/10
    # would survive it (numpy < 2 compares an array with a scalar in the array's dtype).
    iou = box_iou(boxes[order], boxes[order]).astype(np.float64)
    suppressed = np.zeros(order.size, dtype=bool)
    keep = []
    for i in range(order.size):
        if suppressed[i]:
            continue
        keep.append(order[i])
        suppressed |= iou[i] > iou_threshold
    return np.asarray(keep, dtype=np.int64)


def batched_nms(boxes: np.ndarray, scores: np.ndarray, labels: np.ndarray, iou_threshold: float) -> np.ndarray:
    """NMS within each class (``torchvision.ops.batched_nms``); indices of kept boxes in
    descending score order, equal scores by lower index first whatever their class."""
    labels = np.asarray(labels)
    keep = [np.flatnonzero(labels == c)[nms(boxes[labels == c], scores[labels == c], iou_threshold)] for c in np.unique(labels)]
    if not keep:
        return np.zeros((0,), np.int64)
    kept = np.sort(np.concatenate(keep))  # index order first, so the stable sort below breaks ties by index
    return kept[np.argsort(-np.asarray(scores, dtype=np.float32)[kept], kind="stable")]


def postprocess(
    boxes: np.ndarray,
    scores: np.ndarray,
    labels: np.ndarray,
    record: LetterboxRecord,
    config: PostprocessConfig = PostprocessConfig(),
    *,
    valid_count: int | None = None,
) -> DetectionArrays:
    """One image's raw detector output -> final :class:`DetectionArrays`.

    boxes: ``[K, 4]`` xyxy in the letterbox (``S x S``) frame; scores ``[K]``; labels
    ``[K]`` (1-based class ids).  Only the first ``valid_count`` rows are candidates
    (the rest is padding); ``None`` means all.  Boxes come back in ORIGINAL pixels.

    Rows with a non-finite box or score, a score below ``score_threshold`` (the
    threshold itself passes) or label 0 (background) are dropped; then boxes are
    mapped to the film and clipped, empty ones dropped, NMS run per class and the
    ``max_detections`` best kept.  Equal scores keep candidate order.
    """
    return postprocess_indexed(boxes, scores, labels, record, config, valid_count=valid_count)[1]


def postprocess_indexed(
    boxes: np.ndarray,
    scores: np.ndarray,
    labels: np.ndarray,
    record: LetterboxRecord,
    config: PostprocessConfig = PostprocessConfig(),
    *,
    valid_count: int | None = None,
) -> tuple[np.ndarray, DetectionArrays]:
    """:func:`postprocess`, and which candidate row each final detection came from (int64
    ``[N]``): the key to per-candidate outputs such as a Mask R-CNN's masks."""
    k = len(scores) if valid_count is None else int(valid_count)
    if not 0 <= k <= len(scores):
        raise ValueError(f"valid_count {valid_count} outside 0..{len(scores)}: it counts the leading candidate rows "
                         f"of the {len(scores)} given, pass the detector's 'valid' output for this image")
    boxes = as_boxes(boxes)[:k]
    scores = np.asarray(scores, dtype=np.float32).reshape(-1)[:k]
    labels = np.asarray(labels).reshape(-1)[:k].astype(np.int64)

    finite = np.isfinite(scores) & np.isfinite(boxes).all(axis=1)
    mask = finite & (scores >= config.score_threshold) & (labels > 0)
    boxes, scores, labels, rows = boxes[mask], scores[mask], labels[mask], np.flatnonzero(mask)

    # torchvision's order (RoIHeads.postprocess_detections): clip to the image, drop
    # empty boxes, then NMS, then top-k.  Here "the image" is the film inside the
    # letterbox: a candidate in the padding collapses to zero size and must neither
    # suppress a real box nor take one of the top-k places, and boxes reaching into
    # the padding are compared by the part of them that lies on the film.
    orig = record.from_letterbox(boxes)
    ok = valid_boxes(orig)
    orig, scores, labels, rows = orig[ok], scores[ok], labels[ok], rows[ok]
    keep = batched_nms(orig, scores, labels, config.iou_threshold)[: config.max_detections]
    return rows[keep].astype(np.int64), _with_mm(DetectionArrays(orig[keep], scores[keep], labels[keep]), record)


def _with_mm(dets: DetectionArrays, record: LetterboxRecord) -> DetectionArrays:
    mm = record.to_mm(dets.boxes)
    return DetectionArrays(dets.boxes, dets.scores, dets.labels, mm)
