"""Evaluation and training figures as PNG files.

matplotlib is imported inside each function and figures are drawn on a bare
``Figure`` with the Agg canvas: no pyplot, no global backend switch, no display
needed, and importing :mod:`cxr.training.plots` costs nothing until a plot is made.
Boxes are ``xyxy`` in the pixels of the image they are drawn on, and so are masks.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from cxr.boxes import caption_slot
from cxr.training.box_metrics import FROC_FP_RATES, FROC_IOU, DetectionTable, PreMatched, coco_ap, froc_points


def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png")
    return path


def precision_recall_curves(
    preds: Sequence[Mapping], gts: Sequence[Mapping], class_names: Sequence[str], *, iou: float = 0.5
) -> dict[str, tuple[np.ndarray, np.ndarray, float | None]]:
    """Per class ``(recall, interpolated precision, AP)`` at ``iou``, with the same
    matching as :func:`cxr.training.metrics.evaluate_detections` (AP ``None``: no GT)."""
    data = DetectionTable(preds, gts, class_names)
    fast = PreMatched(data, iou)
    out = {}
    for c, name in enumerate(data.class_names):
        t, n_gt = fast.tp[iou][fast.cls_order[c]], int(data.n_gt[:, c].sum())
        tps, fps = np.cumsum(t), np.cumsum(~t)
        # The envelope pycocotools integrates: best precision at this recall or higher.
        pr = np.maximum.accumulate((tps / np.maximum(tps + fps, 1))[::-1])[::-1]
        ap = coco_ap(t, n_gt)
        out[name] = (tps / max(n_gt, 1), pr, None if math.isnan(ap) else ap)
    return out


def froc_curve(
    preds: Sequence[Mapping], gts: Sequence[Mapping], class_names: Sequence[str], *, iou: float = FROC_IOU
) -> tuple[np.ndarray, np.ndarray]:
    """The whole FROC curve: (false positives per image, lesion sensitivity), one point per
    score threshold, starting at (0, 0)."""
    data = DetectionTable(preds, gts, class_names)
    fast = PreMatched(data, iou)
    fps, tps = froc_points(data.det_score, fast.tp[iou], data.det_img)
    return fps / data.n, tps / max(int(data.n_gt.sum()), 1)


def plot_pr_froc(
    preds: Sequence[Mapping],
    gts: Sequence[Mapping],
    class_names: Sequence[str],
    path: str | Path,
    *,
    iou: float = 0.5,
    froc_iou: float = FROC_IOU,
) -> Path:
    """Per-class precision-recall curves at ``iou`` (left) and the FROC curve (right)."""
    curves = precision_recall_curves(preds, gts, class_names, iou=iou)
    fp_rate, sens = froc_curve(preds, gts, class_names, iou=froc_iou)
    fig = _figure(13, 5.5)
    ax_pr, ax_froc = fig.subplots(1, 2)
    for name, (rc, pr, ap) in curves.items():
        if ap is None:  # no ground truth: no curve to draw
            continue
        ax_pr.step(np.r_[0.0, rc], np.r_[pr[0] if len(pr) else 0.0, pr], where="pre", label=f"{name} (AP {ap:.3f})")
    ax_pr.set(xlim=(0, 1.01), ylim=(0, 1.01), xlabel="recall", ylabel="precision",
              title=f"Precision-recall per class, IoU {iou:g}")
    ax_pr.grid(alpha=0.3)
    if ax_pr.lines:
        ax_pr.legend(fontsize=8, loc="upper right")
    else:
        ax_pr.text(0.5, 0.5, "no ground-truth boxes", ha="center", transform=ax_pr.transAxes)

    # Step curve with the standard operating points marked, as in the metrics table.
    lo, hi = FROC_FP_RATES[0] / 2, FROC_FP_RATES[-1] * 2
    x = np.clip(fp_rate, lo, None)
    ax_froc.step(np.r_[x, hi], np.r_[sens, sens[-1]], where="post", color="C0")
    at = np.searchsorted(fp_rate, FROC_FP_RATES, side="right") - 1
    ax_froc.plot(FROC_FP_RATES, sens[at], "o", color="C3", label=f"mean sensitivity {sens[at].mean():.3f}")
    for r, v in zip(FROC_FP_RATES, sens[at]):
        ax_froc.annotate(f"{v:.2f}", (r, v), textcoords="offset points", xytext=(0, 6), ha="center", fontsize=8)
    ax_froc.set_xscale("log", base=2)
    ax_froc.set_xticks(FROC_FP_RATES, [f"{r:g}" for r in FROC_FP_RATES])
    ax_froc.set(xlim=(lo, hi), ylim=(0, 1.05), xlabel="false positives per image",
                ylabel="lesion sensitivity", title=f"FROC, IoU {froc_iou:g}, {len(preds)} images")
    ax_froc.grid(alpha=0.3, which="both")
    ax_froc.legend(loc="lower right")
    return _save(fig, path)


def plot_loss_curve(history: Sequence[Mapping], path: str | Path) -> Path:
    """Training losses (and learning rate) per iteration; validation mAP per epoch.

    ``history`` rows look like ``{"epoch", "iteration", "loss", "loss_classifier", ...,
    "lr"}``; rows (or keys) holding a validation mAP (any key containing ``map``, e.g.
    ``"val_map50"``) add a second panel against the epoch.  Missing keys are skipped.
    """
    rows = list(history)
    x_key = "iteration" if any("iteration" in r for r in rows) else "epoch"
    loss_keys = sorted({k for r in rows for k in r if k.startswith("loss")}, key=lambda k: (k != "loss", k))
    map_keys = sorted({k for r in rows for k in r if "map" in k.lower()})
    fig = _figure(12 if map_keys else 7, 4.5)
    axes = fig.subplots(1, 2 if map_keys else 1, squeeze=False)[0]

    def series(key, x=x_key):
        pts = [(r[x], r[key]) for r in rows if x in r and r.get(key) is not None]
        return ([p[0] for p in pts], [p[1] for p in pts]) if pts else ([], [])

    ax = axes[0]
    for k in loss_keys:
        ax.plot(*series(k), label=k, linewidth=2.0 if k == "loss" else 1.0)
    ax.set(xlabel=x_key, ylabel="loss", title="Training loss")
    ax.grid(alpha=0.3)
    if loss_keys:
        ax.legend(fontsize=8, loc="upper right")
    lr = series("lr")
    if lr[0]:
        ax_lr = ax.twinx()  # lr on its own scale: warm-up and steps stay visible
        ax_lr.plot(*lr, color="grey", linestyle=":", label="lr")
        ax_lr.set_ylabel("learning rate", color="grey")
    if map_keys:
        ax_map = axes[1]
        for k in map_keys:
            ax_map.plot(*series(k, "epoch"), marker="o", label=k)
        ax_map.set(xlabel="epoch", ylabel="mAP", ylim=(0, 1), title="Validation")
        ax_map.grid(alpha=0.3)
        ax_map.legend(fontsize=8)
    return _save(fig, path)


def _mask_outline(ax, crop: np.ndarray, rect, **style) -> None:
    """The outline of one mask, a bool ``crop`` at ``rect`` ``(x0, y0, x1, y1)`` of the film: the
    0.5 contour of the crop padded by one empty pixel, so a mask touching its rectangle closes."""
    x0, y0, x1, y1 = (int(v) for v in rect)
    if crop.size and crop.any():
        ax.contour(np.arange(x0 - 1, x1 + 1), np.arange(y0 - 1, y1 + 1), np.pad(crop, 1).astype(np.float32),
                   levels=[0.5], **style)


def _gt_masks(g: Mapping):
    """A ground truth's masks (COCO RLEs, or a CroppedMasks) as CroppedMasks, or None without masks."""
    from cxr.masks import CroppedMasks
    from cxr.training.masks import decode_mask

    masks = g.get("masks")
    if masks is None or isinstance(masks, CroppedMasks) or not len(masks):
        return masks or None
    return CroppedMasks.from_masks(np.stack([decode_mask(rle) for rle in masks]))


