"""CheXlocalize (Saporta et al., Nature Machine Intelligence 2022) masks, as released.

Two JSON files per split, both keyed by CheXpert image id (``patient64541_study1_
view1_frontal``), in the ORIGINAL pixel grid of that image:

- ``gt_segmentations_{val,test}.json`` (and the saliency segmentation files of the same
  shape): ``{cxr_id: {pathology: {"size": [h, w], "counts": str}}}``, COCO compressed
  RLE written by pycocotools.  Every image lists every one of its ten pathologies; an
  absent one is an all-zero mask.  One mask per image and pathology: instances merged.
- ``gt_annotations_{val,test}.json``: the radiologists' contours, ``{cxr_id:
  {"img_size": [h, w], pathology: [[[x, y], ...], ...]}}``, one contour per instance
  (x right, y down, pixels).  :func:`read_chexlocalize_annotations` rasterises each
  contour on its own, so the instances stay apart.

Pathology names are kept as the file writes them ("Airspace Opacity" in the val set,
"Lung Opacity" in the paper); map them to a label set as needed.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from cxr.errors import InvalidFileError
from cxr.training.masks import encode_mask, uncompressed_counts


def _load(path: Path) -> dict:
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InvalidFileError(f"{path}: not a readable CheXlocalize JSON file ({exc})") from exc
    if not isinstance(data, dict):
        raise InvalidFileError(f"{path}: a CheXlocalize file maps image ids to their masks, got a {type(data).__name__}")
    return data


def read_chexlocalize_segmentations(path: str | Path, *, keep_empty: bool = False) -> dict[str, dict[str, dict]]:
    """``{cxr_id: {pathology: COCO RLE}}`` from a CheXlocalize segmentation JSON.

    All-zero masks (the way the file says "not present") are dropped unless
    ``keep_empty``; an image whose pathologies are all absent maps to ``{}``.  Each RLE
    is checked (size ``[h, w]``, counts covering exactly ``h * w`` pixels, one size per
    image), so a damaged file fails here, naming the image and pathology."""
    path = Path(path)
    out: dict[str, dict[str, dict]] = {}
    for cxr_id, per_pathology in _load(path).items():
        if not isinstance(per_pathology, dict):
            raise InvalidFileError(f"{path}: {cxr_id} must map pathology names to RLE masks, "
                                   f"got a {type(per_pathology).__name__}")
        kept: dict[str, dict] = {}
        sizes = set()
        for pathology, rle in per_pathology.items():
            where = f"{path}: {cxr_id} {pathology}"
            counts = uncompressed_counts(rle, where=where)  # validates size and counts
            sizes.add(tuple(rle["size"]))
            if keep_empty or sum(counts[1::2]):
                kept[pathology] = {"size": list(rle["size"]), "counts": rle["counts"]}
        if len(sizes) > 1:
            raise InvalidFileError(f"{path}: {cxr_id} has masks of several sizes {sorted(sizes)}; one image, one grid")
        out[cxr_id] = kept
    return out


def contour_mask(contour, height: int, width: int, *, where: str = "contour") -> np.ndarray:
    """Bool ``[height, width]``: one polygon ``[[x, y], ...]`` filled, outline included,
    as CheXlocalize's own ``annotation_to_segmentation.py`` draws it (PIL, mode '1')."""
    points = np.asarray(contour, dtype=np.float64) if isinstance(contour, list) else None
    if points is None or points.ndim != 2 or points.shape[1] != 2 or len(points) < 3 or not np.isfinite(points).all():
        raise InvalidFileError(f"{where}: a contour is a list of at least 3 [x, y] points, got {str(contour)[:80]!r}")
    canvas = Image.new("1", (width, height))
    ImageDraw.Draw(canvas).polygon([tuple(p) for p in points.tolist()], outline=1, fill=1)
    return np.asarray(canvas, dtype=bool)


def read_chexlocalize_annotations(path: str | Path) -> dict[str, list[tuple[str, dict]]]:
    """``{cxr_id: [(pathology, COCO RLE of one instance), ...]}`` from a CheXlocalize
    annotation JSON: each contour rasterised alone at the image's ``img_size``."""
    path = Path(path)
    out: dict[str, list[tuple[str, dict]]] = {}
    for cxr_id, entry in _load(path).items():
        size = entry.get("img_size") if isinstance(entry, dict) else None
        if not (isinstance(size, list) and len(size) == 2 and all(isinstance(v, int) and v > 0 for v in size)):
            raise InvalidFileError(f"{path}: {cxr_id} needs 'img_size' [h, w] (two positive integers), got {size!r}")
        h, w = size
        instances = []
        for pathology, contours in entry.items():
            if pathology == "img_size":
                continue
            if not isinstance(contours, list):
                raise InvalidFileError(f"{path}: {cxr_id} {pathology} must be a list of contours, got {contours!r:.60}")
            for k, contour in enumerate(contours):
                mask = contour_mask(contour, h, w, where=f"{path}: {cxr_id} {pathology} contour {k}")
                instances.append((pathology, encode_mask(mask)))
        out[cxr_id] = instances
    return out
