"""Instance masks: COCO RLE, the per-box masks of a :class:`~cxr.training.studies.Study`,
and the masks file that sits beside a dataset.

Frame: a mask is bool ``[H, W]`` in the ORIGINAL pixel grid of its image file (the grid
of the study's boxes); ``H, W`` are the file's rows and columns.

Encoding: COCO *compressed* RLE, ``{"size": [H, W], "counts": str}``, of the mask read
column-major (Fortran order), exactly what ``pycocotools.mask.encode`` writes for
``np.asfortranarray(mask.astype(np.uint8))`` with ``counts`` decoded to ASCII.  This
module is the one place that calls pycocotools' mask API, and only to encode or decode
pixels: reading, checking and counting masks (``cxr data info``) parse the RLE here and
need no pycocotools.

``OUT/masks.json`` (:data:`MASKS_FILE`, written by ``cxr synth``) is a COCO instance
segmentation file: ``images`` are the dataset's image files (``file_name`` = the NIH
``Image Index``; ``width``/``height`` their pixel grid; ``dicom_file_name`` where a
DICOM copy with the same pixel grid exists), ``annotations`` carry ``bbox`` (``[x, y,
w, h]``, the very box of ``BBox_List_2017.csv``), ``category_id`` (the ``nih-bbox``
label set's class id), ``segmentation`` (the RLE above) and ``area`` (mask pixels).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, replace
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING

import numpy as np

from cxr.errors import InvalidFileError, UsageError

if TYPE_CHECKING:  # studies.py imports this module (Study.masks)
    from cxr.training.studies import Study

MASKS_FILE = "masks.json"


def _mask_api() -> ModuleType:
    try:
        import pycocotools.mask as mask_api
    except ImportError as exc:
        raise UsageError(
            "instance masks are COCO RLE and need pycocotools, which is not installed; "
            "install the training extra: pip install 'cxr-triton[train]'"
        ) from exc
    return mask_api


def encode_mask(mask: np.ndarray) -> dict:
    """COCO compressed RLE of a bool (or 0/1) ``[H, W]`` mask: ``{"size": [H, W], "counts": str}``."""
    m = np.asarray(mask)
    if m.ndim != 2 or m.size == 0:
        raise ValueError(f"a mask is a non-empty 2-D [H, W] array, got shape {m.shape}")
    if m.dtype != bool and not np.isin(m, (0, 1)).all():
        raise ValueError(f"a mask holds booleans or 0/1, got dtype {m.dtype} with values {np.unique(m)[:5]}")
    rle = _mask_api().encode(np.asfortranarray(m.astype(np.uint8)))
    return {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")}


def rle_counts(counts: str | bytes, *, where: str = "mask") -> list[int]:
    """The run lengths that a compressed COCO RLE string holds (0-runs first, column-major).

    The string is read as pycocotools' ``rleFrString`` reads it (6-bit groups from '0',
    each count after the third stored as the difference to the count two before).  It is
    parsed here because pycocotools does not check it: a truncated string decodes to
    whatever memory held, with no error."""
    text = counts.decode("ascii", errors="replace") if isinstance(counts, bytes) else counts
    out: list[int] = []
    value = shift = 0
    for p, ch in enumerate(text):
        c = ord(ch) - 48
        if not 0 <= c < 64:
            raise InvalidFileError(f"{where}: RLE counts hold {ch!r} at {p}; compressed COCO RLE uses '0'..'o' only")
        value |= (c & 0x1F) << shift
        shift += 5
        if c & 0x20:
            continue
        if c & 0x10:  # the group's sign bit
            value -= 1 << shift
        if len(out) > 2:
            value += out[-2]
        if value < 0:
            raise InvalidFileError(f"{where}: RLE counts decode to a negative run ({value}) at {p}; the string is damaged")
        out.append(value)
        value = shift = 0
    if shift:
        raise InvalidFileError(f"{where}: RLE counts end in the middle of a number; the string is truncated")
    return out


def uncompressed_counts(rle: dict, *, where: str = "mask") -> list[int]:
    """The run lengths of a COCO RLE (compressed string or uncompressed list of
    ``counts``), checked: ``size`` is ``[H, W]`` and the runs cover exactly ``H * W``."""
    if not isinstance(rle, dict) or "size" not in rle or "counts" not in rle:
        raise InvalidFileError(f"{where}: an RLE is a dict with 'size' [H, W] and 'counts', got {str(rle)[:80]!r}")
    size, counts = rle["size"], rle["counts"]
    if not (isinstance(size, (list, tuple)) and len(size) == 2 and all(isinstance(v, int) and v > 0 for v in size)):
        raise InvalidFileError(f"{where}: RLE 'size' must be [H, W], two positive integers, got {size!r}")
    h, w = size
    if isinstance(counts, list):
        if not all(isinstance(v, int) and v >= 0 for v in counts) or sum(counts) != h * w:
            raise InvalidFileError(
                f"{where}: uncompressed RLE counts must be non-negative integers summing to "
                f"H*W = {h * w}, got {len(counts)} counts summing to {sum(v for v in counts if isinstance(v, int))}"
            )
        return list(counts)
    if not isinstance(counts, (str, bytes)):
        raise InvalidFileError(f"{where}: RLE 'counts' must be a string or a list of integers, got {type(counts).__name__}")
    runs = rle_counts(counts, where=where)
    if sum(runs) != h * w:
        raise InvalidFileError(f"{where}: RLE counts cover {sum(runs)} pixels, its size {h}x{w} has {h * w}; "
                               "the string is damaged or belongs to another size")
    return runs


def _api_rle(rle: dict, where: str) -> dict:
    """``rle`` checked and made what pycocotools takes: compressed counts as bytes."""
    uncompressed_counts(rle, where=where)
    h, w = rle["size"]
    if isinstance(rle["counts"], list):
        return _mask_api().frPyObjects({"size": [h, w], "counts": list(rle["counts"])}, h, w)
    counts = rle["counts"]
    return {"size": [h, w], "counts": counts.encode("ascii") if isinstance(counts, str) else counts}


def rle_from_counts(counts: list[int], height: int, width: int, *, where: str = "mask") -> dict:
    """COCO compressed RLE of run lengths (0-run first, column-major, summing to H*W)."""
    rle = _api_rle({"size": [height, width], "counts": [int(c) for c in counts]}, where)
    return {"size": [height, width], "counts": rle["counts"].decode("ascii")}


def decode_mask(rle: dict, *, where: str = "mask") -> np.ndarray:
    """Bool ``[H, W]`` mask of a COCO RLE (compressed, or uncompressed ``counts`` list).

    A malformed RLE raises :class:`~cxr.errors.InvalidFileError` naming ``where``."""
    api_rle = _api_rle(rle, where)
    try:
        mask = _mask_api().decode(api_rle)
    except ValueError as exc:
        raise InvalidFileError(
            f"{where}: not a valid COCO RLE for size {api_rle['size']} (counts {str(rle['counts'])[:40]!r}…): {exc}"
        ) from exc
    return mask.astype(bool)


def rle_area(rle: dict, *, where: str = "mask") -> int:
    """Number of pixels set in a COCO RLE mask (without decoding it)."""
    return sum(uncompressed_counts(rle, where=where)[1::2])


@dataclass(frozen=True)
class InstanceMasks:
    """The instance masks of one study's boxes, kept as COCO RLE and decoded on demand.

    ``rles[i]`` is the mask of ``Study.boxes[i]`` (``None``: that box has no mask);
    every RLE has size ``[height, width]``, the study's pixel grid.  Nothing is cached:
    a dataset of thousands of studies keeps only its short RLE strings in memory.
    """

    rles: tuple[dict | None, ...]
    height: int
    width: int

    def __post_init__(self) -> None:
        for i, rle in enumerate(self.rles):
            if rle is not None and list(rle.get("size", ())) != [self.height, self.width]:
                raise ValueError(f"mask {i} has size {rle.get('size')!r}, the study's grid is [{self.height}, {self.width}]")

    def __len__(self) -> int:
        return len(self.rles)

    @property
    def count(self) -> int:
        """How many boxes have a mask."""
        return sum(rle is not None for rle in self.rles)

    def mask(self, i: int) -> np.ndarray | None:
        """Box ``i``'s mask, bool ``[height, width]``, or ``None`` when it has none."""
        rle = self.rles[i]
        return None if rle is None else decode_mask(rle, where=f"mask of box {i}")

    def stack(self) -> np.ndarray:
        """All masks, bool ``[N, height, width]`` (what Mask R-CNN's targets take).

        Raises ValueError when a box has no mask: a box without its mask would teach
        the mask head that the finding has no pixels."""
        missing = [i for i, rle in enumerate(self.rles) if rle is None]
        if missing:
            raise ValueError(f"boxes {missing} have no mask; keep only studies whose boxes all have masks "
                             f"(InstanceMasks.count == len(boxes))")
        if not self.rles:
            return np.zeros((0, self.height, self.width), dtype=bool)
        return np.stack([decode_mask(rle, where=f"mask of box {i}") for i, rle in enumerate(self.rles)])


