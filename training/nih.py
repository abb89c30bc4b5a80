"""NIH ChestX-ray14: Data_Entry_2017 and BBox_List_2017 readers, and the dataset folder.

Box frame: BBox_List_2017 gives ``[x, y, w, h]`` in the grid of the RELEASED PNGs,
which NIH resized to 1024 x 1024 from the DICOM sizes that Data_Entry lists as
``OriginalImage[Width,Height]``.  The image a study points at is that PNG, so a
:class:`Study` here has ``width = height = 1024`` and boxes (xyxy float32) in that
grid; ``spacing_mm`` is rescaled from ``OriginalImagePixelSpacing`` to it.  Pass
``released_size=None`` for data whose PNGs keep the Data_Entry size.

Detection policy: the bbox list annotates 880 of 112,120 images.  Images with boxes
and "No Finding" images are usable for detection; images with findings but no boxes
are kept in :attr:`NIHDataset.studies` and in the summary, but left out of
:meth:`NIHDataset.detection_studies` (see :attr:`Study.detection_usable`).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from dataclasses import replace
from pathlib import Path

import numpy as np

from cxr.boxes import xywh_to_xyxy
from cxr.labels import NIH_NO_FINDING, LabelSet, get_labelset
from cxr.training.studies import SPLITS, Study, assign_patients, read_csv_rows
from cxr.training.summary import summarize

log = logging.getLogger(__name__)

NIH_RELEASED_SIZE = 1024  # NIH resized every PNG to 1024 x 1024 before release
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".dcm")

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
    value = value.strip()
    if not value:
        return None
    # Early releases wrote ages as "058Y"; the 2017/2020 files write "58".
    return int(float(value.rstrip("YMDWymdw")))


def _float_or_none(value: str) -> float | None:
    value = value.strip()
    return float(value) if value else None


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
    rows = read_csv_rows(path)
    header = next(rows, None)
    if header is None:
        raise ValueError(f"{path}: empty file, expected an NIH Data_Entry_2017 CSV")
    columns = [(_DATA_ENTRY_KEYS[_norm(h)], i) for i, h in enumerate(header) if _norm(h) in _DATA_ENTRY_KEYS]
    found = {key for key, _ in columns}
    missing = [key for key in _REQUIRED if key not in found]
    if missing:
        raise ValueError(
            f"{path}: not an NIH Data_Entry_2017 file: header {','.join(header)!r} lacks "
            f"{missing}; expected 'Image Index,Finding Labels,Follow-up #,Patient ID,...'"
        )
    need = max(i for _, i in columns) + 1
    plan = [(key, i, _CONVERT.get(key)) for key, i in columns]
    blank = {key: None for key in _DATA_ENTRY_KEYS.values() if key not in found}
    out: list[dict] = []
    for line, row in enumerate(rows, start=2):
        if len(row) < need:
            if not any(cell.strip() for cell in row):
                continue  # a blank line at the end of a hand-edited file
            raise ValueError(f"{path} line {line}: {len(row)} fields, the header needs {need}: {row!r}")
        try:
            rec = {key: (conv(row[i]) if conv else row[i].strip()) for key, i, conv in plan}
        except ValueError as exc:
            raise ValueError(f"{path} line {line}: cannot parse {row!r}: {exc}") from exc
        rec.update(blank)
        out.append(rec)
    return out


def read_nih_bbox_list(path: str | Path) -> dict[str, list[tuple[str, np.ndarray]]]:
    """``BBox_List_2017.csv(.gz)`` as ``{image_index: [(label, xyxy), ...]}``.

    The header ``Image Index,Finding Label,Bbox [x,y,w,h],,,`` has 9 fields over 6
    data fields, so columns are read by position.  Boxes come in as ``[x, y, w, h]``
    and go out as float32 ``[4]`` xyxy in the 1024 grid of the released PNGs.
    Labels are canonical NIH names ("Infiltrate" -> "Infiltration").
    """
    findings = get_labelset("nih-findings")
    rows = read_csv_rows(path)
    header = [_norm(h) for h in next(rows, [])]
    if len(header) < 3 or header[:2] != ["image index", "finding label"] or not header[2].startswith("bbox"):
        raise ValueError(
            f"{path}: not an NIH BBox_List_2017 file: header {header!r}; "
            f"expected 'Image Index,Finding Label,Bbox [x,y,w,h],,,'"
        )
    out: dict[str, list[tuple[str, np.ndarray]]] = {}
    for line, row in enumerate(rows, start=2):
        if not any(cell.strip() for cell in row):
            continue
        if len(row) < 6:
            raise ValueError(f"{path} line {line}: expected image, label, x, y, w, h; got {row!r}")
        try:
            xywh = [float(v) for v in row[2:6]]
        except ValueError as exc:
            raise ValueError(f"{path} line {line}: box is not 4 numbers: {row[2:6]!r}") from exc
        label = findings.canonical(row[1])
        out.setdefault(row[0].strip(), []).append((label, xywh_to_xyxy(xywh)[0]))
    return out


def _read_list(path: Path) -> set[str]:
    with open(path, encoding="utf-8") as fh:
        return {line.strip() for line in fh if line.strip()}


def _find_file(root: Path, patterns: Iterable[str], what: str) -> Path:
    found = [p for pattern in patterns for p in root.glob(pattern) if p.is_file()]
    if not found:
        raise FileNotFoundError(
            f"{root}: no {what}; looked for {' or '.join(patterns)} in that folder. "
            f"Put NIH ChestX-ray14's CSV there, or point to the folder that holds it."
        )
    # Prefer the newest revision (Data_Entry_2017_v2020 over Data_Entry_2017), then plain CSV.
    best = max(found, key=lambda p: ("_v" in p.name, p.suffix != ".gz", p.name))
    if len(found) > 1:
        log.info("%s: using %s (also found %s)", what, best.name, ", ".join(sorted(p.name for p in found if p != best)))
    return best


def _find_images(root: Path) -> dict[str, Path]:
    """Image files under ``root/images*/`` (any depth), keyed by file name and by stem."""
    index: dict[str, Path] = {}
    for top in sorted(p for p in root.glob("images*") if p.is_dir()):
        for dirpath, dirnames, filenames in os.walk(top):
            dirnames.sort()  # the first of two same-named files wins, reproducibly
            for name in filenames:
                if name.lower().endswith(IMAGE_SUFFIXES):
                    path = Path(dirpath, name)
                    index.setdefault(name, path)
                    index.setdefault(path.stem, path)
    return index


class NIHDataset:
    """NIH ChestX-ray14 in its released folder layout.

    ``studies`` holds every Data_Entry image (boxes as xyxy float32 in the released
    PNG grid, see the module docstring), each with its ``split``.
    """

    def __init__(self, studies: list[Study], *, labelset: LabelSet, root: Path | None = None,
                 files: dict[str, str] | None = None, split_source: str = "seeded") -> None:
        self.studies = studies
        self.labelset = labelset
        self.root = root
        self.files = dict(files or {})  # which CSVs/lists were read, for `cxr data info`
        self.split_source = split_source  # "official" (NIH lists) or "seeded"

    @classmethod
    def from_dir(
        cls,
        root: str | Path,
        *,
        labelset: str | LabelSet = "nih-bbox",
        val_fraction: float = 0.1,
        test_fraction: float = 0.2,
        seed: int = 0,
        require_images: bool = False,
        released_size: int | None = NIH_RELEASED_SIZE,
    ) -> NIHDataset:
        """Read an NIH folder: ``Data_Entry_2017*.csv(.gz)``, ``BBox_List_2017.csv(.gz)``,
        images under ``images*/`` (any depth, as NIH's ``images_001/images/`` tarballs
        unpack), and ``train_val_list.txt`` / ``test_list.txt`` when present.

        Split: with the official lists, test = test_list and val is a seeded patient
        sample of train_val_list (``test_fraction`` is unused); without them, a seeded
        patient-level split of everything.  ``require_images=True`` keeps only the
        studies whose image is on disk (NIH ships 12 tarballs; a partial download is
        common) and fails if there are none.  Box labels must be in ``labelset``.
        """
        root = Path(root)
        if not root.is_dir():
            raise FileNotFoundError(f"NIH data folder {root} does not exist or is not a folder")
        labels = labelset if isinstance(labelset, LabelSet) else get_labelset(labelset)
        entry_path = _find_file(root, ("Data_Entry_2017*.csv", "Data_Entry_2017*.csv.gz"), "Data_Entry file")
        bbox_path = _find_file(root, ("BBox_List_2017.csv", "BBox_List_2017.csv.gz"), "BBox_List file")
        files = {"data_entry": str(entry_path), "bbox_list": str(bbox_path)}
        entries = read_nih_data_entry(entry_path)
        bboxes = read_nih_bbox_list(bbox_path)
        images = _find_images(root)

        known = {e["image_index"] for e in entries}
        orphans = sorted(set(bboxes) - known)
        if orphans:  # no patient id for them, so they cannot be split safely
            log.warning("%s: %d boxed images are not in %s and are skipped, e.g. %s",
                        bbox_path.name, len(orphans), entry_path.name, orphans[0])
        studies = _build_studies(entries, bboxes, images, labels, released_size)
        if require_images:
            studies = [s for s in studies if s.path is not None]
            if not studies:
                raise FileNotFoundError(
                    f"{root}: none of the {len(entries)} images in {entry_path.name} were found "
                    f"under {root}/images*/ (looked for {', '.join(IMAGE_SUFFIXES)} files)"
                )

        lists = {name: root / f"{name}.txt" for name in ("train_val_list", "test_list")}
        if any(p.is_file() for p in lists.values()):
            files.update({name: str(p) for name, p in lists.items() if p.is_file()})
            where = _official_split(studies, lists, val_fraction=val_fraction, seed=seed)
            source = "official"
        else:
            where = assign_patients((s.patient_id for s in studies),
                                    val_fraction=val_fraction, test_fraction=test_fraction, seed=seed)
            source = "seeded"
        studies = [replace(s, split=where.get(s.patient_id)) for s in studies]
        return cls(studies, labelset=labels, root=root, files=files, split_source=source)

    def split(self, name: str) -> list[Study]:
        """All studies of one split (``"train"``, ``"val"`` or ``"test"``)."""
        if name not in SPLITS:
            raise ValueError(f"unknown split {name!r}; choose one of: {', '.join(SPLITS)}")
        return [s for s in self.studies if s.split == name]

    def splits(self) -> dict[str, list[Study]]:
        return {name: self.split(name) for name in SPLITS}

    def detection_studies(self, split: str | None = None) -> list[Study]:
        """Studies usable for detection (boxed or "No Finding"), of one split or all."""
        chosen = self.studies if split is None else self.split(split)
        return [s for s in chosen if s.detection_usable]

    def summary(self) -> dict:
        out = summarize(self.studies, self.splits())
        out.update(dataset="nih", labelset=self.labelset.name, split_source=self.split_source, files=self.files)
        return out


def _build_studies(entries: list[dict], bboxes: dict[str, list[tuple[str, np.ndarray]]],
                   images: dict[str, Path], labels: LabelSet, released_size: int | None) -> list[Study]:
    findings_vocab = get_labelset("nih-findings")
    parsed: dict[str, tuple[str, ...]] = {}  # ~800 distinct label strings over 112k rows
    studies = []
    for e in entries:
        image_id = e["image_index"]
        raw = e["finding_labels"]
        if raw not in parsed:
            names = [n for n in raw.split("|") if n.strip() and n.strip() != NIH_NO_FINDING]
            parsed[raw] = tuple(findings_vocab.canonical(n) for n in names)
        boxed = bboxes.get(image_id, ())
        w, h = e["width"], e["height"]
        sx, sy = e["spacing_x"], e["spacing_y"]
        spacing = None if sx is None or sy is None else (sy, sx)  # (row, col) = (y, x)
        if released_size is not None:
            if spacing is not None and w and h:
                spacing = (sy * h / released_size, sx * w / released_size)
            else:
                spacing = None
            w = h = released_size
        studies.append(Study(
            image_id=image_id,
            path=images.get(image_id) or images.get(Path(image_id).stem),
            patient_id=e["patient_id"],
            findings=parsed[raw],
            boxes=np.stack([b for _, b in boxed]) if boxed else None,
            box_labels=tuple(labels.canonical(name) for name, _ in boxed),
            width=w,
            height=h,
            spacing_mm=spacing,
            view_position=e["view_position"] or None,
        ))
    return studies


def _official_split(studies: list[Study], lists: dict[str, Path], *, val_fraction: float,
                    seed: int) -> dict[str, str]:
    """Patient -> split from NIH's train_val_list.txt / test_list.txt."""
    test_ids = _read_list(lists["test_list"]) if lists["test_list"].is_file() else set()
    trainval_ids = _read_list(lists["train_val_list"]) if lists["train_val_list"].is_file() else None
    test_patients = {s.patient_id for s in studies if s.image_id in test_ids}
    pool = {s.patient_id for s in studies
            if s.image_id not in test_ids and (trainval_ids is None or s.image_id in trainval_ids)}
    both = sorted(test_patients & pool)
    if both:
        raise ValueError(
            f"{len(both)} patients have images in both test_list.txt and the train/val pool "
            f"(e.g. patient {both[0]}); the lists must split by patient. Fix the lists, or "
            f"remove them to get a seeded patient-level split."
        )
    where = assign_patients(pool, val_fraction=val_fraction, test_fraction=0.0, seed=seed)
    where.update({p: "test" for p in test_patients})
    return where
