"""CheXmask (Gaggion et al., Scientific Data 2024) anatomical masks: lungs and heart.

One CSV (often ``.csv.gz``) per source dataset, one row per image, with an image id
column whose name follows the source (``image_id`` for VinDr-CXR, ``dicom_id`` for
MIMIC-CXR, ...), then ``Dice RCA (Max)``, ``Dice RCA (Mean)`` (the masks' estimated
quality: the authors advise using rows with a mean of at least 0.7), ``Landmarks``,
``Left Lung``, ``Right Lung``, ``Heart``, ``Height`` and ``Width``.

Their RLE is the Kaggle one, not COCO's and not SIIM's: ``start length`` pairs where
each start is ABSOLUTE and 1-based, pixels numbered row-major (along the first row,
then the next) in a ``Height x Width`` grid -- the original image's in the
``OriginalResolution`` files, 1024 x 1024 in the ``Preprocessed`` ones.  An empty cell
is an empty mask.  Masks are bool ``[Height, Width]``; "Left Lung" is the patient's
left (the image's right on a PA film).

The strings are returned as they are and decoded on demand (:func:`decode_chexmask_rle`):
a file has up to ~240,000 rows and decoding every mask up front would take minutes.
"""

from __future__ import annotations

import csv
import math
import sys
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cxr.errors import InvalidFileError
from cxr.training.studies import open_text

CHEXMASK_ORGANS: tuple[str, ...] = ("Left Lung", "Right Lung", "Heart")
_DATA_COLUMNS = frozenset(CHEXMASK_ORGANS) | {"Dice RCA (Max)", "Dice RCA (Mean)", "Landmarks", "Height", "Width"}


@dataclass(frozen=True)
class ChexmaskRow:
    """One image's CheXmask masks: ``rles[organ]`` in CheXmask's RLE (``""``: empty),
    the ``height x width`` grid they decode to, and the quality estimate."""

    rles: dict[str, str]
    height: int
    width: int
    dice_rca_mean: float

    def mask(self, organ: str) -> np.ndarray:
        """Bool ``[height, width]`` mask of ``organ`` (one of :data:`CHEXMASK_ORGANS`)."""
        if organ not in self.rles:
            raise KeyError(f"unknown organ {organ!r}; CheXmask has {', '.join(CHEXMASK_ORGANS)}")
        return decode_chexmask_rle(self.rles[organ], self.height, self.width, where=organ)


def decode_chexmask_rle(encoded: str, height: int, width: int, *, where: str = "RLE") -> np.ndarray:
    """Bool ``[height, width]`` mask of a CheXmask RLE (absolute 1-based starts, row-major)."""
    if not encoded.strip():
        return np.zeros((height, width), dtype=bool)
    try:
        values = np.array(encoded.split(), dtype=np.int64)
    except ValueError as exc:
        raise InvalidFileError(f"{where}: RLE must be integers ('start length' pairs), got {encoded[:60]!r}") from exc
    if values.size % 2:
        raise InvalidFileError(f"{where}: RLE needs 'start length' pairs, got {values.size} numbers")
    starts, lengths = values[0::2] - 1, values[1::2]
    if (starts < 0).any() or (lengths < 1).any() or (starts + lengths > height * width).any():
        raise InvalidFileError(f"{where}: runs must start at pixel 1 or later, have length >= 1 and end within the "
                               f"{height}x{width} grid; got {encoded[:60]!r} (is it SIIM's relative RLE?)")
    gaps = starts - np.concatenate([[0], (starts + lengths)[:-1]])
    if (gaps < 0).any():
        raise InvalidFileError(f"{where}: runs overlap or go backwards; CheXmask's starts are absolute and increasing")
    runs = np.stack([gaps, lengths], axis=1).ravel()
    flat = np.repeat(np.arange(runs.size) % 2 == 1, runs)
    flat = np.concatenate([flat, np.zeros(height * width - flat.size, dtype=bool)])
    return flat.reshape(height, width)