@dataclass(frozen=True)
class MaskAnnotation:
    """One instance of a masks file: its class (canonical name), box (xyxy float32
    ``[4]``, the image's pixel grid) and RLE."""

    label: str
    box: np.ndarray
    rle: dict


def round_bboxes(coco: dict, decimals: int = 2) -> dict:
    """``coco`` with every annotation's bbox rounded to ``decimals`` (the precision of
    NIH's CSV, so a masks file states the CSV's numbers, not their float32 echo)."""
    for ann in coco["annotations"]:
        ann["bbox"] = [round(float(v), decimals) for v in ann["bbox"]]
    return coco


def write_masks_file(path: str | Path, coco: dict) -> Path:
    """Write a COCO dict (e.g. :func:`~cxr.training.coco.to_coco` of studies with masks)
    as compact, key-sorted JSON: the same data writes the same bytes."""
    path = Path(path)
    path.write_text(json.dumps(coco, sort_keys=True, separators=(",", ":")) + "\n")
    return path


def _field(obj: dict, key: str, kind: type | tuple, where: str):
    value = obj.get(key) if isinstance(obj, dict) else None
    if not isinstance(value, kind) or isinstance(value, bool):
        raise InvalidFileError(f"{where}: needs '{key}' ({getattr(kind, '__name__', kind)}), got {value!r}")
    return value


