"""``cxr evaluate``: clinical detection metrics of a checkpoint on a data split.

Writes into OUT: ``metrics.json``, ``metrics.md`` (summary table),
``predictions.csv`` (image, label, score, x1, y1, x2, y2 in ORIGINAL pixels),
``loss_curve.png``, ``pr_froc.png`` and ``examples.png``.  A Mask R-CNN checkpoint (task
``segment``) adds ``metrics["segm"]`` (:mod:`cxr.training.seg_metrics`), its table in
``metrics.md``, ``segmentations.json`` (COCO results: one RLE per detection, image ids as in
:func:`cxr.training.coco.to_coco` of the split) and mask contours in ``examples.png``.
"""

from __future__ import annotations

import csv
import json
import logging
from pathlib import Path

import torch

from cxr.errors import InvalidFileError
from cxr.labels import annotation_labelset

log = logging.getLogger(__name__)


def write_predictions_csv(path: Path, studies, preds, class_names) -> None:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["image", "label", "score", "x1", "y1", "x2", "y2"])
        for s, p in zip(studies, preds):
            for box, score, label in zip(p["boxes"], p["scores"], p["labels"]):
                w.writerow([s.image_id, class_names[int(label) - 1], f"{score:.5f}", *(f"{v:.1f}" for v in box)])


def evaluate_checkpoint(
    checkpoint: str | Path,
    data: str | Path,
    out: str | Path,
    *,
    split: str = "test",
    batch_size: int = 4,
    bootstrap: int = 200,
    device: str = "auto",
    progress: bool = True,
    max_images: int | None = None,
    saliency=None,
) -> dict:
    """Evaluate ``checkpoint`` on ``split`` of the NIH-layout folder ``data``; returns the metrics.

    saliency: a :class:`cxr.training.faithfulness.FaithfulnessConfig` adds ``metrics["saliency"]``."""
    from torch.utils.data import DataLoader

    from cxr.decode.image import decode_image
    from cxr.training.checkpoint import load_checkpoint
    from cxr.training.torch_dataset import DetectionDataset, collate
    from cxr.training.annotations import NIHDataset
    from cxr.training.duplicates import duplicate_rate
    from cxr.training.engine import ground_truth, predict
    from cxr.training.metrics import evaluate_detections, format_metrics_table
    from cxr.training.plots import plot_examples, plot_loss_curve, plot_pr_froc
    from cxr.training.seg_metrics import evaluate_masks, format_segm_table

    ckpt = load_checkpoint(checkpoint)
    labelset = ckpt.labelset
    seed = int(ckpt.meta.get("train_config", {}).get("seed", 0))
    ds = NIHDataset.from_dir(data, labelset=annotation_labelset(labelset.name), seed=seed, require_images=True)
    studies = ds.detection_studies(None if split == "all" else split)[:max_images]
    if not studies:
        raise InvalidFileError(f"{data}: split {split!r} has no studies usable for detection")
    segment = ckpt.model_config.task == "segment"
    if segment:
        _require_masks(studies, data)
    dev = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device)
    model = ckpt.build_model().to(dev)
    dataset = DetectionDataset(studies, labelset, ckpt.preprocess)
    loader = DataLoader(dataset, batch_size=batch_size, collate_fn=collate)
    preds = predict(model, loader, dev, postprocess_config=ckpt.postprocess, progress=progress, desc=f"evaluate {split}")
    gts = ground_truth(studies, labelset, masks=segment)
    metrics = evaluate_detections(
        preds, gts, labelset.names, image_ids=[s.image_id for s in studies],
        thresholds=ckpt.meta.get("thresholds") or None, bootstrap=bootstrap,
    )
    metrics.update(split=split, checkpoint=str(checkpoint), model_version=ckpt.model_version,
                   duplicates=duplicate_rate(preds, gts, labelset.names), task=ckpt.model_config.task)
    if segment:
        metrics["segm"] = evaluate_masks(preds, gts, labelset.names, bootstrap=bootstrap)
    if saliency is not None:  # the served D-RISE maps against the true regions (training/faithfulness.py)
        from cxr.training.faithfulness_report import evaluate_saliency, format_saliency_section

        metrics["saliency"] = evaluate_saliency(ckpt, studies, saliency, progress=progress)

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    (out / "metrics.md").write_text(
        f"# Evaluation of {Path(checkpoint).name} on {split} ({len(studies)} images)\n\n{format_metrics_table(metrics)}\n"
        f"{format_duplicates(metrics['duplicates'])}\n"
        + (f"\n## Instance masks\n\n{format_segm_table(metrics['segm'])}\n" if segment else "")
        + (format_saliency_section(metrics["saliency"]) if saliency is not None else "")
    )
    write_predictions_csv(out / "predictions.csv", studies, preds, labelset.names)
    if segment:
        write_segmentations(out / "segmentations.json", preds)
    history = ckpt.meta.get("history") or []
    if history:
        plot_loss_curve(history, out / "loss_curve.png")
    plot_pr_froc(preds, gts, labelset.names, out / "pr_froc.png")
    # The example grid shows the films in ORIGINAL pixels, as the boxes are.
    shown = example_indices(studies)
    films = [decode_image(studies[i].path).pixels for i in shown]
    plot_examples(films, [preds[i] for i in shown], [gts[i] for i in shown], labelset.names, out / "examples.png")
    return metrics


