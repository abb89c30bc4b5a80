"""Detection metrics for chest X-ray findings: the numbers behind ``cxr evaluate``.

Inputs, per image (boxes are ``xyxy`` in ORIGINAL pixels, any order of images):

- predictions ``{"boxes": float [N, 4], "scores": float [N], "labels": int [N] in 1..K}``
- ground truth ``{"boxes": float [M, 4], "labels": int [M] in 1..K}``

with ``class_names[k - 1]`` naming class id ``k`` (:class:`cxr.labels.LabelSet` order).
An image with no findings and no predictions is valid (empty ``[0, 4]`` arrays).

What is computed and why:

- Box level, per class: AP@0.5, AP@0.4 (VinDr-CXR's competition convention) and COCO
  AP@[.5:.95], by pycocotools so the numbers are comparable with published ones.
  A class without ground truth in the set has AP ``None`` and is left out of the mean
  (pycocotools does the same); its predictions still count as false positives in FROC.
- FROC (lesion level, the CAD convention): sensitivity at 1/8 .. 8 false positives per
  image and their mean (CPM, as in LUNA16).  Matching is class-aware and greedy by score
  at ``froc_iou`` (default 0.4: radiologists' boxes for diffuse findings disagree with
  each other below IoU 0.5, hence VinDr's 0.4; NIH ChestX-ray14 work used even looser
  overlap).  A prediction that does not take a still-unmatched lesion of its class is a
  false positive, duplicates included.
- Image level, per class and for "any finding" (the triage question): the image score is
  the maximum box score (0 when there is no box), the label is "has a box of the
  class".  AUROC by Mann-Whitney ranks (ties count one half); precision, recall, F1 and
  accuracy at a per-class threshold chosen on validation data by :func:`choose_thresholds`.
- Bootstrap 95% percentile intervals, resampling images with replacement.  Matching is
  per image, so it is done once and a resample only re-weights images: AP and FROC are
  recomputed from weighted cumulative sums (a pycocotools-identical AP at a fixed IoU,
  tested against pycocotools on the full set) instead of rerunning COCOeval each time.
"""

from __future__ import annotations

import contextlib
import io
import math
from collections.abc import Mapping, Sequence

import numpy as np

FROC_FP_RATES: tuple[float, ...] = (0.125, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0)
VINDR_IOU = 0.4  # mAP@0.4, the VinDr-CXR competition's metric
FROC_IOU = VINDR_IOU  # default lesion-hit overlap; see the module docstring
DEFAULT_THRESHOLD = 0.5  # used for a class that has no stored threshold
ANY_FINDING = "any_finding"  # key of the abnormal-vs-normal entry and its threshold
# pycocotools' own grids, built the same way so the floats are identical.
COCO_IOUS = np.linspace(0.5, 0.95, int(np.round((0.95 - 0.5) / 0.05)) + 1, endpoint=True)
_REC_THRS = np.linspace(0.0, 1.00, int(np.round((1.00 - 0.0) / 0.01)) + 1, endpoint=True)


class _Data:
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


def _iou_xywh(d: np.ndarray, g: np.ndarray) -> np.ndarray:
    """IoU ``[D, G]`` of xywh boxes, the same float64 operations as pycocotools' bbIou."""
    w = np.minimum(d[:, None, 0] + d[:, None, 2], g[None, :, 0] + g[None, :, 2]) - np.maximum(d[:, None, 0], g[None, :, 0])
    h = np.minimum(d[:, None, 1] + d[:, None, 3], g[None, :, 1] + g[None, :, 3]) - np.maximum(d[:, None, 1], g[None, :, 1])
    inter = w * h
    union = (d[:, 2] * d[:, 3])[:, None] + (g[:, 2] * g[:, 3])[None, :] - inter
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where((w > 0) & (h > 0), inter / union, 0.0)


def _match(data: _Data, iou_thr: float) -> np.ndarray:
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
            ious = _iou_xywh(pb[det], gts)
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


def _coco_ap(tp: np.ndarray, n_gt: float, w: np.ndarray | None = None) -> float:
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