def read_masks_file(path: str | Path, canonical=lambda name: name) -> dict[str, tuple[int, int, list[MaskAnnotation]]]:
    """A COCO instance-segmentation file as ``{file name: (height, width, instances)}``.

    ``file name`` is the base name of each image's ``file_name``; ``canonical`` maps a
    category name to the label vocabulary (e.g. ``LabelSet.canonical``).  Annotations
    without a ``segmentation`` RLE are skipped (boxes only); polygons are refused with
    how to convert them.  Errors name the file and the annotation.
    """
    path = Path(path)
    try:
        coco = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InvalidFileError(f"{path}: not a readable COCO JSON file ({exc})") from exc
    for key in ("images", "annotations", "categories"):
        _field(coco, key, list, f"{path}")
    names = {_field(c, "id", int, f"{path} category"): canonical(_field(c, "name", str, f"{path} category"))
             for c in coco["categories"]}
    images: dict[int, tuple[str, int, int, list[MaskAnnotation]]] = {}
    for im in coco["images"]:
        where = f"{path} image {im.get('id') if isinstance(im, dict) else im!r}"
        images[_field(im, "id", int, where)] = (Path(_field(im, "file_name", str, where)).name,
                                                _field(im, "height", int, where), _field(im, "width", int, where), [])
    for ann in coco["annotations"]:
        where = f"{path} annotation {ann.get('id') if isinstance(ann, dict) else ann!r}"
        image_id, category = _field(ann, "image_id", int, where), _field(ann, "category_id", int, where)
        if image_id not in images or category not in names:
            raise InvalidFileError(f"{where}: image_id {image_id} / category_id {category} is not in the file's "
                                   "images / categories")
        segm = ann.get("segmentation")
        if segm is None:
            continue
        if isinstance(segm, list):
            raise InvalidFileError(f"{where}: polygon segmentation; this reader takes RLE masks. Convert with "
                                   "pycocotools.mask.frPyObjects(polygons, height, width) and merge")
        _, h, w, found = images[image_id]
        if not isinstance(segm, dict) or list(segm.get("size", ())) != [h, w]:
            got = segm.get("size") if isinstance(segm, dict) else str(segm)[:60]
            raise InvalidFileError(f"{where}: segmentation must be an RLE of size [height, width] = [{h}, {w}] "
                                   f"(the image's), got {got!r}")
        uncompressed_counts(segm, where=where)  # malformed counts fail here, not in the middle of training
        x, y, bw, bh = (float(v) for v in _field(ann, "bbox", list, where))
        if not all(math.isfinite(v) for v in (x, y, bw, bh)) or bw <= 0 or bh <= 0:
            raise InvalidFileError(f"{where}: bbox [x, y, w, h] needs finite values and w, h > 0, got {ann['bbox']!r}")
        box = np.array([x, y, x + bw, y + bh], dtype=np.float32)
        found.append(MaskAnnotation(names[category], box, {"size": [h, w], "counts": segm["counts"]}))
    return {name: (h, w, found) for name, h, w, found in images.values()}