def plot_examples(
    images: Sequence[np.ndarray],
    preds: Sequence[Mapping],
    gts: Sequence[Mapping],
    class_names: Sequence[str],
    path: str | Path,
    max_images: int = 8,
    *,
    min_score: float = 0.3,
    max_boxes: int = 10,
) -> Path:
    """A grid of radiographs: ground truth in green (dashed), predictions in orange.

    ``images`` are float ``[H, W]`` arrays in 0..1 and the boxes are in their pixels.
    Predictions below ``min_score`` are hidden and at most ``max_boxes`` (highest
    score first) are drawn per image, so a Faster R-CNN's low-score tail does not
    hide the picture.  Masks, where given (a prediction's ``"masks"``: CroppedMasks; a
    ground truth's: COCO RLEs or CroppedMasks), are drawn as outlines in the same colours.
    """
    from matplotlib.patches import Rectangle

    n = min(len(images), int(max_images))
    if n == 0:
        raise ValueError("plot_examples needs at least one image")
    cols = min(n, 4)
    rows = math.ceil(n / cols)
    panel = 5.0  # inches per film
    fig = _figure(panel * cols, (panel + 0.35) * rows)
    # Label text 1/30 of the panel high (12 pt, ~17 px), whatever the film's own pixel count: a
    # 1024 px film shown in a 500 px panel at 7 pt gave ~10 px text, unreadable at normal zoom.
    text_pt = panel * 72 / 30
    label_box = {"pad": 0.25, "edgecolor": "none", "boxstyle": "square"}
    axes = np.atleast_1d(fig.subplots(rows, cols, squeeze=False)).reshape(-1)

    def name(label) -> str:
        i = int(label)
        return class_names[i - 1] if 1 <= i <= len(class_names) else f"class {i}"

    for ax, img, p, g in zip(axes, images[:n], preds[:n], gts[:n]):
        ax.imshow(np.asarray(img, dtype=np.float32), cmap="gray", vmin=0.0, vmax=1.0)
        gt_masks = _gt_masks(g)
        for j in range(len(gt_masks) if gt_masks is not None else 0):
            _mask_outline(ax, gt_masks.crops[j], gt_masks.rects[j], colors="lime", linewidths=1.5, linestyles="dashed")
        for b, lab in zip(np.asarray(g["boxes"]).reshape(-1, 4), np.asarray(g["labels"]).reshape(-1)):
            ax.add_patch(Rectangle((b[0], b[1]), b[2] - b[0], b[3] - b[1], fill=False, edgecolor="lime", linestyle="--", linewidth=2))
            ax.text(b[0], b[3], name(lab), color="lime", fontsize=text_pt, va="top", clip_on=True,
                    bbox={**label_box, "facecolor": "black", "alpha": 0.75})
        scores = np.asarray(p["scores"]).reshape(-1)
        keep = [i for i in np.argsort(-scores, kind="stable") if scores[i] >= min_score][:max_boxes]
        boxes, labels = np.asarray(p["boxes"]).reshape(-1, 4), np.asarray(p["labels"]).reshape(-1)
        # Label boxes in the film's pixels (a panel is 100 dpi * panel inches wide): each label
        # moves up past those already placed, so several findings on one spot stay readable.
        px = max(np.asarray(img).shape) / (panel * 100)
        line = 1.6 * text_pt * 100 / 72 * px
        placed: list[tuple[float, float, float, float]] = []
        for i in keep:
            b = boxes[i]
            text = f"{name(labels[i])} {scores[i]:.2f}"
            y = caption_slot(float(b[0]), float(b[1]) - line, 0.62 * line * len(text), line, placed) + line  # its bottom
            ax.add_patch(Rectangle((b[0], b[1]), b[2] - b[0], b[3] - b[1], fill=False, edgecolor="orange", linewidth=2))
            if "masks" in p:
                _mask_outline(ax, p["masks"].crops[i], p["masks"].rects[i], colors="orange", linewidths=1.5)
            ax.text(b[0], y, text, color="black", fontsize=text_pt, va="bottom", clip_on=True,
                    bbox={**label_box, "facecolor": "orange", "alpha": 0.9})
        ax.set_title(f"{len(np.asarray(g['labels']).reshape(-1))} GT, {len(keep)} pred ≥ {min_score:g}", fontsize=text_pt)
        ax.set_axis_off()
    for ax in axes[n:]:
        ax.set_axis_off()
    masks = " (outlines: masks)" if any("masks" in p for p in preds[:n]) else ""
    fig.suptitle(f"ground truth: green dashed    prediction: orange (score){masks}", fontsize=text_pt * 1.2)
    return _save(fig, path)
