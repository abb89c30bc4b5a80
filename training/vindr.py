"""VinDr-CXR (Kaggle ``train.csv``): three readers per image, fused with weighted boxes fusion.

``image_id,class_name,class_id,rad_id,x_min,y_min,x_max,y_max``; class 14 "No finding"
has empty coordinates.  Coordinates are in the ORIGINAL image pixels (DICOMs up to
about 3000 x 3400) and so are the fused boxes returned here (xyxy float32).
"""

from __future__ import annotations

import warnings
from collections import defaultdict
from pathlib import Path

import numpy as np

from cxr.errors import InvalidFileError
from cxr.labels import VINDR_NO_FINDING, LabelSetName, get_labelset
from cxr.training.studies import Study, read_csv_rows

_COLUMNS = ("image_id", "class_name", "class_id", "rad_id", "x_min", "y_min", "x_max", "y_max")


def fuse_readers(
    reader_boxes: dict[str, list[tuple[int, list[float]]]],
    *,
    size: tuple[float, float] | None = None,
    iou_thr: float = 0.4,
    skip_box_thr: float = 0.0,
) -> tuple[np.ndarray, np.ndarray]:
    """Fuse readers' boxes of one image with weighted boxes fusion, class by class.

    ``reader_boxes`` maps a reader id to ``[(class_index, [x1, y1, x2, y2]), ...]`` in
    ORIGINAL pixels.  Each reader is one "model" of equal weight and every box has
    score 1, so a fused box is the plain mean of its cluster.  Returns (boxes float32
    ``[N, 4]`` xyxy in ORIGINAL pixels, class indices int64 ``[N]``), sorted by class
    then position so the result does not depend on reader order.

    WBF wants coordinates in [0, 1] and clips anything outside.  Each axis is divided
    by ``max(image size, largest coordinate)``: IoU is invariant to per-axis scaling
    and the fused mean is linear, so scaling back is exact even without a known size.
    """
    from ensemble_boxes import weighted_boxes_fusion  # the [train] extra, not the core

    if not any(reader_boxes.values()):  # "No finding" from every reader: 10,606 of 15,000
        return np.zeros((0, 4), np.float32), np.zeros((0,), np.int64)
    coords = np.array([b for boxes in reader_boxes.values() for _, b in boxes], dtype=np.float64)
    width, height = size if size is not None else (0.0, 0.0)
    sx = max(float(width), float(coords[:, [0, 2]].max()), 1.0)
    sy = max(float(height), float(coords[:, [1, 3]].max()), 1.0)
    scale = np.array([sx, sy, sx, sy])
    boxes_list, scores_list, labels_list = [], [], []
    for rad_id in sorted(reader_boxes):
        items = reader_boxes[rad_id]
        boxes_list.append((np.array([b for _, b in items], dtype=np.float64) / scale).reshape(-1, 4))
        scores_list.append(np.ones(len(items)))
        labels_list.append(np.array([c for c, _ in items], dtype=np.int64))
    with warnings.catch_warnings():
        # ensemble_boxes warns about zero-area boxes and drops them (a degenerate box
        # carries no location, dropping it is what we want) and clips negative
        # coordinates to 0 (the image edge); neither needs a warning per image.
        warnings.simplefilter("ignore", UserWarning)
        fused, _, fused_labels = weighted_boxes_fusion(
            boxes_list, scores_list, labels_list, iou_thr=iou_thr, skip_box_thr=skip_box_thr
        )
    fused = (np.asarray(fused, dtype=np.float64).reshape(-1, 4) * scale).astype(np.float32)
    fused_labels = np.asarray(fused_labels).astype(np.int64)
    order = np.lexsort((fused[:, 3], fused[:, 2], fused[:, 1], fused[:, 0], fused_labels))
    return fused[order], fused_labels[order]


def read_vindr(
    csv_path: str | Path,
    *,
    image_sizes: dict[str, tuple[int, int]] | None = None,
    iou_thr: float = 0.4,
    skip_box_thr: float = 0.0,
) -> list[Study]:
    """VinDr-CXR ``train.csv(.gz)`` as one :class:`Study` per image, readers fused.

    ``image_sizes[image_id] = (width, height)`` fills ``Study.width/height`` and
    normalises boxes for WBF; without it boxes are still exact (see
    :func:`fuse_readers`).  Boxes are xyxy float32 in ORIGINAL pixels, labels are
    the "vindr" label set's names.  A "No finding" image gets zero boxes and
    ``findings == ()``.  The CSV has no patient ids, so ``patient_id`` is the
    image id (one image per patient in the Kaggle release).
    """
    labels = get_labelset(LabelSetName.VINDR)
    rows = read_csv_rows(csv_path)
    header = [h.strip().lower() for h in next(rows, [])]
    missing = [c for c in _COLUMNS if c not in header]
    if missing:
        raise InvalidFileError(
            f"{csv_path}: not a VinDr-CXR train.csv: header {','.join(header)!r} lacks {missing}; "
            f"expected {','.join(_COLUMNS)!r}"
        )
    col = {c: header.index(c) for c in _COLUMNS}
    need = max(col.values()) + 1
    # image_id -> rad_id -> [(class index 0..13, box)]; insertion order keeps file order.
    per_image: dict[str, dict[str, list[tuple[int, list[float]]]]] = defaultdict(lambda: defaultdict(list))
    class_index: dict[str, int] = {}
    for line, row in enumerate(rows, start=2):
        if not any(cell.strip() for cell in row):
            continue
        if len(row) < need:
            raise InvalidFileError(f"{csv_path} line {line}: {len(row)} fields, expected {need}: {row!r}")
        image_id, rad_id = row[col["image_id"]].strip(), row[col["rad_id"]].strip()
        readers = per_image[image_id]
        name = row[col["class_name"]].strip()
        if name.casefold() == VINDR_NO_FINDING.casefold():
            readers.setdefault(rad_id, [])  # registers the reader, adds no box
            continue
        try:
            box = [float(row[col[c]]) for c in ("x_min", "y_min", "x_max", "y_max")]
        except ValueError as exc:
            raise InvalidFileError(
                f"{csv_path} line {line}: {name!r} needs 4 coordinates, got {[row[col[c]] for c in _COLUMNS[4:]]!r}"
            ) from exc
        if name not in class_index:  # 14 names over 36k rows: canonicalise each once
            class_index[name] = labels.class_id(name) - 1
        readers[rad_id].append((class_index[name], box))

    studies = []
    for image_id, readers in per_image.items():
        size = image_sizes.get(image_id) if image_sizes else None
        boxes, classes = fuse_readers(readers, size=size, iou_thr=iou_thr, skip_box_thr=skip_box_thr)
        box_labels = tuple(labels.names[c] for c in classes)
        present = set(box_labels)
        studies.append(Study(
            image_id=image_id,
            path=None,
            patient_id=image_id,
            findings=tuple(n for n in labels.names if n in present),
            boxes=boxes,
            box_labels=box_labels,
            width=None if size is None else int(size[0]),
            height=None if size is None else int(size[1]),
        ))
    return studies