def _require_masks(studies, data) -> None:
    """A mask model is scored against masks: every box of the split needs one."""
    unmasked = [s.image_id for s in studies if len(s.boxes) and (s.masks is None or s.masks.count < len(s.boxes))]
    if unmasked:
        raise InvalidFileError(
            f"{data}: {len(unmasked)} studies of the split have boxes without instance masks (e.g. {unmasked[:3]}); a "
            "segment checkpoint is scored against masks: put masks.json beside the data (`cxr data info` counts them)")


def write_segmentations(path: Path, preds) -> None:
    """COCO results of the predicted masks: ``{image_id, category_id, score, bbox [x, y, w, h],
    segmentation (compressed RLE)}`` per detection, ORIGINAL pixels, image ids ``1..N`` in split order."""
    from cxr.boxes import xyxy_to_xywh
    from cxr.training.seg_metrics import masks_to_rles

    rows = [{"image_id": i, "category_id": int(lab), "score": round(float(score), 5),
             "bbox": [round(float(v), 2) for v in box], "segmentation": rle}
            for i, p in enumerate(preds, start=1)
            for box, score, lab, rle in zip(xyxy_to_xywh(p["boxes"]), p["scores"], p["labels"], masks_to_rles(p["masks"]))]
    path.write_text(json.dumps(rows, separators=(",", ":")) + "\n")


def example_indices(studies, n: int = 8) -> list[int]:
    """Which studies examples.png shows: the first without findings, one for each finding
    class of the split (in split order, chosen by the ground truth only), then the next
    ones in order -- so the grid shows nodules and masses when the split has them,
    not just whichever classes its first films happen to carry."""
    normal = next((i for i, s in enumerate(studies) if not len(s.box_labels)), None)
    chosen, seen = ([] if normal is None else [normal]), set()  # a film without findings shows false positives
    for i, s in enumerate(studies):
        new = set(s.box_labels) - seen
        if new and len(chosen) < n:
            chosen.append(i)
            seen |= new
    chosen += [i for i in range(len(studies)) if i not in chosen][: n - len(chosen)]
    return sorted(chosen)


def format_duplicates(d: dict) -> str:
    """One line: the duplicate rate at the operating score, with recall there beside it."""
    rate = "–" if d["rate"] is None else f"{100 * d['rate']:.1f} %"
    recall = "–" if d["recall"] is None else f"{100 * d['recall']:.1f} %"
    worst = sorted(((v["duplicated"], k) for k, v in d["per_class"].items() if v["duplicated"]), reverse=True)[:3]
    where = f" (most: {', '.join(f'{k} {n}' for n, k in worst)})" if worst else ""
    return (f"Duplicate rate at score >= {d['score']:g}: {rate} of detected findings carry 2+ boxes of their class "
            f"({d['duplicated']} of {d['detected']}){where}; recall there {recall} ({d['detected']} of {d['n_gt']}).")
