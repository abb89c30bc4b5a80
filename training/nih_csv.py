"""Readers for NIH ChestX-ray14's two annotation CSVs: Data_Entry_2017 and BBox_List_2017.

Both files have headers that a plain CSV reader mis-reads (bracketed names with commas,
more header fields than data fields); the readers here map them to clean keys and
fail with a message naming the file and line when a file is not what it claims.
Boxes are returned as float32 xyxy in the grid of NIH's released 1024 x 1024 PNGs.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from cxr.boxes import xywh_to_xyxy
from cxr.errors import InvalidFileError
from cxr.labels import get_labelset
from cxr.training.studies import read_csv_rows

# Column names of Data_Entry_2017 (compared lower-case, whitespace collapsed).
_DATA_ENTRY_KEYS = {
    "image index": "image_index",
    "finding labels": "finding_labels",
    "follow-up #": "follow_up",
    "patient id": "patient_id",
    "patient age": "patient_age",
    "patient gender": "patient_gender",
    "view position": "view_position",
    "originalimage[width": "width",
    "height]": "height",
    "originalimagepixelspacing[x": "spacing_x",
    "y]": "spacing_y",
}
_REQUIRED = ("image_index", "finding_labels", "patient_id")


def _norm(name: str) -> str:
    return " ".join(name.split()).lower()


def _int_or_none(value: str) -> int | None:
    try:
        return int(value)  # the common case first: 112k rows x 4 columns
    except ValueError:
        pass
    value = value.strip()
    if not value:
        return None
    # Early releases wrote ages as "058Y"; the 2017/2020 files write "58".
    return int(float(value.rstrip("YMDWymdw")))


def _float_or_none(value: str) -> float | None:
    try:
        return float(value)
    except ValueError:
        if value.strip():
            raise
        return None


def _patient(value: str) -> str:
    # v2020 writes "1", other exports "00001": one patient must have one id.
    value = value.strip()
    return str(int(value)) if value.isdigit() else value


_CONVERT = {
    "follow_up": _int_or_none,
    "patient_id": _patient,
    "patient_age": _int_or_none,
    "width": _int_or_none,
    "height": _int_or_none,
    "spacing_x": _float_or_none,
    "spacing_y": _float_or_none,
}


def read_nih_data_entry(path: str | Path) -> list[dict]:
    """Rows of ``Data_Entry_2017*.csv`` (or ``.csv.gz``) as dicts with clean keys.

    The header's bracketed names contain commas (``OriginalImage[Width,Height]``), so
    a plain CSV reader sees ``OriginalImage[Width`` and ``Height]`` as two columns;
    they are mapped to ``width``/``height`` and ``spacing_x``/``spacing_y`` here.
    Keys: image_index, finding_labels (the raw ``|``-joined string), follow_up,
    patient_id, patient_age, patient_gender, view_position, width, height,
    spacing_x, spacing_y (missing columns give ``None``).  Trailing empty or
    ``Unnamed`` columns (the 2017 original ends each line with a comma) are ignored.
    """
    columns = read_data_entry_columns(path)
    keys = list(columns)
    return [dict(zip(keys, rec)) for rec in zip(*columns.values())]


def read_data_entry_columns(path: str | Path) -> dict[str, list]:
    """Data_Entry as ``{key: [value per row]}``, keys as in :func:`read_nih_data_entry`.

    Column by column: ``map()`` over 112k cells is several times faster than a dict
    per row, and :class:`NIHDataset` needs no per-row dicts.
    """
    rows = read_csv_rows(path)
    header = next(rows, None)
    if header is None:
        raise InvalidFileError(f"{path}: empty file, expected an NIH Data_Entry_2017 CSV")
    columns = [(_DATA_ENTRY_KEYS[_norm(h)], i) for i, h in enumerate(header) if _norm(h) in _DATA_ENTRY_KEYS]
    found = {key for key, _ in columns}
    missing = [key for key in _REQUIRED if key not in found]
    if missing:
        raise InvalidFileError(
            f"{path}: not an NIH Data_Entry_2017 file: header {','.join(header)!r} lacks "
            f"{missing}; expected 'Image Index,Finding Labels,Follow-up #,Patient ID,...'"
        )
    need = max(i for _, i in columns) + 1
    body: list[list[str]] = []
    for line, row in enumerate(rows, start=2):
        if len(row) < need:
            if not any(cell.strip() for cell in row):
                continue  # a blank line at the end of a hand-edited file
            raise InvalidFileError(f"{path} line {line}: {len(row)} fields, the header needs {need}: {row!r}")
        body.append(row)
    out: dict[str, list] = {}
    for key, i in columns:
        cells = [row[i] for row in body]
        conv = _CONVERT.get(key, str.strip)
        try:
            out[key] = list(map(conv, cells))
        except ValueError as exc:
            bad = next(n for n, cell in enumerate(cells) if not _parses(conv, cell))
            raise InvalidFileError(
                f"{path} data row {bad + 1}: cannot read {header[i]!r} from {cells[bad]!r}: {exc}"
            ) from exc
    for key in _DATA_ENTRY_KEYS.values():
        out.setdefault(key, [None] * len(body))
    return out


def _parses(conv, cell: str) -> bool:
    try:
        conv(cell)
    except ValueError:
        return False
    return True


def read_nih_bbox_list(path: str | Path) -> dict[str, list[tuple[str, np.ndarray]]]:
    """``BBox_List_2017.csv(.gz)`` as ``{image_index: [(label, xyxy), ...]}``.

    The header ``Image Index,Finding Label,Bbox [x,y,w,h],,,`` has 9 fields over 6
    data fields, so columns are read by position.  Boxes come in as ``[x, y, w, h]``
    and go out as float32 ``[4]`` xyxy in the 1024 grid of the released PNGs.
    Labels are canonical NIH names ("Infiltrate" -> "Infiltration").
    """
    findings = get_labelset("nih-findings")
    rows = read_csv_rows(path)
    raw_header = next(rows, [])
    header = [_norm(h) for h in raw_header]
    if len(header) < 3 or header[:2] != ["image index", "finding label"] or not header[2].startswith("bbox"):
        raise InvalidFileError(
            f"{path}: not an NIH BBox_List_2017 file: header {','.join(raw_header)!r}; "
            f"expected 'Image Index,Finding Label,Bbox [x,y,w,h],,,'"
        )
    out: dict[str, list[tuple[str, np.ndarray]]] = {}
    for line, row in enumerate(rows, start=2):
        if not any(cell.strip() for cell in row):
            continue
        if len(row) < 6:
            raise InvalidFileError(f"{path} line {line}: expected image, label, x, y, w, h; got {row!r}")
        try:
            xywh = [float(v) for v in row[2:6]]
        except ValueError as exc:
            raise InvalidFileError(f"{path} line {line}: box is not 4 numbers: {row[2:6]!r}") from exc
        label = findings.canonical(row[1])
        out.setdefault(row[0].strip(), []).append((label, xywh_to_xyxy(xywh)[0]))
    return out