def attach_masks(studies: list[Study], by_file: dict[str, tuple[int, int, list[MaskAnnotation]]], *,
                 source: str, tolerance: float = 0.02) -> list[Study]:
    """``studies`` with :class:`InstanceMasks` on those that ``by_file`` (a
    :func:`read_masks_file` result) has instances for; the others are returned as they are.

    A study is found by its ``image_id``, else by the file stem (``x.dcm`` masks ``x.png``:
    same pixel grid).  Each instance goes to the study's box of the same class whose
    corners lie within ``tolerance`` pixels of the instance's bbox (a masks file
    annotates the dataset's own boxes); an instance that matches none, or an image grid
    that differs from the study's, raises :class:`~cxr.errors.InvalidFileError`.
    """
    by_stem = {Path(name).stem: entry for name, entry in by_file.items()}
    out = []
    for s in studies:
        entry = by_file.get(s.image_id) or by_stem.get(Path(s.image_id).stem)
        if entry is None or not entry[2]:
            out.append(s)
            continue
        h, w, instances = entry
        if None not in (s.height, s.width) and (s.height, s.width) != (h, w):
            raise InvalidFileError(f"{source}: {s.image_id} is {h}x{w} (HxW) there but {s.height}x{s.width} in the "
                                   "dataset; masks must be in the pixel grid of the image files")
        rles: list[dict | None] = [None] * len(s.boxes)
        for inst in instances:
            k = _match_box(s, inst, rles, tolerance)
            if k is None:
                boxes = ", ".join(f"{lab} {np.round(b, 2).tolist()}" for lab, b in zip(s.box_labels, s.boxes)) or "none"
                raise InvalidFileError(
                    f"{source}: {s.image_id}: the {inst.label} instance with box {np.round(inst.box, 2).tolist()} "
                    f"(xyxy) matches no unmasked {inst.label} box of the study (its boxes: {boxes}); a masks file "
                    "annotates the dataset's own boxes: fix its bbox, or leave the instance out"
                )
            rles[k] = inst.rle
        out.append(replace(s, masks=InstanceMasks(tuple(rles), h, w)))
    return out


def _match_box(study: Study, inst: MaskAnnotation, taken: list[dict | None], tolerance: float) -> int | None:
    for k, (label, box) in enumerate(zip(study.box_labels, study.boxes)):
        if taken[k] is None and label == inst.label and float(np.abs(box - inst.box).max()) <= tolerance:
            return k
    return None
