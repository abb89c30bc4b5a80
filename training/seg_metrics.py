"""Instance-mask metrics of a Mask R-CNN: the mask figures of ``cxr evaluate``.

Inputs, per image, all in the ORIGINAL pixel grid of the image file:

- predictions ``{"scores": float [N], "labels": int [N] in 1..K, "masks": CroppedMasks}``
  (what :func:`cxr.training.engine.predict` returns for a Mask R-CNN);
- ground truth ``{"labels": int [M], "masks": [M COCO RLE dicts]}``
  (:func:`cxr.training.engine.ground_truth` with ``masks=True``).

What is computed and why:

- COCO segm AP@[.5:.95], AP50 and AP75, overall and per class, by pycocotools
  (``COCOeval(iouType="segm")``): the published figure's own definition, not a re-implementation.
- Matched instances: per image and class, detections in score order each take the unmatched
  ground-truth mask of highest mask IoU >= 0.5 (:data:`MATCH_IOU`; pycocotools' rule, so the
  matched detections are exactly segm AP50's true positives).  Of the matched pairs, per class
  and over all classes: Dice and IoU, median and mean, and ``recall`` (matched / ground
  truth).  A matched pair has IoU >= 0.5, so its Dice is >= 2/3: Dice says how well a found
  finding is outlined, ``recall`` how many are found.
- Bootstrap 95 % percentile intervals, resampling images with replacement: segm AP50 (from
  the matching above under image weights, :func:`~cxr.training.box_metrics.coco_ap`; it
  equals pycocotools' AP50 on the full set, which the tests check) and the Dice / IoU
  medians and means.
"""

from __future__ import annotations

import contextlib
import io
import math
from collections.abc import Mapping, Sequence

import numpy as np

from cxr.masks import CroppedMasks
from cxr.training.box_metrics import coco_ap
from cxr.training.image_metrics import nanmean
from cxr.training.masks import rle_area, rle_from_counts
from cxr.training.metrics import _clean

MATCH_IOU = 0.5  # a detection's mask and a ground-truth mask of its class with IoU >= this are one instance
SUMMARY = ("dice_median", "dice_mean", "iou_median", "iou_mean")


def crop_rle(masks: CroppedMasks, i: int) -> dict:
    """COCO compressed RLE (column-major, ``{"size": [H, W], "counts": str}``) of mask ``i`` on
    the whole ``H x W`` grid, built from its crop without allocating the full frame."""
    h, w = masks.height, masks.width
    x0, y0 = int(masks.rects[i][0]), int(masks.rects[i][1])
    cx, cy = np.nonzero(masks.crops[i].T)  # column-major order: by column, then row
    pos = (x0 + cx).astype(np.int64) * h + (y0 + cy)
    if not len(pos):
        return rle_from_counts([h * w], h, w)
    breaks = np.flatnonzero(np.diff(pos) != 1) + 1
    starts, ends = pos[np.r_[0, breaks]], pos[np.r_[breaks - 1, len(pos) - 1]] + 1
    counts = np.empty(2 * len(starts) + 1, np.int64)
    counts[0], counts[1:-1:2], counts[-1] = starts[0], ends - starts, h * w - ends[-1]
    counts[2:-1:2] = starts[1:] - ends[:-1]
    return rle_from_counts(counts[:-1].tolist() if counts[-1] == 0 else counts.tolist(), h, w)  # no empty last run, as pycocotools


def masks_to_rles(masks: CroppedMasks) -> list[dict]:
    """:func:`crop_rle` of every mask."""
    return [crop_rle(masks, i) for i in range(len(masks))]


