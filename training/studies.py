"""The record every dataset reader returns, and the patient-level split.

A :class:`Study` is one radiograph with its image-level findings and its boxes.
Boxes are ``xyxy`` float32 ``[N, 4]`` (``[x1, y1, x2, y2]``, ``0 <= x1 < x2 <= W``) in
the pixel grid of the image file the study points at (the ORIGINAL image in the
sense of :mod:`cxr.boxes`: what the model's preprocessing receives).

Splits are always by patient: follow-up images of one patient in two splits leak
the patient into evaluation and inflate every metric.
"""

from __future__ import annotations

import csv
import gc
import gzip
import io
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from cxr.errors import InvalidOptionError
from cxr.training.masks import InstanceMasks

SPLITS: tuple[str, ...] = ("train", "val", "test")


def _readonly_boxes(boxes) -> np.ndarray:
    # A copy: freezing the caller's own array would surprise them.
    arr = np.array(boxes, dtype=np.float32).reshape(-1, 4)
    arr.setflags(write=False)  # a frozen Study must not be changed through its array
    return arr


# One shared empty array: most NIH studies have no boxes, 112k copies would be waste.
EMPTY_BOXES = _readonly_boxes(np.zeros((0, 4)))


@dataclass(frozen=True)
class Study:
    """One radiograph and its annotations.

    ``boxes`` is float32 ``[N, 4]`` xyxy in ORIGINAL image pixels, with
    ``box_labels[i]`` the canonical finding name of ``boxes[i]``.  ``findings`` are
    the image-level labels (canonical names); ``()`` means "no finding".
    ``spacing_mm`` is (row, column) in mm of that same pixel grid, or ``None``.
    ``masks``, when the dataset has instance masks, holds one (lazily decoded) mask per
    box, ``masks.mask(i)`` bool ``[height, width]`` in the same ORIGINAL pixel grid.
    """

    image_id: str
    path: Path | None
    patient_id: str
    findings: tuple[str, ...] = ()
    # compare=False: ndarray == is elementwise and would break Study.__eq__/__hash__.
    boxes: np.ndarray = field(default_factory=lambda: EMPTY_BOXES, compare=False)
    box_labels: tuple[str, ...] = ()
    width: int | None = None
    height: int | None = None
    spacing_mm: tuple[float, float] | None = None
    view_position: str | None = None
    split: str | None = None
    masks: InstanceMasks | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        b = self.boxes
        if b is None or np.size(b) == 0:
            object.__setattr__(self, "boxes", EMPTY_BOXES)  # also accepts None
        elif not (isinstance(b, np.ndarray) and b.dtype == np.float32 and b.ndim == 2 and not b.flags.writeable):
            # Already-frozen arrays (dataclasses.replace) are shared, not copied.
            object.__setattr__(self, "boxes", _readonly_boxes(b))
        if len(self.boxes) != len(self.box_labels):
            raise ValueError(
                f"study {self.image_id!r}: {len(self.boxes)} boxes but {len(self.box_labels)} box labels"
            )
        if self.masks is not None:
            if len(self.masks) != len(self.boxes):
                raise ValueError(f"study {self.image_id!r}: {len(self.boxes)} boxes but {len(self.masks)} masks")
            grid = (self.height, self.width)
            if None not in grid and grid != (self.masks.height, self.masks.width):
                raise ValueError(f"study {self.image_id!r}: masks are {self.masks.height}x{self.masks.width} "
                                 f"(HxW) but the image is {self.height}x{self.width}")
        if self.split is not None and self.split not in SPLITS:
            raise ValueError(f"study {self.image_id!r}: split {self.split!r} is not one of {SPLITS}")

    @property
    def no_finding(self) -> bool:
        return not self.findings and not self.box_labels

    @property
    def detection_usable(self) -> bool:
        """Whether the study can be shown to a detector without lying to it.

        Usable: studies with boxes, and "no finding" studies (true negatives).  A
        study with findings but no boxes is NOT usable: every region would be
        background, teaching the detector to miss the very finding it carries.
        """
        return len(self.boxes) > 0 or not self.findings


def open_text(path: str | Path) -> io.TextIOBase:
    """Open a ``.csv``/``.txt`` file, gzip-compressed when it ends in ``.gz``.

    ``utf-8-sig`` drops a byte-order mark that Excel-saved CSVs start with, which
    would otherwise glue itself onto the first column name.
    """
    path = Path(path)
    if path.suffix == ".gz":
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8-sig", newline="")
    return open(path, encoding="utf-8-sig", newline="")


@contextmanager
def gc_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector while building many small objects.

    Reading NIH's 112k rows creates ~500k lists, dicts and Studies, none of them in
    reference cycles; the collector's repeated full passes over that growing heap
    cost about a third of the load time and free nothing.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def read_csv_rows(path: str | Path) -> Iterator[list[str]]:
    """Rows of a CSV file as lists of strings (the header first)."""
    with open_text(path) as fh:
        yield from csv.reader(fh)


def _split_sizes(n: int, val_fraction: float, test_fraction: float) -> tuple[int, int]:
    n_test = int(round(test_fraction * n))
    n_val = int(round(val_fraction * n))
    # A requested split should not come out empty just because rounding said so,
    # as long as train keeps at least one patient.
    if test_fraction > 0 and n_test == 0 and n - n_val >= 2:
        n_test = 1
    if val_fraction > 0 and n_val == 0 and n - n_test >= 2:
        n_val = 1
    return n_val, n_test


def assign_patients(
    patient_ids: Iterable[str], *, val_fraction: float, test_fraction: float, seed: int
) -> dict[str, str]:
    """Map each patient id to ``"train"``, ``"val"`` or ``"test"``.

    Deterministic for a seed and independent of input order: the unique ids are
    sorted before the seeded shuffle.  Fractions count patients, not images.
    """
    for name, value in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if not 0.0 <= value < 1.0:
            raise InvalidOptionError(f"{name} must be in [0, 1), got {value}")
    if val_fraction + test_fraction >= 1.0:
        raise InvalidOptionError(
            f"val_fraction + test_fraction must leave patients for training, got "
            f"{val_fraction} + {test_fraction} = {val_fraction + test_fraction}"
        )
    patients = sorted(set(patient_ids))
    order = np.random.default_rng(seed).permutation(len(patients))
    n_val, n_test = _split_sizes(len(patients), val_fraction, test_fraction)
    out: dict[str, str] = {}
    for rank, idx in enumerate(order):
        out[patients[idx]] = "test" if rank < n_test else "val" if rank < n_test + n_val else "train"
    return out


def patient_split(
    studies: Iterable[Study], *, val_fraction: float, test_fraction: float, seed: int
) -> dict[str, list[Study]]:
    """Split studies by patient into ``{"train", "val", "test"}`` (keys always present).

    Returned studies carry their ``split``; input order is kept within each split.
    No patient appears in two splits.
    """
    studies = list(studies)
    where = assign_patients(
        (s.patient_id for s in studies), val_fraction=val_fraction, test_fraction=test_fraction, seed=seed
    )
    out: dict[str, list[Study]] = {name: [] for name in SPLITS}
    for s in studies:
        name = where[s.patient_id]
        out[name].append(s if s.split == name else replace(s, split=name))
    return out
