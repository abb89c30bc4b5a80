"""Instance masks out of a Mask R-CNN: paste, un-letterbox, threshold, and their wire form.

The mask head returns, per detection, ``M x M`` (28 x 28) foreground probabilities over
the detection's box in the letterbox frame.  Turning them into a binary mask of the
ORIGINAL image is written once, here, torch-free: evaluation, the in-process pipeline and
the Triton postprocess all call :func:`paste_in_original`.

The paste is torchvision's ``paste_masks_in_image`` (``roi_heads.py``), step for step:
the ``M x M`` probabilities are zero-padded by ``padding`` pixels on each side, the box
grows by the same factor ``(M + 2 padding) / M`` about its centre and is truncated to
integers (toward zero, like ``Tensor.to(int64)``), the padded mask is resized bilinearly
(``F.interpolate(..., align_corners=False)``) to the integer box's ``(y2 - y1 + 1) x (x2 - x1
+ 1)`` pixels and placed there, cut to the image.  A pixel belongs to the mask when its
probability is ``> 0.5`` (:data:`MASK_THRESHOLD`; torchvision's detection references).

Un-letterboxing is torchvision's own order (``GeneralizedRCNNTransform.postprocess``:
boxes are mapped back to the original size first, the masks are pasted there): the
letterbox box goes to ORIGINAL pixels *unclipped* (a clipped box would squeeze the
28 x 28 grid into a smaller rectangle) and the paste cuts it to the image.  So a mask is
computed once, at the original resolution, never pasted at ``S x S`` and resized again.

Masks are kept as :class:`CroppedMasks`: per detection the smallest rectangle holding its
pixels and the bool crop inside it, so 100 detections on a 3000 x 3000 film do not
allocate 100 full frames.  Its wire form (:meth:`CroppedMasks.to_wire`) is two arrays:
``rects`` int32 ``[N, 4]`` and ``bits`` uint8 ``[B]`` (the crops, row-major, 8 pixels a
byte, each padded to a whole byte) -- see :func:`wire_size`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from cxr.boxes import LetterboxRecord, as_boxes

MASK_THRESHOLD = 0.5  # probability > this: a mask pixel (torchvision references' `masks > 0.5`)
MASK_PADDING = 1  # pixels of zero padding around the M x M mask before the paste (torchvision's)


def _linear_taps(out_size: int, in_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Source indices and weights of 1-D linear interpolation, as PyTorch's CPU kernel
    computes them for ``align_corners=False``: source = in/out * (i + 0.5) - 0.5 in float32,
    clamped at 0; the upper index stops at the last sample.  The source is rounded once, as
    by the fused multiply-add the kernel compiles to (two float32 roundings were 10x
    further from it)."""
    scale = np.float64(np.float32(in_size) / np.float32(out_size))
    src = (scale * (np.arange(out_size, dtype=np.float64) + 0.5) - 0.5).astype(np.float32)
    src = np.maximum(src, np.float32(0.0))
    i0 = np.minimum(np.floor(src).astype(np.int64), in_size - 1)
    i1 = np.minimum(i0 + 1, in_size - 1)
    lam1 = np.clip(src - i0.astype(np.float32), np.float32(0.0), np.float32(1.0)).astype(np.float32)
    return i0, i1, (np.float32(1.0) - lam1).astype(np.float32), lam1


