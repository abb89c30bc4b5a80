"""Box-level detection metrics: the matching behind AP (pycocotools and its weighted twin) and FROC.

Inputs are validated once into a :class:`DetectionTable` (per-image arrays in pycocotools'
xywh float64, plus one dataset-wide detection table); :func:`match` flags true positives
once per IoU threshold, and :class:`PreMatched` recomputes AP and FROC from those flags
under any image weighting, which is what the bootstrap of :mod:`cxr.training.metrics`
resamples.  Conventions (xyxy input, class ids 1..K, greedy matching) are stated in
:mod:`cxr.training.metrics`.
"""

from __future__ import annotations

import contextlib
import io
import math
from collections.abc import Mapping, Sequence

import numpy as np

FROC_FP_RATES: tuple[float, ...] = (0.125, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0)
VINDR_IOU = 0.4  # mAP@0.4, the VinDr-CXR competition's metric
FROC_IOU = VINDR_IOU  # default lesion-hit overlap; see cxr.training.metrics
# pycocotools' own grids, built the same way so the floats are identical.
COCO_IOUS = np.linspace(0.5, 0.95, int(np.round((0.95 - 0.5) / 0.05)) + 1, endpoint=True)
_REC_THRS = np.linspace(0.0, 1.00, int(np.round((1.00 - 0.0) / 0.01)) + 1, endpoint=True)


class DetectionTable:
    """Validated inputs flattened into dataset-wide arrays (images in input order)."""

    def __init__(self, preds, gts, class_names: Sequence[str], image_ids=None) -> None:
        if len(preds) != len(gts):
            raise ValueError(f"got {len(preds)} prediction entries but {len(gts)} ground-truth entries; need one of each per image")
        ids = list(range(len(preds))) if image_ids is None else list(image_ids)
        if len(ids) != len(preds):
            raise ValueError(f"got {len(ids)} image_ids for {len(preds)} images")
        self.class_names = [str(c) for c in class_names]
        self.n, self.k = len(preds), len(self.class_names)
        if self.n == 0:
            raise ValueError("no images to evaluate; pass one prediction and one ground-truth entry per image")
        if self.k == 0:
            raise ValueError("class_names is empty; pass the model's class list")
        self.pred = [self._entry(p, i, True) for i, p in zip(ids, preds)]
        self.gt = [self._entry(g, i, False) for i, g in zip(ids, gts)]
        # Dataset-wide detection table; concatenation order (image, then position) is
        # pycocotools' tie order for equal scores, which a stable sort preserves.
        self.det_img = np.concatenate([np.full(len(p[1]), i) for i, p in enumerate(self.pred)] + [np.zeros(0, int)]).astype(int)
        self.det_score = np.concatenate([p[1] for p in self.pred] + [np.zeros(0)])
        self.det_cls = np.concatenate([p[2] for p in self.pred] + [np.zeros(0, int)]).astype(int)
        self.n_gt = np.zeros((self.n, self.k), dtype=np.int64)  # GT boxes per image and class
        for i, g in enumerate(self.gt):
            np.add.at(self.n_gt[i], g[2] - 1, 1)
        # Image-level scores: max box score per class (0 without a box).
        self.img_score = np.zeros((self.n, self.k))
        np.maximum.at(self.img_score, (self.det_img, self.det_cls - 1), self.det_score)
        self.img_label = self.n_gt > 0

    def _entry(self, d: Mapping, image_id, is_pred: bool):
        what = "prediction" if is_pred else "ground truth"
        keys = ("boxes", "scores", "labels") if is_pred else ("boxes", "labels")
        missing = [key for key in keys if key not in d]
        if missing:
            raise ValueError(f"image {image_id!r}: {what} lacks {missing}; expected keys {list(keys)}")
        boxes = np.asarray(d["boxes"], dtype=np.float64).reshape(-1, 4) if np.size(d["boxes"]) else np.zeros((0, 4))
        labels = np.asarray(d["labels"]).reshape(-1).astype(np.int64)
        scores = np.asarray(d["scores"], dtype=np.float64).reshape(-1) if is_pred else np.ones(len(labels))
        if not len(boxes) == len(labels) == len(scores):
            raise ValueError(f"image {image_id!r}: {what} has {len(boxes)} boxes, {len(labels)} labels, {len(scores)} scores; they must match")
        if len(labels) and (labels.min() < 1 or labels.max() > self.k):
            raise ValueError(f"image {image_id!r}: {what} label ids {sorted(set(labels.tolist()))} outside 1..{self.k} (0 is background)")
        if not (np.isfinite(boxes).all() and np.isfinite(scores).all()):
            raise ValueError(f"image {image_id!r}: {what} has NaN or infinite boxes or scores")
        if len(boxes) and ((boxes[:, 2] < boxes[:, 0]) | (boxes[:, 3] < boxes[:, 1])).any():
            # pycocotools would silently ignore such a box; it is an upstream bug.
            raise ValueError(f"image {image_id!r}: {what} has boxes with x2 < x1 or y2 < y1; boxes must be xyxy")
        # xywh in float64, exactly what pycocotools receives, so our IoU equals theirs.
        xywh = np.column_stack([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]])
        return xywh, scores, labels


