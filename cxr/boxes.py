"""Box utilities in one convention.

Every box in cxr is ``xyxy``: ``[x1, y1, x2, y2]`` in absolute pixels, float32, with
``0 <= x1 < x2 <= W`` and ``0 <= y1 < y2 <= H`` for a valid box.  Arrays of boxes
have shape ``[N, 4]``.  Functions that change coordinate frame say which frame they
read and which they return.

The letterbox frame is the model's ``S x S`` input: the original image scaled by
``scale`` (same factor on both axes) and placed at offset ``(pad_x, pad_y)``.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np


def as_boxes(boxes) -> np.ndarray:
    """``boxes`` as a float32 ``[N, 4]`` array (an empty input gives ``[0, 4]``)."""
    arr = np.asarray(boxes, dtype=np.float32)
    if arr.size == 0:
        return np.zeros((0, 4), dtype=np.float32)
    if arr.ndim == 1 and arr.shape[0] == 4:
        arr = arr[None, :]
    if arr.ndim != 2 or arr.shape[1] != 4:
        raise ValueError(f"boxes must have shape [N, 4], got {arr.shape}")
    return arr


def xywh_to_xyxy(boxes) -> np.ndarray:
    """``[x, y, w, h]`` (NIH BBox_List, COCO) to ``[x1, y1, x2, y2]``, same frame."""
    b = as_boxes(boxes).copy()
    b[:, 2] += b[:, 0]
    b[:, 3] += b[:, 1]
    return b


def xyxy_to_xywh(boxes) -> np.ndarray:
    """``[x1, y1, x2, y2]`` to ``[x, y, w, h]`` (COCO), same frame."""
    b = as_boxes(boxes).copy()
    b[:, 2] -= b[:, 0]
    b[:, 3] -= b[:, 1]
    return b


def clip_boxes(boxes, width: float, height: float) -> np.ndarray:
    """Clip xyxy boxes to the image ``[0, width] x [0, height]``."""
    b = as_boxes(boxes).copy()
    b[:, [0, 2]] = b[:, [0, 2]].clip(0, width)
    b[:, [1, 3]] = b[:, [1, 3]].clip(0, height)
    return b


def box_area(boxes) -> np.ndarray:
    b = as_boxes(boxes)
    return (b[:, 2] - b[:, 0]).clip(min=0) * (b[:, 3] - b[:, 1]).clip(min=0)


def valid_boxes(boxes, min_size: float = 1e-3) -> np.ndarray:
    """Boolean mask of boxes with positive width and height (at least ``min_size``)."""
    b = as_boxes(boxes)
    return ((b[:, 2] - b[:, 0]) >= min_size) & ((b[:, 3] - b[:, 1]) >= min_size)


def box_iou(a, b) -> np.ndarray:
    """Pairwise IoU of xyxy boxes ``a [N, 4]`` and ``b [M, 4]`` -> ``[N, M]`` float32."""
    a, b = as_boxes(a), as_boxes(b)
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    wh = (rb - lt).clip(min=0)
    inter = wh[..., 0] * wh[..., 1]
    union = box_area(a)[:, None] + box_area(b)[None, :] - inter
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = np.where(union > 0, inter / union, 0.0)
    return iou.astype(np.float32)


@dataclass(frozen=True)
class LetterboxRecord:
    """How an ``orig_w x orig_h`` image was placed in the ``size x size`` model input.

    ``spacing_mm`` is the (row, column) pixel spacing of the ORIGINAL image in mm
    (DICOM PixelSpacing / ImagerPixelSpacing order), or ``None`` when unknown.
    """

    orig_h: int
    orig_w: int
    size: int
    scale: float
    pad_x: float
    pad_y: float
    spacing_mm: tuple[float, float] | None = None

    # Flat float32 layout used on the wire (Triton tensor "RECORD", shape [8]).
    ARRAY_FIELDS = ("orig_h", "orig_w", "size", "scale", "pad_x", "pad_y", "spacing_row", "spacing_col")

    @classmethod
    def fit(cls, orig_h: int, orig_w: int, size: int, spacing_mm=None) -> LetterboxRecord:
        """Scale so the longer side fills ``size``; centre the shorter side."""
        if orig_h <= 0 or orig_w <= 0:
            raise ValueError(f"image size must be positive, got {orig_w}x{orig_h}")
        scale = size / max(orig_h, orig_w)
        new_h, new_w = cls.resized_shape_for(orig_h, orig_w, scale, size)
        return cls(
            orig_h=int(orig_h),
            orig_w=int(orig_w),
            size=int(size),
            scale=float(scale),
            pad_x=float((size - new_w) // 2),
            pad_y=float((size - new_h) // 2),
            spacing_mm=None if spacing_mm is None else (float(spacing_mm[0]), float(spacing_mm[1])),
        )

    @staticmethod
    def resized_shape_for(orig_h: int, orig_w: int, scale: float, size: int) -> tuple[int, int]:
        new_h = min(size, max(1, int(round(orig_h * scale))))
        new_w = min(size, max(1, int(round(orig_w * scale))))
        return new_h, new_w

    @property
    def resized_shape(self) -> tuple[int, int]:
        """(height, width) of the image content inside the letterbox."""
        return self.resized_shape_for(self.orig_h, self.orig_w, self.scale, self.size)

    def to_letterbox(self, boxes) -> np.ndarray:
        """ORIGINAL-pixel xyxy boxes -> letterbox-frame xyxy boxes."""
        b = as_boxes(boxes) * np.float32(self.scale)
        b[:, [0, 2]] += np.float32(self.pad_x)
        b[:, [1, 3]] += np.float32(self.pad_y)
        return b

    def from_letterbox(self, boxes) -> np.ndarray:
        """Letterbox-frame xyxy boxes -> ORIGINAL-pixel xyxy boxes, clipped to the image."""
        b = as_boxes(boxes).copy()
        b[:, [0, 2]] -= np.float32(self.pad_x)
        b[:, [1, 3]] -= np.float32(self.pad_y)
        b /= np.float32(self.scale)
        return clip_boxes(b, self.orig_w, self.orig_h)

    def to_mm(self, boxes) -> np.ndarray | None:
        """ORIGINAL-pixel xyxy boxes -> xyxy in mm from the image's top-left corner."""
        if self.spacing_mm is None:
            return None
        row, col = self.spacing_mm
        return as_boxes(boxes) * np.array([col, row, col, row], dtype=np.float32)

    def to_array(self) -> np.ndarray:
        row, col = self.spacing_mm if self.spacing_mm is not None else (math.nan, math.nan)
        return np.array(
            [self.orig_h, self.orig_w, self.size, self.scale, self.pad_x, self.pad_y, row, col],
            dtype=np.float32,
        )

    @classmethod
    def from_array(cls, arr) -> LetterboxRecord:
        a = np.asarray(arr, dtype=np.float64).reshape(-1)
        if a.shape[0] != len(cls.ARRAY_FIELDS):
            raise ValueError(f"letterbox record needs {len(cls.ARRAY_FIELDS)} values {cls.ARRAY_FIELDS}, got {a.shape[0]}")
        spacing = None if math.isnan(a[6]) or math.isnan(a[7]) else (float(a[6]), float(a[7]))
        return cls(int(a[0]), int(a[1]), int(a[2]), float(a[3]), float(a[4]), float(a[5]), spacing)

    def to_dict(self) -> dict:
        return asdict(self)


def caption_slot(x: float, top: float, width: float, height: float, placed: list, *, floor: float | None = None) -> float:
    """Where a ``width`` x ``height`` text caption at ``x`` goes so that it covers none of the
    captions in ``placed``: from ``top`` it moves up by its own height while it would cover one
    (and while it stays at or below ``floor``, when given).  The caption joins ``placed`` (as
    ``(x1, y1, x2, y2)``); returns its top.  Used by the annotated PNGs and examples.png."""
    def covers(t: float) -> bool:
        return any(x < x2 and x1 < x + width and t < y2 and y1 < t + height for x1, y1, x2, y2 in placed)

    while covers(top) and (floor is None or top - height >= floor):
        top -= height
    placed.append((x, top, x + width, top + height))
    return top
