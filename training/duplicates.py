"""One box per finding: how often a true finding carries two or more boxes of its class.

A radiologist reading our output sees every box at or above the operating score (the
``--min-score`` of ``cxr predict``, 0.3 by default; the GSPS and the annotated PNG show the
same).  A finding drawn three times (one heart boxed at 0.98, 0.59 and 0.32) is read as
three findings or as noise.  Per-class NMS at IoU 0.5 does not remove nested boxes of
different size, whose IoU is below 0.5 although one lies inside the other.

A detection is *on* a true finding when it has the finding's class, scores at or above
the operating threshold and overlaps it with IoU >= ``overlap`` (0.3, looser than the AP
match: duplicates are the boxes that miss the exact extent).  The duplicate rate is the
share of true findings with two or more detections on them, among the true findings with
at least one (the detected ones); recall at the operating threshold is reported beside
it so that a lower rate is never bought with missed findings.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from cxr.boxes import box_iou

OPERATING_SCORE = 0.3  # cxr predict's --min-score default: what the radiologist is shown
DUPLICATE_OVERLAP = 0.3


def duplicate_rate(preds: Sequence[Mapping], gts: Sequence[Mapping], class_names: Sequence[str], *,
                   score: float = OPERATING_SCORE, overlap: float = DUPLICATE_OVERLAP) -> dict:
    """``{"rate", "duplicated", "detected", "n_gt", "recall", "per_class": {name: {...}}}`` over all images.

    preds/gts as :func:`cxr.training.metrics.evaluate_detections` takes them (ORIGINAL
    pixels, 1-based labels).  rate is None when no finding was detected.
    """
    k = len(class_names)
    dup, det, n = np.zeros(k, int), np.zeros(k, int), np.zeros(k, int)
    for p, g in zip(preds, gts):
        keep = np.asarray(p["scores"]) >= score
        pb, pl = np.asarray(p["boxes"], np.float32).reshape(-1, 4)[keep], np.asarray(p["labels"])[keep]
        gb, gl = np.asarray(g["boxes"], np.float32).reshape(-1, 4), np.asarray(g["labels"])
        for box, label in zip(gb, gl):
            c = int(label) - 1
            n[c] += 1
            same = pb[pl == label]
            on = int((box_iou(box[None], same)[0] >= overlap).sum()) if len(same) else 0
            det[c] += on >= 1
            dup[c] += on >= 2

    def row(d: int, t: int, total: int) -> dict:
        return {"rate": d / t if t else None, "duplicated": int(d), "detected": int(t), "n_gt": int(total),
                "recall": t / total if total else None}

    out = row(int(dup.sum()), int(det.sum()), int(n.sum()))
    out.update(score=score, overlap=overlap,
               per_class={name: row(int(dup[c]), int(det[c]), int(n[c])) for c, name in enumerate(class_names)})
    return out