class MaskTable:
    """Validated inputs: per image the predictions' RLEs, scores and labels, the ground truth's
    RLEs and labels, and the mask IoU of every same-image pair (pycocotools ``mask.iou``)."""

    def __init__(self, preds: Sequence[Mapping], gts: Sequence[Mapping], class_names: Sequence[str]) -> None:
        import pycocotools.mask as mask_api

        if len(preds) != len(gts) or not preds:
            raise ValueError(f"got {len(preds)} prediction and {len(gts)} ground-truth entries; need one of each per image, "
                             "at least one")
        self.class_names, self.n, self.k = [str(c) for c in class_names], len(preds), len(class_names)
        self.pred, self.gt, self.ious = [], [], []
        for i, (p, g) in enumerate(zip(preds, gts)):
            if "masks" not in p or "masks" not in g:
                raise ValueError(f"image {i}: predictions and ground truth both need 'masks' (a Mask R-CNN's "
                                 "predictions; ground_truth(..., masks=True))")
            rles = masks_to_rles(p["masks"]) if isinstance(p["masks"], CroppedMasks) else list(p["masks"])
            scores, labels = np.asarray(p["scores"], float).reshape(-1), np.asarray(p["labels"], np.int64).reshape(-1)
            g_rles, g_labels = list(g["masks"]), np.asarray(g["labels"], np.int64).reshape(-1)
            if not len(rles) == len(scores) == len(labels) or len(g_rles) != len(g_labels) or None in g_rles:
                raise ValueError(f"image {i}: {len(rles)} masks, {len(scores)} scores, {len(labels)} labels predicted; "
                                 f"{len(g_rles)} masks for {len(g_labels)} ground-truth labels: every instance needs one mask")
            for lab in (labels, g_labels):
                if len(lab) and (lab.min() < 1 or lab.max() > self.k):
                    raise ValueError(f"image {i}: label ids {sorted(set(lab.tolist()))} outside 1..{self.k}")
            self.pred.append((rles, scores, labels))
            self.gt.append((g_rles, g_labels))
            iou = mask_api.iou(rles, g_rles, [0] * len(g_rles)) if len(rles) and len(g_rles) else []
            self.ious.append(np.asarray(iou, float).reshape(len(rles), len(g_rles)))
        self.det_img = np.concatenate([np.full(len(p[1]), i) for i, p in enumerate(self.pred)] + [np.zeros(0, int)]).astype(int)
        self.det_score = np.concatenate([p[1] for p in self.pred] + [np.zeros(0)])
        self.det_cls = np.concatenate([p[2] for p in self.pred] + [np.zeros(0, int)]).astype(int)
        # each image's [H, W] as its masks state it (pycocotools reads it; an image without masks: 1 x 1)
        self.sizes = [tuple((p[0] + g[0])[0]["size"]) if p[0] or g[0] else (1, 1) for p, g in zip(self.pred, self.gt)]
        self.n_gt = np.zeros((self.n, self.k), np.int64)
        for i, (_, lab) in enumerate(self.gt):
            np.add.at(self.n_gt[i], lab - 1, 1)


def match_masks(table: MaskTable, iou_thr: float = MATCH_IOU) -> tuple[np.ndarray, np.ndarray]:
    """``(tp, iou)`` per detection in table order: whether it matched a ground-truth mask at
    ``iou_thr`` and that pair's mask IoU (NaN unmatched).  Greedy per image and class in score
    order (stable); a detection takes the unmatched ground truth of highest IoU >= ``iou_thr``,
    the last one on equal IoU (pycocotools' ``evaluateImg``)."""
    tp, pair_iou, start = np.zeros(len(table.det_score), bool), np.full(len(table.det_score), np.nan), 0
    for (_, scores, labels), (_, g_labels), ious in zip(table.pred, table.gt, table.ious):
        for c in np.unique(labels):
            det = np.flatnonzero(labels == c)
            det = det[np.argsort(-scores[det], kind="mergesort")]
            gts = np.flatnonzero(g_labels == c)
            free = np.ones(len(gts), bool)
            for d in det:
                row = np.where(free & (ious[d, gts] >= min(iou_thr, 1 - 1e-10)), ious[d, gts], -1.0) if len(gts) else np.zeros(0)
                if not len(row) or row.max() < 0:
                    continue
                g = len(row) - 1 - int(np.argmax(row[::-1]))
                free[g] = False
                tp[start + d], pair_iou[start + d] = True, row[g]
        start += len(scores)
    return tp, pair_iou


