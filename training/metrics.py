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

Box matching, AP and FROC live in :mod:`cxr.training.box_metrics`, the image-level
figures in :mod:`cxr.training.image_metrics`; this module puts them together.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

from cxr.training.box_metrics import FROC_FP_RATES, FROC_IOU, VINDR_IOU, DetectionTable, PreMatched, coco_eval
from cxr.training.image_metrics import DEFAULT_THRESHOLD, auroc, best_f1_threshold, image_level_metrics, nanmean

__all__ = ["ANY_FINDING", "DEFAULT_THRESHOLD", "FROC_FP_RATES", "FROC_IOU", "VINDR_IOU", "auroc", "choose_thresholds",
           "evaluate_detections", "format_metrics_table"]

ANY_FINDING = "any_finding"  # key of the abnormal-vs-normal entry and its threshold


def choose_thresholds(preds: Sequence[Mapping], gts: Sequence[Mapping], class_names: Sequence[str]) -> dict[str, float]:
    """Per-class image-level thresholds that maximise F1 on (validation) data.

    Returns ``{class_name: threshold, ..., "any_finding": threshold}``; the caller
    stores it in the checkpoint and passes it to :func:`evaluate_detections` on the
    test split.  A class without positives gets :data:`DEFAULT_THRESHOLD`.
    """
    data = DetectionTable(preds, gts, class_names)
    out = {name: best_f1_threshold(data.img_label[:, c], data.img_score[:, c]) for c, name in enumerate(data.class_names)}
    out[ANY_FINDING] = best_f1_threshold(data.img_label.any(1), data.img_score.max(1))
    return out


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
    data = DetectionTable(preds, gts, class_names, image_ids)
    names, thresholds = data.class_names, dict(thresholds or {})
    unknown = sorted(set(thresholds) - set(names) - {ANY_FINDING})
    if unknown:
        raise ValueError(f"thresholds for unknown classes {unknown}; valid keys are {names + [ANY_FINDING]}")
    thr = np.array([float(thresholds.get(n, DEFAULT_THRESHOLD)) for n in names + [ANY_FINDING]])

    coco = coco_eval(data)  # rows: 0.4, 0.5, 0.55, ..., 0.95
    ap40, ap50, ap50_95 = coco[0], coco[1], coco[1:].mean(axis=0)  # NaN stays NaN: no GT
    fast = PreMatched(data, froc_iou)
    froc = fast.froc()

    # Column K is "any finding": abnormal image vs normal, score = max over all boxes.
    y = np.column_stack([data.img_label, data.img_label.any(1)])
    s = np.column_stack([data.img_score, data.img_score.max(1)])
    rows, f1, auc = image_level_metrics(y[:, :-1], s[:, :-1], thr[:-1])
    any_row = image_level_metrics(y[:, -1:], s[:, -1:], thr[-1:])[0][0]
    pos_rows = [r for r in rows if r["n_pos"] > 0]
    image_level = {key: nanmean([r[key] for r in pos_rows]) for key in ("precision", "recall", "accuracy")}
    image_level |= {"f1": f1, "auroc": auc, "per_class": dict(zip(names, rows)), ANY_FINDING: any_row}

    per_class = {
        n: {"ap50": ap50[c], "ap40": ap40[c], "ap50_95": ap50_95[c], "n_gt": int(data.n_gt[:, c].sum()),
            **{k: rows[c][k] for k in ("auroc", "precision", "recall", "f1", "threshold")}}
        for c, n in enumerate(names)
    }
    out = {
        "n_images": data.n,
        "n_gt": int(data.n_gt.sum()),
        "map50": nanmean(ap50),
        "map40": nanmean(ap40),
        "map50_95": nanmean(ap50_95),
        "froc": {f"{r:g}": v for r, v in zip(FROC_FP_RATES, froc)},
        "froc_mean": nanmean(froc) if np.isfinite(froc).all() else math.nan,
        "froc_iou": froc_iou,
        "per_class": per_class,
        "image_level": image_level,
        "ci": _bootstrap(fast, y, s, thr, bootstrap, seed) if bootstrap > 0 else {},
        "bootstrap": int(bootstrap),
    }
    return _clean(out)


def _bootstrap(fast: PreMatched, y: np.ndarray, s: np.ndarray, thr: np.ndarray, n_boot: int, seed: int) -> dict:
    """95% percentile intervals from ``n_boot`` image resamples (undefined draws skipped)."""
    n = fast.data.n
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n, size=(n_boot, n))
    counts = np.zeros((n_boot, n))
    np.add.at(counts, (np.repeat(np.arange(n_boot), n), idx.reshape(-1)), 1.0)
    draws: dict[str, list[float]] = {k: [] for k in ("map50", "map40", "froc_mean", "image_f1", "image_auroc", "any_finding_auroc")}
    for b in range(n_boot):
        w, i = counts[b], idx[b]
        draws["map50"].append(nanmean(fast.ap(0.5, w)))
        draws["map40"].append(nanmean(fast.ap(VINDR_IOU, w)))
        draws["froc_mean"].append(float(np.mean(fast.froc(w))))
        _, f1, auc = image_level_metrics(y[i, :-1], s[i, :-1], thr[:-1])
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