def encode_chexmask_rle(mask: np.ndarray) -> str:
    """CheXmask's RLE of a bool ``[H, W]`` mask (absolute 1-based starts, row-major); ``""`` if empty."""
    m = np.asarray(mask)
    if m.ndim != 2:
        raise ValueError(f"a mask is a 2-D [H, W] array, got shape {m.shape}")
    flat = np.concatenate([[False], m.astype(bool).ravel(), [False]])
    edges = np.flatnonzero(flat[1:] != flat[:-1])
    starts, ends = edges[0::2], edges[1::2]
    return " ".join(f"{s + 1} {e - s}" for s, e in zip(starts.tolist(), ends.tolist()))


def _id_column(header: list[str], id_column: str | None, path: Path) -> str:
    missing = [c for c in (*CHEXMASK_ORGANS, "Height", "Width") if c not in header]
    if missing:
        raise InvalidFileError(f"{path}: not a CheXmask CSV; it lacks {missing} (its header: {header})")
    if id_column is not None:
        if id_column not in header:
            raise InvalidFileError(f"{path}: no id column {id_column!r}; the header is {header}")
        return id_column
    candidates = [c for c in header if c and c not in _DATA_COLUMNS]
    if len(candidates) != 1:
        raise InvalidFileError(f"{path}: cannot tell the image id column among {candidates or header}; "
                               "pass id_column= (e.g. 'image_id', 'dicom_id')")
    return candidates[0]


def _number(row: dict, key: str, kind: type, where: str):
    try:
        value = kind(float(row[key])) if kind is int else float(row[key] or "nan")
    except (TypeError, ValueError) as exc:
        raise InvalidFileError(f"{where}: {key} must be a number, got {row[key]!r}") from exc
    if kind is int and value < 1:
        raise InvalidFileError(f"{where}: {key} must be >= 1, got {row[key]!r}")
    return value


def read_chexmask(
    path: str | Path, *, id_column: str | None = None, min_dice_rca: float | None = None,
    ids: Collection[str] | None = None,
) -> dict[str, ChexmaskRow]:
    """``{image id: ChexmaskRow}`` from a CheXmask CSV (``.csv`` or ``.csv.gz``).

    ``id_column`` names the image id column (found by elimination when omitted);
    ``min_dice_rca`` keeps rows whose ``Dice RCA (Mean)`` is at least that (0.7 is the
    authors' advice); ``ids`` keeps only those images.  Each kept row's RLEs are
    checked as strings of integer pairs; runs are checked when decoded."""
    path = Path(path)
    # One RLE cell of an original-resolution mask can exceed csv's 128 KiB default.
    csv.field_size_limit(max(csv.field_size_limit(), min(sys.maxsize, 2**31 - 1)))
    out: dict[str, ChexmaskRow] = {}
    with open_text(path) as fh:
        reader = csv.DictReader(fh)
        key = _id_column(list(reader.fieldnames or []), id_column, path)
        for line, row in enumerate(reader, start=2):
            image_id = (row.get(key) or "").strip()
            where = f"{path} line {line} ({image_id or 'no id'})"
            if not image_id or None in row:
                raise InvalidFileError(f"{where}: a row needs an image id and as many cells as the header")
            if ids is not None and image_id not in ids:
                continue
            dice = _number(row, "Dice RCA (Mean)", float, where) if "Dice RCA (Mean)" in row else math.nan
            if min_dice_rca is not None and not dice >= min_dice_rca:
                continue
            rles = {organ: (row[organ] or "").strip() for organ in CHEXMASK_ORGANS}
            bad = [o for o, r in rles.items() if r and (len(r.split()) % 2 or not r.replace(" ", "").isdigit())]
            if bad:
                raise InvalidFileError(f"{where}: {bad} are not 'start length' integer pairs")
            out[image_id] = ChexmaskRow(rles, _number(row, "Height", int, where), _number(row, "Width", int, where), dice)
    return out