def resize_bilinear(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """float32 ``[h, w]`` -> ``[height, width]``, equal to ``F.interpolate(x[None, None],
    (height, width), mode="bilinear", align_corners=False)`` (no antialiasing): rows are
    interpolated along x first, then along y, in float32, as PyTorch does."""
    img = np.asarray(image, dtype=np.float32)
    if img.ndim != 2 or height < 1 or width < 1:
        raise ValueError(f"resize_bilinear takes a [h, w] array and a positive size, got {img.shape} -> {height}x{width}")
    x0, x1, wx0, wx1 = _linear_taps(width, img.shape[1])
    y0, y1, wy0, wy1 = _linear_taps(height, img.shape[0])
    rows = img[:, x0] * wx0 + img[:, x1] * wx1  # [h, width]
    return rows[y0] * wy0[:, None] + rows[y1] * wy1[:, None]


def expand_boxes(boxes: np.ndarray, scale: float) -> np.ndarray:
    """xyxy float boxes grown by ``scale`` about their centres, truncated toward zero to
    int64 (torchvision's ``expand_boxes(...).to(torch.int64)``, in float32)."""
    b = as_boxes(boxes)
    s, half = np.float32(scale), np.float32(0.5)
    w_half, h_half = (b[:, 2] - b[:, 0]) * half * s, (b[:, 3] - b[:, 1]) * half * s
    x_c, y_c = (b[:, 2] + b[:, 0]) * half, (b[:, 3] + b[:, 1]) * half
    out = np.stack([x_c - w_half, y_c - h_half, x_c + w_half, y_c + h_half], axis=1)
    return np.trunc(out).astype(np.int64)


def paste_probabilities(prob: np.ndarray, box: np.ndarray, height: int, width: int, *,
                        padding: int = MASK_PADDING) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    """One detection's ``[M, M]`` probabilities pasted into an ``height x width`` image.

    ``box`` is xyxy float in that image's pixels (it may reach outside it).  Returns the
    float32 probabilities of the pasted rectangle and the rectangle ``(x0, y0, x1, y1)``
    (half-open, inside the image; empty when the box misses it); the image is 0 elsewhere.
    Equal to torchvision's ``paste_masks_in_image`` for this detection.
    """
    p = np.asarray(prob, dtype=np.float32)
    if p.ndim != 2 or p.shape[0] != p.shape[1] or p.shape[0] == 0:
        raise ValueError(f"a mask is a square [M, M] array of probabilities, got shape {p.shape}")
    m = p.shape[0]
    padded = np.pad(p, padding) if padding else p
    bx = expand_boxes(np.asarray(box, np.float32).reshape(1, 4), float(m + 2 * padding) / m)[0]
    w, h = max(int(bx[2] - bx[0] + 1), 1), max(int(bx[3] - bx[1] + 1), 1)
    x0, y0 = max(int(bx[0]), 0), max(int(bx[1]), 0)
    x1, y1 = min(int(bx[2]) + 1, width), min(int(bx[3]) + 1, height)
    if x1 <= x0 or y1 <= y0:
        return np.zeros((0, 0), np.float32), (0, 0, 0, 0)
    full = resize_bilinear(padded, h, w)
    return full[y0 - bx[1] : y1 - bx[1], x0 - bx[0] : x1 - bx[0]], (x0, y0, x1, y1)


def wire_size(rects: np.ndarray) -> int:
    """Bytes of :meth:`CroppedMasks.to_wire`'s ``bits`` for these rects: sum of ceil(h w / 8)."""
    r = np.asarray(rects, dtype=np.int64).reshape(-1, 4)
    return int((((r[:, 2] - r[:, 0]) * (r[:, 3] - r[:, 1]) + 7) // 8).sum())


@dataclass(frozen=True)
class CroppedMasks:
    """Binary masks of ``N`` detections on one ``height x width`` image (the ORIGINAL grid).

    ``rects`` int32 ``[N, 4]``: ``(x0, y0, x1, y1)``, the half-open rectangle of mask
    ``i``'s pixels, ``0 <= x0 <= x1 <= width`` (``(0, 0, 0, 0)``: an empty mask);
    ``crops[i]`` bool ``[y1 - y0, x1 - x0]``, the mask inside it.
    """

    rects: np.ndarray
    crops: tuple[np.ndarray, ...]
    height: int
    width: int

    def __post_init__(self) -> None:
        r = np.asarray(self.rects)
        if r.shape != (len(self.crops), 4):
            raise ValueError(f"rects must be [N, 4] for the {len(self.crops)} crops, got shape {r.shape}")
        ok = (r[:, 0] >= 0) & (r[:, 1] >= 0) & (r[:, 0] <= r[:, 2]) & (r[:, 1] <= r[:, 3])
        ok &= (r[:, 2] <= self.width) & (r[:, 3] <= self.height)
        if not ok.all():
            i = int(np.flatnonzero(~ok)[0])
            raise ValueError(f"mask rect {i} {r[i].tolist()} is not a rectangle (x0, y0, x1, y1) inside "
                             f"the {self.width}x{self.height} (WxH) image")
        for i, (c, (x0, y0, x1, y1)) in enumerate(zip(self.crops, r.tolist())):
            if c.shape != (y1 - y0, x1 - x0) or c.dtype != bool:
                raise ValueError(f"crop {i} is {c.dtype} {c.shape}; its rect {[x0, y0, x1, y1]} needs bool "
                                 f"{(y1 - y0, x1 - x0)}")

    @classmethod
    def empty(cls, height: int, width: int) -> CroppedMasks:
        return cls(np.zeros((0, 4), np.int32), (), int(height), int(width))

    @classmethod
    def from_masks(cls, masks: np.ndarray) -> CroppedMasks:
        """Full bool masks ``[N, H, W]`` -> their tight crops."""
        m = np.asarray(masks, dtype=bool)
        if m.ndim != 3:
            raise ValueError(f"masks must be [N, H, W], got shape {m.shape}")
        rects, crops = zip(*(_tight(c, 0, 0) for c in m)) if len(m) else ((), ())
        return cls(np.asarray(rects, np.int32).reshape(-1, 4), tuple(crops), m.shape[1], m.shape[2])

    def __len__(self) -> int:
        return len(self.crops)

    def mask(self, i: int) -> np.ndarray:
        """Mask ``i`` as bool ``[height, width]``."""
        out = np.zeros((self.height, self.width), dtype=bool)
        x0, y0, x1, y1 = (int(v) for v in self.rects[i])
        out[y0:y1, x0:x1] = self.crops[i]
        return out

    def stack(self) -> np.ndarray:
        """All masks, bool ``[N, height, width]``."""
        out = np.zeros((len(self), self.height, self.width), dtype=bool)
        for i, (c, (x0, y0, x1, y1)) in enumerate(zip(self.crops, self.rects.tolist())):
            out[i, y0:y1, x0:x1] = c
        return out

    def areas(self) -> np.ndarray:
        """Pixels of each mask, int64 ``[N]``."""
        return np.array([int(c.sum()) for c in self.crops], dtype=np.int64)

    def select(self, indices: Sequence[int] | np.ndarray) -> CroppedMasks:
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        return CroppedMasks(self.rects[idx].reshape(-1, 4), tuple(self.crops[i] for i in idx), self.height, self.width)

    def to_wire(self) -> tuple[np.ndarray, np.ndarray]:
        """``(rects int32 [N, 4], bits uint8 [B])``: each crop row-major, 8 pixels a byte
        (first pixel in the high bit, ``np.packbits``), padded to a whole byte, one after
        the other in detection order; ``B`` = :func:`wire_size` ``(rects)``."""
        parts = [np.packbits(c.reshape(-1)) for c in self.crops]
        bits = np.concatenate(parts) if parts else np.zeros(0, np.uint8)
        return np.ascontiguousarray(self.rects, dtype=np.int32), bits.astype(np.uint8, copy=False)

    @classmethod
    def from_wire(cls, rects: np.ndarray, bits: np.ndarray, height: int, width: int) -> CroppedMasks:
        """The inverse of :meth:`to_wire`; a ``bits`` length that the rects do not explain is
        refused, naming both."""
        r = np.asarray(rects, dtype=np.int64).reshape(-1, 4)
        b = np.asarray(bits, dtype=np.uint8).reshape(-1)
        if len(b) != wire_size(r):
            raise ValueError(f"mask bits hold {len(b)} bytes; the {len(r)} rects need {wire_size(r)} "
                             "(sum of ceil(h*w/8)): the arrays do not belong together")
        crops, at = [], 0
        for x0, y0, x1, y1 in r.tolist():
            n = max(x1 - x0, 0) * max(y1 - y0, 0)
            size = (n + 7) // 8
            crops.append(np.unpackbits(b[at : at + size], count=n).astype(bool).reshape(max(y1 - y0, 0), max(x1 - x0, 0)))
            at += size
        return cls(r.astype(np.int32), tuple(crops), int(height), int(width))


def _tight(crop: np.ndarray, x0: int, y0: int) -> tuple[tuple[int, int, int, int], np.ndarray]:
    """The bounding rectangle of ``crop``'s set pixels (offset by ``x0, y0``) and the crop cut
    to it; no pixel set: ``(0, 0, 0, 0)`` and an empty crop."""
    rows, cols = np.flatnonzero(crop.any(axis=1)), np.flatnonzero(crop.any(axis=0))
    if not len(rows):
        return (0, 0, 0, 0), np.zeros((0, 0), dtype=bool)
    r0, r1, c0, c1 = int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1
    return (x0 + c0, y0 + r0, x0 + c1, y0 + r1), np.ascontiguousarray(crop[r0:r1, c0:c1])


def paste_masks(probs: np.ndarray, boxes: np.ndarray, height: int, width: int, *,
                threshold: float = MASK_THRESHOLD, padding: int = MASK_PADDING) -> CroppedMasks:
    """``[N, M, M]`` mask probabilities of ``N`` boxes (xyxy ``[N, 4]`` in an ``height x width``
    image's pixels) -> their binary masks there (probability ``> threshold``).  Equal to
    ``paste_masks_in_image(probs[:, None], boxes, (height, width), padding)[:, 0] > threshold``."""
    p = np.asarray(probs, dtype=np.float32)
    b = as_boxes(boxes)
    if p.ndim != 3 or len(p) != len(b):
        raise ValueError(f"probs must be [N, M, M] for the {len(b)} boxes, got shape {p.shape}")
    rects, crops = [], []
    for prob, box in zip(p, b):
        pasted, (x0, y0, _, _) = paste_probabilities(prob, box, height, width, padding=padding)
        rect, crop = _tight(pasted > np.float32(threshold), x0, y0)
        rects.append(rect)
        crops.append(crop)
    return CroppedMasks(np.asarray(rects, np.int32).reshape(-1, 4), tuple(crops), int(height), int(width))


def letterbox_to_original(boxes: np.ndarray, record: LetterboxRecord) -> np.ndarray:
    """Letterbox-frame xyxy boxes -> ORIGINAL-pixel xyxy boxes, NOT clipped (the frame a mask
    is pasted in: its M x M grid spans the whole box); the same float32 arithmetic as
    :meth:`LetterboxRecord.from_letterbox`, which clips."""
    b = as_boxes(boxes).copy()
    b[:, [0, 2]] -= np.float32(record.pad_x)
    b[:, [1, 3]] -= np.float32(record.pad_y)
    b /= np.float32(record.scale)
    return b


def paste_in_original(probs: np.ndarray, boxes: np.ndarray, record: LetterboxRecord, *,
                      threshold: float = MASK_THRESHOLD, padding: int = MASK_PADDING) -> CroppedMasks:
    """The mask head's ``[N, M, M]`` probabilities of ``N`` detections whose boxes are xyxy
    ``[N, 4]`` in the LETTERBOX frame -> binary masks in the ORIGINAL image's pixel grid
    (``record.orig_h x record.orig_w``).  What evaluation, the in-process pipeline and the
    Triton postprocess call."""
    return paste_masks(probs, letterbox_to_original(boxes, record), record.orig_h, record.orig_w,
                       threshold=threshold, padding=padding)


def crop_iou(a: CroppedMasks, i: int, b: CroppedMasks, j: int) -> float:
    """IoU of mask ``i`` of ``a`` and mask ``j`` of ``b`` (the same image grid), computed on their
    rectangles' overlap only; two empty masks: 1.0 (they agree)."""
    if (a.height, a.width) != (b.height, b.width):
        raise ValueError(f"masks on a {a.width}x{a.height} and a {b.width}x{b.height} image cannot be compared")
    ra, rb = (int(v) for v in a.rects[i]), (int(v) for v in b.rects[j])
    ax0, ay0, ax1, ay1 = ra
    bx0, by0, bx1, by1 = rb
    na, nb = int(a.crops[i].sum()), int(b.crops[j].sum())
    x0, y0, x1, y1 = max(ax0, bx0), max(ay0, by0), min(ax1, bx1), min(ay1, by1)
    inter = 0
    if x1 > x0 and y1 > y0:
        inter = int((a.crops[i][y0 - ay0 : y1 - ay0, x0 - ax0 : x1 - ax0] & b.crops[j][y0 - by0 : y1 - by0, x0 - bx0 : x1 - bx0]).sum())
    union = na + nb - inter
    return inter / union if union else 1.0
