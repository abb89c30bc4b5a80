"""Label sets and the mapping from dataset names to model class ids.

Model class ids follow torchvision's detection convention: ``0`` is background and
the findings of a :class:`LabelSet` are ``1 .. len(labelset)`` in the order listed.
Dataset spellings ("Infiltrate", "Pleural_Thickening", "Nodule/Mass") are normalised
on entry; an unknown name raises :class:`~cxr.errors.UnknownLabelError` listing the
valid ones.  The label sets cxr knows by name are the :class:`LabelSetName` members;
a class list stored without one (a checkpoint's, a model config's) is a
:data:`CUSTOM_LABELSET`.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from cxr.errors import UnknownLabelError
from cxr.vocab import ClosedVocabulary

# The 14 image-level labels of NIH ChestX-ray14 (Data_Entry_2017.csv), as spelled there.
NIH_FINDINGS: tuple[str, ...] = (
    "Atelectasis",
    "Cardiomegaly",
    "Effusion",
    "Infiltration",
    "Mass",
    "Nodule",
    "Pneumonia",
    "Pneumothorax",
    "Consolidation",
    "Edema",
    "Emphysema",
    "Fibrosis",
    "Pleural_Thickening",
    "Hernia",
)
NIH_NO_FINDING = "No Finding"

# The 8 classes that have boxes in BBox_List_2017.csv (984 boxes on 880 images).
NIH_BBOX_CLASSES: tuple[str, ...] = NIH_FINDINGS[:8]

# VinDr-CXR local labels, in class_id order 0..13; class_id 14 is "No finding".
VINDR_CLASSES: tuple[str, ...] = (
    "Aortic enlargement",
    "Atelectasis",
    "Calcification",
    "Cardiomegaly",
    "Consolidation",
    "ILD",
    "Infiltration",
    "Lung Opacity",
    "Nodule/Mass",
    "Other lesion",
    "Pleural effusion",
    "Pleural thickening",
    "Pneumothorax",
    "Pulmonary fibrosis",
)
VINDR_NO_FINDING = "No finding"

# The name of a label set rebuilt from a stored class list that matches no named one
# (:meth:`LabelSet.from_names`); the named ones are :class:`LabelSetName`'s members.
CUSTOM_LABELSET = "custom"

# Spellings seen in the published files, mapped to the canonical name of each set.
_NIH_ALIASES = {
    "infiltrate": "Infiltration",  # BBox_List_2017.csv writes "Infiltrate"
    "pleural thickening": "Pleural_Thickening",
    "pleural_thickening": "Pleural_Thickening",
}


def _key(name: str) -> str:
    return " ".join(name.strip().replace("_", " ").split()).casefold()


@dataclass(frozen=True)
class LabelSet:
    """An ordered, closed set of finding names.

    ``names[i]`` has model class id ``i + 1``.  ``aliases`` maps other spellings
    (compared case- and underscore-insensitively) to a canonical name.
    """

    name: str
    names: tuple[str, ...]
    aliases: dict[str, str] = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        if len(set(map(_key, self.names))) != len(self.names):
            raise ValueError(f"label set {self.name!r} has duplicate names: {self.names}")
        for alias, target in self.aliases.items():
            if target not in self.names:
                raise ValueError(f"alias {alias!r} points at {target!r}, not in {self.names}")

    def __len__(self) -> int:
        return len(self.names)

    def __iter__(self):
        return iter(self.names)

    def __contains__(self, name: object) -> bool:
        if not isinstance(name, str):
            return False
        try:
            self.canonical(name)
        except UnknownLabelError:
            return False
        return True

    @property
    def num_classes(self) -> int:
        """Classes including background, as torchvision's ``num_classes`` wants."""
        return len(self.names) + 1

    def canonical(self, name: str) -> str:
        """The canonical spelling of ``name``; raises UnknownLabelError if unknown."""
        key = _key(name)
        for canon in self.names:
            if _key(canon) == key:
                return canon
        for alias, canon in self.aliases.items():
            if _key(alias) == key:
                return canon
        raise UnknownLabelError(
            f"unknown finding {name!r} for label set {self.name!r}; "
            f"valid names are: {', '.join(self.names)}"
        )

    def class_id(self, name: str) -> int:
        """Model class id (1-based; 0 is background) of a finding name."""
        return self.names.index(self.canonical(name)) + 1

    def label_name(self, class_id: int) -> str:
        """Finding name of a model class id (1-based)."""
        if not 1 <= int(class_id) <= len(self.names):
            raise UnknownLabelError(
                f"class id {class_id} is outside 1..{len(self.names)} for label set {self.name!r}"
            )
        return self.names[int(class_id) - 1]

    def class_ids(self, names: Iterable[str]) -> list[int]:
        return [self.class_id(n) for n in names]

    def to_dict(self) -> dict:
        return {"name": self.name, "names": list(self.names)}

    @classmethod
    def from_names(cls, names: Sequence[str], name: str = CUSTOM_LABELSET) -> LabelSet:
        """A label set from a stored class list (checkpoint or model config)."""
        known = {v.value: get_labelset(v) for v in LabelSetName}
        if name in known and tuple(names) == known[name].names:
            return known[name]
        return cls(name=name, names=tuple(names))


class LabelSetName(ClosedVocabulary, label="label set"):
    """The label sets cxr knows by name (``cxr train --labels``, :func:`get_labelset`)."""

    NIH_BBOX = "nih-bbox"  # the 8 NIH classes with boxes: what cxr trains on by default
    NIH_FINDINGS = "nih-findings"  # all 14 NIH image-level labels
    VINDR = "vindr"  # VinDr-CXR's 14 local classes


_LABELSETS = {
    LabelSetName.NIH_BBOX: LabelSet(
        LabelSetName.NIH_BBOX.value, NIH_BBOX_CLASSES, {k: v for k, v in _NIH_ALIASES.items() if v in NIH_BBOX_CLASSES}
    ),
    LabelSetName.NIH_FINDINGS: LabelSet(LabelSetName.NIH_FINDINGS.value, NIH_FINDINGS, dict(_NIH_ALIASES)),
    LabelSetName.VINDR: LabelSet(LabelSetName.VINDR.value, VINDR_CLASSES, {"nodule": "Nodule/Mass", "mass": "Nodule/Mass"}),
}


def get_labelset(name: str | LabelSetName) -> LabelSet:
    """The :class:`LabelSet` called ``name`` (``"nih-bbox"``, ``"vindr"``, ...).

    An unknown name raises :class:`~cxr.errors.InvalidOptionError` (a ValueError) that lists the known ones.
    """
    return _LABELSETS[LabelSetName(name)]


def annotation_labelset(model_labelset: str) -> LabelSetName:
    """The named label set to read a dataset's annotations with, for a model trained on ``model_labelset``.

    A named set reads its own spellings; a :data:`CUSTOM_LABELSET` model (a class list
    stored without a name) reads NIH-layout data (``cxr synth``, the NIH release) with
    ``nih-bbox``'s.
    """
    return LabelSetName.NIH_BBOX if model_labelset == CUSTOM_LABELSET else LabelSetName(model_labelset)