def coco_segm(table: MaskTable) -> np.ndarray:
    """pycocotools segm AP per (IoU threshold 0.5, 0.55 .. 0.95; class): ``[10, K]``, NaN without GT."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    def coco(entries, with_score):
        anns = []
        for img, entry in enumerate(entries):
            rles, labels = entry[0], entry[-1]
            scores = entry[1] if with_score else np.ones(len(labels))
            for rle, s, c in zip(rles, scores.tolist(), labels.tolist()):
                ann = {"id": len(anns) + 1, "image_id": img + 1, "category_id": c, "segmentation": rle,
                       "area": float(rle_area(rle)), "iscrowd": 0}
                if with_score:
                    ann["score"] = s
                anns.append(ann)  # ids start at 1: pycocotools reads id 0 as "unmatched"
        obj = COCO()
        obj.dataset = {"images": [{"id": i + 1, "height": h, "width": w} for i, (h, w) in enumerate(table.sizes)], "annotations": anns,
                       "categories": [{"id": c + 1, "name": n} for c, n in enumerate(table.class_names)]}
        obj.createIndex()
        return obj

    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
        ev = COCOeval(coco(table.gt, False), coco(table.pred, True), iouType="segm")
        ev.params.areaRng, ev.params.areaRngLbl = [[0.0, 1e5**2]], ["all"]
        ev.params.maxDets = [max(100, *(len(p[1]) for p in table.pred), 0)]  # never truncate
        ev.evaluate()
        ev.accumulate()
    prec = ev.eval["precision"][:, :, :, 0, -1]  # [T, R, K]; -1 marks "no GT"
    return np.where((prec > -1).all(axis=1), prec.mean(axis=1), np.nan)


def _summary(iou: np.ndarray) -> dict[str, float]:
    """Median and mean Dice and IoU of matched pairs (NaN without any); Dice = 2 IoU / (1 + IoU)."""
    if not len(iou):
        return dict.fromkeys(SUMMARY, math.nan)
    dice = 2 * iou / (1 + iou)
    return {"dice_median": float(np.median(dice)), "dice_mean": float(dice.mean()),
            "iou_median": float(np.median(iou)), "iou_mean": float(iou.mean())}


def evaluate_masks(preds: Sequence[Mapping], gts: Sequence[Mapping], class_names: Sequence[str], *,
                   bootstrap: int = 200, seed: int = 0) -> dict:
    """The mask metrics of a data split (see the module docstring); NaN where undefined."""
    table = MaskTable(preds, gts, class_names)
    segm = coco_segm(table)  # rows: IoU 0.5, 0.55, ..., 0.95
    tp, pair_iou = match_masks(table)
    per_class = {}
    for c, name in enumerate(table.class_names):
        hit = tp & (table.det_cls == c + 1)
        n_gt = int(table.n_gt[:, c].sum())
        per_class[name] = {"ap": segm[:, c].mean(), "ap50": segm[0, c], "ap75": segm[5, c], "n_gt": n_gt,
                           "n_matched": int(hit.sum()), "recall": hit.sum() / n_gt if n_gt else math.nan,
                           **_summary(pair_iou[hit])}
    n_gt = int(table.n_gt.sum())
    out = {"ap": nanmean(segm.mean(axis=0)), "ap50": nanmean(segm[0]), "ap75": nanmean(segm[5]), "n_gt": n_gt, "n_matched": int(tp.sum()), "recall": tp.sum() / n_gt if n_gt else math.nan,
           **_summary(pair_iou[tp]), "per_class": per_class, "match_iou": MATCH_IOU, "bootstrap": int(bootstrap),
           "ci": _bootstrap(table, tp, pair_iou, bootstrap, seed) if bootstrap > 0 else {}}
    return _clean(out)


def matched_ap50(table: MaskTable, tp: np.ndarray, weights: np.ndarray | None = None) -> float:
    """Mean over classes of the 101-point AP of :func:`match_masks`' flags, images weighted by
    ``weights`` (a bootstrap resample's multiplicities; None: each once, pycocotools' AP50)."""
    order = np.argsort(-table.det_score, kind="mergesort")  # pycocotools' tie order
    w = np.ones(table.n) if weights is None else np.asarray(weights, float)
    aps = []
    for c in range(table.k):
        o = order[table.det_cls[order] == c + 1]
        aps.append(coco_ap(tp[o], w @ table.n_gt[:, c], w[table.det_img[o]]))
    return nanmean(aps)


def _bootstrap(table: MaskTable, tp: np.ndarray, pair_iou: np.ndarray, n_boot: int, seed: int) -> dict:
    """95 % percentile intervals from ``n_boot`` image resamples: segm AP50, the Dice / IoU
    summaries overall and each class's Dice / IoU medians (undefined draws skipped)."""
    rng = np.random.default_rng(seed)
    counts = np.stack([np.bincount(rng.integers(0, table.n, table.n), minlength=table.n) for _ in range(n_boot)])
    draws: dict[str, list[float]] = {"ap50": [], **{k: [] for k in SUMMARY}}
    for c, name in enumerate(table.class_names):
        draws |= {f"{name}/dice_median": [], f"{name}/iou_median": []}
    for w in counts:
        draws["ap50"].append(matched_ap50(table, tp, w))
        for key, v in _summary(np.repeat(pair_iou[tp], w[table.det_img[tp]])).items():
            draws[key].append(v)
        for c, name in enumerate(table.class_names):
            hit = tp & (table.det_cls == c + 1)
            s = _summary(np.repeat(pair_iou[hit], w[table.det_img[hit]]))
            draws[f"{name}/dice_median"].append(s["dice_median"])
            draws[f"{name}/iou_median"].append(s["iou_median"])
    ci = {}
    for key, vals in draws.items():
        v = np.asarray(vals, float)
        v = v[np.isfinite(v)]
        ci[key] = np.percentile(v, [2.5, 97.5]).tolist() if len(v) else None
    return ci


