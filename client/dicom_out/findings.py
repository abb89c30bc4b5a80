"""The coded concept of a finding name (NIH ChestX-ray14, VinDr-CXR, RSNA) for DICOM outputs.

Verified SNOMED CT / DCM codes where a DICOM dictionary lists them, a code in a local
scheme otherwise: a receiver can tell a standard code from ours by its scheme.
"""

from __future__ import annotations

import hashlib

import highdicom as hd

__all__ = ["PRIVATE_SCHEME", "finding_code"]

# Local coding scheme for findings without a code we could verify.  DICOM reserves
# designators starting with "99" for local schemes, so no receiver mistakes these for
# a standard code.
PRIVATE_SCHEME = "99CXR"

# Every standard code below was checked against the DICOM content mapping resource as
# shipped in pydicom 3 (pydicom/sr/_concepts_dict.py, CIDs from _cid_dict.py); the
# comment names the CID that lists it.  Labels are compared case-, space- and
# underscore-insensitively (see _key), so "Pleural_Thickening" == "pleural thickening".
_VERIFIED: dict[str, tuple[str, str, str]] = {
    "effusion": ("60046008", "SCT", "Pleural effusion"),  # CID 645/8134
    "pleural effusion": ("60046008", "SCT", "Pleural effusion"),
    "pneumothorax": ("36118008", "SCT", "Pneumothorax"),  # CID 6105 abnormal lucency
    "mass": ("4147007", "SCT", "Mass"),  # CID 6104 abnormal opacity
    "nodule": ("27925004", "SCT", "Nodule"),  # CID 6104
    "infiltration": ("112121", "DCM", "Infiltrate"),  # CID 6104
    "infiltrate": ("112121", "DCM", "Infiltrate"),  # NIH's BBox_List spelling
    "lung opacity": ("112001", "DCM", "Opacity"),  # CID 6104
    "opacity": ("112001", "DCM", "Opacity"),
    "edema": ("19242006", "SCT", "Pulmonary edema"),  # CID 3700; NIH "Edema" is pulmonary
    "pulmonary edema": ("19242006", "SCT", "Pulmonary edema"),
    "fibrosis": ("112674009", "SCT", "Fibrosis"),  # CID 6335
    "pulmonary fibrosis": ("112674009", "SCT", "Fibrosis"),
    # A radiograph shows the pattern, not the disease: VinDr's "ILD" boxes mark it.
    "ild": ("112004", "DCM", "Abnormal interstitial pattern"),  # CID 6104/6106
    "calcification": ("112063", "DCM", "Abnormal calcifications"),  # CID 6101
    "no finding": ("111286", "DCM", "No abnormality"),  # CID 6030
}

# Names without a code we could verify stay local until someone checks SNOMED CT itself:
# * Atelectasis, Pneumonia, Consolidation, Emphysema, ...: their usual SNOMED CT codes
#   appear only in third-party code, in no DICOM dictionary installed here.
# * Cardiomegaly: DICOM's dictionary gives SCT 287272002 two meanings ("Cardiomegaly"
#   in CID 12248/12249, "Enlarged septal foramen of heart (disorder)" elsewhere), and the
#   often-quoted 8186001 is in no installed dictionary — ambiguous, so not used.
# VinDr's "Nodule/Mass" is deliberately not mapped to Nodule or Mass: it is neither.
_LOCAL: dict[str, str] = {
    "cardiomegaly": "CARDIOMEGALY",
    "atelectasis": "ATELECTASIS",
    "pneumonia": "PNEUMONIA",
    "consolidation": "CONSOLIDATION",
    "emphysema": "EMPHYSEMA",
    "hernia": "HERNIA",
    "pleural thickening": "PLEURAL_THICK",
    "aortic enlargement": "AORTIC_ENLARGE",
    "nodule/mass": "NODULE_MASS",
    "other lesion": "OTHER_LESION",
}


def _key(label: str) -> str:
    return " ".join(label.strip().replace("_", " ").split()).casefold()


def finding_code(label: str) -> hd.sr.CodedConcept:
    """The coded concept for a finding name from NIH ChestX-ray14, VinDr-CXR or RSNA.

    Verified SNOMED CT / DCM codes where known (see ``_VERIFIED``), otherwise a code in
    the local scheme :data:`PRIVATE_SCHEME` with the label as its meaning.  Never
    raises: an unknown or odd label (empty, > 64 chars, backslashes) gets a stable
    local code derived from its text.
    """
    key = _key(label)
    if key in _VERIFIED:
        value, scheme, meaning = _VERIFIED[key]
        return hd.sr.CodedConcept(value=value, scheme_designator=scheme, meaning=meaning)
    # CodeMeaning is LO: at most 64 characters and no backslash (the VR delimiter).
    meaning = " ".join(label.replace("\\", "/").split())[:64] or "Unknown finding"
    if key in _LOCAL:
        value = _LOCAL[key]
    else:  # CodeValue is SH (<= 16 chars): a digest keeps it short and stable
        value = "X" + hashlib.sha1(key.encode("utf-8")).hexdigest()[:12].upper()
    return hd.sr.CodedConcept(value=value, scheme_designator=PRIVATE_SCHEME, meaning=meaning)
