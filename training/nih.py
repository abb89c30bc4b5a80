"""NIH ChestX-ray14: Data_Entry_2017 and BBox_List_2017 readers, and the dataset folder.

Box frame: BBox_List_2017 gives ``[x, y, w, h]`` in the grid of the RELEASED PNGs,
which NIH resized to 1024 x 1024 from the DICOM sizes that Data_Entry lists as
``OriginalImage[Width,Height]``.  The image a study points at is that PNG, so a
:class:`Study` here has ``width = height = 1024`` and boxes (xyxy float32) in that
grid; ``spacing_mm`` is rescaled from ``OriginalImagePixelSpacing`` to it.  Data
written in its own grid (``cxr synth`` writes one square size S for every row of
Data_Entry, with PNGs and boxes in S x S) keeps the Data_Entry size: see
``released_size`` in :meth:`NIHDataset.from_dir`.

Detection policy: the bbox list annotates 880 of 112,120 images.  Images with boxes
and "No Finding" images are usable for detection; images with findings but no boxes
are kept in :attr:`NIHDataset.studies` and in the summary, but left out of
:meth:`NIHDataset.detection_studies` (see :attr:`Study.detection_usable`).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Literal

import numpy as np

from cxr.errors import InvalidFileError, InvalidOptionError, MissingFileError
from cxr.decode.header import STUDY_SUFFIXES as IMAGE_SUFFIXES
from cxr.labels import NIH_NO_FINDING, LabelSet, LabelSetName, get_labelset
from cxr.training.masks import MASKS_FILE, attach_masks, read_masks_file
from cxr.training.nih_csv import read_data_entry_columns, read_nih_bbox_list, read_nih_data_entry
from cxr.training.studies import SPLITS, Study, assign_patients, gc_paused
from cxr.training.summary import summarize

__all__ = ["NIH_RELEASED_SIZE", "NIHDataset", "read_data_entry_columns", "read_nih_bbox_list", "read_nih_data_entry"]

log = logging.getLogger(__name__)

NIH_RELEASED_SIZE = 1024  # NIH resized every PNG to 1024 x 1024 before release


def _read_list(path: Path) -> set[str]:
    with open(path, encoding="utf-8") as fh:
        return {line.strip() for line in fh if line.strip()}


def _find_file(root: Path, patterns: Iterable[str], what: str) -> Path:
    found = [p for pattern in patterns for p in root.glob(pattern) if p.is_file()]
    if not found:
        raise MissingFileError(
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
        labelset: str | LabelSet = LabelSetName.NIH_BBOX,
        val_fraction: float = 0.1,
        test_fraction: float = 0.2,
        seed: int = 0,
        require_images: bool = False,
        released_size: int | Literal["auto"] | None = "auto",
        masks: str | Path | None = "auto",
    ) -> NIHDataset:
        """Read an NIH folder: ``Data_Entry_2017*.csv(.gz)``, ``BBox_List_2017.csv(.gz)``,
        images under ``images*/`` (any depth, as NIH's ``images_001/images/`` tarballs
        unpack), and ``train_val_list.txt`` / ``test_list.txt`` when present.

        Split: with the official lists, test = test_list and val is a seeded patient
        sample of train_val_list (``test_fraction`` is unused); without them, a seeded
        patient-level split of everything.  ``require_images=True`` keeps only the
        studies whose image is on disk (NIH ships 12 tarballs; a partial download is
        common) and fails if there are none.  Box labels must be in ``labelset``.

        ``released_size``: the pixel grid of the image files and boxes.  An int means
        square files of that size (NIH: 1024) resized from the Data_Entry sizes;
        ``None`` means the files have the Data_Entry sizes; ``"auto"`` picks ``None``
        when every row lists the same square size (data written in its own grid,
        like ``cxr synth``), else :data:`NIH_RELEASED_SIZE` (NIH's sizes vary by row).

        ``masks``: a COCO instance-segmentation file (RLE, :mod:`cxr.training.masks`)
        whose instances become the boxed studies' ``Study.masks``, each matched to its
        box; ``"auto"`` reads ``root/masks.json`` when it exists (``cxr synth`` writes
        it), ``None`` reads none.  Instances of images not in the dataset are ignored.
        """
        if not (released_size is None or released_size == "auto"
                or (isinstance(released_size, int) and released_size > 0)):
            raise InvalidOptionError(f"released_size must be a positive int, None or 'auto', got {released_size!r}")
        root = Path(root)
        if not root.is_dir():
            raise MissingFileError(f"NIH data folder {root} does not exist or is not a folder")
        labels = labelset if isinstance(labelset, LabelSet) else get_labelset(labelset)
        entry_path = _find_file(root, ("Data_Entry_2017*.csv", "Data_Entry_2017*.csv.gz"), "Data_Entry file")
        bbox_path = _find_file(root, ("BBox_List_2017.csv", "BBox_List_2017.csv.gz"), "BBox_List file")
        files = {"data_entry": str(entry_path), "bbox_list": str(bbox_path)}
        with gc_paused():
            cols = read_data_entry_columns(entry_path)
        bboxes = read_nih_bbox_list(bbox_path)
        images = _find_images(root)

        ids, patients = cols["image_index"], cols["patient_id"]
        orphans = sorted(set(bboxes) - set(ids))
        if orphans:  # no patient id for them, so they cannot be split safely
            log.warning("%s: %d boxed images are not in %s and are skipped, e.g. %s",
                        bbox_path.name, len(orphans), entry_path.name, orphans[0])
        paths = [_lookup(images, image_id) for image_id in ids]
        keep = range(len(ids))
        if require_images:
            keep = [i for i, path in enumerate(paths) if path is not None]
            if not keep:
                raise MissingFileError(
                    f"{root}: none of the {len(ids)} images in {entry_path.name} were found "
                    f"under {root}/images*/ (looked for {', '.join(IMAGE_SUFFIXES)} files)"
                )

        lists = {name: root / f"{name}.txt" for name in ("train_val_list", "test_list")}
        if any(p.is_file() for p in lists.values()):
            files.update({name: str(p) for name, p in lists.items() if p.is_file()})
            where = _official_split([(ids[i], patients[i]) for i in keep], lists,
                                    val_fraction=val_fraction, seed=seed)
            source = "official"
        else:
            where = assign_patients((patients[i] for i in keep),
                                    val_fraction=val_fraction, test_fraction=test_fraction, seed=seed)
            source = "seeded"
        if released_size == "auto":
            released_size = None if _one_square_size(cols) else NIH_RELEASED_SIZE
        # Built once, split included: dataclasses.replace on 112k studies costs seconds.
        with gc_paused():
            studies = _build_studies(cols, keep, bboxes, paths, where, labels, released_size)
        studies = _with_masks(studies, _masks_path(root, masks), labels, files)
        return cls(studies, labelset=labels, root=root, files=files, split_source=source)

    def split(self, name: str) -> list[Study]:
        """All studies of one split (``"train"``, ``"val"`` or ``"test"``)."""
        if name not in SPLITS:
            raise InvalidOptionError(f"unknown split {name!r}; choose one of: {', '.join(SPLITS)}")
        return [s for s in self.studies if s.split == name]

    @property
    def splits(self) -> dict[str, list[Study]]:
        """``{"train": [...], "val": [...], "test": [...]}``; no patient is in two."""
        return {name: self.split(name) for name in SPLITS}

    def detection_studies(self, split: str | None = None) -> list[Study]:
        """Studies usable for detection (boxed or "No Finding"), of one split or all."""
        chosen = self.studies if split is None else self.split(split)
        return [s for s in chosen if s.detection_usable]

    def summary(self) -> dict:
        out = summarize(self.studies, self.splits)
        out.update(dataset="nih", labelset=self.labelset.name, split_source=self.split_source, files=self.files)
        return out


def _masks_path(root: Path, masks: str | Path | None) -> Path | None:
    if masks is None:
        return None
    if masks == "auto":
        path = root / MASKS_FILE
        return path if path.is_file() else None
    path = Path(masks)
    if not path.is_file():
        raise MissingFileError(f"masks file {path} does not exist; pass a COCO RLE instance file, or masks=None")
    return path


def _with_masks(studies: list[Study], path: Path | None, labels: LabelSet, files: dict[str, str]) -> list[Study]:
    if path is None:
        return studies
    files["masks"] = str(path)
    return attach_masks(studies, read_masks_file(path, labels.canonical), source=str(path))


def _lookup(images: dict[str, Path], image_id: str) -> Path | None:
    if not images:
        return None
    # By file name, else by stem: a folder of .dcm or .jpg files still matches "x.png".
    return images.get(image_id) or images.get(image_id.rsplit(".", 1)[0])


def _one_square_size(cols: dict[str, list]) -> bool:
    sizes = set(zip(cols["width"], cols["height"]))
    return len(sizes) == 1 and None not in next(iter(sizes)) and len(set(next(iter(sizes)))) == 1


def _build_studies(cols: dict[str, list], keep: Iterable[int],
                   bboxes: dict[str, list[tuple[str, np.ndarray]]], paths: list[Path | None],
                   where: dict[str, str], labels: LabelSet, released_size: int | None) -> list[Study]:
    findings_vocab = get_labelset(LabelSetName.NIH_FINDINGS)
    parsed: dict[str, tuple[str, ...]] = {}  # ~800 distinct label strings over 112k rows
    studies = []
    for i in keep:
        image_id, raw, patient = cols["image_index"][i], cols["finding_labels"][i], cols["patient_id"][i]
        if raw not in parsed:
            names = [n for n in raw.split("|") if n.strip() and n.strip() != NIH_NO_FINDING]
            parsed[raw] = tuple(findings_vocab.canonical(n) for n in names)
        w, h = cols["width"][i], cols["height"][i]
        sx, sy = cols["spacing_x"][i], cols["spacing_y"][i]
        spacing = None if sx is None or sy is None else (sy, sx)  # (row, col) = (y, x)
        if released_size is not None:
            # Same physical extent over released_size pixels on each axis.
            spacing = (sy * h / released_size, sx * w / released_size) if spacing and w and h else None
            w = h = released_size
        boxed = bboxes.get(image_id)
        studies.append(Study(
            image_id=image_id,
            path=paths[i],
            patient_id=patient,
            findings=parsed[raw],
            boxes=np.stack([b for _, b in boxed]) if boxed else None,
            box_labels=tuple(labels.canonical(name) for name, _ in boxed) if boxed else (),
            width=w,
            height=h,
            spacing_mm=spacing,
            view_position=cols["view_position"][i] or None,
            split=where.get(patient),
        ))
    return studies


def _official_split(images: list[tuple[str, str]], lists: dict[str, Path], *, val_fraction: float,
                    seed: int) -> dict[str, str]:
    """Patient -> split from NIH's train_val_list.txt / test_list.txt.

    Images in neither list follow their patient; a patient with images only outside
    both lists gets no split.
    """
    test_ids = _read_list(lists["test_list"]) if lists["test_list"].is_file() else set()
    trainval_ids = _read_list(lists["train_val_list"]) if lists["train_val_list"].is_file() else None
    test_patients, pool = set(), set()
    for image_id, patient in images:  # (image_index, patient_id) pairs
        if image_id in test_ids:
            test_patients.add(patient)
        elif trainval_ids is None or image_id in trainval_ids:
            pool.add(patient)
    both = sorted(test_patients & pool)
    if both:
        raise InvalidFileError(
            f"{len(both)} patients have images in both test_list.txt and the train/val pool "
            f"(e.g. patient {both[0]}); the lists must split by patient. Fix the lists, or "
            f"remove them to get a seeded patient-level split."
        )
    where = assign_patients(pool, val_fraction=val_fraction, test_fraction=0.0, seed=seed)
    where.update({p: "test" for p in test_patients})
    return where
