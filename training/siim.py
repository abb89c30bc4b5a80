"""SIIM-ACR Pneumothorax Segmentation masks: ``train-rle.csv`` and its run-length encoding.

The file has a header ``ImageId, EncodedPixels`` (the published copy has a space before
the second name) and one row per pneumothorax instance: an image with two separate
pneumothoraces has two rows, an image without one has a single row ``-1``.  Images are
1024 x 1024 DICOMs; ImageId is their SOP Instance UID.

Its RLE is not COCO's: ``EncodedPixels`` is pairs ``gap length`` where each gap counts
the pixels *from the end of the previous run* (the first from pixel 0), and pixels are
numbered column-major (down the first column, then the next: the mask is transposed
against row-major order).  That is COCO's uncompressed RLE without its trailing zeros,
so the two convert into each other run for run (:func:`siim_to_coco`,
:func:`coco_to_siim`).  Masks are bool ``[H, W]`` in the image's pixel grid.
"""

from __future__ import annotations

import csv
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from cxr.errors import InvalidFileError
from cxr.training.masks import decode_mask, rle_from_counts, uncompressed_counts
from cxr.training.studies import open_text

SIIM_SIZE = 1024  # every SIIM-ACR image is 1024 x 1024
EMPTY = "-1"  # EncodedPixels of an image without pneumothorax


def _runs(encoded: str, height: int, width: int, where: str) -> np.ndarray:
    """``[K, 2]`` int64 (gap, length) pairs of a SIIM RLE, checked against the image."""
    try:
        values = np.array(encoded.split(), dtype=np.int64)
    except ValueError as exc:
        raise InvalidFileError(f"{where}: EncodedPixels must be integers ('gap length' pairs) or -1, "
                               f"got {encoded[:60]!r}") from exc
    if values.size == 0 or values.size % 2:
        raise InvalidFileError(f"{where}: EncodedPixels needs 'gap length' pairs, got {values.size} numbers "
                               f"({encoded[:60]!r}); an image without pneumothorax is written -1")
    runs = values.reshape(-1, 2)
    if (runs[:, 0] < 0).any() or (runs[:, 1] < 1).any():
        raise InvalidFileError(f"{where}: gaps must be >= 0 and lengths >= 1, got {encoded[:60]!r}; is it COCO's or "
                               "Kaggle's absolute 1-based RLE rather than SIIM's relative one?")
    end = int(runs.sum())
    if end > height * width:
        raise InvalidFileError(f"{where}: the runs end at pixel {end}, past the {height}x{width} image "
                               f"({height * width} pixels); is the image size right, or are the starts absolute?")
    return runs


def siim_to_coco_counts(encoded: str, height: int = SIIM_SIZE, width: int = SIIM_SIZE, *,
                        where: str = "EncodedPixels") -> list[int]:
    """COCO's uncompressed counts (0-run, 1-run, ..., column-major) of one SIIM RLE;
    ``-1`` is the all-zero mask.  Runs that touch (gap 0) are merged."""
    encoded = encoded.strip()
    if encoded == EMPTY:
        return [height * width]
    counts: list[int] = []
    for gap, length in _runs(encoded, height, width, where).tolist():
        if gap == 0 and counts:
            counts[-1] += length  # touches the previous run: one run
        else:
            counts += [gap, length]
    return counts + [height * width - sum(counts)]


def siim_to_coco(encoded: str, height: int = SIIM_SIZE, width: int = SIIM_SIZE, *, where: str = "EncodedPixels") -> dict:
    """A SIIM RLE as COCO compressed RLE ``{"size": [H, W], "counts": str}``, run for run."""
    return rle_from_counts(siim_to_coco_counts(encoded, height, width, where=where), height, width, where=where)


