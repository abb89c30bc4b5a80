"""Image-level metrics: one score per image and class (the maximum box score), one label
("has a box of the class"); AUROC by Mann-Whitney ranks and precision / recall / F1 /
accuracy at a threshold chosen for F1 on validation data."""

from __future__ import annotations

import math

import numpy as np

DEFAULT_THRESHOLD = 0.5  # used for a class that has no stored threshold


def rankdata(x: np.ndarray) -> np.ndarray:
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
    return float((rankdata(s)[y].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def binary_metrics(y: np.ndarray, s: np.ndarray, threshold: float) -> dict:
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


def best_f1_threshold(y: np.ndarray, s: np.ndarray) -> float:
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


def nanmean(x) -> float:
    """Mean ignoring undefined entries (NaN or None); NaN when none is defined."""
    x = np.array([math.nan if v is None else v for v in x], dtype=float)
    return float(np.nanmean(x)) if np.isfinite(x).any() else math.nan


def image_level_metrics(y: np.ndarray, s: np.ndarray, thr: np.ndarray) -> tuple[list[dict], float, float]:
    """Per-column binary metrics + AUROC, and the macro F1/AUROC over columns with positives."""
    rows = []
    for c in range(y.shape[1]):
        r = binary_metrics(y[:, c], s[:, c], thr[c]) | {"auroc": auroc(y[:, c], s[:, c])}
        rows.append(r | {"threshold": float(thr[c]), "n_pos": int(y[:, c].sum()), "n_neg": int((~y[:, c]).sum())})
    pos = [r for r in rows if r["n_pos"] > 0]
    return rows, nanmean([r["f1"] for r in pos]), nanmean([r["auroc"] for r in pos])