def iou_xywh(d: np.ndarray, g: np.ndarray) -> np.ndarray:
    """IoU ``[D, G]`` of xywh boxes, the same float64 operations as pycocotools' bbIou."""
    w = np.minimum(d[:, None, 0] + d[:, None, 2], g[None, :, 0] + g[None, :, 2]) - np.maximum(d[:, None, 0], g[None, :, 0])
    h = np.minimum(d[:, None, 1] + d[:, None, 3], g[None, :, 1] + g[None, :, 3]) - np.maximum(d[:, None, 1], g[None, :, 1])
    inter = w * h
    union = (d[:, 2] * d[:, 3])[:, None] + (g[:, 2] * g[:, 3])[None, :] - inter
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where((w > 0) & (h > 0), inter / union, 0.0)


def match(data: DetectionTable, iou_thr: float) -> np.ndarray:
    """True-positive flag per detection (dataset table order) at ``iou_thr``.

    Greedy per image and class in score order; each detection takes the unmatched
    ground truth of highest IoU >= ``iou_thr`` (the last one on equal IoU, as
    pycocotools does).  Greedy per image equals greedy across the dataset because
    ground truth never crosses images.
    """
    tp = np.zeros(len(data.det_score), dtype=bool)
    start = 0
    for (pb, ps, pl), (gb, _, gl) in zip(data.pred, data.gt):
        for c in np.unique(pl):
            det = np.flatnonzero(pl == c)
            det = det[np.argsort(-ps[det], kind="mergesort")]
            gts = gb[gl == c]
            if not len(gts):
                continue
            ious = iou_xywh(pb[det], gts)
            free = np.ones(len(gts), dtype=bool)
            for row, d in zip(ious, det):
                cand = np.where(free & (row >= min(iou_thr, 1 - 1e-10)), row, -1.0)
                if cand.max() < 0:
                    continue
                g = len(cand) - 1 - int(np.argmax(cand[::-1]))
                free[g] = False
                tp[start + d] = True
        start += len(ps)
    return tp


def coco_ap(tp: np.ndarray, n_gt: float, w: np.ndarray | None = None) -> float:
    """101-point interpolated AP as pycocotools computes it (NaN without ground truth).

    ``tp`` are flags of one class's detections in descending score order; ``w`` are
    image multiplicities of a bootstrap resample.  Weighted cumulative sums equal
    repeating each detection ``w`` times: the points dropped inside a repeat never
    raise the interpolated precision.
    """
    if n_gt <= 0:
        return math.nan
    w = np.ones(len(tp)) if w is None else w
    tp, w = tp[w > 0], w[w > 0]
    if not len(tp):
        return 0.0
    tps, fps = np.cumsum(w * tp), np.cumsum(w * ~tp)
    pr = np.maximum.accumulate((tps / (tps + fps + np.spacing(1)))[::-1])[::-1]
    idx = np.searchsorted(tps / n_gt, _REC_THRS, side="left")
    return float(np.where(idx < len(pr), pr[np.minimum(idx, len(pr) - 1)], 0.0).mean())