def format_segm_table(segm: Mapping) -> str:
    """A Markdown summary of :func:`evaluate_masks` output (one row per class)."""

    def f(v) -> str:
        return "–" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.3f}"

    def interval(key: str) -> str:
        v = (segm.get("ci") or {}).get(key)
        return f" ({f(v[0])}–{f(v[1])})" if v else ""

    lines = ["| class | n_gt | segm AP | AP50 | AP75 | matched | Dice median (95 % CI) | Dice mean | IoU median (95 % CI) | IoU mean |",
             "|---" * 10 + "|"]
    for name, r in segm["per_class"].items():
        lines.append(f"| {name} | {r['n_gt']} | {f(r['ap'])} | {f(r['ap50'])} | {f(r['ap75'])} | {r['n_matched']} | "
                     f"{f(r['dice_median'])}{interval(name + '/dice_median')} | {f(r['dice_mean'])} | "
                     f"{f(r['iou_median'])}{interval(name + '/iou_median')} | {f(r['iou_mean'])} |")
    lines.append(f"| **all** | {segm['n_gt']} | {f(segm['ap'])} | {f(segm['ap50'])}{interval('ap50')} | {f(segm['ap75'])} | "
                 f"{segm['n_matched']} | {f(segm['dice_median'])}{interval('dice_median')} | {f(segm['dice_mean'])} | "
                 f"{f(segm['iou_median'])}{interval('iou_median')} | {f(segm['iou_mean'])} |")
    lines += ["", f"Masks: COCO segm AP by pycocotools; matched = a detection's mask with mask IoU >= {segm['match_iou']:g} "
              f"to a ground-truth mask of its class (segm AP50's true positives; Dice >= 2/3 by construction), recall "
              f"{f(segm['recall'])}; 95 % bootstrap intervals over images ({segm['bootstrap']} resamples)."]
    return "\n".join(lines)