def _froc_points(score: np.ndarray, tp: np.ndarray, det_img: np.ndarray, w: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Cumulative (false positives, true positives) at every score threshold, from (0, 0).

    Operating points are thresholds, so detections with equal scores enter together.
    ``w`` are image multiplicities of a bootstrap resample.
    """
    wd = np.ones(len(score)) if w is None else w[det_img].astype(float)
    order = np.argsort(-score, kind="mergesort")
    s, t, wd = score[order], tp[order], wd[order]
    ends = np.r_[s[1:] != s[:-1], True] if len(s) else np.zeros(0, dtype=bool)
    return np.r_[0.0, np.cumsum(wd * ~t)[ends]], np.r_[0.0, np.cumsum(wd * t)[ends]]


def _froc(score: np.ndarray, tp: np.ndarray, det_img: np.ndarray, n_gt: float, n_images: int, w: np.ndarray | None = None) -> np.ndarray:
    """Lesion sensitivity at each of :data:`FROC_FP_RATES` (NaN without lesions).

    The value at a rate is the best sensitivity whose false positives per image do not
    exceed it (a step curve, no interpolation between operating points).
    """
    if n_gt <= 0:
        return np.full(len(FROC_FP_RATES), math.nan)
    fps, tps = _froc_points(score, tp, det_img, w)
    at = np.searchsorted(fps, np.asarray(FROC_FP_RATES) * n_images, side="right") - 1
    return tps[at] / n_gt


def _rankdata(x: np.ndarray) -> np.ndarray:
    """1-based ranks with ties given their average rank."""
    _, inv, counts = np.unique(x, return_inverse=True, return_counts=True)
    upper = np.cumsum(counts)
    return (upper - (counts - 1) / 2.0)[inv.reshape(-1)]


def auroc(labels, scores) -> float | None:
    """Mann-Whitney AUROC (a tie between a positive and a negative counts one half).

    ``None`` when only one class is present: the area is undefined, not 0.5.
    """
    y, s = np.asarray(labels, dtype=bool), np.asarray(scores, dtype=float)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return None
    return float((_rankdata(s)[y].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def _binary(y: np.ndarray, s: np.ndarray, threshold: float) -> dict:
    """Precision/recall/F1/accuracy with ``score >= threshold`` called positive.

    A ratio with a zero denominator is ``None``, except precision when positives
    exist but none was called: 0 then (sklearn's zero_division), so a silent model
    cannot look precise.
    """
    p = s >= threshold
    tp, fp, fn = int((p & y).sum()), int((p & ~y).sum()), int((~p & y).sum())
    prec = tp / (tp + fp) if tp + fp else (0.0 if tp + fn else None)
    rec = tp / (tp + fn) if tp + fn else None
    f1 = 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else None
    acc = float((p == y).mean()) if len(y) else math.nan
    return {"precision": prec, "recall": rec, "f1": f1, "accuracy": acc}


def _best_f1_threshold(y: np.ndarray, s: np.ndarray) -> float:
    """The F1-maximising threshold, placed halfway to the next lower score.

    Any threshold in (next lower score, best score] gives the same validation F1;
    the midpoint keeps the decision stable when a backend (FP16, INT8) moves scores
    slightly.  Among equal F1 the highest threshold (fewer false alarms) wins.
    """
    order = np.argsort(-s, kind="mergesort")
    ss, tp, fp = s[order], np.cumsum(y[order]), np.cumsum(~y[order])
    ends = np.r_[ss[1:] != ss[:-1], True] & (ss > 0)  # one candidate per distinct score > 0
    f1 = 2 * tp[ends] / np.maximum(tp[ends] + fp[ends] + y.sum(), 1)
    if not len(f1) or f1.max() <= 0:
        return DEFAULT_THRESHOLD  # no positives, or none scored: nothing to learn from
    best = int(np.argmax(f1))  # first maximum = highest threshold
    cand, lower = ss[ends][best], ss[ss < ss[ends][best]]
    return float((cand + (lower[0] if len(lower) else 0.0)) / 2.0)


def choose_thresholds(preds: Sequence[Mapping], gts: Sequence[Mapping], class_names: Sequence[str]) -> dict[str, float]:
    """Per-class image-level thresholds that maximise F1 on (validation) data.

    Returns ``{class_name: threshold, ..., "any_finding": threshold}``; the caller
    stores it in the checkpoint and passes it to :func:`evaluate_detections` on the
    test split.  A class without positives gets :data:`DEFAULT_THRESHOLD`.
    """
    data = _Data(preds, gts, class_names)
    out = {name: _best_f1_threshold(data.img_label[:, c], data.img_score[:, c]) for c, name in enumerate(data.class_names)}
    out[ANY_FINDING] = _best_f1_threshold(data.img_label.any(1), data.img_score.max(1))
    return out


def _coco_eval(data: _Data) -> np.ndarray:
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


class _Fast:
    """Pre-matched detections, for AP/FROC under image re-weighting (bootstrap)."""

    def __init__(self, data: _Data, froc_iou: float) -> None:
        self.data = data
        order = np.argsort(-data.det_score, kind="mergesort")  # pycocotools' tie order
        self.cls_order = [order[data.det_cls[order] == c + 1] for c in range(data.k)]
        self.tp = {t: _match(data, t) for t in {0.5, VINDR_IOU, froc_iou}}
        self.froc_iou = froc_iou

    def ap(self, iou: float, w: np.ndarray | None = None) -> np.ndarray:
        d, tp = self.data, self.tp[iou]
        n_gt = d.n_gt.sum(0) if w is None else w @ d.n_gt
        return np.array([_coco_ap(tp[o], n_gt[c], None if w is None else w[d.det_img[o]].astype(float))
                         for c, o in enumerate(self.cls_order)])

    def froc(self, w: np.ndarray | None = None) -> np.ndarray:
        d = self.data
        n_gt = d.n_gt.sum() if w is None else (w @ d.n_gt).sum()
        return _froc(d.det_score, self.tp[self.froc_iou], d.det_img, n_gt, d.n, w)


def _nanmean(x) -> float:
    """Mean ignoring undefined entries (NaN or None); NaN when none is defined."""
    x = np.array([math.nan if v is None else v for v in x], dtype=float)
    return float(np.nanmean(x)) if np.isfinite(x).any() else math.nan


def _image_level(y: np.ndarray, s: np.ndarray, thr: np.ndarray) -> tuple[list[dict], float, float]:
    """Per-column binary metrics + AUROC, and the macro F1/AUROC over columns with positives."""
    rows = []
    for c in range(y.shape[1]):
        r = _binary(y[:, c], s[:, c], thr[c]) | {"auroc": auroc(y[:, c], s[:, c])}
        rows.append(r | {"threshold": float(thr[c]), "n_pos": int(y[:, c].sum()), "n_neg": int((~y[:, c]).sum())})
    pos = [r for r in rows if r["n_pos"] > 0]
    return rows, _nanmean([r["f1"] for r in pos]), _nanmean([r["auroc"] for r in pos])


def _clean(x):
    """JSON-safe: numpy scalars to Python, NaN/inf to None."""
    if isinstance(x, dict):
        return {str(k): _clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple, np.ndarray)):
        return [_clean(v) for v in x]
    if isinstance(x, (bool, np.bool_)):
        return bool(x)
    if isinstance(x, (int, np.integer)):
        return int(x)
    if isinstance(x, (float, np.floating)):
        return float(x) if math.isfinite(x) else None
    return x


def evaluate_detections(
    preds: Sequence[Mapping],
    gts: Sequence[Mapping],
    class_names: Sequence[str],
    *,
    image_ids: Sequence | None = None,
    thresholds: Mapping[str, float] | None = None,
    froc_iou: float = FROC_IOU,
    bootstrap: int = 200,
    seed: int = 0,
) -> dict:
    """All detection metrics of a data split as a JSON-serialisable dict.

    ``preds[i]`` / ``gts[i]`` describe image ``i`` (see the module docstring);
    ``image_ids`` only name images in error messages.  ``thresholds`` come from
    :func:`choose_thresholds` on validation data (absent classes: 0.5).  ``bootstrap``
    resamples give 95% intervals in ``ci`` (0 disables).  Undefined values are ``None``.
    """
    data = _Data(preds, gts, class_names, image_ids)
    names, thresholds = data.class_names, dict(thresholds or {})
    unknown = sorted(set(thresholds) - set(names) - {ANY_FINDING})
    if unknown:
        raise ValueError(f"thresholds for unknown classes {unknown}; valid keys are {names + [ANY_FINDING]}")
    thr = np.array([float(thresholds.get(n, DEFAULT_THRESHOLD)) for n in names + [ANY_FINDING]])

    coco = _coco_eval(data)  # rows: 0.4, 0.5, 0.55, ..., 0.95
    ap40, ap50, ap50_95 = coco[0], coco[1], coco[1:].mean(axis=0)  # NaN stays NaN: no GT
    fast = _Fast(data, froc_iou)
    froc = fast.froc()

    # Column K is "any finding": abnormal image vs normal, score = max over all boxes.
    y = np.column_stack([data.img_label, data.img_label.any(1)])
    s = np.column_stack([data.img_score, data.img_score.max(1)])
    rows, f1, auc = _image_level(y[:, :-1], s[:, :-1], thr[:-1])
    any_row = _image_level(y[:, -1:], s[:, -1:], thr[-1:])[0][0]
    pos_rows = [r for r in rows if r["n_pos"] > 0]
    image_level = {key: _nanmean([r[key] for r in pos_rows]) for key in ("precision", "recall", "accuracy")}
    image_level |= {"f1": f1, "auroc": auc, "per_class": dict(zip(names, rows)), ANY_FINDING: any_row}

    per_class = {
        n: {"ap50": ap50[c], "ap40": ap40[c], "ap50_95": ap50_95[c], "n_gt": int(data.n_gt[:, c].sum()),
            **{k: rows[c][k] for k in ("auroc", "precision", "recall", "f1", "threshold")}}
        for c, n in enumerate(names)
    }
    out = {
        "n_images": data.n,
        "n_gt": int(data.n_gt.sum()),
        "map50": _nanmean(ap50),
        "map40": _nanmean(ap40),
        "map50_95": _nanmean(ap50_95),
        "froc": {f"{r:g}": v for r, v in zip(FROC_FP_RATES, froc)},
        "froc_mean": _nanmean(froc) if np.isfinite(froc).all() else math.nan,
        "froc_iou": froc_iou,
        "per_class": per_class,
        "image_level": image_level,
        "ci": _bootstrap(fast, y, s, thr, bootstrap, seed) if bootstrap > 0 else {},
        "bootstrap": int(bootstrap),
    }
    return _clean(out)


def _bootstrap(fast: _Fast, y: np.ndarray, s: np.ndarray, thr: np.ndarray, n_boot: int, seed: int) -> dict:
    """95% percentile intervals from ``n_boot`` image resamples (undefined draws skipped)."""
    n = fast.data.n
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n, size=(n_boot, n))
    counts = np.zeros((n_boot, n))
    np.add.at(counts, (np.repeat(np.arange(n_boot), n), idx.reshape(-1)), 1.0)
    draws: dict[str, list[float]] = {k: [] for k in ("map50", "map40", "froc_mean", "image_f1", "image_auroc", "any_finding_auroc")}
    for b in range(n_boot):
        w, i = counts[b], idx[b]
        draws["map50"].append(_nanmean(fast.ap(0.5, w)))
        draws["map40"].append(_nanmean(fast.ap(VINDR_IOU, w)))
        draws["froc_mean"].append(float(np.mean(fast.froc(w))))
        _, f1, auc = _image_level(y[i, :-1], s[i, :-1], thr[:-1])
        draws["image_f1"].append(f1)
        draws["image_auroc"].append(auc)
        a = auroc(y[i, -1], s[i, -1])
        draws["any_finding_auroc"].append(math.nan if a is None else a)
    ci = {}
    for key, vals in draws.items():
        v = np.asarray(vals, dtype=float)
        v = v[np.isfinite(v)]
        ci[key] = np.percentile(v, [2.5, 97.5]).tolist() if len(v) else None
    return ci


def format_metrics_table(metrics: Mapping) -> str:
    """A Markdown summary of :func:`evaluate_detections` output (one row per class)."""

    def f(v) -> str:
        return "–" if v is None else f"{v:.3f}"

    cols = ("ap50", "ap40", "ap50_95", "auroc", "precision", "recall", "f1", "threshold")
    lines = ["| class | n_gt | AP50 | AP40 | AP50:95 | AUROC | precision | recall | F1 | threshold |",
             "|---" * 10 + "|"]
    for name, r in metrics["per_class"].items():
        lines.append(f"| {name} | {r['n_gt']} | " + " | ".join(f(r[c]) for c in cols) + " |")
    il = metrics["image_level"]
    a = il[ANY_FINDING]
    lines.append(f"| any finding | {a['n_pos']} img | – | – | – | " + " | ".join(f(a[c]) for c in cols[3:]) + " |")
    lines.append(f"| **mean** | {metrics['n_gt']} | {f(metrics['map50'])} | {f(metrics['map40'])} | {f(metrics['map50_95'])} | "
                 + " | ".join(f(il[c]) for c in ("auroc", "precision", "recall", "f1")) + " | |")
    froc = ", ".join(f"{k}: {f(v)}" for k, v in metrics["froc"].items())
    lines += ["", f"FROC sensitivity @ FP/image (IoU {metrics['froc_iou']:g}): {froc}; mean {f(metrics['froc_mean'])}",
              f"{metrics['n_images']} images; means over classes with ground truth."]
    ci = metrics.get("ci") or {}
    if ci:
        parts = [f"{k} [{f(v[0])}, {f(v[1])}]" for k, v in ci.items() if v is not None]
        lines.append(f"95% bootstrap CI ({metrics.get('bootstrap')} resamples): " + "; ".join(parts))
    return "\n".join(lines)
