"""Dataset counts for ``cxr data info`` (JSON-ready dict) and their terminal table."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

from cxr.training.studies import Study


def _counts(studies: list[Study]) -> dict:
    boxes_per_class: Counter[str] = Counter()
    findings_per_class: Counter[str] = Counter()
    for s in studies:
        boxes_per_class.update(s.box_labels)
        findings_per_class.update(s.findings)
    return {
        "images": len(studies),
        "patients": len({s.patient_id for s in studies}),
        "boxes": sum(len(s.boxes) for s in studies),
        "images_with_boxes": sum(1 for s in studies if len(s.boxes)),
        "no_finding_images": sum(1 for s in studies if not s.findings and not len(s.boxes)),
        # findings but no boxes: counted, not trained on (see Study.detection_usable)
        "unboxed_finding_images": sum(1 for s in studies if s.findings and not len(s.boxes)),
        "detection_images": sum(1 for s in studies if s.detection_usable),
        "images_on_disk": sum(1 for s in studies if s.path is not None),
        # instance masks (Study.masks): boxes that have one, and the images they are on
        "masks": sum(s.masks.count for s in studies if s.masks is not None),
        "images_with_masks": sum(1 for s in studies if s.masks is not None and s.masks.count),
        "boxes_per_class": dict(sorted(boxes_per_class.items())),
        "findings_per_class": dict(sorted(findings_per_class.items())),
    }


def summarize(studies: Iterable[Study], splits: dict[str, list[Study]] | None = None) -> dict:
    """Counts over ``studies`` and, per split, images / patients / boxes.

    Keys: images, patients, boxes, boxes_per_class {name: n}, findings_per_class,
    images_with_boxes, no_finding_images, unboxed_finding_images, detection_images,
    images_on_disk, masks (boxes with an instance mask), images_with_masks,
    splits {name: {images, patients, boxes, detection_images}}.
    ``splits`` defaults to grouping by ``Study.split`` (studies without one are left out).
    """
    studies = list(studies)
    out = _counts(studies)
    if splits is None:
        splits = {}
        for s in studies:
            if s.split is not None:
                splits.setdefault(s.split, []).append(s)
    out["splits"] = {}
    for name, members in splits.items():
        c = _counts(members)
        out["splits"][name] = {k: c[k] for k in ("images", "patients", "boxes", "detection_images")}
    return out


def format_summary(summary: dict) -> str:
    """A plain-text table of a :func:`summarize` result for the terminal."""
    lines = []
    title = " ".join(str(summary[k]) for k in ("dataset", "labelset") if summary.get(k))
    if title:
        lines.append(f"dataset: {title}")
    rows = [
        ("images", summary["images"]),
        ("patients", summary["patients"]),
        ("images on disk", summary.get("images_on_disk")),
        ("boxes", summary["boxes"]),
        ("images with boxes", summary["images_with_boxes"]),
        ("no-finding images", summary["no_finding_images"]),
        ("findings, no boxes (not used for detection)", summary.get("unboxed_finding_images")),
        ("usable for detection", summary.get("detection_images")),
        ("boxes with instance masks", summary.get("masks")),
    ]
    width = max(len(name) for name, _ in rows)
    lines += [f"  {name:<{width}}  {value:>9,}" for name, value in rows if value is not None]

    per_class = summary.get("boxes_per_class") or {}
    if per_class:
        lines.append("")
        lines.append("boxes per class")
        width = max(len(n) for n in per_class)
        lines += [f"  {n:<{width}}  {v:>9,}" for n, v in per_class.items()]

    splits = summary.get("splits") or {}
    if splits:
        source = f" ({summary['split_source']})" if summary.get("split_source") else ""
        lines.append("")
        lines.append(f"splits{source}")
        cols = ("images", "patients", "boxes", "detection_images")
        header = ["split", "images", "patients", "boxes", "detection"]
        table = [header] + [[name] + [f"{split.get(c, 0):,}" for c in cols] for name, split in splits.items()]
        widths = [max(len(row[i]) for row in table) for i in range(len(header))]
        for row in table:
            lines.append("  " + "  ".join(
                cell.ljust(widths[i]) if i == 0 else cell.rjust(widths[i]) for i, cell in enumerate(row)
            ))
    return "\n".join(lines)