def froc_points(score: np.ndarray, tp: np.ndarray, det_img: np.ndarray, w: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Cumulative (false positives, true positives) at every score threshold, from (0, 0).

    Operating points are thresholds, so detections with equal scores enter together.
    ``w`` are image multiplicities of a bootstrap resample.
    """
    wd = np.ones(len(score)) if w is None else w[det_img].astype(float)
    order = np.argsort(-score, kind="mergesort")
    s, t, wd = score[order], tp[order], wd[order]
    ends = np.r_[s[1:] != s[:-1], True] if len(s) else np.zeros(0, dtype=bool)
    return np.r_[0.0, np.cumsum(wd * ~t)[ends]], np.r_[0.0, np.cumsum(wd * t)[ends]]


def froc_sensitivity(score: np.ndarray, tp: np.ndarray, det_img: np.ndarray, n_gt: float, n_images: int, w: np.ndarray | None = None) -> np.ndarray:
    """Lesion sensitivity at each of :data:`FROC_FP_RATES` (NaN without lesions).

    The value at a rate is the best sensitivity whose false positives per image do not
    exceed it (a step curve, no interpolation between operating points).
    """
    if n_gt <= 0:
        return np.full(len(FROC_FP_RATES), math.nan)
    fps, tps = froc_points(score, tp, det_img, w)
    at = np.searchsorted(fps, np.asarray(FROC_FP_RATES) * n_images, side="right") - 1
    return tps[at] / n_gt


def coco_eval(data: DetectionTable) -> np.ndarray:
    """pycocotools AP per (IoU threshold, class): ``[len(ious), K]``, NaN without GT.

    IoU thresholds are 0.4 followed by COCO's 0.5:0.95 grid, in one COCOeval run.
    """
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    def coco(entries, with_score):
        anns = []
        for img, (xywh, scores, labels) in enumerate(entries):
            for b, s, c in zip(xywh.tolist(), scores.tolist(), labels.tolist()):
                ann = {"id": len(anns) + 1, "image_id": img + 1, "category_id": c, "bbox": b, "area": b[2] * b[3], "iscrowd": 0}
                if with_score:
                    ann["score"] = s
                anns.append(ann)  # ids start at 1: pycocotools reads id 0 as "unmatched"
        obj = COCO()
        obj.dataset = {"images": [{"id": i + 1} for i in range(data.n)], "annotations": anns,
                       "categories": [{"id": c + 1, "name": n} for c, n in enumerate(data.class_names)]}
        obj.createIndex()
        return obj

    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
        ev = COCOeval(coco(data.gt, False), coco(data.pred, True), iouType="bbox")
        ev.params.iouThrs = np.r_[VINDR_IOU, COCO_IOUS]
        ev.params.areaRng, ev.params.areaRngLbl = [[0.0, 1e5**2]], ["all"]
        # Never truncate: maxDets at least COCO's 100 and at least every image's count.
        ev.params.maxDets = [max(100, *(len(p[1]) for p in data.pred), 0)]
        ev.evaluate()
        ev.accumulate()
    prec = ev.eval["precision"][:, :, :, 0, -1]  # [T, R, K]; -1 marks "no GT"
    return np.where((prec > -1).all(axis=1), prec.mean(axis=1), np.nan)


class PreMatched:
    """Pre-matched detections, for AP/FROC under image re-weighting (bootstrap)."""

    def __init__(self, data: DetectionTable, froc_iou: float) -> None:
        self.data = data
        order = np.argsort(-data.det_score, kind="mergesort")  # pycocotools' tie order
        self.cls_order = [order[data.det_cls[order] == c + 1] for c in range(data.k)]
        self.tp = {t: match(data, t) for t in {0.5, VINDR_IOU, froc_iou}}
        self.froc_iou = froc_iou

    def ap(self, iou: float, w: np.ndarray | None = None) -> np.ndarray:
        d, tp = self.data, self.tp[iou]
        n_gt = d.n_gt.sum(0) if w is None else w @ d.n_gt
        return np.array([coco_ap(tp[o], n_gt[c], None if w is None else w[d.det_img[o]].astype(float))
                         for c, o in enumerate(self.cls_order)])

    def froc(self, w: np.ndarray | None = None) -> np.ndarray:
        d = self.data
        n_gt = d.n_gt.sum() if w is None else (w @ d.n_gt).sum()
        return froc_sensitivity(d.det_score, self.tp[self.froc_iou], d.det_img, n_gt, d.n, w)