def coco_to_siim(rle: dict, *, where: str = "mask") -> str:
    """A COCO RLE (compressed or not) as SIIM's relative RLE; ``-1`` for an empty mask."""
    counts = uncompressed_counts(rle, where=where)
    pairs = [(counts[i], counts[i + 1]) for i in range(0, len(counts) - 1, 2) if counts[i + 1] > 0]
    return " ".join(f"{gap} {length}" for gap, length in pairs) if pairs else EMPTY


def decode_siim_rle(encoded: str, height: int = SIIM_SIZE, width: int = SIIM_SIZE, *,
                    where: str = "EncodedPixels") -> np.ndarray:
    """Bool ``[height, width]`` mask of one SIIM RLE (``-1``: all False)."""
    counts = siim_to_coco_counts(encoded, height, width, where=where)
    flat = np.repeat(np.arange(len(counts)) % 2 == 1, counts)
    return flat.reshape(width, height).T  # column-major: the flat index runs down each column


def encode_siim_rle(mask: np.ndarray) -> str:
    """SIIM's relative, column-major RLE of a bool ``[H, W]`` mask; ``-1`` if it is empty."""
    m = np.asarray(mask)
    if m.ndim != 2:
        raise ValueError(f"a mask is a 2-D [H, W] array, got shape {m.shape}")
    flat = np.concatenate([[False], m.astype(bool).ravel(order="F"), [False]])
    edges = np.flatnonzero(flat[1:] != flat[:-1])  # run starts and ends, alternating
    if edges.size == 0:
        return EMPTY
    starts, ends = edges[0::2], edges[1::2]
    gaps = starts - np.concatenate([[0], ends[:-1]])
    return " ".join(f"{g} {n}" for g, n in zip(gaps.tolist(), (ends - starts).tolist()))


def _rows(path: Path) -> Iterator[tuple[int, str, str]]:
    with open_text(path) as fh:
        reader = csv.reader(fh)
        header = [h.strip() for h in next(reader, [])]
        if header[:2] != ["ImageId", "EncodedPixels"]:
            raise InvalidFileError(f"{path}: not a SIIM-ACR train-rle.csv; its header is {header!r}, expected "
                                   "'ImageId, EncodedPixels'")
        for line, row in enumerate(reader, start=2):
            if not row:
                continue
            if len(row) != 2 or not row[0].strip():
                raise InvalidFileError(f"{path} line {line}: expected 'ImageId,EncodedPixels', got {row!r}")
            yield line, row[0].strip(), row[1].strip()


def read_siim_rle(path: str | Path, *, height: int = SIIM_SIZE, width: int = SIIM_SIZE) -> dict[str, list[dict]]:
    """``{ImageId: [COCO RLE of each pneumothorax instance]}`` from a SIIM-ACR
    ``train-rle.csv`` (or ``.csv.gz``); an image written ``-1`` maps to ``[]``.

    Every row is checked (integers, pairs, inside the image); an image that is both
    ``-1`` and has instances is refused, since one of the two rows is wrong.
    Decode an instance with :func:`cxr.training.masks.decode_mask`."""
    path = Path(path)
    out: dict[str, list[dict]] = {}
    empty: set[str] = set()
    for line, image_id, encoded in _rows(path):
        instances = out.setdefault(image_id, [])
        if encoded == EMPTY:
            empty.add(image_id)
        else:
            instances.append(siim_to_coco(encoded, height, width, where=f"{path} line {line} ({image_id})"))
        if image_id in empty and instances:
            raise InvalidFileError(f"{path} line {line}: {image_id} is listed both as -1 (no pneumothorax) and "
                                   f"with {len(instances)} instance(s); remove the wrong row")
    return out


def siim_mask(rles: list[dict], height: int = SIIM_SIZE, width: int = SIIM_SIZE) -> np.ndarray:
    """The union of an image's instances, bool ``[height, width]`` (SIIM scores the union)."""
    mask = np.zeros((height, width), dtype=bool)
    for rle in rles:
        mask |= decode_mask(rle, where="SIIM instance")
    return mask
